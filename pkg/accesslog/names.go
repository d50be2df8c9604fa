package accesslog

import (
	"strconv"
	"strings"
)

// longNames maps Envoy's short response flags to %RESPONSE_FLAGS_LONG%.
var longNames = map[string]string{
	"NR":   "NoRouteFound",
	"NC":   "NoClusterFound",
	"UH":   "NoHealthyUpstream",
	"UF":   "UpstreamConnectionFailure",
	"UT":   "UpstreamRequestTimeout",
	"UC":   "UpstreamConnectionTermination",
	"UO":   "UpstreamOverflow",
	"URX":  "UpstreamRetryLimitExceeded",
	"DC":   "DownstreamConnectionTermination",
	"SI":   "StreamIdleTimeout",
	"DPE":  "DownstreamProtocolError",
	"UPE":  "UpstreamProtocolError",
	"LR":   "LocalReset",
	"UR":   "UpstreamRemoteReset",
	"DT":   "DurationTimeout",
	"RL":   "RateLimited",
	"FI":   "FaultInjected",
	"DI":   "DelayInjected",
	"UAEX": "UnauthorizedExternalService",
	"DR":   "DirectResponse",
	"RT":   "RequestTimeout",
	"OM":   "OverloadManager",
	"DF":   "DnsResolutionFailed",
}

// validFlags are the flags a response_flag_filter may name (Envoy rejects
// others).
var validFlags = func() map[string]bool {
	m := map[string]bool{}
	for k := range longNames {
		m[k] = true
	}
	for _, k := range []string{"LH", "IH", "RLSE", "SFR", "NFCF", "UMSDR", "RFCF", "DO"} {
		m[k] = true
	}
	return m
}()

func longFlags(short string) string {
	parts := strings.Split(short, ",")
	for i, p := range parts {
		if l, ok := longNames[p]; ok {
			parts[i] = l
		}
	}
	return strings.Join(parts, ",")
}

var grpcNames = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

var grpcCamelNames = [...]string{"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
	"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
	"Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated"}

// grpcCode parses a gRPC status name (either spelling) or number.
func grpcCode(s string) (int, bool) {
	for i := range grpcNames {
		if s == grpcNames[i] || s == grpcCamelNames[i] {
			return i, true
		}
	}
	return 0, false
}

func grpcSnake(c int) string {
	if c >= 0 && c < len(grpcNames) {
		return grpcNames[c]
	}
	return strconv.Itoa(c)
}

func grpcCamel(c int) string {
	if c >= 0 && c < len(grpcCamelNames) {
		return grpcCamelNames[c]
	}
	return strconv.Itoa(c)
}

// grpcStatus is the stream's grpc-status: from the trailers, or from the
// headers of a trailers-only response.
func grpcStatus(e *Entry) (int, bool) {
	v, ok := first(e.RespTrailers, "Grpc-Status")
	if !ok {
		v, ok = first(e.RespHeaders, "Grpc-Status")
	}
	if !ok {
		return 0, false
	}
	n := 0
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' || i > 3 {
			return 0, false
		}
		n = n*10 + int(v[i]-'0')
	}
	return n, v != ""
}
