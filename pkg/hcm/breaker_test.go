package hcm

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/internal/waitfor"
)

// testBreaker is a circuit breaker with fixed limits (connections and
// pending requests: 0 is no limit).
type testBreaker struct {
	maxReq              int64
	maxConn, maxPending int64
	maxRetry            atomic.Int64 // changed by the test while the proxy runs
	req, retry          atomic.Int64
	conns, pending      atomic.Int64
	peakConns           atomic.Int64 // the most connection slots taken at once
}

func tryUpTo(n *atomic.Int64, limit int64) bool {
	if n.Add(1) > limit && limit > 0 {
		n.Add(-1)
		return false
	}
	return true
}
func (b *testBreaker) TryConnection() bool {
	if !tryUpTo(&b.conns, b.maxConn) {
		return false
	}
	for n := b.conns.Load(); n > b.peakConns.Load(); n = b.conns.Load() {
		b.peakConns.CompareAndSwap(b.peakConns.Load(), n)
	}
	return true
}
func (b *testBreaker) DoneConnection()  { b.conns.Add(-1) }
func (b *testBreaker) TryPending() bool { return tryUpTo(&b.pending, b.maxPending) }
func (b *testBreaker) DonePending()     { b.pending.Add(-1) }

func (b *testBreaker) TryRequest() bool {
	if b.req.Add(1) > b.maxReq {
		b.req.Add(-1)
		return false
	}
	return true
}
func (b *testBreaker) DoneRequest() { b.req.Add(-1) }
func (b *testBreaker) TryRetry() bool {
	if b.retry.Add(1) > b.maxRetry.Load() {
		b.retry.Add(-1)
		return false
	}
	return true
}
func (b *testBreaker) DoneRetry() { b.retry.Add(-1) }

type breakerUpstreams struct {
	*staticUpstreams
	b Breaker
	h HealthReporter // nil: none
}

func (u breakerUpstreams) Pick(ctx context.Context, cluster string, in PickInput) (Endpoint, error) {
	ep, err := u.staticUpstreams.Pick(ctx, cluster, in)
	ep.Breaker, ep.Health = u.b, u.h
	return ep, err
}

// healthLog records the outcomes reported for outlier detection.
type healthLog struct {
	mu    sync.Mutex
	codes []int
}

func (h *healthLog) Report(status int) {
	h.mu.Lock()
	h.codes = append(h.codes, status)
	h.mu.Unlock()
}

func (h *healthLog) reported() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.codes...)
}

