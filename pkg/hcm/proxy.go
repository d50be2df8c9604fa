package hcm

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"go.uber.org/zap"

	"github.com/meshlet/meshlet/internal/uuid"
	"github.com/meshlet/meshlet/pkg/accesslog"
)

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Causes recorded on the per-request context when we cut a stream.
var (
	errRouteTimeout   = errors.New("upstream request timeout")
	errStreamIdle     = errors.New("stream idle timeout")
	errRequestTimeout = errors.New("request timeout")
	errMaxDuration    = errors.New("max stream duration")
	errBodyTooLarge   = errors.New("request body too large")
)

// stream is the per-request state of the proxy.
type stream struct {
	m     *Manager
	w     http.ResponseWriter
	r     *http.Request
	e     accesslog.Entry
	start time.Time
	info  *connInfo
	grpc  bool
	rt    *route
	body  *reqBody
	sent  atomic.Int64
	wrote bool
	// upgraded: the stream became an Upgrade tunnel; viaTransport: a
	// net/http or x/net transport carried the request, whose goroutines
	// may outlive the handler (neither is recycled).
	upgraded, viaTransport bool

	ctx    context.Context
	cancel context.CancelCauseFunc
	rc     *reqCancel   // fast path only, instead of cancel
	last   atomic.Int64 // monotonic ns since start of the latest activity
	// One timer serves the route timeout (deadline, since start) and the
	// stream idle timeout (idle, since last activity); 0 disables either.
	idle     time.Duration
	deadline time.Duration
	durCap   bool // deadline is max_stream_duration's, not the route timeout
	t        atomic.Pointer[time.Timer]
	// fc: the fast-path connection holding this stream's timer until
	// watchDelay (fastConn.deferTimer), nil when the timer is the stream's.
	fc   *fastConn
	reqT *time.Timer // HCM request_timeout, while a body is read
	// hv backs the one-value header slices the proxy adds, saving an
	// allocation each (see one).
	hv [4]string
	// out is the upstream request and outURL its URL, kept here to save
	// their allocations; out carries no context: clusterPool.roundTrip
	// takes ctx apart and gives out one only for net/http's clients.
	out    http.Request
	outURL url.URL
	// hash, hasHash: the request's hash_policy key (pickInput).
	hash    uint64
	hasHash bool
	// rlHeaders: the local rate limit's x-ratelimit headers go on the
	// response (rlLimit, rlLeft, rlReset).
	rlHeaders                bool
	rlLimit, rlLeft, rlReset int64
	// lastOnConn: the connection reached max_requests_per_connection.
	lastOnConn bool
	// localGRPC is 1 + the gRPC status a local reply gives (fault abort,
	// rate limit; 0: derived from the HTTP status).
	localGRPC int
	// tried backs the hosts of a retried request's attempts.
	tried [2]netip.AddrPort
}

// Indices into stream.hv.
const (
	hvRequestID = iota
	hvXFF
	hvXFP
	hvServiceTime
)

// one returns a header value slice of v (len and cap 1, so an append by a
// later header operation copies) backed by the stream.
func (s *stream) one(i int, v string) []string {
	s.hv[i] = v
	return s.hv[i : i+1 : i+1]
}

func (s *stream) addFlag(f string) {
	if s.e.Flags == "" {
		s.e.Flags = f
	} else {
		s.e.Flags += "," + f
	}
}

// touch records activity for the stream idle timeout. Only a stream whose
// timer runs needs it: a fast-path stream's timer is armed late, if at all
// (armLate, which counts its arming as activity), so until then a touch
// costs no clock read.
func (s *stream) touch() {
	if s.idle > 0 && s.t.Load() != nil {
		s.last.Store(int64(time.Since(s.start)))
	}
}

// abort cuts the stream with cause. A request body still being read is
// failed at once through a read deadline: the upstream writer blocked in
// it must return before the transport gives the request up.
func (s *stream) abort(cause error) {
	s.cancelWith(cause)
	if s.body != nil {
		s.body.Close()
	}
}

// firstTimeout is the earlier of the stream's route deadline and idle
// timeout (at least one is set).
func (s *stream) firstTimeout() time.Duration {
	d := s.deadline
	if d == 0 || (s.idle > 0 && s.idle < d) {
		d = s.idle
	}
	return d
}

// armTimer starts the stream's timer for firstTimeout.
func (s *stream) armTimer() {
	s.t.Store(time.AfterFunc(s.firstTimeout(), s.checkTimer))
}

// armLate starts the stream's timer once the stream has already run for
// a while (a fast-path request outliving watchDelay, see
// fastConn.deferTimer): checkTimer then fires when firstTimeout is due
// counted from the start, or at once.
func (s *stream) armLate() {
	now := time.Since(s.start)
	s.last.Store(int64(now)) // touches before went unrecorded (touch)
	d := s.firstTimeout() - now
	s.t.Store(time.AfterFunc(max(d, 0), s.checkTimer))
}

