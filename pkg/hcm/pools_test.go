package hcm

import (
	"runtime"
	"testing"
	"time"
)

// Compiled route tables are cached per proto pointer and dropped once the
// control plane lets go of the proto (no leak across config swaps).
func TestRouteCacheWeak(t *testing.T) {
	p := NewPools(PoolOptions{})
	rc := mustRC(t, `{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}`)
	a, b := p.routes.get(rc), p.routes.get(rc)
	if a != b || a.err != nil {
		t.Fatalf("not cached: %p %p %v", a, b, a.err)
	}
	if n := p.routes.len(); n != 1 {
		t.Fatalf("cache holds %d", n)
	}
	runtime.KeepAlive(rc)
	rc = nil
	deadline := time.Now().Add(10 * time.Second)
	for p.routes.len() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("compiled table not released after its proto was dropped")
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPoolsRetain(t *testing.T) {
	p := NewPools(PoolOptions{})
	a, b := p.cluster("a"), p.cluster("b")
	if p.cluster("a") != a {
		t.Fatal("cluster pool not reused")
	}
	p.Retain(func(c string) bool { return c == "a" })
	if p.cluster("a") != a {
		t.Error("retained pool replaced")
	}
	if p.cluster("b") == b {
		t.Error("dropped pool still present")
	}
	p.Close()
}
