package accesslog

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// compileJSON compiles an access_log list written as xDS JSON.
func compileJSON(t *testing.T, js string) ([]*Log, []string, error) {
	t.Helper()
	var raw []json.RawMessage
	if err := json.Unmarshal([]byte(js), &raw); err != nil {
		t.Fatal(err)
	}
	var als []*accesslogv3.AccessLog
	for _, r := range raw {
		al := &accesslogv3.AccessLog{}
		if err := protojson.Unmarshal(r, al); err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		als = append(als, al)
	}
	var issues []string
	logs, err := Compile(als, func(s string) { issues = append(issues, s) })
	return logs, issues, err
}

// bindTemp binds logs after pointing every file logger at a temporary
// file, and returns a function reading what was written.
func bindTemp(t *testing.T, logs []*Log) (*Logger, func() string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "access.log")
	for _, l := range logs {
		l.Path = path
	}
	fs := NewFiles(nil)
	t.Cleanup(func() { fs.Close() })
	g, err := fs.Bind(logs)
	if err != nil {
		t.Fatal(err)
	}
	return g, func() string {
		if err := fs.Flush(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
}

func TestCompileIstioListenerLog(t *testing.T) {
	// The virtualOutbound listener's access log of the fixture dumps: file
	// /dev/stdout, Istio's text format, only entries flagged NR.
	logs, issues, err := compileJSON(t, `[{"name": "envoy.access_loggers.file", "filter": {"response_flag_filter": {"flags": ["NR"]}},
	  "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
	  "path": "/dev/stdout", "log_format": {"text_format": `+strings.TrimSuffix(mustJSON(istioFormat), "")+`}}}]`)
	if err != nil || len(issues) > 0 || len(logs) != 1 {
		t.Fatalf("logs %d, issues %v, err %v", len(logs), issues, err)
	}
	if logs[0].Path != Stdout || logs[0].JSON {
		t.Errorf("path %q json %v", logs[0].Path, logs[0].JSON)
	}
	g, read := bindTemp(t, logs)
	e := sample()
	g.Log(e) // no flags: filtered out
	e.Flags, e.Code, e.Details = "NR", 404, "route_not_found"
	g.Log(e)
	got := read()
	if strings.Count(got, "\n") != 1 || !strings.Contains(got, `" 404 NR route_not_found - "-" 0 1024 12 9 "-" "curl/7.88"`) {
		t.Errorf("log:\n%s", got)
	}
}

func mustJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestCompileLoggers(t *testing.T) {
	logs, issues, err := compileJSON(t, `[
	  {"name": "default", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/tmp/x"}},
	  {"name": "legacy", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/tmp/x", "format": "%RESPONSE_CODE%\n"}},
	  {"name": "json", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/tmp/x", "log_format": {"json_format": {"code": "%RESPONSE_CODE%"}}}},
	  {"name": "stdout", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog", "log_format": {"text_format_source": {"inline_string": "%UPSTREAM_CLUSTER%\n"}, "omit_empty_values": true}}},
	  {"name": "stderr", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"}},
	  {"name": "als", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig", "common_config": {"log_name": "x"}}}
	]`)
	if err != nil {
		t.Fatal(err)
	}
	if len(logs) != 5 || len(issues) != 1 || !strings.Contains(issues[0], "HttpGrpcAccessLogConfig") {
		t.Fatalf("logs %d issues %q", len(logs), issues)
	}
	if logs[3].Path != Stdout || logs[4].Path != Stderr || !logs[2].JSON {
		t.Errorf("paths %q %q json %v", logs[3].Path, logs[4].Path, logs[2].JSON)
	}
	e := sample()
	e.Cluster = ""
	for i, want := range []string{
		`[2026-11-24T09:31:02.517Z] "GET /orig HTTP/1.1" 200 - 0 1024 12 9 "-" "curl/7.88" "2f1c" "productpage:9080" "10.0.0.7:9080"` + "\n",
		"200\n", `{"code":200}`, "\n",
	} {
		if got := string(logs[i].Format.Append(nil, e)); got != want {
			t.Errorf("log %d: %q, want %q", i, got, want)
		}
	}
}

func TestCompileRejects(t *testing.T) {
	for _, js := range []string{
		`[{"name": "x", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/tmp/x", "log_format": {"text_format": "%BOGUS%"}}}]`,
		`[{"name": "x", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog", "log_format": {"json_format": {"a": "%REQ%"}}}}]`,
		`[{"name": "x", "filter": {"response_flag_filter": {"flags": ["XX"]}}, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}]`,
		`[{"name": "x", "filter": {"header_filter": {"header": {"name": "a", "safe_regex_match": {"regex": "("}}}}, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}]`,
		`[{"name": "x", "filter": {"and_filter": {"filters": [{"not_health_check_filter": {}}]}}, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}]`,
		`[{"name": "x", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/tmp/x", "log_format": {"text_format_source": {"filename": "/nonexistent/format"}}}}]`,
	} {
		if _, _, err := compileJSON(t, js); err == nil {
			t.Errorf("accepted: %s", js)
		} else if !strings.Contains(err.Error(), "access_log[0] x") {
			t.Errorf("error %q does not name the log", err)
		}
	}
}

func TestFilters(t *testing.T) {
	cases := []struct {
		filter string
		pass   func(e *Entry)
		fail   func(e *Entry)
	}{
		{`{"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 500, "runtime_key": "k"}}}}`,
			func(e *Entry) { e.Code = 503 }, func(e *Entry) { e.Code = 200 }},
		{`{"duration_filter": {"comparison": {"op": "LE", "value": {"default_value": 5, "runtime_key": "k"}}}}`,
			func(e *Entry) { e.Duration = 5 * time.Millisecond }, func(e *Entry) { e.Duration = 6 * time.Millisecond }},
		{`{"response_flag_filter": {}}`, func(e *Entry) { e.Flags = "UH" }, func(e *Entry) { e.Flags = "" }},
		{`{"response_flag_filter": {"flags": ["UT", "UF"]}}`, func(e *Entry) { e.Flags = "UF,URX" }, func(e *Entry) { e.Flags = "UC" }},
		{`{"header_filter": {"header": {"name": "user-agent", "prefix_match": "curl"}}}`,
			func(e *Entry) {}, func(e *Entry) { e.ReqHeaders = nil }},
		{`{"header_filter": {"header": {"name": ":method", "exact_match": "GET"}}}`,
			func(e *Entry) {}, func(e *Entry) { e.Method = "POST" }},
		{`{"grpc_status_filter": {"statuses": ["UNAVAILABLE"]}}`,
			func(e *Entry) {}, func(e *Entry) { e.RespHeaders = nil; e.Code = 200 }},
		{`{"grpc_status_filter": {"statuses": ["UNAVAILABLE"]}}`, // inferred from the HTTP status
			func(e *Entry) { e.RespHeaders = nil; e.Code = 503 }, func(e *Entry) { e.RespHeaders = nil; e.Code = 404 }},
		{`{"grpc_status_filter": {"statuses": ["OK"], "exclude": true}}`,
			func(e *Entry) {}, func(e *Entry) { e.RespHeaders = nil; e.RespTrailers = map[string][]string{"Grpc-Status": {"0"}} }},
		{`{"log_type_filter": {"types": ["TcpConnectionEnd"]}}`,
			func(e *Entry) { e.Type = TCPConnectionEnd }, func(e *Entry) {}},
		{`{"and_filter": {"filters": [{"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 200, "runtime_key": "k"}}}}, {"header_filter": {"header": {"name": "x-debug"}}}]}}`,
			func(e *Entry) { e.ReqHeaders = map[string][]string{"X-Debug": {"1"}} }, func(e *Entry) {}},
		{`{"or_filter": {"filters": [{"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 500, "runtime_key": "k"}}}}, {"response_flag_filter": {}}]}}`,
			func(e *Entry) { e.Flags = "DC" }, func(e *Entry) {}},
		{`{"runtime_filter": {"runtime_key": "k", "percent_sampled": {"numerator": 100}}}`, func(e *Entry) {}, nil},
		{`{"runtime_filter": {"runtime_key": "k", "percent_sampled": {"numerator": 0}}}`, nil, func(e *Entry) {}},
		{`{"traceable_filter": {}}`, nil, func(e *Entry) {}},
	}
	for _, c := range cases {
		logs, _, err := compileJSON(t, `[{"name": "x", "filter": `+c.filter+`, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}]`)
		if err != nil {
			t.Fatalf("%s: %v", c.filter, err)
		}
		f := logs[0].Filter
		if c.pass != nil {
			e := sample()
			c.pass(e)
			if !f.Match(e) {
				t.Errorf("%s: entry should pass", c.filter)
			}
		}
		if c.fail != nil {
			e := sample()
			c.fail(e)
			if f.Match(e) {
				t.Errorf("%s: entry should be filtered out", c.filter)
			}
		}
	}
	// Sampling by x-request-id is the same decision every time; 50 % of
	// many ids pass, roughly.
	logs, _, err := compileJSON(t, `[{"name": "x", "filter": {"runtime_filter": {"runtime_key": "k", "percent_sampled": {"numerator": 50}}}, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}]`)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i := range 2000 {
		e := &Entry{RequestID: "req-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + time.Duration(i).String()}
		a, b := logs[0].Filter.Match(e), logs[0].Filter.Match(e)
		if a != b {
			t.Fatalf("request %q sampled inconsistently", e.RequestID)
		}
		if a {
			n++
		}
	}
	if n < 800 || n > 1200 {
		t.Errorf("50%% sampling passed %d of 2000", n)
	}
}

func TestFilesShareAndFlush(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.log")
	f, _ := ParseText("%RESPONSE_CODE%\n")
	fs := NewFiles(nil)
	fs.FlushInterval = 20 * time.Millisecond
	g1, err := fs.Bind([]*Log{{Name: "one", Path: path, Format: f}})
	if err != nil {
		t.Fatal(err)
	}
	g2, err := fs.Bind([]*Log{{Name: "two", Path: path, Format: f}})
	if err != nil {
		t.Fatal(err)
	}
	g1.Log(&Entry{Code: 200})
	g2.Log(&Entry{Code: 503})
	// The flush timer writes both lines without an explicit Flush.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if string(b) == "200\n503\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("file holds %q", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := fs.Close(); err != nil {
		t.Fatal(err)
	}
	g1.Log(&Entry{Code: 404}) // after Close: dropped, no panic
	if _, err := fs.Bind([]*Log{{Name: "bad", Path: filepath.Join(dir, "missing", "x.log"), Format: f}}); err == nil {
		t.Error("Bind of an unopenable path succeeded")
	}
	var nilLogger *Logger
	nilLogger.Log(&Entry{})
}

func TestFilesReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.log")
	f, _ := ParseText("%RESPONSE_CODE%\n")
	fs := NewFiles(nil)
	defer fs.Close()
	g, err := fs.Bind([]*Log{{Name: "one", Path: path, Format: f}})
	if err != nil {
		t.Fatal(err)
	}
	g.Log(&Entry{Code: 200})
	// logrotate: the file is moved away, then the agent is told.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	g.Log(&Entry{Code: 201}) // still buffered: lands in the moved file
	if err := fs.Reopen(); err != nil {
		t.Fatal(err)
	}
	g.Log(&Entry{Code: 202})
	if err := fs.Flush(); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if string(old) != "200\n201\n" || string(cur) != "202\n" {
		t.Errorf("rotated file %q, new file %q", old, cur)
	}
}

