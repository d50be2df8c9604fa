package proxy_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	"github.com/meshlet/meshlet/internal/waitfor"
	"github.com/meshlet/meshlet/pkg/proxy"
)

// dialer returns a DialContext that connects to the proxy as an
// application captured on its way to dst.
func (h *harness) dialer(dst string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		src := h.orig.source(netip.MustParseAddrPort(dst))
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
		return d.DialContext(ctx, "tcp4", h.addr.String())
	}
}

// httpUpstream answers every request with 200 and what it saw; h2
// upstreams speak HTTP/2 with prior knowledge (h2c).
func httpUpstream(t *testing.T, name string, h2 bool) netip.AddrPort {
	t.Helper()
	var hd http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("x-upstream", name)
		fmt.Fprintf(w, "%s proto=%d %s %s body=%q", name, r.ProtoMajor, r.Method, r.URL.Path, body)
	})
	if h2 {
		hd = h2c.NewHandler(hd, &http2.Server{})
	}
	s := httptest.NewUnstartedServer(hd)
	s.Start()
	t.Cleanup(s.Close)
	return s.Listener.Addr().(*net.TCPAddr).AddrPort()
}

// httpClient speaks HTTP/1.1, or HTTP/2 with prior knowledge, through the
// proxy to dst.
func httpClient(t *testing.T, h *harness, dst string, h2 bool) *http.Client {
	t.Helper()
	var rt http.RoundTripper
	if h2 {
		dial := h.dialer(dst)
		tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return dial(ctx, network, addr)
		}}
		t.Cleanup(tr.CloseIdleConnections)
		rt = tr
	} else {
		tr := &http.Transport{DialContext: h.dialer(dst), DisableKeepAlives: true}
		t.Cleanup(tr.CloseIdleConnections)
		rt = tr
	}
	return &http.Client{Transport: rt, Timeout: testTimeout}
}

func TestHTTPChainRoutes(t *testing.T) {
	cases := []struct {
		name             string
		clientH2, upH2   bool
		wantUpstreamProt int
	}{
		{"http/1.1 to http/1.1", false, false, 1},
		{"h2c to h2c upstream", true, true, 2},
		{"http/1.1 to h2c upstream", false, true, 2},
		{"h2c to http/1.1 upstream", true, false, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := httpUpstream(t, "web", tc.upH2)
			cl := staticCluster("web", addr)
			if tc.upH2 {
				cl = h2Cluster("web", addr)
			}
			snap := snapshot(t, []M{listener("web", "10.0.0.5:80", chain("http", nil, httpManager("web")))}, []M{cl})
			core, logs := observer.New(zap.InfoLevel)
			h := startProxy(t, proxy.Options{AccessLog: zap.New(core)}, snap, nil)

			c := httpClient(t, h, "10.0.0.5:80", tc.clientH2)
			resp, err := c.Post("http://web.test/hello", "text/plain", strings.NewReader("payload"))
			if err != nil {
				t.Fatalf("request through the proxy: %v", err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("read the response: %v", err)
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d (%s), want 200", resp.StatusCode, body)
			}
			if want := fmt.Sprintf("web proto=%d POST /hello body=\"payload\"", tc.wantUpstreamProt); string(body) != want {
				t.Fatalf("body %q, want %q", body, want)
			}
			if wantMajor := map[bool]int{false: 1, true: 2}[tc.clientH2]; resp.ProtoMajor != wantMajor {
				t.Errorf("downstream protocol HTTP/%d, want HTTP/%d", resp.ProtoMajor, wantMajor)
			}
			if got := resp.Header.Get("x-upstream"); got != "web" {
				t.Errorf("x-upstream %q", got)
			}
			if n := h.p.Stats().HTTPConns; n != 1 {
				t.Errorf("HTTPConns %d, want 1", n)
			}
			waitfor.Cond(t, "one access log entry", func() bool { return logs.FilterMessage("access").Len() == 1 })
			e := logs.FilterMessage("access").All()[0].ContextMap()
			if e["path"] != "/hello" || e["response_code"] != int64(200) {
				t.Errorf("access log entry %v", e)
			}
		})
	}
}

func TestHTTPChainRejectsNonHTTP(t *testing.T) {
	up := httpUpstream(t, "web", false)
	snap := snapshot(t, []M{listener("web", "10.0.0.5:80", chain("http", nil, httpManager("web")))},
		[]M{staticCluster("web", up)})
	cases := []struct {
		name  string
		first string
		want  string // what the client reads before EOF
	}{
		// Opaque bytes: a protocol error, like Envoy's HTTP codec.
		{"opaque bytes get 400", "hello, raw bytes\r\n", "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"},
		// A TLS ClientHello is not answered in plaintext: just closed.
		{"TLS gets closed", "\x16\x03\x01\x00\x50\x01\x00\x00\x4c\x03\x03", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := startProxy(t, proxy.Options{}, snap, nil)
			c := h.dial(t, "10.0.0.5:80")
			if _, err := io.WriteString(c, tc.first); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read the answer: %v (got %q)", err, got)
			}
			if string(got) != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			if s := h.p.Stats(); s.NoListener != 1 || s.HTTPConns != 0 {
				t.Errorf("stats %+v: want the connection counted as unmatched, not as HTTP", s)
			}
		})
	}
}
