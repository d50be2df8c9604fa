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
	"net/textproto"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

// The HTTP/1.1 fast path: one goroutine per downstream connection parses
// requests itself, calls the Manager's handler with a buffering
// ResponseWriter and writes each response with one write. There is no
// background read while a request is quick (net/http's server reads ahead
// on every request to notice a client leaving): a watcher read starts only
// once a request has been waiting for watchDelay. Requests it does not
// handle (anything but plain HTTP/1.1 with origin-form target, a single
// Host and at most a Content-Length: Upgrade, Expect, Transfer-Encoding,
// oversized or odd heads, parse errors) make it hand the connection, with
// every byte not yet consumed, to the net/http server, which then keeps it.

const (
	fastBufSize = 8 << 10
	// watchDelay is how long a request may run before we watch the client
	// connection for a close (DC, cancellation of the upstream request).
	watchDelay = 20 * time.Millisecond
)

var (
	fastReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, fastBufSize) }}
	fastWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, fastBufSize) }}
	// aLongTimeAgo is a deadline that makes blocked I/O return at once.
	aLongTimeAgo = time.Unix(1, 0)
	errHandOff   = errors.New("hand connection to net/http")
)

const (
	fcIdle int32 = iota
	fcActive
	fcClosed
)

// dsReader is the downstream conn as seen by the bufio.Reader: the byte a
// watcher read (the start of a pipelined request) comes first.
type dsReader struct {
	r   io.Reader // the connection's reader (newRawIO)
	b   byte
	has bool
}

func (d *dsReader) Read(p []byte) (int, error) {
	if d.has && len(p) > 0 {
		p[0], d.has = d.b, false
		return 1, nil
	}
	return d.r.Read(p)
}

// fastConn is one downstream HTTP/1.1 connection on the fast path.
type fastConn struct {
	// spare is a finished stream kept for the next request (stream.recycle);
	// used on the connection's goroutine only.
	spare  *stream
	m      *Manager
	sc     *serverConn
	raw    net.Conn
	ds     dsReader
	br     *bufio.Reader
	bw     *bufio.Writer
	ctx    context.Context
	remote string
	state  atomic.Int32
	rw     fastRW
	body   fastBody
	dlAt   atomic.Int64 // c.raw's read deadline in Unix ns, 0 none (setReadDeadline)
	reqH   http.Header  // the request headers, reused (parse)
	req    http.Request // the parsed request; the handler gets a copy (WithContext)
	url    url.URL      // req.URL

	// mu serialises the downstream reader between the request body reader
	// and the watcher, and guards the fields below.
	mu        sync.Mutex
	inHandler bool
	watching  bool
	watchDone chan struct{}
	reqCancel *reqCancel // cancels the running request
	watchT    *time.Timer
	// The watch timer's state (armWatch, startWatch): seq counts the
	// requests, armedSeq is the request the timer was armed for, inReq
	// is true while a request is being served.
	watchArmed atomic.Bool
	seq        atomic.Uint64
	armedSeq   atomic.Uint64
	inReq      atomic.Bool
	// tmu guards pending: a stream whose own timer (route timeout, stream
	// idle timeout) is not armed yet. Quick requests never arm one: the
	// watch timer arms it if the request is still running when it fires
	// (deferTimer), which saves a timer per request.
	tmu      sync.Mutex
	pending  *stream
	aborting atomic.Bool
	broken   bool // framing lost or write failed: close after the response
}

