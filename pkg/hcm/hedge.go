package hcm

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"time"
)

// Hedging (a route's hedge_policy.hedge_on_per_try_timeout): when an
// attempt's per-try timeout passes, another attempt starts beside it
// instead of replacing it, and the first usable answer wins; the others
// are cancelled. Retriable answers and failures are retried as without
// hedging while no other attempt is in flight.

// hedgeResult is one attempt's outcome.
type hedgeResult struct {
	resp   *http.Response
	err    error
	ep     Endpoint
	addr   string
	n      int // attempt number, 1-based
	start  time.Time
	cancel context.CancelCauseFunc
	br     Breaker // the circuit breaker whose request slot the stream holds
	retry  bool    // the attempt holds a retry slot of br
}

// hedged runs the attempts of a hedged request. It returns the winning
// response, or a final failure with resp nil (or a retriable answer when
// retries are exhausted, flagged URX); the winner's cancel must be called
// when its body is done.
func (s *stream) hedged(cp *clusterPool, cluster string, rp *retryPolicy, rt *route) hedgeResult {
	out := &s.out
	s.viaTransport = true // attempts run on goroutines of their own
	results := make(chan hedgeResult, rp.n+1)
	var tried []netip.AddrPort
	inflight, launched := 0, 0
	var br Breaker
	reserved := false // a retry slot taken for the next launch
	defer func() {
		if reserved {
			br.DoneRetry()
		}
	}()
	launch := func() error {
		ep, err := s.pickHost(cluster, rp, tried)
		if err != nil {
			return &pickError{err}
		}
		retry := false
		switch {
		case launched == 0 && ep.Breaker != nil:
			if !ep.Breaker.TryRequest() {
				return errOverflow
			}
			br = ep.Breaker
		case launched > 0 && reserved:
			reserved, retry = false, true
		case launched > 0 && br != nil:
			if !br.TryRetry() {
				return errOverflow
			}
			retry = true
		}
		tried = append(tried, ep.Addr)
		launched++
		inflight++
		req := *out
		u := *out.URL
		req.URL = &u
		req.URL.Host = cp.addrString(ep.Addr)
		if rt.autoHost {
			req.Host = req.URL.Host
		}
		if launched > 1 {
			req.Body, req.ContentLength = s.replayBody()
		}
		if rt.attemptsUp {
			req.Header = out.Header.Clone() // attempts run at once: a map each
			req.Header["X-Envoy-Attempt-Count"] = []string{strconv.Itoa(launched)}
		}
		useH2 := ep.h2(s.r.ProtoMajor == 2)
		ctx, cancel := context.WithCancelCause(s.ctx)
		res := hedgeResult{ep: ep, addr: req.URL.Host, n: launched, start: time.Now(), cancel: cancel, retry: retry}
		go func() {
			res.resp, res.err = cp.roundTrip(ctx, &req, clientFor(&req, useH2), nil, ep.Breaker)
			results <- res
		}()
		return nil
	}
	// drop cancels the attempts still in flight and closes what they
	// return, off the request's path.
	drop := func() {
		n := inflight
		inflight = 0
		if n == 0 {
			return
		}
		go func() {
			for range n {
				r := <-results
				if r.retry {
					br.DoneRetry()
				}
				r.cancel(context.Canceled)
				if r.resp != nil {
					r.resp.Body.Close()
				}
			}
		}()
	}
	if err := launch(); err != nil {
		return hedgeResult{err: err, br: br}
	}
	timer := time.NewTimer(rp.perTry)
	defer timer.Stop()
	var last hedgeResult // the latest attempt that failed
	for {
		select {
		case <-timer.C:
			// Per-try timeout: hedge, if retries are left and the body can
			// be sent again; the late attempt keeps running.
			if launched <= rp.n && s.canReplay() && s.ctx.Err() == nil {
				if err := launch(); err == nil {
					timer.Reset(rp.perTry)
				}
			}
		case r := <-results:
			inflight--
			if r.retry {
				br.DoneRetry()
			}
			s.reportHealth(r.ep, r.resp, r.err, false)
			if r.err == nil && s.ctx.Err() == nil {
				retry := rp.retriableResponse(r.resp)
				last := inflight == 0 && (launched > rp.n || !s.canReplay())
				if retry && inflight == 0 && !last && br != nil {
					// The retry must have its slot before this answer is
					// dropped: without one, the answer stands.
					if reserved = br.TryRetry(); !reserved {
						last = true
					}
				}
				if !retry || last {
					if retry && launched > rp.n {
						s.addFlag(FlagRetryLimitExceeded)
					}
					s.e.UpstreamHost, s.e.Attempts = r.addr, launched
					drop()
					r.br = br
					return r
				}
				discard(r.resp)
				r.resp = nil
			}
			r.cancel(context.Canceled)
			last = r
			if inflight > 0 {
				continue // another attempt may still answer
			}
			var de *dialError
			if r.err != nil && (s.ctx.Err() != nil || errors.Is(r.err, errOverflow) || !rp.retriableError(errors.As(r.err, &de), false)) {
				s.e.UpstreamHost, s.e.Attempts = r.addr, launched
				r.br = br
				return r
			}
			if launched > rp.n || !s.canReplay() {
				if launched > 1 {
					s.addFlag(FlagRetryLimitExceeded)
				}
				s.e.UpstreamHost, s.e.Attempts = r.addr, launched
				r.br = br
				return r
			}
			if !s.sleep(rp.backoff(launched)) {
				return hedgeResult{err: context.Cause(s.ctx), addr: r.addr, br: br}
			}
			if err := launch(); err != nil {
				if errors.Is(err, errOverflow) {
					r.br = br // no retry slot: the failure stands
					return r
				}
				return hedgeResult{err: err, br: br}
			}
			timer.Reset(rp.perTry)
		case <-s.ctx.Done():
			drop()
			return hedgeResult{err: context.Cause(s.ctx), addr: last.addr, br: br}
		}
	}
}

// pickError is a failure to pick an endpoint (NC or UH, not an upstream
// failure).
type pickError struct{ err error }

func (e *pickError) Error() string { return e.err.Error() }
func (e *pickError) Unwrap() error { return e.err }