// checkTimer cuts the stream whose deadline passed or that was quiet for
// its idle timeout, or re-arms the timer for whichever comes next.
func (s *stream) checkTimer() {
	now := time.Since(s.start)
	if s.deadline > 0 && now >= s.deadline {
		if s.durCap {
			s.abort(errMaxDuration)
		} else {
			s.abort(errRouteTimeout)
		}
		return
	}
	next := time.Duration(-1)
	if s.deadline > 0 {
		next = s.deadline - now
	}
	if s.idle > 0 {
		quiet := now - time.Duration(s.last.Load())
		if quiet >= s.idle {
			s.abort(errStreamIdle)
			return
		}
		if next < 0 || s.idle-quiet < next {
			next = s.idle - quiet
		}
	}
	if s.ctx.Err() == nil {
		s.t.Store(time.AfterFunc(next, s.checkTimer))
	}
}

// ServeHTTP proxies one request. It implements http.Handler for both the
// HTTP/1.1 and the HTTP/2 server.
func (m *Manager) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var s *stream
	if fw, ok := w.(*fastRW); ok && fw.c.spare != nil {
		// The fast-path connection's previous stream, which nothing
		// references any more (see recycle): a stream is about 1 KiB, over
		// half of what a proxied request allocates.
		s, fw.c.spare = fw.c.spare, nil
		*s = stream{m: m, w: w, r: r, start: time.Now()}
	} else {
		s = &stream{m: m, w: w, r: r, start: time.Now()}
	}
	s.info, _ = r.Context().Value(connInfoKey{}).(*connInfo)
	if s.info == nil {
		s.info = &connInfo{}
	}
	if m.maxRequestsPerConn > 0 && atomic.AddInt64(&s.info.requests, 1) >= m.maxRequestsPerConn {
		s.lastOnConn = true
	}
	s.e.Start = s.start
	s.e.ReqHeaders = r.Header
	s.e.DownstreamLocal, s.e.DownstreamRemote = s.info.orig, s.info.remote
	s.e.Method = r.Method
	s.e.Protocol = r.Proto
	if r.ProtoMajor == 2 {
		s.e.Protocol = "HTTP/2" // as Envoy's %PROTOCOL%
	}
	s.e.Authority = r.Host
	s.e.Path = r.RequestURI
	s.grpc = isGRPC(r.Header)
	served := false
	defer func() {
		s.finish()
		if served { // not after a panic (an aborted stream)
			s.recycle()
		}
	}()
	m.serve1(s)
	served = true
}

// rateLimit applies the local rate limit filter's config for rt (the
// route's, its virtual host's, or the filter's own): false when the
// stream was answered 429.
func (s *stream) rateLimit(rt *route) bool {
	rl := rt.limits[s.m.limitName]
	if rl == nil {
		rl = s.m.limit
	}
	return rl == nil || s.limit(rl)
}

// reportHealth tells outlier detection how an attempt to ep went, unless
// the stream itself ended it (the client left, a timeout of ours).
func (s *stream) reportHealth(ep Endpoint, resp *http.Response, err error, perTry bool) {
	switch {
	case ep.Health == nil:
	case err == nil:
		ep.Health.Report(resp.StatusCode)
	case neverSent(err): // the host never saw the request
	case perTry:
		ep.Health.Report(http.StatusGatewayTimeout)
	case s.ctx.Err() == nil:
		ep.Health.Report(http.StatusServiceUnavailable)
	}
}

// neverSent reports whether an attempt failed before its request reached
// the upstream host: the circuit breaker refused it, or it ended while
// waiting for a pooled connection.
func neverSent(err error) bool {
	var we *waitError
	return errors.Is(err, errOverflow) || errors.As(err, &we)
}

// setUpstreamURL makes u the URL of an upstream request for the request
// target path: sent as written (Opaque), the query apart.
func setUpstreamURL(u *url.URL, path string) {
	*u = url.URL{Scheme: "http", Opaque: path}
	if q := strings.IndexByte(path, '?'); q >= 0 {
		u.Opaque, u.RawQuery = path[:q], path[q+1:]
	}
}

// overflow answers a request the cluster's circuit breaker refused.
func (s *stream) overflow() {
	s.local(http.StatusServiceUnavailable, FlagUpstreamOverflow, "upstream_reset_before_response_started{overflow}",
		"upstream connect error or disconnect/reset before headers. reset reason: overflow")
}

// tryRetry takes a retry slot of the circuit breaker (none: always);
// *held records that one is held.
func tryRetry(br Breaker, held *bool) bool {
	if br == nil {
		return true
	}
	if br.TryRetry() {
		*held = true
		return true
	}
	return false
}

// writeHeader sends the response head; the last request a connection may
// carry (max_requests_per_connection) asks for the connection's end:
// "Connection: close" on HTTP/1.1, a GOAWAY from x/net on HTTP/2.
func (s *stream) writeHeader(code int) {
	if s.rlHeaders {
		s.addRateLimitHeaders(s.w.Header())
	}
	if s.lastOnConn {
		if fw, ok := s.w.(*fastRW); ok {
			fw.closeAfter = true
		} else {
			s.w.Header()["Connection"] = []string{"close"}
		}
	}
	s.w.WriteHeader(code)
}

