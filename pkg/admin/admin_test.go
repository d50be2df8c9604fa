package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds"
)

type fakeSource struct{ cur xds.Current }

func (f *fakeSource) Current() xds.Current { return f.cur }

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
	data, err := os.ReadFile("../../../shared/fixtures/istio/istio-configdump-2.json")
	if os.IsNotExist(err) {
		t.Skip("Istio fixture 2 not available")
	}
	if err != nil {
		t.Fatal(err)
	}
	set, _, err := resources.DecodeConfigDump(data)
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
