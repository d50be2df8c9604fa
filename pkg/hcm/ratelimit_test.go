package hcm

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func rateLimitHCM(filterCfg, routeCfg string) string {
	per := ""
	if routeCfg != "" {
		per = `, "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": {"@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit", "stat_prefix": "r", ` + routeCfg + `}}`
	}
	return `{"stat_prefix": "rl", "http_filters": [
	    {"name": "envoy.filters.http.local_ratelimit", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit", "stat_prefix": "f"` + filterCfg + `}},
	    {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
	  "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
	    {"match": {"prefix": "/big"}, "route": {"cluster": "echo"}` + per + `},
	    {"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]}}`
}

const bucket2 = `"token_bucket": {"max_tokens": 2, "fill_interval": "3600s"},
  "filter_enabled": {"runtime_key": "e", "default_value": {"numerator": 100}},
  "filter_enforced": {"runtime_key": "f", "default_value": {"numerator": 100}}`

// envoy.filters.http.local_ratelimit: a token bucket per config; once it
// is empty, 429 with RL (x-ratelimit headers when asked); a route's
// config has its own bucket; enabled but not enforced only marks the
// request.
func TestLocalRateLimit(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	p := startProxy(t, mustHCM(t, rateLimitHCM(`, `+bucket2+`, "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
	  "response_headers_to_add": [{"header": {"key": "x-limited", "value": "%RESPONSE_CODE%"}}]`,
		strings.Replace(bucket2, `"max_tokens": 2`, `"max_tokens": 4`, 1))), nil, up)
	get1 := func(path string) (*http.Response, string) {
		resp, b := get(t, &http.Client{}, "http://"+p.addr+path, map[string]string{"Host": "svc.test"})
		return resp, string(b)
	}
	for i := range 2 {
		resp, b := get1("/")
		if resp.StatusCode != 200 {
			t.Fatalf("request %d within the bucket: %d %s", i, resp.StatusCode, b)
		}
		// Allowed answers say what is left too.
		if got := resp.Header.Get("X-Ratelimit-Remaining"); got != fmt.Sprint(1-i) || resp.Header.Get("X-Ratelimit-Limit") != "2" {
			t.Errorf("request %d: x-ratelimit-remaining %q limit %q", i, got, resp.Header.Get("X-Ratelimit-Limit"))
		}
	}
	resp, b := get1("/")
	if resp.StatusCode != 429 || b != "local_rate_limited" || resp.Header.Get("X-Limited") != "429" ||
		resp.Header.Get("X-Ratelimit-Limit") != "2" || resp.Header.Get("X-Ratelimit-Remaining") != "0" {
		t.Fatalf("third request: %d %q %v", resp.StatusCode, b, resp.Header)
	}
	if e := p.log.last(t, 3); e.Flags != FlagRateLimited || e.Details != "local_rate_limited" {
		t.Errorf("flags %q details %q", e.Flags, e.Details)
	}
	// /big has a bucket of its own (4 tokens).
	for i := range 4 {
		if resp, b := get1("/big"); resp.StatusCode != 200 {
			t.Fatalf("/big request %d: %d %s", i, resp.StatusCode, b)
		}
	}
	if resp, _ := get1("/big"); resp.StatusCode != 429 {
		t.Fatalf("/big fifth request: %d", resp.StatusCode)
	}
}

func TestLocalRateLimitShadowAndGRPC(t *testing.T) {
	up := newUpstreams()
	up.set("echo", Endpoint{Addr: startEcho(t, "echo"), Protocol: UpstreamHTTP2})
	notEnforced := strings.Replace(bucket2, `"filter_enforced": {"runtime_key": "f", "default_value": {"numerator": 100}}`,
		`"filter_enforced": {"runtime_key": "f", "default_value": {"numerator": 0}},
		 "request_headers_to_add_when_not_enforced": [{"header": {"key": "x-would-limit", "value": "true"}}]`, 1)
	p := startProxy(t, mustHCM(t, rateLimitHCM(`, `+notEnforced, `"rate_limited_as_resource_exhausted": true, `+strings.Replace(bucket2, `"max_tokens": 2`, `"max_tokens": 1`, 1))), nil, up)
	for i := range 4 {
		resp, b := get(t, &http.Client{}, "http://"+p.addr+"/x", map[string]string{"Host": "svc.test"})
		if resp.StatusCode != 200 {
			t.Fatalf("not enforced, request %d: %d", i, resp.StatusCode)
		}
		if got := decodeEcho(t, b).Header.Get("X-Would-Limit"); got != map[bool]string{true: "true", false: ""}[i >= 2] {
			t.Errorf("request %d: x-would-limit %q", i, got)
		}
	}
	grpcCall(t, p.addr, "/big.Svc/Call")
	resp := grpcCall(t, p.addr, "/big.Svc/Call")
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != "8" {
		t.Errorf("limited gRPC call: %d grpc-status %q, want 200 and 8 (RESOURCE_EXHAUSTED)", resp.StatusCode, resp.Header.Get("Grpc-Status"))
	}
}

func TestTokenBucketRefill(t *testing.T) {
	b := &tokenBucket{max: 2, perFill: 1, every: 50 * time.Millisecond, tokens: 2, last: time.Now()}
	for i := range 2 {
		if ok, left, _ := b.take(); !ok || left != int64(1-i) {
			t.Fatalf("take %d: %v %d", i, ok, left)
		}
	}
	if ok, _, reset := b.take(); ok || reset <= 0 || reset > 50*time.Millisecond {
		t.Fatalf("empty bucket gave a token (reset %v)", reset)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ok, _, _ := b.take(); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never refilled")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Refills never exceed max_tokens.
	b.last = time.Now().Add(-time.Hour)
	b.take()
	if b.tokens != b.max-1 {
		t.Errorf("after an hour: %d tokens left of %d", b.tokens, b.max)
	}
}