// cancelWith cancels the stream's context with cause; on the fast path
// (rc) that also cuts the upstream connection in use.
func (s *stream) cancelWith(cause error) {
	switch {
	case s.rc != nil:
		s.rc.fire(cause)
	case s.cancel != nil:
		s.cancel(cause)
	}
}

func (s *stream) finish() {
	if s.fc != nil {
		s.fc.undefer(s) // before reading s.t: a deferred timer is armed or never will be
	}
	if s.reqT != nil {
		s.reqT.Stop()
	}
	if t := s.t.Load(); t != nil {
		t.Stop()
	}
	s.cancelWith(context.Canceled)
	if s.m.alog == nil {
		return
	}
	s.e.Duration = time.Since(s.start)
	s.e.BytesSent = s.sent.Load()
	if s.body != nil {
		s.e.BytesReceived = s.body.n.Load()
	}
	if s.wrote {
		s.e.RespHeaders = s.w.Header()
	}
	s.m.alog.Log(&s.e)
}

// recycle offers s to its fast-path connection for the next request when
// nothing can reference it once the handler returns: no timer of it was
// ever armed (after fastConn.undefer none can be), no request body (an
// upstream writer may still hold it), no upgrade, and the upstream
// exchange, if any, was the synchronous client's (a transport's request
// goroutine may still run after a cancelled exchange, holding s.out).
// Called last, on the connection's goroutine.
func (s *stream) recycle() {
	fw, ok := s.w.(*fastRW)
	if !ok || s.upgraded || s.viaTransport || s.body != nil || s.reqT != nil || s.t.Load() != nil {
		return
	}
	fw.c.spare = s
}

