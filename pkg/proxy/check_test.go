package proxy_test

import (
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshlet/meshlet/internal/istiofixture"
	"github.com/meshlet/meshlet/pkg/proxy"
	"github.com/meshlet/meshlet/pkg/state"
)

// Check refuses, when the configuration arrives, what the L7 data plane
// would otherwise reject at the first request: the agent NACKs the update
// and keeps the config in force.
func TestCheckRefusesBadHTTPConfig(t *testing.T) {
	p := proxy.New(proxy.Options{})
	good := snapshot(t, []M{listener("web", "10.0.0.5:80", chain("http", nil, httpManager("web")))}, []M{staticCluster("web")})
	if err := p.Check(good); err != nil {
		t.Fatalf("good config refused: %v", err)
	}

	badHeader := httpManager("web")
	badHeader["typed_config"].(M)["route_config"].(M)["request_headers_to_add"] = []M{{"header": M{"key": "x", "value": "%BOGUS%"}}}
	badFault := httpManager("web")
	tc := badFault["typed_config"].(M)
	tc["http_filters"] = append([]M{{"name": "envoy.filters.http.fault", "typed_config": M{
		"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
		"abort": M{"http_status": 700, "percentage": M{"numerator": 100}}}}}, tc["http_filters"].([]M)...)
	for name, c := range map[string]struct {
		hcm  M
		want string
	}{
		"inline route config": {badHeader, "unknown command operator"},
		"fault filter":        {badFault, "http_status 700"},
	} {
		s := snapshot(t, []M{listener("web", "10.0.0.5:80", chain("http", nil, c.hcm))}, []M{staticCluster("web")})
		if err := p.Check(s); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Check = %v, want an error about %q", name, err, c.want)
		}
	}

	// An RDS route configuration (as the xDS client hands it over).
	var rc routev3.RouteConfiguration
	if err := protojson.Unmarshal([]byte(`{"name": "9080", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
	  {"match": {"safe_regex": {"regex": "("}}, "route": {"cluster": "web"}}]}]}`), &rc); err != nil {
		t.Fatal(err)
	}
	good.Routes["9080"] = &rc
	if err := p.Check(good); err == nil || !strings.Contains(err.Error(), `route configuration "9080"`) {
		t.Errorf("bad RDS route configuration: %v", err)
	}
}

// Istio's real configurations pass Check: the fixture dumps' HCMs and
// route configurations all compile.
func TestCheckIstioFixtures(t *testing.T) {
	p := proxy.New(proxy.Options{})
	for _, name := range istiofixture.Dumps {
		set := istiofixture.Set(t, name)
		s, err := state.Build(set, state.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if err := p.Check(s); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		t.Logf("%s: %d HTTP chains, %d route configurations checked in %v", name, len(s.HTTPChains()), len(s.Routes), time.Since(t0))
	}
}