// max_requests: a request beyond the cluster's limit is answered 503 UO
// at once; max_retries: no retry beyond it; every slot is given back.
func TestCircuitBreaker(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	var fails atomic.Int64
	st := newUpstreams()
	st.set("c", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hold":
			started <- struct{}{}
			<-release
		case "/fail":
			fails.Add(1)
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, "ok")
	}))))
	b := &testBreaker{maxReq: 1}
	hcm := `{"stat_prefix": "b", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
	  "retry_policy": {"retry_on": "5xx", "num_retries": 2, "retry_back_off": {"base_interval": "0.001s"}},
	  "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}}`
	env := startProxy(t, mustHCM(t, hcm), nil, breakerUpstreams{st, b, nil})
	p, log := env.addr, env.log

	held := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+p+"/hold", nil)
		req.Host = "svc.test"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			held <- 0
			return
		}
		resp.Body.Close()
		held <- resp.StatusCode
	}()
	<-started
	resp, body := get(t, &http.Client{}, "http://"+p+"/other", map[string]string{"Host": "svc.test"})
	if resp.StatusCode != 503 {
		t.Fatalf("second request with max_requests 1: %d %q, want 503", resp.StatusCode, body)
	}
	close(release)
	if code := <-held; code != 200 {
		t.Fatalf("held request: %d", code)
	}
	entries := log.waitEntries(t, 2)
	if entries[0].Flags != FlagUpstreamOverflow {
		t.Errorf("refused request flags %q, want UO", entries[0].Flags)
	}
	// max_retries 0: the 503 is not retried (one upstream call).
	resp, _ = get(t, &http.Client{}, "http://"+p+"/fail", map[string]string{"Host": "svc.test"})
	if resp.StatusCode != 503 || fails.Load() != 1 {
		t.Errorf("status %d after %d upstream calls, want the upstream's 503 after 1", resp.StatusCode, fails.Load())
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.req.Load() != 0 || b.retry.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("slots not given back: %d requests, %d retries", b.req.Load(), b.retry.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// With a retry slot the same request is retried.
	b.maxRetry.Store(5)
	get(t, &http.Client{}, "http://"+p+"/fail", map[string]string{"Host": "svc.test"})
	if fails.Load() != 4 {
		t.Errorf("%d upstream calls, want 1 + 3 (2 retries)", fails.Load())
	}
}

// max_connections and max_pending_requests (Istio's maxConnections and
// http1MaxPendingRequests) on the HTTP/1.1 pool: with one connection
// allowed, a second request waits for it and gets it when the first
// exchange ends; a third, with the one pending slot taken, is answered 503
// UO at once; a request that gives up while waiting frees its slot; the
// upstream sees one connection throughout.
func TestCircuitBreakerPending(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	var mu sync.Mutex
	peers := map[string]bool{} // the proxy's connections, by address
	addr := startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		peers[r.RemoteAddr] = true
		mu.Unlock()
		if r.URL.Path == "/hold" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, r.URL.Path)
	}))
	st := newUpstreams()
	st.set("c", ep(addr))
	b := &testBreaker{maxReq: 100, maxConn: 1, maxPending: 1}
	hcm := `{"stat_prefix": "b", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
	  "retry_policy": {"retry_on": "5xx,reset,connect-failure", "num_retries": 2},
	  "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}}`
	env := startProxy(t, mustHCM(t, hcm), nil, breakerUpstreams{st, b, nil})
	b.maxRetry.Store(10)

	do := func(path string, ctx context.Context) (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+env.addr+path, nil)
		req.Host = "svc.test"
		resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	type result struct {
		code int
		body string
	}
	held := make(chan result, 1)
	go func() {
		code, body, _ := do("/hold", context.Background())
		held <- result{code, body}
	}()
	<-started
	waiting := make(chan result, 1)
	go func() {
		code, body, _ := do("/second", context.Background())
		waiting <- result{code, body}
	}()
	waitfor.Cond(t, "the second request to wait for a connection", func() bool { return b.pending.Load() == 1 })
	code, body, err := do("/third", context.Background())
	if err != nil || code != 503 || !strings.Contains(body, "overflow") {
		t.Fatalf("third request with the pending slot taken: %d %q %v, want 503 overflow", code, body, err)
	}
	close(release)
	if r := <-held; r.code != 200 || r.body != "/hold" {
		t.Fatalf("held request: %+v", r)
	}
	if r := <-waiting; r.code != 200 || r.body != "/second" {
		t.Fatalf("waiting request: %+v", r)
	}
	entries := env.log.waitEntries(t, 3)
	if entries[0].Flags != FlagUpstreamOverflow || entries[0].Attempts > 1 {
		t.Errorf("refused request: flags %q after %d attempts, want UO and no retry", entries[0].Flags, entries[0].Attempts)
	}
	// A request that gives up while waiting gives its slot back.
	release = make(chan struct{})
	go func() {
		code, body, _ := do("/hold", context.Background())
		held <- result{code, body}
	}()
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, _, err := do("/gives-up", ctx)
		gaveUp <- err
	}()
	waitfor.Cond(t, "the request to wait", func() bool { return b.pending.Load() == 1 })
	cancel()
	<-gaveUp
	waitfor.Cond(t, "the pending slot to come back", func() bool { return b.pending.Load() == 0 })
	close(release)
	if r := <-held; r.code != 200 {
		t.Fatalf("held request: %+v", r)
	}
	if code, _, err := do("/after", context.Background()); code != 200 || err != nil {
		t.Fatalf("request after: %d %v", code, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(peers) != 1 {
		t.Errorf("upstream saw connections from %v, want one (max_connections 1)", peers)
	}
	if c, p := b.conns.Load(), b.pending.Load(); c != 1 || p != 0 {
		t.Errorf("breaker: %d connections, %d pending; want the idle one and none", c, p)
	}
}

// An endpoint without any connection gets one past the cluster's
// max_connections (Envoy's rule: nothing to wait for otherwise), and that
// connection holds no slot.
func TestCircuitBreakerFirstConnectionPerEndpoint(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, "ok")
	})
	a1, a2 := startHTTP(t, h), startHTTP(t, h)
	b := &testBreaker{maxReq: 100, maxConn: 1, maxPending: 1}
	pools := NewPools(PoolOptions{})
	t.Cleanup(pools.Close)
	cp := pools.cluster("c")
	call := func(ctx context.Context, a netip.AddrPort, path string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+a.String()+path, nil)
		return cp.roundTrip(ctx, req, clientFast, nil, b)
	}
	held := make(chan error, 1)
	go func() {
		resp, err := call(context.Background(), a1, "/hold")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		held <- err
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := call(ctx, a2, "/")
	if err != nil {
		t.Fatalf("request to the second endpoint: %v, want a connection past the limit", err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if c := b.conns.Load(); c != 1 {
		t.Errorf("%d connection slots taken, want 1 (the second endpoint's holds none)", c)
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
}

// A request whose route timeout passes while it waits for a pooled
// connection is answered 504 UT, and the endpoint, which never saw it, is
// not reported to outlier detection.
func TestCircuitBreakerWaitTimeout(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	st := newUpstreams()
	st.set("c", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, "ok")
	}))))
	b := &testBreaker{maxReq: 100, maxConn: 1, maxPending: 1}
	hl := &healthLog{}
	hcm := `{"stat_prefix": "b", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
	  "routes": [{"match": {"prefix": "/hold"}, "route": {"cluster": "c", "timeout": "0s"}},
	             {"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0.2s"}}]}]}}`
	env := startProxy(t, mustHCM(t, hcm), nil, breakerUpstreams{st, b, hl})
	held := make(chan int, 1)
	go func() {
		resp, _ := get(t, &http.Client{}, "http://"+env.addr+"/hold", map[string]string{"Host": "svc.test"})
		held <- resp.StatusCode
	}()
	<-started
	resp, body := get(t, &http.Client{}, "http://"+env.addr+"/waits", map[string]string{"Host": "svc.test"})
	if resp.StatusCode != 504 {
		t.Errorf("request timing out while waiting for the connection: %d %q, want 504", resp.StatusCode, body)
	}
	if got := hl.reported(); len(got) != 0 {
		t.Errorf("outcomes reported before the held request ended: %v, want none", got)
	}
	close(release)
	if code := <-held; code != 200 {
		t.Fatalf("held request: %d", code)
	}
	waitfor.Cond(t, "the held request's outcome", func() bool { return len(hl.reported()) == 1 })
	if got := hl.reported(); got[0] != 200 {
		t.Errorf("reported %v, want [200]", got)
	}
	if p := b.pending.Load(); p != 0 {
		t.Errorf("%d pending slots still taken", p)
	}
	if e := env.log.waitEntries(t, 2)[0]; e.Flags != FlagUpstreamTimeout {
		t.Errorf("timed-out request: flags %q, want UT", e.Flags)
	}
}