func (m *Manager) serve1(s *stream) {
	r := s.r
	n := 0
	for _, v := range r.Header {
		n += len(v)
	}
	if n > m.maxHeadersCount {
		s.local(http.StatusRequestHeaderFieldsTooLarge, FlagDownstreamProtoErr, "too_many_headers", "too many headers")
		return
	}
	if m.underscores != corev3.HttpProtocolOptions_ALLOW {
		for k := range r.Header {
			if strings.IndexByte(k, '_') < 0 {
				continue
			}
			if m.underscores == corev3.HttpProtocolOptions_REJECT_REQUEST {
				s.local(http.StatusBadRequest, FlagDownstreamProtoErr, "unexpected_underscore", "Bad Request")
				return
			}
			delete(r.Header, k) // DROP_HEADER
		}
	}
	if m.maxBodyBytes > 0 && r.ContentLength > m.maxBodyBytes {
		s.local(http.StatusRequestEntityTooLarge, "", "request_payload_too_large", "Payload Too Large")
		return
	}
	host := r.Host
	if m.stripAnyHostPort {
		host = stripPort(host)
	}
	host = lowerASCII(host)
	path := r.RequestURI
	if !strings.HasPrefix(path, "/") && path != "*" {
		path = r.URL.RequestURI() // absolute-form request target
	}
	if m.paths.active() {
		np, verdict := m.paths.apply(path)
		switch verdict {
		case pathReject:
			s.local(http.StatusBadRequest, "", "path_normalization_failed", "Bad Request")
			return
		case pathRedirect:
			// UNESCAPE_AND_REDIRECT: the client asks again for the
			// unescaped path.
			s.e.Code, s.e.Details, s.wrote = http.StatusTemporaryRedirect, "path_normalization_redirect", true
			s.w.Header()["Location"] = []string{np}
			s.writeHeader(http.StatusTemporaryRedirect)
			return
		}
		path = np
		s.e.Path = np // the :path routed and forwarded, as Envoy logs it
	}
	t, err := m.table()
	if err != nil {
		m.log.Warn("route configuration rejected", zap.String("route_config", m.rdsName), zap.Error(err))
		s.local(http.StatusServiceUnavailable, FlagNoRoute, "route_configuration_invalid", "route configuration invalid")
		return
	}
	if t == nil {
		s.local(http.StatusNotFound, FlagNoRoute, "route_not_found", "")
		return
	}
	v := reqView{host: host, path: path, method: r.Method, scheme: "http", hdr: r.Header}
	rt := t.match(&v)
	if rt == nil {
		s.local(http.StatusNotFound, FlagNoRoute, "route_not_found", "")
		return
	}
	s.rt = rt
	s.e.Route = rt.name
	rid := r.Header.Get("X-Request-Id")
	if rid == "" && m.genRequestID {
		rid = uuid.New()
		r.Header["X-Request-Id"] = s.one(hvRequestID, rid)
	}
	s.e.RequestID = rid
	switch rt.action {
	case actDirect:
		s.direct(rt.direct)
		return
	case actRedirect:
		s.redirect(rt.redirect, host, path)
		return
	}
	cluster, wc := rt.pickCluster(r.Header)
	if len(rt.hashes) > 0 {
		s.hash, s.hasHash = s.requestHash(rt.hashes, path)
	}
	s.e.Cluster = cluster
	if cluster == "" {
		s.local(http.StatusServiceUnavailable, FlagNoCluster, "cluster_not_found", "")
		return
	}

	upgrade := ""
	if r.ProtoMajor == 1 && headerHasToken(r.Header["Connection"], "upgrade") {
		upgrade = lowerASCII(r.Header.Get("Upgrade"))
	}
	if upgrade != "" && !m.upgrades[upgrade] {
		s.local(http.StatusForbidden, "", "upgrade_failed", "")
		return
	}
	stripHopByHop(r.Header, upgrade != "")
	if m.useRemoteAddr {
		if !m.skipXFFAppend && s.info.remote.IsValid() {
			ip := s.info.remoteIP
			if ip == "" {
				ip = s.info.remote.Addr().Unmap().String()
			}
			if prior, ok := r.Header["X-Forwarded-For"]; ok && len(prior) > 0 {
				r.Header["X-Forwarded-For"] = s.one(hvXFF, strings.Join(prior, ", ")+", "+ip)
			} else {
				r.Header["X-Forwarded-For"] = s.one(hvXFF, ip)
			}
		}
		r.Header["X-Forwarded-Proto"] = s.one(hvXFP, "http")
	} else if _, ok := r.Header["X-Forwarded-Proto"]; !ok {
		r.Header["X-Forwarded-Proto"] = s.one(hvXFP, "http")
	}
	if _, ok := r.Header["User-Agent"]; !ok {
		r.Header["User-Agent"] = []string{""} // keep Go's transports from adding theirs
	}
	applyHeaderOps(r.Header, rt.reqAdd, rt.reqDel, &s.e)
	if wc != nil && (len(wc.reqAdd) > 0 || len(wc.reqDel) > 0) {
		applyHeaderOps(r.Header, wc.reqAdd, wc.reqDel, &s.e)
	}
	outHost := r.Host
	switch {
	case rt.hostLiteral != "":
		outHost = rt.hostLiteral
	case rt.hostHeader != "":
		if h := r.Header.Get(rt.hostHeader); h != "" {
			outHost = h
		}
	}
	outPath := rt.rewritePath(path)
	if outPath != path {
		r.Header["X-Envoy-Original-Path"] = []string{path}
	}

	// Timers: route timeout (or grpc-timeout), stream idle, request timeout.
	timeout := rt.timeout
	if rt.honourGrpc {
		if gt, ok := parseGRPCTimeout(r.Header.Get("Grpc-Timeout")); ok {
			if rt.grpcTimeoutMax > 0 && gt > rt.grpcTimeoutMax {
				gt = rt.grpcTimeoutMax
			}
			timeout = gt
		}
	}
	if fw, ok := s.w.(*fastRW); ok && fw.rc != nil {
		// HTTP/1.1 fast path: the request context is already this
		// stream's own (h1server.go), no need for a child.
		s.ctx, s.rc = r.Context(), fw.rc
	} else {
		s.ctx, s.cancel = context.WithCancelCause(r.Context())
	}
	s.idle = m.streamIdle
	if rt.idleTimeout >= 0 {
		s.idle = rt.idleTimeout
	}
	var body io.ReadCloser = http.NoBody
	if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		s.body = &reqBody{rc: r.Body, s: s, limit: m.maxBodyBytes, record: rt.retry != nil || len(rt.mirrors) > 0}
		body = s.body
		if m.requestTimeout > 0 {
			s.reqT = time.AfterFunc(m.requestTimeout, func() {
				if !s.body.eof.Load() {
					s.abort(errRequestTimeout)
				}
			})
		}
	}
	if upgrade != "" {
		// An upgraded stream has no route timeout: it lives until either
		// side closes, or until both directions are quiet for the stream
		// idle timeout, which the tunnel applies itself.
		idle := s.idle
		s.idle = 0
		s.upgraded = true
		s.proxyUpgrade(cluster, outHost, outPath, idle)
		return
	}
	// The HTTP filters before the router, in their http_filters order.
	if m.limitFirst && !s.rateLimit(rt) {
		return
	}
	if m.faultName != "" {
		fp := rt.faults[m.faultName]
		if fp == nil {
			fp = m.fault
		}
		if fp != nil && fp.applies(cluster, r.Header, &v) && !s.injectFault(fp) {
			return
		}
	}
	if m.limitName != "" && !m.limitFirst && !s.rateLimit(rt) {
		return
	}
	s.deadline = max(timeout, 0)
	maxDur := m.maxStreamDuration
	if rt.maxDuration >= 0 {
		maxDur = rt.maxDuration
	}
	if maxDur > 0 && (s.deadline == 0 || maxDur < s.deadline) {
		// max_stream_duration comes first: the deadline is its.
		s.deadline, s.durCap = maxDur, true
	}
	if s.idle > 0 || s.deadline > 0 {
		if fw, ok := s.w.(*fastRW); !ok || !fw.c.deferTimer(s) {
			s.armTimer()
		}
	}

	setUpstreamURL(&s.outURL, outPath)
	s.out = http.Request{
		Method:        r.Method,
		URL:           &s.outURL,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        r.Header,
		Body:          body,
		ContentLength: r.ContentLength,
		Host:          outHost,
		Trailer:       r.Trailer,
	}
	if body == http.NoBody {
		s.out.ContentLength = 0
	}
	if len(rt.mirrors) > 0 {
		defer s.mirror(outPath, outHost, timeout)
	}
	out := &s.out
	cp := m.pools.cluster(cluster)
	rp := rt.retry
	var (
		resp     *http.Response
		upStart  time.Time
		tried    = s.tried[:0] // hosts of earlier attempts (previous_hosts)
		ptCancel context.CancelCauseFunc
	)
	if rt.hedge {
		hr := s.hedged(cp, cluster, rp, rt)
		if hr.br != nil {
			defer hr.br.DoneRequest()
		}
		var pe *pickError
		switch {
		case errors.Is(hr.err, errOverflow):
			s.overflow()
			return
		case errors.As(hr.err, &pe) && errors.Is(pe.err, ErrNoCluster):
			s.local(http.StatusServiceUnavailable, FlagNoCluster, "cluster_not_found", "")
			return
		case errors.As(hr.err, &pe):
			s.local(http.StatusServiceUnavailable, FlagNoHealthyUpstream, "no_healthy_upstream", "no healthy upstream")
			return
		case hr.err != nil:
			s.upstreamFailed(hr.err, false)
			return
		}
		resp, upStart, ptCancel = hr.resp, hr.start, hr.cancel
	}
	var br Breaker    // the cluster's circuit breaker, once a request slot is held
	retrying := false // a retry slot is held for the attempt under way
	defer func() {
		if retrying {
			br.DoneRetry()
		}
	}()
	for attempt := 0; !rt.hedge; attempt++ { // the attempts without hedging
		ep, err := s.pickHost(cluster, rp, tried)
		if err != nil {
			switch {
			case errors.Is(err, ErrNoCluster):
				s.local(http.StatusServiceUnavailable, FlagNoCluster, "cluster_not_found", "")
			default:
				s.local(http.StatusServiceUnavailable, FlagNoHealthyUpstream, "no_healthy_upstream", "no healthy upstream")
			}
			return
		}
		if attempt == 0 && ep.Breaker != nil {
			if !ep.Breaker.TryRequest() {
				s.overflow()
				return
			}
			br = ep.Breaker
			defer br.DoneRequest()
		}
		if rp != nil && rp.otherHosts && attempt < rp.n {
			tried = append(tried, ep.Addr)
		}
		addr := cp.addrString(ep.Addr)
		s.e.UpstreamHost = addr
		s.e.Attempts = attempt + 1
		out.URL.Host = addr
		if rt.autoHost {
			out.Host = addr
		}
		if attempt > 0 && s.body != nil {
			out.Body, out.ContentLength = s.replayBody()
		}
		if rt.attemptsUp {
			r.Header["X-Envoy-Attempt-Count"] = []string{strconv.Itoa(attempt + 1)}
		}
		client := clientFor(out, ep.h2(r.ProtoMajor == 2))
		if client != clientFast {
			s.viaTransport = true
		}
		ctx := s.ctx
		var pt *perTry
		if rp != nil && rp.perTry > 0 {
			ctx, pt = s.startPerTry(rp.perTry, client == clientFast && s.rc != nil)
			ptCancel = pt.cancel
		}
		upStart = time.Now()
		resp, err = cp.roundTrip(ctx, out, client, s.rc, ep.Breaker)
		timedOut := pt != nil && pt.finish()
		if retrying {
			br.DoneRetry()
			retrying = false
		}
		if errors.Is(err, errOverflow) {
			// max_pending_requests: not the host's failure, and never
			// retried (as Envoy).
			s.overflow()
			return
		}
		s.reportHealth(ep, resp, err, timedOut)
		if err == nil && (s.ctx.Err() != nil || timedOut) {
			// A response that raced with our own timeout, the client
			// leaving or the per-try timeout: this attempt is cut.
			resp.Body.Close()
			resp, err = nil, context.Cause(s.ctx)
			if timedOut {
				err = errPerTryTimeout
			}
		}
		if err == nil {
			if rp == nil || !rp.retriableResponse(resp) {
				break
			}
			if attempt >= rp.n || !s.canReplay() || s.ctx.Err() != nil || !tryRetry(br, &retrying) {
				if attempt >= rp.n {
					s.addFlag(FlagRetryLimitExceeded)
				}
				break // the last answer goes downstream as it is
			}
			discard(resp)
			if ptCancel != nil {
				ptCancel(context.Canceled)
				ptCancel = nil
			}
			if !s.sleep(rp.backoff(attempt + 1)) {
				s.upstreamFailed(context.Cause(s.ctx), false)
				return
			}
			continue
		}
		if ptCancel != nil {
			ptCancel(context.Canceled)
			ptCancel = nil
		}
		var de *dialError
		dial := errors.As(err, &de)
		if rp != nil && s.ctx.Err() == nil && rp.retriableError(dial, timedOut) {
			if attempt < rp.n && s.canReplay() && tryRetry(br, &retrying) {
				if !s.sleep(rp.backoff(attempt + 1)) {
					s.upstreamFailed(context.Cause(s.ctx), false)
					return
				}
				continue
			}
			if attempt > 0 && attempt >= rp.n {
				s.addFlag(FlagRetryLimitExceeded)
			}
		}
		if timedOut {
			s.local(http.StatusGatewayTimeout, FlagUpstreamTimeout, "upstream_per_try_timeout", "upstream request timeout")
			return
		}
		s.upstreamFailed(err, false)
		return
	}
	if ptCancel != nil {
		defer ptCancel(context.Canceled) // after the body below is done
	}
	done := false
	defer func() {
		// The h2 transport's Body.Close waits for its request-body writer,
		// which may sit in a downstream Read that only ends with the
		// handler. Cancel first unless the exchange completed cleanly
		// (cancelling then would cost the HTTP/1.1 connection its reuse).
		if !done || (s.body != nil && !s.body.eof.Load()) {
			s.cancelWith(context.Canceled)
		}
		resp.Body.Close()
	}()
	s.e.UpstreamTime = time.Since(upStart)
	s.e.FirstByte = upStart.Sub(s.start) + s.e.UpstreamTime
	s.touch()

	h := s.responseHeader(resp)
	stripHopByHop(h, false)
	s.e.Code, s.e.RespHeaders, s.e.Details = resp.StatusCode, h, "via_upstream"
	applyHeaderOps(h, rt.respAdd, rt.respDel, &s.e)
	if m.alwaysSetReqID && rid != "" {
		h["X-Request-Id"] = s.one(hvRequestID, rid)
	}
	if rt.attemptsDown {
		h["X-Envoy-Attempt-Count"] = []string{strconv.Itoa(s.e.Attempts)}
	}
	h["X-Envoy-Upstream-Service-Time"] = s.one(hvServiceTime, strconv.FormatInt(s.e.UpstreamTime.Milliseconds(), 10))
	if m.serverName != "" {
		h["Server"] = []string{m.serverName}
	}
	s.e.Code = resp.StatusCode
	s.wrote = true
	s.writeHeader(resp.StatusCode)

	stream := resp.ContentLength < 0 || s.grpc
	fl, _ := s.w.(http.Flusher)
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	// Streaming responses (unknown length, gRPC) are flushed on every
	// write, headers first: a client may wait for header metadata before
	// it sends anything.
	if stream && fl != nil && resp.ContentLength != 0 {
		fl.Flush()
	}
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			s.touch()
			wn, werr := s.w.Write(buf[:n])
			s.sent.Add(int64(wn))
			if werr != nil {
				s.addFlag(FlagDownstreamConnTerm)
				s.cancelWith(context.Canceled)
				return
			}
			if stream && fl != nil {
				fl.Flush()
			}
		}
		if rerr == io.EOF {
			done = true
			break
		}
		if rerr != nil {
			s.upstreamFailed(rerr, true)
			return
		}
	}
	for k, vv := range resp.Trailer {
		h[http.TrailerPrefix+k] = vv
	}
	if len(resp.Trailer) > 0 && m.alog != nil {
		s.e.RespTrailers = resp.Trailer.Clone() // the transport's map may be reused
	}
}

