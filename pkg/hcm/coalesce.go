package hcm

import (
	"bufio"
	"io"
	"net"
	"runtime"
	"sync"
	"time"
)

// coalesceLimit bounds the bytes a coalescingConn holds: writers block
// beyond it until the flusher has written them (backpressure from a peer
// that does not read reaches the writer as before).
const coalesceLimit = 64 << 10

// coalescingConn batches writes to an upstream HTTP/2 connection.
// x/net/http2's Transport flushes frame by frame (HEADERS, then each DATA
// frame, then END_STREAM, each WINDOW_UPDATE), one write(2) each. Here a
// Write only appends to a buffer and wakes a flusher goroutine, which
// writes everything queued once it runs, that is when the writers have
// nothing more to do right now: before taking the buffer it yields the
// processor while the buffer keeps growing, so a response's HEADERS, DATA
// and trailers, produced by a chain of goroutines (handler, server loop),
// leave in one write instead of two or three. Write errors are sticky and
// reported by the next Write.
//
// With readBuf, reads go through a buffer: x/net's server reads each frame
// header and payload with its own read(2) otherwise.
//
// With deferControl, a write holding nothing but PING acknowledgements
// (WINDOW_UPDATEs may join them) does not wake the flusher: it
// leaves with the next write (on a gRPC connection, the response or
// request that follows within the exchange), or after ctlDelay at the
// latest. grpc-go pings once per call
// (BDP estimation) and each acknowledgement was a write(2) of its own, on
// both sides of the proxy, ahead of the frames the exchange waits for.
type coalescingConn struct {
	net.Conn
	rd     io.Reader     // the socket's reader (raw system calls when possible)
	wr     io.Writer     // the socket's writer, used by the flusher only
	br     *bufio.Reader // nil: unbuffered reads
	mu     sync.Mutex
	space  sync.Cond // signalled when the buffer drains or on error
	buf    []byte
	spare  []byte
	busy   bool // the flusher is writing
	err    error
	kick   chan struct{}
	done   chan struct{}
	closed sync.Once

	// Control-frame deferral (deferControl); guarded by mu.
	frames  bool        // track HTTP/2 frame boundaries in what is written
	rem     int         // bytes left of the frame (or preface) being written
	hn      int         // bytes of a frame header split across writes
	hdr     [9]byte     // that header
	ctlOnly bool        // buf holds only deferred control frames
	ctlT    *time.Timer // flushes deferred control frames after ctlDelay
}

// ctlDelay bounds how long a PING acknowledgement waits for other frames
// to travel with.
const ctlDelay = time.Millisecond

// deferControl makes c hold back writes of only PING acks (see
// coalescingConn). preface is the number of bytes written before the
// first frame (the client connection preface). Call before the first
// Write.
func (c *coalescingConn) deferControl(preface int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.frames, c.rem = true, preface
	c.ctlT = time.AfterFunc(time.Hour, c.flushControl)
	c.ctlT.Stop()
}

// flushControl sends deferred control frames.
func (c *coalescingConn) flushControl() {
	c.mu.Lock()
	wake := c.ctlOnly
	c.ctlOnly = false
	c.mu.Unlock()
	if wake {
		c.wake()
	}
}

func (c *coalescingConn) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// scanFrames follows the frame boundaries through p (the frame headers
// only: length, type, flags) and reports whether p is whole frames of
// only PING acks and WINDOW_UPDATEs (ctl), and whether one of them is a
// PING ack. Called with mu held.
func (c *coalescingConn) scanFrames(p []byte) (ctl, ack bool) {
	ctl = c.rem == 0 && c.hn == 0
	for len(p) > 0 {
		if c.rem > 0 {
			k := min(c.rem, len(p))
			c.rem -= k
			p = p[k:]
			continue
		}
		k := copy(c.hdr[c.hn:], p)
		c.hn += k
		p = p[k:]
		if c.hn < len(c.hdr) {
			return false, false
		}
		c.hn = 0
		c.rem = int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
		const typePing, typeWindowUpdate, flagAck = 0x6, 0x8, 0x1
		switch t := c.hdr[3]; {
		case t == typePing && c.hdr[4]&flagAck != 0:
			ack = true
		case t != typeWindowUpdate:
			ctl = false
		}
	}
	return ctl && c.rem == 0, ack
}