// serveH1 serves an HTTP/1.1 connection on the fast path until it closes
// or must be handed to net/http.
func (m *Manager) serveH1(ctx context.Context, sc *serverConn) error {
	c := &fastConn{m: m, sc: sc, raw: sc.Conn, remote: sc.RemoteAddr().String()}
	var w io.Writer
	c.ds.r, w = newRawIO(c.raw)
	// Requests derive from the connection's values but not its
	// cancellation: registering each request with the connection's
	// context and removing it again cost more than the rest of the
	// request's context. The connection ending closes its socket
	// (ServeConn), and a request still running then is cancelled by the
	// watcher that sees the socket fail (startWatch, within watchDelay).
	c.ctx = context.WithoutCancel(context.WithValue(ctx, connInfoKey{}, &sc.info))
	c.br = fastReaders.Get().(*bufio.Reader)
	c.br.Reset(&c.ds)
	c.bw = fastWriters.Get().(*bufio.Writer)
	c.bw.Reset(w)
	c.rw.c = c
	c.rw.h = make(http.Header, 16)
	c.body.c = c
	c.watchT = time.AfterFunc(time.Hour, c.startWatch)
	c.watchT.Stop()
	if !m.trackFast(c, true) {
		c.release()
		sc.Close()
		return errors.New("hcm: manager closed")
	}
	defer m.trackFast(c, false)

	err := c.loop()
	c.watchT.Stop()
	if errors.Is(err, errHandOff) {
		pre := make([]byte, c.br.Buffered(), c.br.Buffered()+1)
		_, _ = io.ReadFull(c.br, pre)
		if c.ds.has {
			pre = append(pre, c.ds.b)
		}
		c.release()
		return m.handOff(ctx, sc, pre)
	}
	c.release()
	sc.Close()
	return nil
}

func (c *fastConn) release() {
	c.br.Reset(nil)
	fastReaders.Put(c.br)
	c.bw.Reset(nil)
	fastWriters.Put(c.bw)
}

// handOff gives the connection to the net/http server, replaying pre.
func (m *Manager) handOff(ctx context.Context, sc *serverConn, pre []byte) error {
	_ = sc.SetReadDeadline(time.Time{})
	hc := &serverConn{Conn: &prefixConn{Conn: sc.Conn, pre: pre}, info: sc.info, done: make(chan struct{})}
	m.serve.Do(func() {
		go func() {
			if err := m.h1.Serve(m.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				m.log.Error("http/1.1 server stopped", zap.Error(err))
			}
		}()
	})
	select {
	case m.ln.ch <- hc:
	case <-m.closed:
		sc.Close()
		return errors.New("hcm: manager closed")
	case <-ctx.Done():
		sc.Close()
		return ctx.Err()
	}
	<-hc.done
	sc.Close()
	return nil
}

