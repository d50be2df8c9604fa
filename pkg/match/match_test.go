package match_test

import (
	"net/http"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/meshlet/meshlet/pkg/match"
)

func TestString(t *testing.T) {
	cases := []struct {
		m    *matcherv3.StringMatcher
		v    string
		want bool
	}{
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "GET"}}, "GET", true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "GET"}}, "get", false},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "GET"}, IgnoreCase: true}, "get", true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "/api"}}, "/api/v1", true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "/API"}, IgnoreCase: true}, "/api/v1", true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: ".js"}}, "a.js", true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Contains{Contains: "Mobile"}, IgnoreCase: true}, "x MOBILE y", true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Contains{Contains: "Mobile"}}, "x MOBILE y", false},
		// safe_regex matches the whole value, not a substring.
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "[0-9]+"}}}, "123", true},
		{&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "[0-9]+"}}}, "a123", false},
	}
	for i, c := range cases {
		m, err := match.CompileString(c.m)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if got := m.Match(c.v); got != c.want {
			t.Errorf("case %d: %v on %q = %v, want %v", i, c.m, c.v, got, c.want)
		}
	}
	if _, err := match.CompileString(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "("}}}); err == nil {
		t.Error("bad regex accepted")
	}
	if _, err := match.CompileString(&matcherv3.StringMatcher{}); err == nil {
		t.Error("matcher without pattern accepted")
	}
}

func TestHeader(t *testing.T) {
	h := http.Header{"X-Env": {"canary"}, "X-Multi": {"a", "b"}, "X-Num": {"42"}}
	cases := []struct {
		m    *routev3.HeaderMatcher
		want bool
	}{
		{&routev3.HeaderMatcher{Name: "x-env", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "canary"}}, true},
		{&routev3.HeaderMatcher{Name: "x-env", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "canary"}, InvertMatch: true}, false},
		{&routev3.HeaderMatcher{Name: "x-multi", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "a,b"}}, true},
		{&routev3.HeaderMatcher{Name: "x-num", HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{RangeMatch: &typev3.Int64Range{Start: 40, End: 43}}}, true},
		{&routev3.HeaderMatcher{Name: "x-num", HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{RangeMatch: &typev3.Int64Range{Start: 40, End: 42}}}, false},
		{&routev3.HeaderMatcher{Name: "x-none", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: false}}, true},
		{&routev3.HeaderMatcher{Name: "x-none"}, false},
		{&routev3.HeaderMatcher{Name: "x-env"}, true},
		{&routev3.HeaderMatcher{Name: "x-none", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: ""}}}}, false},
		{&routev3.HeaderMatcher{Name: "x-none", TreatMissingHeaderAsEmpty: true, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: ""}}}}, true},
	}
	for i, c := range cases {
		m, err := match.CompileHeader(c.m)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if got := m.Match(match.Get(h, m.Name)); got != c.want {
			t.Errorf("case %d: %v = %v, want %v", i, c.m, got, c.want)
		}
	}
}
