package resources

import (
	"fmt"
	"net/netip"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"
)

// Assignment is one EDS resource, an envoy.config.endpoint.v3.ClusterLoadAssignment.
//
// Endpoints are the bulk of a large configuration (a mesh of 10k services
// has ~100k), and a decoded LbEndpoint is a tree of seven protobuf structs
// (~450 bytes). An Assignment therefore comes in two forms with the same
// meaning:
//
//   - compact (CompactAssignment, DecodeAssignment: what the xDS client and
//     the persisted state hold): the resource's wire encoding plus a flat
//     list of the fields translation reads (Endpoints), ~60 bytes per
//     endpoint; Message decodes the whole resource on demand.
//   - message-backed (NewAssignment: static files, config dumps, inline
//     load assignments): the message itself; Wire encodes it on demand.
//
// An Assignment is immutable: consumers must not modify what Message or
// Wire return.
type Assignment struct {
	name string
	msg  *endpointv3.ClusterLoadAssignment // message-backed form
	wire []byte                            // compact form

	once sync.Once // computes eps for the message-backed form
	eps  []Endpoint
}

// Endpoint is one LbEndpoint of an Assignment, reduced to what traffic
// needs. Localities are flattened in order.
type Endpoint struct {
	// Addr is the socket address's IP; invalid when the address is a
	// host name (Host) or the endpoint has no socket address.
	Addr netip.Addr
	// Host is the socket address when it is not an IP literal (a DNS
	// name, for STRICT_DNS/LOGICAL_DNS clusters).
	Host string
	// Port is the socket address's port_value (0 when a named port is
	// used or there is no socket address).
	Port uint32
	// Weight is load_balancing_weight (0: not set).
	Weight uint32
	// Priority is the locality's priority.
	Priority uint32
	// Health is the endpoint's health_status.
	Health corev3.HealthStatus
	// NoSocketAddress is set for endpoints addressed otherwise (a pipe, an
	// Envoy internal address).
	NoSocketAddress bool
}

// NewAssignment wraps a decoded message. The message is kept as is (the
// caller must not modify it afterwards); its wire form is encoded on demand.
func NewAssignment(m *endpointv3.ClusterLoadAssignment) *Assignment {
	if m == nil {
		m = &endpointv3.ClusterLoadAssignment{}
	}
	return &Assignment{name: m.GetClusterName(), msg: m}
}

// CompactAssignment keeps wire, the encoding m was decoded from, and the
// endpoint list of m; m itself is dropped (and may be modified or freed by
// the caller). The caller guarantees that wire decodes to m.
func CompactAssignment(m *endpointv3.ClusterLoadAssignment, wire []byte) *Assignment {
	a := &Assignment{name: m.GetClusterName(), wire: wire}
	a.eps = endpointsOf(m)
	a.once.Do(func() {})
	return a
}

// DecodeAssignment decodes the wire form of a ClusterLoadAssignment into a
// compact Assignment. It does not validate the resource beyond decoding.
func DecodeAssignment(wire []byte) (*Assignment, error) {
	m := &endpointv3.ClusterLoadAssignment{}
	if err := proto.Unmarshal(wire, m); err != nil {
		return nil, fmt.Errorf("decode cluster load assignment: %w", err)
	}
	return CompactAssignment(m, wire), nil
}

// Compact reports whether a is in the compact form (wire encoding and
// endpoint list, no message).
func (a *Assignment) Compact() bool { return a.msg == nil }

// ClusterName is the resource's cluster_name (its EDS name; inline load
// assignments may leave it empty).
func (a *Assignment) ClusterName() string { return a.name }

// Endpoints returns the endpoints of all localities, in order. The slice is
// shared: do not modify it.
func (a *Assignment) Endpoints() []Endpoint {
	a.once.Do(func() { a.eps = endpointsOf(a.msg) })
	return a.eps
}

// Message returns the resource as a message: the very message of a
// message-backed Assignment, a fresh decode of a compact one.
func (a *Assignment) Message() (*endpointv3.ClusterLoadAssignment, error) {
	if a.msg != nil {
		return a.msg, nil
	}
	m := &endpointv3.ClusterLoadAssignment{}
	if err := proto.Unmarshal(a.wire, m); err != nil {
		return nil, fmt.Errorf("decode cluster load assignment %q: %w", a.name, err)
	}
	return m, nil
}

// Wire returns the resource's protobuf encoding: the very bytes a compact
// Assignment was made from (shared, not to be modified), or a
// deterministic encoding of the message.
func (a *Assignment) Wire() ([]byte, error) {
	if a.msg == nil {
		return a.wire, nil
	}
	return a.AppendWire(nil)
}

// AppendWire appends the resource's protobuf encoding (see Wire) to b.
func (a *Assignment) AppendWire(b []byte) ([]byte, error) {
	if a.msg == nil {
		return append(b, a.wire...), nil
	}
	out, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend(b, a.msg)
	if err != nil {
		return b, fmt.Errorf("encode cluster load assignment %q: %w", a.name, err)
	}
	return out, nil
}

// endpointsOf flattens the LbEndpoints of m (one allocation).
func endpointsOf(m *endpointv3.ClusterLoadAssignment) []Endpoint {
	n := 0
	for _, loc := range m.GetEndpoints() {
		n += len(loc.GetLbEndpoints())
	}
	if n == 0 {
		return nil
	}
	out := make([]Endpoint, 0, n)
	for _, loc := range m.GetEndpoints() {
		for _, lbe := range loc.GetLbEndpoints() {
			e := Endpoint{
				Weight:   lbe.GetLoadBalancingWeight().GetValue(),
				Priority: loc.GetPriority(),
				Health:   lbe.GetHealthStatus(),
			}
			if sa := lbe.GetEndpoint().GetAddress().GetSocketAddress(); sa != nil {
				if ip, err := netip.ParseAddr(sa.GetAddress()); err == nil {
					e.Addr = ip
				} else {
					e.Host = sa.GetAddress()
				}
				e.Port = sa.GetPortValue()
			} else {
				e.NoSocketAddress = true
			}
			out = append(out, e)
		}
	}
	return out
}

// Equal reports whether a and b hold equal resources (proto.Equal of their
// messages, whatever their forms). Two nil Assignments are equal.
func (a *Assignment) Equal(b *Assignment) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a == b {
		return true
	}
	x, err1 := a.Message()
	y, err2 := b.Message()
	return err1 == nil && err2 == nil && proto.Equal(x, y)
}
