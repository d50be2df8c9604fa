package hcm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshlet/meshlet/internal/testlog"
	"github.com/meshlet/meshlet/pkg/accesslog"
	"github.com/meshlet/meshlet/pkg/sniff"
)

// staticUpstreams maps cluster names to endpoints (round robin).
type staticUpstreams struct {
	mu sync.Mutex
	m  map[string][]Endpoint
	rr map[string]int
}

func newUpstreams() *staticUpstreams {
	return &staticUpstreams{m: map[string][]Endpoint{}, rr: map[string]int{}}
}

func (u *staticUpstreams) set(cluster string, eps ...Endpoint) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.m[cluster] = eps
}

// Pick picks round robin, or by hash modulo the endpoint count when the
// route hashed the request.
func (u *staticUpstreams) Pick(_ context.Context, cluster string, in PickInput) (Endpoint, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if cluster == "PassthroughCluster" {
		return Endpoint{Addr: in.Orig}, nil
	}
	eps, ok := u.m[cluster]
	if !ok {
		return Endpoint{}, fmt.Errorf("cluster %q: %w", cluster, ErrNoCluster)
	}
	if len(eps) == 0 {
		return Endpoint{}, fmt.Errorf("cluster %q: %w", cluster, ErrNoHealthyUpstream)
	}
	if in.HasHash {
		return eps[in.Hash%uint64(len(eps))], nil
	}
	i := u.rr[cluster] % len(eps)
	u.rr[cluster]++
	return eps[i], nil
}

type staticRoutes struct {
	p atomic.Pointer[routev3.RouteConfiguration]
}

func (s *staticRoutes) Route(string) *routev3.RouteConfiguration { return s.p.Load() }

// memLog collects access-log entries.
type memLog struct {
	mu    sync.Mutex
	e     []accesslog.Entry
	lines []string // memLogFormat of each entry
}

// memLogFormat renders, per entry, what only the header maps give (they
// are valid during Log alone): memLog.lines.
var memLogFormat = func() *accesslog.Format {
	f, err := accesslog.ParseText("%REQ(:AUTHORITY)% %REQ(X-REQUEST-ID)% %RESP(X-GOT-PROTO)% %TRAILER(X-RESP-SUM)% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %DOWNSTREAM_LOCAL_ADDRESS%")
	if err != nil {
		panic(err)
	}
	return f
}()

func (l *memLog) Log(e *accesslog.Entry) {
	line := string(memLogFormat.Append(nil, e))
	c := *e
	// The header maps are the stream's, valid only during Log.
	c.ReqHeaders, c.RespHeaders, c.RespTrailers = nil, nil, nil
	l.mu.Lock()
	l.e = append(l.e, c)
	l.lines = append(l.lines, line)
	l.mu.Unlock()
}

// waitEntries waits until n entries are logged (handlers log after the
// response is written, so a client can see the reply first).
func (l *memLog) waitEntries(t *testing.T, n int) []accesslog.Entry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		if len(l.e) >= n {
			out := append([]accesslog.Entry(nil), l.e...)
			l.mu.Unlock()
			return out
		}
		l.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %d access log entries", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (l *memLog) last(t *testing.T, n int) accesslog.Entry {
	e := l.waitEntries(t, n)
	return e[n-1]
}

// mustHCM decodes an HttpConnectionManager from JSON (as in Envoy docs).
func mustHCM(t testing.TB, js string) *hcmv3.HttpConnectionManager {
	t.Helper()
	var h hcmv3.HttpConnectionManager
	if err := protojson.Unmarshal([]byte(js), &h); err != nil {
		t.Fatalf("decode hcm: %v", err)
	}
	return &h
}

func mustRC(t testing.TB, js string) *routev3.RouteConfiguration {
	t.Helper()
	var rc routev3.RouteConfiguration
	if err := protojson.Unmarshal([]byte(js), &rc); err != nil {
		t.Fatalf("decode route config: %v", err)
	}
	return &rc
}

type proxyEnv struct {
	addr  string
	m     *Manager
	log   *memLog
	pools *Pools
}

