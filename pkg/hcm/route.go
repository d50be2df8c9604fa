package hcm

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/meshlet/meshlet/internal/weyl"
	"github.com/meshlet/meshlet/pkg/accesslog"
	"github.com/meshlet/meshlet/pkg/match"
)

// defaultRouteTimeout is Envoy's route.timeout when the field is unset.
const defaultRouteTimeout = 15 * time.Second

// routeTable is the compiled, immutable form of one RouteConfiguration.
type routeTable struct {
	name       string
	ignorePort bool
	exact      map[string]*vhost // lower-case domain (with port if listed so)
	suffixes   []wildcard        // "*.foo.com" → ".foo.com", longest first
	prefixes   []wildcard        // "foo.*" → "foo.", longest first
	star       *vhost
}

type wildcard struct {
	s  string
	vh *vhost
}

type vhost struct {
	name   string
	routes []*route
}

type pathKind uint8

const (
	pathPrefix pathKind = iota
	pathExact
	pathRegex
	pathSepPrefix
)

type actionKind uint8

const (
	actCluster actionKind = iota
	actClusterHeader
	actWeighted
	actRedirect
	actDirect
)

type route struct {
	name          string
	vhost         *vhost
	kind          pathKind
	path          string // prefix/path/separated prefix; lower-case when !caseSensitive
	re            *regexp.Regexp
	caseSensitive bool
	headers       []match.Header
	query         []queryMatch
	grpcOnly      bool

	action   actionKind
	cluster  string
	weighted []weightedCluster
	totalW   uint64
	// picks spreads the weighted picks of this route (pickCluster).
	picks weyl.Seq

	prefixRewrite string
	hasPrefixRW   bool
	regexRW       *regexp.Regexp
	regexSub      string
	hostLiteral   string
	autoHost      bool
	hostHeader    string

	timeout        time.Duration // 0: none
	grpcTimeoutMax time.Duration // honour grpc-timeout; 0 = no cap
	honourGrpc     bool
	idleTimeout    time.Duration // per-route stream idle override; <0 unset
	maxDuration    time.Duration // max_stream_duration override; <0 unset, 0 none

	retry *retryPolicy // nil: no retries
	hedge bool         // hedge_on_per_try_timeout
	// faults: fault filter configs by filter name (typed_per_filter_config
	// of the route, else of its virtual host).
	faults map[string]*faultPolicy
	limits map[string]*rateLimit // local rate limit configs, likewise
	// hashes: hash_policy (consistent hashing's request key).
	hashes []hashPolicy
	// mirrors: request_mirror_policies (shadow traffic).
	mirrors []mirrorPolicy
	// include_request_attempt_count / include_attempt_count_in_response
	// (virtual host): x-envoy-attempt-count on the upstream request / the
	// response.
	attemptsUp, attemptsDown bool

	// Header mutations: route first, then vhost, then route config
	// (Envoy's order when most_specific_header_mutations_wins is false).
	reqAdd  []headerOp
	reqDel  []string
	respAdd []headerOp
	respDel []string

	redirect *redirect
	direct   *direct
}

type weightedCluster struct {
	name   string
	weight uint64
	reqAdd []headerOp
	reqDel []string
}

type redirect struct {
	code          int
	scheme        string
	host          string
	port          uint32
	path          string
	prefixRewrite string
	hasPrefixRW   bool
	regexRW       *regexp.Regexp
	regexSub      string
	stripQuery    bool
}

type direct struct {
	status int
	body   []byte
}

type appendAction uint8

const (
	appendOrAdd appendAction = iota
	addIfAbsent
	overwriteOrAdd
	overwriteIfExists
)

type headerOp struct {
	key       string // canonical MIME key
	value     string
	fmt       *accesslog.Format // a value with command operators, else nil
	action    appendAction
	keepEmpty bool
}

type queryMatch struct {
	name    string
	m       *match.String // nil: present match
	present bool
}

