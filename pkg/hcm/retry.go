package hcm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/meshlet/meshlet/pkg/match"
)

// retryOn is the set of conditions of a retry policy's retry_on.
type retryOn uint32

const (
	onConnectFailure   retryOn = 1 << iota // connect-failure
	onReset                                // reset, refused-stream, reset-before-request
	on5xx                                  // 5xx (and connect failures, resets, per-try timeouts)
	onGatewayError                         // 502, 503, 504 (and connect failures, resets, per-try timeouts)
	onRetriable4xx                         // 409
	onRetriableCodes                       // retriable_status_codes
	onRetriableHeaders                     // retriable_headers
	onGRPCCancelled
	onGRPCDeadline
	onGRPCResource
	onGRPCUnavailable
	onGRPCInternal
)

var retryOnNames = map[string]retryOn{
	"connect-failure":        onConnectFailure,
	"reset":                  onReset,
	"refused-stream":         onReset,
	"reset-before-request":   onReset,
	"5xx":                    on5xx,
	"gateway-error":          onGatewayError,
	"retriable-4xx":          onRetriable4xx,
	"retriable-status-codes": onRetriableCodes,
	"retriable-headers":      onRetriableHeaders,
	"cancelled":              onGRPCCancelled,
	"deadline-exceeded":      onGRPCDeadline,
	"resource-exhausted":     onGRPCResource,
	"unavailable":            onGRPCUnavailable,
	"internal":               onGRPCInternal,
}

// Envoy's defaults.
const (
	defaultRetryBase     = 25 * time.Millisecond
	retryReplayLimit     = 64 << 10 // request bytes kept to replay a request body
	defaultHostSelection = 1
)

// retryPolicy is a compiled RetryPolicy.
type retryPolicy struct {
	n           int // num_retries
	on          retryOn
	codes       []int
	headers     []match.Header // retriable_headers
	perTry      time.Duration
	base, max   time.Duration
	otherHosts  bool // retry_host_predicate previous_hosts
	hostChoices int  // host_selection_retry_max_attempts
}

// compileRetry compiles a route's (or its virtual host's) retry policy;
// nil when it retries on nothing.
func compileRetry(rp *routev3.RetryPolicy) (*retryPolicy, error) {
	if rp == nil {
		return nil, nil
	}
	p := &retryPolicy{n: 1, base: defaultRetryBase, hostChoices: defaultHostSelection}
	if rp.GetNumRetries() != nil {
		p.n = int(rp.GetNumRetries().GetValue())
	}
	for _, tok := range strings.Split(rp.GetRetryOn(), ",") {
		// Unknown conditions (envoy-ratelimited, http3-post-connect-failure)
		// never occur here.
		p.on |= retryOnNames[strings.TrimSpace(tok)]
	}
	for _, c := range rp.GetRetriableStatusCodes() {
		p.codes = append(p.codes, int(c))
	}
	for _, h := range rp.GetRetriableHeaders() {
		hm, err := match.CompileHeader(h)
		if err != nil {
			return nil, fmt.Errorf("retry_policy retriable_headers: %w", err)
		}
		p.headers = append(p.headers, hm)
	}
	if d := rp.GetPerTryTimeout(); d != nil {
		p.perTry = d.AsDuration()
	}
	if b := rp.GetRetryBackOff(); b != nil {
		if b.GetBaseInterval() != nil {
			p.base = b.GetBaseInterval().AsDuration()
		}
		if b.GetMaxInterval() != nil {
			p.max = b.GetMaxInterval().AsDuration()
			if p.max < p.base {
				return nil, fmt.Errorf("retry_policy retry_back_off: max_interval %v below base_interval %v", p.max, p.base)
			}
		}
	}
	if p.max == 0 {
		p.max = 10 * p.base
	}
	for _, hp := range rp.GetRetryHostPredicate() {
		if hp.GetName() == "envoy.retry_host_predicates.previous_hosts" ||
			strings.HasSuffix(hp.GetTypedConfig().GetTypeUrl(), "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate") {
			p.otherHosts = true
		}
	}
	if n := rp.GetHostSelectionRetryMaxAttempts(); n > 0 {
		p.hostChoices = int(n)
	}
	if p.on == 0 || p.n <= 0 {
		return nil, nil
	}
	return p, nil
}

// retriableError: a failed attempt that got no response. dial: the
// connection could not be made; perTry: its per-try timeout cut it.
func (p *retryPolicy) retriableError(dial, perTry bool) bool {
	const failures = on5xx | onGatewayError | onReset
	switch {
	case dial:
		return p.on&(failures|onConnectFailure) != 0
	case perTry:
		return p.on&(on5xx|onGatewayError|onReset) != 0
	}
	return p.on&failures != 0
}

