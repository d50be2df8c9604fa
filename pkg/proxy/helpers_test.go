package proxy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/proxy"
	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/state"
)

// testTimeout bounds every wait in these tests: generous for a loaded
// 2-core machine, short enough that a hang fails rather than stalls.
const testTimeout = 10 * time.Second

// recv waits for a value on ch, bounded.
func recv[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		t.Fatalf("timed out after %v waiting for %s", testTimeout, what)
		panic("unreachable")
	}
}

// origTable is the fake BPF original-destination map: it answers by the
// application socket's source IP, so a test decides each connection's
// destination before dialling (the proxy may look it up before Dial
// returns).
type origTable struct {
	mu    sync.Mutex
	byIP  map[netip.Addr]netip.AddrPort
	calls atomic.Int64
	next  atomic.Uint32
}

func newOrigTable() *origTable { return &origTable{byIP: map[netip.Addr]netip.AddrPort{}} }

func (o *origTable) OriginalDst(app netip.AddrPort) (netip.AddrPort, bool, error) {
	o.calls.Add(1)
	o.mu.Lock()
	defer o.mu.Unlock()
	dst, ok := o.byIP[app.Addr()]
	return dst, ok, nil
}

// source allocates a fresh loopback source address whose captured
// destination is dst (an invalid dst means "not captured").
func (o *origTable) source(dst netip.AddrPort) netip.Addr {
	n := o.next.Add(1)
	ip := netip.AddrFrom4([4]byte{127, 1, byte(n / 250), byte(n%250 + 1)})
	o.mu.Lock()
	defer o.mu.Unlock()
	if dst.IsValid() {
		o.byIP[ip] = dst
	}
	return ip
}

// harness is a running proxy serving on a loopback listener.
type harness struct {
	p    *proxy.Proxy
	addr netip.AddrPort
	orig *origTable
}

// startProxy runs a proxy with opts (Orig defaults to a fresh origTable)
// and snap (nil: no Update). wrap, if set, wraps the capture listener. The
// proxy is stopped, and Serve checked to return, when the test ends.
func startProxy(t *testing.T, opts proxy.Options, snap *state.Snapshot, wrap func(net.Listener) net.Listener) *harness {
	t.Helper()
	h := &harness{}
	if opts.Orig == nil {
		h.orig = newOrigTable()
		opts.Orig = h.orig
	} else if o, ok := opts.Orig.(*origTable); ok {
		h.orig = o
	}
	h.p = proxy.New(opts)
	if snap != nil {
		h.p.Update(snap)
	}
	lis, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen for the proxy: %v", err)
	}
	h.addr = lis.Addr().(*net.TCPAddr).AddrPort()
	if wrap != nil {
		lis = wrap(lis)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.p.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve returned %v after cancel, want nil", err)
			}
		case <-time.After(testTimeout):
			t.Errorf("Serve did not return within %v of cancel", testTimeout)
		}
	})
	return h
}

// dial connects to the proxy as an application whose connection was
// captured on its way to dst.
func (h *harness) dial(t *testing.T, dst string) *net.TCPConn {
	t.Helper()
	var d netip.AddrPort
	if dst != "" {
		d = netip.MustParseAddrPort(dst)
	}
	src := h.orig.source(d)
	dl := net.Dialer{Timeout: testTimeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
	c, err := dl.Dial("tcp4", h.addr.String())
	if err != nil {
		t.Fatalf("dial the proxy from %v: %v", src, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	return c.(*net.TCPConn)
}

// expectClosed asserts that the proxy closes c without sending anything.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	b, err := io.ReadAll(c)
	if len(b) > 0 {
		t.Fatalf("got %q from a connection the proxy should have closed", b)
	}
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read on a connection the proxy should have closed: %v", err)
	}
}

// upstream is a loopback TCP server.
type upstream struct {
	addr     netip.AddrPort
	accepted atomic.Int64
	mu       sync.Mutex
	peers    []netip.AddrPort
}

func newUpstream(t *testing.T, handle func(c *net.TCPConn)) *upstream {
	t.Helper()
	lis, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen for an upstream: %v", err)
	}
	u := &upstream{addr: lis.Addr().(*net.TCPAddr).AddrPort()}
	var wg sync.WaitGroup
	t.Cleanup(func() { lis.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.peers = append(u.peers, c.RemoteAddr().(*net.TCPAddr).AddrPort())
			u.mu.Unlock()
			u.accepted.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(testTimeout))
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	return u
}

// echoUpstream greets each connection with "name\n", then echoes until
// EOF and half-closes.
func echoUpstream(t *testing.T, name string) *upstream {
	return newUpstream(t, func(c *net.TCPConn) {
		if _, err := io.WriteString(c, name+"\n"); err != nil {
			return
		}
		_, _ = io.Copy(c, c)
		_ = c.CloseWrite()
	})
}

// readGreeting reads the "name\n" an echoUpstream sends first.
func readGreeting(t *testing.T, c net.Conn) string {
	t.Helper()
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			t.Fatalf("read the upstream's greeting (so far %q): %v", b, err)
		}
		if one[0] == '\n' {
			return string(b)
		}
		b = append(b, one[0])
	}
}