// compileRoutes turns a RouteConfiguration into a routeTable. Unsupported
// features that would change routing decisions are rejected with an error
// naming the resource; purely observational fields are ignored.
func compileRoutes(rc *routev3.RouteConfiguration) (*routeTable, error) {
	t := &routeTable{name: rc.GetName(), ignorePort: rc.GetIgnorePortInHostMatching(), exact: map[string]*vhost{}}
	cfgAdd, err := compileHeaderOps(rc.GetRequestHeadersToAdd())
	if err != nil {
		return nil, fmt.Errorf("route config %q: request_headers_to_add: %w", rc.GetName(), err)
	}
	cfgRespAdd, err := compileHeaderOps(rc.GetResponseHeadersToAdd())
	if err != nil {
		return nil, fmt.Errorf("route config %q: response_headers_to_add: %w", rc.GetName(), err)
	}
	cfgDel := canonList(rc.GetRequestHeadersToRemove())
	cfgRespDel := canonList(rc.GetResponseHeadersToRemove())
	seen := map[string]bool{}
	for _, pvh := range rc.GetVirtualHosts() {
		vh := &vhost{name: pvh.GetName()}
		vhAdd, err := compileHeaderOps(pvh.GetRequestHeadersToAdd())
		if err != nil {
			return nil, fmt.Errorf("route config %q vhost %q: request_headers_to_add: %w", rc.GetName(), vh.name, err)
		}
		vhRespAdd, err := compileHeaderOps(pvh.GetResponseHeadersToAdd())
		if err != nil {
			return nil, fmt.Errorf("route config %q vhost %q: response_headers_to_add: %w", rc.GetName(), vh.name, err)
		}
		vhFaults, err := perFilter(pvh.GetTypedPerFilterConfig(), faultTypeURL, decodeFault)
		if err != nil {
			return nil, fmt.Errorf("route config %q vhost %q: %w", rc.GetName(), vh.name, err)
		}
		vhLimits, err := perFilter(pvh.GetTypedPerFilterConfig(), rateLimitTypeURL, decodeRateLimit)
		if err != nil {
			return nil, fmt.Errorf("route config %q vhost %q: %w", rc.GetName(), vh.name, err)
		}
		vhDel := canonList(pvh.GetRequestHeadersToRemove())
		vhRespDel := canonList(pvh.GetResponseHeadersToRemove())
		for i, pr := range pvh.GetRoutes() {
			r, err := compileRoute(pr, pvh.GetRetryPolicy(), pvh.GetHedgePolicy())
			if err != nil {
				return nil, fmt.Errorf("route config %q vhost %q route %d (%q): %w", rc.GetName(), vh.name, i, pr.GetName(), err)
			}
			r.vhost = vh
			r.faults = inherit(r.faults, vhFaults)
			r.limits = inherit(r.limits, vhLimits)
			r.attemptsUp, r.attemptsDown = pvh.GetIncludeRequestAttemptCount(), pvh.GetIncludeAttemptCountInResponse()
			r.reqAdd = concat(r.reqAdd, vhAdd, cfgAdd)
			r.reqDel = concat(r.reqDel, vhDel, cfgDel)
			r.respAdd = concat(r.respAdd, vhRespAdd, cfgRespAdd)
			r.respDel = concat(r.respDel, vhRespDel, cfgRespDel)
			vh.routes = append(vh.routes, r)
		}
		for _, d := range pvh.GetDomains() {
			d = strings.ToLower(d)
			if seen[d] {
				return nil, fmt.Errorf("route config %q: domain %q is listed by more than one virtual host", rc.GetName(), d)
			}
			seen[d] = true
			switch {
			case d == "*":
				t.star = vh
			case strings.HasPrefix(d, "*"):
				t.suffixes = append(t.suffixes, wildcard{d[1:], vh})
			case strings.HasSuffix(d, "*"):
				t.prefixes = append(t.prefixes, wildcard{d[:len(d)-1], vh})
			default:
				t.exact[d] = vh
			}
		}
	}
	sort.SliceStable(t.suffixes, func(i, j int) bool { return len(t.suffixes[i].s) > len(t.suffixes[j].s) })
	sort.SliceStable(t.prefixes, func(i, j int) bool { return len(t.prefixes[i].s) > len(t.prefixes[j].s) })
	return t, nil
}

func concat[T any](a ...[]T) []T {
	n := 0
	for _, s := range a {
		n += len(s)
	}
	if n == 0 {
		return nil
	}
	out := make([]T, 0, n)
	for _, s := range a {
		out = append(out, s...)
	}
	return out
}

func canonList(in []string) []string {
	out := make([]string, 0, len(in))
	for _, h := range in {
		out = append(out, http.CanonicalHeaderKey(h))
	}
	return out
}

