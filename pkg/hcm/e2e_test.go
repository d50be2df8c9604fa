package hcm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const basicHCM = `{
  "stat_prefix": "outbound_0.0.0.0_80",
  "use_remote_address": true,
  "upgrade_configs": [{"upgrade_type": "websocket"}],
  "route_config": {
    "name": "80",
    "response_headers_to_add": [{"header": {"key": "x-config", "value": "rc"}}],
    "virtual_hosts": [
      {"name": "svc", "domains": ["svc.test", "svc.test:80"],
       "response_headers_to_remove": ["x-upstream-secret"],
       "routes": [
        {"name": "direct", "match": {"path": "/health"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}},
        {"name": "redirect", "match": {"prefix": "/old/"}, "redirect": {"prefix_rewrite": "/new/", "response_code": "PERMANENT_REDIRECT"}},
        {"name": "https", "match": {"prefix": "/secure"}, "redirect": {"https_redirect": true, "host_redirect": "secure.test"}},
        {"name": "rewrite", "match": {"prefix": "/v1/"}, "route": {"cluster": "echo", "prefix_rewrite": "/api/", "host_rewrite_literal": "backend.internal"},
         "request_headers_to_add": [{"header": {"key": "x-route", "value": "rewrite"}}],
         "request_headers_to_remove": ["x-drop"],
         "response_headers_to_add": [{"header": {"key": "x-resp", "value": "yes"}}]},
        {"name": "auto", "match": {"prefix": "/auto"}, "route": {"cluster": "echo", "auto_host_rewrite": true}},
        {"name": "slow", "match": {"prefix": "/slow"}, "route": {"cluster": "slow", "timeout": "0.2s"}},
        {"name": "down", "match": {"prefix": "/down"}, "route": {"cluster": "down", "retry_policy": {"retry_on": "connect-failure", "num_retries": 2}}},
        {"name": "empty", "match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
        {"name": "nocluster", "match": {"prefix": "/nocluster"}, "route": {"cluster": "missing"}},
        {"name": "stream", "match": {"prefix": "/stream"}, "route": {"cluster": "stream", "timeout": "0s"}},
        {"name": "ws", "match": {"prefix": "/ws"}, "route": {"cluster": "ws"}},
        {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "echo"}}
      ]}
    ]
  }
}`

