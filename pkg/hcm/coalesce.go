package hcm

import (
	"bufio"
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
type coalescingConn struct {
	net.Conn
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
}

func newCoalescingConn(c net.Conn, readBuf bool) *coalescingConn {
	cc := &coalescingConn{Conn: c, kick: make(chan struct{}, 1), done: make(chan struct{})}
	if readBuf {
		cc.br = bufio.NewReaderSize(c, coalesceReadBuf)
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
	return c.Conn.Read(p)
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
	c.buf = append(c.buf, p...)
	c.mu.Unlock()
	if wake {
		select {
		case c.kick <- struct{}{}:
		default:
		}
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
			c.busy = true
			c.mu.Unlock()
			_, err := c.Conn.Write(b)
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
