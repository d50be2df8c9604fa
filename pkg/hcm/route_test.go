package hcm

import (
	"math"
	"net/http"
	"reflect"
	"sync"
	"testing"

	"github.com/meshlet/meshlet/pkg/accesslog"
)

func compileT(t *testing.T, js string) *routeTable {
	t.Helper()
	rt, err := compileRoutes(mustRC(t, js))
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	return rt
}

func view(host, path string, hdr map[string]string) *reqView {
	h := http.Header{}
	for k, v := range hdr {
		h.Set(k, v)
	}
	return &reqView{host: host, path: path, method: "GET", scheme: "http", hdr: h}
}

// Domain search order from Envoy's VirtualHost.domains docs: exact names,
// then suffix wildcards (longest first), then prefix wildcards (longest
// first), then the catch-all "*".
func TestVirtualHostDomains(t *testing.T) {
	rt := compileT(t, `{
	  "name": "vh",
	  "virtual_hosts": [
	    {"name": "exact", "domains": ["www.example.com", "reviews:9080", "10.0.0.1:9080"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "exact"}}]},
	    {"name": "suffix", "domains": ["*.example.com"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "suffix"}}]},
	    {"name": "longsuffix", "domains": ["*.api.example.com"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "longsuffix"}}]},
	    {"name": "prefix", "domains": ["foo.*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "prefix"}}]},
	    {"name": "any", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "any"}}]}
	  ]}`)
	cases := map[string]string{
		"www.example.com":   "exact",
		"WWW.Example.COM":   "any", // the caller lower-cases; raw upper-case never reaches here
		"reviews:9080":      "exact",
		"reviews":           "any", // port forms are distinct without ignore_port_in_host_matching
		"10.0.0.1:9080":     "exact",
		"a.example.com":     "suffix",
		"x.api.example.com": "longsuffix",
		".example.com":      "any", // the wildcard must match at least one character
		"foo.bar":           "prefix",
		"foo.example.com":   "suffix", // suffix wildcards win over prefix wildcards
		"unrelated.test:80": "any",
		// "*.example.com" is a suffix match, so a port breaks it.
		"www.example.com:80": "any",
	}
	for host, want := range cases {
		vh := rt.selectVhost(host)
		if vh == nil || vh.name != want {
			got := "<nil>"
			if vh != nil {
				got = vh.name
			}
			t.Errorf("host %q → vhost %s, want %s", host, got, want)
		}
	}
}

func TestIgnorePortInHostMatching(t *testing.T) {
	rt := compileT(t, `{
	  "ignore_port_in_host_matching": true,
	  "virtual_hosts": [
	    {"name": "reviews", "domains": ["reviews.default.svc.cluster.local", "reviews"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "r"}}]}
	  ]}`)
	for _, h := range []string{"reviews", "reviews:9080", "reviews.default.svc.cluster.local:80"} {
		if vh := rt.selectVhost(h); vh == nil || vh.name != "reviews" {
			t.Errorf("host %q did not match reviews", h)
		}
	}
	if rt.selectVhost("[::1]") != nil || rt.selectVhost("details:9080") != nil {
		t.Error("unexpected match")
	}
}