func TestHTTP1Proxy(t *testing.T) {
	up := newUpstreams()
	echoAddr := startEcho(t, "echo")
	up.set("echo", ep(echoAddr))
	up.set("down", ep(closedPort(t)))
	up.set("empty")
	slowRelease := make(chan struct{})
	t.Cleanup(func() { close(slowRelease) })
	up.set("slow", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-slowRelease:
		case <-r.Context().Done():
		}
	}))))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	base := "http://" + p.addr
	n := 0

	t.Run("forward with rewrites", func(t *testing.T) {
		resp, b := get(t, c, base+"/v1/items?id=7", map[string]string{"Host": "svc.test", "X-Drop": "1", "X-Request-Id": "keep-me", "X-Forwarded-For": "192.0.2.1"})
		n++
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		e := decodeEcho(t, b)
		if e.URI != "/api/items?id=7" || e.Host != "backend.internal" {
			t.Errorf("upstream saw %s %s", e.Host, e.URI)
		}
		if e.Header.Get("X-Route") != "rewrite" || e.Header.Get("X-Drop") != "" {
			t.Errorf("request header ops not applied: %v", e.Header)
		}
		if e.Header.Get("X-Request-Id") != "keep-me" {
			t.Errorf("x-request-id not preserved: %q", e.Header.Get("X-Request-Id"))
		}
		if got := e.Header.Get("X-Forwarded-For"); got != "192.0.2.1, 127.0.0.1" {
			t.Errorf("x-forwarded-for = %q", got)
		}
		if e.Header.Get("X-Forwarded-Proto") != "http" || e.Header.Get("X-Envoy-Original-Path") != "/v1/items?id=7" {
			t.Errorf("xfp/original path: %v", e.Header)
		}
		if resp.Header.Get("X-Resp") != "yes" || resp.Header.Get("X-Config") != "rc" {
			t.Errorf("response header ops not applied: %v", resp.Header)
		}
		if resp.Header.Get("X-Envoy-Upstream-Service-Time") == "" {
			t.Error("no x-envoy-upstream-service-time")
		}
		le := p.log.last(t, n)
		if le.Code != 200 || le.Flags != "" || le.Route != "rewrite" || le.Cluster != "echo" || le.UpstreamHost != echoAddr.String() {
			t.Errorf("access log %+v", le)
		}
	})
	t.Run("request id generated", func(t *testing.T) {
		_, b := get(t, c, base+"/x", map[string]string{"Host": "svc.test"})
		n++
		id := decodeEcho(t, b).Header.Get("X-Request-Id")
		if len(id) != 36 || id[14] != '4' {
			t.Errorf("generated x-request-id %q is not a v4 UUID", id)
		}
	})
	t.Run("auto host rewrite", func(t *testing.T) {
		_, b := get(t, c, base+"/auto", map[string]string{"Host": "svc.test"})
		n++
		if h := decodeEcho(t, b).Host; h != echoAddr.String() {
			t.Errorf("host %q, want %s", h, echoAddr)
		}
	})
	t.Run("direct response", func(t *testing.T) {
		resp, b := get(t, c, base+"/health", map[string]string{"Host": "svc.test:80"})
		n++
		if resp.StatusCode != 200 || string(b) != "ok\n" || resp.Header.Get("X-Config") != "rc" {
			t.Errorf("got %d %q %v", resp.StatusCode, b, resp.Header)
		}
	})
	t.Run("redirects", func(t *testing.T) {
		resp, _ := get(t, c, base+"/old/page?a=1", map[string]string{"Host": "svc.test"})
		n++
		if resp.StatusCode != 308 || resp.Header.Get("Location") != "http://svc.test/new/page?a=1" {
			t.Errorf("got %d %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		resp, _ = get(t, c, base+"/secure/x", map[string]string{"Host": "svc.test:80"})
		n++
		if resp.StatusCode != 301 || resp.Header.Get("Location") != "https://secure.test/secure/x" {
			t.Errorf("got %d %q", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
	flagCases := []struct {
		name, path, host string
		code             int
		flags            string
	}{
		{"no route (NR)", "/", "other.test", 404, FlagNoRoute},
		{"upstream timeout (UT)", "/slow", "svc.test", 504, FlagUpstreamTimeout},
		{"connect failure with retries (URX,UF)", "/down", "svc.test", 503, FlagRetryLimitExceeded + "," + FlagUpstreamConnFailure},
		{"no healthy upstream (UH)", "/empty", "svc.test", 503, FlagNoHealthyUpstream},
		{"no cluster (NC)", "/nocluster", "svc.test", 503, FlagNoCluster},
	}
	for _, fc := range flagCases {
		t.Run(fc.name, func(t *testing.T) {
			resp, b := get(t, c, base+fc.path, map[string]string{"Host": fc.host})
			n++
			if resp.StatusCode != fc.code {
				t.Errorf("status %d (%s), want %d", resp.StatusCode, b, fc.code)
			}
			if le := p.log.last(t, n); le.Flags != fc.flags || le.Code != fc.code {
				t.Errorf("access log flags %q code %d, want %q %d", le.Flags, le.Code, fc.flags, fc.code)
			}
		})
	}
}

// Keep-alive: many sequential requests reuse one downstream and one
// upstream connection.
func TestHTTP1KeepAliveAndPool(t *testing.T) {
	up := newUpstreams()
	var conns int
	var mu = make(chan struct{}, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hi") }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				mu <- struct{}{}
				conns++
				<-mu
			}
		}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	up.set("echo", ep(netip.MustParseAddrPort(ln.Addr().String())))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	for range 50 {
		_, b := get(t, c, "http://"+p.addr+"/k", map[string]string{"Host": "svc.test"})
		if string(b) != "hi" {
			t.Fatalf("body %q", b)
		}
	}
	mu <- struct{}{}
	defer func() { <-mu }()
	if conns != 1 {
		t.Errorf("upstream saw %d connections for 50 sequential requests, want 1", conns)
	}
}

// Pipelined requests on one connection get responses in order.
func TestHTTP1Pipelining(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	conn, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var req strings.Builder
	for i := range 5 {
		fmt.Fprintf(&req, "GET /p%d HTTP/1.1\r\nHost: svc.test\r\n\r\n", i)
	}
	if _, err := io.WriteString(conn, req.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	for i := range 5 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		e := decodeEcho(t, b)
		if e.URI != fmt.Sprintf("/p%d", i) {
			t.Fatalf("response %d is for %s", i, e.URI)
		}
		if ua, ok := e.Header["User-Agent"]; ok {
			t.Errorf("proxy added User-Agent %q", ua)
		}
	}
}

// A chunked response is streamed: the client sees the first chunk while
// the upstream is still holding the rest back.
func TestChunkedStreaming(t *testing.T) {
	up := newUpstreams()
	release := make(chan struct{})
	up.set("stream", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second\n")
	}))))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	req, _ := http.NewRequest("GET", "http://"+p.addr+"/stream", nil)
	req.Host = "svc.test"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("transfer-encoding %v", resp.TransferEncoding)
	}
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first chunk %q %v", line, err)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if string(rest) != "second\n" {
		t.Fatalf("rest %q", rest)
	}
}

