package hcm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/meshlet/meshlet/internal/rawio"
)

// maxFastBody is the largest request body the synchronous HTTP/1.1 client
// takes: it reads the body whole, so the request leaves in one write and
// can be replayed on a fresh connection when a pooled one turns out to be
// closed. Larger or unknown-length bodies, Expect and trailers go through
// http.Transport, which streams and reads the response concurrently.
const maxFastBody = 64 << 10

// h1Pool is a synchronous HTTP/1.1 client with per-endpoint keep-alive
// pools: the request is written and the response read on the caller's
// goroutine, with no read-ahead between exchanges.
//
// With a circuit breaker, each connection takes one of the cluster's
// max_connections; once they are all taken a request waits (one of
// max_pending_requests, else 503 UO at once) for a connection to its
// endpoint to come back or for a slot to free up, as Envoy's pool does.
// Envoy's rule against waiting with nothing to wait for holds too: an
// endpoint without any connection gets one past the limit.
type h1Pool struct {
	p    *Pools
	mu   sync.Mutex
	idle map[string][]*upConn
	// open counts the connections per endpoint, idle or in use.
	open map[string]int
	// waiters are the requests waiting for a connection, oldest first.
	waiters []*connWaiter
	reaper  *time.Timer
	closed  bool
}

// connWaiter is a request waiting for a connection to addr: it receives
// one handed over from an exchange that ended, or nil when a connection
// closed (a slot may be free: look again).
type connWaiter struct {
	addr string
	ch   chan *upConn
}

// upConn is one pooled upstream connection.
type upConn struct {
	c    net.Conn
	addr string
	// slot is the circuit breaker whose connection slot c holds (nil:
	// none, or opened past the limit as its endpoint's only connection).
	slot Breaker
	rd   io.Reader     // c's reader (newRawIO)
	sock *rawio.Socket // c's socket, nil when raw I/O is not possible
	br   *bufio.Reader
	wb   bytes.Buffer // the request being written
	// hdr is the response header map, cleared for each response (the
	// values are new each time): the proxy copies the entries out
	// before the response body is read, and the map is not used after
	// the connection goes back to the pool.
	hdr http.Header
	// resp and body are the Response and Body handed out for the
	// exchange in progress when readFastResponse parsed its head: reused
	// per exchange, as the proxy holds neither after closing the body,
	// which is what returns the connection to the pool.
	resp      http.Response
	body      upBody
	nread     int64
	reused    bool
	idleSince time.Time
}

func (u *upConn) Read(p []byte) (int, error) {
	n, err := u.rd.Read(p)
	u.nread += int64(n)
	return n, err
}

func newH1Pool(p *Pools) *h1Pool {
	return &h1Pool{p: p, idle: map[string][]*upConn{}, open: map[string]int{}}
}

// fastClientOK reports whether req suits the synchronous client.
func fastClientOK(req *http.Request) bool {
	if req.ContentLength < 0 || req.ContentLength > maxFastBody || len(req.Trailer) > 0 {
		return false
	}
	_, expect := req.Header["Expect"]
	return !expect
}

// get returns an idle connection to addr or a new one, waiting for one
// while br's connections are all taken.
func (hp *h1Pool) get(ctx context.Context, addr string, br Breaker) (*upConn, error) {
	pending := false // a pending-request slot is held
	defer func() {
		if pending {
			br.DonePending()
		}
	}()
	for {
		now := time.Now()
		hp.mu.Lock()
		l := hp.idle[addr]
		for len(l) > 0 {
			u := l[len(l)-1]
			l[len(l)-1] = nil
			l = l[:len(l)-1]
			hp.idle[addr] = l
			if now.Sub(u.idleSince) < hp.p.opts.IdleTimeout {
				hp.mu.Unlock()
				return u, nil
			}
			hp.dropLocked(u)
		}
		slot := br == nil || br.TryConnection()
		if slot || hp.open[addr] == 0 {
			hp.open[addr]++
			hp.mu.Unlock()
			u := &upConn{addr: addr}
			if slot && br != nil {
				u.slot = br
			}
			return hp.dial(ctx, u)
		}
		if !pending {
			if !br.TryPending() {
				hp.mu.Unlock()
				return nil, errOverflow
			}
			pending = true
		}
		w := &connWaiter{addr: addr, ch: make(chan *upConn, 1)}
		hp.waiters = append(hp.waiters, w)
		hp.mu.Unlock()
		select {
		case u := <-w.ch:
			if u != nil {
				return u, nil
			}
		case <-ctx.Done():
			hp.mu.Lock()
			i := slices.Index(hp.waiters, w)
			if i >= 0 {
				hp.waiters = slices.Delete(hp.waiters, i, i+1)
			}
			hp.mu.Unlock()
			if i < 0 { // handed something meanwhile: pass it on
				if u := <-w.ch; u != nil {
					hp.put(addr, u)
				} else {
					hp.mu.Lock()
					hp.wakeLocked("")
					hp.mu.Unlock()
				}
			}
			return nil, &waitError{context.Cause(ctx)}
		}
	}
}