// prefixConn replays bytes already read before reading the connection.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.pre) > 0 {
		n := copy(b, p.pre)
		p.pre = p.pre[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

func (c *fastConn) loop() error {
	m := c.m
	hto, idle := m.h1.ReadHeaderTimeout, m.h1.IdleTimeout
	// Each deadline change costs a runtime timer update, so a request
	// whose head is complete in the buffer gets no header deadline, a
	// deadline is cleared only before something reads the connection
	// while a request runs (its body here, the watcher in startWatch), and
	// the idle deadline moves only when it would move by more than
	// idleSlack: on a busy keep-alive connection most requests leave it
	// as it is, and an idle connection closes at most idleSlack early.
	idleSlack := min(idle/16, time.Second)
	for first := true; ; first = false {
		dl := c.dlAt.Load()
		switch {
		case first && hto > 0:
			c.setReadDeadline(time.Now().Add(hto))
		case !first && idle > 0:
			want := time.Now().Add(idle)
			if d := want.UnixNano() - dl; dl <= 0 || d < 0 || d >= int64(idleSlack) {
				c.setReadDeadline(want)
			}
		case dl != 0:
			c.setReadDeadline(time.Time{})
		}
		if !first && c.br.Buffered() == 0 && !c.ds.has {
			// The client has only just been sent the response: let the
			// other runnable goroutines go first, which gives it time to
			// send its next request, rather than find the socket empty
			// now (a read that fails with EAGAIN, then a poller wait).
			runtime.Gosched()
		}
		if _, err := c.br.Peek(1); err != nil {
			return nil
		}
		if !c.state.CompareAndSwap(fcIdle, fcActive) {
			return nil
		}
		if !first && hto > 0 && c.br.Buffered() < fastBufSize {
			if b, _ := c.br.Peek(c.br.Buffered()); !bytes.Contains(b, crlfcrlf) {
				c.setReadDeadline(time.Now().Add(hto))
			}
		}
		head, err := c.readHead()
		if err != nil {
			return err
		}
		var ok bool
		if c.req, ok = c.parse(head); !ok {
			return errHandOff
		}
		req := &c.req
		_, _ = c.br.Discard(len(head))
		if req.ContentLength > 0 && c.dlAt.Load() != 0 {
			c.setReadDeadline(time.Time{})
		}
		keep := c.serveOne(req)
		if !keep {
			return nil
		}
		c.state.Store(fcIdle)
		if m.draining.Load() {
			return nil
		}
	}
}

// readHead returns the request head (through the blank line) without
// consuming it. A head that does not fit, or a connection error after
// some bytes, goes to net/http (which answers 431/400 as before); a
// timeout closes the connection as net/http does.
func (c *fastConn) readHead() ([]byte, error) {
	for {
		n := c.br.Buffered()
		b, _ := c.br.Peek(n)
		if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
			if i+4 > c.m.maxHeaderBytes {
				return nil, errHandOff
			}
			return b[:i+4], nil
		}
		// A head over the configured limit is net/http's to judge (431, with
		// its slack), as is one with bare-LF line ends.
		if n >= fastBufSize || n > c.m.maxHeaderBytes || bytes.Contains(b, []byte("\n\n")) {
			return nil, errHandOff
		}
		if _, err := c.br.Peek(n + 1); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, err
			}
			if c.br.Buffered() > 0 && !errors.Is(err, net.ErrClosed) {
				return nil, errHandOff
			}
			return nil, err
		}
	}
}

var commonMethods = map[string]string{"GET": "GET", "POST": "POST", "PUT": "PUT", "DELETE": "DELETE", "HEAD": "HEAD", "PATCH": "PATCH", "OPTIONS": "OPTIONS"}

