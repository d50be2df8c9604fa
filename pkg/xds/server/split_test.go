package server

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/pkg/resources"
)

func bootstrapJSON(n int, port func(i int) int) []byte { return bootstrapJSONPer(n, 1, port) }

// bootstrapJSONPer is the TestBenchXDS file shape: n tcp_proxy listeners
// and n EDS clusters with per inline endpoints each.
func bootstrapJSONPer(n, per int, port func(i int) int) []byte {
	var ls, cs []any
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("c%d", i)
		ls = append(ls, map[string]any{
			"name":    fmt.Sprintf("l%d", i),
			"address": map[string]any{"socket_address": map[string]any{"address": "10.96.0.1", "port_value": 1000 + i}},
			"filter_chains": []any{map[string]any{"filters": []any{map[string]any{
				"name": "envoy.filters.network.tcp_proxy",
				"typed_config": map[string]any{"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
					"stat_prefix": "s \"quoted\" \\ {[", "cluster": name}}}}},
		})
		var lbs []any
		for j := 0; j < per; j++ {
			lbs = append(lbs, map[string]any{"endpoint": map[string]any{"address": map[string]any{"socket_address": map[string]any{
				"address": fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j+1), "port_value": port(i)}}}})
		}
		cs = append(cs, map[string]any{
			"name": name, "type": "EDS", "connect_timeout": "1s",
			"eds_cluster_config": map[string]any{"eds_config": map[string]any{"ads": map[string]any{}}},
			"load_assignment":    map[string]any{"cluster_name": name, "endpoints": []any{map[string]any{"lb_endpoints": lbs}}},
		})
	}
	out, err := json.MarshalIndent(map[string]any{"static_resources": map[string]any{"listeners": ls, "clusters": cs}}, "", " ")
	if err != nil {
		panic(err)
	}
	return out
}

