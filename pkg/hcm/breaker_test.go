package hcm

import (
	"context"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// testBreaker is a circuit breaker with fixed limits.
type testBreaker struct {
	maxReq     int64
	maxRetry   atomic.Int64 // changed by the test while the proxy runs
	req, retry atomic.Int64
}

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
}

func (u breakerUpstreams) Pick(ctx context.Context, cluster string, in PickInput) (Endpoint, error) {
	ep, err := u.staticUpstreams.Pick(ctx, cluster, in)
	ep.Breaker = u.b
	return ep, err
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
	env := startProxy(t, mustHCM(t, hcm), nil, breakerUpstreams{st, b})
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