// waitError: the request ended while waiting for a pooled connection (the
// endpoint never saw it: not a failure of the host).
type waitError struct{ err error }

func (e *waitError) Error() string { return "waiting for an upstream connection: " + e.err.Error() }
func (e *waitError) Unwrap() error { return e.err }

// dial opens u's connection (its slot already counted).
func (hp *h1Pool) dial(ctx context.Context, u *upConn) (*upConn, error) {
	c, err := hp.p.dial(ctx, "tcp", u.addr)
	if err != nil {
		hp.mu.Lock()
		hp.releaseLocked(u)
		hp.mu.Unlock()
		return nil, err
	}
	u.c, u.rd = c, c
	if sock, _ := socketOf(c); sock != nil {
		if u.sock = rawio.New(sock); u.sock != nil {
			u.rd = u.sock
		}
	}
	u.br = bufio.NewReaderSize(u, 16<<10)
	return u, nil
}

// drop closes a connection that is not idle in the pool.
func (hp *h1Pool) drop(u *upConn) {
	hp.mu.Lock()
	hp.dropLocked(u)
	hp.mu.Unlock()
}

// dropLocked closes u and gives its slot back.
func (hp *h1Pool) dropLocked(u *upConn) {
	u.c.Close()
	hp.releaseLocked(u)
}

// releaseLocked uncounts u's connection and wakes whom that may let open
// one: the oldest waiter when a slot came free, the oldest for u's
// endpoint when that has no connection left.
func (hp *h1Pool) releaseLocked(u *upConn) {
	if hp.open[u.addr]--; hp.open[u.addr] <= 0 {
		delete(hp.open, u.addr)
		hp.wakeLocked(u.addr)
	}
	if u.slot != nil {
		u.slot.DoneConnection()
		u.slot = nil
		hp.wakeLocked("")
	}
}

// wakeLocked wakes the oldest waiter for addr (any address when addr is
// empty), if any, with nil: it looks again.
func (hp *h1Pool) wakeLocked(addr string) {
	if w := hp.takeWaiterLocked(addr); w != nil {
		w.ch <- nil
	}
}

// takeWaiterLocked removes the oldest waiter for addr (any when empty).
func (hp *h1Pool) takeWaiterLocked(addr string) *connWaiter {
	for i, w := range hp.waiters {
		if addr == "" || w.addr == addr {
			hp.waiters = slices.Delete(hp.waiters, i, i+1)
			return w
		}
	}
	return nil
}

func (hp *h1Pool) put(addr string, u *upConn) {
	u.reused = true
	u.idleSince = time.Now()
	hp.mu.Lock()
	defer hp.mu.Unlock()
	if hp.closed {
		hp.dropLocked(u)
		return
	}
	if w := hp.takeWaiterLocked(addr); w != nil {
		w.ch <- u // straight to the oldest request waiting for it
		return
	}
	if len(hp.idle[addr]) >= hp.p.opts.MaxIdlePerEndpoint {
		hp.dropLocked(u)
		return
	}
	hp.idle[addr] = append(hp.idle[addr], u)
	if hp.reaper == nil {
		hp.reaper = time.AfterFunc(hp.p.opts.IdleTimeout, hp.prune)
	}
}

