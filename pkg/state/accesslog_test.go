package state

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/internal/istiofixture"
	"github.com/meshlet/meshlet/pkg/accesslog"
)

// tcpWithLog is a tcp_proxy chain whose access_log entry is log (YAML,
// indented for the filter's typed_config).
func tcpWithLog(log string) string {
	return "\n    - filters:" + strings.Replace(tcpFilter, "%s", "a", 1) + "\n          access_log:\n          - " + log
}

func TestAccessLogConfig(t *testing.T) {
	dir := t.TempDir()
	good := `{name: envoy.access_loggers.file, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: ` + filepath.Join(dir, "a.log") + `, log_format: {text_format: "%UPSTREAM_CLUSTER% %BYTES_SENT%\n"}}}`
	als := `{name: als, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig, common_config: {log_name: x, transport_api_version: V3, grpc_service: {envoy_grpc: {cluster_name: als}}}}}`
	y := "static_resources:\n  listeners:" + listener("l", "10.0.0.1", "80", tcpWithLog(good)+tcpWithLog(als), "") +
		"\n  clusters:" + static("a", "127.0.0.1:1")

	// Without files: validated, not bound.
	s, err := Build(mustSet(t, y), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s.exact[netip.MustParseAddrPort("10.0.0.1:80")].Chains[0].TCP.AccessLog != nil {
		t.Error("bound without AccessLogFiles")
	}
	found := false
	for _, is := range s.Issues {
		if strings.Contains(is.Reason, "TcpGrpcAccessLogConfig is not implemented") {
			found = true
		}
	}
	if !found {
		t.Errorf("no issue for the gRPC access-log service: %v", s.Issues)
	}

	files := accesslog.NewFiles(nil)
	defer files.Close()
	s, err = Build(mustSet(t, y), Options{AccessLogFiles: files})
	if err != nil {
		t.Fatal(err)
	}
	l := s.exact[netip.MustParseAddrPort("10.0.0.1:80")].Chains[0].TCP.AccessLog
	if l == nil {
		t.Fatal("tcp_proxy access log not bound")
	}
	l.Log(&accesslog.Entry{Cluster: "a", BytesSent: 7})
	if err := files.Flush(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a.log")); string(b) != "a 7\n" {
		t.Errorf("log file holds %q", b)
	}

	// What Envoy rejects is rejected, naming the place: the update is
	// NACKed and the config in force stays.
	for _, bad := range []struct{ log, want string }{
		{strings.Replace(good, "%BYTES_SENT%", "%BYTES_SENT", 1), "not closed"},
		{strings.Replace(good, "%BYTES_SENT%", "%NOT_AN_OPERATOR%", 1), "unknown command operator"},
		{strings.Replace(good, filepath.Join(dir, "a.log"), filepath.Join(dir, "no", "such", "dir"), 1), "open access log"},
	} {
		y := "static_resources:\n  listeners:" + listener("l", "10.0.0.1", "80", tcpWithLog(bad.log), "") +
			"\n  clusters:" + static("a", "127.0.0.1:1")
		_, err := Build(mustSet(t, y), Options{AccessLogFiles: files})
		if err == nil || !strings.Contains(err.Error(), bad.want) || !strings.Contains(err.Error(), "tcp_proxy access_log") {
			t.Errorf("%s: error %v, want one naming tcp_proxy access_log and %q", bad.log, err, bad.want)
		}
	}
}

// TestAccessLogIstioFixtures builds the listeners of Istio's config dumps
// with their access logs bound: Istio's formats and filters compile, and
// the HCM and tcp_proxy chains that name a log get one.
func TestAccessLogIstioFixtures(t *testing.T) {
	for _, name := range istiofixture.Dumps {
		t.Run(name, func(t *testing.T) {
			set := istiofixture.Set(t, name)
			files := accesslog.NewFiles(nil)
			defer files.Close()
			s, err := Build(set, Options{AccessLogFiles: files})
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			withLog, chains := 0, 0
			for _, b := range s.listeners {
				if b.lis == nil {
					continue
				}
				for _, c := range append(append([]*FilterChain(nil), b.lis.Chains...), b.lis.Default) {
					if c == nil {
						continue
					}
					chains++
					if (c.HTTP != nil && c.HTTP.AccessLog != nil) || (c.TCP != nil && c.TCP.AccessLog != nil) {
						withLog++
					}
				}
			}
			t.Logf("%d of %d filter chains log", withLog, chains)
			for _, is := range s.Issues {
				if strings.Contains(is.Reason, "access_log") {
					t.Logf("issue: %s: %s", is.Name, is.Reason)
				}
			}
			// Fixtures 1 and 2 configure Istio's sidecar access log
			// (file /dev/stdout, Istio's text format); fixture 4 has none.
			if hasLogs := name != "istio-configdump-4-lds-only.json"; hasLogs != (withLog > 0) {
				t.Errorf("%d chains with an access log, want some: %v", withLog, hasLogs)
			}
		})
	}
}
