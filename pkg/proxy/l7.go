package proxy

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/pkg/accesslog"
	"github.com/meshlet/meshlet/pkg/hcm"
	"github.com/meshlet/meshlet/pkg/sniff"
	"github.com/meshlet/meshlet/pkg/state"
)

// l7 runs the HTTP connection managers of the config in force. A Manager is
// kept for as long as its HttpConnectionManager config is unchanged: route
// (RDS) and cluster changes reach it through the current snapshot at the
// next request, like Envoy; a changed or removed HCM config is drained.
type l7 struct {
	p     *Proxy
	pools *hcm.Pools
	alog  hcm.AccessLogger

	mu       sync.Mutex
	managers map[string]*hcm.Manager // by the HCM config's deterministic bytes
	// byChain indexes the managers by the chains of the snapshot in force,
	// so a connection does not re-encode its HCM config to find one.
	byChain map[*state.HTTP]*hcm.Manager
	// checked: the HCM configs of the last snapshot that passed check.
	checked map[*hcmv3.HttpConnectionManager]bool
}

func newL7(p *Proxy) *l7 {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{}
		if p.opts.DialControl != nil {
			d.Control = p.opts.DialControl(p.opts.AccelUpstream)
		}
		return d.DialContext(ctx, network, addr)
	}
	var alog hcm.AccessLogger
	if p.opts.AccessLog != nil {
		alog = accesslog.Zap{L: p.opts.AccessLog}
	}
	return &l7{
		p:        p,
		pools:    hcm.NewPools(hcm.PoolOptions{Dial: dial}),
		alog:     alog,
		managers: map[string]*hcm.Manager{},
		byChain:  map[*state.HTTP]*hcm.Manager{},
	}
}

func hcmKey(h *state.HTTP) (string, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(h.Config)
	if err != nil {
		return "", fmt.Errorf("encode http_connection_manager: %w", err)
	}
	return string(b), nil
}

func (l *l7) manager(h *state.HTTP) (*hcm.Manager, error) {
	l.mu.Lock()
	m := l.byChain[h]
	l.mu.Unlock()
	if m != nil {
		return m, nil
	}
	key, err := hcmKey(h)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if m := l.managers[key]; m != nil {
		l.byChain[h] = m
		return m, nil
	}
	m, err = hcm.New(h.Config, routeSource{l.p}, upstreams{l.p}, hcm.Options{
		Pools: l.pools, Log: l.p.log.Named("hcm"), AccessLog: bothLogs(l.alog, h.AccessLog),
	})
	if err != nil {
		return nil, err
	}
	l.managers[key] = m
	l.byChain[h] = m
	return m, nil
}

// retain drains the managers whose HCM config is not in snap.
func (l *l7) retain(snap *state.Snapshot) {
	keep := map[string]bool{}
	chains := snap.HTTPChains()
	keys := make([]string, len(chains))
	for i, h := range chains {
		if k, err := hcmKey(h); err == nil {
			keep[k], keys[i] = true, k
		}
	}
	l.mu.Lock()
	var drop []*hcm.Manager
	for k, m := range l.managers {
		if !keep[k] {
			drop = append(drop, m)
			delete(l.managers, k)
		}
	}
	// Index the new chains; managers not built yet are built on first use.
	l.byChain = make(map[*state.HTTP]*hcm.Manager, len(chains))
	for i, h := range chains {
		if m := l.managers[keys[i]]; m != nil && keys[i] != "" {
			l.byChain[h] = m
		}
	}
	l.mu.Unlock()
	for _, m := range drop {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := m.Shutdown(ctx); err != nil {
				m.Close()
			}
		}()
	}
	l.pools.Retain(func(cluster string) bool { return snap.Clusters[cluster] != nil })
}

// renewUpstreams retires the pooled upstream connections (hcm.Pools.Close):
// requests from now on open new ones.
func (l *l7) renewUpstreams() { l.pools.Close() }

func (l *l7) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, m := range l.managers {
		m.Close()
		delete(l.managers, k)
	}
	l.pools.Close()
}