// prune closes connections idle for longer than the idle timeout.
func (hp *h1Pool) prune() {
	now := time.Now()
	hp.mu.Lock()
	defer hp.mu.Unlock()
	hp.reaper = nil
	n := 0
	for addr, l := range hp.idle {
		keep := l[:0]
		for _, u := range l {
			if now.Sub(u.idleSince) >= hp.p.opts.IdleTimeout {
				hp.dropLocked(u)
			} else {
				keep = append(keep, u)
			}
		}
		clear(l[len(keep):])
		if len(keep) == 0 {
			delete(hp.idle, addr)
		} else {
			hp.idle[addr] = keep
			n += len(keep)
		}
	}
	if n > 0 && !hp.closed {
		hp.reaper = time.AfterFunc(hp.p.opts.IdleTimeout/2, hp.prune)
	}
}

// close closes every idle connection; connections in use are closed when
// they are released.
func (hp *h1Pool) close() {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	hp.closed = true
	for addr, l := range hp.idle {
		delete(hp.idle, addr)
		for _, u := range l {
			hp.dropLocked(u)
		}
	}
	if hp.reaper != nil {
		hp.reaper.Stop()
		hp.reaper = nil
	}
}

// fastExcluded: the headers the request line and our own framing write;
// never copied.
func fastExcluded(k string) bool {
	switch k {
	case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
		return true
	}
	return false
}

// writeHead serialises the request head into bw.
func writeHead(bw *bytes.Buffer, req *http.Request, body []byte) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !httpguts.ValidHostHeader(host) {
		return fmt.Errorf("upstream request: invalid Host %q", host)
	}
	_, _ = bw.WriteString(req.Method)
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(req.URL.RequestURI())
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(host)
	_, _ = bw.WriteString("\r\n")
	if ua := req.Header["User-Agent"]; len(ua) > 0 && ua[0] != "" {
		_, _ = bw.WriteString("User-Agent: " + ua[0] + "\r\n")
	}
	for k, vv := range req.Header {
		if fastExcluded(k) {
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("upstream request: invalid header name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("upstream request: invalid value for header %q", k)
			}
			_, _ = bw.WriteString(k)
			_, _ = bw.WriteString(": ")
			_, _ = bw.WriteString(v)
			_, _ = bw.WriteString("\r\n")
		}
	}
	switch req.Method {
	case "POST", "PUT", "PATCH":
		_, _ = bw.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\n")
	default:
		if len(body) > 0 {
			_, _ = bw.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\n")
		}
	}
	_, _ = bw.WriteString("\r\n")
	_, err := bw.Write(body)
	return err
}

