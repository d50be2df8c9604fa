package rawio

import (
	"io"
	"net"
	"syscall"
)

// Socket reads and writes a non-blocking socket with raw system calls,
// waiting through the runtime's poller (see the package doc). One
// goroutine may read and one may write at a time (the callers' own
// structure ensures it).
type Socket struct {
	rc syscall.RawConn
	// Per-direction state of the closures passed to rc (allocated once).
	rp       []byte
	rn       int
	rerr     error
	wp       []byte
	werr     error
	awaiting bool // WriteAwait: written, now waiting for readability
	readF    func(fd uintptr) bool
	writeF   func(fd uintptr) bool
	awaitF   func(fd uintptr) bool
}

// New returns raw I/O for c's socket, or nil when c is not a TCP or Unix
// socket (then callers use c's own methods).
func New(c net.Conn) *Socket {
	sc, ok := c.(syscall.Conn)
	if !ok || !Supported {
		return nil
	}
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return nil // its own Read/Write may do more than the socket's
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &Socket{rc: rc}
	s.readF = s.doRead
	s.writeF = s.doWrite
	s.awaitF = s.doAwait
	return s
}

// Read reads into p like net.Conn's Read.
func (s *Socket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rp = p
	err := s.rc.Read(s.readF)
	s.rp = nil
	if err != nil {
		return 0, err
	}
	return s.rn, s.rerr
}

// Write writes all of p like net.Conn's Write.
func (s *Socket) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.wp, s.werr = p, nil
	err := s.rc.Write(s.writeF)
	n := len(p) - len(s.wp)
	s.wp = nil
	if err == nil {
		err = s.werr
	}
	return n, err
}

// WriteAwait writes all of p and then waits until the socket is readable
// (or a deadline passes), without the read attempt that a Read would make
// first: a request's response cannot be there yet, and that read would
// only find the socket empty (EAGAIN) before waiting.
//
// No wake-up can be missed: the poller's readiness is reset before the
// write, so whatever arrives after it (the response, the peer's reset or
// close) is seen; bytes the peer sent earlier without being asked are
// read by the caller's next Read once anything at all follows the write,
// and a peer that sends nothing more is bounded by the caller's deadlines
// as a Read would be.
func (s *Socket) WriteAwait(p []byte) (int, error) {
	s.wp, s.werr, s.awaiting = p, nil, false
	err := s.rc.Read(s.awaitF)
	n := len(p) - len(s.wp)
	rest := s.wp
	s.wp = nil
	if err == nil {
		err = s.werr
	}
	if err == nil && len(rest) > 0 {
		// The send buffer filled up: write the rest the ordinary way, the
		// caller's Read then waits for the response.
		m, werr := s.Write(rest)
		n, err = n+m, werr
	}
	return n, err
}

func (s *Socket) doAwait(fd uintptr) bool {
	if s.awaiting {
		return true // readable
	}
	if !s.doWrite(fd) || s.werr != nil {
		return true // send buffer full (finished by WriteAwait) or failed
	}
	s.awaiting = true
	return false
}

// Peeker is a connection that hands out bytes it already took from its
// socket (a protocol sniffer's) before reading the socket itself.
type Peeker interface {
	Peeked() []byte
}

// Reader reads a connection through raw system calls once its Peeker's
// bytes (if any) are drained.
type Reader struct {
	c   net.Conn // the connection as given (replays peeked bytes first)
	pre Peeker
	s   *Socket
}

// Split returns a reader and a writer for c sharing one Socket on sock,
// the socket under c (c itself, or what c wraps; pre, when not nil, is
// the layer of c that replays peeked bytes, which the reader reads through
// c first). When raw I/O is not possible, both are c itself.
func Split(c, sock net.Conn, pre Peeker) (io.Reader, io.Writer) {
	s := New(sock)
	if s == nil {
		return c, c
	}
	return &Reader{c: c, pre: pre, s: s}, s
}

// Read reads into p like net.Conn's Read.
func (r *Reader) Read(p []byte) (int, error) {
	if r.pre != nil {
		if len(r.pre.Peeked()) > 0 {
			return r.c.Read(p)
		}
		r.pre = nil
	}
	return r.s.Read(p)
}