// responseHeader makes the upstream response's header fields the
// downstream response's and returns that map. The HTTP/1.1 fast path takes
// the map the upstream connection parsed into, giving the connection the
// writer's empty one for its next response, rather than copying it field
// by field; otherwise the fields are copied.
func (s *stream) responseHeader(resp *http.Response) http.Header {
	h := s.w.Header()
	if fw, ok := s.w.(*fastRW); ok && len(h) == 0 {
		if ub, ok := resp.Body.(*upBody); ok && ub.takeHeader(h) {
			fw.h = resp.Header
			return resp.Header
		}
	}
	for k, vv := range resp.Header {
		h[k] = vv
	}
	return h
}

// upstreamFailed classifies an upstream error and answers locally (before
// response headers) or resets the downstream stream (after).
func (s *stream) upstreamFailed(err error, afterHeaders bool) {
	cause := context.Cause(s.ctx)
	code, flag, details, body := http.StatusServiceUnavailable, FlagUpstreamConnTerm, "upstream_reset_before_response_started{connection_termination}",
		"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
	var de *dialError
	switch {
	case s.body != nil && s.body.tooLarge.Load():
		code, flag, details, body = http.StatusRequestEntityTooLarge, "", "request_payload_too_large", "Payload Too Large"
	case cause == errMaxDuration, s.durCap && time.Since(s.start) >= s.deadline:
		code, flag, details, body = http.StatusRequestTimeout, FlagDurationTimeout, "max_duration_timeout", "downstream duration timeout"
	case cause == errRouteTimeout, s.grpc && s.deadline > 0 && time.Since(s.start) >= s.deadline:
		// The second case: the upstream gave up at the deadline it was
		// given (a gRPC server resets the stream when its grpc-timeout
		// passes) just before this stream's own timer fired.
		code, flag, details, body = http.StatusGatewayTimeout, FlagUpstreamTimeout, "upstream_response_timeout", "upstream request timeout"
	case cause == errStreamIdle:
		code, flag, details, body = http.StatusRequestTimeout, FlagStreamIdleTimeout, "stream_idle_timeout", "stream timeout"
	case cause == errRequestTimeout:
		code, flag, details, body = http.StatusRequestTimeout, FlagStreamIdleTimeout, "request_overall_timeout", "request timeout"
	case s.r.Context().Err() != nil || (s.body != nil && s.body.failed.Load()):
		code, flag, details, body = 0, FlagDownstreamConnTerm, "downstream_remote_disconnect", ""
	case errors.As(err, &de):
		code, flag, details, body = http.StatusServiceUnavailable, FlagUpstreamConnFailure, "upstream_reset_before_response_started{connection_failure}",
			"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
	}
	s.m.log.Debug("upstream request failed", zap.String("upstream_cluster", s.e.Cluster),
		zap.String("upstream_host", s.e.UpstreamHost), zap.String("response_flags", flag), zap.Error(err))
	if afterHeaders || code == 0 {
		s.addFlag(flag)
		if s.e.Details == "" {
			s.e.Details = details
		}
		if code == 0 {
			s.e.Code = 0
			return
		}
		// Headers are gone: reset the stream (RST_STREAM on h2, connection
		// close on HTTP/1.1) so the client does not take a truncated body
		// for a complete one.
		panic(http.ErrAbortHandler)
	}
	s.local(code, flag, details, body)
}