func compileHeaderOps(in []*corev3.HeaderValueOption) ([]headerOp, error) {
	var out []headerOp
	for _, o := range in {
		h := o.GetHeader()
		if h.GetKey() == "" {
			return nil, fmt.Errorf("header_value_option without key")
		}
		if strings.HasPrefix(h.GetKey(), ":") {
			return nil, fmt.Errorf("header %q: pseudo-headers cannot be modified", h.GetKey())
		}
		v := h.GetValue()
		if v == "" && len(h.GetRawValue()) > 0 {
			v = string(h.GetRawValue())
		}
		f, err := accesslog.ParseHeaderValue(v)
		if err != nil {
			return nil, fmt.Errorf("header %q: %w", h.GetKey(), err)
		}
		op := headerOp{key: http.CanonicalHeaderKey(h.GetKey()), keepEmpty: o.GetKeepEmptyValue()}
		if lit, ok := f.Literal(); ok {
			op.value = lit
		} else {
			op.fmt = f
		}
		switch {
		case o.GetAppend() != nil: // deprecated field wins when set, as in Envoy
			if o.GetAppend().GetValue() {
				op.action = appendOrAdd
			} else {
				op.action = overwriteOrAdd
			}
		default:
			op.action = appendAction(o.GetAppendAction())
		}
		out = append(out, op)
	}
	return out, nil
}

// applyHeaderOps removes the del headers from h, then applies ops; values
// with command operators are formatted from e (the stream so far).
func applyHeaderOps(h http.Header, ops []headerOp, del []string, e *accesslog.Entry) {
	for _, k := range del {
		delete(h, k)
	}
	for i := range ops {
		op := &ops[i]
		v := op.value
		if op.fmt != nil {
			v = op.fmt.String(e)
		}
		if v == "" && !op.keepEmpty {
			continue
		}
		switch op.action {
		case appendOrAdd:
			h[op.key] = append(h[op.key], v)
		case addIfAbsent:
			if _, ok := h[op.key]; !ok {
				h[op.key] = []string{v}
			}
		case overwriteOrAdd:
			h[op.key] = []string{v}
		case overwriteIfExists:
			if _, ok := h[op.key]; ok {
				h[op.key] = []string{v}
			}
		}
	}
}

func compileRoute(pr *routev3.Route, vhRetry *routev3.RetryPolicy, vhHedge *routev3.HedgePolicy) (*route, error) {
	r := &route{name: pr.GetName(), idleTimeout: -1, maxDuration: -1}
	var err error
	if r.faults, err = perFilter(pr.GetTypedPerFilterConfig(), faultTypeURL, decodeFault); err != nil {
		return nil, err
	}
	if r.limits, err = perFilter(pr.GetTypedPerFilterConfig(), rateLimitTypeURL, decodeRateLimit); err != nil {
		return nil, err
	}
	m := pr.GetMatch()
	if m == nil {
		return nil, fmt.Errorf("route has no match")
	}
	r.caseSensitive = m.GetCaseSensitive() == nil || m.GetCaseSensitive().GetValue()
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		r.kind, r.path = pathPrefix, ps.Prefix
	case *routev3.RouteMatch_Path:
		r.kind, r.path = pathExact, ps.Path
	case *routev3.RouteMatch_SafeRegex:
		re, err := match.CompileRegex(ps.SafeRegex.GetRegex())
		if err != nil {
			return nil, err
		}
		r.kind, r.re = pathRegex, re
	case *routev3.RouteMatch_PathSeparatedPrefix:
		r.kind, r.path = pathSepPrefix, ps.PathSeparatedPrefix
	default:
		return nil, fmt.Errorf("unsupported path specifier %T", ps)
	}
	if !r.caseSensitive {
		r.path = strings.ToLower(r.path)
	}
	r.grpcOnly = m.GetGrpc() != nil
	for _, h := range m.GetHeaders() {
		hm, err := match.CompileHeader(h)
		if err != nil {
			return nil, err
		}
		r.headers = append(r.headers, hm)
	}
	for _, q := range m.GetQueryParameters() {
		qm := queryMatch{name: q.GetName()}
		switch s := q.GetQueryParameterMatchSpecifier().(type) {
		case *routev3.QueryParameterMatcher_StringMatch:
			sm, err := match.CompileString(s.StringMatch)
			if err != nil {
				return nil, fmt.Errorf("query parameter %q: %w", q.GetName(), err)
			}
			qm.m = &sm
		case *routev3.QueryParameterMatcher_PresentMatch:
			qm.present = s.PresentMatch
		case nil:
			qm.present = true
		}
		r.query = append(r.query, qm)
	}
	if r.reqAdd, err = compileHeaderOps(pr.GetRequestHeadersToAdd()); err != nil {
		return nil, fmt.Errorf("request_headers_to_add: %w", err)
	}
	if r.respAdd, err = compileHeaderOps(pr.GetResponseHeadersToAdd()); err != nil {
		return nil, fmt.Errorf("response_headers_to_add: %w", err)
	}
	r.reqDel = canonList(pr.GetRequestHeadersToRemove())
	r.respDel = canonList(pr.GetResponseHeadersToRemove())

	switch a := pr.GetAction().(type) {
	case *routev3.Route_Route:
		if err := compileRouteAction(r, a.Route, vhRetry, vhHedge); err != nil {
			return nil, err
		}
	case *routev3.Route_Redirect:
		rd, err := compileRedirect(a.Redirect)
		if err != nil {
			return nil, err
		}
		r.action, r.redirect = actRedirect, rd
	case *routev3.Route_DirectResponse:
		d := &direct{status: int(a.DirectResponse.GetStatus())}
		if d.status < 200 || d.status > 599 {
			return nil, fmt.Errorf("direct_response status %d out of range", d.status)
		}
		if b := a.DirectResponse.GetBody(); b != nil {
			switch s := b.GetSpecifier().(type) {
			case *corev3.DataSource_InlineString:
				d.body = []byte(s.InlineString)
			case *corev3.DataSource_InlineBytes:
				d.body = s.InlineBytes
			case *corev3.DataSource_Filename:
				data, err := os.ReadFile(s.Filename)
				if err != nil {
					return nil, fmt.Errorf("direct_response body: %w", err)
				}
				d.body = data
			default:
				return nil, fmt.Errorf("direct_response body: unsupported data source %T", s)
			}
		}
		r.action, r.direct = actDirect, d
	default:
		return nil, fmt.Errorf("unsupported route action %T", a)
	}
	return r, nil
}

