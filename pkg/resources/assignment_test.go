package resources

import (
	"net/netip"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func lbEndpoint(addr string, port uint32) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}}}
}

func testAssignment() *endpointv3.ClusterLoadAssignment {
	weighted := lbEndpoint("10.0.0.2", 8080)
	weighted.LoadBalancingWeight = wrapperspb.UInt32(7)
	weighted.HealthStatus = corev3.HealthStatus_DRAINING
	pipe := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
		Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/run/x.sock"}}}}}}
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: "outbound|80||web.default.svc.cluster.local",
		Endpoints: []*endpointv3.LocalityLbEndpoints{
			{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("10.0.0.1", 80), weighted}},
			{Priority: 1, LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("fd00::1", 9090), lbEndpoint("web.example", 443), pipe}},
		},
	}
}

func wantEndpoints() []Endpoint {
	return []Endpoint{
		{Addr: netip.MustParseAddr("10.0.0.1"), Port: 80},
		{Addr: netip.MustParseAddr("10.0.0.2"), Port: 8080, Weight: 7, Health: corev3.HealthStatus_DRAINING},
		{Addr: netip.MustParseAddr("fd00::1"), Port: 9090, Priority: 1},
		{Host: "web.example", Port: 443, Priority: 1},
		{Priority: 1, NoSocketAddress: true},
	}
}

func sameEndpoints(t *testing.T, got, want []Endpoint) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d endpoints, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("endpoint %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestAssignmentForms(t *testing.T) {
	m := testAssignment()
	wire, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	backed := NewAssignment(m)
	decoded, err := DecodeAssignment(wire)
	if err != nil {
		t.Fatal(err)
	}
	for name, a := range map[string]*Assignment{"message-backed": backed, "compact": decoded} {
		t.Run(name, func(t *testing.T) {
			if a.ClusterName() != m.GetClusterName() {
				t.Errorf("ClusterName = %q", a.ClusterName())
			}
			sameEndpoints(t, a.Endpoints(), wantEndpoints())
			got, err := a.Message()
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, m) {
				t.Errorf("Message differs from the original")
			}
			w, err := a.Wire()
			if err != nil {
				t.Fatal(err)
			}
			back := &endpointv3.ClusterLoadAssignment{}
			if err := proto.Unmarshal(w, back); err != nil || !proto.Equal(back, m) {
				t.Errorf("Wire does not decode to the original (err %v)", err)
			}
			pre := []byte("head")
			w2, err := a.AppendWire(pre)
			if err != nil || string(w2[:4]) != "head" || string(w2[4:]) != string(w) {
				t.Errorf("AppendWire = %q, %v", w2, err)
			}
		})
	}
	if !backed.Equal(decoded) || !decoded.Equal(backed) || backed.Equal(nil) || !(*Assignment)(nil).Equal(nil) {
		t.Error("Equal: the two forms of one resource differ")
	}
	if other := NewAssignment(&endpointv3.ClusterLoadAssignment{ClusterName: "x"}); other.Equal(decoded) {
		t.Error("Equal: different resources are equal")
	}
	if got, _ := backed.Message(); got != m {
		t.Error("a message-backed Assignment must return its very message")
	}
	// A compact Assignment does not hold the message it was made from.
	c := CompactAssignment(m, wire)
	m.Endpoints = nil
	sameEndpoints(t, c.Endpoints(), wantEndpoints())
	if got, _ := c.Message(); len(got.GetEndpoints()) != 2 {
		t.Error("compact Assignment changed with the message it was made from")
	}
}

func TestDecodeAssignmentRejectsGarbage(t *testing.T) {
	if _, err := DecodeAssignment([]byte{0x0a, 0xff}); err == nil {
		t.Fatal("truncated wire form accepted")
	}
	a := NewAssignment(nil)
	if a.ClusterName() != "" || len(a.Endpoints()) != 0 {
		t.Errorf("nil message: %q %v", a.ClusterName(), a.Endpoints())
	}
}

func FuzzDecodeAssignment(f *testing.F) {
	wire, _ := proto.Marshal(testAssignment())
	f.Add(wire)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x01, 'c'})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := DecodeAssignment(b)
		if err != nil {
			return
		}
		m, err := a.Message()
		if err != nil {
			t.Fatalf("decoded once, not twice: %v", err)
		}
		if got := len(a.Endpoints()); got != len(endpointsOf(m)) {
			t.Fatalf("%d endpoints, message has %d", got, len(endpointsOf(m)))
		}
		if a.ClusterName() != m.GetClusterName() {
			t.Fatalf("name %q vs %q", a.ClusterName(), m.GetClusterName())
		}
	})
}