// local sends a locally generated reply. gRPC requests get a trailers-only
// gRPC status instead of an HTTP error, as Envoy does.
func (s *stream) local(code int, flag, details, body string) {
	if flag != "" {
		s.addFlag(flag)
	}
	s.e.Code = code
	s.e.Details = details
	if s.wrote {
		return
	}
	s.wrote = true
	h := s.w.Header()
	if s.rt != nil {
		applyHeaderOps(h, s.rt.respAdd, s.rt.respDel, &s.e)
	}
	if s.body != nil && !s.body.eof.Load() {
		// We gave up on a request body mid-way: nothing more of it will be
		// read. Unblock any reader now (the upstream writer, net/http's
		// post-handler discard) and do not reuse an HTTP/1.1 connection
		// whose framing we no longer follow.
		if s.r.ProtoMajor == 1 {
			h["Connection"] = []string{"close"}
		}
		s.body.Close()
	}
	if s.grpc {
		h["Content-Type"] = []string{"application/grpc"}
		gs := accesslog.HTTPToGRPC(code)
		if flag == FlagUpstreamTimeout || flag == FlagDurationTimeout {
			gs = 4 // DEADLINE_EXCEEDED: the client's own deadline and ours agree
		}
		if s.localGRPC > 0 {
			gs = s.localGRPC - 1
		}
		h["Grpc-Status"] = []string{strconv.Itoa(gs)}
		msg := body
		if msg == "" {
			msg = details
		}
		h["Grpc-Message"] = []string{url.PathEscape(msg)}
		s.e.Code = http.StatusOK
		s.writeHeader(http.StatusOK)
		return
	}
	if body != "" {
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{strconv.Itoa(len(body))}
	}
	s.writeHeader(code)
	if body != "" {
		n, _ := io.WriteString(s.w, body)
		s.sent.Add(int64(n))
	}
}