func TestRouteMatchKinds(t *testing.T) {
	rt := compileT(t, `{
	  "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
	    {"name": "path",   "match": {"path": "/exact"}, "route": {"cluster": "c"}},
	    {"name": "ci",     "match": {"prefix": "/CaseLess", "case_sensitive": false}, "route": {"cluster": "c"}},
	    {"name": "regex",  "match": {"safe_regex": {"regex": "/items/[0-9]+"}}, "route": {"cluster": "c"}},
	    {"name": "sep",    "match": {"path_separated_prefix": "/api"}, "route": {"cluster": "c"}},
	    {"name": "hdr-exact", "match": {"prefix": "/h", "headers": [{"name": "x-user", "string_match": {"exact": "alice"}}]}, "route": {"cluster": "c"}},
	    {"name": "hdr-prefix", "match": {"prefix": "/h", "headers": [{"name": "x-user", "string_match": {"prefix": "bo"}}]}, "route": {"cluster": "c"}},
	    {"name": "hdr-suffix", "match": {"prefix": "/h", "headers": [{"name": "x-user", "string_match": {"suffix": "ol"}}]}, "route": {"cluster": "c"}},
	    {"name": "hdr-contains", "match": {"prefix": "/h", "headers": [{"name": "x-user", "string_match": {"contains": "ev", "ignore_case": true}}]}, "route": {"cluster": "c"}},
	    {"name": "hdr-regex", "match": {"prefix": "/h", "headers": [{"name": "x-user", "string_match": {"safe_regex": {"regex": "u[0-9]{3}"}}}]}, "route": {"cluster": "c"}},
	    {"name": "hdr-present", "match": {"prefix": "/h", "headers": [{"name": "x-debug", "present_match": true}]}, "route": {"cluster": "c"}},
	    {"name": "hdr-invert", "match": {"prefix": "/h", "headers": [{"name": "x-user", "string_match": {"exact": "mallory"}, "invert_match": true}]}, "route": {"cluster": "c"}},
	    {"name": "method", "match": {"prefix": "/m", "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]}, "route": {"cluster": "c"}},
	    {"name": "query", "match": {"prefix": "/q", "query_parameters": [{"name": "v", "string_match": {"exact": "2"}}, {"name": "debug", "present_match": true}]}, "route": {"cluster": "c"}},
	    {"name": "grpc", "match": {"prefix": "/svc.", "grpc": {}}, "route": {"cluster": "c"}},
	    {"name": "fallback", "match": {"prefix": "/"}, "route": {"cluster": "c"}}
	  ]}]}`)
	type tc struct {
		path string
		hdr  map[string]string
		want string
	}
	cases := []tc{
		{"/exact", nil, "path"},
		{"/exact?x=1", nil, "path"}, // path match ignores the query string
		{"/exact/more", nil, "fallback"},
		{"/caseless/x", nil, "ci"},
		{"/CASELESS", nil, "ci"},
		{"/items/42", nil, "regex"},
		{"/items/42?q", nil, "regex"},
		{"/items/4x", nil, "fallback"}, // regex must match the whole path
		{"/api", nil, "sep"},
		{"/api/v1", nil, "sep"},
		{"/api?x", nil, "sep"},
		{"/apiv1", nil, "fallback"},
		{"/h", map[string]string{"x-user": "alice"}, "hdr-exact"},
		{"/h", map[string]string{"x-user": "bob"}, "hdr-prefix"},
		{"/h", map[string]string{"x-user": "carol"}, "hdr-suffix"},
		{"/h", map[string]string{"x-user": "KEVIN"}, "hdr-contains"},
		{"/h", map[string]string{"x-user": "u123"}, "hdr-regex"},
		{"/h", map[string]string{"x-user": "u1234", "x-debug": ""}, "hdr-present"},
		{"/h", map[string]string{"x-user": "zed"}, "hdr-invert"},
		{"/h", map[string]string{"x-user": "mallory"}, "fallback"},
		{"/q?v=2&debug", nil, "query"},
		{"/q?v=2", nil, "fallback"},
		{"/q?v=3&debug=1", nil, "fallback"},
		{"/svc.Foo/Bar", map[string]string{"content-type": "application/grpc+proto"}, "grpc"},
		{"/svc.Foo/Bar", nil, "fallback"},
	}
	for _, c := range cases {
		r := rt.match(view("h", c.path, c.hdr))
		if r == nil || r.name != c.want {
			got := "<nil>"
			if r != nil {
				got = r.name
			}
			t.Errorf("%s %v → %s, want %s", c.path, c.hdr, got, c.want)
		}
	}
	v := view("h", "/m", nil)
	v.method = "POST"
	if r := rt.match(v); r == nil || r.name != "method" {
		t.Errorf(":method match failed: %v", r)
	}
}

func TestRewrites(t *testing.T) {
	rt := compileT(t, `{
	  "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
	    {"match": {"prefix": "/old/"}, "route": {"cluster": "c", "prefix_rewrite": "/new/"}},
	    {"match": {"prefix": "/strip"}, "route": {"cluster": "c", "prefix_rewrite": "/"}},
	    {"match": {"prefix": "/re/"}, "route": {"cluster": "c", "regex_rewrite": {"pattern": {"regex": "^/re/([a-z]+)/([0-9]+)$"}, "substitution": "/v2/\\2/\\1"}}}
	  ]}]}`)
	for in, want := range map[string]string{
		"/old/a/b?x=1": "/new/a/b?x=1",
		"/strip/x":     "//x",
		"/re/user/42":  "/v2/42/user",
		"/re/user/x":   "/re/user/x",
		"/re/abc/1?q":  "/v2/1/abc?q",
	} {
		r := rt.match(view("h", in, nil))
		if got := r.rewritePath(in); got != want {
			t.Errorf("rewrite %q = %q, want %q", in, got, want)
		}
	}
}

