package hcm

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/meshlet/meshlet/internal/nettest"
)

// Every byte written arrives, in order, and Close sends what is queued
// before closing.
func TestCoalescingConnDelivers(t *testing.T) {
	a, b := nettest.TCPPair(t)
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

// h2frame returns an HTTP/2 frame of type typ with flags and n payload bytes.
func h2frame(typ, flags byte, n int) []byte {
	f := make([]byte, 9+n)
	f[0], f[1], f[2], f[3], f[4] = byte(n>>16), byte(n>>8), byte(n), typ, flags
	return f
}

// PING acks (with any WINDOW_UPDATEs) wait for the next write (which carries
// them, in order) or for ctlDelay; anything else leaves at once.
func TestCoalescingConnDefersControl(t *testing.T) {
	a, b := nettest.TCPPair(t)
	cc := newCoalescingConn(a, false)
	cc.deferControl(3) // a 3-byte "preface" first
	defer cc.Close()
	pending := func() (int, bool) {
		cc.mu.Lock()
		defer cc.mu.Unlock()
		return len(cc.buf), cc.ctlOnly
	}
	readN := func(n int) []byte {
		t.Helper()
		buf := make([]byte, n)
		b.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(b, buf); err != nil {
			t.Fatalf("peer read: %v", err)
		}
		// The peer can have the bytes before the flusher's write returns;
		// wait for the flusher to be done (writes while it is busy follow
		// at once by design).
		for deadline := time.Now().Add(10 * time.Second); ; {
			cc.mu.Lock()
			idle := !cc.busy && len(cc.buf) == 0
			cc.mu.Unlock()
			if idle {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("flusher still busy")
			}
			time.Sleep(time.Millisecond)
		}
		return buf
	}
	settings := append([]byte("PRI"), h2frame(0x4, 0, 6)...)
	if _, err := cc.Write(settings); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readN(len(settings)), settings) {
		t.Fatal("preface and SETTINGS altered")
	}

	pingAck := h2frame(0x6, 0x1, 8)
	wu := h2frame(0x8, 0, 4)
	if _, err := cc.Write(pingAck); err != nil {
		t.Fatal(err)
	}
	if _, err := cc.Write(wu); err != nil { // joins the held ack
		t.Fatal(err)
	}
	if n, ctl := pending(); n != len(pingAck)+len(wu) || !ctl {
		t.Fatalf("after PING ack + WINDOW_UPDATE: %d bytes pending (control only: %v), want them held", n, ctl)
	}
	data := h2frame(0x0, 0x1, 100)
	if _, err := cc.Write(data); err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]byte{}, pingAck...), wu...), data...)
	if got := readN(len(want)); !bytes.Equal(got, want) {
		t.Fatal("held frames and DATA not delivered in order")
	}
	if cc.ctlT.Stop() {
		t.Error("the held acks left with the DATA, but their flush timer was still pending")
	}

	// Alone, an ack leaves after ctlDelay.
	start := time.Now()
	if _, err := cc.Write(pingAck); err != nil {
		t.Fatal(err)
	}
	readN(len(pingAck))
	if d := time.Since(start); d < ctlDelay/2 {
		t.Errorf("lone PING ack sent after %v, want it held about %v", d, ctlDelay)
	}

	// A PING (no ack), a WINDOW_UPDATE alone (a sender may be waiting
	// for it) or a frame split across writes is not held.
	if _, err := cc.Write(wu); err != nil {
		t.Fatal(err)
	}
	if _, ctl := pending(); ctl {
		t.Fatal("lone WINDOW_UPDATE held")
	}
	readN(len(wu))
	if _, err := cc.Write(h2frame(0x6, 0, 8)); err != nil {
		t.Fatal(err)
	}
	if _, ctl := pending(); ctl {
		t.Fatal("PING without ACK held")
	}
	readN(17)
	split := h2frame(0x6, 0x1, 8)
	cc.Write(split[:5])
	cc.Write(split[5:])
	if _, ctl := pending(); ctl {
		t.Fatal("frame split across writes held")
	}
	readN(len(split))

	// Close sends what is held.
	if _, err := cc.Write(pingAck); err != nil {
		t.Fatal(err)
	}
	cc.Close()
	if got := readN(len(pingAck)); !bytes.Equal(got, pingAck) {
		t.Fatal("Close dropped a held PING ack")
	}
}

// FuzzScanFrames checks the frame-boundary tracking of deferControl against
// a model: the input describes a stream of frames (type, flags, payload
// length) cut into writes at arbitrary points; for every write, scanFrames
// must report "control only" exactly when the write is whole frames of
// PING acks and WINDOW_UPDATEs, and "ack" when a PING ack's header ends in
// it (and the write does not end inside a header).
func FuzzScanFrames(f *testing.F) {
	f.Add([]byte{0x6, 0x1, 8, 0, 0x8, 0, 4, 0, 0x0, 0x1, 100, 3}, []byte{17, 1, 9, 40})
	f.Add([]byte{0x1, 0x4, 30, 0, 0x6, 0x0, 8, 0}, []byte{9, 9, 0, 200})
	f.Fuzz(func(t *testing.T, spec, cuts []byte) {
		type frame struct {
			start, hdrEnd, end int
			ctl, ack           bool
		}
		var stream []byte
		var frames []frame
		for i := 0; i+4 <= len(spec) && len(frames) < 64; i += 4 {
			typ, flags := spec[i], spec[i+1]
			n := int(binary.BigEndian.Uint16(spec[i+2:])) % 600
			fr := frame{start: len(stream), hdrEnd: len(stream) + 9}
			stream = append(stream, h2frame(typ, flags, n)...)
			fr.end = len(stream)
			fr.ack = typ == 0x6 && flags&0x1 != 0
			fr.ctl = fr.ack || typ == 0x8
			frames = append(frames, fr)
		}
		boundary := map[int]bool{0: true}
		for _, fr := range frames {
			boundary[fr.end] = true
		}
		c := &coalescingConn{frames: true}
		for pos, k := 0, 0; pos < len(stream); k++ {
			n := len(stream) - pos
			if k < len(cuts) {
				n = min(n, int(cuts[k])+1)
			}
			end := pos + n
			wantCtl := boundary[pos] && boundary[end]
			wantAck, midHeader := false, false
			for _, fr := range frames {
				if fr.hdrEnd > pos && fr.hdrEnd <= end {
					wantAck = wantAck || fr.ack
				}
				if fr.start < end && fr.end > pos && !fr.ctl {
					wantCtl = false
				}
				if fr.start < end && end < fr.hdrEnd {
					midHeader = true
				}
			}
			if midHeader {
				wantCtl, wantAck = false, false
			}
			ctl, ack := c.scanFrames(stream[pos:end])
			if ctl != wantCtl || ack != wantAck {
				t.Fatalf("write [%d,%d) of %d: scanFrames = (ctl %v, ack %v), want (%v, %v)", pos, end, len(stream), ctl, ack, wantCtl, wantAck)
			}
			pos = end
		}
		if c.rem != 0 || c.hn != 0 {
			t.Fatalf("after the whole stream: %d payload bytes and %d header bytes still expected", c.rem, c.hn)
		}
	})
}
