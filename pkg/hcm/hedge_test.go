package hcm

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// hedge_on_per_try_timeout: at the per-try timeout a second attempt starts
// beside the first, and whichever answers first wins; without hedging the
// first attempt is cut and its answer lost.
func TestHedgeOnPerTryTimeout(t *testing.T) {
	cancelled := make(chan string, 4)
	slow := func(name string, d time.Duration) Endpoint {
		return ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			select {
			case <-time.After(d):
				fmt.Fprintf(w, "%s body=%q attempt=%s", name, b, r.Header.Get("X-Envoy-Attempt-Count"))
			case <-r.Context().Done():
				cancelled <- name
			}
		})))
	}
	a, b := slow("a", 900*time.Millisecond), slow("b", 2500*time.Millisecond)
	policy := func(hedge bool) string {
		return `{"stat_prefix": "h", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "include_request_attempt_count": true,
		  "hedge_policy": {"hedge_on_per_try_timeout": ` + fmt.Sprint(hedge) + `},
		  "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "10s",
		    "retry_policy": {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.3s", "retry_back_off": {"base_interval": "0.001s"}}}}]}]}}`
	}
	for _, c := range []struct {
		hedge    bool
		code     int
		want     string
		loser    string
		flags    string
		attempts int
	}{
		// Hedged: a (900 ms) outruns the hedge to b started at 300 ms,
		// which is cancelled.
		{true, 200, `a body="payload" attempt=1`, "b", "", 2},
		// Not hedged: a is cut at 300 ms, its answer lost; b is cut too.
		{false, 504, "upstream request timeout", "a", FlagRetryLimitExceeded + "," + FlagUpstreamTimeout, 2},
	} {
		t.Run(fmt.Sprintf("hedge=%v", c.hedge), func(t *testing.T) {
			up := newUpstreams()
			up.set("c", a, b)
			p := startProxy(t, mustHCM(t, policy(c.hedge)), nil, up)
			req, _ := http.NewRequest("POST", "http://"+p.addr+"/x", strings.NewReader("payload"))
			req.Host = "svc.test"
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.code || string(body) != c.want {
				t.Fatalf("%d %q, want %d %q", resp.StatusCode, body, c.code, c.want)
			}
			select {
			case got := <-cancelled:
				if got != c.loser {
					t.Errorf("%s was cancelled, want %s", got, c.loser)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("the losing attempt to %s was never cancelled", c.loser)
			}
			if e := p.log.last(t, 1); e.Attempts != c.attempts || e.Flags != c.flags {
				t.Errorf("access log attempts %d flags %q", e.Attempts, e.Flags)
			}
		})
	}
}

// Hedged attempts that all fail retriably end with the last answer and
// URX, like plain retries.
func TestHedgeExhausted(t *testing.T) {
	up := newUpstreams()
	var eps []Endpoint
	for range 2 {
		eps = append(eps, ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(503)
		}))))
	}
	up.set("c", eps...)
	p := startProxy(t, mustHCM(t, `{"stat_prefix": "h", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
	  "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c", "hedge_policy": {"hedge_on_per_try_timeout": true},
	    "retry_policy": {"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "1s", "retry_back_off": {"base_interval": "0.001s"}}}}]}]}}`), nil, up)
	resp, _ := get(t, &http.Client{}, "http://"+p.addr+"/x", map[string]string{"Host": "svc.test"})
	if resp.StatusCode != 503 {
		t.Fatalf("status %d, want the upstream's 503", resp.StatusCode)
	}
	if e := p.log.last(t, 1); e.Attempts != 3 || e.Flags != FlagRetryLimitExceeded {
		t.Errorf("attempts %d flags %q, want 3 and URX", e.Attempts, e.Flags)
	}
}