// Weighted clusters: over any window of n consecutive picks each share is
// within a few picks of its weight (the route's Weyl sequence), so the
// issue's ±1 % holds at 10k picks with a wide margin; the shares interleave
// (no run of one cluster longer than its weight pattern allows); and a
// zero-weight cluster is never picked.
func TestWeightedClusterSplit(t *testing.T) {
	rt := compileT(t, `{
	  "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
	    {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
	      {"name": "v1", "weight": 70}, {"name": "v2", "weight": 20}, {"name": "v3", "weight": 10}, {"name": "off", "weight": 0}]}}}
	  ]}]}`)
	r := rt.match(view("h", "/", nil))
	const warm = 12345 // windows need not start at the first pick
	for range warm {
		r.pickCluster(nil)
	}
	for _, n := range []int{100, 1000, 10000, 100000} {
		counts := map[string]int{}
		run, longest, last := 0, 0, ""
		for range n {
			c, _ := r.pickCluster(nil)
			counts[c]++
			if c == last {
				run++
			} else {
				run, last = 1, c
			}
			longest = max(longest, run)
		}
		for name, p := range map[string]float64{"v1": 0.7, "v2": 0.2, "v3": 0.1} {
			dev := math.Abs(float64(counts[name]) - p*float64(n))
			// O(log n) discrepancy: 8 picks is ample up to 100k.
			if dev > 8 {
				t.Errorf("n=%d %s: %d picks, want %.0f ± 8", n, name, counts[name], p*float64(n))
			}
			if n == 10000 && dev > 0.01*float64(n) {
				t.Errorf("n=%d %s: share %.4f off by more than 1 %%", n, name, float64(counts[name])/float64(n))
			}
		}
		if counts["off"] != 0 {
			t.Errorf("zero-weight cluster picked %d times", counts["off"])
		}
		if longest > 6 {
			t.Errorf("n=%d: %d consecutive picks of one cluster (70/20/10 should interleave)", n, longest)
		}
	}
}

