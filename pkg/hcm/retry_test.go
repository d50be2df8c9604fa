package hcm

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
)

// retryHCM routes everything to cluster "c" with the given retry_policy
// (JSON) on the virtual host, which also asks for x-envoy-attempt-count
// both ways.
func retryHCM(policy string) string {
	return `{"stat_prefix": "r", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
	  "include_request_attempt_count": true, "include_attempt_count_in_response": true,
	  "retry_policy": ` + policy + `,
	  "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "10s"}}]}]}}`
}

// counted is an upstream that counts its requests and answers with h.
func counted(t *testing.T, n *atomic.Int64, h func(w http.ResponseWriter, r *http.Request, body string)) Endpoint {
	return ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		b, _ := io.ReadAll(r.Body)
		h(w, r, string(b))
	})))
}

func TestRetryPolicy(t *testing.T) {
	fail := func(w http.ResponseWriter, r *http.Request, body string) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	ok := func(w http.ResponseWriter, r *http.Request, body string) {
		fmt.Fprintf(w, "ok attempt=%s body=%q", r.Header.Get("X-Envoy-Attempt-Count"), body)
	}
	hang := func(w http.ResponseWriter, r *http.Request, body string) { <-r.Context().Done() }
	const backoff = `"retry_back_off": {"base_interval": "0.001s"}`
	istio := `{"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", "num_retries": 2,
	  "retriable_status_codes": [503], "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
	  "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
	  "host_selection_retry_max_attempts": "5", ` + backoff + `}`

	cases := []struct {
		name         string
		policy       string
		eps          []func(w http.ResponseWriter, r *http.Request, body string)
		method, body string
		h2           bool
		code         int
		wantBody     string
		flags        string
		attempts     int
	}{
		{"istio default: 503 then another host", istio, [](func(http.ResponseWriter, *http.Request, string)){fail, ok}, "GET", "", false, 200, `ok attempt=2 body=""`, "", 2},
		{"POST body replayed (content-length)", istio, [](func(http.ResponseWriter, *http.Request, string)){fail, ok}, "POST", "payload", false, 200, `ok attempt=2 body="payload"`, "", 2},
		{"h2c body of unknown length replayed", istio, [](func(http.ResponseWriter, *http.Request, string)){fail, ok}, "POST", "h2 payload", true, 200, `ok attempt=2 body="h2 payload"`, "", 2},
		{"exhausted: last answer forwarded, URX", `{"retry_on": "5xx", "num_retries": 2, ` + backoff + `}`, [](func(http.ResponseWriter, *http.Request, string)){fail}, "GET", "", false, 503, "", FlagRetryLimitExceeded, 3},
		{"not a retry condition", `{"retry_on": "connect-failure", "num_retries": 2}`, [](func(http.ResponseWriter, *http.Request, string)){fail, ok}, "GET", "", false, 503, "", "", 1},
		{"per-try timeout, then another host", `{"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.2s", ` + backoff + `}`, [](func(http.ResponseWriter, *http.Request, string)){hang, ok}, "GET", "", false, 200, `ok attempt=2 body=""`, "", 2},
		{"per-try timeout on every try", `{"retry_on": "reset", "num_retries": 1, "per_try_timeout": "0.2s", ` + backoff + `}`, [](func(http.ResponseWriter, *http.Request, string)){hang}, "GET", "", false, 504, "", FlagRetryLimitExceeded + "," + FlagUpstreamTimeout, 2},
		{"per-try timeout via h2c downstream", `{"retry_on": "gateway-error", "num_retries": 1, "per_try_timeout": "0.2s", ` + backoff + `}`, [](func(http.ResponseWriter, *http.Request, string)){hang, ok}, "GET", "", true, 200, `ok attempt=2 body=""`, "", 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up := newUpstreams()
			counts := make([]atomic.Int64, len(c.eps))
			var eps []Endpoint
			for i, h := range c.eps {
				eps = append(eps, counted(t, &counts[i], h))
			}
			up.set("c", eps...)
			p := startProxy(t, mustHCM(t, retryHCM(c.policy)), nil, up)
			cl := &http.Client{Transport: &http.Transport{}}
			if c.h2 {
				cl.Transport = h2cTransport()
			}
			defer cl.CloseIdleConnections()
			var body io.Reader
			if c.body != "" {
				body = strings.NewReader(c.body)
				if c.h2 {
					body = io.MultiReader(body) // no length known: sent as DATA until END_STREAM
				}
			}
			req, err := http.NewRequest(c.method, "http://"+p.addr+"/x", body)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = "svc.test"
			resp, err := cl.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.code || (c.wantBody != "" && string(b) != c.wantBody) {
				t.Fatalf("status %d body %q, want %d %q", resp.StatusCode, b, c.code, c.wantBody)
			}
			e := p.log.last(t, 1)
			if e.Flags != c.flags || e.Attempts != c.attempts {
				t.Errorf("access log flags %q attempts %d, want %q %d", e.Flags, e.Attempts, c.flags, c.attempts)
			}
			if c.code < 500 || c.code == http.StatusServiceUnavailable {
				if got := resp.Header.Get("X-Envoy-Attempt-Count"); got != fmt.Sprint(c.attempts) {
					t.Errorf("x-envoy-attempt-count %q, want %d", got, c.attempts)
				}
			}
			var total int64
			for i := range counts {
				total += counts[i].Load()
			}
			if total != int64(c.attempts) {
				t.Errorf("upstreams saw %d requests, want %d", total, c.attempts)
			}
		})
	}
}

