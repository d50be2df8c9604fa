package hcm

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/internal/fraction"
)

// faultHCM is Istio's shape: the fault filter in http_filters with an
// empty config, the VirtualService's fault as typed_per_filter_config of
// the route under /ratings; filterCfg, when set, is the filter's own
// HTTPFault (JSON fields).
func faultHCM(routeFault, filterCfg string) string {
	filter := `{"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"` + filterCfg + `}}`
	per := ""
	if routeFault != "" {
		per = `, "typed_per_filter_config": {"envoy.filters.http.fault": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault", ` + routeFault + `}}`
	}
	return `{"stat_prefix": "f", "http_filters": [` + filter + `, {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
	  "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
	    {"match": {"prefix": "/ratings"}, "route": {"cluster": "c"}` + per + `},
	    {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}}`
}

func TestFaultInjection(t *testing.T) {
	var hits atomic.Int64
	up := newUpstreams()
	up.set("c", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, "upstream")
	}))))
	const all = `"percentage": {"numerator": 100}`
	cases := []struct {
		name            string
		route, filter   string
		path            string
		hdr             map[string]string
		code            int
		body, flags     string
		minDur          time.Duration
		reachesUpstream bool
	}{
		{"abort 503", `"abort": {"http_status": 503, ` + all + `}`, "", "/ratings/1", nil, 503, "fault filter abort", FlagFaultInjected, 0, false},
		{"abort with a body", `"abort": {"http_status": 429, "response_body": "slow down", ` + all + `}`, "", "/ratings", nil, 429, "slow down", FlagFaultInjected, 0, false},
		{"other route: no fault", `"abort": {"http_status": 503, ` + all + `}`, "", "/details", nil, 200, "upstream", "", 0, true},
		{"0 percent", `"abort": {"http_status": 503, "percentage": {"numerator": 0}}`, "", "/ratings", nil, 200, "upstream", "", 0, true},
		{"delay", `"delay": {"fixed_delay": "0.3s", ` + all + `}`, "", "/ratings", nil, 200, "upstream", FlagDelayInjected, 300 * time.Millisecond, true},
		{"delay then abort", `"delay": {"fixed_delay": "0.2s", ` + all + `}, "abort": {"http_status": 500, ` + all + `}`, "", "/ratings", nil, 500, "fault filter abort", FlagDelayInjected + "," + FlagFaultInjected, 200 * time.Millisecond, false},
		{"header match (Istio's end-user)", `"abort": {"http_status": 503, ` + all + `}, "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]`, "", "/ratings", map[string]string{"end-user": "jason"}, 503, "fault filter abort", FlagFaultInjected, 0, false},
		{"header mismatch", `"abort": {"http_status": 503, ` + all + `}, "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]`, "", "/ratings", map[string]string{"end-user": "bill"}, 200, "upstream", "", 0, true},
		{"other upstream cluster", `"abort": {"http_status": 503, ` + all + `}, "upstream_cluster": "elsewhere"`, "", "/ratings", nil, 200, "upstream", "", 0, true},
		{"header-controlled abort", `"abort": {"header_abort": {}, ` + all + `}`, "", "/ratings", map[string]string{"x-envoy-fault-abort-request": "418"}, 418, "fault filter abort", FlagFaultInjected, 0, false},
		{"header-controlled abort, no header", `"abort": {"header_abort": {}, ` + all + `}`, "", "/ratings", nil, 200, "upstream", "", 0, true},
		{"header-controlled abort, 0 percent by header", `"abort": {"header_abort": {}, ` + all + `}`, "", "/ratings", map[string]string{"x-envoy-fault-abort-request": "418", "x-envoy-fault-abort-request-percentage": "0"}, 200, "upstream", "", 0, true},
		{"header-controlled delay", `"delay": {"header_delay": {}, ` + all + `}`, "", "/ratings", map[string]string{"x-envoy-fault-delay-request": "200"}, 200, "upstream", FlagDelayInjected, 200 * time.Millisecond, true},
		{"filter-level config, every route", "", `, "abort": {"http_status": 502, ` + all + `}`, "/details", nil, 502, "fault filter abort", FlagFaultInjected, 0, false},
		{"route config wins over the filter's", `"abort": {"http_status": 503, "percentage": {"numerator": 0}}`, `, "abort": {"http_status": 502, ` + all + `}`, "/ratings", nil, 200, "upstream", "", 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := startProxy(t, mustHCM(t, faultHCM(c.route, c.filter)), nil, up)
			before := hits.Load()
			hdr := map[string]string{"Host": "svc.test"}
			for k, v := range c.hdr {
				hdr[k] = v
			}
			resp, b := get(t, &http.Client{}, "http://"+p.addr+c.path, hdr)
			if resp.StatusCode != c.code || !strings.HasPrefix(string(b), c.body) {
				t.Fatalf("status %d body %q, want %d %q", resp.StatusCode, b, c.code, c.body)
			}
			e := p.log.last(t, 1)
			if e.Flags != c.flags {
				t.Errorf("flags %q, want %q", e.Flags, c.flags)
			}
			if e.Duration < c.minDur {
				t.Errorf("took %v, want at least the %v delay", e.Duration, c.minDur)
			}
			if got := hits.Load() > before; got != c.reachesUpstream {
				t.Errorf("reached the upstream: %v, want %v", got, c.reachesUpstream)
			}
		})
	}
}