func (l *l7) serve(ctx context.Context, c net.Conn, h *state.HTTP, proto sniff.Protocol, dst netip.AddrPort) {
	m, err := l.manager(h)
	if err != nil {
		l.p.log.Warn("http connection manager config rejected", zap.Error(err))
		return
	}
	if err := m.ServeConn(ctx, c, proto, dst); err != nil {
		l.p.log.Debug("http connection ended", zap.Stringer("dst", dst), zap.Error(err))
	}
}

// routeSource resolves RDS names in the snapshot in force.
type routeSource struct{ p *Proxy }

func (r routeSource) Route(name string) *routev3.RouteConfiguration {
	if s := r.p.snap.Load(); s != nil {
		return s.Routes[name]
	}
	return nil
}

// upstreams picks endpoints from the snapshot in force.
type upstreams struct{ p *Proxy }

func (u upstreams) Pick(ctx context.Context, cluster string, in hcm.PickInput) (hcm.Endpoint, error) {
	snap := u.p.snap.Load()
	if snap == nil {
		return hcm.Endpoint{}, fmt.Errorf("no config: %w", hcm.ErrNoCluster)
	}
	cl := snap.Clusters[cluster]
	if cl == nil && u.p.opts.OnDemand != nil {
		if err := u.p.fetchCluster(ctx, cluster); err == nil {
			if s := u.p.snap.Load(); s != nil {
				cl = s.Clusters[cluster]
			}
		}
	}
	if cl == nil {
		return hcm.Endpoint{}, fmt.Errorf("cluster %q: %w", cluster, hcm.ErrNoCluster)
	}
	var ep *state.Endpoint
	var err error
	if in.HasHash {
		ep, err = cl.PickHash(in.Orig, in.Hash)
	} else {
		ep, err = cl.Pick(in.Orig)
	}
	if err != nil {
		return hcm.Endpoint{}, fmt.Errorf("cluster %q: %v: %w", cluster, err, hcm.ErrNoHealthyUpstream)
	}
	proto := hcm.UpstreamHTTP1
	switch cl.HTTPProtocol {
	case state.HTTP2:
		proto = hcm.UpstreamHTTP2
	case state.Downstream:
		proto = hcm.UseDownstreamProtocol
	}
	out := hcm.Endpoint{Addr: ep.Addr, Protocol: proto, Health: ep}
	if cl.Breaker != nil {
		out.Breaker = cl.Breaker
	}
	return out, nil
}

// bothLogs is the agent's own access log (proxy.access_log) and the HCM's
// (xDS access_log); either may be absent.
func bothLogs(agent hcm.AccessLogger, xds *accesslog.Logger) hcm.AccessLogger {
	switch {
	case xds == nil:
		return agent
	case agent == nil:
		return xds
	}
	return multiLog{agent, xds}
}

type multiLog []hcm.AccessLogger

func (m multiLog) Log(e *accesslog.Entry) {
	for _, l := range m {
		l.Log(e)
	}
}

// check refuses a snapshot whose HTTP connection managers or route
// configurations the L7 data plane would reject at first use (they are
// otherwise built when a connection needs them). HCM configs checked for
// the previous snapshot (the same messages, as the xDS client keeps
// unchanged resources) are not checked again; route configurations are
// compiled once per message (hcm.Pools caches them for their requests).
func (l *l7) check(snap *state.Snapshot) error {
	checked := make(map[*hcmv3.HttpConnectionManager]bool)
	for _, h := range snap.HTTPChains() {
		if checked[h.Config] {
			continue
		}
		l.mu.Lock()
		ok := l.checked[h.Config]
		l.mu.Unlock()
		if !ok {
			if err := l.pools.Check(h.Config); err != nil {
				return fmt.Errorf("http_connection_manager %q: %w", h.Config.GetStatPrefix(), err)
			}
		}
		checked[h.Config] = true
	}
	for _, name := range slices.Sorted(maps.Keys(snap.Routes)) {
		if err := l.pools.CheckRoutes(snap.Routes[name]); err != nil {
			return fmt.Errorf("route configuration %q: %w", name, err)
		}
	}
	l.mu.Lock()
	l.checked = checked
	l.mu.Unlock()
	return nil
}
