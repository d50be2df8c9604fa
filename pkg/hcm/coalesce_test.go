package hcm

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// Every byte written arrives, in order, and Close sends what is queued
// before closing.
func TestCoalescingConnDelivers(t *testing.T) {
	a, b := tcpPair(t)
	cc := newCoalescingConn(a, false)
	var want bytes.Buffer
	got := make(chan []byte, 1)
	go func() {
		b.SetReadDeadline(time.Now().Add(10 * time.Second))
		all, _ := io.ReadAll(b)
		got <- all
	}()
	for i := range 20000 {
		var p [8]byte
		binary.BigEndian.PutUint64(p[:], uint64(i))
		n := 1 + i%8
		if _, err := cc.Write(p[:n]); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		want.Write(p[:n])
	}
	if err := cc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if all := <-got; !bytes.Equal(all, want.Bytes()) {
		t.Fatalf("received %d bytes, want %d (or content differs)", len(all), want.Len())
	}
	if _, err := cc.Write([]byte("x")); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

// A peer that does not read blocks writers once the buffer is full, and
// Close still returns (bounded by closeFlushTimeout) and fails them.
func TestCoalescingConnBackpressure(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	cc := newCoalescingConn(a, false)
	errc := make(chan error, 1)
	go func() {
		chunk := make([]byte, 16<<10)
		for {
			if _, err := cc.Write(chunk); err != nil {
				errc <- err
				return
			}
		}
	}()
	// The writer must block: nothing reads the pipe.
	select {
	case err := <-errc:
		t.Fatalf("writer did not block: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	start := time.Now()
	cc.Close()
	if d := time.Since(start); d > closeFlushTimeout+2*time.Second {
		t.Fatalf("Close took %v", d)
	}
	select {
	case <-errc:
	case <-time.After(5 * time.Second):
		t.Fatal("blocked writer not released by Close")
	}
}
