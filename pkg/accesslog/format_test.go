package accesslog

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// istioFormat is the text_format of Istio's sidecar access log (the
// fixture config dumps carry it verbatim).
const istioFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%` + "\n"

func sample() *Entry {
	return &Entry{
		Start:    time.Date(2026, 11, 24, 9, 31, 2, 517_123_456, time.UTC),
		Method:   "GET",
		Path:     "/productpage?u=1",
		Protocol: "HTTP/1.1", Authority: "productpage:9080",
		Code: 200, Details: "via_upstream",
		BytesReceived: 0, BytesSent: 1024,
		Duration: 12 * time.Millisecond, UpstreamTime: 9 * time.Millisecond, FirstByte: 10 * time.Millisecond,
		RequestID:    "2f1c",
		UpstreamHost: "10.0.0.7:9080", Cluster: "outbound|9080||productpage.default.svc.cluster.local",
		Route: "default", Attempts: 1,
		DownstreamLocal:  netip.MustParseAddrPort("10.96.0.20:9080"),
		DownstreamRemote: netip.MustParseAddrPort("10.0.0.3:40312"),
		ConnID:           7,
		ReqHeaders: http.Header{"User-Agent": {"curl/7.88"}, "X-Request-Id": {"2f1c"},
			"X-Envoy-Original-Path": {"/orig"}},
		RespHeaders: http.Header{"X-Envoy-Upstream-Service-Time": {"9"}, "Grpc-Status": {"14"}},
	}
}

func format(t *testing.T, f string, e *Entry) string {
	t.Helper()
	p, err := ParseText(f)
	if err != nil {
		t.Fatalf("ParseText(%q): %v", f, err)
	}
	return string(p.Append(nil, e))
}

func TestIstioFormat(t *testing.T) {
	got := format(t, istioFormat, sample())
	want := `[2026-11-24T09:31:02.517Z] "GET /orig HTTP/1.1" 200 - via_upstream - "-" 0 1024 12 9 "-" "curl/7.88" "2f1c" "productpage:9080" "10.0.0.7:9080" outbound|9080||productpage.default.svc.cluster.local - 10.96.0.20:9080 10.0.0.3:40312 - default` + "\n"
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestOperators(t *testing.T) {
	e := sample()
	e.Flags = "UF,URX"
	cases := map[string]string{
		"%REQ(:PATH)%":                               "/productpage?u=1",
		"%REQ_WITHOUT_QUERY(:PATH)%":                 "/productpage",
		"%REQ(x-missing?user-agent)%":                "curl/7.88",
		"%REQ(USER-AGENT):4%":                        "curl",
		"%REQ(x-missing)%":                           "-",
		"%RESP(x-envoy-upstream-service-time)%":      "9",
		"%RESPONSE_FLAGS%":                           "UF,URX",
		"%RESPONSE_FLAGS_LONG%":                      "UpstreamConnectionFailure,UpstreamRetryLimitExceeded",
		"%RESPONSE_DURATION% %RESPONSE_TX_DURATION%": "10 2",
		"%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%:%UPSTREAM_REMOTE_PORT%":     "10.0.0.7:9080",
		"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_PORT%": "10.0.0.3 40312",
		"%DOWNSTREAM_LOCAL_PORT%":          "9080",
		"%UPSTREAM_REQUEST_ATTEMPT_COUNT%": "1",
		"%CONNECTION_ID%":                  "7",
		"%GRPC_STATUS%|%GRPC_STATUS(SNAKE_STRING)%|%GRPC_STATUS(NUMBER)%|%GRPC_STATUS_NUMBER%": "Unavailable|UNAVAILABLE|14|14",
		"%START_TIME(%s.%3f)%":                   "1795512662.517",
		"%START_TIME(%Y/%m/%d %H:%M:%E6S %z)%":   "2026/11/24 09:31:02.517123 +0000",
		"%START_TIME(%b %e %T %%)%":              "Nov 24 09:31:02 %",
		"%ACCESS_LOG_TYPE%":                      "DownstreamEnd",
		"%DYNAMIC_METADATA(istio.mixer:status)%": "-",
		"100%% %PROTOCOL%":                       "100% HTTP/1.1",
		"%ENVIRONMENT(MESHLET_TEST_UNSET_VAR)%":  "-",
		"%STREAM_ID%":                            "2f1c",
	}
	for f, want := range cases {
		if got := format(t, f, e); got != want {
			t.Errorf("%s = %q, want %q", f, got, want)
		}
	}
	if u := format(t, "%UNIQUE_ID%", e); len(u) != 36 || u == format(t, "%UNIQUE_ID%", e) {
		t.Errorf("UNIQUE_ID %q: want a fresh UUID each time", u)
	}
	tcp := &Entry{Type: TCPConnectionEnd, BytesSent: 5, Cluster: "db"}
	if got, want := format(t, "%ACCESS_LOG_TYPE% %PROTOCOL% %REQ(:METHOD)% %RESPONSE_CODE% %BYTES_SENT% %UPSTREAM_CLUSTER% %GRPC_STATUS%", tcp), "TcpConnectionEnd - - 0 5 db -"; got != want {
		t.Errorf("tcp entry: %q, want %q", got, want)
	}
}

func TestParseErrors(t *testing.T) {
	for _, f := range []string{
		"%",       // lone percent
		"50% off", // '%' starts no command
		"%NOT_AN_OPERATOR%",
		"%REQ%", // needs an argument
		"%REQ()%",
		"%REQ(a?b?c)%",
		"%PROTOCOL(x)%", // takes none
		"%REQ(x-a:5%",   // no closing parenthesis
		"%REQ(x-a):0%",
		"%REQ(x-a):x%",
		"%RESPONSE_CODE",
		"%GRPC_STATUS(LOUD)%",
	} {
		if _, err := ParseText(f); err == nil {
			t.Errorf("ParseText(%q) accepted", f)
		} else if !strings.Contains(err.Error(), "position") && !strings.Contains(err.Error(), "format") {
			t.Errorf("ParseText(%q): error %q does not say where", f, err)
		}
	}
}

func TestLiteralAndHeaderValue(t *testing.T) {
	f, err := ParseHeaderValue("100%% literal")
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := f.Literal(); !ok || s != "100% literal" {
		t.Errorf("Literal() = %q, %v", s, ok)
	}
	f, err = ParseHeaderValue("%REQ(x-missing)%")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Literal(); ok {
		t.Error("operator reported as literal")
	}
	if s := f.String(sample()); s != "" {
		t.Errorf("absent value in a header: %q, want empty", s)
	}
}

func TestJSONFormat(t *testing.T) {
	st, err := structpb.NewStruct(map[string]any{
		"code":     "%RESPONSE_CODE%",
		"path":     "%REQ(:PATH)%",
		"missing":  "%REQ(x-missing)%",
		"line":     "%REQ(:METHOD)% %REQ(:PATH)%",
		"flags":    "%RESPONSE_FLAGS%",
		"const":    42,
		"yes":      true,
		"upstream": map[string]any{"host": "%UPSTREAM_HOST%", "ms": "%DURATION%"},
		"quote":    "\"%REQ(user-agent)%\"\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, omit := range []bool{false, true} {
		jf, err := ParseJSON(st, omit)
		if err != nil {
			t.Fatal(err)
		}
		out := jf.Append(nil, sample())
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("not JSON: %s: %v", out, err)
		}
		if m["code"] != 200.0 || m["path"] != "/productpage?u=1" || m["line"] != "GET /productpage?u=1" ||
			m["const"] != 42.0 || m["yes"] != true || m["flags"] != "-" || m["quote"] != "\"curl/7.88\"\n" {
			t.Errorf("omit=%v: %s", omit, out)
		}
		if up, _ := m["upstream"].(map[string]any); up["host"] != "10.0.0.7:9080" || up["ms"] != 12.0 {
			t.Errorf("nested: %s", out)
		}
		if v, ok := m["missing"]; omit == ok || (ok && v != nil) {
			t.Errorf("omit=%v: missing = %v, %v", omit, v, ok)
		}
	}
	bad, _ := structpb.NewStruct(map[string]any{"x": "%NOPE%"})
	if _, err := ParseJSON(bad, false); err == nil {
		t.Error("unknown operator in json_format accepted")
	}
	list, _ := structpb.NewStruct(map[string]any{"x": []any{"a"}})
	if _, err := ParseJSON(list, false); err == nil {
		t.Error("list value accepted")
	}
}

func FuzzParseText(f *testing.F) {
	for _, s := range []string{istioFormat, DefaultFormat, "%START_TIME(%Y%E3S%f%9f)%", "%REQ(a?b):3%", "%%", "%", "%(", "%A(", "%REQ(x):%"} {
		f.Add(s)
	}
	e := sample()
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseText(s)
		if err != nil {
			return
		}
		_ = p.Append(nil, e)
		_ = p.Append(nil, &Entry{})
		if lit, ok := p.Literal(); ok && strings.Count(s, "%") == 0 && lit != s {
			t.Fatalf("literal %q formatted as %q", s, lit)
		}
	})
}
