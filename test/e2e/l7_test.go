package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshlet/meshlet/internal/privtest"
)

// The L7 data plane through the real agent: unmodified clients (curl, wrk,
// h2load) and Go clients (net/http, grpc-go) run inside the meshed cgroup
// and dial service addresses; the agent captures them, sniffs HTTP/1.1 or
// h2c, routes by the HttpConnectionManager's route_config and proxies to
// upstream servers that run in the test process inside the sandbox netns.

// l7Config has two HCM listeners on any address: port 8080 (HTTP routing:
// header match, regex path, weighted split, header mutations, a streaming
// echo) and port 9090 (gRPC to an h2c cluster; EmptyCall has a 300 ms route
// timeout, everything else follows grpc-timeout).
var l7Config = `capture:
  acceleration: on
  into_app: false
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
          access_log:
          - name: envoy.access_loggers.file
            filter: {header_filter: {header: {name: x-log, present_match: true}}}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: /dev/stdout
              log_format: {text_format: "ACCESS \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_CLUSTER% %DOWNSTREAM_LOCAL_ADDRESS% %REQ(X-MESH-REQUEST)%\n"}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            name: l7
            response_headers_to_add:
            - header: {key: x-mesh-response, value: added-by-route-config}
            virtual_hosts:
            - name: all
              domains: ["*"]
              request_headers_to_add:
              - header: {key: x-mesh-request, value: added-by-vhost}
              routes:
              - match:
                  prefix: "/"
                  headers: [{name: x-canary, string_match: {exact: "yes"}}]
                route: {cluster: canary}
              - match: {safe_regex: {regex: "/api/v[0-9]+/items/[0-9]+"}}
                route: {cluster: api}
              - match: {prefix: "/split"}
                route:
                  weighted_clusters:
                    clusters:
                    - {name: a, weight: 80}
                    - {name: b, weight: 20}
              - match: {prefix: "/echo"}
                route: {cluster: echo, timeout: 30s}
              - match: {prefix: "/"}
                route: {cluster: a}
  - name: grpc-9090
    address: {socket_address: {address: 0.0.0.0, port_value: 9090}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: grpc
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            name: grpc
            virtual_hosts:
            - name: grpc
              domains: ["*"]
              routes:
              - match: {path: "/grpc.testing.TestService/EmptyCall"}
                route: {cluster: grpc, timeout: 0.3s}
              - match: {prefix: "/", grpc: {}}
                route: {cluster: grpc, timeout: 0s, max_stream_duration: {grpc_timeout_header_max: 0s}}
  clusters:
` + l7Clusters

// l7Clusters: one HTTP/1.1 cluster per upstream server, and the gRPC
// cluster speaking h2c through HttpProtocolOptions.
var l7Clusters = func() string {
	var b strings.Builder
	for _, c := range l7HTTPUpstreams {
		fmt.Fprintf(&b, `  - name: %[1]s
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: %[1]s
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %[2]d}}}}]}]
`, c.name, c.port)
	}
	b.WriteString(`  - name: grpc
    type: STATIC
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: grpc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18310}}}}]}]
`)
	return b.String()
}()

var l7HTTPUpstreams = []struct {
	name string
	port int
}{{"a", 18301}, {"b", 18302}, {"canary", 18303}, {"api", 18304}, {"echo", 18305}}

const (
	l7HTTPVIP = "10.96.7.1:8080"
	l7GRPCVIP = "10.96.7.2:9090"
)

// l7Upstreams are the HTTP servers behind l7Config's clusters. Each answers
// "cluster=NAME path=PATH x-mesh-request=VALUE proto=PROTO"; echo streams
// the request body back.
type l7Upstreams struct {
	mu    sync.Mutex
	conns map[string]int // connections accepted, by cluster
	errs  []error
}

func startL7Upstreams(m *mesh) *l7Upstreams {
	u := &l7Upstreams{conns: map[string]int{}}
	for _, c := range l7HTTPUpstreams {
		name := c.name
		srv := &http.Server{Handler: u.handler(name), ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				u.mu.Lock()
				u.conns[name]++
				u.mu.Unlock()
			}
		}}
		lis := m.listen(fmt.Sprintf("127.0.0.1:%d", c.port))
		go srv.Serve(lis)
		m.t.Cleanup(func() { srv.Close() })
	}
	return u
}

