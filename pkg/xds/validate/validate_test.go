package validate

import (
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

func listenerWithHTTPFilter(t *testing.T, f *hcmv3.HttpFilter) *listenerv3.Listener {
	t.Helper()
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     "x",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{},
		HttpFilters:    []*hcmv3.HttpFilter{f},
	}
	a, err := anypb.New(hcm)
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Listener{Name: "l", FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
		Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}}}}}
}

func TestNestedAnyIsValidated(t *testing.T) {
	lua, _ := anypb.New(&luav3.Lua{DefaultSourceCode: nil, SourceCodes: nil})
	bad := listenerWithHTTPFilter(t, &hcmv3.HttpFilter{Name: "lua", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: lua}})
	// An empty Lua config is valid; one with an empty DataSource is not.
	if err := Resource(bad); err != nil {
		t.Fatalf("valid nested config rejected: %v", err)
	}
	lua2, _ := anypb.New(&luav3.Lua{DefaultSourceCode: &corev3.DataSource{}})
	bad = listenerWithHTTPFilter(t, &hcmv3.HttpFilter{Name: "lua", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: lua2}})
	err := Resource(bad)
	if err == nil {
		t.Fatal("invalid nested Lua accepted")
	}
	msg := err.Error()
	if !strings.Contains(msg, "filter_chains[0].filters[0].typed_config(envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager)") ||
		!strings.Contains(msg, "http_filters[0].typed_config(envoy.extensions.filters.http.lua.v3.Lua)") {
		t.Fatalf("error does not locate the payload: %v", msg)
	}
}

func TestUnknownAnyIsTolerated(t *testing.T) {
	unknown := &anypb.Any{TypeUrl: "type.googleapis.com/stats.PluginConfig", Value: []byte{0x0a, 0x01, 'x'}}
	l := listenerWithHTTPFilter(t, &hcmv3.HttpFilter{Name: "istio.stats", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: unknown}})
	if err := Resource(l); err != nil {
		t.Fatalf("unknown type rejected: %v", err)
	}
}

func TestUndecodableKnownAny(t *testing.T) {
	broken := &anypb.Any{TypeUrl: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", Value: []byte{0xff, 0xff}}
	l := listenerWithHTTPFilter(t, &hcmv3.HttpFilter{Name: "router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: broken}})
	if err := Resource(l); err == nil || !strings.Contains(err.Error(), "undecodable") {
		t.Fatalf("err = %v", err)
	}
	_ = routerv3.Router{}
}

func TestTopLevelRules(t *testing.T) {
	c := &clusterv3.Cluster{Name: "c", ConnectTimeout: durationpb.New(-time.Second)}
	if err := Resource(c); err == nil || !strings.Contains(err.Error(), "ConnectTimeout") {
		t.Fatalf("err = %v", err)
	}
	if err := Resource(nil); err == nil {
		t.Fatal("nil accepted")
	}
}

func TestMayHoldAny(t *testing.T) {
	ep := (&endpointv3.LbEndpoint{}).ProtoReflect().Descriptor()
	cases := map[string]bool{
		"endpoint": false, // address, health check config: no Any below
		"metadata": true,  // typed_filter_metadata
	}
	for field, want := range cases {
		fd := ep.Fields().ByName(protoreflect.Name(field))
		if fd == nil {
			t.Fatalf("no field %s", field)
		}
		if got := mayHoldAny(fd); got != want {
			t.Errorf("mayHoldAny(LbEndpoint.%s) = %v, want %v", field, got, want)
		}
	}
	// A map of Any, and the recursive Struct.
	md := (&corev3.Metadata{}).ProtoReflect().Descriptor()
	if !mayHoldAny(md.Fields().ByName("typed_filter_metadata")) {
		t.Error("Metadata.typed_filter_metadata holds Any")
	}
	if mayHoldAny(md.Fields().ByName("filter_metadata")) {
		t.Error("Metadata.filter_metadata (Struct) holds no Any")
	}
}

// BenchmarkResourceCLA validates a 10-endpoint assignment.
func BenchmarkResourceCLA(b *testing.B) {
	var lbs []*endpointv3.LbEndpoint
	for i := 0; i < 10; i++ {
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "10.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}}}}})
	}
	la := &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := Resource(la); err != nil {
			b.Fatal(err)
		}
	}
}