// retriableResponse: response headers that ask for another attempt.
func (p *retryPolicy) retriableResponse(resp *http.Response) bool {
	c := resp.StatusCode
	switch {
	case p.on&on5xx != 0 && c >= 500 && c <= 599,
		p.on&onGatewayError != 0 && (c == 502 || c == 503 || c == 504),
		p.on&onRetriable4xx != 0 && c == 409:
		return true
	}
	if p.on&onRetriableCodes != 0 {
		for _, rc := range p.codes {
			if rc == c {
				return true
			}
		}
	}
	if p.on&onRetriableHeaders != 0 {
		for i := range p.headers {
			h := &p.headers[i]
			if h.Match(match.Get(resp.Header, h.Name)) {
				return true
			}
		}
	}
	if p.on&(onGRPCCancelled|onGRPCDeadline|onGRPCResource|onGRPCUnavailable|onGRPCInternal) != 0 {
		// A trailers-only gRPC answer carries its status in the headers.
		if v := resp.Header["Grpc-Status"]; len(v) == 1 {
			switch st, _ := strconv.Atoi(v[0]); st {
			case 1:
				return p.on&onGRPCCancelled != 0
			case 4:
				return p.on&onGRPCDeadline != 0
			case 8:
				return p.on&onGRPCResource != 0
			case 13:
				return p.on&onGRPCInternal != 0
			case 14:
				return p.on&onGRPCUnavailable != 0
			}
		}
	}
	return false
}

// backoff is the wait before retry number k (1-based): fully jittered,
// exponential from base, capped at max (Envoy's strategy).
func (p *retryPolicy) backoff(k int) time.Duration {
	ceil := p.base << min(k-1, 20)
	if ceil > p.max || ceil <= 0 {
		ceil = p.max
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

var errPerTryTimeout = errors.New("upstream per-try timeout")

// pickHost picks the attempt's endpoint; with previous_hosts it asks again
// (up to host_selection_retry_max_attempts picks) for one not tried yet.
func (s *stream) pickHost(cluster string, rp *retryPolicy, tried []netip.AddrPort) (Endpoint, error) {
	in := s.pickInput()
	ep, err := s.m.up.Pick(s.ctx, cluster, in)
	if err != nil || len(tried) == 0 {
		return ep, err
	}
	for i := 1; i < rp.hostChoices && slices.Contains(tried, ep.Addr); i++ {
		if ep, err = s.m.up.Pick(s.ctx, cluster, in); err != nil {
			return ep, err
		}
	}
	return ep, nil
}

// canReplay reports whether the request can be sent again: no body, or a
// body read to its end, within retryReplayLimit and without trailers.
func (s *stream) canReplay() bool {
	b := s.body
	return b == nil || (b.record && b.eof.Load() && !b.recOver && len(s.r.Trailer) == 0)
}

// sleep waits d, or less if the stream ends (false).
func (s *stream) sleep(d time.Duration) bool {
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.ctx.Done():
		}
	}
	return s.ctx.Err() == nil
}

// discard drops a response not forwarded (a retried attempt), keeping its
// connection when the rest of a small body is at hand.
func discard(resp *http.Response) {
	if resp.ContentLength >= 0 && resp.ContentLength <= 4<<10 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	}
	resp.Body.Close()
}

// perTry is one attempt's per_try_timeout: until the attempt has its
// response headers (the route timeout covers the rest and all attempts).
type perTry struct {
	t      *time.Timer
	mu     sync.Mutex
	done   bool
	fired  bool
	cancel context.CancelCauseFunc // the attempt's context (transports), nil with viaRC
}

// startPerTry arms the attempt's timer. viaRC: the synchronous client
// watches the stream's reqCancel, so the timer cuts the upstream
// connection in use; else it cancels the context it returns.
func (s *stream) startPerTry(d time.Duration, viaRC bool) (context.Context, *perTry) {
	pt := &perTry{}
	ctx := s.ctx
	if viaRC {
		s.rc.arm()
	} else {
		ctx, pt.cancel = context.WithCancelCause(s.ctx)
	}
	pt.t = time.AfterFunc(d, func() {
		pt.mu.Lock()
		defer pt.mu.Unlock()
		if pt.done {
			return
		}
		pt.fired = true
		if pt.cancel != nil {
			pt.cancel(errPerTryTimeout)
		} else {
			s.rc.cut()
		}
	})
	return ctx, pt
}

// finish ends the timer once the attempt returned; true: it had fired.
func (pt *perTry) finish() bool {
	pt.t.Stop()
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pt.done = true
	return pt.fired
}

// replayBody is the request body of a retry or hedge: the copy kept while
// the first attempt sent it (canReplay), or none.
func (s *stream) replayBody() (io.ReadCloser, int64) {
	if s.body == nil || len(s.body.rec) == 0 {
		return http.NoBody, 0
	}
	return newReplay(s.body.rec), int64(len(s.body.rec))
}

// newReplay is a request body sending rec again (a retry, a hedge, a
// mirror).
func newReplay(rec []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(rec)) }
