package proxy_test

import (
	"testing"

	"github.com/meshlet/meshlet/internal/waitfor"
	"github.com/meshlet/meshlet/pkg/proxy"
)

// TestUpdateKeepsEstablishedConnections swaps configs under a live
// connection: it keeps flowing to the upstream it was given, while new
// connections follow the config in force.
func TestUpdateKeepsEstablishedConnections(t *testing.T) {
	a, b := echoUpstream(t, "a"), echoUpstream(t, "b")
	clusters := []M{staticCluster("a", a.addr), staticCluster("b", b.addr)}
	toA := snapshot(t, []M{listener("svc", "10.0.0.1:80", chain("", nil, tcpProxy("a")))}, clusters)
	h := startProxy(t, proxy.Options{}, toA, nil)

	old := h.dial(t, "10.0.0.1:80")
	if g := readGreeting(t, old); g != "a" {
		t.Fatalf("first connection went to %q, want a", g)
	}
	roundTrip(t, old, "before the update")

	// The listener now routes to b; cluster a is still defined.
	toB := snapshot(t, []M{listener("svc", "10.0.0.1:80", chain("", nil, tcpProxy("b")))}, clusters)
	h.p.Update(toB)
	if h.p.Snapshot() != toB {
		t.Fatal("Snapshot() does not return the config just applied")
	}
	roundTrip(t, old, "after the first update")

	fresh := h.dial(t, "10.0.0.1:80")
	if g := readGreeting(t, fresh); g != "b" {
		t.Fatalf("connection after the update went to %q, want b", g)
	}
	roundTrip(t, fresh, "new config")

	// The listener goes away entirely: established connections are not
	// torn down by a config change; new ones find no listener.
	h.p.Update(snapshot(t, nil, clusters))
	roundTrip(t, old, "after the listener went away")
	roundTrip(t, fresh, "after the listener went away")
	refused := h.dial(t, "10.0.0.1:80")
	expectClosed(t, refused)
	if n := h.p.Stats().NoListener; n != 1 {
		t.Errorf("NoListener %d, want 1", n)
	}
	if a.accepted.Load() != 1 || b.accepted.Load() != 1 {
		t.Errorf("upstream connections a=%d b=%d, want 1 each", a.accepted.Load(), b.accepted.Load())
	}
	// The refused connection leaves Active just after its socket closes.
	waitfor.Cond(t, "Active to count only the 2 established connections", func() bool { return h.p.Stats().Active == 2 })
}
