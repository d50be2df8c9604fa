package accesslog

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/meshlet/meshlet/internal/uuid"
)

// op is one command operator.
type op uint8

const (
	opLit op = iota
	opDash
	opStartTime
	opReq
	opResp
	opTrailer
	opReqNoQuery
	opProtocol
	opCode
	opCodeDetails
	opTermDetails
	opFlags
	opFlagsLong
	opBytesReceived
	opBytesSent
	opDuration
	opRespDuration
	opRespTxDuration
	opUpstreamHost
	opUpstreamHostNoPort
	opUpstreamPort
	opUpstreamCluster
	opUpstreamFailure
	opAttempts
	opDLocal
	opDLocalNoPort
	opDLocalPort
	opDRemote
	opDRemoteNoPort
	opDRemotePort
	opRouteName
	opConnID
	opGRPCStatus
	opLogType
	opUniqueID
	opRequestID
)

type argRule uint8

const (
	argNone argRule = iota
	argOptional
	argRequired
	argAny // accepted and ignored (operators without a value here)
)

var operators = map[string]struct {
	op  op
	arg argRule
}{
	"START_TIME":                                    {opStartTime, argOptional},
	"REQ":                                           {opReq, argRequired},
	"RESP":                                          {opResp, argRequired},
	"TRAILER":                                       {opTrailer, argRequired},
	"REQ_WITHOUT_QUERY":                             {opReqNoQuery, argRequired},
	"PROTOCOL":                                      {opProtocol, argNone},
	"UPSTREAM_PROTOCOL":                             {opProtocol, argNone},
	"RESPONSE_CODE":                                 {opCode, argNone},
	"RESPONSE_CODE_DETAILS":                         {opCodeDetails, argNone},
	"CONNECTION_TERMINATION_DETAILS":                {opTermDetails, argNone},
	"RESPONSE_FLAGS":                                {opFlags, argNone},
	"RESPONSE_FLAGS_LONG":                           {opFlagsLong, argNone},
	"BYTES_RECEIVED":                                {opBytesReceived, argNone},
	"BYTES_SENT":                                    {opBytesSent, argNone},
	"UPSTREAM_WIRE_BYTES_SENT":                      {opDash, argNone},
	"UPSTREAM_WIRE_BYTES_RECEIVED":                  {opDash, argNone},
	"DURATION":                                      {opDuration, argNone},
	"REQUEST_DURATION":                              {opDash, argNone},
	"REQUEST_TX_DURATION":                           {opDash, argNone},
	"RESPONSE_DURATION":                             {opRespDuration, argNone},
	"RESPONSE_TX_DURATION":                          {opRespTxDuration, argNone},
	"UPSTREAM_HOST":                                 {opUpstreamHost, argNone},
	"UPSTREAM_REMOTE_ADDRESS":                       {opUpstreamHost, argNone},
	"UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":          {opUpstreamHostNoPort, argNone},
	"UPSTREAM_REMOTE_PORT":                          {opUpstreamPort, argNone},
	"UPSTREAM_CLUSTER":                              {opUpstreamCluster, argNone},
	"UPSTREAM_CLUSTER_RAW":                          {opUpstreamCluster, argNone},
	"UPSTREAM_LOCAL_ADDRESS":                        {opDash, argNone},
	"UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":           {opDash, argNone},
	"UPSTREAM_LOCAL_PORT":                           {opDash, argNone},
	"UPSTREAM_TRANSPORT_FAILURE_REASON":             {opUpstreamFailure, argNone},
	"UPSTREAM_REQUEST_ATTEMPT_COUNT":                {opAttempts, argNone},
	"DOWNSTREAM_LOCAL_ADDRESS":                      {opDLocal, argNone},
	"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":         {opDLocalNoPort, argNone},
	"DOWNSTREAM_LOCAL_PORT":                         {opDLocalPort, argNone},
	"DOWNSTREAM_DIRECT_LOCAL_ADDRESS":               {opDLocal, argNone},
	"DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT":  {opDLocalNoPort, argNone},
	"DOWNSTREAM_DIRECT_LOCAL_PORT":                  {opDLocalPort, argNone},
	"DOWNSTREAM_REMOTE_ADDRESS":                     {opDRemote, argNone},
	"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":        {opDRemoteNoPort, argNone},
	"DOWNSTREAM_REMOTE_PORT":                        {opDRemotePort, argNone},
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS":              {opDRemote, argNone},
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": {opDRemoteNoPort, argNone},
	"DOWNSTREAM_DIRECT_REMOTE_PORT":                 {opDRemotePort, argNone},
	"ROUTE_NAME":                                    {opRouteName, argNone},
	"CONNECTION_ID":                                 {opConnID, argNone},
	"GRPC_STATUS":                                   {opGRPCStatus, argOptional},
	"GRPC_STATUS_NUMBER":                            {opGRPCStatus, argNone},
	"ACCESS_LOG_TYPE":                               {opLogType, argNone},
	"UNIQUE_ID":                                     {opUniqueID, argNone},
	"STREAM_ID":                                     {opRequestID, argNone},
	"HOSTNAME":                                      {opLit, argNone},
	"ENVIRONMENT":                                   {opLit, argRequired},
	// Valid in Envoy, without a value here (no downstream TLS, no
	// metadata, no tracing): "-" in text, null in JSON, as Envoy prints
	// them when the value is absent.
	"REQUESTED_SERVER_NAME":           {opDash, argNone},
	"VIRTUAL_CLUSTER_NAME":            {opDash, argNone},
	"UPSTREAM_CONNECTION_ID":          {opDash, argNone},
	"UPSTREAM_TRANSPORT_FAILURE":      {opDash, argNone},
	"TRACE_ID":                        {opDash, argNone},
	"DYNAMIC_METADATA":                {opDash, argAny},
	"CLUSTER_METADATA":                {opDash, argAny},
	"UPSTREAM_METADATA":               {opDash, argAny},
	"METADATA":                        {opDash, argAny},
	"FILTER_STATE":                    {opDash, argAny},
	"UPSTREAM_FILTER_STATE":           {opDash, argAny},
	"CEL":                             {opDash, argAny},
	"DOWNSTREAM_PEER_URI_SAN":         {opDash, argNone},
	"DOWNSTREAM_PEER_DNS_SAN":         {opDash, argNone},
	"DOWNSTREAM_PEER_SUBJECT":         {opDash, argNone},
	"DOWNSTREAM_PEER_ISSUER":          {opDash, argNone},
	"DOWNSTREAM_PEER_FINGERPRINT_256": {opDash, argNone},
	"DOWNSTREAM_PEER_CERT":            {opDash, argNone},
	"DOWNSTREAM_PEER_SERIAL":          {opDash, argNone},
	"DOWNSTREAM_LOCAL_URI_SAN":        {opDash, argNone},
	"DOWNSTREAM_LOCAL_SUBJECT":        {opDash, argNone},
	"DOWNSTREAM_TLS_VERSION":          {opDash, argNone},
	"DOWNSTREAM_TLS_CIPHER":           {opDash, argNone},
	"DOWNSTREAM_TLS_SESSION_ID":       {opDash, argNone},
	"UPSTREAM_PEER_URI_SAN":           {opDash, argNone},
	"UPSTREAM_PEER_SUBJECT":           {opDash, argNone},
	"UPSTREAM_LOCAL_URI_SAN":          {opDash, argNone},
	"UPSTREAM_TLS_VERSION":            {opDash, argNone},
	"UPSTREAM_TLS_CIPHER":             {opDash, argNone},
	"UPSTREAM_TLS_SESSION_ID":         {opDash, argNone},
}

