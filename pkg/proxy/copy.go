package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshlet/meshlet/internal/rawio"
	"github.com/meshlet/meshlet/pkg/sniff"
)

// bufSize is the copy buffer: large enough for a sockmap-redirected 64 KiB
// message in one read.
const bufSize = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

type closeWriter interface{ CloseWrite() error }

// relay copies src to dst until EOF or error. At EOF it half-closes dst so
// the peer sees the FIN while the other direction keeps flowing. idle > 0
// bounds how long a read may wait; the deadline is pushed forward at most
// once a second so the hot path does not reset a timer per read. With fwd
// set, it reports every relayed byte count to the kernel so kernel
// forwarding can take the stream over.
type relay struct {
	dst, src net.Conn
	// r reads src and w writes dst (raw socket I/O where possible,
	// internal/rawio); nil: src and dst themselves.
	r        io.Reader
	w        io.Writer
	idle     time.Duration
	counter  *atomic.Uint64
	lastRead *atomic.Int64
	fwd      Forwarding
	// total is what this relay copied, read once run has returned.
	total int64
}

// maxRelayedUpdates bounds the map updates spent on a direction whose
// kernel forwarding does not arm (its sender is not paired, or acceleration
// was switched off): after that the proxy just relays.
const maxRelayedUpdates = 16

// rawIO returns c's reader and writer with raw socket I/O, the reader
// replaying first what the protocol sniffer peeked.
func rawIO(c net.Conn) (io.Reader, io.Writer) {
	if sc, ok := c.(*sniff.Conn); ok {
		return rawio.Split(c, sc.Conn, sc)
	}
	return rawio.Split(c, c, nil)
}

func (r *relay) run() error {
	rd, wr := r.r, r.w
	if rd == nil {
		rd = r.src
	}
	if wr == nil {
		wr = r.dst
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var (
		armed   time.Time
		relayed uint64
		updates int
	)
	for {
		if r.idle > 0 {
			now := time.Now()
			if now.Sub(armed) > time.Second {
				armed = now
				_ = r.src.SetReadDeadline(now.Add(r.idle))
			}
		}
		n, rerr := rd.Read(buf)
		if n > 0 {
			r.lastRead.Store(time.Now().UnixNano())
			if _, werr := wr.Write(buf[:n]); werr != nil {
				return werr
			}
			r.counter.Add(uint64(n))
			r.total += int64(n)
			if r.fwd != nil {
				relayed += uint64(n)
				updates++
				if updates > maxRelayedUpdates || r.fwd.Relayed(relayed) != nil {
					r.fwd = nil
				}
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				if cw, ok := r.dst.(closeWriter); ok {
					_ = cw.CloseWrite()
				}
				return nil
			}
			if errors.Is(rerr, os.ErrDeadlineExceeded) && r.idle > 0 {
				// Idle only if the other direction was quiet too.
				if time.Since(time.Unix(0, r.lastRead.Load())) < r.idle {
					armed = time.Time{}
					continue
				}
				return errIdle
			}
			return rerr
		}
	}
}

var errIdle = errors.New("idle timeout")

// isReset reports a peer reset or an aborted connection.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}
