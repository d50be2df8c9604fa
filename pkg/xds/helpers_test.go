package xds_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshlet/meshlet/internal/testlog"
	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/server"
)

const waitTimeout = 20 * time.Second

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		ConnectTimeout:       durationpb.New(time.Second),
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig:   &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
			ServiceName: "eds:" + name,
		},
	}
}

func cla(service string, ips ...string) *resources.Assignment {
	return resources.NewAssignment(claMsg(service, ips...))
}

func claMsg(service string, ips ...string) *endpointv3.ClusterLoadAssignment {
	la := &endpointv3.ClusterLoadAssignment{ClusterName: service}
	var lbs []*endpointv3.LbEndpoint
	for _, ip := range ips {
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}}}}})
	}
	la.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	return la
}

func tcpListener(name string, port uint32, cluster string) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name: name,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "10.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.tcp_proxy",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: cluster}})},
		}}}},
	}
}

func httpListener(name string, port uint32, route string) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
			RouteConfigName: route,
		}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}}},
	}
	return &listenerv3.Listener{
		Name: name,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
		}}}},
	}
}

func routeConfig(name string, clusters ...string) *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{Name: name}
	for _, c := range clusters {
		rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{
			Name: c, Domains: []string{c},
			Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: c}}},
			}},
		})
	}
	return rc
}

// smallSet: clusters c0..c(n-1) with endpoints, one TCP listener per
// cluster, one HTTP listener with RDS route "http".
func smallSet(n int) *resources.Set {
	s := resources.New()
	var names []string
	for i := 0; i < n; i++ {
		c := edsCluster(fmt.Sprintf("c%d", i))
		s.Clusters[c.Name] = c
		s.Endpoints["eds:"+c.Name] = cla("eds:"+c.Name, fmt.Sprintf("10.1.0.%d", i+1))
		l := tcpListener(fmt.Sprintf("l%d", i), uint32(9000+i), c.Name)
		s.Listeners[l.Name] = l
		names = append(names, c.Name)
	}
	s.Listeners["http"] = httpListener("http", 80, "http")
	s.Routes["http"] = routeConfig("http", names...)
	return s
}

func cloneSet(s *resources.Set) *resources.Set {
	out := resources.New()
	for k, v := range s.Listeners {
		out.Listeners[k] = proto.Clone(v).(*listenerv3.Listener)
	}
	for k, v := range s.Routes {
		out.Routes[k] = proto.Clone(v).(*routev3.RouteConfiguration)
	}
	for k, v := range s.Clusters {
		out.Clusters[k] = proto.Clone(v).(*clusterv3.Cluster)
	}
	for k, v := range s.Endpoints {
		out.Endpoints[k] = v // immutable
	}
	return out
}

// diffSets returns "" if a and b hold the same resources.
func diffSets(a, b *resources.Set) string {
	if a == nil || b == nil {
		return fmt.Sprintf("nil set (a=%v b=%v)", a != nil, b != nil)
	}
	if d := diffMap("listener", a.Listeners, b.Listeners, protoEqual); d != "" {
		return d
	}
	if d := diffMap("route", a.Routes, b.Routes, protoEqual); d != "" {
		return d
	}
	if d := diffMap("cluster", a.Clusters, b.Clusters, protoEqual); d != "" {
		return d
	}
	return diffMap("endpoints", a.Endpoints, b.Endpoints, (*resources.Assignment).Equal)
}

func protoEqual[T proto.Message](a, b T) bool { return proto.Equal(a, b) }

func diffMap[T any](kind string, a, b map[string]T, equal func(T, T) bool) string {
	if len(a) != len(b) {
		return fmt.Sprintf("%d %ss vs %d", len(a), kind, len(b))
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok {
			return fmt.Sprintf("%s %q missing", kind, k)
		}
		if !equal(v, w) {
			return fmt.Sprintf("%s %q differs", kind, k)
		}
	}
	return ""
}

