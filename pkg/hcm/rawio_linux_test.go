package hcm

import (
	"io"
	"testing"

	"github.com/meshlet/meshlet/internal/rawio"
	"github.com/meshlet/meshlet/pkg/sniff"

	"github.com/meshlet/meshlet/internal/nettest"
)

// A sniffed connection replays its peeked bytes before raw reads begin.
func TestRawReaderAfterSniff(t *testing.T) {
	a, b := nettest.TCPPair(t)
	sc := sniff.NewConn(a, []byte("PRE"))
	r, _ := newRawIO(&serverConn{Conn: sc, done: make(chan struct{})})
	if _, ok := r.(*rawio.Reader); !ok {
		t.Fatalf("newRawIO(sniffed TCP) reader = %T, want *rawio.Reader", r)
	}
	if _, err := b.Write([]byte("POST")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 7)
	if _, err := io.ReadFull(r, got); err != nil || string(got) != "PREPOST" {
		t.Fatalf("read %q, %v; want PREPOST", got, err)
	}
}