// Request bodies stream too, and Expect: 100-continue works end to end.
func TestRequestBodyAnd100Continue(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	body := bytes.Repeat([]byte("x"), 1<<20)
	req, _ := http.NewRequest("POST", "http://"+p.addr+"/upload", bytes.NewReader(body))
	req.Host = "svc.test"
	req.Header.Set("Expect", "100-continue")
	tr := &http.Transport{ExpectContinueTimeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if e := decodeEcho(t, b); e.BodyLen != len(body) {
		t.Fatalf("upstream got %d bytes", e.BodyLen)
	}
	// Chunked request body.
	pr, pw := io.Pipe()
	go func() {
		for range 10 {
			pw.Write(bytes.Repeat([]byte("y"), 1000))
		}
		pw.Close()
	}()
	req, _ = http.NewRequest("POST", "http://"+p.addr+"/upload", pr)
	req.Host = "svc.test"
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if e := decodeEcho(t, b); e.BodyLen != 10000 {
		t.Fatalf("upstream got %d bytes of chunked body", e.BodyLen)
	}
}

// WebSocket-style upgrade: after 101 bytes flow raw both ways.
func TestUpgradePassthrough(t *testing.T) {
	up := newUpstreams()
	up.set("ws", ep(startHTTP(t, wsUpstream())))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	conn, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: svc.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhello\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	line, err := br.ReadString('\n')
	if err != nil || line != "HELLO\n" {
		t.Fatalf("got %q %v", line, err)
	}
	io.WriteString(conn, "again\n")
	if line, err = br.ReadString('\n'); err != nil || line != "AGAIN\n" {
		t.Fatalf("got %q %v", line, err)
	}
}

// Client cancellation reaches the upstream (DC) instead of leaking.
func TestDownstreamCancel(t *testing.T) {
	up := newUpstreams()
	gone := make(chan struct{})
	started := make(chan struct{})
	up.set("slow", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		close(gone)
	}))))
	hcm := strings.Replace(basicHCM, `"timeout": "0.2s"`, `"timeout": "0s"`, 1)
	p := startProxy(t, mustHCM(t, hcm), nil, up)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+p.addr+"/slow", nil)
	req.Host = "svc.test"
	errc := make(chan error, 1)
	go func() {
		_, err := http.DefaultClient.Do(req)
		errc <- err
	}()
	<-started
	cancel()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("upstream request not cancelled")
	}
	<-errc
	if le := p.log.last(t, 1); le.Flags != FlagDownstreamConnTerm {
		t.Errorf("flags %q, want DC", le.Flags)
	}
}

