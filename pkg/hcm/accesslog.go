package hcm

import "github.com/meshlet/meshlet/pkg/accesslog"

// Response flags, as in Envoy's %RESPONSE_FLAGS%.
const (
	FlagNoRoute             = "NR"  // no route matched (404)
	FlagNoCluster           = "NC"  // route's cluster unknown (503)
	FlagNoHealthyUpstream   = "UH"  // cluster has no usable endpoint (503)
	FlagUpstreamConnFailure = "UF"  // connecting upstream failed (503)
	FlagUpstreamTimeout     = "UT"  // route timeout fired (504)
	FlagUpstreamConnTerm    = "UC"  // upstream closed/reset the stream (503 or reset)
	FlagDownstreamConnTerm  = "DC"  // client went away mid-request
	FlagRetryLimitExceeded  = "URX" // retries exhausted
	FlagStreamIdleTimeout   = "SI"  // stream_idle_timeout fired (408 or reset)
	FlagDownstreamProtoErr  = "DPE" // malformed / oversized request
	FlagLocalReset          = "LR"  // we reset the stream
	FlagDirectResponse      = "DR"  // answered by direct_response/redirect (Envoy logs "-"; kept for clarity)
	FlagRequestTimeout      = "RT"  // HCM request_timeout (Envoy logs via details; we flag it)
	FlagFaultInjected       = "FI"  // the fault filter aborted the request
	FlagDelayInjected       = "DI"  // the fault filter delayed the request
	FlagDurationTimeout     = "DT"  // max_stream_duration reached (408 or reset)
	FlagUpstreamOverflow    = "UO"  // the cluster's circuit breaker refused the request (503)
	FlagRateLimited         = "RL"  // the local rate limit filter refused the request (429)
)

// AccessLogger consumes access-log entries (pkg/accesslog's Logger and
// Zap, or several). Implementations must not keep the *Entry, nor its
// header maps, after Log returns.
type AccessLogger interface {
	Log(e *accesslog.Entry)
}