// A file no Logger can use any more is flushed and closed; a path bound
// again later is opened again.
func TestFilesCloseUnused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.log")
	f, _ := ParseText("%RESPONSE_CODE%\n")
	fs := NewFiles(nil)
	defer fs.Close()
	bind := func() *Logger {
		g, err := fs.Bind([]*Log{{Name: "a", Path: path, Format: f}, {Name: "b", Path: Stdout, Format: f}})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	keep := bind()
	func() {
		g := bind()
		g.Log(&Entry{Code: 201})
	}()
	open := func() int {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		return len(fs.files)
	}
	// One of two Loggers gone: the file stays.
	runtime.GC()
	keep.Log(&Entry{Code: 202})
	if open() != 2 {
		t.Fatalf("%d files open with a Logger still bound, want 2", open())
	}
	runtime.KeepAlive(keep)
	keep = nil
	deadline := time.Now().Add(10 * time.Second)
	for open() != 0 { // stdout's writer goes too (flushed; the stream itself stays open)
		if time.Now().After(deadline) {
			t.Fatalf("%d files open after the last Logger went, want 0", open())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if b, _ := os.ReadFile(path); string(b) != "201\n202\n" {
		t.Errorf("closed file holds %q, want both lines flushed", b)
	}
	g := bind()
	g.Log(&Entry{Code: 203})
	if err := fs.Flush(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "201\n202\n203\n" {
		t.Errorf("reopened file holds %q", b)
	}
	runtime.KeepAlive(g)
}
