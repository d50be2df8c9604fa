package server

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/internal/istiofixture"
	"github.com/meshlet/meshlet/pkg/resources"
)

// checkPreEncoded reports whether p, made by preEncoded from b, marshals to
// b: the encoding is the contract that keeps versions and the bytes on the
// wire in step.
func checkPreEncoded(p proto.Message, b []byte) error {
	got, err := proto.MarshalOptions{Deterministic: true}.Marshal(p)
	if err != nil {
		return err
	}
	if string(got) != string(b) {
		return errors.New("pre-encoded message does not marshal to the resource's encoding")
	}
	return nil
}

// checkServed checks one resource: its pre-encoded form marshals to the
// resource's own deterministic encoding, go-control-plane reads the right
// name from it, and decoding what is served gives the resource back.
func checkServed(t *testing.T, name string, m proto.Message) {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	p, err := preEncoded(m, b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if err := checkPreEncoded(p, b); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if got := cachev3.GetResourceName(p); got != name {
		t.Fatalf("go-control-plane reads the name %q, want %q", got, name)
	}
	wire, err := cachev3.MarshalResource(types.Resource(p))
	if err != nil {
		t.Fatal(err)
	}
	back := m.ProtoReflect().Type().New().Interface()
	if err := proto.Unmarshal(wire, back); err != nil || !proto.Equal(back, m) {
		t.Fatalf("%s: what is served decodes to a different resource (err %v)", name, err)
	}
}

func TestPreEncodedServesTheSameBytes(t *testing.T) {
	var sets []*resources.Set
	set, _, err := Decode(bootstrapJSON(5, func(i int) int { return 8080 + i }))
	if err != nil {
		t.Fatal(err)
	}
	sets = append(sets, set)
	// Real Istio output, when the shared fixtures are at hand.
	dumps, _ := filepath.Glob(filepath.Join(istiofixture.Dir(), "*.json"))
	for _, f := range dumps {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s, _, err := Decode(data)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		sets = append(sets, s)
	}
	t.Logf("%d resource sets (%d Istio dumps)", len(sets), len(dumps))
	n := 0
	for _, s := range sets {
		for k, v := range s.Listeners {
			checkServed(t, k, v)
			n++
		}
		for k, v := range s.Routes {
			checkServed(t, k, v)
			n++
		}
		for k, v := range s.Clusters {
			checkServed(t, k, v)
			n++
		}
		for k, v := range s.Endpoints {
			m, err := v.Message()
			if err != nil {
				t.Fatal(err)
			}
			if m.GetClusterName() == "" {
				m = proto.Clone(m).(*endpointv3.ClusterLoadAssignment)
				m.ClusterName = k
			}
			checkServed(t, k, m)
			n++
		}
	}
	if n == 0 {
		t.Fatal("no resources checked")
	}
	// A resource carrying unknown fields of its own keeps them, after the
	// known ones, as before.
	l := &listenerv3.Listener{Name: "with-unknown", StatPrefix: "x"}
	l.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 9999, protowire.VarintType), 7))
	checkServed(t, "with-unknown", l)
	// No name at all (field 1 unset) is served as is.
	checkServed(t, "", &routev3.RouteConfiguration{})
}

// The served snapshot hands go-control-plane the pre-encoded forms and
// keeps the messages for validation.
func TestSnapshotServesPreEncoded(t *testing.T) {
	_, snap := threeClusterSnapshot(t)
	for _, typ := range servedTypes {
		ts := snap.types[typ]
		for name, sv := range snap.GetResources(typ) {
			if sv == ts.plain[name] {
				t.Errorf("%s %q: served as the message itself", typ, name)
			}
			if len(sv.ProtoReflect().GetUnknown()) == 0 && proto.Size(ts.plain[name]) > len(name)+4 {
				t.Errorf("%s %q: the served form holds no pre-encoded bytes", typ, name)
			}
			if snap.GetResourcesAndTTL(typ)[name].Resource != sv {
				t.Errorf("%s %q: GetResources and GetResourcesAndTTL differ", typ, name)
			}
		}
	}
}

// FuzzPreEncoded: for any listener or cluster that decodes, the
// pre-encoded form marshals to the resource's deterministic encoding.
func FuzzPreEncoded(f *testing.F) {
	for _, m := range []proto.Message{
		&listenerv3.Listener{Name: "l", StatPrefix: "s"},
		&clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}},
	} {
		b, _ := proto.Marshal(m)
		f.Add(b, m == proto.Message(nil))
	}
	f.Add([]byte{0x0a, 0x01, 'x', 0x0a, 0x01, 'y'}, true) // the name twice: the last one wins
	f.Fuzz(func(t *testing.T, data []byte, cluster bool) {
		var m proto.Message = &listenerv3.Listener{}
		if cluster {
			m = &clusterv3.Cluster{}
		}
		if proto.Unmarshal(data, m) != nil {
			return
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			return
		}
		p, err := preEncoded(m, b)
		if err != nil {
			t.Fatalf("preEncoded of a deterministic encoding: %v", err)
		}
		if err := checkPreEncoded(p, b); err != nil {
			t.Fatal(err)
		}
	})
}