func newCoalescingConn(c net.Conn, readBuf bool) *coalescingConn {
	cc := &coalescingConn{Conn: c, kick: make(chan struct{}, 1), done: make(chan struct{})}
	cc.rd, cc.wr = newRawIO(c)
	if readBuf {
		cc.br = bufio.NewReaderSize(cc.rd, coalesceReadBuf)
	}
	cc.space.L = &cc.mu
	go cc.flusher()
	return cc
}

// coalesceReadBuf is the read buffer of a downstream HTTP/2 connection.
const coalesceReadBuf = 16 << 10

// maxYields bounds how often the flusher lets other goroutines add to the
// buffer before it writes.
const maxYields = 4

// Read reads from the connection, through the read buffer if any. Only
// one goroutine may read (the HTTP/2 server's or transport's frame reader).
func (c *coalescingConn) Read(p []byte) (int, error) {
	if c.br != nil {
		return c.br.Read(p)
	}
	return c.rd.Read(p)
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for len(c.buf) >= coalesceLimit && c.err == nil {
		c.space.Wait()
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	wake := len(c.buf) == 0
	if c.frames {
		// A PING ack with nothing in flight that it could follow at once
		// waits for company; WINDOW_UPDATEs join a waiting ack, but never
		// wait on their own (a peer sending a large body may need them).
		switch ctl, ack := c.scanFrames(p); {
		case wake && ctl && ack && !c.busy:
			wake, c.ctlOnly = false, true
			c.ctlT.Reset(ctlDelay)
		case c.ctlOnly && !ctl:
			wake, c.ctlOnly = true, false
			// The acks leave with these frames: a pending timer would
			// only wake the poller for nothing.
			c.ctlT.Stop()
		}
	}
	c.buf = append(c.buf, p...)
	c.mu.Unlock()
	if wake {
		c.wake()
	}
	return len(p), nil
}

func (c *coalescingConn) flusher() {
	for {
		select {
		case <-c.kick:
		case <-c.done:
			return
		}
		// Let the goroutines that are runnable now (the handler finishing
		// its response, the server loop framing trailers) add to the buffer
		// before it leaves; stop once a yield adds nothing.
		c.mu.Lock()
		n := len(c.buf)
		c.mu.Unlock()
		for range maxYields {
			runtime.Gosched()
			c.mu.Lock()
			m := len(c.buf)
			c.mu.Unlock()
			if m == n {
				break
			}
			n = m
		}
		for {
			c.mu.Lock()
			b := c.buf
			if len(b) == 0 || c.err != nil {
				c.mu.Unlock()
				break
			}
			c.buf = c.spare[:0]
			if c.ctlOnly {
				c.ctlOnly = false
				c.ctlT.Stop()
			}
			c.busy = true
			c.mu.Unlock()
			_, err := c.wr.Write(b)
			c.mu.Lock()
			c.busy = false
			if err != nil && c.err == nil {
				c.err = err
			}
			if cap(b) <= 2*coalesceLimit {
				c.spare = b[:0]
			}
			c.space.Broadcast()
			c.mu.Unlock()
		}
	}
}

// Close writes what is queued (for at most closeFlushTimeout: a peer that
// does not read cannot hold it) and closes the connection.
func (c *coalescingConn) Close() error {
	c.closed.Do(func() {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
		c.mu.Lock()
		if c.ctlOnly {
			c.ctlOnly = false
			c.wake()
		}
		for (len(c.buf) > 0 || c.busy) && c.err == nil {
			c.space.Wait()
		}
		if c.err == nil {
			c.err = net.ErrClosed
		}
		c.space.Broadcast()
		c.mu.Unlock()
		close(c.done)
	})
	return c.Conn.Close()
}

const closeFlushTimeout = time.Second