func compileRouteAction(r *route, a *routev3.RouteAction, vhRetry *routev3.RetryPolicy, vhHedge *routev3.HedgePolicy) error {
	switch c := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		r.action, r.cluster = actCluster, c.Cluster
	case *routev3.RouteAction_ClusterHeader:
		r.action, r.cluster = actClusterHeader, http.CanonicalHeaderKey(c.ClusterHeader)
	case *routev3.RouteAction_WeightedClusters:
		r.action = actWeighted
		for _, wc := range c.WeightedClusters.GetClusters() {
			w := uint64(wc.GetWeight().GetValue())
			if w == 0 {
				continue
			}
			add, err := compileHeaderOps(wc.GetRequestHeadersToAdd())
			if err != nil {
				return fmt.Errorf("weighted cluster %q: %w", wc.GetName(), err)
			}
			r.weighted = append(r.weighted, weightedCluster{name: wc.GetName(), weight: w, reqAdd: add, reqDel: canonList(wc.GetRequestHeadersToRemove())})
			r.totalW += w
		}
		if r.totalW == 0 {
			return fmt.Errorf("weighted_clusters: total weight is zero")
		}
	default:
		return fmt.Errorf("unsupported cluster specifier %T", c)
	}
	if a.GetPrefixRewrite() != "" {
		r.prefixRewrite, r.hasPrefixRW = a.GetPrefixRewrite(), true
	}
	if rr := a.GetRegexRewrite(); rr != nil {
		re, err := regexp.Compile(rr.GetPattern().GetRegex())
		if err != nil {
			return fmt.Errorf("regex_rewrite: %w", err)
		}
		r.regexRW, r.regexSub = re, envoySubst(rr.GetSubstitution())
	}
	switch h := a.GetHostRewriteSpecifier().(type) {
	case *routev3.RouteAction_HostRewriteLiteral:
		r.hostLiteral = h.HostRewriteLiteral
	case *routev3.RouteAction_AutoHostRewrite:
		r.autoHost = h.AutoHostRewrite.GetValue()
	case *routev3.RouteAction_HostRewriteHeader:
		r.hostHeader = http.CanonicalHeaderKey(h.HostRewriteHeader)
	}
	if a.GetTimeout() == nil {
		r.timeout = defaultRouteTimeout
	} else {
		r.timeout = a.GetTimeout().AsDuration()
	}
	if a.GetIdleTimeout() != nil {
		r.idleTimeout = a.GetIdleTimeout().AsDuration()
	}
	if d := a.GetMaxStreamDuration().GetMaxStreamDuration(); d != nil {
		r.maxDuration = d.AsDuration()
	}
	if msd := a.GetMaxStreamDuration(); msd != nil && msd.GetGrpcTimeoutHeaderMax() != nil {
		r.honourGrpc, r.grpcTimeoutMax = true, msd.GetGrpcTimeoutHeaderMax().AsDuration()
	} else if a.GetMaxGrpcTimeout() != nil { //nolint:staticcheck // deprecated but still sent by Istio
		r.honourGrpc, r.grpcTimeoutMax = true, a.GetMaxGrpcTimeout().AsDuration() //nolint:staticcheck
	}
	r.mirrors = compileMirrors(a.GetRequestMirrorPolicies())
	var herr error
	if r.hashes, herr = compileHashPolicies(a.GetHashPolicy()); herr != nil {
		return herr
	}
	rp := a.GetRetryPolicy()
	if rp == nil {
		rp = vhRetry
	}
	var err error
	if r.retry, err = compileRetry(rp); err != nil {
		return err
	}
	hp := a.GetHedgePolicy()
	if hp == nil {
		hp = vhHedge
	}
	// Hedging needs a per-try timeout to hedge on.
	r.hedge = hp.GetHedgeOnPerTryTimeout() && r.retry != nil && r.retry.perTry > 0
	return nil
}

