package hcm

import (
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshlet/meshlet/internal/fraction"
	"github.com/meshlet/meshlet/pkg/match"
)

// The fault filter (envoy.filters.http.fault): Istio's VirtualService
// fault injection. Its place in http_filters turns it on; its config, or a
// route's or virtual host's typed_per_filter_config under its name,
// says what to inject.

const (
	faultFilterName = "envoy.filters.http.fault"
	faultTypeURL    = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
)

// Headers that drive faults from the request (header_delay, header_abort).
const (
	hdrFaultDelay        = "X-Envoy-Fault-Delay-Request"
	hdrFaultDelayPct     = "X-Envoy-Fault-Delay-Request-Percentage"
	hdrFaultAbort        = "X-Envoy-Fault-Abort-Request"
	hdrFaultAbortGRPC    = "X-Envoy-Fault-Abort-Grpc-Request"
	hdrFaultAbortPct     = "X-Envoy-Fault-Abort-Request-Percentage"
	hdrDownstreamService = "X-Envoy-Downstream-Service-Node"
)

// lowerBy applies a request's percentage header (a numerator over the
// same denominator), which may only lower the configured one.
func lowerBy(p fraction.Percent, h http.Header, key string) fraction.Percent {
	if v := h.Get(key); v != "" {
		if n, err := strconv.ParseUint(v, 10, 32); err == nil {
			p = p.Lower(n)
		}
	}
	return p
}

// faultPolicy is a compiled HTTPFault.
type faultPolicy struct {
	delay       time.Duration
	delayHeader bool
	delayPct    fraction.Percent
	hasDelay    bool

	abortHTTP   int
	abortGRPC   int // -1: none
	abortHeader bool
	abortPct    fraction.Percent
	abortBody   string
	hasAbort    bool

	cluster   string
	headers   []match.Header
	nodes     []string
	maxActive int64 // 0: unlimited
	active    atomic.Int64
}

func compileFault(f *faultv3.HTTPFault) (*faultPolicy, error) {
	p := &faultPolicy{abortGRPC: -1, cluster: f.GetUpstreamCluster(), nodes: f.GetDownstreamNodes()}
	if d := f.GetDelay(); d != nil {
		p.hasDelay = true
		p.delayPct = fraction.FromProto(d.GetPercentage())
		switch {
		case d.GetFixedDelay() != nil:
			p.delay = d.GetFixedDelay().AsDuration()
		case d.GetHeaderDelay() != nil:
			p.delayHeader = true
		default:
			return nil, fmt.Errorf("fault delay: fixed_delay or header_delay is required")
		}
	}
	if a := f.GetAbort(); a != nil {
		p.hasAbort = true
		p.abortPct = fraction.FromProto(a.GetPercentage())
		p.abortBody = a.GetResponseBody()
		switch e := a.GetErrorType().(type) {
		case *faultv3.FaultAbort_HttpStatus:
			if e.HttpStatus < 200 || e.HttpStatus >= 600 {
				return nil, fmt.Errorf("fault abort: http_status %d outside [200, 600)", e.HttpStatus)
			}
			p.abortHTTP = int(e.HttpStatus)
		case *faultv3.FaultAbort_GrpcStatus:
			p.abortGRPC = int(e.GrpcStatus)
		case *faultv3.FaultAbort_HeaderAbort_:
			p.abortHeader = true
		default:
			return nil, fmt.Errorf("fault abort: http_status, grpc_status or header_abort is required")
		}
	}
	for _, h := range f.GetHeaders() {
		hm, err := match.CompileHeader(h)
		if err != nil {
			return nil, fmt.Errorf("fault headers: %w", err)
		}
		p.headers = append(p.headers, hm)
	}
	if m := f.GetMaxActiveFaults(); m != nil {
		p.maxActive = int64(m.GetValue())
	}
	return p, nil
}