// recorder is an Applier that keeps the last Set and signals each apply.
type recorder struct {
	mu      sync.Mutex
	last    *resources.Set
	applies int
	reject  func(*resources.Set) error
	changed chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 1)} }

func (r *recorder) Apply(_ context.Context, s *resources.Set) error {
	r.mu.Lock()
	rej := r.reject
	r.mu.Unlock()
	if rej != nil {
		if err := rej(s); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.last, r.applies = s, r.applies+1
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return nil
}

func (r *recorder) get() (*resources.Set, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last, r.applies
}

// waitFor re-evaluates cond on every apply (and every 50ms, for state that
// changes without an apply) until it holds or the timeout passes.
func waitFor(t testing.TB, what string, r *recorder, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var ch chan struct{}
	if r != nil {
		ch = r.changed
	}
	for !cond() {
		select {
		case <-ch:
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s", waitTimeout, what)
		}
	}
}

// nackLog collects NACKs seen by the server.
type nackLog struct {
	mu    sync.Mutex
	nacks []string
	reqs  int
}

func (n *nackLog) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
			n.add(req.GetTypeUrl(), req.GetErrorDetail().GetMessage())
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			n.add(req.GetTypeUrl(), req.GetErrorDetail().GetMessage())
			return nil
		},
	}
}

func (n *nackLog) add(typeURL, msg string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.reqs++
	if msg != "" {
		n.nacks = append(n.nacks, xds.ShortType(typeURL)+": "+msg)
	}
}

func (n *nackLog) all() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.nacks...)
}

type testServer struct {
	srv    *server.Server
	addr   string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func startServer(t testing.TB, addr string, opts server.Options) *testServer {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testlog.New(t).Named("server")
	}
	s, err := server.New(opts)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	return serveOn(t, s, addr)
}

func serveOn(t testing.TB, s *server.Server, addr string) *testServer {
	t.Helper()
	var lis net.Listener
	var err error
	// Re-binding the same port right after a stop can transiently fail.
	deadline := time.Now().Add(5 * time.Second)
	for {
		lis, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{srv: s, addr: lis.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { ts.done <- s.Serve(ctx, lis) }()
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) stop() {
	ts.once.Do(func() {
		ts.cancel()
		select {
		case <-ts.done:
		case <-time.After(10 * time.Second):
		}
	})
}

type testClient struct {
	c      *xds.Client
	rec    *recorder
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// stop cancels the client and waits for Run to return.
func (tc *testClient) stop(t testing.TB) {
	tc.once.Do(func() {
		tc.cancel()
		select {
		case tc.err = <-tc.done:
		case <-time.After(10 * time.Second):
			tc.err = errors.New("client did not stop within 10s")
		}
	})
	if tc.err != nil && !errors.Is(tc.err, context.Canceled) {
		t.Errorf("client Run: %v", tc.err)
	}
}

func startClient(t testing.TB, cfg xds.Config, rec *recorder) *testClient {
	t.Helper()
	if cfg.Node == nil {
		cfg.Node = xds.NewNode("test-node", "test", nil)
	}
	if cfg.Logger == nil {
		cfg.Logger = testlog.New(t).Named("client")
	}
	if cfg.BackoffBase == 0 {
		cfg.BackoffBase, cfg.BackoffMax = 50*time.Millisecond, 500*time.Millisecond
	}
	c, err := xds.NewClient(cfg, rec)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tc := &testClient{c: c, rec: rec, cancel: cancel, done: make(chan error, 1)}
	go func() { tc.done <- c.Run(ctx) }()
	t.Cleanup(func() { tc.stop(t) })
	return tc
}

func modes() []struct {
	name  string
	delta bool
} {
	return []struct {
		name  string
		delta bool
	}{{"sotw", false}, {"delta", true}}
}

// converge waits until the client's applied Set equals want.
func converge(t testing.TB, tc *testClient, want *resources.Set) {
	t.Helper()
	var last string
	waitFor(t, "client view to equal the server's", tc.rec, func() bool {
		got, _ := tc.rec.get()
		last = diffSets(got, want)
		return last == ""
	})
	_ = last
}
