package hcm

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	"golang.org/x/net/http2"
)

const limitsHCM = `{
  "stat_prefix": "limits",
  "max_request_headers_kb": 4,
  "common_http_protocol_options": {"max_headers_count": 20},
  "request_headers_timeout": "0.3s",
  "stream_idle_timeout": "0.3s",
  "http_filters": [
    {"name": "envoy.filters.http.buffer", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 1024}},
    {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
  ],
  "route_config": {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
    {"match": {"prefix": "/idle"}, "route": {"cluster": "idle", "timeout": "0s"}},
    {"match": {"prefix": "/"}, "route": {"cluster": "echo"}}
  ]}]}
}`

// rawExchange writes raw bytes and returns the first response (status) or
// an error if the connection closed without one.
func rawExchange(t *testing.T, addr, req string) (*http.Response, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
	}
	return resp, err
}

func TestLimits(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	up.set("idle", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	}))))
	p := startProxy(t, mustHCM(t, limitsHCM), nil, up)

	cases := []struct {
		name string
		req  string
		code int
	}{
		{"ok", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 200},
		{"header bytes over max_request_headers_kb", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 8<<10) + "\r\n\r\n", 431},
		{"header count over max_headers_count", "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X-H: 1\r\n", 30) + "\r\n", 431},
		{"body over buffer max_request_bytes", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n" + strings.Repeat("b", 2048), 413},
		{"chunked body over limit", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + strings.Repeat("c", 2048) + "\r\n0\r\n\r\n", 413},
		{"control byte in header value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400},
		{"malformed request line", "GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400},
		{"bad header", "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400},
		{"conflicting content-length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400},
		{"missing host on 1.1", "GET / HTTP/1.1\r\n\r\n", 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := rawExchange(t, p.addr, tc.req)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			if resp.StatusCode != tc.code {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.code)
			}
		})
	}

	t.Run("slowloris: headers never finish", func(t *testing.T) {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		_, err = io.ReadAll(c) // server must close (request_headers_timeout 0.3s)
		if err != nil {
			t.Fatalf("connection not closed by server: %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("closed after %v", d)
		}
	})
	t.Run("stream idle timeout", func(t *testing.T) {
		resp, err := rawExchange(t, p.addr, "GET /idle HTTP/1.1\r\nHost: a\r\n\r\n")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Errorf("status %d, want 408", resp.StatusCode)
		}
	})
	t.Run("h2 too many headers", func(t *testing.T) {
		tr2 := h2cTransport()
		defer tr2.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "http://"+p.addr+"/", nil)
		for i := range 30 {
			req.Header.Set(fmt.Sprintf("X-H%d", i), "v")
		}
		resp, err := tr2.RoundTrip(req)
		if err != nil {
			t.Fatalf("round trip: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != 431 {
			t.Errorf("status %d, want 431", resp.StatusCode)
		}
	})
}

func h2cTransport() *http2.Transport {
	return &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

// FuzzServeHTTP1 throws arbitrary bytes at a Manager: whatever arrives,
// the proxy answers or closes, and never panics or hangs.
func FuzzServeHTTP1(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nGrpc-Timeout: 1n\r\nContent-Type: application/grpc\r\n\r\n",
	} {
		f.Add(s)
	}
	up := newUpstreams()
	up.set("echo", ep(startEcho(f, "echo")))
	p := startProxy(f, mustHCM(f, limitsHCM), nil, up, func(o *Options) { o.Log = nil; o.AccessLog = nil })
	f.Fuzz(func(t *testing.T, req string) {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		c.(*net.TCPConn).CloseWrite()
		// Read until the server closes; a timeout means a hang.
		if _, err := io.Copy(io.Discard, c); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("server hung on %q", req)
			}
		}
	})
}

// The connection idle timeout (common_http_protocol_options.idle_timeout)
// counts from the latest request: a keep-alive connection busy for longer
// than the timeout stays open, and closes once it goes quiet.
func TestConnIdleTimeout(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	hcm := strings.Replace(limitsHCM, `"max_headers_count": 20`, `"max_headers_count": 20, "idle_timeout": "1s"`, 1)
	p := startProxy(t, mustHCM(t, hcm), nil, up)
	c, br := rawConn(t, p.addr)
	start := time.Now()
	for i := 0; time.Since(start) < 1500*time.Millisecond; i++ {
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
			t.Fatalf("request %d after %v: %v", i, time.Since(start), err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d after %v: connection closed while busy: %v", i, time.Since(start), err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		time.Sleep(100 * time.Millisecond) // activity well inside the timeout
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: read %v, %v; want EOF (closed by the idle timeout)", n, err)
	}
}

// The stream idle timeout counts activity, not age: a fast-path response
// trickling a chunk every 60 ms for ten times the timeout (0.3 s) is never
// quiet for it and arrives whole, though its timer was armed late (after
// the watch delay) and the activity before was not recorded; one that goes
// quiet after its first chunk is cut.
func TestStreamIdleCountsActivity(t *testing.T) {
	up := newUpstreams()
	up.set("idle", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fl := w.(http.Flusher)
		n := 50
		if r.URL.Path == "/idle/quiet" {
			n = 1
		}
		for i := range n {
			fmt.Fprintf(w, "chunk %d\n", i)
			fl.Flush()
			time.Sleep(60 * time.Millisecond)
		}
		if n == 1 {
			time.Sleep(2 * time.Second)
		}
	}))))
	p := startProxy(t, mustHCM(t, limitsHCM), nil, up)
	get := func(path string) (string, error) {
		resp, err := http.Get("http://" + p.addr + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	body, err := get("/idle/trickle")
	if err != nil || strings.Count(body, "chunk") != 50 {
		t.Fatalf("trickling response: %d chunks, %v; want all 50", strings.Count(body, "chunk"), err)
	}
	start := time.Now()
	body, err = get("/idle/quiet")
	if err == nil || time.Since(start) > 1500*time.Millisecond {
		t.Errorf("quiet response: %q, %v after %v; want it cut at the idle timeout", body, err, time.Since(start))
	}
}