func TestDecodeCacheReusesUnchanged(t *testing.T) {
	c := newDecodeCache()
	v1 := bootstrapJSON(20, func(int) int { return 80 })
	first, handled, err := c.decode(v1)
	if !handled || err != nil {
		t.Fatalf("decode: handled=%v err=%v", handled, err)
	}
	full, _, err := Decode(v1)
	if err != nil {
		t.Fatal(err)
	}
	if d := setDiff(first, full); d != "" {
		t.Fatalf("fast path differs from Decode: %s", d)
	}
	v2 := bootstrapJSON(20, func(i int) int { return 80 + map[bool]int{true: 1}[i == 7] })
	second, handled, err := c.decode(v2)
	if !handled || err != nil {
		t.Fatalf("decode: handled=%v err=%v", handled, err)
	}
	for n, cl := range second.Clusters {
		if (cl == first.Clusters[n]) == (n == "c7") {
			t.Errorf("cluster %s: reused=%v", n, cl == first.Clusters[n])
		}
	}
	for n, l := range second.Listeners {
		if l != first.Listeners[n] {
			t.Errorf("unchanged listener %s decoded again", n)
		}
	}
	for n, a := range second.Endpoints {
		if (a == first.Endpoints[n]) == (n == "c7") {
			t.Errorf("endpoints %s: reused=%v", n, a == first.Endpoints[n])
		}
	}
	if got := second.Endpoints["c7"].Endpoints()[0].Port; got != 81 {
		t.Errorf("changed endpoint port %d, want 81", got)
	}
	// The snapshot reuses the versions of the unchanged resources.
	s1, _, err := newSnapshot(first, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2, _, err := newSnapshot(second, s1)
	if err != nil {
		t.Fatal(err)
	}
	fresh, _, err := newSnapshot(second, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range servedTypes {
		if s2.types[typ].version != fresh.types[typ].version {
			t.Errorf("%s: version %s with reuse, %s without", typ, s2.types[typ].version, fresh.types[typ].version)
		}
	}
	if s2.types[servedTypes[1]].version == s1.types[servedTypes[1]].version {
		t.Error("EDS version did not change")
	}

	// A broken element is left to Decode; the cache is kept.
	broken := []byte(strings.Replace(string(v2), `"connect_timeout": "1s"`, `"connect_timeout": "oops"`, 1))
	if _, handled, err := c.decode(broken); handled {
		t.Fatalf("broken element handled (err %v)", err)
	}
	third, _, err := c.decode(v2)
	if err != nil || third.Clusters["c3"] != second.Clusters["c3"] {
		t.Fatalf("cache lost after a broken file: %v", err)
	}
}

func TestSplitBootstrapShapes(t *testing.T) {
	for in, ok := range map[string]bool{
		`{}`:                       true,
		`{"static_resources": {}}`: true,
		` {"static_resources":{"listeners":[],"clusters":[{"a":"}]"}]}} `: true,
		`{"static_resources": {"listeners": [{}]}, "node": {}}`:           false,
		`{"static_resources": {"secrets": []}}`:                           false,
		`{"static_resources": {"listeners": null}}`:                       false,
		`{"static_resources": {"listeners": [1]}}`:                        false,
		`{"static_resources": {"listeners": [{]}}`:                        false,
		`{"static_resources": {"listeners": []}, "static_resources": {}}`: false,
		`{"static_resources": {"listeners": [], "listeners": []}}`:        false,
		`{"static_resources": {}} x`:                                      false,
		`static_resources: {}`:                                            false,
		`{"configs": []}`:                                                 false,
		`{"static\u005fresources": {"listeners": [{"name": "a\"b"}]}}`:    true,
		`{"static_resources": {"listeners": [{"name": "unterminated}]}}`:  false,
	} {
		if _, _, got := splitBootstrap([]byte(in)); got != ok {
			t.Errorf("splitBootstrap(%s) ok=%v, want %v", in, got, ok)
		}
	}
}

// FuzzSplitBootstrap checks the fast path against Decode: whenever it
// handles a document, it must agree with the full decoder.
func FuzzSplitBootstrap(f *testing.F) {
	f.Add(bootstrapJSON(2, func(int) int { return 80 }))
	f.Add([]byte(`{"static_resources": {"listeners": [{"name": "l"}], "clusters": [{"name": "c", "type": "STATIC"}]}}`))
	f.Add([]byte(`{"static_resources": {"clusters": [{"name": "c"}, {"name": "c"}]}}`))
	f.Add([]byte(`{"static_resources": {"clusters": [{"name": "c", "bogus": 1}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, handled, err := newDecodeCache().decode(data)
		if !handled {
			return
		}
		want, _, werr := Decode(data)
		if (err == nil) != (werr == nil) {
			t.Fatalf("fast path err=%v, Decode err=%v", err, werr)
		}
		if err == nil {
			if d := setDiff(set, want); d != "" {
				t.Fatalf("fast path differs from Decode: %s", d)
			}
		}
	})
}

func setDiff(a, b *resources.Set) string {
	if len(a.Listeners) != len(b.Listeners) || len(a.Clusters) != len(b.Clusters) || len(a.Endpoints) != len(b.Endpoints) || len(a.Routes) != len(b.Routes) {
		return "sizes differ"
	}
	for n, m := range a.Listeners {
		if !proto.Equal(m, b.Listeners[n]) {
			return "listener " + n
		}
	}
	for n, m := range a.Clusters {
		if !proto.Equal(m, b.Clusters[n]) {
			return "cluster " + n
		}
	}
	for n, m := range a.Endpoints {
		if !m.Equal(b.Endpoints[n]) {
			return "endpoints " + n
		}
	}
	return ""
}

func TestEDSInlineAssignmentServedOnce(t *testing.T) {
	set, snap := threeClusterSnapshot(t)
	for n, c := range set.Clusters {
		served := snap.types[servedTypes[0]].plain[n].(interface {
			GetLoadAssignment() *endpointv3.ClusterLoadAssignment
		})
		if served.GetLoadAssignment() != nil {
			t.Errorf("EDS cluster %s served with its inline load_assignment", n)
		}
		if c.GetLoadAssignment() == nil {
			t.Errorf("the Set's cluster %s was modified", n)
		}
		la := snap.types[servedTypes[1]].plain[n]
		if !proto.Equal(la, c.GetLoadAssignment()) {
			t.Errorf("EDS resource %s is not the inline assignment", n)
		}
	}
	// The next snapshot of the same Set reuses everything.
	again, _, err := newSnapshot(set, snap)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range servedTypes {
		if again.types[typ] != snap.types[typ] {
			t.Errorf("%s rebuilt for an unchanged Set", typ)
		}
	}
}

// threeClusterSnapshot is the snapshot of bootstrapJSON(3, …): three
// tcp_proxy listeners and three EDS clusters with one endpoint each (port
// 80), and the set it was built from.
func threeClusterSnapshot(t *testing.T) (*resources.Set, *snapshot) {
	t.Helper()
	set, _, err := Decode(bootstrapJSON(3, func(int) int { return 80 }))
	if err != nil {
		t.Fatal(err)
	}
	snap, _, err := newSnapshot(set, nil)
	if err != nil {
		t.Fatal(err)
	}
	return set, snap
}
