package proxy_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/internal/waitfor"
	"github.com/meshlet/meshlet/pkg/accesslog"
	"github.com/meshlet/meshlet/pkg/proxy"
	"github.com/meshlet/meshlet/pkg/state"
)

func fileLog(path, text string) M {
	return M{"name": "envoy.access_loggers.file", "typed_config": M{
		"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
		"path":  path, "log_format": M{"text_format": text},
	}}
}

// TestXDSAccessLogs: the access_log lists of an HTTP connection manager,
// a tcp_proxy and a listener write Envoy-formatted lines to the files they
// name, and header values with command operators reach the upstream and
// the client formatted.
func TestXDSAccessLogs(t *testing.T) {
	dir := t.TempDir()
	httpLog, tcpLog, lisLog := filepath.Join(dir, "http.log"), filepath.Join(dir, "tcp.log"), filepath.Join(dir, "listener.log")

	seen := make(chan http.Header, 1)
	us := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		w.Header().Set("grpc-status", "0")
		io.WriteString(w, "hello")
	}))
	t.Cleanup(us.Close)
	web := us.Listener.Addr().(*net.TCPAddr).AddrPort()
	echo := echoUpstream(t, "db")

	hcm := httpManager("web")
	tc := hcm["typed_config"].(M)
	tc["access_log"] = []M{
		fileLog(httpLog, `%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %DOWNSTREAM_LOCAL_ADDRESS% %REQ(X-CLIENT)% %RESP(X-SERVED-BY)% %GRPC_STATUS% %BYTES_SENT%`+"\n"),
		{"name": "json", "filter": M{"status_code_filter": M{"comparison": M{"op": "GE", "value": M{"default_value": 500, "runtime_key": "k"}}}},
			"typed_config": M{"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
				"path": httpLog, "log_format": M{"json_format": M{"code": "%RESPONSE_CODE%"}}}},
	}
	rc := tc["route_config"].(M)
	rc["request_headers_to_add"] = []M{{"header": M{"key": "x-client", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% 100%%"}}}
	rc["response_headers_to_add"] = []M{{"header": M{"key": "x-served-by", "value": "%UPSTREAM_CLUSTER%/%RESPONSE_CODE%"}}}

	tcp := tcpProxy("db")
	tcp["typed_config"].(M)["access_log"] = []M{fileLog(tcpLog, "%ACCESS_LOG_TYPE% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% %DOWNSTREAM_LOCAL_ADDRESS% %RESPONSE_FLAGS%\n")}
	strict := listener("strict", "10.0.0.7:81", chain("only-9999", M{"destination_port": 9999}, tcpProxy("db")))
	strict["access_log"] = []M{fileLog(lisLog, "%RESPONSE_FLAGS% %DOWNSTREAM_LOCAL_ADDRESS%\n")}

	files := accesslog.NewFiles(nil)
	t.Cleanup(func() { files.Close() })
	snap := snapshotWith(t, []M{
		listener("web", "10.0.0.5:80", chain("http", nil, hcm)),
		listener("db", "10.0.0.6:5432", chain("tcp", nil, tcp)),
		strict,
	}, []M{staticCluster("web", web), staticCluster("db", echo.addr)}, state.Options{AccessLogFiles: files})
	h := startProxy(t, proxy.Options{}, snap, nil)

	// HTTP.
	resp, err := httpClient(t, h, "10.0.0.5:80", false).Get("http://web.test/hi?x=1")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// The harness dials from a fresh 127.x address per connection that it
	// maps to the original destination; the upstream sees it formatted.
	client, pct, _ := strings.Cut((<-seen).Get("X-Client"), " ")
	if ip, err := netip.ParseAddr(client); err != nil || !ip.IsLoopback() || ip == netip.MustParseAddr("127.0.0.1") || pct != "100%" {
		t.Errorf("upstream saw x-client %q, want the client's address and \"100%%\"", client+" "+pct)
	}
	if got := resp.Header.Get("X-Served-By"); got != "web/200" {
		t.Errorf("client saw x-served-by %q, want web/200", got)
	}

	// TCP: 5 bytes each way.
	c := h.dial(t, "10.0.0.6:5432")
	readGreeting(t, c)
	roundTrip(t, c, "ping\n")
	c.Close()

	// No filter chain for port 81.
	expectClosed(t, h.dial(t, "10.0.0.7:81"))

	read := func(path string, lines int) []string {
		t.Helper()
		var got []string
		waitfor.Cond(t, path+" lines", func() bool {
			if err := files.Flush(); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(path)
			got = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
			return len(got) >= lines && got[0] != ""
		})
		return got
	}
	wantHTTP := "GET /hi?x=1 HTTP/1.1 200 - web " + web.String() + " 10.0.0.5:80 " + client + " 100% web/200 OK 5"
	if got := read(httpLog, 1); len(got) != 1 || got[0] != wantHTTP {
		t.Errorf("http log %q\nwant %q (and no JSON line: the status filter wants >= 500)", got, wantHTTP)
	}
	greeting := len("db\n")
	wantTCP := "TcpConnectionEnd db 5 " + itoa(greeting+5) + " 10.0.0.6:5432 -"
	if got := read(tcpLog, 1); len(got) != 1 || got[0] != wantTCP {
		t.Errorf("tcp log %q, want %q", got, wantTCP)
	}
	if got := read(lisLog, 1); len(got) != 1 || got[0] != "NR 10.0.0.7:81" {
		t.Errorf("listener log %q, want NR 10.0.0.7:81", got)
	}

	// A 503 (no endpoint answers: the web upstream is gone) passes the
	// JSON log's filter too.
	us.Close()
	resp, err = httpClient(t, h, "10.0.0.5:80", false).Get("http://web.test/down")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := read(httpLog, 3)
	var js map[string]any
	if len(got) != 3 || !strings.HasPrefix(got[1], "GET /down HTTP/1.1 503 UF web") || json.Unmarshal([]byte(got[2]), &js) != nil || js["code"] != 503.0 {
		t.Errorf("after a 503, http log %q", got)
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// tcp_proxy and max_connections: a connection beyond the cluster's
// limit is closed at once and logged with UO.
func TestTCPMaxConnections(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "tcp.log")
	echo := echoUpstream(t, "db")
	tcp := tcpProxy("db")
	tcp["typed_config"].(M)["access_log"] = []M{fileLog(logPath, "%RESPONSE_FLAGS%\n")}
	cl := staticCluster("db", echo.addr)
	cl["circuit_breakers"] = M{"thresholds": []M{{"max_connections": 1}}}
	files := accesslog.NewFiles(nil)
	t.Cleanup(func() { files.Close() })
	snap := snapshotWith(t, []M{listener("db", "10.0.0.6:5432", chain("tcp", nil, tcp))}, []M{cl}, state.Options{AccessLogFiles: files})
	h := startProxy(t, proxy.Options{}, snap, nil)

	first := h.dial(t, "10.0.0.6:5432")
	readGreeting(t, first)
	expectClosed(t, h.dial(t, "10.0.0.6:5432"))
	roundTrip(t, first, "still here\n")
	first.Close()
	// The slot is given back: a new connection works.
	waitfor.Cond(t, "the slot given back", func() bool {
		c, _, _ := snap.Clusters["db"].Breaker.InFlight()
		return c == 0
	})
	again := h.dial(t, "10.0.0.6:5432")
	readGreeting(t, again)
	again.Close()
	waitfor.Cond(t, "three log lines", func() bool {
		files.Flush()
		b, _ := os.ReadFile(logPath)
		return strings.Count(string(b), "\n") == 3
	})
	b, _ := os.ReadFile(logPath)
	if lines := strings.Split(strings.TrimSpace(string(b)), "\n"); lines[0] != "UO" || lines[1] != "-" || lines[2] != "-" {
		t.Errorf("log %q, want UO first (the refused connection ends first), then two -", lines)
	}
}
