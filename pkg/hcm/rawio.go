package hcm

import (
	"io"
	"net"
	"syscall"

	"github.com/meshlet/meshlet/pkg/sniff"
)

// rawSocket reads and writes a non-blocking socket with raw system calls,
// still waiting for readiness (and honouring deadlines and Close) through
// the runtime's network poller via syscall.RawConn.
//
// Why: every blocking-capable system call (net.Conn's Read and Write) goes
// through the scheduler's entersyscall, which wakes the sysmon thread with
// a futex whenever it went to sleep because all Ps were idle. A proxy
// waiting on its peers idles between every step of an exchange, so each
// step paid a futex wake-up and the context switches of sysmon's thread
// running beside the proxy's: a quarter of the proxy's CPU per gRPC call on
// a single-P process. read(2) and write(2) on a non-blocking socket never
// block, so they need no P hand-off.
//
// One goroutine may read and one may write at a time (the callers' own
// locking ensures it: bufio.Reader's single reader, coalescingConn's
// flusher, the fast paths' connection goroutines).
type rawSocket struct {
	rc syscall.RawConn
	// Per-direction state of the closures passed to rc (allocated once).
	rp       []byte
	rn       int
	rerr     error
	wp       []byte
	werr     error
	awaiting bool // writeAwait: written, now waiting for readability
	readF    func(fd uintptr) bool
	writeF   func(fd uintptr) bool
	awaitF   func(fd uintptr) bool
}

// newRawSocket returns raw I/O for c's socket, or nil when c is not a
// socket this package can reach (then callers use c's own methods).
func newRawSocket(c net.Conn) *rawSocket {
	sc, ok := c.(syscall.Conn)
	if !ok || !rawIOSupported {
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
	s := &rawSocket{rc: rc}
	s.readF = s.doRead
	s.writeF = s.doWrite
	s.awaitF = s.doAwait
	return s
}

// socketOf unwraps the connection types of this package and of pkg/sniff
// down to the socket; pre is the sniffer's replay buffer holder, when the
// socket sits under one.
func socketOf(c net.Conn) (sock net.Conn, pre *sniff.Conn) {
	for {
		switch v := c.(type) {
		case plainConn:
			c = v.Conn
		case *serverConn:
			c = v.Conn
		case *sniff.Conn:
			if pre != nil {
				return nil, nil // two replay layers: not ours to unwrap
			}
			pre, c = v, v.Conn
		default:
			return c, pre
		}
	}
}

// Read reads into p like net.Conn's Read.
func (s *rawSocket) Read(p []byte) (int, error) {
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
func (s *rawSocket) Write(p []byte) (int, error) {
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

// writeAwait writes all of p and then waits until the socket is readable
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
func (s *rawSocket) writeAwait(p []byte) (int, error) {
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

func (s *rawSocket) doAwait(fd uintptr) bool {
	if s.awaiting {
		return true // readable
	}
	if !s.doWrite(fd) || s.werr != nil {
		return true // send buffer full (finished by writeAwait) or failed
	}
	s.awaiting = true
	return false
}

// rawReader reads a connection through raw system calls once the
// sniffer's replay buffer (if any) is drained.
type rawReader struct {
	c   net.Conn // the connection as given (replays sniffed bytes first)
	pre *sniff.Conn
	s   *rawSocket
}

// newRawIO returns a reader and a writer for c sharing one rawSocket: the
// reader replays what a sniffer peeked first, then reads the socket with
// raw system calls. When raw I/O is not possible, both are c itself.
func newRawIO(c net.Conn) (io.Reader, io.Writer) {
	sock, pre := socketOf(c)
	s := newRawSocket(sock)
	if s == nil {
		return c, c
	}
	return &rawReader{c: c, pre: pre, s: s}, s
}

func (r *rawReader) Read(p []byte) (int, error) {
	if r.pre != nil {
		if len(r.pre.Peeked()) > 0 {
			return r.c.Read(p)
		}
		r.pre = nil
	}
	return r.s.Read(p)
}