// Concurrent picks share one sequence: the shares stay exact.
func TestWeightedClusterSplitConcurrent(t *testing.T) {
	rt := compileT(t, `{"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
	    {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 80}, {"name": "b", "weight": 20}]}}}]}]}`)
	r := rt.match(view("h", "/", nil))
	const workers, each = 8, 2500
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			local := map[string]int{}
			for range each {
				c, _ := r.pickCluster(nil)
				local[c]++
			}
			mu.Lock()
			for k, v := range local {
				counts[k] += v
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	if d := math.Abs(float64(counts["a"]) - 0.8*workers*each); d > 8 {
		t.Errorf("a picked %d of %d, want %.0f ± 8", counts["a"], workers*each, 0.8*workers*each)
	}
}

func TestHeaderOpsOrder(t *testing.T) {
	rt := compileT(t, `{
	  "request_headers_to_add": [{"header": {"key": "x-level", "value": "config"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
	  "request_headers_to_remove": ["x-secret"],
	  "virtual_hosts": [{"name": "vh", "domains": ["*"],
	    "request_headers_to_add": [{"header": {"key": "x-vh", "value": "1"}}, {"header": {"key": "x-level", "value": "vhost"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
	    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"},
	      "request_headers_to_add": [
	        {"header": {"key": "x-level", "value": "route"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
	        {"header": {"key": "x-multi", "value": "b"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"},
	        {"header": {"key": "x-absent", "value": "new"}, "append_action": "ADD_IF_ABSENT"},
	        {"header": {"key": "x-present", "value": "new"}, "append_action": "ADD_IF_ABSENT"},
	        {"header": {"key": "x-only-if", "value": "new"}, "append_action": "OVERWRITE_IF_EXISTS"}
	      ]}]}]}`)
	r := rt.match(view("h", "/", nil))
	h := http.Header{"X-Multi": {"a"}, "X-Present": {"old"}, "X-Secret": {"s"}}
	applyHeaderOps(h, r.reqAdd, r.reqDel, &accesslog.Entry{})
	want := map[string][]string{
		"X-Level": {"config"}, "X-Vh": {"1"}, "X-Multi": {"a", "b"}, "X-Absent": {"new"}, "X-Present": {"old"},
	}
	for k, v := range want {
		if got := h[k]; len(got) != len(v) || got[len(got)-1] != v[len(v)-1] {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	if _, ok := h["X-Only-If"]; ok {
		t.Error("OVERWRITE_IF_EXISTS added a missing header")
	}
	if _, ok := h["X-Secret"]; ok {
		t.Error("request_headers_to_remove ignored")
	}
}

func TestCompileErrors(t *testing.T) {
	for name, js := range map[string]string{
		"bad regex":     `{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"safe_regex": {"regex": "("}}, "route": {"cluster": "c"}}]}]}`,
		"dup domain":    `{"virtual_hosts": [{"name": "a", "domains": ["x"]}, {"name": "b", "domains": ["x"]}]}`,
		"zero weights":  `{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}}}]}]}`,
		"pseudo header": `{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}, "request_headers_to_add": [{"header": {"key": ":path", "value": "/x"}}]}]}]}`,
		"no action":     `{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}}]}]}`,
		// Header values are format strings: a lone % or an unknown
		// command operator is rejected, as by Envoy.
		"unknown operator": `{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}, "request_headers_to_add": [{"header": {"key": "x", "value": "%NOPE%"}}]}]}]}`,
		"lone percent":     `{"response_headers_to_add": [{"header": {"key": "x", "value": "50% off"}}], "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}`,
	} {
		if _, err := compileRoutes(mustRC(t, js)); err == nil {
			t.Errorf("%s: compiled without error", name)
		}
	}
}

func TestParseGRPCTimeout(t *testing.T) {
	for in, want := range map[string]int64{"1S": 1e9, "100m": 1e8, "5u": 5000, "7n": 7, "2M": 120e9, "1H": 3600e9} {
		d, ok := parseGRPCTimeout(in)
		if !ok || int64(d) != want {
			t.Errorf("%q = %v,%v want %v", in, d, ok, want)
		}
	}
	for _, in := range []string{"", "S", "1x", "123456789S", "-1S", "1.5S"} {
		if _, ok := parseGRPCTimeout(in); ok {
			t.Errorf("%q accepted", in)
		}
	}
}

func FuzzParseGRPCTimeout(f *testing.F) {
	for _, s := range []string{"1S", "99999999H", "0n", "", "1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseGRPCTimeout(s)
		if ok && d < 0 {
			t.Fatalf("%q → negative %v", s, d)
		}
	})
}

// FuzzRouteMatch drives the matcher, rewrites and host helpers with
// arbitrary hosts, paths and header values: no panics, and a match result
// is stable across calls.
func FuzzRouteMatch(f *testing.F) {
	rt, err := compileRoutes(mustRC(f, `{
	  "virtual_hosts": [
	    {"name": "a", "domains": ["*.x.com", "foo.*", "exact:80"], "routes": [
	      {"match": {"path_separated_prefix": "/api"}, "route": {"cluster": "c", "prefix_rewrite": "/v2"}},
	      {"match": {"safe_regex": {"regex": "/r/([0-9]+)"}}, "route": {"cluster": "c", "regex_rewrite": {"pattern": {"regex": "([0-9]+)"}, "substitution": "n\\1"}}},
	      {"match": {"prefix": "/Q", "case_sensitive": false, "query_parameters": [{"name": "k", "string_match": {"contains": "v", "ignore_case": true}}]}, "route": {"cluster": "c"}},
	      {"match": {"prefix": "/", "headers": [{"name": "x", "range_match": {"start": 1, "end": 9}}]}, "route": {"cluster": "c"}}
	    ]},
	    {"name": "b", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "redirect": {"prefix_rewrite": "/z", "https_redirect": true}}]}
	  ]}`))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("a.x.com", "/api/v1?x", "3")
	f.Add("foo.bar:1", "/q?k=V", "")
	f.Add("[::1]:80", "/r/12", "x")
	f.Fuzz(func(t *testing.T, host, path, hv string) {
		v := view(host, path, map[string]string{"x": hv})
		r1 := rt.match(v)
		r2 := rt.match(view(host, path, map[string]string{"x": hv}))
		if r1 != r2 {
			t.Fatalf("unstable match for %q %q", host, path)
		}
		if r1 != nil {
			_ = r1.rewritePath(path)
		}
		_ = stripPort(host)
		_ = headerHasToken([]string{host, path}, hv)
		_ = envoySubst(path)
	})
}

// Connection options name the headers to drop, in any case; the common
// options map to the same names http.CanonicalHeaderKey gives.
func TestStripHopByHop(t *testing.T) {
	for _, tok := range []string{"keep-alive", "KEEP-ALIVE", "Close", "upgrade", "te", "TE", "x-foo", "X-Custom-Hop"} {
		if got, want := connectionOption(tok), http.CanonicalHeaderKey(tok); got != want {
			t.Errorf("connectionOption(%q) = %q, want %q", tok, got, want)
		}
	}
	h := http.Header{
		"Connection": {"keep-alive, X-Foo ,close", "upgrade"}, "Keep-Alive": {"timeout=5"}, "X-Foo": {"1"},
		"Close": {"x"}, "Upgrade": {"websocket"}, "Te": {"gzip, trailers"}, "X-Keep": {"y"},
	}
	stripHopByHop(h, true)
	want := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Te": {"trailers"}, "X-Keep": {"y"}}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("keepUpgrade: got %v, want %v", h, want)
	}
	h = http.Header{"Connection": {"X-Foo"}, "X-Foo": {"1"}, "Upgrade": {"h2c"}, "Te": {"gzip"},
		"Proxy-Connection": {"keep-alive"}, "Transfer-Encoding": {"chunked"}, "Trailer": {"X-T"}, "X-Keep": {"y"}}
	stripHopByHop(h, false)
	if want := (http.Header{"X-Keep": {"y"}}); !reflect.DeepEqual(h, want) {
		t.Errorf("got %v, want %v", h, want)
	}
}