// parse decodes a request head strictly; ok=false means "let net/http do it".
// The request is returned by value: serveOne's WithContext makes the one
// heap copy.
func (c *fastConn) parse(head []byte) (http.Request, bool) {
	// One string for the whole head: target, keys and values are slices
	// of it, and each header's []string (cap 1) a slice of one array.
	hs := string(head)
	line, rest, _ := strings.Cut(hs, "\r\n")
	method, rl, ok := strings.Cut(line, " ")
	if !ok || len(method) == 0 {
		return http.Request{}, false
	}
	target, proto, ok := strings.Cut(rl, " ")
	if !ok || proto != "HTTP/1.1" || len(target) == 0 || target[0] != '/' {
		return http.Request{}, false
	}
	for i := 0; i < len(method); i++ {
		if !httpguts.IsTokenRune(rune(method[i])) {
			return http.Request{}, false
		}
	}
	for i := 0; i < len(target); i++ {
		if b := target[i]; b <= ' ' || b >= 0x7f {
			return http.Request{}, false
		}
	}
	ms, ok := commonMethods[method]
	if !ok {
		ms = method
		if ms == "CONNECT" || ms == "PRI" {
			return http.Request{}, false
		}
	}
	ts := target
	// A target without escapes needs no url.Parse (which would only
	// unescape, and fail on a bad escape): its path and query are literal.
	// The URL lives in the connection; nothing keeps it past the request.
	u := &c.url
	if strings.IndexByte(ts, '%') >= 0 {
		pu, err := url.ParseRequestURI(ts)
		if err != nil {
			return http.Request{}, false
		}
		*u = *pu
	} else {
		p, q, hasQ := strings.Cut(ts, "?")
		*u = url.URL{Path: p, RawQuery: q, ForceQuery: hasQ && q == ""}
		if ep := u.EscapedPath(); ep != p {
			u.RawPath = p // as url.setPath keeps a path whose escaping differs
		}
	}
	rest = rest[:max(len(rest)-4, 0)] // without the blank line's CRLFs
	nh := 0
	if rest != "" {
		nh = strings.Count(rest, "\r\n") + 1
	}
	// The connection's one request header map, cleared for each request:
	// nothing keeps a request's headers past its handler.
	h := c.reqH
	if h == nil {
		h = make(http.Header, nh+4) // room for the headers the proxy adds
		c.reqH = h
	} else {
		clear(h)
	}
	f := newHeadFields(h, nh)
	for i := 0; rest != ""; i++ {
		var l string
		l, rest, _ = strings.Cut(rest, "\r\n")
		if _, _, ok := f.add(i, l); !ok {
			return http.Request{}, false
		}
	}
	hv := h["Host"]
	if len(hv) != 1 || !httpguts.ValidHostHeader(hv[0]) {
		return http.Request{}, false
	}
	if _, bad := h["Transfer-Encoding"]; bad {
		return http.Request{}, false
	}
	if _, bad := h["Expect"]; bad {
		return http.Request{}, false
	}
	if _, bad := h["Upgrade"]; bad {
		return http.Request{}, false
	}
	var cl int64
	if v, ok := h["Content-Length"]; ok {
		if len(v) != 1 || len(v[0]) == 0 || len(v[0]) > 15 {
			return http.Request{}, false
		}
		for _, b := range []byte(v[0]) {
			if b < '0' || b > '9' {
				return http.Request{}, false
			}
			cl = cl*10 + int64(b-'0')
		}
	}
	delete(h, "Host")
	r := http.Request{
		Method: ms, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: h, Host: hv[0],
		RequestURI: ts, ContentLength: cl, Close: headerHasToken(h["Connection"], "close"),
		RemoteAddr: c.remote, Body: http.NoBody,
	}
	return r, true
}

// serveOne runs the handler for one request and reports whether the
// connection stays open.
func (c *fastConn) serveOne(req *http.Request) (keep bool) {
	// The request's one cancellable context: the stream (proxy.go) uses
	// it and its cancel as its own rather than deriving another.
	ctx, cancel := context.WithCancelCause(c.ctx)
	defer cancel(context.Canceled)
	req = req.WithContext(ctx)
	c.rw.rc = &reqCancel{cancel: cancel}
	c.body.reset(req.ContentLength)
	if req.ContentLength > 0 {
		req.Body = &c.body
	}
	c.rw.reset(req)
	// A client that asked to close (or a draining manager) must see
	// "Connection: close" in the response head, which is written during
	// the handler.
	if req.Close || c.m.draining.Load() {
		c.rw.closeAfter = true
	}
	c.mu.Lock()
	c.inHandler, c.reqCancel, c.broken = true, c.rw.rc, false
	c.mu.Unlock()
	c.inReq.Store(true)
	c.armWatch(c.seq.Add(1))

	aborted := false
	func() {
		defer func() {
			if v := recover(); v != nil {
				c.broken, aborted = true, true
				if v != http.ErrAbortHandler {
					c.m.log.Error("panic serving HTTP/1.1 request", zap.Any("panic", v), zap.String("remote", c.remote))
				}
			}
		}()
		c.m.ServeHTTP(&c.rw, req)
	}()
	c.stopWatch()

	// No reader of the request body may remain (an upstream writer that
	// gave up): fail it, then see whether framing is intact.
	c.mu.Lock()
	c.body.closed = true
	left := c.body.left
	bodyErr := c.body.err
	c.mu.Unlock()
	if left > 0 || bodyErr != nil {
		c.broken = true
	}
	if c.broken {
		c.rw.closeAfter = true
	}
	if req.Close || c.m.draining.Load() {
		c.rw.closeAfter = true
	}
	if aborted {
		// The stream was reset after its head (upstream failure): send what
		// is already framed, never a completed body, and close.
		if c.rw.headSent && c.rw.err == nil {
			_ = c.bw.Flush()
		}
		return false
	}
	if !c.rw.finish() {
		return false
	}
	return !c.rw.closeAfter
}

