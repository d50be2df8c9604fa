package hcm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/meshlet/meshlet/pkg/accesslog"
)

// rawConn dials the proxy and returns the conn and a reader for responses.
func rawConn(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func roundTripRaw(t *testing.T, c net.Conn, br *bufio.Reader, method, req string) (*http.Response, []byte) {
	t.Helper()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%q: %v", req, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%q: body: %v", req, err)
	}
	return resp, b
}

// A connection starts on the fast path and moves to net/http at the first
// request the fast path does not take (chunked body), keeping every byte.
func TestFastPathHandOff(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	c, br := rawConn(t, p.addr)
	_, b := roundTripRaw(t, c, br, "GET", "GET /a HTTP/1.1\r\nHost: svc.test\r\n\r\n")
	if e := decodeEcho(t, b); e.URI != "/a" {
		t.Fatalf("first request reached %q", e.URI)
	}
	// Chunked request pipelined with a plain one: both answered in order.
	if _, err := io.WriteString(c, "POST /b HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /c HTTP/1.1\r\nHost: svc.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		uri string
		n   int
	}{{"/b", 5}, {"/c", 0}} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", want.uri, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if e := decodeEcho(t, b); e.URI != want.uri || e.BodyLen != want.n {
			t.Fatalf("got %s with %d body bytes, want %s with %d", e.URI, e.BodyLen, want.uri, want.n)
		}
	}
}

// HEAD and 204 responses carry no body, Content-Length bodies are read in
// full, and the connection stays usable after each.
func TestFastPathBodylessAndBodies(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/nc":
			w.WriteHeader(http.StatusNoContent)
		case "/big":
			w.Write(bytes.Repeat([]byte("z"), 100<<10))
		default:
			w.Header().Set("Content-Length", "5")
			w.Write([]byte("hello"))
			_ = b
		}
	}))))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	c, br := rawConn(t, p.addr)
	for i := range 2 {
		resp, b := roundTripRaw(t, c, br, "HEAD", "HEAD /h HTTP/1.1\r\nHost: svc.test\r\n\r\n")
		if resp.StatusCode != 200 || len(b) != 0 || resp.ContentLength != 5 {
			t.Fatalf("HEAD %d: status %d, body %q, length %d", i, resp.StatusCode, b, resp.ContentLength)
		}
		resp, b = roundTripRaw(t, c, br, "GET", "GET /nc HTTP/1.1\r\nHost: svc.test\r\n\r\n")
		if resp.StatusCode != 204 || len(b) != 0 {
			t.Fatalf("204 %d: status %d, body %q", i, resp.StatusCode, b)
		}
		resp, b = roundTripRaw(t, c, br, "POST", "POST /p HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 3\r\n\r\nabc")
		if resp.StatusCode != 200 || string(b) != "hello" {
			t.Fatalf("POST %d: status %d, body %q", i, resp.StatusCode, b)
		}
		resp, b = roundTripRaw(t, c, br, "GET", "GET /big HTTP/1.1\r\nHost: svc.test\r\n\r\n")
		if resp.StatusCode != 200 || len(b) != 100<<10 {
			t.Fatalf("big %d: status %d, %d bytes", i, resp.StatusCode, len(b))
		}
	}
	// A large request body goes through the streaming client.
	big := strings.Repeat("q", 200<<10)
	resp, b := roundTripRaw(t, c, br, "POST", "POST /p HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 204800\r\n\r\n"+big)
	if resp.StatusCode != 200 || string(b) != "hello" {
		t.Fatalf("large POST: status %d, body %q", resp.StatusCode, b)
	}
}

// An upstream that closes its keep-alive connection after each response
// (without saying so) costs no request: the pooled connection is found
// dead and the request goes on a new one. A close-delimited response is
// relayed whole.
func TestFastClientStaleConnAndCloseDelimited(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	closed := make(chan struct{}, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { c.Close(); closed <- struct{}{} }()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				if req.URL.Path == "/eof" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-close")
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}()
		}
	}()
	up := newUpstreams()
	up.set("echo", ep(netip.MustParseAddrPort(ln.Addr().String())))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	c, br := rawConn(t, p.addr)
	for i := range 3 {
		resp, b := roundTripRaw(t, c, br, "GET", "GET /x HTTP/1.1\r\nHost: svc.test\r\n\r\n")
		if resp.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("request %d: status %d body %q", i, resp.StatusCode, b)
		}
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatal("upstream did not close")
		}
	}
	resp, b := roundTripRaw(t, c, br, "GET", "GET /eof HTTP/1.1\r\nHost: svc.test\r\n\r\n")
	if resp.StatusCode != 200 || string(b) != "until-close" {
		t.Fatalf("close-delimited: status %d body %q", resp.StatusCode, b)
	}
	if le := p.log.last(t, 4); le.Code != 200 || le.Flags != "" {
		t.Errorf("access log %+v", le)
	}
}