// A gRPC trailers-only UNAVAILABLE is retried on "unavailable".
func TestRetryGRPCUnavailable(t *testing.T) {
	var n atomic.Int64
	up := newUpstreams()
	up.set("c", Endpoint{Addr: startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		if n.Add(1) == 1 {
			w.Header().Set("Grpc-Status", "14")
			w.WriteHeader(200)
			return
		}
		w.Header().Set("Trailer", "Grpc-Status")
		w.Write([]byte{0, 0, 0, 0, 0})
		w.Header().Set("Grpc-Status", "0")
	})), Protocol: UpstreamHTTP2})
	p := startProxy(t, mustHCM(t, retryHCM(`{"retry_on": "unavailable", "num_retries": 1, "retry_back_off": {"base_interval": "0.001s"}}`)), nil, up)
	resp := grpcCall(t, p.addr, "/svc/Method")
	if got := resp.Trailer.Get("Grpc-Status"); got != "0" || n.Load() != 2 {
		t.Errorf("grpc-status %q after %d upstream calls, want 0 after 2", got, n.Load())
	}
}

// The per-try timer never outlives its attempt: a slow but successful
// response body (after headers) is not cut by it.
func TestPerTryTimeoutCoversHeadersOnly(t *testing.T) {
	up := newUpstreams()
	up.set("c", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		time.Sleep(400 * time.Millisecond)
		io.WriteString(w, "late body")
	}))))
	p := startProxy(t, mustHCM(t, retryHCM(`{"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.2s"}`)), nil, up)
	resp, b := get(t, &http.Client{}, "http://"+p.addr+"/x", map[string]string{"Host": "svc.test"})
	if resp.StatusCode != 200 || string(b) != "late body" {
		t.Fatalf("status %d body %q", resp.StatusCode, b)
	}
}

func TestCompileRetry(t *testing.T) {
	rt := compileT(t, `{"virtual_hosts": [{"name": "v", "domains": ["*"],
	  "retry_policy": {"retry_on": "5xx", "num_retries": 3},
	  "routes": [
	    {"match": {"prefix": "/own"}, "route": {"cluster": "c", "retry_policy": {"retry_on": "retriable-headers", "retriable_headers": [{"name": "x-retry", "exact_match": "yes"}], "retry_back_off": {"base_interval": "0.1s", "max_interval": "0.3s"}}}},
	    {"match": {"prefix": "/none"}, "route": {"cluster": "c", "retry_policy": {"retry_on": "envoy-ratelimited"}}},
	    {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}`)
	own, none, vh := rt.match(view("h", "/own", nil)), rt.match(view("h", "/none", nil)), rt.match(view("h", "/x", nil))
	if vh.retry == nil || vh.retry.n != 3 || vh.retry.max != 10*defaultRetryBase {
		t.Errorf("virtual host policy not inherited: %+v", vh.retry)
	}
	if none.retry != nil {
		t.Errorf("a policy on nothing retries: %+v", none.retry)
	}
	p := own.retry
	if p == nil || p.n != 1 {
		t.Fatalf("route policy %+v", p)
	}
	if !p.retriableResponse(&http.Response{StatusCode: 200, Header: http.Header{"X-Retry": {"yes"}}}) ||
		p.retriableResponse(&http.Response{StatusCode: 503, Header: http.Header{}}) {
		t.Error("retriable_headers misjudged")
	}
	for k := 1; k < 10; k++ {
		if d := p.backoff(k); d < 0 || d > 300*time.Millisecond {
			t.Fatalf("backoff(%d) = %v outside [0, max_interval]", k, d)
		}
	}
	if _, err := compileRoutes(mustRC(t, `{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c",
	  "retry_policy": {"retry_on": "5xx", "retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}}}}]}]}`)); err == nil {
		t.Error("max_interval below base_interval accepted")
	}
}