func (s *stream) direct(d *direct) {
	s.e.Details = "direct_response"
	s.e.Code = d.status
	h := s.w.Header()
	applyHeaderOps(h, s.rt.respAdd, s.rt.respDel, &s.e)
	if len(d.body) > 0 {
		if _, ok := h["Content-Type"]; !ok {
			h["Content-Type"] = []string{"text/plain"}
		}
		h["Content-Length"] = []string{strconv.Itoa(len(d.body))}
	}
	s.wrote = true
	s.writeHeader(d.status)
	if len(d.body) > 0 {
		n, _ := s.w.Write(d.body)
		s.sent.Add(int64(n))
	}
}

func (s *stream) redirect(rd *redirect, host, path string) {
	scheme := "http"
	if rd.scheme != "" {
		scheme = rd.scheme
	}
	if rd.host != "" {
		if p := portOf(host); p != "" && rd.port == 0 && !strings.Contains(rd.host, ":") {
			host = rd.host + ":" + p
		} else {
			host = rd.host
		}
	}
	if rd.port != 0 {
		host = stripPort(host) + ":" + strconv.FormatUint(uint64(rd.port), 10)
	} else if rd.scheme == "https" && portOf(host) == "80" {
		host = stripPort(host)
	}
	p, q := path, ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		p, q = path[:i], path[i:]
	}
	switch {
	case rd.path != "":
		p = rd.path
		if strings.Contains(p, "?") {
			q = ""
		}
	case rd.hasPrefixRW && (s.rt.kind == pathPrefix || s.rt.kind == pathSepPrefix):
		p = rd.prefixRewrite + p[min(len(s.rt.path), len(p)):]
	case rd.regexRW != nil:
		p = rd.regexRW.ReplaceAllString(p, rd.regexSub)
	}
	if rd.stripQuery {
		q = ""
	}
	h := s.w.Header()
	s.e.Code = rd.code
	applyHeaderOps(h, s.rt.respAdd, s.rt.respDel, &s.e)
	h["Location"] = []string{scheme + "://" + host + p + q}
	s.e.Details = "direct_response"
	s.wrote = true
	s.writeHeader(rd.code)
}