// roundTrip sends req (fastClientOK) to req.URL.Host within ctx (req's
// own context is not looked at) and returns the response; its Body
// returns the connection to the pool at EOF. The connection's I/O fails at
// once when the request is cancelled: through rc when given (all of ctx's
// cancellations that matter go through it), else when ctx ends.
func (hp *h1Pool) roundTrip(ctx context.Context, req *http.Request, rc *reqCancel, br Breaker) (*http.Response, error) {
	var body []byte
	if req.ContentLength > 0 {
		body = make([]byte, req.ContentLength)
		if _, err := io.ReadFull(req.Body, body); err != nil {
			return nil, fmt.Errorf("read request body: %w", err)
		}
		// Reach EOF so the body counts as complete (a reused connection).
		var one [1]byte
		if n, err := req.Body.Read(one[:]); n > 0 || (err != nil && err != io.EOF) {
			return nil, fmt.Errorf("request body longer than its Content-Length (%v)", err)
		}
	}
	addr := req.URL.Host
	for attempt := 0; ; attempt++ {
		u, err := hp.get(ctx, addr, br)
		if err != nil {
			return nil, err
		}
		var stop func() bool
		if rc != nil {
			if !rc.watch(u.c) {
				_ = u.c.SetDeadline(aLongTimeAgo)
			}
			stop = nil // upBody calls rc.stop
		} else {
			stop = context.AfterFunc(ctx, func() { _ = u.c.SetDeadline(aLongTimeAgo) })
		}
		u.nread = 0
		u.wb.Reset()
		err = writeHead(&u.wb, req, body)
		if err == nil {
			if u.sock != nil {
				// Write, then wait for the response without a first read
				// that could only find nothing.
				_, err = u.sock.WriteAwait(u.wb.Bytes())
			} else {
				_, err = u.c.Write(u.wb.Bytes())
			}
		}
		if u.wb.Cap() > 16<<10 {
			u.wb = bytes.Buffer{} // idle pooled connections keep at most 16 KiB
		}
		var resp *http.Response
		var left int64 = -1
		if err == nil {
			resp, left = readFastResponse(u.br, req, u)
			for resp == nil {
				resp, err = http.ReadResponse(u.br, req)
				if err != nil || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
					break
				}
				resp = nil
			}
			if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
				err = errors.New("upstream answered 101 to a request without Upgrade")
			}
		}
		if err != nil {
			if rc != nil {
				rc.stop()
			} else {
				stop()
			}
			hp.drop(u)
			// A pooled connection the upstream closed while idle: nothing of
			// a response came back, so the request can go on a new one.
			if u.reused && u.nread == 0 && attempt == 0 && ctx.Err() == nil {
				continue
			}
			return nil, err
		}
		if left >= 0 {
			// Parsed here (resp is u.resp): the body is the next left bytes
			// of u.br.
			u.body = upBody{u: u, hp: hp, addr: addr, stop: stop, rc: rc, left: left, reusable: !resp.Close}
			resp.Body = &u.body
			return resp, nil
		}
		chunked := len(resp.TransferEncoding) > 0 && resp.TransferEncoding[0] == "chunked"
		resp.Body = &upBody{body: resp.Body, u: u, hp: hp, addr: addr, stop: stop, rc: rc,
			reusable: !resp.Close && (resp.ContentLength >= 0 || chunked || resp.Body == http.NoBody)}
		return resp, nil
	}
}

// upBody is an upstream response body; at EOF (framing intact) Close
// returns the connection to the pool, otherwise it closes it. body is
// net/http's body reader, or nil when readFastResponse parsed the head:
// then the body is the next left bytes of the connection's reader.
type upBody struct {
	body     io.ReadCloser
	left     int64
	u        *upConn
	hp       *h1Pool
	addr     string
	stop     func() bool // context.AfterFunc's stop, or nil with rc
	rc       *reqCancel
	reusable bool
	eof, bad bool
	done     bool
}

func (b *upBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.body == nil {
		return b.readFast(p)
	}
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.eof = true
	} else if err != nil {
		b.bad = true
	}
	return n, err
}

func (b *upBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	var stopped bool
	if b.rc != nil {
		stopped = b.rc.stop()
	} else {
		stopped = b.stop()
	}
	if b.eof && !b.bad && b.reusable && stopped {
		if b.body != nil {
			_ = b.body.Close()
		}
		b.hp.put(b.addr, b.u)
		return nil
	}
	b.hp.drop(b.u)
	return nil
}

// takeHeader hands the response's header map over to the caller, when the
// connection parsed it into its own reused map (readFastResponse): the
// connection keeps m, emptied, for its next response instead. false: the
// map is net/http's and stays with the response.
func (b *upBody) takeHeader(m http.Header) bool {
	if b.body != nil || b.u.resp.Header == nil {
		return false
	}
	clear(m)
	b.u.hdr = m
	return true
}

// readFast reads a Content-Length body; the last bytes come with io.EOF.
func (b *upBody) readFast(p []byte) (int, error) {
	if b.left == 0 {
		b.eof = true
		return 0, io.EOF
	}
	if b.bad {
		return 0, io.ErrUnexpectedEOF
	}
	n, err := readLeft(b.u.br, p, &b.left)
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil:
		b.bad = true
	}
	return n, err
}

