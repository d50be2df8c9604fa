package hcm

import (
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

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
)

// Entry is one access-log record. Field names follow Envoy's command
// operators; the zap logger uses them (lower snake case) as stable keys.
type Entry struct {
	Start         time.Time
	Method        string
	Path          string
	Protocol      string
	Code          int
	Flags         string
	BytesReceived int64
	BytesSent     int64
	Duration      time.Duration
	UpstreamTime  time.Duration
	XFF           string
	UserAgent     string
	RequestID     string
	Authority     string
	UpstreamHost  string
	Cluster       string
	Route         string
	Details       string
}

// AccessLogger consumes access-log entries. Implementations must not keep
// the *Entry after Log returns.
type AccessLogger interface {
	Log(e *Entry)
}

// ZapAccessLog logs entries at info level with stable keys.
type ZapAccessLog struct{ L *zap.Logger }

// Log implements AccessLogger.
func (z ZapAccessLog) Log(e *Entry) {
	z.L.Info("access",
		zap.Time("start_time", e.Start),
		zap.String("method", e.Method),
		zap.String("path", e.Path),
		zap.String("protocol", e.Protocol),
		zap.Int("response_code", e.Code),
		zap.String("response_flags", orDash(e.Flags)),
		zap.Int64("bytes_received", e.BytesReceived),
		zap.Int64("bytes_sent", e.BytesSent),
		zap.Duration("duration", e.Duration),
		zap.Duration("upstream_service_time", e.UpstreamTime),
		zap.String("x_forwarded_for", e.XFF),
		zap.String("user_agent", e.UserAgent),
		zap.String("request_id", e.RequestID),
		zap.String("authority", e.Authority),
		zap.String("upstream_host", e.UpstreamHost),
		zap.String("upstream_cluster", e.Cluster),
		zap.String("route_name", e.Route),
		zap.String("response_code_details", e.Details),
	)
}

// WriterAccessLog writes Envoy's default text format, one line per entry.
type WriterAccessLog struct {
	mu sync.Mutex
	w  io.Writer
}

// NewWriterAccessLog returns a logger writing to w (serialised).
func NewWriterAccessLog(w io.Writer) *WriterAccessLog { return &WriterAccessLog{w: w} }

var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Log implements AccessLogger.
func (l *WriterAccessLog) Log(e *Entry) {
	bp := lineBufs.Get().(*[]byte)
	b := (*bp)[:0]
	b = append(b, '[')
	b = e.Start.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z")
	b = append(b, "] \""...)
	b = append(b, e.Method...)
	b = append(b, ' ')
	b = append(b, e.Path...)
	b = append(b, ' ')
	b = append(b, e.Protocol...)
	b = append(b, "\" "...)
	b = strconv.AppendInt(b, int64(e.Code), 10)
	b = append(b, ' ')
	b = append(b, orDash(e.Flags)...)
	b = append(b, ' ')
	b = append(b, orDash(strings.ReplaceAll(e.Details, " ", "_"))...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, e.BytesReceived, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, e.BytesSent, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, e.Duration.Milliseconds(), 10)
	b = append(b, ' ')
	if e.UpstreamHost != "" {
		b = strconv.AppendInt(b, e.UpstreamTime.Milliseconds(), 10)
	} else {
		b = append(b, '-')
	}
	for _, s := range [...]string{e.XFF, e.UserAgent, e.RequestID, e.Authority, e.UpstreamHost} {
		b = append(b, " \""...)
		b = append(b, orDash(s)...)
		b = append(b, '"')
	}
	b = append(b, ' ')
	b = append(b, orDash(e.Cluster)...)
	b = append(b, ' ')
	b = append(b, orDash(e.Route)...)
	b = append(b, '\n')
	l.mu.Lock()
	_, _ = l.w.Write(b)
	l.mu.Unlock()
	*bp = b
	lineBufs.Put(bp)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
