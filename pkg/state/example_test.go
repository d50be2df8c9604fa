package state_test

import (
	"fmt"
	"net/netip"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/state"
)

// socket is an Envoy socket address ip:port.
func socket(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

// Build turns a resources.Set into the runtime view: the capture table
// (which service addresses the BPF program redirects to the proxy) and,
// for a captured connection, its listener, filter chain and endpoint.
func ExampleBuild() {
	// One TCP service 10.96.0.10:80 forwarded to the cluster "web".
	tcp, err := anypb.New(&tcpv3.TcpProxy{StatPrefix: "web", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "web"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	set := resources.New()
	set.Listeners["web"] = &listenerv3.Listener{Name: "web", Address: socket("10.96.0.10", 80),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tcp}}}}}}
	set.Clusters["web"] = &clusterv3.Cluster{Name: "web",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "web",
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socket("10.0.1.5", 8080)}}}}}}}}

	snap, err := state.Build(set, state.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, c := range snap.Captures {
		fmt.Printf("capture %s:%d -> listener %s\n", c.Addr, c.Port, c.Listener)
	}

	// What a connection captured on its way to 10.96.0.10:80 is handed to.
	dst := netip.MustParseAddrPort("10.96.0.10:80")
	chain := snap.Listener(dst).Chain(state.ChainInput{Dst: dst, Transport: "raw_buffer"})
	ep, err := snap.Clusters[chain.TCP.Cluster].Pick(dst)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s -> tcp_proxy cluster %s -> endpoint %s\n", dst, chain.TCP.Cluster, ep.Addr)
	fmt.Println("issues:", len(snap.Issues))
	// Output:
	// capture 10.96.0.10:80 -> listener web
	// 10.96.0.10:80 -> tcp_proxy cluster web -> endpoint 10.0.1.5:8080
	// issues: 0
}