// reqCancel cancels a fast-path request: its context, and the one
// upstream connection the synchronous client (h1client.go) is using for
// it, whose I/O then fails at once. This spares that client a
// context.AfterFunc registration per request. Only cancellation through
// fire interrupts the upstream connection: the connection's own context
// ending closes the downstream connection, which the watcher then sees.
type reqCancel struct {
	cancel context.CancelCauseFunc
	mu     sync.Mutex
	conn   net.Conn // upstream connection in use, nil when none
	fired  bool
	cutUp  bool // the connection in use was cut (per-try timeout)
}

// fire cancels the request with cause.
func (rc *reqCancel) fire(cause error) {
	rc.cancel(cause)
	rc.mu.Lock()
	c := rc.conn
	rc.conn, rc.fired = nil, true
	rc.mu.Unlock()
	if c != nil {
		_ = c.SetDeadline(aLongTimeAgo)
	}
}

// watch registers the upstream connection; false: already cancelled.
func (rc *reqCancel) watch(c net.Conn) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.fired || rc.cutUp {
		return false
	}
	rc.conn = c
	return true
}

// cut fails the I/O of the upstream connection in use without cancelling
// the request (an attempt's per-try timeout; the stream may retry).
func (rc *reqCancel) cut() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.cutUp = true // also fails a connection watched later in the attempt
	if rc.conn != nil {
		_ = rc.conn.SetDeadline(aLongTimeAgo)
	}
}

// arm starts an attempt that cut may end.
func (rc *reqCancel) arm() {
	rc.mu.Lock()
	rc.cutUp = false
	rc.mu.Unlock()
}

// stop unregisters the connection and reports whether the request was
// not cancelled through fire, nor the connection cut, meanwhile (the
// connection is unharmed).
func (rc *reqCancel) stop() bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.conn = nil
	return !rc.fired && !rc.cutUp
}

// deferTimer leaves the arming of s's timer to the watch timer when its
// first timeout is no earlier than 2×watchDelay (the watch timer reaches
// a request between watchDelay and 2×watchDelay after its start); false:
// arm it now.
func (c *fastConn) deferTimer(s *stream) bool {
	if s.firstTimeout() < 2*watchDelay {
		return false
	}
	c.tmu.Lock()
	defer c.tmu.Unlock()
	if !c.watchArmed.Load() {
		// The watch timer already fired for this request (the handler was
		// slow to get here) and will not come back: arm now.
		return false
	}
	c.pending, s.fc = s, c
	return true
}

// undefer forgets s as the pending stream. Once it returns, s's timer is
// either armed (s.t) or never will be.
func (c *fastConn) undefer(s *stream) {
	c.tmu.Lock()
	if c.pending == s {
		c.pending = nil
	}
	c.tmu.Unlock()
}

// armPending arms the pending stream's timer, if any.
func (c *fastConn) armPending() {
	c.tmu.Lock()
	if s := c.pending; s != nil {
		c.pending = nil
		s.armLate()
	}
	c.tmu.Unlock()
}

// armWatch arms the watch timer for request seq unless it is armed
// already. The timer is not stopped when a request ends: on a busy
// connection it fires once per watchDelay rather than being reset and
// stopped for every request (two timer updates each).
func (c *fastConn) armWatch(seq uint64) {
	if c.watchArmed.CompareAndSwap(false, true) {
		c.armedSeq.Store(seq)
		c.watchT.Reset(watchDelay)
	}
}