// readLeft reads at most *left more bytes of a body of known length from
// br into p and counts them off. The read that completes the body returns
// io.EOF with its bytes; a connection that ends before gives
// io.ErrUnexpectedEOF.
func readLeft(br *bufio.Reader, p []byte, left *int64) (int, error) {
	if int64(len(p)) > *left {
		p = p[:*left]
	}
	n, err := br.Read(p)
	*left -= int64(n)
	if *left == 0 {
		return n, io.EOF
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// readFastResponse parses the common upstream response itself: HTTP/1.1,
// final status other than 204 and 304, one Content-Length, no
// Transfer-Encoding, Trailer or Pragma, a head within the reader's buffer
// with CRLF line ends, and a request that is not HEAD. It returns the
// response with the body length, or nil with br untouched (nothing
// consumed) so that net/http.ReadResponse reads the same bytes and keeps
// its semantics for everything else. A read error also returns nil: the
// error is net/http's to report.
func readFastResponse(br *bufio.Reader, req *http.Request, u *upConn) (*http.Response, int64) {
	if req.Method == http.MethodHead {
		return nil, -1
	}
	head := peekHead(br)
	if head == nil {
		return nil, -1
	}
	if u.hdr == nil {
		u.hdr = make(http.Header) // grows once to what the upstream sends
	}
	resp, n, ok := parseResponseHead(head, u.hdr, &u.resp)
	if !ok {
		return nil, -1
	}
	_, _ = br.Discard(len(head))
	resp.Request = req
	return resp, n
}

// peekHead returns the buffered response head through its blank line,
// reading more as needed, or nil (head larger than the buffer, bare LF
// line ends, read error).
func peekHead(br *bufio.Reader) []byte {
	n := br.Buffered()
	for {
		b, _ := br.Peek(n)
		if i := bytes.Index(b, crlfcrlf); i >= 0 {
			return b[:i+4]
		}
		if n >= br.Size() || bytes.Contains(b, lflf) {
			return nil
		}
		if _, err := br.Peek(n + 1); err != nil {
			return nil
		}
		n = br.Buffered()
	}
}

var (
	crlfcrlf = []byte("\r\n\r\n")
	lflf     = []byte("\n\n")
)

// parseResponseHead decodes a complete response head (see
// readFastResponse for what it takes) into resp with h, cleared first, as
// its header map; ok=false means "not ours" (resp is then left unset).
func parseResponseHead(head []byte, h http.Header, resp *http.Response) (*http.Response, int64, bool) {
	clear(h)
	// One string for the whole head: every key and value is a slice of it.
	hs := string(head[:len(head)-4])
	line, rest, _ := strings.Cut(hs, "\r\n")
	if len(line) < 12 || line[:9] != "HTTP/1.1 " || (len(line) > 12 && line[12] != ' ') {
		return nil, 0, false
	}
	code := 0
	for i := 9; i < 12; i++ {
		c := line[i]
		if c < '0' || c > '9' {
			return nil, 0, false
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 || code == 204 || code == 304 {
		return nil, 0, false
	}
	for i := 12; i < len(line); i++ {
		if c := line[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return nil, 0, false
		}
	}
	nh := 0
	if rest != "" {
		nh = strings.Count(rest, "\r\n") + 1
	}
	f := newHeadFields(h, nh)
	cl := int64(-1)
	for i := 0; rest != ""; i++ {
		var l string
		l, rest, _ = strings.Cut(rest, "\r\n")
		k, v, ok := f.add(i, l)
		if !ok {
			return nil, 0, false
		}
		switch k {
		case "Transfer-Encoding", "Trailer", "Pragma":
			return nil, 0, false
		case "Content-Length":
			if cl >= 0 || len(v) == 0 || len(v) > 18 {
				return nil, 0, false
			}
			cl = 0
			for j := 0; j < len(v); j++ {
				c := v[j]
				if c < '0' || c > '9' {
					return nil, 0, false
				}
				cl = cl*10 + int64(c-'0')
			}
		}
	}
	if cl < 0 {
		return nil, 0, false // delimited by close: net/http's case
	}
	*resp = http.Response{
		Status: line[9:], StatusCode: code, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, ContentLength: cl,
	}
	if httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
		resp.Close = true
		delete(h, "Connection") // as net/http does
	}
	return resp, cl, true
}
