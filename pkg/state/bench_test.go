package state

import (
	"fmt"
	"maps"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshlet/meshlet/pkg/resources"
)

// bigSet is the shape of TestBenchXDS: n tcp_proxy listeners, n EDS
// clusters, per endpoints each.
func bigSet(tb testing.TB, n, per int) *resources.Set {
	tb.Helper()
	s := resources.New()
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("outbound|80||svc%d.ns.svc.cluster.local", i)
		s.Clusters[name] = &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			ConnectTimeout:       durationpb.New(time.Second),
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{ServiceName: name},
		}
		s.Endpoints[name] = benchCLA(name, i, per)
		tp, err := anypb.New(&tcpv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: name}})
		if err != nil {
			tb.Fatal(err)
		}
		ln := fmt.Sprintf("10.96.%d.%d_80", i/250, i%250+1)
		s.Listeners[ln] = &listenerv3.Listener{
			Name: ln,
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}}},
			FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
				Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp}}}}},
		}
	}
	return s
}

// benchCLA is an EDS assignment in the compact form the xDS client holds.
func benchCLA(name string, i, per int) *resources.Assignment {
	lbs := make([]*endpointv3.LbEndpoint, 0, per)
	for j := 0; j < per; j++ {
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j+1), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}}}}})
	}
	m := &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}}
	wire, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return resources.CompactAssignment(m, wire)
}

// BenchmarkBuild translates the full TestBenchXDS-sized set from scratch.
//
//	go test ./pkg/state -run '^$' -bench Build -benchmem
func BenchmarkBuild(b *testing.B) {
	set := bigSet(b, 10000, 10)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Build(set, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuildOneEndpointChange rebuilds after one EDS assignment changed,
// reusing the previous snapshot.
func BenchmarkBuildOneEndpointChange(b *testing.B) {
	set := bigSet(b, 10000, 10)
	prev, err := Build(set, Options{})
	if err != nil {
		b.Fatal(err)
	}
	name := "outbound|80||svc7.ns.svc.cluster.local"
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		next := *set
		next.Endpoints = maps.Clone(set.Endpoints)
		next.Endpoints[name] = benchCLA(name, i%200, 1+i%10)
		s, err := Build(&next, Options{Previous: prev})
		if err != nil {
			b.Fatal(err)
		}
		prev = s
	}
}
