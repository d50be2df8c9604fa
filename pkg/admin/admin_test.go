package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshlet/meshlet/internal/istiofixture"
	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/state"
	"github.com/meshlet/meshlet/pkg/xds"
)

type fakeSource struct {
	cur xds.Current
	tr  Translation
}

func (f *fakeSource) Current() xds.Current     { return f.cur }
func (f *fakeSource) Translation() Translation { return f.tr }

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rr.Result().Body)
	return rr.Code, string(b)
}

func TestReady(t *testing.T) {
	src := &fakeSource{}
	h := New(src, nil, nil)
	if code, _ := get(t, h, "/ready"); code != http.StatusServiceUnavailable {
		t.Fatalf("/ready before config = %d", code)
	}
	src.cur.Status.Ready, src.cur.Status.Source = true, xds.SourcePersisted
	code, body := get(t, h, "/ready")
	if code != http.StatusOK || !strings.Contains(body, "persisted") {
		t.Fatalf("/ready = %d %q", code, body)
	}
}

func TestConfigDumpShapeAndRoundTrip(t *testing.T) {
	set, _, err := resources.DecodeConfigDump(istiofixture.Read(t, "istio-configdump-2.json"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 23, 1, 2, 3, 0, time.UTC)
	meta := map[string]map[string]xds.ResourceMeta{xds.ListenerType: {}}
	for n := range set.Listeners {
		meta[xds.ListenerType][n] = xds.ResourceMeta{Version: "v7", LastUpdated: now}
	}
	bad := &listenerv3.Listener{Name: "bad"}
	badAny, _ := anypb.New(bad)
	src := &fakeSource{cur: xds.Current{
		Set:  set,
		Meta: meta,
		Nacks: []xds.NackError{{TypeURL: xds.ListenerType, Name: "bad", Version: "v8", Detail: `LDS "bad": no address`, Time: now, Failed: badAny},
			{TypeURL: xds.ClusterType, Version: "v9", Detail: "configuration rejected by the agent: boom", Time: now}},
		Status: xds.Status{Ready: true, Types: map[string]xds.TypeStatus{xds.ListenerType: {Version: "v7"}}},
	}}
	h := New(src, nil, map[string]StatusHook{"proxy": func() any { return map[string]int{"connections": 3} }})

	code, body := get(t, h, "/config_dump")
	if code != http.StatusOK {
		t.Fatalf("/config_dump = %d: %s", code, body)
	}
	var cd adminv3.ConfigDump
	if err := (protojson.UnmarshalOptions{Resolver: resources.NewTolerantResolver()}).Unmarshal([]byte(body), &cd); err != nil {
		t.Fatalf("output is not a ConfigDump: %v", err)
	}
	var lds adminv3.ListenersConfigDump
	for _, c := range cd.Configs {
		if c.MessageIs(&lds) {
			if err := c.UnmarshalTo(&lds); err != nil {
				t.Fatal(err)
			}
		}
		if strings.HasSuffix(c.TypeUrl, "EndpointsConfigDump") {
			t.Error("EDS dumped without include_eds")
		}
	}
	if lds.VersionInfo != "v7" || len(lds.DynamicListeners) != len(set.Listeners)+1 {
		t.Fatalf("listeners dump: version %q, %d entries", lds.VersionInfo, len(lds.DynamicListeners))
	}
	foundErr := false
	for _, dl := range lds.DynamicListeners {
		if dl.Name == "bad" {
			foundErr = dl.ErrorState != nil && strings.Contains(dl.ErrorState.Details, "no address") && dl.ErrorState.FailedConfiguration != nil
			continue
		}
		if dl.ActiveState.VersionInfo != "v7" || !dl.ActiveState.LastUpdated.AsTime().Equal(now) {
			t.Fatalf("listener %q: version/last_updated missing", dl.Name)
		}
	}
	if !foundErr {
		t.Fatal("NACKed listener has no error_state")
	}
	if !strings.Contains(body, "boom") {
		t.Fatal("whole-config NACK missing from the dump")
	}

	// Our dump decodes back into the same Set.
	back, _, err := resources.DecodeConfigDump([]byte(body))
	if err != nil {
		t.Fatalf("own dump does not decode: %v", err)
	}
	if len(back.Listeners) != len(set.Listeners) || len(back.Clusters) != len(set.Clusters) || len(back.Routes) != len(set.Routes) {
		t.Fatalf("round trip: %d/%d/%d", len(back.Listeners), len(back.Clusters), len(back.Routes))
	}
	for n, l := range set.Listeners {
		if !proto.Equal(back.Listeners[n], l) {
			t.Fatalf("listener %q differs after round trip", n)
		}
	}

	if _, body := get(t, h, "/config_dump?include_eds"); !strings.Contains(body, "EndpointsConfigDump") {
		t.Fatal("include_eds did not add endpoints")
	}
	code, body = get(t, h, "/status")
	var st map[string]any
	if err := json.Unmarshal([]byte(body), &st); code != http.StatusOK || err != nil || st["extra"] == nil || st["nacks"] == nil {
		t.Fatalf("/status = %d %v: %s", code, err, body)
	}
}

// decodeDump parses /config_dump output as Envoy tooling would.
func decodeDump(t *testing.T, body string) *adminv3.ConfigDump {
	t.Helper()
	var cd adminv3.ConfigDump
	if err := (protojson.UnmarshalOptions{Resolver: resources.NewTolerantResolver()}).Unmarshal([]byte(body), &cd); err != nil {
		t.Fatalf("output is not a ConfigDump: %v", err)
	}
	return &cd
}

func TestConfigDumpTranslationIssues(t *testing.T) {
	set := resources.New()
	set.Listeners["virtualInbound"] = &listenerv3.Listener{Name: "virtualInbound"}
	issues := []state.Issue{
		{Type: "listener", Name: "virtualInbound", Reason: "inbound listener: inbound capture is not implemented"},
		{Type: "cluster", Name: "outbound|9080||reviews.default.svc.cluster.local", Reason: "upstream TLS \"quoted\" \u00e9 not implemented"},
	}
	src := &fakeSource{
		cur: xds.Current{Set: set, Status: xds.Status{Ready: true}},
		tr:  Translation{Version: "lds=7", Issues: issues},
	}
	h := New(src, nil, nil)
	code, body := get(t, h, "/config_dump")
	if code != http.StatusOK {
		t.Fatalf("/config_dump = %d: %s", code, body)
	}
	cd := decodeDump(t, body)

	// The Envoy sections are all there, in Envoy's order, and the issues
	// entry comes last as a google.protobuf.Struct.
	var urls []string
	for _, c := range cd.Configs {
		urls = append(urls, strings.TrimPrefix(c.TypeUrl, "type.googleapis.com/"))
	}
	want := []string{"envoy.admin.v3.ClustersConfigDump", "envoy.admin.v3.ListenersConfigDump", "envoy.admin.v3.RoutesConfigDump", "google.protobuf.Struct"}
	if strings.Join(urls, " ") != strings.Join(want, " ") {
		t.Fatalf("configs = %v, want %v", urls, want)
	}
	last := cd.Configs[len(cd.Configs)-1]
	var st structpb.Struct
	if err := last.UnmarshalTo(&st); err != nil {
		t.Fatal(err)
	}
	list := st.Fields[IssuesKey].GetListValue().GetValues()
	if len(list) != len(issues) || st.Fields["version_info"].GetStringValue() != "lds=7" {
		t.Fatalf("issues entry = %v", st.String())
	}
	for i, v := range list {
		f := v.GetStructValue().GetFields()
		got := state.Issue{Type: f["type"].GetStringValue(), Name: f["name"].GetStringValue(), Reason: f["reason"].GetStringValue()}
		if got != issues[i] {
			t.Errorf("issue %d = %+v, want %+v", i, got, issues[i])
		}
	}
	tr, ok, err := IssuesFromConfigDump(cd)
	if err != nil || !ok || tr.Version != "lds=7" || !slices.Equal(tr.Issues, issues) {
		t.Fatalf("IssuesFromConfigDump = %+v %v %v", tr, ok, err)
	}
	// The raw JSON carries the recognisable key, as a user running jq on
	// it would look for (protojson varies whitespace: parse, don't grep).
	var raw struct {
		Configs []map[string]json.RawMessage `json:"configs"`
	}
	if err := json.Unmarshal([]byte(body), &raw); err != nil || len(raw.Configs) == 0 {
		t.Fatalf("dump is not JSON with configs: %v", err)
	}
	entry := raw.Configs[len(raw.Configs)-1]
	var value map[string]json.RawMessage
	if string(entry["@type"]) != `"`+IssuesTypeURL+`"` || json.Unmarshal(entry["value"], &value) != nil || value[IssuesKey] == nil {
		t.Fatalf("last configs entry is not the %s Struct:\n%s", IssuesKey, body)
	}

	// Our own decoder (fed back to the embedded server) skips the entry
	// as an ignored section and keeps the resources.
	back, dumpIssues, err := resources.DecodeConfigDump([]byte(body))
	if err != nil {
		t.Fatalf("own dump does not decode: %v", err)
	}
	if len(back.Listeners) != 1 {
		t.Fatalf("round trip: %d listeners", len(back.Listeners))
	}
	ignored := false
	for _, is := range dumpIssues {
		ignored = ignored || is.TypeURL == IssuesTypeURL
	}
	if !ignored {
		t.Fatalf("decode issues %+v do not mention the skipped Struct entry", dumpIssues)
	}

	// /status lists the same issues.
	_, sbody := get(t, h, "/status")
	var sd struct {
		Issues []state.Issue `json:"issues"`
	}
	if err := json.Unmarshal([]byte(sbody), &sd); err != nil || !slices.Equal(sd.Issues, issues) {
		t.Fatalf("/status issues = %+v (%v)", sd.Issues, err)
	}

	// No issues (or nothing applied yet): the entry is still there, empty,
	// so tools can tell "none" from "not reported".
	src.tr = Translation{}
	_, body = get(t, h, "/config_dump?include_eds")
	cd = decodeDump(t, body)
	tr, ok, err = IssuesFromConfigDump(cd)
	if err != nil || !ok || tr.Issues == nil || len(tr.Issues) != 0 {
		t.Fatalf("empty issues: %+v %v %v\n%s", tr, ok, err, body)
	}
	if !strings.HasSuffix(cd.Configs[len(cd.Configs)-2].TypeUrl, "RoutesConfigDump") {
		t.Fatalf("issues entry is not last with include_eds")
	}
}

func TestIssuesFromConfigDumpErrors(t *testing.T) {
	mk := func(fields map[string]any) *adminv3.ConfigDump {
		s, err := structpb.NewStruct(fields)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := anypb.New(s)
		return &adminv3.ConfigDump{Configs: []*anypb.Any{a}}
	}
	if _, ok, err := IssuesFromConfigDump(mk(map[string]any{"other": 1})); ok || err != nil {
		t.Fatalf("foreign Struct: ok=%v err=%v", ok, err)
	}
	if _, _, err := IssuesFromConfigDump(mk(map[string]any{IssuesKey: "x"})); err == nil {
		t.Fatal("non-list issues accepted")
	}
	if _, _, err := IssuesFromConfigDump(mk(map[string]any{IssuesKey: []any{"x"}})); err == nil {
		t.Fatal("non-object issue accepted")
	}
	if _, ok, err := IssuesFromConfigDump(&adminv3.ConfigDump{}); ok || err != nil {
		t.Fatalf("empty dump: ok=%v err=%v", ok, err)
	}
}

// FuzzIssuesFromConfigDump: any JSON that parses as a ConfigDump decodes
// without panicking, and issues that decode survive a rebuild.
func FuzzIssuesFromConfigDump(f *testing.F) {
	cd, err := BuildConfigDump(xds.Current{}, Translation{Version: "v1", Issues: []state.Issue{{Type: "listener", Name: "a", Reason: "r"}}}, false)
	if err != nil {
		f.Fatal(err)
	}
	seed, _ := protojson.Marshal(cd)
	f.Add(seed)
	f.Add([]byte(`{"configs":[{"@type":"type.googleapis.com/google.protobuf.Struct","value":{"meshlet_translation_issues":[{"type":1,"name":null}]}}]}`))
	f.Add([]byte(`{"configs":[{"@type":"type.googleapis.com/google.protobuf.Struct","value":{"meshlet_translation_issues":{}}}]}`))
	f.Add([]byte(`{"configs":[{"@type":"type.googleapis.com/google.protobuf.Struct","value":{}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var cd adminv3.ConfigDump
		if protojson.Unmarshal(data, &cd) != nil {
			return
		}
		tr, ok, err := IssuesFromConfigDump(&cd)
		if err != nil || !ok {
			return
		}
		again, err := BuildConfigDump(xds.Current{}, tr, false)
		if err != nil {
			t.Fatalf("rebuild: %v", err)
		}
		tr2, ok, err := IssuesFromConfigDump(again)
		if err != nil || !ok || tr2.Version != tr.Version || !slices.Equal(tr2.Issues, tr.Issues) {
			t.Fatalf("round trip: %+v -> %+v (%v %v)", tr, tr2, ok, err)
		}
	})
}
