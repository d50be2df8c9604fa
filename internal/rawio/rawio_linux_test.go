package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/meshlet/meshlet/internal/nettest"
)

func mustRaw(t *testing.T, c net.Conn) *Socket {
	t.Helper()
	s := New(c)
	if s == nil {
		t.Fatalf("no raw socket for %T", c)
	}
	return s
}

// Bytes go both ways, a peer's close reads as io.EOF, and connection
// types other than sockets get no raw I/O.
func TestRawSocketReadWrite(t *testing.T) {
	a, b := nettest.TCPPair(t)
	s := mustRaw(t, a)
	big := bytes.Repeat([]byte("0123456789"), 100_000) // beyond the socket buffers
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, len(big))
		b.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := io.ReadFull(b, buf)
		got <- buf[:n]
	}()
	if n, err := s.Write(big); n != len(big) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if g := <-got; !bytes.Equal(g, big) {
		t.Fatalf("peer received %d bytes, want %d", len(g), len(big))
	}
	if _, err := b.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, err := io.ReadFull(s, buf[:4]); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	b.Close()
	if n, err := s.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read after peer close = %d, %v; want 0, EOF", n, err)
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if New(p1) != nil {
		t.Fatal("raw socket for a net.Pipe")
	}
	if r, _ := Split(p1, p1, nil); r != io.Reader(p1) {
		t.Fatalf("Split(pipe) reader = %T, want the pipe itself", r)
	}
}

// Deadlines and Close interrupt a blocked raw Read as they do net.Conn's.
func TestRawSocketDeadlineAndClose(t *testing.T) {
	a, _ := nettest.TCPPair(t)
	s := mustRaw(t, a)
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := s.Read(make([]byte, 8))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past deadline: %v, want a timeout", err)
	}
	a.SetReadDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 8))
		errc <- err
	}()
	// Close until the reader returns (it may not be blocked yet).
	a.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read on closed conn: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not interrupt Read")
	}
}

// WriteAwait returns once the answer is there (which the next Read gets
// without waiting), or the peer closes, or the deadline passes.
func TestRawSocketWriteAwait(t *testing.T) {
	a, b := nettest.TCPPair(t)
	s := mustRaw(t, a)
	answer := make(chan struct{})
	go func() {
		buf := make([]byte, 3)
		if _, err := io.ReadFull(b, buf); err != nil {
			return
		}
		<-answer
		b.Write([]byte("resp"))
	}()
	done := make(chan error, 1)
	go func() {
		_, err := s.WriteAwait([]byte("req"))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("WriteAwait returned before the answer: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(answer)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WriteAwait: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WriteAwait did not return after the answer")
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "resp" {
		t.Fatalf("Read = %q, %v", buf, err)
	}

	// A peer that closes instead of answering.
	go func() {
		buf := make([]byte, 3)
		io.ReadFull(b, buf)
		b.Close()
	}()
	if _, err := s.WriteAwait([]byte("req")); err != nil {
		t.Fatalf("WriteAwait to a closing peer: %v", err)
	}
	if _, err := s.Read(buf); err != io.EOF {
		t.Fatalf("Read after peer close: %v, want EOF", err)
	}

	// A peer that never answers: the deadline bounds the wait.
	c, _ := nettest.TCPPair(t)
	sc := mustRaw(t, c)
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := sc.WriteAwait([]byte("req")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteAwait past deadline: %v, want a timeout", err)
	}
}