// Route config swap via RDS: each request sees one snapshot; new pointers
// take effect on the next request and compile once.
func TestRDSSwap(t *testing.T) {
	up := newUpstreams()
	up.set("a", ep(startEcho(t, "a")))
	up.set("b", ep(startEcho(t, "b")))
	rs := &staticRoutes{}
	rc := func(cluster string) string {
		return `{"name": "9080", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "` + cluster + `"}}]}]}`
	}
	cfg := mustHCM(t, `{"stat_prefix": "s", "rds": {"route_config_name": "9080", "config_source": {"ads": {}}}}`)
	p := startProxy(t, cfg, rs, up)
	resp, _ := get(t, http.DefaultClient, "http://"+p.addr+"/", nil)
	if resp.StatusCode != 404 {
		t.Fatalf("before RDS: status %d, want 404 (NR)", resp.StatusCode)
	}
	rs.p.Store(mustRC(t, rc("a")))
	for range 3 {
		if _, b := get(t, http.DefaultClient, "http://"+p.addr+"/", nil); decodeEcho(t, b).Name != "a" {
			t.Fatal("not routed to a")
		}
	}
	rs.p.Store(mustRC(t, rc("b")))
	if _, b := get(t, http.DefaultClient, "http://"+p.addr+"/", nil); decodeEcho(t, b).Name != "b" {
		t.Fatal("not routed to b after swap")
	}
	if n := p.pools.routes.len(); n < 1 || n > 2 {
		t.Errorf("route cache holds %d entries", n)
	}
}

// Weighted clusters end to end: 2000 requests split 80/20 between two real
// upstreams, each share within 5σ.
func TestWeightedClustersE2E(t *testing.T) {
	up := newUpstreams()
	up.set("a", ep(startEcho(t, "a")))
	up.set("b", ep(startEcho(t, "b")))
	cfg := mustHCM(t, `{"stat_prefix": "w", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
	  {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
	    {"name": "a", "weight": 80, "request_headers_to_add": [{"header": {"key": "x-canary", "value": "no"}}]},
	    {"name": "b", "weight": 20, "request_headers_to_add": [{"header": {"key": "x-canary", "value": "yes"}}]}]}}}]}]}}`)
	p := startProxy(t, cfg, nil, up, func(o *Options) { o.AccessLog = nil })
	const n = 2000
	counts := map[string]int{}
	for range n {
		_, b := get(t, http.DefaultClient, "http://"+p.addr+"/", nil)
		e := decodeEcho(t, b)
		counts[e.Name]++
		if want := map[string]string{"a": "no", "b": "yes"}[e.Name]; e.Header.Get("X-Canary") != want {
			t.Fatalf("cluster %s got x-canary %q", e.Name, e.Header.Get("X-Canary"))
		}
	}
	exp, sigma := 0.2*n, math.Sqrt(n*0.2*0.8)
	if dev := math.Abs(float64(counts["b"]) - exp); dev > 5*sigma {
		t.Errorf("b got %d of %d, expected %.0f±%.0f", counts["b"], n, exp, 5*sigma)
	}
}

// A slow request on a keep-alive connection that has already served quick
// ones is watched too: the client leaving cancels the upstream request
// (DC), and a route timeout still cuts it (UT). The watch timer is shared
// by the connection's requests (h1server.go), so these cover requests that
// begin while it is armed for an earlier one.
func TestKeepAliveSlowRequestWatched(t *testing.T) {
	for _, tc := range []struct {
		name, timeout, flag string
	}{
		{"client leaves", "0s", FlagDownstreamConnTerm},
		{"route timeout", "0.1s", FlagUpstreamTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstreams()
			up.set("echo", ep(startEcho(t, "echo")))
			gone := make(chan struct{})
			started := make(chan struct{})
			release := make(chan struct{}) // on failure, lets the handler end before the servers close
			up.set("slow", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(started)
				select {
				case <-r.Context().Done():
					close(gone)
				case <-release:
				}
			}))))
			hcm := strings.Replace(basicHCM, `"timeout": "0.2s"`, `"timeout": "`+tc.timeout+`"`, 1)
			p := startProxy(t, mustHCM(t, hcm), nil, up)
			t.Cleanup(func() { close(release) })
			c, br := rawConn(t, p.addr)
			for i := range 50 {
				if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: svc.test\r\n\r\n"); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: svc.test\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			<-started
			if tc.flag == FlagDownstreamConnTerm {
				c.Close()
			} else {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				resp, err := http.ReadResponse(br, nil)
				if err != nil || resp.StatusCode != http.StatusGatewayTimeout {
					t.Fatalf("slow request: %v %v, want 504", resp, err)
				}
			}
			select {
			case <-gone:
			case <-time.After(10 * time.Second):
				t.Fatal("upstream request not cancelled")
			}
			if le := p.log.last(t, 51); le.Flags != tc.flag {
				t.Errorf("flags %q, want %s", le.Flags, tc.flag)
			}
		})
	}
}