// Many clients at once against max_connections 2 and max_pending_requests
// 8, some giving up early: every request is answered 200 or 503 overflow
// (or ends with its client), the pool never holds more than 2 connections
// at once, and every pending slot comes back.
func TestCircuitBreakerPoolStress(t *testing.T) {
	st := newUpstreams()
	st.set("c", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond) // hold the connection a little
		io.WriteString(w, "ok")
	}))))
	b := &testBreaker{maxReq: 1000, maxConn: 2, maxPending: 8}
	hcm := `{"stat_prefix": "b", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
	  "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}}`
	env := startProxy(t, mustHCM(t, hcm), nil, breakerUpstreams{st, b, nil})
	var ok, overflow, gaveUp atomic.Int64
	var wg sync.WaitGroup
	for g := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Transport: &http.Transport{}}
			defer c.CloseIdleConnections()
			for i := range 15 {
				ctx, cancel := context.WithCancel(context.Background())
				if (g+i)%5 == 0 {
					ctx, cancel = context.WithTimeout(context.Background(), 2*time.Millisecond)
				}
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+env.addr+"/", nil)
				req.Host = "svc.test"
				resp, err := c.Do(req)
				if err != nil {
					cancel()
					gaveUp.Add(1)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				cancel()
				switch {
				case resp.StatusCode == 200:
					ok.Add(1)
				case resp.StatusCode == 503 && strings.Contains(string(body), "overflow"):
					overflow.Add(1)
				default:
					t.Errorf("answer %d %q", resp.StatusCode, body)
				}
			}
		}()
	}
	wg.Wait()
	waitfor.Cond(t, "every pending slot back", func() bool { return b.pending.Load() == 0 })
	if p := b.peakConns.Load(); p > 2 || p < 1 {
		t.Errorf("the pool held %d connections at once, want 1 or 2", p)
	}
	if ok.Load() == 0 || overflow.Load() == 0 {
		t.Errorf("%d served, %d overflowed, %d gave up: want both answers seen", ok.Load(), overflow.Load(), gaveUp.Load())
	}
	if c := b.conns.Load(); c > 2 || c < 0 {
		t.Errorf("%d connection slots taken after the run", c)
	}
	t.Logf("%d served, %d overflowed, %d gave up", ok.Load(), overflow.Load(), gaveUp.Load())
}
