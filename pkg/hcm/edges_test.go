package hcm

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Request trailers reach the upstream, and response trailers the client,
// over each pairing of downstream and upstream protocol: HTTP/1.1 chunked
// bodies (the downstream request is served by net/http, as the fast path
// hands off Transfer-Encoding) and HTTP/2 (h2c) DATA followed by a
// trailing HEADERS frame.
func TestRequestAndResponseTrailers(t *testing.T) {
	upstream := func(t *testing.T, proto UpstreamProtocol) Endpoint {
		addr := startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, err := io.ReadAll(r.Body) // trailers are known at EOF
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.Header().Set("Trailer", "X-Resp-Sum")
			w.Header().Set("X-Got-Trailer", r.Trailer.Get("X-Req-Sum"))
			w.Header().Set("X-Got-Proto", r.Proto)
			fmt.Fprintf(w, "%d bytes", len(b))
			w.(http.Flusher).Flush() // a streamed body: the trailer follows it
			w.Header().Set("X-Resp-Sum", "resp-"+r.Trailer.Get("X-Req-Sum"))
		}))
		return Endpoint{Addr: addr, Protocol: proto}
	}
	for _, tc := range []struct {
		name      string
		down      string // "h1" or "h2"
		up        UpstreamProtocol
		wantProto string // what the upstream saw
	}{
		{"h1 to h1", "h1", UpstreamHTTP1, "HTTP/1.1"},
		{"h1 to h2", "h1", UpstreamHTTP2, "HTTP/2.0"},
		{"h2 to h1", "h2", UpstreamHTTP1, "HTTP/1.1"},
		{"h2 to h2", "h2", UpstreamHTTP2, "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstreams()
			up.set("echo", upstream(t, tc.up))
			p := startProxy(t, mustHCM(t, basicHCM), nil, up)
			c := &http.Client{}
			if tc.down == "h2" {
				c.Transport = h2cTransport()
			} else {
				c.Transport = &http.Transport{}
			}
			defer c.CloseIdleConnections()

			pr, pw := io.Pipe()
			req, err := http.NewRequest(http.MethodPost, "http://"+p.addr+"/t", pr)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = "svc.test"
			req.ContentLength = -1 // chunked on HTTP/1.1
			req.Trailer = http.Header{"X-Req-Sum": nil}
			go func() {
				_, _ = io.WriteString(pw, strings.Repeat("b", 3000))
				req.Trailer.Set("X-Req-Sum", "abc123") // set before EOF: sent after the body
				pw.Close()
			}()
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("request: %v", err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("response body: %v", err)
			}
			if resp.StatusCode != 200 || string(b) != "3000 bytes" {
				t.Fatalf("status %d, body %q", resp.StatusCode, b)
			}
			if got := resp.Header.Get("X-Got-Proto"); got != tc.wantProto {
				t.Errorf("upstream spoke %q, want %q", got, tc.wantProto)
			}
			if got := resp.Header.Get("X-Got-Trailer"); got != "abc123" {
				t.Errorf("upstream saw request trailer X-Req-Sum=%q, want abc123", got)
			}
			if got := resp.Trailer.Get("X-Resp-Sum"); got != "resp-abc123" {
				t.Errorf("client saw response trailer X-Resp-Sum=%q, want resp-abc123 (trailers %v)", got, resp.Trailer)
			}
			// The access log reads the forwarded request's headers, the
			// response headers sent and the trailers.
			e := p.log.last(t, 1)
			p.log.mu.Lock()
			line := p.log.lines[0]
			p.log.mu.Unlock()
			if want := "svc.test " + e.RequestID + " " + tc.wantProto + " resp-abc123 1 " + p.addr; e.RequestID == "" || line != want {
				t.Errorf("access log %q, want %q", line, want)
			}
		})
	}
}