// startWatch runs when the watch timer fires: a request running since the
// timer was armed has run for watchDelay, and gets its stream timer (see
// deferTimer) and, once its body is read, a watcher; a request that began
// later gets its full watchDelay.
func (c *fastConn) startWatch() {
	c.watchArmed.Store(false)
	if !c.inReq.Load() {
		return // between requests (or closed): the next request arms the timer
	}
	seq := c.seq.Load()
	if seq != c.armedSeq.Load() {
		c.armWatch(seq)
		return
	}
	c.armPending()
	if !c.mu.TryLock() {
		c.armWatch(seq)
		return
	}
	defer c.mu.Unlock()
	if !c.inHandler || c.watching {
		return
	}
	if c.body.left > 0 && !c.body.closed || c.br.Buffered() > 0 || c.ds.has {
		// Body still to read (the reader owns the conn) or pipelined data
		// (the client is there): look again later.
		if c.body.left > 0 {
			c.armWatch(seq)
		}
		return
	}
	c.watching = true
	c.watchDone = make(chan struct{})
	// The loop may have left a header or idle deadline on the connection.
	c.setReadDeadline(time.Time{})
	go c.watch(c.reqCancel, c.watchDone)
}

// watch reads the client connection while a slow request runs: EOF or an
// error means the client left, which cancels the request.
func (c *fastConn) watch(rc *reqCancel, done chan struct{}) {
	defer close(done)
	var b [1]byte
	n, err := c.raw.Read(b[:])
	if n == 1 {
		c.ds.b, c.ds.has = b[0], true
		return
	}
	if err != nil && !c.aborting.Load() {
		rc.fire(context.Canceled)
	}
}

func (c *fastConn) stopWatch() {
	c.inReq.Store(false)
	c.mu.Lock()
	c.inHandler = false
	w, done := c.watching, c.watchDone
	c.watching = false
	c.mu.Unlock()
	if w {
		c.aborting.Store(true)
		c.setReadDeadline(aLongTimeAgo)
		<-done
		c.aborting.Store(false)
		c.setReadDeadline(time.Time{})
	}
}

// fastBody is a Content-Length request body read from the connection.
type fastBody struct {
	c      *fastConn
	left   int64
	err    error
	closed bool
}

func (b *fastBody) reset(n int64) { b.left, b.err, b.closed = n, nil, false }

