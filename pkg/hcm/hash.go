package hcm

import (
	"fmt"
	"hash/fnv"
	"math/bits"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/meshlet/meshlet/pkg/match"
)

// hashKind is where a hash_policy takes its key from.
type hashKind uint8

const (
	hashHeader hashKind = iota
	hashCookie
	hashSourceIP
	hashQuery
)

// hashPolicy is one compiled RouteAction.HashPolicy (Istio's
// DestinationRule consistentHash): the request's key for RING_HASH and
// MAGLEV clusters.
type hashPolicy struct {
	kind     hashKind
	name     string // canonical header key, cookie or query parameter name
	re       *regexp.Regexp
	sub      string
	terminal bool
}

func compileHashPolicies(in []*routev3.RouteAction_HashPolicy) ([]hashPolicy, error) {
	var out []hashPolicy
	for _, p := range in {
		hp := hashPolicy{terminal: p.GetTerminal()}
		switch x := p.GetPolicySpecifier().(type) {
		case *routev3.RouteAction_HashPolicy_Header_:
			hp.kind, hp.name = hashHeader, strings.ToLower(x.Header.GetHeaderName())
			if !strings.HasPrefix(hp.name, ":") {
				hp.name = http.CanonicalHeaderKey(hp.name)
			}
			if rr := x.Header.GetRegexRewrite(); rr != nil {
				// The rewrite replaces matches within the value, not the
				// whole value: unanchored.
				re, err := regexp.Compile(rr.GetPattern().GetRegex())
				if err != nil {
					return nil, fmt.Errorf("hash_policy header regex_rewrite %q: %w", rr.GetPattern().GetRegex(), err)
				}
				hp.re, hp.sub = re, envoySubst(rr.GetSubstitution())
			}
		case *routev3.RouteAction_HashPolicy_Cookie_:
			// A ttl asks Envoy to set the cookie when absent; here a request
			// without it is not hashed by it (no cookie is generated).
			hp.kind, hp.name = hashCookie, x.Cookie.GetName()
		case *routev3.RouteAction_HashPolicy_ConnectionProperties_:
			if !x.ConnectionProperties.GetSourceIp() {
				continue
			}
			hp.kind = hashSourceIP
		case *routev3.RouteAction_HashPolicy_QueryParameter_:
			hp.kind, hp.name = hashQuery, x.QueryParameter.GetName()
		default:
			continue // filter_state: nothing to hash here
		}
		out = append(out, hp)
	}
	return out, nil
}

func fnv64(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// requestHash combines the keys the policies find in the request, as
// Envoy does (rotate left by one, xor), stopping after a terminal policy
// that found its key; false when none found one.
func (s *stream) requestHash(policies []hashPolicy, path string) (uint64, bool) {
	var h uint64
	found := false
	for i := range policies {
		p := &policies[i]
		var key string
		ok := false
		switch p.kind {
		case hashHeader:
			switch p.name {
			case ":authority":
				key, ok = s.r.Host, true
			case ":path":
				key, ok = path, true
			case ":method":
				key, ok = s.r.Method, true
			default:
				key, ok = match.Get(s.r.Header, p.name)
			}
			if ok && p.re != nil {
				key = p.re.ReplaceAllString(key, p.sub)
			}
		case hashCookie:
			if c, err := s.r.Cookie(p.name); err == nil {
				key, ok = c.Value, true
			}
		case hashSourceIP:
			if s.info.remote.IsValid() {
				key, ok = s.info.remote.Addr().Unmap().String(), true
			}
		case hashQuery:
			if q := strings.IndexByte(path, '?'); q >= 0 {
				if vals, err := url.ParseQuery(path[q+1:]); err == nil {
					if v, has := vals[p.name]; has && len(v) > 0 {
						key, ok = v[0], true
					}
				}
			}
		}
		if !ok {
			continue
		}
		x := fnv64(key)
		if found {
			h = bits.RotateLeft64(h, 1) ^ x
		} else {
			h = x
		}
		found = true
		if p.terminal {
			break
		}
	}
	return h, found
}

// pickInput is the stream's input to endpoint selection.
func (s *stream) pickInput() PickInput {
	return PickInput{Orig: s.info.orig, Hash: s.hash, HasHash: s.hasHash}
}