func (u *l7Upstreams) fail(err error) {
	u.mu.Lock()
	u.errs = append(u.errs, err)
	u.mu.Unlock()
}

func (u *l7Upstreams) check(t *testing.T) {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, err := range u.errs {
		t.Error("upstream:", err)
	}
}

func (u *l7Upstreams) connCount(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.conns[name]
}

func (u *l7Upstreams) handler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if name != "echo" {
			w.Header().Set("x-upstream", name)
			fmt.Fprintf(w, "cluster=%s path=%s x-mesh-request=%s proto=%s", name, r.URL.Path, r.Header.Get("x-mesh-request"), r.Proto)
			return
		}
		// The body must arrive streamed (no Content-Length: the agent
		// must not buffer it to count it); it goes back in 32 KiB
		// flushed pieces, so the reply has no length either.
		if r.ContentLength != -1 {
			u.fail(fmt.Errorf("echo: request body with Content-Length %d, want a streamed body", r.ContentLength))
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		if err != nil {
			u.fail(fmt.Errorf("echo: read body: %w", err))
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fl := w.(http.Flusher)
		for off := 0; off < len(body); off += 32 << 10 {
			if _, err := w.Write(body[off:min(off+32<<10, len(body))]); err != nil {
				return
			}
			fl.Flush()
		}
	})
}

