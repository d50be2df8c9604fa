package hcm

import (
	"net"
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
// nothing more to do right now. Write errors are sticky and reported by
// the next Write.
type coalescingConn struct {
	net.Conn
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

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c, kick: make(chan struct{}, 1), done: make(chan struct{})}
	cc.space.L = &cc.mu
	go cc.flusher()
	return cc
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