// envoySubst converts Envoy's regex substitution (\1 backreferences) to Go's ${1}.
func envoySubst(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9' {
			b.WriteString("${")
			b.WriteByte(s[i+1])
			b.WriteString("}")
			i++
			continue
		}
		if c == '$' {
			b.WriteString("$$")
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func compileRedirect(a *routev3.RedirectAction) (*redirect, error) {
	rd := &redirect{host: a.GetHostRedirect(), port: a.GetPortRedirect(), stripQuery: a.GetStripQuery()}
	switch a.GetResponseCode() {
	case routev3.RedirectAction_MOVED_PERMANENTLY:
		rd.code = http.StatusMovedPermanently
	case routev3.RedirectAction_FOUND:
		rd.code = http.StatusFound
	case routev3.RedirectAction_SEE_OTHER:
		rd.code = http.StatusSeeOther
	case routev3.RedirectAction_TEMPORARY_REDIRECT:
		rd.code = http.StatusTemporaryRedirect
	case routev3.RedirectAction_PERMANENT_REDIRECT:
		rd.code = http.StatusPermanentRedirect
	default:
		return nil, fmt.Errorf("redirect: unknown response code %v", a.GetResponseCode())
	}
	switch s := a.GetSchemeRewriteSpecifier().(type) {
	case *routev3.RedirectAction_HttpsRedirect:
		if s.HttpsRedirect {
			rd.scheme = "https"
		}
	case *routev3.RedirectAction_SchemeRedirect:
		rd.scheme = strings.ToLower(s.SchemeRedirect)
	}
	switch p := a.GetPathRewriteSpecifier().(type) {
	case *routev3.RedirectAction_PathRedirect:
		rd.path = p.PathRedirect
	case *routev3.RedirectAction_PrefixRewrite:
		rd.prefixRewrite, rd.hasPrefixRW = p.PrefixRewrite, true
	case *routev3.RedirectAction_RegexRewrite:
		re, err := regexp.Compile(p.RegexRewrite.GetPattern().GetRegex())
		if err != nil {
			return nil, fmt.Errorf("redirect regex_rewrite: %w", err)
		}
		rd.regexRW, rd.regexSub = re, envoySubst(p.RegexRewrite.GetSubstitution())
	}
	return rd, nil
}

// reqView is the routing-relevant view of a request.
type reqView struct {
	host   string // lower-case authority
	path   string // full :path including query
	method string
	scheme string
	hdr    http.Header
	query  url.Values // parsed lazily
	qDone  bool
}

func splitQuery(p string) string {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		return p[:i]
	}
	return p
}