// roundTrip writes msg and reads it back from an echoing upstream.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read back %q: %v", msg, err)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
}

// Envoy resources as JSON trees, decoded with resources.Decode.
type M = map[string]any

func sockAddr(ap netip.AddrPort) M {
	return M{"socket_address": M{"address": ap.Addr().String(), "port_value": ap.Port()}}
}

func tcpProxy(cluster string) M {
	return M{"name": "envoy.filters.network.tcp_proxy", "typed_config": M{
		"@type":       "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
		"stat_prefix": "tcp", "cluster": cluster,
	}}
}

func tcpProxyIdle(cluster string, idle time.Duration) M {
	f := tcpProxy(cluster)
	f["typed_config"].(M)["idle_timeout"] = fmt.Sprintf("%gs", idle.Seconds())
	return f
}

// httpManager is an HCM with one inline route: every path to cluster.
func httpManager(cluster string) M {
	return M{"name": "envoy.filters.network.http_connection_manager", "typed_config": M{
		"@type":       "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
		"stat_prefix": "http",
		"route_config": M{"name": "r", "virtual_hosts": []M{{
			"name": "all", "domains": []string{"*"},
			"routes": []M{{"match": M{"prefix": "/"}, "route": M{"cluster": cluster}}},
		}}},
		"http_filters": []M{{"name": "envoy.filters.http.router", "typed_config": M{
			"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
		}}},
	}}
}

// chain is a filter chain; match may be nil.
func chain(name string, match M, filter M) M {
	c := M{"name": name, "filters": []M{filter}}
	if match != nil {
		c["filter_chain_match"] = match
	}
	return c
}

// listener is an outbound listener at addr with chains.
func listener(name, addr string, chains ...M) M {
	return M{"name": name, "address": sockAddr(netip.MustParseAddrPort(addr)), "filter_chains": chains}
}

// staticCluster is a STATIC cluster with the given endpoints.
func staticCluster(name string, eps ...netip.AddrPort) M {
	var lb []M
	for _, e := range eps {
		lb = append(lb, M{"endpoint": M{"address": sockAddr(e)}})
	}
	return M{"name": name, "type": "STATIC", "connect_timeout": "2s",
		"load_assignment": M{"cluster_name": name, "endpoints": []M{{"lb_endpoints": lb}}}}
}

// h2Cluster is a STATIC cluster whose upstreams speak HTTP/2 (h2c).
func h2Cluster(name string, eps ...netip.AddrPort) M {
	c := staticCluster(name, eps...)
	c["typed_extension_protocol_options"] = M{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": M{
		"@type":                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
		"explicit_http_config": M{"http2_protocol_options": M{}},
	}}
	return c
}

// snapshot builds a runtime snapshot from listeners and clusters.
func snapshot(t testing.TB, listeners []M, clusters []M) *state.Snapshot {
	t.Helper()
	return snapshotWith(t, listeners, clusters, state.Options{})
}

// snapshotWith is snapshot with build options.
func snapshotWith(t testing.TB, listeners []M, clusters []M, opts state.Options) *state.Snapshot {
	t.Helper()
	if listeners == nil {
		listeners = []M{}
	}
	if clusters == nil {
		clusters = []M{}
	}
	js, err := json.Marshal(M{"static_resources": M{"listeners": listeners, "clusters": clusters}})
	if err != nil {
		t.Fatalf("encode resources: %v", err)
	}
	set, err := resources.Decode(js)
	if err != nil {
		t.Fatalf("decode resources %s: %v", js, err)
	}
	s, err := state.Build(set, opts)
	if err != nil {
		t.Fatalf("build snapshot: %v", err)
	}
	return s
}

// dialControl is a fake DialControl that records its calls.
type dialControl struct {
	calls   atomic.Int64
	accel   atomic.Int64 // calls that asked for acceleration
	addrsMu sync.Mutex
	addrs   []string
}

func (d *dialControl) control(accel bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		d.calls.Add(1)
		if accel {
			d.accel.Add(1)
		}
		d.addrsMu.Lock()
		d.addrs = append(d.addrs, address)
		d.addrsMu.Unlock()
		return nil
	}
}