// Shutdown closes idle fast-path connections at once and returns.
func TestFastPathShutdownIdle(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	c, br := rawConn(t, p.addr)
	roundTripRaw(t, c, br, "GET", "GET /a HTTP/1.1\r\nHost: svc.test\r\n\r\n")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.m.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("idle connection still open after Shutdown")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("idle connection not closed by Shutdown")
	}
}

// FuzzParseRequestHead: whatever the fast parser accepts, net/http reads
// the same way (method, target, host, length, header values), so taking
// the fast path never changes what a request means.
func FuzzParseRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x?y=1 HTTP/1.1\r\nHost: a:80\r\nContent-Length: 3\r\nX-A: 1\r\nx-a:  2 \r\n\r\n",
		"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
		"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
		"GET /a%20b/%2F?q=%zz&r HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a\"b/c?x HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a? HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n",
	} {
		f.Add(s)
	}
	c := &fastConn{remote: "127.0.0.1:1"}
	f.Fuzz(func(t *testing.T, s string) {
		i := strings.Index(s, "\r\n\r\n")
		if i < 0 {
			return
		}
		head := []byte(s[:i+4])
		r, ok := c.parse(head)
		if !ok {
			return
		}
		want, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("fast parser accepted %q, net/http: %v", head, err)
		}
		if r.Method != want.Method || r.RequestURI != want.RequestURI || r.Host != want.Host || r.ContentLength != want.ContentLength || r.Close != want.Close {
			t.Fatalf("%q: fast %s %s host %q len %d close %v; net/http %s %s host %q len %d close %v", head,
				r.Method, r.RequestURI, r.Host, r.ContentLength, r.Close, want.Method, want.RequestURI, want.Host, want.ContentLength, want.Close)
		}
		if *r.URL != *want.URL {
			t.Fatalf("%q: URL %v vs %v", head, r.URL, want.URL)
		}
		if len(r.Header) != len(want.Header) {
			t.Fatalf("%q: headers %v vs %v", head, r.Header, want.Header)
		}
		for k, vv := range want.Header {
			got := r.Header[k]
			if strings.Join(got, "\x00") != strings.Join(vv, "\x00") {
				t.Fatalf("%q: header %s = %q, net/http %q", head, k, got, vv)
			}
			for _, v := range vv {
				if !httpguts.ValidHeaderFieldValue(v) {
					t.Fatalf("%q: accepted invalid value %q", head, v)
				}
			}
		}
	})
}

// BenchmarkHTTP1Proxy measures one keep-alive GET through the fast path
// (in-process, Go upstream): go test ./pkg/hcm -run XXX -bench HTTP1Proxy -benchmem
func BenchmarkHTTP1Proxy(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 1024)
	up := newUpstreams()
	up.set("echo", ep(startHTTP(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))))
	p := startProxy(b, mustHCM(b, basicHCM), nil, up, func(o *Options) { o.Log = nil; o.AccessLog = nil })
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	req := []byte("GET /b HTTP/1.1\r\nHost: svc.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		if n, _ := io.Copy(io.Discard, resp.Body); n != 1024 {
			b.Fatalf("body %d bytes", n)
		}
	}
}

// An upstream that dies in the middle of a chunked response must not look
// like a complete response downstream: the client gets an error, not EOF.
func TestFastPathUpstreamResetMidBody(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close()
		}
	}))))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	c, br := rawConn(t, p.addr)
	if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: svc.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return // closed before the head: also a failure the client sees
	}
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("truncated upstream response relayed as complete: %q", b)
	}
	if le := p.log.last(t, 1); !strings.Contains(le.Flags, FlagUpstreamConnTerm) {
		t.Errorf("flags %q, want UC", le.Flags)
	}
}

// Like net/http, a body without Content-Type gets a sniffed one (a
// streamed response is flushed before its first byte, so it has none, as
// with net/http).
func TestFastPathSniffsContentType(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if req.URL.Path == "/cl" {
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n<html></html>")
					} else {
						io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nd\r\n<html></html>\r\n0\r\n\r\n")
					}
				}
			}()
		}
	}()
	up := newUpstreams()
	up.set("echo", ep(netip.MustParseAddrPort(ln.Addr().String())))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	c, br := rawConn(t, p.addr)
	for _, tc := range []struct{ path, ct string }{{"/cl", "text/html; charset=utf-8"}, {"/chunked", ""}} {
		resp, b := roundTripRaw(t, c, br, "GET", "GET "+tc.path+" HTTP/1.1\r\nHost: svc.test\r\n\r\n")
		if ct := resp.Header.Get("Content-Type"); string(b) != "<html></html>" || ct != tc.ct {
			t.Errorf("%s: body %q, Content-Type %q, want %q", tc.path, b, ct, tc.ct)
		}
	}
}