// selectVhost implements Envoy's domain search order: exact, longest
// suffix wildcard, longest prefix wildcard, then "*".
func (t *routeTable) selectVhost(host string) *vhost {
	if t.ignorePort {
		host = stripPort(host)
	}
	if vh, ok := t.exact[host]; ok {
		return vh
	}
	for _, w := range t.suffixes {
		if len(host) > len(w.s) && strings.HasSuffix(host, w.s) {
			return w.vh
		}
	}
	for _, w := range t.prefixes {
		if len(host) > len(w.s) && strings.HasPrefix(host, w.s) {
			return w.vh
		}
	}
	return t.star
}

func stripPort(h string) string {
	i := strings.LastIndexByte(h, ':')
	if i < 0 {
		return h
	}
	if strings.IndexByte(h, ']') > i { // "[::1]" without port
		return h
	}
	for _, c := range h[i+1:] {
		if c < '0' || c > '9' {
			return h
		}
	}
	return h[:i]
}

func (t *routeTable) match(v *reqView) *route {
	vh := t.selectVhost(v.host)
	if vh == nil {
		return nil
	}
	for _, r := range vh.routes {
		if r.matches(v) {
			return r
		}
	}
	return nil
}

func (r *route) matches(v *reqView) bool {
	p := v.path
	switch r.kind {
	case pathPrefix:
		if !hasPrefixFold(p, r.path, r.caseSensitive) {
			return false
		}
	case pathExact:
		p = splitQuery(p)
		if r.caseSensitive {
			if p != r.path {
				return false
			}
		} else if !strings.EqualFold(p, r.path) {
			return false
		}
	case pathRegex:
		if !r.re.MatchString(splitQuery(p)) {
			return false
		}
	case pathSepPrefix:
		p = splitQuery(p)
		if !hasPrefixFold(p, r.path, r.caseSensitive) {
			return false
		}
		if len(p) > len(r.path) && p[len(r.path)] != '/' {
			return false
		}
	}
	if r.grpcOnly && !isGRPC(v.hdr) {
		return false
	}
	for i := range r.headers {
		if hm := &r.headers[i]; !hm.Match(headerValue(hm, v)) {
			return false
		}
	}
	if len(r.query) > 0 {
		if !v.qDone {
			v.qDone = true
			if i := strings.IndexByte(v.path, '?'); i >= 0 {
				v.query, _ = url.ParseQuery(v.path[i+1:])
			}
		}
		for _, q := range r.query {
			vals, ok := v.query[q.name]
			if q.m == nil {
				if ok != q.present {
					return false
				}
				continue
			}
			if !ok || !q.m.Match(vals[0]) {
				return false
			}
		}
	}
	return true
}

func hasPrefixFold(s, prefix string, cs bool) bool {
	if cs {
		return strings.HasPrefix(s, prefix)
	}
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

func isGRPC(h http.Header) bool {
	ct := h.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc")
}

// headerValue is a route header matcher's view of the request: the
// pseudo-headers from v, the others from its header map.
func headerValue(hm *match.Header, v *reqView) (string, bool) {
	switch hm.Name {
	case ":authority":
		return v.host, true
	case ":path":
		return v.path, true
	case ":method":
		return v.method, true
	case ":scheme":
		return v.scheme, true
	}
	return match.Get(v.hdr, hm.Name)
}

// pickCluster resolves the upstream cluster for a forwarding route.
// Weighted clusters are picked by the route's Weyl sequence
// (internal/weyl), deterministic and exact within a few requests, where
// Envoy draws at random; the shares are the configured weights either way.
func (r *route) pickCluster(h http.Header) (string, *weightedCluster) {
	switch r.action {
	case actCluster:
		return r.cluster, nil
	case actClusterHeader:
		return h.Get(r.cluster), nil
	case actWeighted:
		n := r.picks.Next(r.totalW)
		for i := range r.weighted {
			if n < r.weighted[i].weight {
				return r.weighted[i].name, &r.weighted[i]
			}
			n -= r.weighted[i].weight
		}
		w := &r.weighted[len(r.weighted)-1]
		return w.name, w
	}
	return "", nil
}

// rewritePath applies prefix_rewrite or regex_rewrite to a :path value.
func (r *route) rewritePath(p string) string {
	if r.hasPrefixRW && (r.kind == pathPrefix || r.kind == pathSepPrefix) {
		return r.prefixRewrite + p[len(r.path):]
	}
	if r.regexRW != nil {
		path, q := p, ""
		if i := strings.IndexByte(p, '?'); i >= 0 {
			path, q = p[:i], p[i:]
		}
		return r.regexRW.ReplaceAllString(path, r.regexSub) + q
	}
	return p
}
