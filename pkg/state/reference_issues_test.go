package state

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshlet/meshlet/pkg/resources"
)

// An HTTP chain naming an absent RDS route configuration, and routes
// naming absent clusters, are reported.
func TestMissingRouteAndClusterAreReported(t *testing.T) {
	hcmListener := func(name string, port uint32, h *hcmv3.HttpConnectionManager) *listenerv3.Listener {
		tc, err := anypb.New(h)
		if err != nil {
			t.Fatal(err)
		}
		return &listenerv3.Listener{
			Name:    name,
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
			FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
				Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tc}}}}},
		}
	}
	rds := func(n string) *hcmv3.HttpConnectionManager {
		return &hcmv3.HttpConnectionManager{StatPrefix: n, RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: n}}}
	}
	route := func(clusters ...string) *routev3.Route {
		a := &routev3.RouteAction{}
		if len(clusters) == 1 {
			a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: clusters[0]}
		} else {
			wc := &routev3.WeightedCluster{}
			for _, c := range clusters {
				wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{Name: c, Weight: wrapperspb.UInt32(1)})
			}
			a.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
		}
		return &routev3.Route{Name: "default", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: a}}
	}
	set := resources.New()
	set.Clusters["a"] = &clusterv3.Cluster{Name: "a", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}}
	set.Routes["80"] = &routev3.RouteConfiguration{Name: "80", VirtualHosts: []*routev3.VirtualHost{
		{Name: "ok", Domains: []string{"ok"}, Routes: []*routev3.Route{route("a")}},
		{Name: "gone", Domains: []string{"gone"}, Routes: []*routev3.Route{route("missing")}},
		{Name: "split", Domains: []string{"*"}, Routes: []*routev3.Route{route("a", "missing2")}},
	}}
	set.Listeners["0.0.0.0_80"] = hcmListener("0.0.0.0_80", 80, rds("80"))
	set.Listeners["0.0.0.0_9080"] = hcmListener("0.0.0.0_9080", 9080, rds("9080"))
	inline := &hcmv3.HttpConnectionManager{StatPrefix: "inline", RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{
		RouteConfig: &routev3.RouteConfiguration{Name: "inline", VirtualHosts: []*routev3.VirtualHost{{Name: "x", Domains: []string{"*"}, Routes: []*routev3.Route{route("missing3")}}}}}}
	set.Listeners["0.0.0.0_81"] = hcmListener("0.0.0.0_81", 81, inline)

	s, err := Build(set, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"listener 0.0.0.0_9080": `route configuration "9080" is not in the config`,
		"listener 0.0.0.0_81":   `cluster "missing3" is not in the config`,
		"route 80 gone":         `virtual host "gone" route 0 ("default"): cluster "missing" is not in the config`,
		"route 80 split":        `virtual host "split" route 0 ("default"): cluster "missing2" is not in the config`,
	}
	for k, frag := range want {
		found := false
		for _, is := range s.Issues {
			typ, name, _ := strings.Cut(k, " ")
			name, _, _ = strings.Cut(name, " ")
			if is.Type == typ && is.Name == name && strings.Contains(is.Reason, frag) {
				found = true
			}
		}
		if !found {
			t.Errorf("no issue %s %q in %+v", k, frag, s.Issues)
		}
	}
	if len(s.Issues) != len(want) {
		t.Errorf("%d issues, want %d: %+v", len(s.Issues), len(want), s.Issues)
	}
}
