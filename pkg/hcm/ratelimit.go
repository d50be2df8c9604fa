package hcm

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshlet/meshlet/internal/fraction"
)

// The local rate limit filter (envoy.filters.http.local_ratelimit): a
// token bucket per filter config (the filter's own, or a route's or
// virtual host's typed_per_filter_config under its name); a request that
// finds it empty is answered 429 (RL) when the filter is enabled and
// enforced for it.

const (
	rateLimitFilterName = "envoy.filters.http.local_ratelimit"
	rateLimitTypeURL    = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
)

type tokenBucket struct {
	max, perFill int64
	every        time.Duration
	mu           sync.Mutex
	tokens       int64
	last         time.Time
}

// take takes one token; it also reports the tokens left and when the
// next fill comes.
func (b *tokenBucket) take() (bool, int64, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if n := int64(now.Sub(b.last) / b.every); n > 0 {
		b.tokens = min(b.max, b.tokens+n*b.perFill)
		b.last = b.last.Add(time.Duration(n) * b.every)
	}
	reset := b.every - now.Sub(b.last)
	if b.tokens == 0 {
		return false, 0, reset
	}
	b.tokens--
	return true, b.tokens, reset
}

// rateLimit is a compiled LocalRateLimit.
type rateLimit struct {
	bucket            *tokenBucket // nil: no bucket, the filter does nothing
	status            int
	enabled, enforced fraction.Percent
	respAdd           []headerOp
	reqAddNotEnforced []headerOp
	xHeaders          bool
	retryAfter        bool
	exhausted         bool // gRPC: RESOURCE_EXHAUSTED instead of UNAVAILABLE
}

func decodeRateLimit(a *anypb.Any) (*rateLimit, error) {
	var c lrlv3.LocalRateLimit
	if err := unwrapFilterConfig(a, &c); err != nil {
		return nil, err
	}
	rl := &rateLimit{status: http.StatusTooManyRequests, xHeaders: c.GetEnableXRatelimitHeaders() == ratelimitv3.XRateLimitHeadersRFCVersion_DRAFT_VERSION_03,
		retryAfter: c.GetEnableRetryAfterHeader(), exhausted: c.GetRateLimitedAsResourceExhausted()}
	if st := c.GetStatus(); st != nil && st.GetCode() != 0 {
		rl.status = int(st.GetCode())
	}
	// Envoy's defaults: enabled and enforced for 0 % of requests.
	rl.enabled = fraction.FromProto(c.GetFilterEnabled().GetDefaultValue())
	rl.enforced = fraction.FromProto(c.GetFilterEnforced().GetDefaultValue())
	if tb := c.GetTokenBucket(); tb != nil {
		b := &tokenBucket{max: int64(tb.GetMaxTokens()), perFill: 1, every: tb.GetFillInterval().AsDuration(), last: time.Now()}
		if v := tb.GetTokensPerFill(); v != nil {
			b.perFill = int64(v.GetValue())
		}
		if b.every <= 0 || b.max <= 0 {
			return nil, fmt.Errorf("local_ratelimit token_bucket: max_tokens and fill_interval must be positive")
		}
		b.tokens = b.max
		rl.bucket = b
	}
	var err error
	if rl.respAdd, err = compileHeaderOps(c.GetResponseHeadersToAdd()); err != nil {
		return nil, fmt.Errorf("local_ratelimit response_headers_to_add: %w", err)
	}
	if rl.reqAddNotEnforced, err = compileHeaderOps(c.GetRequestHeadersToAddWhenNotEnforced()); err != nil {
		return nil, fmt.Errorf("local_ratelimit request_headers_to_add_when_not_enforced: %w", err)
	}
	return rl, nil
}

// limit applies rl to the stream: false when it answered 429.
func (s *stream) limit(rl *rateLimit) bool {
	if rl.bucket == nil || !rl.enabled.Draw() {
		return true
	}
	ok, left, reset := rl.bucket.take()
	if ok {
		if rl.xHeaders {
			// The answer, whoever gives it, says what is left.
			s.rlHeaders, s.rlLimit, s.rlLeft, s.rlReset = true, rl.bucket.max, left, resetSeconds(reset)
		}
		return true
	}
	if !rl.enforced.Draw() {
		applyHeaderOps(s.r.Header, rl.reqAddNotEnforced, nil, &s.e)
		return true
	}
	h := s.w.Header()
	if rl.xHeaders {
		s.rlHeaders, s.rlLimit, s.rlLeft, s.rlReset = true, rl.bucket.max, left, resetSeconds(reset)
	}
	if rl.retryAfter {
		h["Retry-After"] = []string{strconv.FormatInt(resetSeconds(reset), 10)}
	}
	s.e.Code = rl.status
	applyHeaderOps(h, rl.respAdd, nil, &s.e)
	if s.grpc {
		s.localGRPC = 14 + 1 // UNAVAILABLE, as for an HTTP 429
		if rl.exhausted {
			s.localGRPC = 8 + 1 // RESOURCE_EXHAUSTED
		}
	}
	s.local(rl.status, FlagRateLimited, "local_rate_limited", "local_rate_limited")
	return false
}

// resetSeconds rounds a wait up to whole seconds.
func resetSeconds(d time.Duration) int64 { return int64((d + time.Second - 1) / time.Second) }

// addRateLimitHeaders adds the draft x-ratelimit headers the local rate
// limit asked for (enable_x_ratelimit_headers) to the response head.
func (s *stream) addRateLimitHeaders(h http.Header) {
	h["X-Ratelimit-Limit"] = []string{strconv.FormatInt(s.rlLimit, 10)}
	h["X-Ratelimit-Remaining"] = []string{strconv.FormatInt(s.rlLeft, 10)}
	h["X-Ratelimit-Reset"] = []string{strconv.FormatInt(s.rlReset, 10)}
}