// decodeFault reads an HTTPFault from a filter's typed_config or a
// typed_per_filter_config entry (bare, or wrapped in a FilterConfig).
func decodeFault(a *anypb.Any) (*faultPolicy, error) {
	var f faultv3.HTTPFault
	if err := unwrapFilterConfig(a, &f); err != nil {
		return nil, err
	}
	return compileFault(&f)
}

// applies reports whether the policy's conditions hold for the request.
func (p *faultPolicy) applies(cluster string, h http.Header, v *reqView) bool {
	if p.cluster != "" && p.cluster != cluster {
		return false
	}
	for i := range p.headers {
		if hm := &p.headers[i]; !hm.Match(headerValue(hm, v)) {
			return false
		}
	}
	if len(p.nodes) > 0 {
		n := h.Get(hdrDownstreamService)
		found := false
		for _, x := range p.nodes {
			found = found || x == n
		}
		if !found {
			return false
		}
	}
	return true
}

// injectFault delays and/or aborts the stream as p says; false when the
// stream was answered (aborted) or ended during the delay.
func (s *stream) injectFault(p *faultPolicy) bool {
	h := s.r.Header
	delay := p.delay
	doDelay := false
	if p.hasDelay {
		if p.delayHeader {
			ms, err := strconv.ParseUint(h.Get(hdrFaultDelay), 10, 32)
			delay = time.Duration(ms) * time.Millisecond
			doDelay = err == nil && ms > 0 && lowerBy(p.delayPct, h, hdrFaultDelayPct).Draw()
		} else {
			doDelay = delay > 0 && p.delayPct.Draw()
		}
	}
	code, grpcCode, doAbort := p.abortHTTP, p.abortGRPC, false
	if p.hasAbort {
		if p.abortHeader {
			code, grpcCode = 0, -1
			if n, err := strconv.Atoi(h.Get(hdrFaultAbort)); err == nil && n >= 200 && n < 600 {
				code = n
			} else if n, err := strconv.Atoi(h.Get(hdrFaultAbortGRPC)); err == nil && n >= 0 {
				grpcCode = n
			}
			doAbort = (code != 0 || grpcCode >= 0) && lowerBy(p.abortPct, h, hdrFaultAbortPct).Draw()
		} else {
			doAbort = p.abortPct.Draw()
		}
	}
	if !doDelay && !doAbort {
		return true
	}
	if p.maxActive > 0 {
		if p.active.Add(1) > p.maxActive {
			p.active.Add(-1)
			return true // max_active_faults reached: no fault for this one
		}
		defer p.active.Add(-1)
	}
	if doDelay {
		s.addFlag(FlagDelayInjected)
		if !s.sleep(delay) {
			s.addFlag(FlagDownstreamConnTerm)
			return false
		}
	}
	if !doAbort {
		return true
	}
	body := p.abortBody
	if body == "" {
		body = "fault filter abort"
	}
	switch {
	case grpcCode >= 0 && s.grpc:
		s.localGRPC = grpcCode + 1
		s.local(http.StatusOK, FlagFaultInjected, "fault_filter_abort", body)
	case grpcCode >= 0:
		s.local(grpcToHTTP(grpcCode), FlagFaultInjected, "fault_filter_abort", body)
	default:
		s.local(code, FlagFaultInjected, "fault_filter_abort", body)
	}
	return false
}

// grpcToHTTP is the HTTP status for a gRPC status sent to a non-gRPC client.
func grpcToHTTP(c int) int {
	switch c {
	case 0:
		return http.StatusOK
	case 1:
		return 499
	case 3, 9, 11:
		return http.StatusBadRequest
	case 4:
		return http.StatusGatewayTimeout
	case 5:
		return http.StatusNotFound
	case 6, 10:
		return http.StatusConflict
	case 7:
		return http.StatusForbidden
	case 8:
		return http.StatusTooManyRequests
	case 12:
		return http.StatusNotImplemented
	case 14:
		return http.StatusServiceUnavailable
	case 16:
		return http.StatusUnauthorized
	}
	return http.StatusInternalServerError
}
