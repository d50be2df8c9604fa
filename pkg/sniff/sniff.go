package sniff

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// Protocol is the result of sniffing a connection.
type Protocol uint8

const (
	// Unknown means the bytes did not look like HTTP or TLS (or nothing
	// arrived before the deadline): treat the connection as opaque TCP.
	Unknown Protocol = iota
	// HTTP1 is an HTTP/1.0 or HTTP/1.1 request line.
	HTTP1
	// HTTP2 is the HTTP/2 connection preface sent with prior knowledge (h2c).
	HTTP2
	// TLS is a TLS handshake record (ClientHello).
	TLS
)

// String returns the Envoy-style name: the application protocol used in
// filter_chain_match ("http/1.1", "h2c") or the transport protocol ("tls",
// "raw_buffer").
func (p Protocol) String() string {
	switch p {
	case HTTP1:
		return "http/1.1"
	case HTTP2:
		return "h2c"
	case TLS:
		return "tls"
	default:
		return "raw_buffer"
	}
}

// Preface is the HTTP/2 client connection preface (RFC 9113 §3.4).
const Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// DefaultMaxBytes is a byte budget large enough to classify any HTTP
// request line for the methods we know about and the full h2 preface.
const DefaultMaxBytes = 64

// DefaultTimeout mirrors Envoy's http_inspector / tls_inspector behaviour
// closely enough: long enough for a client on a loaded node, short enough
// not to delay server-speaks-first protocols noticeably.
const DefaultTimeout = 100 * time.Millisecond

// verdict is the outcome of classifying a byte prefix.
type verdict uint8

const (
	needMore verdict = iota
	decided
)

var methods = [...]string{
	"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "CONNECT ", "OPTIONS ",
	"TRACE ", "PATCH ",
}

// Classify inspects a prefix of the client's first bytes. It reports
// needMore while the prefix is still ambiguous. It never allocates.
func Classify(b []byte) (Protocol, bool) {
	p, v := classify(b)
	return p, v == decided
}

func classify(b []byte) (Protocol, verdict) {
	if len(b) == 0 {
		return Unknown, needMore
	}
	// TLS record: content type handshake (22), legacy version 3.x,
	// then a ClientHello (handshake type 1) at byte 5.
	if b[0] == 0x16 {
		if len(b) < 6 {
			if len(b) >= 2 && b[1] != 0x03 {
				return Unknown, decided
			}
			return Unknown, needMore
		}
		if b[1] == 0x03 && b[2] <= 0x04 && b[5] == 0x01 {
			return TLS, decided
		}
		return Unknown, decided
	}
	// h2 prior knowledge preface.
	if b[0] == 'P' {
		n := min(len(b), len(Preface))
		if bytes.Equal(b[:n], []byte(Preface[:n])) {
			if n == len(Preface) {
				return HTTP2, decided
			}
			return Unknown, needMore
		}
		// Could still be "POST " or "PUT " / "PATCH ": fall through.
	}
	ambiguous := false
	for _, m := range methods {
		n := min(len(b), len(m))
		if bytes.Equal(b[:n], []byte(m[:n])) {
			if n < len(m) {
				ambiguous = true
				continue
			}
			return httpLine(b[len(m):])
		}
	}
	if ambiguous {
		return Unknown, needMore
	}
	return Unknown, decided
}

// httpLine checks the rest of a request line after "METHOD ": a target
// without spaces or control bytes, then " HTTP/1.". It decides as soon as
// the budget shows it cannot be HTTP.
func httpLine(b []byte) (Protocol, verdict) {
	sp := -1
	for i, c := range b {
		if c == ' ' {
			sp = i
			break
		}
		if c < 0x21 || c == 0x7f {
			return Unknown, decided
		}
	}
	if sp < 0 {
		return Unknown, needMore
	}
	if sp == 0 {
		return Unknown, decided
	}
	const ver = "HTTP/1."
	rest := b[sp+1:]
	n := min(len(rest), len(ver))
	if !bytes.Equal(rest[:n], []byte(ver[:n])) {
		return Unknown, decided
	}
	if n < len(ver) {
		return Unknown, needMore
	}
	return HTTP1, decided
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// ErrClosed is returned when the client closed the connection before
// sending anything classifiable.
var ErrClosed = errors.New("sniff: connection closed before first bytes")

// Detect reads at most maxBytes from c, waiting at most timeout, and
// classifies the protocol. It returns a Conn that replays the bytes read.
// On timeout the verdict is Unknown with err == nil. err is non-nil only
// for a read failure (including EOF before any byte: ErrClosed); the
// returned Conn is still valid and replays what was read.
//
// For an HTTP request line the budget should cover the longest request
// target you expect to classify; targets longer than maxBytes yield Unknown.
// Callers that only need HTTP vs not can pass DefaultMaxBytes and accept
// HTTP1 for long targets by checking Classify on the peeked prefix.
func Detect(c net.Conn, maxBytes int, timeout time.Duration) (Protocol, *Conn, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	bp := bufPool.Get().(*[]byte)
	buf := (*bp)[:0]
	if cap(buf) < maxBytes {
		buf = make([]byte, 0, maxBytes)
	}
	wc := &Conn{Conn: c, pool: bp}
	if timeout > 0 {
		if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			wc.setPeek(buf)
			return Unknown, wc, fmt.Errorf("sniff: set read deadline: %w", err)
		}
		defer c.SetReadDeadline(time.Time{}) //nolint:errcheck // best effort reset on a conn we still own
	}
	proto := Unknown
	var rerr error
	for len(buf) < maxBytes {
		n, err := c.Read(buf[len(buf):maxBytes])
		buf = buf[:len(buf)+n]
		if p, v := classify(buf); v == decided {
			proto = p
			break
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if len(buf) == 0 {
				rerr = ErrClosed
			} else {
				rerr = fmt.Errorf("sniff: read first bytes: %w", err)
			}
			break
		}
	}
	// A long request target may exhaust the budget: "GET /very/long..."
	// with a valid method and no control bytes is still HTTP/1.
	if proto == Unknown && rerr == nil && len(buf) == maxBytes && looksLikeHTTPStart(buf) {
		proto = HTTP1
	}
	wc.setPeek(buf)
	return proto, wc, rerr
}

func looksLikeHTTPStart(b []byte) bool {
	for _, m := range methods {
		if len(b) > len(m) && bytes.Equal(b[:len(m)], []byte(m)) {
			for _, c := range b[len(m):] {
				if c < 0x21 || c == 0x7f {
					return c == ' '
				}
			}
			return true
		}
	}
	return false
}
