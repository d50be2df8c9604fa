package hcm

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"sync"
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

// Close retires the pooled connections and the pools stay usable: an
// exchange under way finishes (its connection then closes, not pooled),
// and the next request goes over a new connection, HTTP/1.1 and h2c alike.
func TestPoolsCloseRenews(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	var mu sync.Mutex
	peers := map[string]int{} // requests per upstream connection
	addr := startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		peers[r.RemoteAddr]++
		mu.Unlock()
		if r.URL.Path == "/hold" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, "ok")
	}))
	p := NewPools(PoolOptions{})
	t.Cleanup(p.Close)
	call := func(client upstreamClient, path string) {
		req, _ := http.NewRequest("GET", "http://"+addr.String()+path, nil)
		resp, err := p.cluster("c").roundTrip(context.Background(), req, client, nil, nil)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	conns := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(peers)
	}
	for _, client := range []upstreamClient{clientFast, clientH2} {
		before := conns()
		call(client, "/a")
		call(client, "/b")
		if n := conns() - before; n != 1 {
			t.Fatalf("client %d: %d connections for two requests, want 1 (pooled)", client, n)
		}
		done := make(chan struct{})
		go func() {
			call(client, "/hold")
			close(done)
		}()
		<-started
		p.Close()
		release <- struct{}{}
		<-done
		call(client, "/c")
		if n := conns() - before; n != 2 {
			t.Errorf("client %d: %d connections, want a second one after Close", client, n)
		}
	}
}
