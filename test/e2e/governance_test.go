package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshlet/meshlet/internal/privtest"
)

// governanceConfig exercises the xDS governance fields through the real
// agent: an active TCP health check that takes a dead endpoint out, a
// retry policy that hides a failing one (Istio's default shape), a fault
// the route injects, and circuit breakers as Istio's connectionPool
// (maxConnections 1, http1MaxPendingRequests 1) writes them.
var governanceConfig = `capture:
  acceleration: on
static_resources:
  listeners:
  - name: gov-8090
    address: {socket_address: {address: 0.0.0.0, port_value: 8090}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gov
          http_filters:
          - name: envoy.filters.http.fault
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            name: gov
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/hc"}
                route: {cluster: hc}
              - match: {prefix: "/retry"}
                route:
                  cluster: flaky
                  retry_policy:
                    retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
                    num_retries: 2
                    retriable_status_codes: [503]
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}
                    host_selection_retry_max_attempts: "5"
              - match: {prefix: "/cb"}
                route: {cluster: cb}
              - match: {prefix: "/fault"}
                route: {cluster: hc}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: {http_status: 418, percentage: {numerator: 100}}
  clusters:
  - name: hc
    type: STATIC
    connect_timeout: 1s
    health_checks:
    - {timeout: 1s, interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}
    load_assignment:
      cluster_name: hc
      endpoints: [{lb_endpoints: [
        {endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18401}}}},
        {endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18402}}}}]}]
  - name: cb
    type: STATIC
    connect_timeout: 1s
    circuit_breakers:
      thresholds: [{max_connections: 1, max_pending_requests: 1, max_requests: 4294967295, max_retries: 4294967295}]
    load_assignment:
      cluster_name: cb
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18405}}}}]}]
  - name: flaky
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: flaky
      endpoints: [{lb_endpoints: [
        {endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18403}}}},
        {endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18404}}}}]}]
`

const govVIP = "10.96.9.1:8090"

func TestL7Governance(t *testing.T) {
	need(t, "curl")
	m := newSandbox(t)
	for port, code := range map[int]int{18401: 200, 18403: 503, 18404: 200} {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(code)
			io.WriteString(w, fmt.Sprintf("port=%d", port))
		})}
		go srv.Serve(m.listen(fmt.Sprintf("127.0.0.1:%d", port)))
		t.Cleanup(func() { srv.Close() })
	}
	// 18402: nothing listens; its health check fails.
	// 18405 holds /cb/hold until released.
	release, held := make(chan struct{}), make(chan struct{}, 1)
	cbSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cb/hold" {
			held <- struct{}{}
			<-release
		}
		io.WriteString(w, r.URL.Path)
	})}
	go cbSrv.Serve(m.listen("127.0.0.1:18405"))
	t.Cleanup(func() { cbSrv.Close() })
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	m.start(governanceConfig)

	status := func(path string) (int, string) {
		out := run(t, m.app("curl", "-sS", "--max-time", "10", "-o", "-", "-w", " %{http_code}", "http://"+govVIP+path))
		i := strings.LastIndexByte(out, ' ')
		var code int
		fmt.Sscan(out[i+1:], &code)
		return code, out[:i]
	}
	// The health check takes 18402 out within a few intervals: then every
	// request reaches 18401.
	ok := 0
	privtest.WaitFor(t, 20*time.Second, "10 answers in a row from the healthy endpoint", func() bool {
		if code, body := status("/hc"); code == 200 && body == "port=18401" {
			ok++
		} else {
			ok = 0
		}
		return ok >= 10
	})
	// The admin endpoint's /clusters says why (Envoy's format).
	resp, err := m.http.Get("http://127.0.0.1:15000/clusters")
	if err != nil {
		t.Fatal(err)
	}
	dump, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"hc::127.0.0.1:18402::health_flags::/failed_active_hc\n", "hc::127.0.0.1:18401::health_flags::healthy\n"} {
		if !strings.Contains(string(dump), want) {
			t.Errorf("/clusters lacks %q:\n%s", want, dump)
		}
	}
	// Istio's retry policy: 18403 answers 503, the retry goes to 18404.
	for i := range 10 {
		if code, body := status("/retry"); code != 200 || body != "port=18404" {
			t.Fatalf("/retry %d: %d %q, want 200 from 18404", i, code, body)
		}
	}
	if code, _ := status("/fault"); code != 418 {
		t.Errorf("/fault: %d, want the injected 418", code)
	}

	// Istio's circuit-breaking task: one connection, one pending request.
	// The held request takes the connection, the next waits for it, the
	// third overflows (503 UO) at once; the waiting one is served once the
	// held one ends.
	type answer struct {
		code int
		body string
	}
	background := func(path string) chan answer {
		ch := make(chan answer, 1)
		go func() {
			code, body := status(path)
			ch <- answer{code, body}
		}()
		return ch
	}
	first := background("/cb/hold")
	<-held
	second := background("/cb/second")
	privtest.WaitFor(t, 10*time.Second, "the second request to wait for the connection (/clusters)", func() bool {
		resp, err := m.http.Get("http://127.0.0.1:15000/clusters")
		if err != nil {
			return false
		}
		dump, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return strings.Contains(string(dump), "cb::in_flight::pending_requests::1\n")
	})
	if code, body := status("/cb/third"); code != 503 || !strings.Contains(body, "overflow") {
		t.Errorf("/cb/third with the connection and the pending slot taken: %d %q, want 503 overflow", code, body)
	}
	releaseOnce.Do(func() { close(release) })
	for _, a := range []struct {
		ch   chan answer
		want string
	}{{first, "/cb/hold"}, {second, "/cb/second"}} {
		if got := <-a.ch; got.code != 200 || got.body != a.want {
			t.Errorf("%s: %d %q, want 200", a.want, got.code, got.body)
		}
	}
}