// A request with "Connection: close" gets "Connection: close" back before
// the proxy closes the connection (wrk counts a silent close as an error).
func TestFastPathConnectionCloseHeader(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	c, br := rawConn(t, p.addr)
	resp, _ := roundTripRaw(t, c, br, "GET", "GET /a HTTP/1.1\r\nHost: svc.test\r\nConnection: close\r\n\r\n")
	if !resp.Close {
		t.Fatalf("response to a Connection: close request lacks Connection: close (header %v)", resp.Header)
	}
}

// FuzzParseResponseHead: whatever the upstream response parser accepts,
// net/http reads the same way (status, headers, length, close, body).
func FuzzParseResponseHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
		"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HTTP/1.1 200\r\nx-a:  1 \r\nX-A: 2\r\ncontent-length: 007\r\n\r\n1234567",
		"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n folded\r\n\r\nab",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: a\x7fb\r\n\r\nab",
		"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nab",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		// More fields than headFields remembers, with a repeat past them.
		"HTTP/1.1 200 OK\r\nX-H0: v0\r\nX-H1: v1\r\nX-H2: v2\r\nX-H3: v3\r\nX-H4: v4\r\nX-H5: v5\r\nX-H6: v6\r\nX-H7: v7\r\nX-H8: v8\r\nX-H9: v9\r\nX-H10: v10\r\nX-H11: v11\r\nX-H12: v12\r\nX-H13: v13\r\nX-H14: v14\r\nX-H15: v15\r\nX-H16: v16\r\nX-H17: v17\r\nX-H18: v18\r\nX-H19: v19\r\nX-H20: v20\r\nX-H21: v21\r\nX-H22: v22\r\nX-H23: v23\r\nX-H24: v24\r\nX-H25: v25\r\nX-H26: v26\r\nX-H27: v27\r\nX-H28: v28\r\nX-H29: v29\r\nX-H3: again\r\nContent-Length: 2\r\n\r\nab",
	} {
		f.Add(s)
	}
	// One connection for every input, as a pooled one is: its header
	// map is reused, so nothing of an earlier response may show.
	u := &upConn{}
	f.Fuzz(func(t *testing.T, s string) {
		req := &http.Request{Method: "GET"}
		br := bufio.NewReaderSize(strings.NewReader(s), 512)
		resp, n := readFastResponse(br, req, u)
		if resp == nil {
			// Nothing consumed: net/http sees every byte.
			if br.Buffered() > 0 {
				if b, _ := br.Peek(br.Buffered()); !strings.HasPrefix(s, string(b)) {
					t.Fatalf("%q: fallback lost bytes", s)
				}
			}
			return
		}
		body := &upBody{u: &upConn{br: br}, left: n}
		got, gerr := io.ReadAll(readerOnly{body})
		want, err := http.ReadResponse(bufio.NewReader(strings.NewReader(s)), req)
		if err != nil {
			t.Fatalf("fast parser accepted %q, net/http: %v", s, err)
		}
		wb, werr := io.ReadAll(want.Body)
		if resp.StatusCode != want.StatusCode || resp.Status != want.Status || resp.ContentLength != want.ContentLength || resp.Close != want.Close {
			t.Fatalf("%q: fast %d %q len %d close %v; net/http %d %q len %d close %v", s, resp.StatusCode, resp.Status,
				resp.ContentLength, resp.Close, want.StatusCode, want.Status, want.ContentLength, want.Close)
		}
		if len(resp.Header) != len(want.Header) {
			t.Fatalf("%q: headers %v vs %v", s, resp.Header, want.Header)
		}
		for k, vv := range want.Header {
			if g := resp.Header[k]; strings.Join(g, "\x00") != strings.Join(vv, "\x00") {
				t.Fatalf("%q: header %s = %q, net/http %q", s, k, g, vv)
			}
			for _, v := range vv {
				if !httpguts.ValidHeaderFieldValue(v) {
					t.Fatalf("%q: accepted invalid value %q", s, v)
				}
			}
		}
		if string(got) != string(wb) || (gerr == nil) != (werr == nil) {
			t.Fatalf("%q: body %q (%v), net/http %q (%v)", s, got, gerr, wb, werr)
		}
	})
}

// readerOnly hides everything but Read (io.ReadAll on the bare body).
type readerOnly struct{ io.Reader }