// An upstream HTTP/2 server that drains (GOAWAY, then finishes what it
// has) costs no request: the stream in flight on it completes, and the
// requests made meanwhile succeed (through the cluster's other endpoint,
// as the draining server stops accepting).
func TestUpstreamGOAWAYDrains(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	serve := func(name string) (netip.AddrPort, *http.Server) {
		return startHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/hold" {
				started <- struct{}{}
				<-release
			}
			fmt.Fprint(w, name)
		}))
	}
	aAddr, a := serve("a")
	bAddr, _ := serve("b")
	up := newUpstreams()
	up.set("echo", Endpoint{Addr: aAddr, Protocol: UpstreamHTTP2})
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	c := &http.Client{Transport: h2cTransport()}
	defer c.CloseIdleConnections()
	fetch := func(path string) (int, string, error) {
		req, err := http.NewRequest(http.MethodGet, "http://"+p.addr+path, nil)
		if err != nil {
			return 0, "", err
		}
		req.Host = "svc.test"
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	if code, body, err := fetch("/warm"); err != nil || code != 200 || body != "a" {
		t.Fatalf("warm-up: %d %q %v", code, body, err)
	}
	type result struct {
		code int
		body string
		err  error
	}
	slow := make(chan result, 1)
	go func() {
		code, body, err := fetch("/hold")
		slow <- result{code, body, err}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request never reached the upstream")
	}
	shut := make(chan error, 1)
	go func() { shut <- a.Shutdown(context.Background()) }() // GOAWAY, then waits for /slow
	up.set("echo", Endpoint{Addr: bAddr, Protocol: UpstreamHTTP2})
	// Requests during the drain: none may fail, none may land on a.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 20; i++ {
		code, body, err := fetch(fmt.Sprintf("/n%d", i))
		if err != nil || code != 200 || body != "b" {
			t.Fatalf("request %d during the drain: %d %q %v", i, code, body, err)
		}
		if time.Now().After(deadline) {
			t.Fatal("requests during the drain too slow")
		}
	}
	close(release)
	select {
	case r := <-slow:
		if r.err != nil || r.code != 200 || r.body != "a" {
			t.Fatalf("in-flight request across the GOAWAY: %d %q %v", r.code, r.body, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight request did not complete after the drain")
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("upstream shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("upstream shutdown did not finish")
	}
}

// An upgraded (WebSocket-style) connection is closed once both directions
// have been quiet for the stream idle timeout (here the route's
// idle_timeout, 1 s), with SI in the access log, and traffic in either
// direction alone keeps it open: the client talking while the upstream only
// answers, and the upstream pushing while the client is silent, each for
// 2.5 idle timeouts.
func TestUpgradeIdleTimeout(t *testing.T) {
	up := newUpstreams()
	up.set("ws", ep(startHTTP(t, wsUpstream())))
	hcm := strings.Replace(basicHCM, `"route": {"cluster": "ws"}`, `"route": {"cluster": "ws", "idle_timeout": "1s"}`, 1)
	if hcm == basicHCM {
		t.Fatal("ws route not found in basicHCM")
	}
	p := startProxy(t, mustHCM(t, hcm), nil, up)
	n := 0
	for _, push := range []bool{false, true} {
		conn, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		hdr := ""
		if push {
			hdr = "X-Push: 1\r\n"
		}
		io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: svc.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+hdr+"\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 101 {
			t.Fatalf("push=%v: upgrade: %v %v", push, resp, err)
		}
		for i := range 25 {
			want := fmt.Sprintf("tick %d\n", i)
			if !push {
				io.WriteString(conn, fmt.Sprintf("ping %d\n", i))
				want = fmt.Sprintf("PING %d\n", i)
				time.Sleep(100 * time.Millisecond)
			}
			if line, err := br.ReadString('\n'); err != nil || line != want {
				t.Fatalf("push=%v: message %d: %q %v (want %q): closed while traffic flowed", push, i, line, err, want)
			}
		}
		// Now quiet both ways: the proxy closes the tunnel.
		if b, err := br.ReadByte(); err == nil {
			t.Fatalf("push=%v: read %q after the traffic stopped", push, b)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("push=%v: the quiet tunnel was not closed", push)
		}
		n++
		if e := p.log.last(t, n); e.Code != 101 || e.Flags != FlagStreamIdleTimeout {
			t.Errorf("push=%v: access log code %d flags %q, want 101 %q", push, e.Code, e.Flags, FlagStreamIdleTimeout)
		}
	}
}
