package hcm

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// max_stream_duration (HCM common_http_protocol_options, or a route's
// max_stream_duration, which wins) bounds a stream's whole life: 408 with
// DT before the response started, a reset after.
func TestMaxStreamDuration(t *testing.T) {
	up := newUpstreams()
	up.set("c", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow-headers":
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
			}
		case "/slow-body":
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(200)
			io.WriteString(w, "start ")
			w.(http.Flusher).Flush()
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
			}
		case "/unbounded/wait":
			time.Sleep(500 * time.Millisecond) // beyond the HCM's 0.3 s
		}
		io.WriteString(w, "done")
	}))))
	hcm := `{"stat_prefix": "d", "common_http_protocol_options": {"max_stream_duration": "0.3s"},
	  "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
	    {"match": {"prefix": "/unbounded"}, "route": {"cluster": "c", "max_stream_duration": {"max_stream_duration": "0s"}}},
	    {"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "10s"}}]}]}}`
	p := startProxy(t, mustHCM(t, hcm), nil, up)

	resp, b := get(t, &http.Client{}, "http://"+p.addr+"/slow-headers", map[string]string{"Host": "svc.test"})
	if resp.StatusCode != http.StatusRequestTimeout || string(b) != "downstream duration timeout" {
		t.Errorf("slow headers: %d %q, want 408", resp.StatusCode, b)
	}
	if e := p.log.last(t, 1); e.Flags != FlagDurationTimeout || e.Details != "max_duration_timeout" {
		t.Errorf("flags %q details %q", e.Flags, e.Details)
	}

	req, _ := http.NewRequest("GET", "http://"+p.addr+"/slow-body", nil)
	req.Host = "svc.test"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || string(b) != "start " {
		t.Errorf("slow body: %q, err %v; want the stream cut after its start", b, err)
	}
	if e := p.log.last(t, 2); e.Flags != FlagDurationTimeout {
		t.Errorf("slow body flags %q", e.Flags)
	}

	// The route's 0s turns the cap off: the response completes at 0.5 s.
	resp, b = get(t, &http.Client{}, "http://"+p.addr+"/unbounded/wait", map[string]string{"Host": "svc.test"})
	if resp.StatusCode != 200 || string(b) != "done" {
		t.Errorf("unbounded: %d %q", resp.StatusCode, b)
	}
}

// max_requests_per_connection: the last request a connection may carry
// gets "Connection: close" on HTTP/1.1 (fast path and net/http) and ends
// an HTTP/2 connection with a GOAWAY; clients go on on a new connection.
func TestMaxRequestsPerConnection(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	js := strings.Replace(basicHCM, `"stat_prefix": "outbound_0.0.0.0_80",`, `"stat_prefix": "outbound_0.0.0.0_80", "common_http_protocol_options": {"max_requests_per_connection": 3},`, 1)
	p := startProxy(t, mustHCM(t, js), nil, up)

	for _, chunked := range []bool{false, true} {
		c, br := rawConn(t, p.addr)
		for i := 1; i <= 3; i++ {
			req := "GET /r HTTP/1.1\r\nHost: svc.test\r\n\r\n"
			if chunked {
				req = "POST /r HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
			}
			resp, _ := roundTripRaw(t, c, br, "GET", req)
			if got, want := resp.Close, i == 3; got != want {
				t.Fatalf("chunked=%v request %d: Connection: close %v, want %v", chunked, i, got, want)
			}
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := br.ReadByte(); err != io.EOF {
			t.Errorf("chunked=%v: after the 3rd response the connection gave %v, %v; want EOF", chunked, n, err)
		}
	}

	var dials atomic.Int64
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr}
	for i := range 7 {
		resp, b := get(t, cl, "http://"+p.addr+"/h2", map[string]string{"Host": "svc.test"})
		if resp.StatusCode != 200 {
			t.Fatalf("h2 request %d: %d %s", i, resp.StatusCode, b)
		}
	}
	if n := dials.Load(); n != 3 {
		t.Errorf("7 sequential h2c requests took %d connections, want 3 (3 + 3 + 1)", n)
	}
}

// headers_with_underscores_action: REJECT_REQUEST answers 400 (DPE),
// DROP_HEADER forwards the request without such headers.
func TestHeadersWithUnderscores(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	for _, c := range []struct {
		action string
		code   int
	}{{"REJECT_REQUEST", 400}, {"DROP_HEADER", 200}, {"ALLOW", 200}} {
		js := strings.Replace(basicHCM, `"stat_prefix": "outbound_0.0.0.0_80",`, `"stat_prefix": "outbound_0.0.0.0_80", "common_http_protocol_options": {"headers_with_underscores_action": "`+c.action+`"},`, 1)
		p := startProxy(t, mustHCM(t, js), nil, up)
		resp, b := get(t, &http.Client{}, "http://"+p.addr+"/u", map[string]string{"Host": "svc.test", "X_Tenant": "a", "X-Ok": "1"})
		if resp.StatusCode != c.code {
			t.Fatalf("%s: status %d (%s), want %d", c.action, resp.StatusCode, b, c.code)
		}
		if c.code != 200 {
			if e := p.log.last(t, 1); e.Flags != FlagDownstreamProtoErr {
				t.Errorf("%s: flags %q", c.action, e.Flags)
			}
			continue
		}
		e := decodeEcho(t, b)
		if _, has := e.Header["X_tenant"]; has != (c.action == "ALLOW") || e.Header.Get("X-Ok") != "1" {
			t.Errorf("%s: upstream saw %v", c.action, e.Header)
		}
	}
}
