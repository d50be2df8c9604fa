package resources

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// fixtureDir holds the Istio config dumps shared by the project (see
// /work/shared/fixtures/istio/SOURCES.md).
// internal/istiofixture cannot serve this package (it decodes with it).
const fixtureDir = "../../../shared/fixtures/istio"

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(fixtureDir, name))
	if os.IsNotExist(err) {
		t.Skipf("Istio fixture %s not present at %s", name, fixtureDir)
	}
	if err != nil {
		t.Fatalf("read fixture: %v", err)
	}
	return data
}

func TestDecodeConfigDumpIstioFixtures(t *testing.T) {
	cases := []struct {
		file                                   string
		listeners, clusters, routes, endpoints int
	}{
		// Fixture 1 has 142 dynamic_listeners entries: 140 active and two
		// error_state-only ones for the rejected virtualInbound.
		{"istio-configdump-1.json", 140, 138, 90, 138},
		{"istio-configdump-2.json", 20, 32, 10, 0},
		{"istio-configdump-4-lds-only.json", 27, 0, 0, 0},
		{"istio-configdump-5-eds-only.json", 0, 0, 0, 32},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			set, issues, err := DecodeConfigDump(readFixture(t, tc.file))
			if err != nil {
				t.Fatalf("DecodeConfigDump: %v", err)
			}
			if got := len(set.Listeners); got != tc.listeners {
				t.Errorf("listeners = %d, want %d", got, tc.listeners)
			}
			if got := len(set.Clusters); got != tc.clusters {
				t.Errorf("clusters = %d, want %d", got, tc.clusters)
			}
			if got := len(set.Routes); got != tc.routes {
				t.Errorf("routes = %d, want %d", got, tc.routes)
			}
			if got := len(set.Endpoints); got != tc.endpoints {
				t.Errorf("endpoints = %d, want %d", got, tc.endpoints)
			}
			if set.Version == "" {
				t.Error("empty Version")
			}
			for _, is := range issues {
				t.Logf("issue: %s", is)
			}
		})
	}
}

func TestDecodeConfigDumpReportsDroppedAndErrorState(t *testing.T) {
	_, issues, err := DecodeConfigDump(readFixture(t, "istio-configdump-1.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dropped, failed bool
	for _, is := range issues {
		if is.Kind == IssueDroppedPayload && strings.HasSuffix(is.TypeURL, "stats.PluginConfig") {
			dropped = true
		}
		if is.Kind == IssueErrorState && is.Name == "virtualInbound" {
			failed = true
			var l listenerv3.Listener
			if err := is.Failed.UnmarshalTo(&l); err != nil {
				t.Fatalf("failed configuration is not a Listener: %v", err)
			}
			if l.GetName() != "virtualInbound" {
				t.Errorf("failed listener name = %q", l.GetName())
			}
			if !strings.Contains(is.Detail, "Lua") && !strings.Contains(is.Detail, "lua") {
				t.Errorf("error detail does not mention lua: %q", is.Detail)
			}
		}
	}
	if !dropped {
		t.Error("no dropped-payload issue for stats.PluginConfig")
	}
	if !failed {
		t.Error("no error-state issue for virtualInbound")
	}
}

func TestTolerantResolverRoundTrip(t *testing.T) {
	set, _, err := DecodeConfigDump(readFixture(t, "istio-configdump-2.json"))
	if err != nil {
		t.Fatal(err)
	}
	r := NewTolerantResolver()
	for name, l := range set.Listeners {
		js, err := protojson.MarshalOptions{Resolver: r}.Marshal(l)
		if err != nil {
			t.Fatalf("marshal listener %q with placeholders: %v", name, err)
		}
		var back listenerv3.Listener
		if err := (protojson.UnmarshalOptions{Resolver: r, DiscardUnknown: true}).Unmarshal(js, &back); err != nil {
			t.Fatalf("unmarshal listener %q: %v", name, err)
		}
		if back.GetName() != name {
			t.Fatalf("round trip name %q != %q", back.GetName(), name)
		}
	}
}

func TestDecodeConfigDumpErrors(t *testing.T) {
	for name, in := range map[string]string{
		"not json":        "{",
		"no configs":      `{"configs": []}`,
		"bad type":        `{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": 3}]}`,
		"unnamed cluster": `{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": [{"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster"}}]}]}`,
	} {
		if _, _, err := DecodeConfigDump([]byte(in)); err == nil {
			t.Errorf("%s: no error", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func FuzzDecodeConfigDump(f *testing.F) {
	f.Add([]byte(`{"configs": []}`))
	f.Add([]byte(`{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": [{"name": "a", "active_state": {"listener": {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "a", "filter_chains": [{"filters": [{"name": "x", "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig", "foo": 1}}]}]}}}]}]}`))
	f.Add([]byte(`{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "dynamic_endpoint_configs": [{"endpoint_config": {"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", "cluster_name": "c"}}]}]}`))
	if data, err := os.ReadFile(filepath.Join(fixtureDir, "istio-configdump-5-eds-only.json")); err == nil {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		set, _, err := DecodeConfigDump(data)
		if err != nil {
			return
		}
		for name, l := range set.Listeners {
			if name == "" || l.GetName() != name {
				t.Fatalf("listener key %q name %q", name, l.GetName())
			}
		}
		for name, c := range set.Clusters {
			if name == "" || c.GetName() != name {
				t.Fatalf("cluster key %q name %q", name, c.GetName())
			}
		}
	})
}
