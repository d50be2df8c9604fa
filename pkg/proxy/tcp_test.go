package proxy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/internal/waitfor"
	"github.com/meshlet/meshlet/pkg/proxy"
)

// spyConn records use of the methods through which io.Copy (and so the
// runtime's splice(2) and sendfile paths) would move bytes. The relay must
// use plain Read and Write: sockmap-redirected bytes sit in a queue splice
// does not see.
type spyConn struct {
	*net.TCPConn
	reads, readFroms, writeTos *atomic.Int64
}

func (c spyConn) Read(b []byte) (int, error) { c.reads.Add(1); return c.TCPConn.Read(b) }

func (c spyConn) ReadFrom(r io.Reader) (int64, error) {
	c.readFroms.Add(1)
	return c.TCPConn.ReadFrom(r)
}

func (c spyConn) WriteTo(w io.Writer) (int64, error) {
	c.writeTos.Add(1)
	return c.TCPConn.WriteTo(w)
}

type spyListener struct {
	net.Listener
	reads, readFroms, writeTos atomic.Int64
}

func (l *spyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return spyConn{TCPConn: c.(*net.TCPConn), reads: &l.reads, readFroms: &l.readFroms, writeTos: &l.writeTos}, nil
}

func TestTCPProxyRelaysBytesBothWaysWithoutSplice(t *testing.T) {
	cases := []struct {
		name  string
		size  int
		accel bool
	}{
		{"one byte", 1, false},
		{"just over a buffer", 64<<10 + 1, true},
		{"4 MiB", 4 << 20, false},
		{"4 MiB accelerated upstream", 4 << 20, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstream(t, func(c *net.TCPConn) {
				_, _ = io.Copy(c, c)
				_ = c.CloseWrite()
			})
			snap := snapshot(t,
				[]M{listener("svc", "10.0.0.1:80", chain("", nil, tcpProxy("backend")))},
				[]M{staticCluster("backend", up.addr)})
			dc := &dialControl{}
			var spy *spyListener
			h := startProxy(t, proxy.Options{DialControl: dc.control, AccelUpstream: tc.accel}, snap,
				func(l net.Listener) net.Listener { spy = &spyListener{Listener: l}; return spy })

			c := h.dial(t, "10.0.0.1:80")
			want := make([]byte, tc.size)
			rng := rand.New(rand.NewPCG(uint64(tc.size), 1))
			for i := range want {
				want[i] = byte(rng.Uint32())
			}
			werr := make(chan error, 1)
			go func() {
				_, err := c.Write(want)
				if err == nil {
					err = c.CloseWrite()
				}
				werr <- err
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read the echo: %v (after %d bytes)", err, len(got))
			}
			if err := recv(t, "the client's writes", werr); err != nil {
				t.Fatalf("write through the proxy: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("echo differs: got %d bytes, want %d (first difference at %d)", len(got), len(want), firstDiff(got, want))
			}
			waitfor.Cond(t, "byte counters", func() bool {
				s := h.p.Stats()
				return s.BytesUp == uint64(tc.size) && s.BytesDown == uint64(tc.size)
			})
			if n := up.accepted.Load(); n != 1 {
				t.Errorf("upstream accepted %d connections, want 1", n)
			}
			if n := dc.calls.Load(); n != 1 {
				t.Errorf("DialControl ran %d times, want once for the one upstream socket", n)
			}
			if n, want := dc.accel.Load(), map[bool]int64{false: 0, true: 1}[tc.accel]; n != want {
				t.Errorf("DialControl asked for acceleration %d times, want %d (AccelUpstream=%v)", n, want, tc.accel)
			}
			if spy.reads.Load() == 0 {
				t.Error("the relay never called Read on the accepted connection")
			}
			if n, m := spy.readFroms.Load(), spy.writeTos.Load(); n != 0 || m != 0 {
				t.Errorf("the relay used ReadFrom %d times and WriteTo %d times (io.Copy, which splices); want plain Read/Write", n, m)
			}
			waitfor.Cond(t, "the connection to end", func() bool { return h.p.Stats().Active == 0 })
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestTCPProxyHalfClose checks that a FIN crosses the proxy in either
// direction while the other direction keeps flowing.
func TestTCPProxyHalfClose(t *testing.T) {
	type listenerKind struct {
		name string
		// chains of the listener at 10.0.0.1:80, all TCP traffic to "backend".
		lis func() M
	}
	plain := listenerKind{"plain tcp_proxy listener", func() M {
		return listener("svc", "10.0.0.1:80", chain("", nil, tcpProxy("backend")))
	}}
	// A chain matching on application protocol makes the proxy sniff the
	// first bytes; raw TCP still falls through to the tcp_proxy chain.
	sniffed := listenerKind{"sniffing listener, tcp_proxy fallback chain", func() M {
		return listener("svc", "10.0.0.1:80",
			chain("http", M{"application_protocols": []string{"http/1.1", "h2c"}}, httpManager("backend")),
			chain("tcp", nil, tcpProxy("backend")))
	}}
	for _, lk := range []listenerKind{plain, sniffed} {
		t.Run(lk.name+"/client closes first", func(t *testing.T) {
			up := newUpstream(t, func(c *net.TCPConn) {
				b, err := io.ReadAll(c)
				if err != nil {
					return
				}
				// The client's FIN arrived; the reply must still get through.
				_, _ = fmt.Fprintf(c, "got %d bytes: %s", len(b), b)
			})
			h := startProxy(t, proxy.Options{}, snapshot(t, []M{lk.lis()}, []M{staticCluster("backend", up.addr)}), nil)
			c := h.dial(t, "10.0.0.1:80")
			if _, err := io.WriteString(c, "no more from me"); err != nil {
				t.Fatal(err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read the reply after half-closing: %v (got %q)", err, got)
			}
			if want := "got 15 bytes: no more from me"; string(got) != want {
				t.Fatalf("reply %q, want %q", got, want)
			}
		})
		t.Run(lk.name+"/upstream closes first", func(t *testing.T) {
			late := make(chan string, 1)
			up := newUpstream(t, func(c *net.TCPConn) {
				if _, err := io.WriteString(c, "bye"); err != nil {
					return
				}
				if err := c.CloseWrite(); err != nil {
					return
				}
				b, _ := io.ReadAll(c)
				late <- string(b)
			})
			h := startProxy(t, proxy.Options{}, snapshot(t, []M{lk.lis()}, []M{staticCluster("backend", up.addr)}), nil)
			c := h.dial(t, "10.0.0.1:80")
			// The upstream's FIN must reach the client although the
			// client's side is still open. Over loopback it takes
			// microseconds; a few seconds is ample on a loaded machine.
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "bye" {
				t.Fatalf("client read %q, %v; want \"bye\" then EOF: the upstream's half-close must reach the client "+
					"(on a sniffed connection the relay's destination is a *sniff.Conn, which has no CloseWrite)", got, err)
			}
			if _, err := io.WriteString(c, "one more thing"); err != nil {
				t.Fatalf("write after the upstream's half-close: %v", err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if s := recv(t, "the upstream to read the client's late bytes", late); s != "one more thing" {
				t.Fatalf("upstream got %q after its half-close, want %q", s, "one more thing")
			}
		})
	}
}

func TestTCPProxyUpstreamFailureClosesClient(t *testing.T) {
	// A port nothing listens on: listen, note the port, close.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()

	cases := []struct {
		name     string
		clusters []M
	}{
		{"connection refused", []M{staticCluster("backend", closed)}},
		{"cluster without endpoints", []M{staticCluster("backend")}},
		{"cluster missing and no on-demand source", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			snap := snapshot(t, []M{listener("svc", "10.0.0.1:80", chain("", nil, tcpProxy("backend")))}, tc.clusters)
			h := startProxy(t, proxy.Options{}, snap, nil)
			c := h.dial(t, "10.0.0.1:80")
			start := time.Now()
			expectClosed(t, c)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("closing the client took %v", d)
			}
			waitfor.Cond(t, "the upstream failure to be counted", func() bool { return h.p.Stats().UpstreamFail == 1 })
			if s := h.p.Stats(); s.BytesUp != 0 || s.BytesDown != 0 || s.NoListener != 0 {
				t.Errorf("stats %+v: want only the upstream failure", s)
			}
		})
	}
}

func TestTCPProxyIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	up := echoUpstream(t, "backend")
	snap := snapshot(t, []M{listener("svc", "10.0.0.1:80", chain("", nil, tcpProxyIdle("backend", idle)))},
		[]M{staticCluster("backend", up.addr)})
	h := startProxy(t, proxy.Options{}, snap, nil)
	// Both directions are quiet from before the connection exists (the
	// greeting excepted), so the proxy may not close it sooner than idle
	// after this.
	start := time.Now()
	c := h.dial(t, "10.0.0.1:80")
	if g := readGreeting(t, c); g != "backend" {
		t.Fatalf("greeting %q", g)
	}
	b, err := io.ReadAll(c)
	if len(b) != 0 {
		t.Fatalf("unexpected bytes %q", b)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the proxy did not close an idle connection within %v (idle_timeout %v)", testTimeout, idle)
	}
	if d := time.Since(start); d < idle {
		t.Fatalf("closed %v after connecting, before idle_timeout %v", d, idle)
	}
}

// fakeForwarder records the directions the proxy hands to the kernel.
type fakeForwarder struct {
	err   error
	mu    sync.Mutex
	calls []*fakeForwarding
}

type fakeForwarding struct {
	from, via proxy.Tuple
	relayed   atomic.Uint64 // last reported total
	reports   atomic.Int64
	stopped   atomic.Int64
}

func (f *fakeForwarding) Relayed(n uint64) error { f.relayed.Store(n); f.reports.Add(1); return nil }
func (f *fakeForwarding) Stop()                  { f.stopped.Add(1) }

func (f *fakeForwarder) Forward(from, via proxy.Tuple) (proxy.Forwarding, error) {
	if f.err != nil {
		return nil, f.err
	}
	fw := &fakeForwarding{from: from, via: via}
	f.mu.Lock()
	f.calls = append(f.calls, fw)
	f.mu.Unlock()
	return fw, nil
}

func (f *fakeForwarder) forwardings() []*fakeForwarding {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*fakeForwarding(nil), f.calls...)
}

func TestTCPProxyKernelForwarding(t *testing.T) {
	t.Run("captured connection: both directions handed over, then stopped", func(t *testing.T) {
		up := echoUpstream(t, "backend")
		fwd := &fakeForwarder{}
		snap := snapshot(t, []M{listener("svc", "10.0.0.1:80", chain("", nil, tcpProxy("backend")))},
			[]M{staticCluster("backend", up.addr)})
		h := startProxy(t, proxy.Options{Forwarder: fwd}, snap, nil)
		c := h.dial(t, "10.0.0.1:80")
		readGreeting(t, c)
		roundTrip(t, c, "abc")
		roundTrip(t, c, "defgh")

		calls := fwd.forwardings()
		if len(calls) != 2 {
			t.Fatalf("Forward called %d times, want 2 (one per direction)", len(calls))
		}
		client := c.LocalAddr().(*net.TCPAddr).AddrPort()
		up.mu.Lock()
		proxyUp := up.peers[0]
		up.mu.Unlock()
		wantUp := proxy.Tuple{Local: client, Remote: h.addr}
		wantUpVia := proxy.Tuple{Local: proxyUp, Remote: up.addr}
		if calls[0].from != wantUp || calls[0].via != wantUpVia {
			t.Errorf("upward: Forward(%+v, %+v), want Forward(%+v, %+v)", calls[0].from, calls[0].via, wantUp, wantUpVia)
		}
		wantDown := proxy.Tuple{Local: up.addr, Remote: proxyUp}
		wantDownVia := proxy.Tuple{Local: h.addr, Remote: client}
		if calls[1].from != wantDown || calls[1].via != wantDownVia {
			t.Errorf("downward: Forward(%+v, %+v), want Forward(%+v, %+v)", calls[1].from, calls[1].via, wantDown, wantDownVia)
		}
		waitfor.Cond(t, "the relayed byte totals", func() bool {
			return calls[0].relayed.Load() == 8 && calls[1].relayed.Load() == uint64(len("backend\n")+8)
		})
		c.Close()
		waitfor.Cond(t, "both forwardings to stop", func() bool {
			return calls[0].stopped.Load() == 1 && calls[1].stopped.Load() == 1
		})
	})
	t.Run("forwarder refuses: the proxy relays", func(t *testing.T) {
		up := echoUpstream(t, "backend")
		fwd := &fakeForwarder{err: errors.New("sockets not paired")}
		snap := snapshot(t, []M{listener("svc", "10.0.0.1:80", chain("", nil, tcpProxy("backend")))},
			[]M{staticCluster("backend", up.addr)})
		h := startProxy(t, proxy.Options{Forwarder: fwd}, snap, nil)
		c := h.dial(t, "10.0.0.1:80")
		readGreeting(t, c)
		roundTrip(t, c, "still relayed")
	})
	t.Run("not captured: no forwarding", func(t *testing.T) {
		up := echoUpstream(t, "backend")
		fwd := &fakeForwarder{}
		h := startProxy(t, proxy.Options{Forwarder: fwd}, nil, nil)
		// Dialled explicitly: the proxy's own address is the destination.
		h.p.Update(snapshot(t, []M{listener("self", h.addr.String(), chain("", nil, tcpProxy("backend")))},
			[]M{staticCluster("backend", up.addr)}))
		c := h.dial(t, "")
		readGreeting(t, c)
		roundTrip(t, c, "direct")
		if n := len(fwd.forwardings()); n != 0 {
			t.Errorf("Forward called %d times for a connection that was not captured", n)
		}
		if n := h.p.Stats().NoOriginalDst; n != 1 {
			t.Errorf("NoOriginalDst %d, want 1", n)
		}
	})
}
