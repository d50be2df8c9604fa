package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

// httpConfig: one HTTP listener on any address, port 8080, routing by host
// and path to two clusters, with a request header added on the way.
const httpConfig = `capture:
  acceleration: on
static_resources:
  listeners:
  - name: http-8080
    address: {socket_address: {address: 0.0.0.0, port_value: 8080}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            name: local
            request_headers_to_add:
            - header: {key: x-meshlet-test, value: routed}
            virtual_hosts:
            - name: a
              domains: ["a.example", "a.example:*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: a}
            - name: default
              domains: ["*"]
              routes:
              - match: {prefix: "/b/"}
                route: {cluster: b}
              - match: {prefix: "/"}
                direct_response: {status: 404, body: {inline_string: "no route here"}}
  clusters:
  - name: a
    type: STATIC
    load_assignment:
      cluster_name: a
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18201}}}}]}]
  - name: b
    type: STATIC
    http2_protocol_options: {}
    load_assignment:
      cluster_name: b
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18202}}}}]}]
`

// HTTP through the agent: curl (HTTP/1.1 and h2c prior knowledge) reaches
// the cluster its host and path select, and the upstream sees the header
// the route config adds.
func TestHTTPRoutingThroughTheAgent(t *testing.T) {
	need(t, "curl")
	m := newSandbox(t)
	for _, name := range []string{"a", "b"} {
		lis := m.listen(map[string]string{"a": "127.0.0.1:18201", "b": "127.0.0.1:18202"}[name])
		h := http.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "cluster=%s path=%s header=%s proto=%s", name, r.URL.Path, r.Header.Get("x-meshlet-test"), r.Proto)
		}))
		if name == "b" { // cluster b speaks HTTP/2 (h2c) upstream
			h = h2c.NewHandler(h, &http2.Server{})
		}
		srv := &http.Server{Handler: h}
		go srv.Serve(lis)
		t.Cleanup(func() { srv.Close() })
	}
	m.start(httpConfig)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"-H", "Host: a.example", "http://10.96.3.1:8080/x"}, "cluster=a path=/x header=routed"},
		{[]string{"http://10.96.3.2:8080/b/y"}, "cluster=b path=/b/y header=routed proto=HTTP/2.0"},
		{[]string{"--http2-prior-knowledge", "-H", "Host: a.example", "http://10.96.3.1:8080/h2"}, "cluster=a path=/h2 header=routed"},
		{[]string{"--http2-prior-knowledge", "http://10.96.3.3:8080/b/z"}, "cluster=b path=/b/z header=routed"},
		{[]string{"http://10.96.3.1:8080/nowhere"}, "no route here"},
	}
	for _, c := range cases {
		out := run(t, m.app("curl", append([]string{"-sS", "--max-time", "20"}, c.args...)...))
		if !strings.HasPrefix(out, c.want) {
			t.Fatalf("curl %v: got %q, want prefix %q", c.args, out, c.want)
		}
	}
	st := m.status()
	if st.BPF.Captured != uint64(len(cases)) || st.ProxyStats.HTTPConns != uint64(len(cases)) {
		t.Fatalf("captured %d, http connections %d; want %d each", st.BPF.Captured, st.ProxyStats.HTTPConns, len(cases))
	}
}