func (b *fastBody) Read(p []byte) (int, error) {
	b.c.mu.Lock()
	defer b.c.mu.Unlock()
	if b.left <= 0 {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := readLeft(b.c.br, p, &b.left)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

func (b *fastBody) Close() error { return nil }

// fastRW is the fast path's http.ResponseWriter. The head is held until
// the handler returns, flushes, or writes more than fastBufSize, so a
// small response (head + body) leaves in one write; a response of unknown
// length is sent with Content-Length when it completes in the buffer and
// chunked otherwise.
type fastRW struct {
	c          *fastConn
	req        *http.Request
	rc         *reqCancel // cancels req's context and its upstream I/O
	h          http.Header
	code       int
	wroteHead  bool // WriteHeader called
	headSent   bool // head serialised into the writer
	chunked    bool
	noBody     bool
	cl         int64 // declared Content-Length, -1 unknown
	written    int64
	staged     []byte
	first      []byte // the write that sends the head, for content sniffing
	err        error
	closeAfter bool
}

func (w *fastRW) reset(req *http.Request) {
	clear(w.h)
	w.req, w.code, w.wroteHead, w.headSent, w.chunked, w.noBody = req, 0, false, false, false, false
	w.cl, w.written, w.staged, w.err, w.closeAfter = -1, 0, w.staged[:0], nil, false
}

func (w *fastRW) Header() http.Header { return w.h }

func (w *fastRW) WriteHeader(code int) {
	if w.wroteHead || code < 200 {
		return
	}
	w.wroteHead, w.code = true, code
	w.noBody = w.req.Method == "HEAD" || code == 204 || code == 304
	if v := w.h["Content-Length"]; len(v) == 1 {
		if n, err := strconv.ParseInt(v[0], 10, 64); err == nil && n >= 0 {
			w.cl = n
		}
	}
}

func (w *fastRW) Write(p []byte) (int, error) {
	if !w.wroteHead {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody {
		if w.req.Method == "HEAD" {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if !w.headSent {
		if w.cl < 0 && len(w.staged)+len(p) <= fastBufSize {
			w.staged = append(w.staged, p...)
			return len(p), nil
		}
		w.first = p
		w.sendHead(false)
		w.first = nil
		if w.err != nil {
			return 0, w.err
		}
	}
	return w.writeBody(p)
}

func (w *fastRW) writeBody(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var err error
	n := len(p)
	if w.chunked {
		bw := w.c.bw
		_, _ = bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		_, _ = bw.WriteString("\r\n")
		_, _ = bw.Write(p)
		_, err = bw.WriteString("\r\n")
	} else {
		if w.cl >= 0 && w.written+int64(len(p)) > w.cl {
			p = p[:w.cl-w.written]
			err = http.ErrContentLength
		}
		var werr error
		n, werr = w.c.bw.Write(p)
		if werr != nil {
			err = werr
		}
	}
	w.written += int64(n)
	if err != nil && !errors.Is(err, http.ErrContentLength) {
		w.err = err
		w.c.broken = true
	}
	return n, err
}

// sendHead serialises the status line and headers, then any staged body.
// done: the handler has returned, so an unknown length is the staged one.
func (w *fastRW) sendHead(done bool) {
	w.headSent = true
	h := w.h
	if !w.noBody && w.cl < 0 {
		if done {
			if w.req.Method != "HEAD" || len(w.staged) > 0 {
				w.cl = int64(len(w.staged))
				h["Content-Length"] = []string{strconv.Itoa(len(w.staged))}
			}
		} else {
			w.chunked = true
		}
	}
	if _, ok := h["Content-Type"]; !ok && !w.noBody {
		// Like net/http: sniff the first bytes of a body without a type.
		sn := w.staged
		if len(sn) == 0 {
			sn = w.first
		}
		if len(sn) > 0 {
			h["Content-Type"] = []string{http.DetectContentType(sn)}
		}
	}
	if headerHasToken(h["Connection"], "close") {
		w.closeAfter = true
	} else if w.closeAfter {
		h["Connection"] = []string{"close"}
	}
	bw := w.c.bw
	if w.code == http.StatusOK {
		_, _ = bw.WriteString("HTTP/1.1 200 OK\r\n")
	} else {
		_, _ = bw.WriteString("HTTP/1.1 ")
		_, _ = bw.WriteString(strconv.Itoa(w.code))
		_ = bw.WriteByte(' ')
		if t := http.StatusText(w.code); t != "" {
			_, _ = bw.WriteString(t)
		} else {
			_, _ = bw.WriteString("status code " + strconv.Itoa(w.code))
		}
		_, _ = bw.WriteString("\r\n")
	}
	for k, vv := range h {
		if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix {
			continue
		}
		if w.chunked && k == "Content-Length" {
			continue
		}
		for _, v := range vv {
			_, _ = bw.WriteString(k)
			_, _ = bw.WriteString(": ")
			_, _ = bw.WriteString(sanitizeValue(v))
			_, _ = bw.WriteString("\r\n")
		}
	}
	if _, ok := h["Date"]; !ok {
		_, _ = bw.WriteString("Date: ")
		_, _ = bw.WriteString(w.c.m.date())
		_, _ = bw.WriteString("\r\n")
	}
	if w.chunked {
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if _, err := bw.WriteString("\r\n"); err != nil {
		w.err, w.c.broken = err, true
		return
	}
	if len(w.staged) > 0 {
		st := w.staged
		w.staged = w.staged[:0]
		if _, err := w.writeBody(st); err != nil && w.err == nil {
			w.err = err
		}
	}
}

func (w *fastRW) Flush() {
	if !w.wroteHead {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(false)
	}
	if w.err == nil {
		if err := w.c.bw.Flush(); err != nil {
			w.err, w.c.broken = err, true
		}
	}
}

// SetReadDeadline lets http.ResponseController fail a blocked body read.
func (w *fastRW) SetReadDeadline(t time.Time) error { return w.c.setReadDeadline(t) }

// setReadDeadline sets the connection's read deadline and records it in
// dlAt (Unix ns, 0 none): every read deadline of c.raw is set here.
func (c *fastConn) setReadDeadline(t time.Time) error {
	err := c.raw.SetReadDeadline(t)
	if t.IsZero() {
		c.dlAt.Store(0)
	} else {
		c.dlAt.Store(t.UnixNano())
	}
	return err
}

// finish completes the response; false means the connection is unusable.
func (w *fastRW) finish() bool {
	if !w.wroteHead {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(true)
	}
	if w.err != nil {
		return false
	}
	bw := w.c.bw
	if w.chunked {
		_, _ = bw.WriteString("0\r\n")
		for k, vv := range w.h {
			if len(k) <= len(http.TrailerPrefix) || k[:len(http.TrailerPrefix)] != http.TrailerPrefix {
				continue
			}
			name := textproto.CanonicalMIMEHeaderKey(k[len(http.TrailerPrefix):])
			if !httpguts.ValidHeaderFieldName(name) {
				continue
			}
			for _, v := range vv {
				_, _ = bw.WriteString(name + ": " + sanitizeValue(v) + "\r\n")
			}
		}
		_, _ = bw.WriteString("\r\n")
	} else if w.cl >= 0 && w.written < w.cl && !w.noBody {
		w.closeAfter = true // short body: the client sees the close
	}
	if err := bw.Flush(); err != nil {
		return false
	}
	return true
}

// sanitizeValue turns CR and LF into spaces (as net/http's Header.Write
// does), so no header value can split the response head.
func sanitizeValue(v string) string {
	if !containsCRLF(v) {
		return v
	}
	b := []byte(v)
	for i, c := range b {
		if c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return string(b)
}

func containsCRLF(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] == '\r' || v[i] == '\n' {
			return true
		}
	}
	return false
}

// date returns the current HTTP date, formatted once per second.
func (m *Manager) date() string {
	now := time.Now()
	sec := now.Unix()
	if d := m.dateCache.Load(); d != nil && d.sec == sec {
		return d.s
	}
	d := &cachedDate{sec: sec, s: now.UTC().Format(http.TimeFormat)}
	m.dateCache.Store(d)
	return d.s
}

type cachedDate struct {
	sec int64
	s   string
}

// trackFast registers (add) or forgets a fast-path connection. Adding
// fails once Shutdown or Close has begun.
func (m *Manager) trackFast(c *fastConn, add bool) bool {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	if add {
		if m.draining.Load() {
			return false
		}
		if m.fconns == nil {
			m.fconns = map[*fastConn]struct{}{}
		}
		m.fconns[c] = struct{}{}
		return true
	}
	delete(m.fconns, c)
	return true
}

// closeFast closes fast-path connections: all of them, or only idle ones.
// It returns how many remain open.
func (m *Manager) closeFast(all bool) int {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	for c := range m.fconns {
		if all || c.state.CompareAndSwap(fcIdle, fcClosed) {
			c.raw.Close()
		}
	}
	return len(m.fconns)
}

// shutdownFast waits for active fast-path connections to finish their
// request, closing each as it goes idle.
func (m *Manager) shutdownFast(ctx context.Context) error {
	m.draining.Store(true)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for m.closeFast(false) > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("hcm: shutdown: %d connections still active: %w", m.closeFast(false), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}