// Without the fault filter in http_filters, a route's fault config is
// inert (as in Envoy: per-route config of an absent filter).
func TestFaultNeedsTheFilter(t *testing.T) {
	up := newUpstreams()
	up.set("c", ep(startEcho(t, "c")))
	js := strings.Replace(faultHCM(`"abort": {"http_status": 503, "percentage": {"numerator": 100}}`, ""),
		`{"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}, `, "", 1)
	p := startProxy(t, mustHCM(t, js), nil, up)
	if resp, b := get(t, &http.Client{}, "http://"+p.addr+"/ratings", map[string]string{"Host": "svc.test"}); resp.StatusCode != 200 {
		t.Fatalf("status %d (%s), want 200", resp.StatusCode, b)
	}
}

// A gRPC abort answers the call with its status (trailers-only).
func TestFaultGRPCAbort(t *testing.T) {
	up := newUpstreams()
	up.set("c", Endpoint{Addr: startEcho(t, "c"), Protocol: UpstreamHTTP2})
	p := startProxy(t, mustHCM(t, faultHCM(`"abort": {"grpc_status": 14, "percentage": {"numerator": 100}}`, "")), nil, up)
	resp := grpcCall(t, p.addr, "/ratings.Svc/Get")
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != "14" {
		t.Errorf("status %d grpc-status %q, want 200 and 14", resp.StatusCode, resp.Header.Get("Grpc-Status"))
	}
	// The same abort to a plain HTTP client is the matching HTTP status.
	resp2, _ := get(t, &http.Client{}, "http://"+p.addr+"/ratings", map[string]string{"Host": "svc.test"})
	if resp2.StatusCode != 503 {
		t.Errorf("non-gRPC client: status %d, want 503", resp2.StatusCode)
	}
}

func TestFaultConfigErrors(t *testing.T) {
	for name, f := range map[string]string{
		"abort status out of range": `"abort": {"http_status": 700, "percentage": {"numerator": 100}}`,
		"bad header regex":          `"abort": {"http_status": 503}, "headers": [{"name": "x", "safe_regex_match": {"regex": "("}}]`,
	} {
		if _, err := compileRoutes(mustRC(t, `{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"},
		  "typed_per_filter_config": {"envoy.filters.http.fault": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault", `+f+`}}}]}]}`)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A header naming a percentage can lower the configured one, never raise
// it (the draws themselves are internal/fraction's, tested there).
func TestFaultHeaderLowersPercent(t *testing.T) {
	p := fraction.Percent{Num: 30, Den: 100}
	h := http.Header{"X-P": {"5"}}
	if got := lowerBy(p, h, "X-P"); got.Num != 5 {
		t.Errorf("header lowers to %d", got.Num)
	}
	h["X-P"] = []string{"90"}
	if got := lowerBy(p, h, "X-P"); got.Num != 30 {
		t.Errorf("header raised the percentage to %d", got.Num)
	}
	h["X-P"] = []string{"five"}
	if got := lowerBy(p, h, "X-P"); got != p {
		t.Errorf("an unparsable header changed the percentage to %+v", got)
	}
}
