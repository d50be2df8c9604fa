package sniff

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

func pipeWith(t *testing.T, data []byte, closeAfter bool) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if len(data) > 0 {
		if _, err := cli.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if closeAfter {
		cli.(*net.TCPConn).CloseWrite()
	}
	return srv
}

func TestDetect(t *testing.T) {
	cases := []struct {
		name  string
		data  string
		close bool
		want  Protocol
	}{
		{"get", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, HTTP1},
		{"post", "POST /a?b=c HTTP/1.0\r\n\r\n", false, HTTP1},
		{"patch", "PATCH /x HTTP/1.1\r\n", false, HTTP1},
		{"h2", Preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00", false, HTTP2},
		{"tls", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", false, TLS},
		{"redis", "*1\r\n$4\r\nPING\r\n", false, Unknown},
		{"get-no-version", "GET /\r\n", true, Unknown},
		{"long-target", "GET /" + string(bytes.Repeat([]byte("a"), 200)) + " HTTP/1.1\r\n\r\n", false, HTTP1},
		{"partial-then-close", "PO", true, Unknown},
		{"pri-garbage", "PRI * HTTP/1.1\r\n", false, Unknown},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := pipeWith(t, []byte(tc.data), tc.close)
			p, c, err := Detect(srv, DefaultMaxBytes, 2*time.Second)
			if p != tc.want {
				t.Fatalf("proto = %v, want %v (err %v)", p, tc.want, err)
			}
			// Replay must return exactly what the client sent.
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			got := make([]byte, len(tc.data))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatalf("replay read: %v", err)
			}
			if string(got) != tc.data {
				t.Fatalf("replay = %q, want %q", got, tc.data)
			}
		})
	}
}

// A server-speaks-first protocol: the client sends nothing; Detect must
// give up at the deadline with Unknown and no error.
func TestDetectTimeout(t *testing.T) {
	srv := pipeWith(t, nil, false)
	start := time.Now()
	p, c, err := Detect(srv, DefaultMaxBytes, 50*time.Millisecond)
	if p != Unknown || err != nil {
		t.Fatalf("got %v, %v; want Unknown, nil", p, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Detect blocked for %v", d)
	}
	if len(c.Peeked()) != 0 {
		t.Fatalf("peeked %q", c.Peeked())
	}
	// The deadline must have been cleared: a later read blocks rather than
	// failing immediately. Prove it by writing from the server side (the
	// conn is still usable for writes) and checking no deadline error.
	if _, err := c.Write([]byte("220 hello\r\n")); err != nil {
		t.Fatalf("write after timeout: %v", err)
	}
}

func TestDetectClosed(t *testing.T) {
	srv := pipeWith(t, nil, true)
	p, _, err := Detect(srv, DefaultMaxBytes, time.Second)
	if p != Unknown || err != ErrClosed {
		t.Fatalf("got %v, %v; want Unknown, ErrClosed", p, err)
	}
}

// Bytes trickling one at a time must still be classified.
func TestDetectTrickle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		for i := range len(Preface) {
			cli.Write([]byte{Preface[i]})
		}
	}()
	p, _, err := Detect(srv, DefaultMaxBytes, 5*time.Second)
	if p != HTTP2 || err != nil {
		t.Fatalf("got %v, %v", p, err)
	}
}

func TestConnHidesReadFrom(t *testing.T) {
	var c any = &Conn{}
	if _, ok := c.(io.ReaderFrom); ok {
		t.Fatal("Conn must not implement io.ReaderFrom (splice path)")
	}
	if _, ok := c.(io.WriterTo); ok {
		t.Fatal("Conn must not implement io.WriterTo (splice path)")
	}
}

func FuzzClassify(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n", Preface, "\x16\x03\x01\x00\x10\x01", "PUT", "P", "", "\x16", "OPTIONS * HTTP/1.0"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := Classify(b)
		if ok {
			// Deciding is monotonic: more bytes never change the verdict.
			p2, ok2 := Classify(append(append([]byte{}, b...), 'x', ' ', '\r'))
			if !ok2 || p2 != p {
				t.Fatalf("verdict changed with more bytes: %v -> %v/%v", p, p2, ok2)
			}
		}
		if p == HTTP2 && !bytes.HasPrefix(b, []byte(Preface)) {
			t.Fatalf("HTTP2 without preface: %q", b)
		}
	})
}

func BenchmarkClassify(b *testing.B) {
	in := []byte("GET /api/v1/items?id=42 HTTP/1.1\r\nHost: x\r\n")
	b.ReportAllocs()
	for b.Loop() {
		Classify(in)
	}
}