// A request whose handler reaches its timer set-up only after the watch
// timer fired for it (a stall longer than watchDelay) arms its own timer
// at once instead of waiting for a watch timer that will not fire again.
func TestDeferTimerAfterWatchFired(t *testing.T) {
	c := &fastConn{}
	c.watchT = time.AfterFunc(time.Hour, func() {})
	c.watchT.Stop()
	t.Cleanup(func() { c.watchT.Stop() })
	c.inReq.Store(true)
	newStream := func() *stream { return &stream{deadline: time.Hour, start: time.Now()} }

	c.armWatch(c.seq.Add(1))
	s := newStream()
	if !c.deferTimer(s) {
		t.Fatal("watch timer pending: the stream timer should wait for it")
	}
	c.startWatch() // the watch timer fires while the request runs
	if s.t.Load() == nil {
		t.Fatal("the watch timer did not arm the pending stream timer")
	}
	s.t.Load().Stop()

	c.armWatch(c.seq.Add(1))
	c.startWatch() // fires before the handler sets its timers up
	if c.deferTimer(newStream()) {
		t.Fatal("deferred to a watch timer that already fired")
	}
}

// A fast-path connection reuses its finished stream for the next request
// (stream.recycle) unless something may still hold it: nothing of one
// request (flags, request id, byte counts, path) may show in the next one's
// access-log entry or upstream request, across plain GETs, requests with a
// body (never recycled) and route timeouts whose timer was armed (never
// recycled).
func TestFastPathStreamReuse(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen-Id", r.Header.Get("X-Request-Id"))
		w.Header().Set("X-Seen-Path", r.URL.Path)
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b)
	}))))
	up.set("slow", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // the route's 0.2 s timeout ends it
	}))))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	c, br := rawConn(t, p.addr)
	n := 0
	ids := map[string]bool{}
	entry := func(path string, code int, flags string, recv int64) accesslog.Entry {
		t.Helper()
		n++
		e := p.log.last(t, n)
		if e.Path != path || e.Code != code || e.Flags != flags || e.BytesReceived != recv {
			t.Fatalf("entry %d: path %q code %d flags %q received %d, want %q %d %q %d", n, e.Path, e.Code, e.Flags, e.BytesReceived, path, code, flags, recv)
		}
		if e.RequestID == "" || ids[e.RequestID] {
			t.Fatalf("entry %d: request id %q empty or seen before", n, e.RequestID)
		}
		ids[e.RequestID] = true
		return e
	}
	get := func(path string) {
		t.Helper()
		resp, b := roundTripRaw(t, c, br, "GET", "GET "+path+" HTTP/1.1\r\nHost: svc.test\r\n\r\n")
		if resp.StatusCode != 200 || len(b) != 0 || resp.Header.Get("X-Seen-Path") != path {
			t.Fatalf("GET %s: status %d, body %q, upstream saw %q", path, resp.StatusCode, b, resp.Header.Get("X-Seen-Path"))
		}
		if e := entry(path, 200, "", 0); resp.Header.Get("X-Seen-Id") != e.RequestID {
			t.Fatalf("GET %s: upstream saw request id %q, access log has %q", path, resp.Header.Get("X-Seen-Id"), e.RequestID)
		}
	}
	for i := range 3 {
		get(fmt.Sprintf("/a%d", i))
		get(fmt.Sprintf("/b%d", i)) // on the stream /a left
		resp, b := roundTripRaw(t, c, br, "POST", fmt.Sprintf("POST /p%d HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 3\r\n\r\nabc", i))
		if resp.StatusCode != 200 || string(b) != "abc" {
			t.Fatalf("POST %d: status %d, body %q", i, resp.StatusCode, b)
		}
		entry(fmt.Sprintf("/p%d", i), 200, "", 3)
		get(fmt.Sprintf("/c%d", i))
		resp, _ = roundTripRaw(t, c, br, "GET", fmt.Sprintf("GET /slow%d HTTP/1.1\r\nHost: svc.test\r\n\r\n", i))
		if resp.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("slow %d: status %d, want 504", i, resp.StatusCode)
		}
		entry(fmt.Sprintf("/slow%d", i), http.StatusGatewayTimeout, FlagUpstreamTimeout, 0)
		get(fmt.Sprintf("/d%d", i))
		resp, _ = roundTripRaw(t, c, br, "GET", fmt.Sprintf("GET /nocluster%d HTTP/1.1\r\nHost: svc.test\r\n\r\n", i))
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("nocluster %d: status %d, want 503", i, resp.StatusCode)
		}
		entry(fmt.Sprintf("/nocluster%d", i), http.StatusServiceUnavailable, FlagNoCluster, 0) // a recycled stream with a flag
		get(fmt.Sprintf("/e%d", i))
	}
}
