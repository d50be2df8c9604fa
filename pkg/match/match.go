package match

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// Kind is what a String matcher tests.
type Kind uint8

// Matcher kinds.
const (
	Exact Kind = iota
	Prefix
	Suffix
	Contains
	Regex
	Present // any value (HeaderMatcher present_match)
	Range   // int64 in [lo, hi) (HeaderMatcher range_match)
)

// String is a compiled StringMatcher (or one of HeaderMatcher's legacy
// specifiers). The zero value matches exactly the empty string.
type String struct {
	Kind       Kind
	s          string
	re         *regexp.Regexp
	ignoreCase bool
	lo, hi     int64
}

// Match reports whether v matches.
func (m *String) Match(v string) bool {
	switch m.Kind {
	case Present:
		return true
	case Regex:
		return m.re.MatchString(v)
	case Range:
		n, err := strconv.ParseInt(v, 10, 64)
		return err == nil && n >= m.lo && n < m.hi
	}
	if m.ignoreCase {
		switch m.Kind {
		case Exact:
			return strings.EqualFold(v, m.s)
		case Prefix:
			return len(v) >= len(m.s) && strings.EqualFold(v[:len(m.s)], m.s)
		case Suffix:
			return len(v) >= len(m.s) && strings.EqualFold(v[len(v)-len(m.s):], m.s)
		case Contains:
			return strings.Contains(strings.ToLower(v), m.s)
		}
	}
	switch m.Kind {
	case Exact:
		return v == m.s
	case Prefix:
		return strings.HasPrefix(v, m.s)
	case Suffix:
		return strings.HasSuffix(v, m.s)
	case Contains:
		return strings.Contains(v, m.s)
	}
	return false
}

// CompileString compiles a StringMatcher.
func CompileString(sm *matcherv3.StringMatcher) (String, error) {
	m := String{ignoreCase: sm.GetIgnoreCase()}
	switch p := sm.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		m.Kind, m.s = Exact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		m.Kind, m.s = Prefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		m.Kind, m.s = Suffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		m.Kind, m.s = Contains, p.Contains
		if m.ignoreCase {
			m.s = strings.ToLower(m.s)
		}
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := CompileRegex(p.SafeRegex.GetRegex())
		if err != nil {
			return m, err
		}
		m.Kind, m.re = Regex, re
	default:
		return m, fmt.Errorf("unsupported string matcher %T", p)
	}
	return m, nil
}

// CompileRegex anchors an RE2 pattern: Envoy's safe_regex matches the
// whole value.
func CompileRegex(s string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + s + `)$`)
	if err != nil {
		return nil, fmt.Errorf("safe_regex %q: %w", s, err)
	}
	return re, nil
}

// Header is a compiled HeaderMatcher.
type Header struct {
	// Name is the canonical MIME key (net/http's form), or a lower-case
	// pseudo-header (":method", ":path", ":authority", ":scheme").
	Name        string
	m           String
	present     bool // for present_match: expected presence
	invert      bool
	missingIsEm bool
}

// CompileHeader compiles a HeaderMatcher.
func CompileHeader(h *routev3.HeaderMatcher) (Header, error) {
	name := strings.ToLower(h.GetName())
	if !strings.HasPrefix(name, ":") {
		name = http.CanonicalHeaderKey(name)
	}
	hm := Header{Name: name, invert: h.GetInvertMatch(), missingIsEm: h.GetTreatMissingHeaderAsEmpty()}
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_ExactMatch:
		hm.m = String{Kind: Exact, s: s.ExactMatch}
	case *routev3.HeaderMatcher_PrefixMatch:
		hm.m = String{Kind: Prefix, s: s.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		hm.m = String{Kind: Suffix, s: s.SuffixMatch}
	case *routev3.HeaderMatcher_ContainsMatch:
		hm.m = String{Kind: Contains, s: s.ContainsMatch}
	case *routev3.HeaderMatcher_SafeRegexMatch:
		re, err := CompileRegex(s.SafeRegexMatch.GetRegex())
		if err != nil {
			return hm, fmt.Errorf("header %q: %w", h.GetName(), err)
		}
		hm.m = String{Kind: Regex, re: re}
	case *routev3.HeaderMatcher_RangeMatch:
		hm.m = String{Kind: Range, lo: s.RangeMatch.GetStart(), hi: s.RangeMatch.GetEnd()}
	case *routev3.HeaderMatcher_PresentMatch:
		hm.m = String{Kind: Present}
		hm.present = s.PresentMatch
	case *routev3.HeaderMatcher_StringMatch:
		sm, err := CompileString(s.StringMatch)
		if err != nil {
			return hm, fmt.Errorf("header %q: %w", h.GetName(), err)
		}
		hm.m = sm
	case nil: // no specifier: presence
		hm.m = String{Kind: Present}
		hm.present = true
	default:
		return hm, fmt.Errorf("header %q: unsupported matcher %T", h.GetName(), s)
	}
	return hm, nil
}

// Match reports whether a header with value val (ok: present; several
// values joined with ",") matches, with invert_match and
// treat_missing_header_as_empty applied.
func (h *Header) Match(val string, ok bool) bool {
	if !ok && h.missingIsEm {
		val, ok = "", true
	}
	var res bool
	if h.m.Kind == Present {
		res = ok == h.present
	} else {
		res = ok && h.m.Match(val)
	}
	return res != h.invert
}

// Get returns h's value the way a HeaderMatcher sees it: absent, the one
// value, or all values joined with ",".
func Get(h http.Header, key string) (string, bool) {
	vals, ok := h[key]
	if !ok {
		return "", false
	}
	if len(vals) == 1 {
		return vals[0], true
	}
	return strings.Join(vals, ","), true
}