// setAccel switches acceleration through the admin endpoint.
func (m *mesh) setAccel(intoApp bool) {
	m.t.Helper()
	resp, err := m.http.Post(fmt.Sprintf("http://127.0.0.1:15000/acceleration?mode=on&into_app=%v", intoApp), "text/plain", nil)
	if err != nil {
		m.t.Fatalf("set acceleration: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		m.t.Fatalf("set acceleration into_app=%v: %s", intoApp, resp.Status)
	}
}

// startL7 prepares a sandbox with the HTTP upstreams and starts the agent.
func startL7(t *testing.T) (*mesh, *l7Upstreams) {
	m := newSandbox(t)
	u := startL7Upstreams(m)
	m.start(l7Config)
	t.Cleanup(func() { u.check(t) })
	return m, u
}

var (
	reWrkTotal = regexp.MustCompile(`(\d+) requests in`)
	reWrkBad   = regexp.MustCompile(`(Non-2xx or 3xx responses|Socket errors):[^\n]*`)
	reH2Reqs   = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	reH2Codes  = regexp.MustCompile(`status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
)

// Real clients through the agent, in both acceleration directions: curl
// (HTTP/1.1, h2c), wrk (HTTP/1.1 keep-alive), h2load (h2c, multiplexed) and
// Go's net/http (keep-alive, 4 MiB streamed bodies both ways, HTTP/1.1
// chunked and h2c).
func TestL7RealClients(t *testing.T) {
	need(t, "curl", "wrk", "h2load")
	m, u := startL7(t)
	for _, mode := range accelModes {
		t.Run(mode.name, func(t *testing.T) {
			m.setAccel(mode.intoApp)

			for _, c := range []struct{ args []string }{{nil}, {[]string{"--http2-prior-knowledge"}}} {
				args := append([]string{"-sS", "--max-time", "20", "-D", "-"}, c.args...)
				out := run(t, m.app("curl", append(args, "http://"+l7HTTPVIP+"/curl")...))
				if !strings.Contains(out, "cluster=a path=/curl x-mesh-request=added-by-vhost") || !strings.Contains(strings.ToLower(out), "x-mesh-response: added-by-route-config") {
					t.Fatalf("curl %v: got %q", c.args, out)
				}
			}

			out := run(t, m.app("wrk", "-t1", "-c8", "-d2s", "http://"+l7HTTPVIP+"/wrk"))
			total := reWrkTotal.FindStringSubmatch(out)
			if total == nil || total[1] == "0" || reWrkBad.MatchString(out) {
				t.Fatalf("wrk: want requests and no errors or non-2xx:\n%s", out)
			}
			t.Logf("wrk: %s requests", total[1])

			out = run(t, m.app("h2load", "-n", "2000", "-c", "4", "-m", "8", "http://"+l7HTTPVIP+"/h2load"))
			reqs, codes := reH2Reqs.FindStringSubmatch(out), reH2Codes.FindStringSubmatch(out)
			if reqs == nil || codes == nil || reqs[1] != "2000" || reqs[4] != "2000" || codes[1] != "2000" {
				t.Fatalf("h2load: want 2000 requests, all succeeded with 2xx:\n%s", out)
			}

			for _, proto := range []string{"h1", "h2c"} {
				before := u.connCount("echo")
				var rep httpReport
				out := run(t, m.role("l7-http", "http://"+l7HTTPVIP, proto, strconv.Itoa(4<<20)))
				if err := json.Unmarshal([]byte(out), &rep); err != nil {
					t.Fatalf("net/http %s: %v: %q", proto, err, out)
				}
				if rep.Requests != 22 || rep.Conns != 1 {
					t.Fatalf("net/http %s: %+v; want 22 requests on one keep-alive connection", proto, rep)
				}
				// The agent keeps its upstream connection too: both echoes
				// of this run share at most one new upstream connection.
				if n := u.connCount("echo") - before; n > 1 {
					t.Errorf("net/http %s: the agent opened %d upstream connections for 2 sequential requests, want ≤ 1 (keep-alive)", proto, n)
				}
			}
		})
	}
	checkAccelerated(t, m)
}

// Routing that reads like Envoy's docs, through the agent.
func TestL7Routing(t *testing.T) {
	need(t, "curl")
	m, _ := startL7(t)

	curl := func(args ...string) string {
		return run(t, m.app("curl", append([]string{"-sS", "--max-time", "20", "-D", "-"}, args...)...))
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"header match", []string{"-H", "x-canary: yes", "http://" + l7HTTPVIP + "/api/v1/items/7"}, "cluster=canary path=/api/v1/items/7 "},
		{"header match, other value", []string{"-H", "x-canary: no", "http://" + l7HTTPVIP + "/x"}, "cluster=a path=/x "},
		{"regex path", []string{"http://" + l7HTTPVIP + "/api/v2/items/42"}, "cluster=api path=/api/v2/items/42 "},
		{"regex matches the whole path only", []string{"http://" + l7HTTPVIP + "/api/v2/items/42/more"}, "cluster=a path=/api/v2/items/42/more "},
		{"regex ignores the query", []string{"http://" + l7HTTPVIP + "/api/v3/items/9?x=1"}, "cluster=api path=/api/v3/items/9 "},
		{"regex, non-digit id", []string{"http://" + l7HTTPVIP + "/api/v2/items/abc"}, "cluster=a "},
		{"h2c regex path", []string{"--http2-prior-knowledge", "http://" + l7HTTPVIP + "/api/v9/items/1"}, "cluster=api "},
	}
	for _, c := range cases {
		out := curl(c.args...)
		head, body, _ := strings.Cut(out, "\r\n\r\n")
		if !strings.HasPrefix(body, c.want) {
			t.Errorf("%s: curl %v: body %q, want prefix %q", c.name, c.args, body, c.want)
		}
		// request_headers_to_add (virtual host) reaches the upstream,
		// response_headers_to_add (route config) reaches the client.
		if !strings.Contains(body, "x-mesh-request=added-by-vhost") {
			t.Errorf("%s: the upstream did not see x-mesh-request: %q", c.name, body)
		}
		if !strings.Contains(strings.ToLower(head), "\nx-mesh-response: added-by-route-config") {
			t.Errorf("%s: the client did not get x-mesh-response:\n%s", c.name, head)
		}
	}

	// Weighted split 80/20 over 10 000 keep-alive requests from the Go
	// client on 8 connections: within ±1 % (100 requests), as the issue
	// asks. The agent picks weighted clusters by a Weyl sequence per route
	// (internal/weyl), exact within a few requests over any window; a
	// random pick would miss ±1 % about once in 80 runs (2.5σ).
	const n = 10000
	var rep splitReport
	out := run(t, m.role("l7-split", "http://"+l7HTTPVIP+"/split/x", strconv.Itoa(n), "8"))
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("split: %v: %q", err, out)
	}
	if rep.Errors != 0 || rep.By["a"]+rep.By["b"] != n || len(rep.By) != 2 {
		t.Fatalf("split: %+v; want %d answers from a and b only, no errors", rep, n)
	}
	if dev := math.Abs(float64(rep.By["a"]) - n*0.8); dev > 0.01*n {
		t.Errorf("split: a answered %d of %d (%.2f %%), want 80 %% ± 1 %%", rep.By["a"], n, 100*float64(rep.By["a"])/n)
	}
	t.Logf("split over %d requests on %d connections: a %d (%.2f %%), b %d", n, rep.Conns, rep.By["a"], 100*float64(rep.By["a"])/n, rep.By["b"])

	// The HCM's access_log (xDS): requests with x-log get an Envoy-format
	// line on the agent's stdout, others none (header_filter).
	curl("-H", "x-log: 1", "http://"+l7HTTPVIP+"/api/v4/items/5")
	curl("-H", "x-log: 1", "--http2-prior-knowledge", "http://"+l7HTTPVIP+"/api/v4/items/6")
	want := []string{
		`ACCESS "GET /api/v4/items/5 HTTP/1.1" 200 - via_upstream api ` + l7HTTPVIP + " added-by-vhost\n",
		`ACCESS "GET /api/v4/items/6 HTTP/2" 200 - via_upstream api ` + l7HTTPVIP + " added-by-vhost\n",
	}
	privtest.WaitFor(t, 15*time.Second, "access log lines on the agent's stdout", func() bool {
		out := m.log.String()
		return strings.Contains(out, want[0]) && strings.Contains(out, want[1])
	})
	if n := strings.Count(m.log.String(), "ACCESS \""); n != 2 {
		t.Errorf("%d access log lines, want 2 (only requests with x-log)", n)
	}
}

// Malformed and oversized requests through the agent get Envoy's replies,
// and the agent keeps serving.
func TestL7Malformed(t *testing.T) {
	need(t, "curl")
	m, _ := startL7(t)

	// Over max_request_headers_kb (60 KiB by default): 431.
	big := "x-big: " + strings.Repeat("b", 80<<10)
	code := run(t, m.app("curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", "-H", big, "http://"+l7HTTPVIP+"/big"))
	if code != "431" {
		t.Errorf("80 KiB header: status %s, want 431", code)
	}

	raw := func(payload string) rawReport {
		var rep rawReport
		out := run(t, m.role("l7-raw", l7HTTPVIP, strconv.Quote(payload)))
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("raw %q: %v: %q", payload, err, out)
		}
		return rep
	}
	for _, c := range []struct{ name, payload string }{
		{"garbage after the version", "GET /x HTTP/1.1 garbage\r\nHost: a\r\n\r\n"},
		{"bad version", "GET /x HTTP/1.Z\r\nHost: a\r\n\r\n"},
		{"header line without a colon", "GET /x HTTP/1.1\r\nHost: a\r\nthis is not a header\r\n\r\n"},
		{"conflicting Content-Length", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"},
	} {
		rep := raw(c.payload)
		if !strings.HasPrefix(rep.Reply, "HTTP/1.1 400 ") || !rep.Closed {
			t.Errorf("%s: reply %q (closed %v), want 400 and the connection closed", c.name, rep.Reply, rep.Closed)
		}
	}
	// Bytes that are not HTTP on a listener whose only chain is the HTTP
	// manager: 400 and close, like Envoy.
	rep := raw("HELLO WORLD\r\n\r\n")
	if !strings.HasPrefix(rep.Reply, "HTTP/1.1 400") || !rep.Closed {
		t.Errorf("non-HTTP first line: reply %q, closed %v; want 400 and a close", rep.Reply, rep.Closed)
	}

	// Still serving, on new connections, over both protocols.
	for _, args := range [][]string{{}, {"--http2-prior-knowledge"}} {
		out := run(t, m.app("curl", append([]string{"-sS", "--max-time", "20"}, append(args, "http://"+l7HTTPVIP+"/after")...)...))
		if !strings.HasPrefix(out, "cluster=a path=/after ") {
			t.Errorf("after the malformed requests, curl %v: %q", args, out)
		}
	}
	select {
	case <-m.exited:
		t.Fatalf("the agent exited")
	default:
	}
}

// l7GRPCService is grpc.testing.TestService as the upstream of the gRPC
// tests. Requests can ask it to sleep until their context ends (x-sleep:
// EVENT), to report a cancelled bidi stream (x-cancel-event: EVENT), and
// to tell what it saw for an event (x-wait-event: EVENT).
type l7GRPCService struct {
	testgrpc.UnimplementedTestServiceServer
	mu     sync.Mutex
	events map[string]chan string
}

func newL7GRPCService() *l7GRPCService { return &l7GRPCService{events: map[string]chan string{}} }

func (s *l7GRPCService) event(name string) chan string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.events[name] == nil {
		s.events[name] = make(chan string, 1)
	}
	return s.events[name]
}

func (s *l7GRPCService) report(name, what string) {
	select {
	case s.event(name) <- what:
	default:
	}
}

func mdFirst(ctx context.Context, key string) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// sleep blocks until ctx ends (at most 10 s) and reports how it ended.
func (s *l7GRPCService) sleep(ctx context.Context, name string) error {
	deadline := "none"
	if _, ok := ctx.Deadline(); ok {
		deadline = "set"
	}
	select {
	case <-ctx.Done():
		s.report(name, fmt.Sprintf("ended=%v deadline=%s", ctx.Err(), deadline))
		return ctx.Err()
	case <-time.After(10 * time.Second):
		s.report(name, "still running after 10 s")
		return status.Error(codes.Internal, "not cancelled")
	}
}

func (s *l7GRPCService) UnaryCall(ctx context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if ev := mdFirst(ctx, "x-wait-event"); ev != "" {
		select {
		case what := <-s.event(ev):
			return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte(what)}}, nil
		case <-time.After(5 * time.Second):
			return nil, status.Errorf(codes.NotFound, "the server saw no %s event within 5 s", ev)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if ev := mdFirst(ctx, "x-sleep"); ev != "" {
		return nil, s.sleep(ctx, ev)
	}
	if v := mdFirst(ctx, "x-echo"); v != "" {
		grpc.SetHeader(ctx, metadata.Pairs("x-echo", v))
		grpc.SetTrailer(ctx, metadata.Pairs("x-echo-trailer", v))
	}
	if st := in.GetResponseStatus(); st != nil {
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	if in.GetResponseSize() > 0 {
		return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: make([]byte, in.GetResponseSize())}}, nil
	}
	return &testpb.SimpleResponse{Payload: in.GetPayload()}, nil
}

func (s *l7GRPCService) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	if ev := mdFirst(ctx, "x-sleep"); ev != "" {
		return nil, s.sleep(ctx, ev)
	}
	return &testpb.Empty{}, nil
}

func (s *l7GRPCService) StreamingOutputCall(in *testpb.StreamingOutputCallRequest, st testgrpc.TestService_StreamingOutputCallServer) error {
	for i, p := range in.GetResponseParameters() {
		if err := st.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: pattern(uint64(i), int(p.GetSize()))}}); err != nil {
			return err
		}
	}
	return nil
}

func (s *l7GRPCService) StreamingInputCall(st testgrpc.TestService_StreamingInputCallServer) error {
	var total int32
	for i := 0; ; i++ {
		m, err := st.Recv()
		if err == io.EOF {
			return st.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: total})
		}
		if err != nil {
			return err
		}
		b := m.GetPayload().GetBody()
		total += int32(len(b))
		if bytes.Equal(b, pattern(uint64(i), len(b))) {
			total++
		}
	}
}

func (s *l7GRPCService) FullDuplexCall(st testgrpc.TestService_FullDuplexCallServer) error {
	for {
		m, err := st.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if ev := mdFirst(st.Context(), "x-cancel-event"); ev != "" {
				s.report(ev, fmt.Sprintf("ended=%v code=%v", st.Context().Err(), status.Code(err)))
			}
			return err
		}
		for _, p := range m.GetResponseParameters() {
			if err := st.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: pattern(0, int(p.GetSize()))}}); err != nil {
				return err
			}
		}
	}
}

// startL7GRPC serves l7GRPCService on addr inside the sandbox netns.
func startL7GRPC(m *mesh, addr string) *l7GRPCService {
	svc := newL7GRPCService()
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, svc)
	lis := m.listen(addr)
	go s.Serve(lis)
	m.t.Cleanup(s.Stop)
	return svc
}

// grpc-go through the agent (h2c both ways): unary with metadata and status,
// server, client and bidi streaming with messages over the frame size and
// the flow-control window, a 3 MiB unary call, 64 concurrent bidi streams, a client deadline that expires (the upstream
// sees grpc-timeout and its context ends), the route's timeout expiring in
// the agent (DEADLINE_EXCEEDED, the upstream's context ends), and a client
// cancel reaching the upstream while the connection stays open.
func TestL7GRPC(t *testing.T) {
	m := newSandbox(t)
	startL7Upstreams(m)
	startL7GRPC(m, "127.0.0.1:18310")
	m.start(l7Config)
	for _, mode := range accelModes {
		t.Run(mode.name, func(t *testing.T) {
			m.setAccel(mode.intoApp)
			out := run(t, m.role("l7-grpc", l7GRPCVIP, "unary", "server-stream", "client-stream", "bidi", "big-unary", "concurrent", "deadline", "route-timeout", "cancel"))
			for _, want := range []string{
				`(?m)^ok unary$`, `(?m)^ok server-stream$`, `(?m)^ok client-stream$`, `(?m)^ok bidi$`, `(?m)^ok big-unary$`, `(?m)^ok concurrent$`,
				// The upstream got grpc-timeout; its context ends by that
				// deadline or by the reset the agent sends (client cancel
				// or the agent's own timer), whichever comes first.
				`(?m)^server saw deadline: ended=context (deadline exceeded|canceled) deadline=set$`, `(?m)^ok deadline$`,
				// No client deadline: only the agent's reset ends it.
				`(?m)^server saw route-timeout: ended=context canceled deadline=none$`, `(?m)^ok route-timeout$`,
				`(?m)^server saw cancel: ended=context canceled code=Canceled$`, `(?m)^ok cancel$`,
			} {
				if !regexp.MustCompile(want).MatchString(out) {
					t.Errorf("missing %s in the client's output:\n%s", want, out)
				}
			}
		})
	}
	checkAccelerated(t, m)
}

// Switching into_app renews the agent's pooled upstream connections: a
// socket keeps the sk_msg program it entered the sockhash with, so the
// connections pooled before the switch would keep the old mode.
func TestL7AccelSwitchRenewsUpstreams(t *testing.T) {
	need(t, "curl")
	m, u := startL7(t)
	get := func() {
		t.Helper()
		out := run(t, m.app("curl", "-sS", "--max-time", "10", "http://"+l7HTTPVIP+"/renew"))
		if !strings.Contains(out, "cluster=a path=/renew") {
			t.Fatalf("curl: got %q", out)
		}
	}
	m.setAccel(false)
	get()
	base := u.connCount("a")
	get()
	if n := u.connCount("a"); n != base {
		t.Fatalf("%d upstream connections after a second request, want %d (pooled)", n, base)
	}
	for i, intoApp := range []bool{true, false} {
		m.setAccel(intoApp)
		get()
		get()
		if n := u.connCount("a"); n != base+i+1 {
			t.Errorf("into_app %v: %d upstream connections, want %d (one new, then pooled)", intoApp, n, base+i+1)
		}
	}
	checkAccelerated(t, m)
}