func portOf(host string) string {
	if h := stripPort(host); len(h) < len(host) {
		return host[len(h)+1:]
	}
	return ""
}

// reqBody counts and limits the downstream request body and records why a
// read failed. Close before EOF (the upstream transport giving up on the
// request, or our own timeouts) fails the downstream body at once, so a
// writer blocked in Read returns: HTTP/2 request bodies are closed, an
// HTTP/1.1 connection gets a read deadline in the past (it is not reused).
type reqBody struct {
	rc       io.ReadCloser
	s        *stream
	limit    int64
	n        atomic.Int64
	eof      atomic.Bool
	failed   atomic.Bool
	tooLarge atomic.Bool
	closed   atomic.Bool
	// With a retry policy, rec keeps what was read (up to
	// retryReplayLimit; recOver past it) so a retry can send it again.
	// Written by the reader; read by the handler once eof is set.
	record  bool
	recOver bool
	rec     []byte
}

func (b *reqBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.s.touch()
		if t := b.n.Add(int64(n)); b.limit > 0 && t > b.limit {
			b.tooLarge.Store(true)
			b.s.cancelWith(errBodyTooLarge)
			return 0, errBodyTooLarge
		}
		if b.record && !b.recOver {
			if len(b.rec)+n > retryReplayLimit {
				b.recOver, b.rec = true, nil
			} else {
				b.rec = append(b.rec, p[:n]...)
			}
		}
	}
	if err == io.EOF {
		b.eof.Store(true)
	} else if err != nil && !b.closed.Load() {
		b.failed.Store(true) // the client's side failed, not our Close
	}
	return n, err
}

func (b *reqBody) Close() error {
	if b.eof.Load() || !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	if b.s.r.ProtoMajor == 2 {
		return b.rc.Close() // x/net: breaks the body pipe, safe from any goroutine
	}
	// net/http's HTTP/1.1 body Close would wait for the blocked Read.
	_ = http.NewResponseController(b.s.w).SetReadDeadline(time.Now())
	return nil
}

// stripHopByHop removes the hop-by-hop headers, never forwarded (RFC 9110
// §7.6.1): Connection, Proxy-Connection, Keep-Alive, Transfer-Encoding,
// Upgrade, Te (but "Te: trailers") and Trailer, and those Connection
// names.
func stripHopByHop(h http.Header, keepUpgrade bool) {
	if c, ok := h["Connection"]; ok {
		for _, v := range c {
			for v != "" {
				var tok string
				tok, v, _ = strings.Cut(v, ",")
				tok = strings.TrimSpace(tok)
				if tok != "" && !(keepUpgrade && strings.EqualFold(tok, "upgrade")) {
					delete(h, connectionOption(tok))
				}
			}
		}
	}
	// One pass over the (few) headers rather than a lookup per hop-by-hop
	// name.
	for k, vv := range h {
		switch k {
		case "Te":
			if headerHasToken(vv, "trailers") {
				h[k] = []string{"trailers"}
				continue
			}
		case "Upgrade":
			if keepUpgrade {
				continue
			}
		case "Connection":
			if keepUpgrade {
				h[k] = []string{"Upgrade"}
				continue
			}
		case "Proxy-Connection", "Keep-Alive", "Transfer-Encoding", "Trailer":
		default:
			continue
		}
		delete(h, k)
	}
}

// connectionOption returns the header name a Connection option names,
// without allocating for the common options.
func connectionOption(tok string) string {
	switch {
	case strings.EqualFold(tok, "keep-alive"):
		return "Keep-Alive"
	case strings.EqualFold(tok, "close"):
		return "Close"
	case strings.EqualFold(tok, "upgrade"):
		return "Upgrade"
	case strings.EqualFold(tok, "te"):
		return "Te"
	}
	return http.CanonicalHeaderKey(tok)
}

func headerHasToken(vals []string, tok string) bool {
	for _, v := range vals {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(t), tok) {
				return true
			}
		}
	}
	return false
}

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

// parseGRPCTimeout decodes a grpc-timeout header ("100m", "5S"): at most 8
// digits and one unit.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseUint(v[:len(v)-1], 10, 64)
	if err != nil {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	d := time.Duration(n) * unit
	if n > 0 && d/unit != time.Duration(n) {
		return 1<<63 - 1, true
	}
	return d, true
}