// startProxy serves m on a loopback listener: accept, sniff, ServeConn,
// exactly as the node agent's capture path does.
func startProxy(t testing.TB, cfg *hcmv3.HttpConnectionManager, routes RouteSource, up Upstreams, opts ...func(*Options)) *proxyEnv {
	t.Helper()
	pools := NewPools(PoolOptions{})
	log := &memLog{}
	o := Options{Pools: pools, Log: testlog.New(t), AccessLog: log}
	for _, f := range opts {
		f(&o)
	}
	m, err := New(cfg, routes, up, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				proto, sc, err := sniff.Detect(c, sniff.DefaultMaxBytes, time.Second)
				if err != nil || (proto != sniff.HTTP1 && proto != sniff.HTTP2) {
					sc.Close()
					return
				}
				orig, _ := netip.ParseAddrPort(c.LocalAddr().String())
				_ = m.ServeConn(ctx, sc, proto, orig)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		cancel()
		m.Close()
		wg.Wait()
		pools.Close()
	})
	return &proxyEnv{addr: ln.Addr().String(), m: m, log: log, pools: pools}
}

// echo is what the echo upstream reports about the request it received.
type echo struct {
	Name    string
	Method  string
	Host    string
	URI     string
	Proto   string
	Header  http.Header
	BodyLen int
}

// startEcho starts an HTTP/1.1 upstream that answers with a JSON echo.
func startEcho(t testing.TB, name string) netip.AddrPort {
	t.Helper()
	return startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Upstream", name)
		_ = json.NewEncoder(w).Encode(echo{Name: name, Method: r.Method, Host: r.Host, URI: r.RequestURI, Proto: r.Proto, Header: r.Header, BodyLen: int(n)})
	}))
}

func startHTTP(t testing.TB, h http.Handler) netip.AddrPort {
	t.Helper()
	addr, _ := startHTTPServer(t, h)
	return addr
}

// startHTTPServer serves h over HTTP/1.1 and h2c on a loopback port and
// also returns the server (for tests that shut it down themselves).
func startHTTPServer(t testing.TB, h http.Handler) (netip.AddrPort, *http.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(ln.Addr().String()), srv
}

// wsUpstream answers a WebSocket-style Upgrade with 101, then, when the
// request carries X-Push, pushes "tick N" lines every 100 ms for 2.5 s,
// and echoes upper-cased lines until the connection ends.
func wsUpstream() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "no upgrade", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		if r.Header.Get("X-Push") != "" {
			for i := range 25 {
				fmt.Fprintf(brw, "tick %d\n", i)
				brw.Flush()
				time.Sleep(100 * time.Millisecond) // the pacing is what TestUpgradeIdleTimeout needs
			}
		}
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString(strings.ToUpper(line))
			brw.Flush()
		}
	})
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t testing.TB) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return a
}

func ep(a netip.AddrPort) Endpoint { return Endpoint{Addr: a} }

func get(t testing.TB, c *http.Client, url string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, b
}

func decodeEcho(t testing.TB, b []byte) echo {
	t.Helper()
	var e echo
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("decode echo %q: %v", b, err)
	}
	return e
}

// requireTool finds an external client; it skips outside CI and fails in CI.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI: %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

func runTool(t testing.TB, timeout time.Duration, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) || ctx.Err() != nil {
			t.Fatalf("%s %v: %v\nstdout: %s\nstderr: %s", name, args, err, out.String(), errb.String())
		}
		t.Fatalf("%s: %v", name, err)
	}
	return out.Bytes()
}

// grpcCall makes a gRPC-shaped unary call (one empty message, a body of
// unknown length) over h2c to path and returns the response, read to its
// end (trailers included).
func grpcCall(t testing.TB, addr, path string) *http.Response {
	t.Helper()
	tr := h2cTransport()
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest("POST", "http://"+addr+path, io.MultiReader(strings.NewReader("\x00\x00\x00\x00\x00")))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("gRPC call %s: %v", path, err)
	}
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp
}
