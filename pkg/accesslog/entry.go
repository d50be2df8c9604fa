package accesslog

import (
	"net/http"
	"net/netip"
	"time"
)

// Type says what an Entry records, as Envoy's AccessLogType.
type Type uint8

// Entry types.
const (
	DownstreamEnd    Type = iota // an HTTP stream finished
	TCPConnectionEnd             // a tcp_proxy connection closed
)

// Entry is one access-log record: a finished HTTP stream or TCP
// connection. Field names follow Envoy's command operators. Loggers must
// not keep an *Entry, nor its header maps, after Log returns.
type Entry struct {
	Type  Type
	Start time.Time

	// Request line as received: method, request target, protocol
	// ("HTTP/1.1", "HTTP/2"; empty for TCP), host.
	Method, Path, Protocol, Authority string

	Code        int    // response code sent downstream (0: none)
	Flags       string // Envoy's short response flags, comma-separated
	Details     string // %RESPONSE_CODE_DETAILS%
	TermDetails string // %CONNECTION_TERMINATION_DETAILS%

	BytesReceived, BytesSent int64
	Duration                 time.Duration // start to end
	// UpstreamTime is how long the upstream took to answer with headers
	// (x-envoy-upstream-service-time); FirstByte is when, counted from
	// Start, the response's first byte came from upstream (0: never).
	UpstreamTime, FirstByte time.Duration

	RequestID    string
	UpstreamHost string // address:port of the endpoint used
	Cluster      string
	Route        string
	// UpstreamFailure is %UPSTREAM_TRANSPORT_FAILURE_REASON%.
	UpstreamFailure string
	Attempts        int // upstream attempts (0: no upstream)

	// DownstreamLocal is the address the client dialled (the original
	// destination of a captured connection), DownstreamRemote the client.
	DownstreamLocal, DownstreamRemote netip.AddrPort
	ConnID                            uint64

	// Request headers (as forwarded, after header manipulation), response
	// headers and trailers (as sent downstream); any may be nil.
	ReqHeaders, RespHeaders, RespTrailers http.Header
}

// reqHeader returns request header key (canonical) the way %REQ% reads it.
func (e *Entry) reqHeader(key string) (string, bool) {
	switch key {
	case ":method":
		return e.Method, e.Method != ""
	case ":path":
		return e.Path, e.Path != ""
	case ":authority":
		return e.Authority, e.Authority != ""
	case ":scheme":
		return "http", e.Protocol != ""
	}
	return first(e.ReqHeaders, key)
}

func first(h http.Header, key string) (string, bool) {
	v := h[key]
	if len(v) == 0 {
		return "", false
	}
	return v[0], true
}