// segment is a literal or one operator of a format string.
type segment struct {
	op     op
	lit    string // opLit; for REQ/RESP/TRAILER the canonical main header
	alt    string // REQ/RESP/TRAILER alternative header
	maxLen int    // 0: no truncation
	tf     []tpiece
	grpc   uint8 // GRPC_STATUS form: 0 camel, 1 snake, 2 number
}

// Format is a compiled substitution format string. Its zero value is not
// useful: use ParseText.
type Format struct {
	segs      []segment
	omitEmpty bool
}

// ParseText compiles a text format string, e.g.
// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"`.
// `%%` is a literal percent sign. Unknown operators and malformed commands
// are errors naming the position.
func ParseText(s string) (*Format, error) {
	segs, err := parse(s)
	if err != nil {
		return nil, err
	}
	return &Format{segs: segs}, nil
}

func isCmdChar(c byte) bool { return c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' }

func parse(s string) ([]segment, error) {
	var segs []segment
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			segs = append(segs, segment{op: opLit, lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c != '%' {
			j := strings.IndexByte(s[i:], '%')
			if j < 0 {
				j = len(s) - i
			}
			lit.WriteString(s[i : i+j])
			i += j
			continue
		}
		if i+1 < len(s) && s[i+1] == '%' {
			lit.WriteByte('%')
			i += 2
			continue
		}
		j := i + 1
		for j < len(s) && isCmdChar(s[j]) {
			j++
		}
		name := s[i+1 : j]
		if name == "" {
			return nil, fmt.Errorf("format %q: position %d: '%%' starts no command (write %%%% for a literal percent sign)", s, i)
		}
		var arg string
		hasArg := false
		if j < len(s) && s[j] == '(' {
			k := strings.IndexByte(s[j:], ')')
			if k < 0 {
				return nil, fmt.Errorf("format %q: position %d: %s( has no closing parenthesis", s, i, name)
			}
			arg, hasArg = s[j+1:j+k], true
			j += k + 1
		}
		maxLen := 0
		if j < len(s) && s[j] == ':' {
			k := j + 1
			for k < len(s) && s[k] >= '0' && s[k] <= '9' {
				k++
			}
			n, err := strconv.Atoi(s[j+1 : k])
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("format %q: position %d: %s: bad length %q", s, i, name, s[j+1:k])
			}
			maxLen, j = n, k
		}
		if j >= len(s) || s[j] != '%' {
			return nil, fmt.Errorf("format %q: position %d: command %s is not closed by '%%'", s, i, name)
		}
		seg, err := compileOp(name, arg, hasArg)
		if err != nil {
			return nil, fmt.Errorf("format %q: position %d: %w", s, i, err)
		}
		seg.maxLen = maxLen
		if seg.op == opLit {
			lit.WriteString(truncate(seg.lit, maxLen))
		} else {
			flush()
			segs = append(segs, seg)
		}
		i = j + 1
	}
	flush()
	return segs, nil
}

func compileOp(name, arg string, hasArg bool) (segment, error) {
	def, ok := operators[name]
	if !ok {
		return segment{}, fmt.Errorf("unknown command operator %%%s%%", name)
	}
	switch def.arg {
	case argNone:
		if hasArg {
			return segment{}, fmt.Errorf("%s takes no argument", name)
		}
	case argRequired:
		if !hasArg || arg == "" {
			return segment{}, fmt.Errorf("%s needs an argument: %s(...)", name, name)
		}
	}
	seg := segment{op: def.op}
	switch name {
	case "HOSTNAME":
		h, err := os.Hostname()
		if err != nil {
			h = "-"
		}
		seg.lit = h
	case "ENVIRONMENT":
		v, ok := os.LookupEnv(arg)
		if !ok {
			v = "-"
		}
		seg.lit = v
	case "GRPC_STATUS_NUMBER":
		seg.grpc = 2
	}
	switch def.op {
	case opStartTime:
		if arg == "" {
			arg = defaultTimeFormat
		}
		seg.tf = parseStrftime(arg)
	case opReq, opResp, opTrailer, opReqNoQuery:
		main, alt, _ := strings.Cut(arg, "?")
		if main == "" || strings.Contains(alt, "?") {
			return segment{}, fmt.Errorf("%s(%s): want %s(HEADER) or %s(HEADER?ALTERNATIVE)", name, arg, name, name)
		}
		seg.lit, seg.alt = headerKey(main), headerKey(alt)
	case opGRPCStatus:
		switch arg {
		case "", "CAMEL_STRING":
		case "SNAKE_STRING":
			seg.grpc = 1
		case "NUMBER":
			seg.grpc = 2
		default:
			return segment{}, fmt.Errorf("GRPC_STATUS(%s): want CAMEL_STRING, SNAKE_STRING or NUMBER", arg)
		}
	}
	return seg, nil
}

func headerKey(h string) string {
	if h == "" {
		return ""
	}
	if h[0] == ':' {
		return strings.ToLower(h)
	}
	return http.CanonicalHeaderKey(h)
}

func truncate(s string, n int) string {
	if n > 0 && len(s) > n {
		return s[:n]
	}
	return s
}

// Literal returns the format's text and true when it has no operator (a
// header value that needs no per-request work).
func (f *Format) Literal() (string, bool) {
	switch len(f.segs) {
	case 0:
		return "", true
	case 1:
		if f.segs[0].op == opLit {
			return f.segs[0].lit, true
		}
	}
	return "", false
}

// Append appends the formatted entry to b.
func (f *Format) Append(b []byte, e *Entry) []byte {
	for i := range f.segs {
		b = f.segs[i].appendText(b, e, f.omitEmpty)
	}
	return b
}

// String formats e.
func (f *Format) String(e *Entry) string {
	if s, ok := f.Literal(); ok {
		return s
	}
	return string(f.Append(make([]byte, 0, 64), e))
}

// valKind is the type of an operator's value.
type valKind uint8

const (
	vNone valKind = iota // no value: "-" in text, null in JSON
	vStr
	vInt
)

func (g *segment) appendText(b []byte, e *Entry, omitEmpty bool) []byte {
	if g.op == opLit {
		return append(b, g.lit...)
	}
	if g.op == opStartTime {
		return appendStrftime(b, e.Start.UTC(), g.tf)
	}
	k, s, n := g.value(e)
	switch k {
	case vStr:
		return append(b, truncate(s, g.maxLen)...)
	case vInt:
		return strconv.AppendInt(b, n, 10)
	}
	if omitEmpty {
		return b
	}
	return append(b, '-')
}

func ms(d time.Duration) int64 { return d.Milliseconds() }

func str(s string) (valKind, string, int64) {
	if s == "" {
		return vNone, "", 0
	}
	return vStr, s, 0
}

func addr(a netip.AddrPort, part byte) (valKind, string, int64) {
	if !a.IsValid() {
		return vNone, "", 0
	}
	switch part {
	case 'a':
		return vStr, a.Addr().Unmap().String(), 0
	case 'p':
		return vInt, "", int64(a.Port())
	}
	return vStr, netip.AddrPortFrom(a.Addr().Unmap(), a.Port()).String(), 0
}

// value returns the operator's value for e.
func (g *segment) value(e *Entry) (valKind, string, int64) {
	switch g.op {
	case opLit:
		return vStr, g.lit, 0
	case opStartTime:
		return vStr, string(appendStrftime(nil, e.Start.UTC(), g.tf)), 0
	case opReq, opReqNoQuery:
		v, ok := e.reqHeader(g.lit)
		if !ok && g.alt != "" {
			v, ok = e.reqHeader(g.alt)
		}
		if !ok {
			return vNone, "", 0
		}
		if i := strings.IndexByte(v, '?'); i >= 0 && g.op == opReqNoQuery {
			v = v[:i]
		}
		return vStr, v, 0
	case opResp, opTrailer:
		h := e.RespHeaders
		if g.op == opTrailer {
			h = e.RespTrailers
		}
		v, ok := first(h, g.lit)
		if !ok && g.alt != "" {
			v, ok = first(h, g.alt)
		}
		if !ok {
			return vNone, "", 0
		}
		return vStr, v, 0
	case opProtocol:
		return str(e.Protocol)
	case opCode:
		return vInt, "", int64(e.Code)
	case opCodeDetails:
		return str(e.Details)
	case opTermDetails:
		return str(e.TermDetails)
	case opFlags:
		if e.Flags == "" {
			return vStr, "-", 0
		}
		return vStr, e.Flags, 0
	case opFlagsLong:
		if e.Flags == "" {
			return vStr, "-", 0
		}
		return vStr, longFlags(e.Flags), 0
	case opBytesReceived:
		return vInt, "", e.BytesReceived
	case opBytesSent:
		return vInt, "", e.BytesSent
	case opDuration:
		return vInt, "", ms(e.Duration)
	case opRespDuration:
		if e.FirstByte <= 0 {
			return vNone, "", 0
		}
		return vInt, "", ms(e.FirstByte)
	case opRespTxDuration:
		if e.FirstByte <= 0 {
			return vNone, "", 0
		}
		return vInt, "", ms(e.Duration - e.FirstByte)
	case opUpstreamHost:
		return str(e.UpstreamHost)
	case opUpstreamHostNoPort, opUpstreamPort:
		ap, err := netip.ParseAddrPort(e.UpstreamHost)
		if err != nil {
			return str(e.UpstreamHost)
		}
		if g.op == opUpstreamPort {
			return addr(ap, 'p')
		}
		return addr(ap, 'a')
	case opUpstreamCluster:
		return str(e.Cluster)
	case opUpstreamFailure:
		return str(e.UpstreamFailure)
	case opAttempts:
		if e.Attempts == 0 {
			return vNone, "", 0
		}
		return vInt, "", int64(e.Attempts)
	case opDLocal:
		return addr(e.DownstreamLocal, 0)
	case opDLocalNoPort:
		return addr(e.DownstreamLocal, 'a')
	case opDLocalPort:
		return addr(e.DownstreamLocal, 'p')
	case opDRemote:
		return addr(e.DownstreamRemote, 0)
	case opDRemoteNoPort:
		return addr(e.DownstreamRemote, 'a')
	case opDRemotePort:
		return addr(e.DownstreamRemote, 'p')
	case opRouteName:
		return str(e.Route)
	case opConnID:
		return vInt, "", int64(e.ConnID)
	case opGRPCStatus:
		code, ok := grpcStatus(e)
		if !ok {
			return vNone, "", 0
		}
		switch g.grpc {
		case 2:
			return vInt, "", int64(code)
		case 1:
			return vStr, grpcSnake(code), 0
		}
		return vStr, grpcCamel(code), 0
	case opLogType:
		if e.Type == TCPConnectionEnd {
			return vStr, "TcpConnectionEnd", 0
		}
		return vStr, "DownstreamEnd", 0
	case opUniqueID:
		return vStr, uuid.New(), 0
	case opRequestID:
		return str(e.RequestID)
	}
	return vNone, "", 0
}

// ParseHeaderValue compiles the value of a request_headers_to_add or
// response_headers_to_add entry: the same format strings, with an absent
// value empty instead of "-" (so the header is not added unless
// keep_empty_value says so).
func ParseHeaderValue(s string) (*Format, error) {
	f, err := ParseText(s)
	if err != nil {
		return nil, err
	}
	f.omitEmpty = true
	return f, nil
}
