package sniff

import (
	"net"
	"sync"
	"sync/atomic"
)

// Conn replays the bytes consumed by Detect before reading from the
// underlying connection. It exposes only the net.Conn method set: no
// ReadFrom/WriteTo, so io.Copy uses plain read/write loops (never splice).
type Conn struct {
	net.Conn
	mu   sync.Mutex // guards peek/pool against a concurrent Close
	peek []byte
	pool *[]byte
	done atomic.Bool // set once the replay buffer is drained
}

// NewConn wraps c so that Read first returns peeked. Useful for callers
// that sniffed by other means. peeked is not copied.
func NewConn(c net.Conn, peeked []byte) *Conn { return &Conn{Conn: c, peek: peeked} }

func (c *Conn) setPeek(b []byte) {
	c.peek = b
	if len(b) == 0 {
		c.release()
	}
}

// Peeked returns the bytes read by Detect that have not been replayed yet.
// The slice is only valid until the next Read.
func (c *Conn) Peeked() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peek
}

// Read returns the replay buffer first, then reads from the socket.
func (c *Conn) Read(p []byte) (int, error) {
	if !c.done.Load() {
		c.mu.Lock()
		if len(c.peek) > 0 {
			n := copy(p, c.peek)
			c.peek = c.peek[n:]
			if len(c.peek) == 0 {
				c.release()
			}
			c.mu.Unlock()
			return n, nil
		}
		c.mu.Unlock()
	}
	return c.Conn.Read(p)
}

// release returns the pooled buffer; callers hold mu or own c exclusively.
func (c *Conn) release() {
	if c.pool != nil {
		*c.pool = (*c.pool)[:0]
		bufPool.Put(c.pool)
		c.pool = nil
	}
	c.peek = nil
	c.done.Store(true)
}

// Close closes the underlying connection and frees the replay buffer.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.release()
	c.mu.Unlock()
	return c.Conn.Close()
}

// CloseWrite half-closes the underlying connection, so that a relay
// writing to a sniffed connection passes the peer's FIN on. (Still no
// ReadFrom/WriteTo: the splice fast path stays out of reach.)
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
