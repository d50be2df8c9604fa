package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/meshlet/meshlet/pkg/accesslog"
	"github.com/meshlet/meshlet/pkg/hcm"
	"github.com/meshlet/meshlet/pkg/health"
	"github.com/meshlet/meshlet/pkg/sniff"
	"github.com/meshlet/meshlet/pkg/state"
)

// OriginalDst answers "where was this captured connection going?" from the
// application socket's address (the accepted connection's remote address).
type OriginalDst interface {
	OriginalDst(app netip.AddrPort) (dst netip.AddrPort, ok bool, err error)
}

// Tuple names a TCP socket by its local and remote addresses.
type Tuple struct {
	Local, Remote netip.AddrPort
}

// Reverse is the socket at the other end of the connection.
func (t Tuple) Reverse() Tuple { return Tuple{Local: t.Remote, Remote: t.Local} }

// Forwarder hands a plain TCP byte stream to the kernel once the upstream
// is chosen: sends of the socket from go to the far end of via without
// waking the proxy.
type Forwarder interface {
	Forward(from, via Tuple) (Forwarding, error)
}

// Forwarding is one direction handed to the kernel.
type Forwarding interface {
	// Relayed reports the bytes the proxy relayed from the sender so far.
	Relayed(n uint64) error
	Stop()
}

// Options configure a Proxy.
type Options struct {
	Log  *zap.Logger
	Orig OriginalDst
	// DialControl runs on each upstream socket before connect (the data
	// path uses it to mark the agent's own sockets). accel asks for
	// same-node acceleration of that socket.
	DialControl func(accel bool) func(network, address string, c syscall.RawConn) error
	// AccelUpstream pairs upstream sockets for acceleration.
	AccelUpstream bool
	// AccessLog, if set, gets one entry per HTTP request.
	AccessLog *zap.Logger
	// Forwarder, if set, hands captured plain TCP connections to the
	// kernel.
	Forwarder Forwarder
	// OnDemand, if set, asks the config source for a cluster the current
	// config lacks; the connection waits for it (bounded by OnDemandWait).
	OnDemand     func(ctx context.Context, cluster string) error
	OnDemandWait time.Duration
}

// Proxy is the capture listener's connection handler.
type Proxy struct {
	log   *zap.Logger
	opts  Options
	snap  atomic.Pointer[state.Snapshot]
	stats Stats
	l7    *l7
	// health runs the active health checks of the snapshot in force.
	health     *health.Checker
	healthMu   sync.Mutex
	healthMsgs string // the checks last reported as not run

	wg sync.WaitGroup
}

// Stats are the proxy's counters.
type Stats struct {
	Accepted      atomic.Uint64
	Active        atomic.Int64
	NoOriginalDst atomic.Uint64
	NoListener    atomic.Uint64
	UpstreamFail  atomic.Uint64
	BytesUp       atomic.Uint64 // downstream -> upstream
	BytesDown     atomic.Uint64
	HTTPConns     atomic.Uint64
}

// StatsView is a copy of the counters for reports.
type StatsView struct {
	Accepted      uint64 `json:"accepted"`
	Active        int64  `json:"active"`
	NoOriginalDst uint64 `json:"no_original_dst"`
	NoListener    uint64 `json:"no_listener"`
	UpstreamFail  uint64 `json:"upstream_connect_fail"`
	BytesUp       uint64 `json:"bytes_up"`
	BytesDown     uint64 `json:"bytes_down"`
	HTTPConns     uint64 `json:"http_connections"`
}

// New returns a Proxy with no config: connections are refused until Update.
func New(opts Options) *Proxy {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	p := &Proxy{log: opts.Log, opts: opts, health: health.New(opts.Log.Named("health"))}
	p.l7 = newL7(p)
	return p
}

// Update swaps the config atomically. Connections already established keep
// the snapshot they started with.
func (p *Proxy) Update(s *state.Snapshot) {
	p.snap.Store(s)
	p.l7.retain(s)
	var msgs []string
	for _, err := range p.health.Sync(s) {
		msgs = append(msgs, err.Error())
	}
	// Said once per change, not at every update.
	j := strings.Join(msgs, "; ")
	p.healthMu.Lock()
	changed := j != p.healthMsgs
	p.healthMsgs = j
	p.healthMu.Unlock()
	if changed {
		for _, m := range msgs {
			p.log.Warn("active health check not run", zap.String("reason", m))
		}
	}
}

// Check refuses a snapshot that Update would take but whose HTTP
// connection managers or route configurations could not serve a request
// (a bad regex or format string, a bad filter config): call it before
// Update so the update is NACKed with the reason and the config in force
// stays.
func (p *Proxy) Check(s *state.Snapshot) error { return p.l7.check(s) }

// RenewUpstreams retires the HTTP upstream connections the proxy pools, so
// that requests from now on go over new sockets: the ones in use finish
// their exchange first. The agent calls it when a change of the data path
// applies only to sockets made after it (into_app acceleration).
func (p *Proxy) RenewUpstreams() { p.l7.renewUpstreams() }

// Snapshot returns the config in force.
func (p *Proxy) Snapshot() *state.Snapshot { return p.snap.Load() }

// Stats returns a copy of the counters.
func (p *Proxy) Stats() StatsView {
	s := &p.stats
	return StatsView{
		Accepted: s.Accepted.Load(), Active: s.Active.Load(), NoOriginalDst: s.NoOriginalDst.Load(),
		NoListener: s.NoListener.Load(), UpstreamFail: s.UpstreamFail.Load(),
		BytesUp: s.BytesUp.Load(), BytesDown: s.BytesDown.Load(), HTTPConns: s.HTTPConns.Load(),
	}
}

// Serve accepts connections until ctx ends or the listener fails, then waits
// for the connections it started.
func (p *Proxy) Serve(ctx context.Context, lis net.Listener) error {
	stop := context.AfterFunc(ctx, func() { lis.Close() })
	defer stop()
	defer p.health.Close()
	defer p.l7.close()
	defer p.wg.Wait()
	var backoff time.Duration
	for {
		c, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				p.log.Warn("accept failed; backing off", zap.Error(err), zap.Duration("backoff", backoff))
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("accept on %v: %w", lis.Addr(), err)
		}
		backoff = 0
		p.stats.Accepted.Add(1)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(ctx, c)
		}()
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

func (p *Proxy) handle(ctx context.Context, c net.Conn) {
	p.stats.Active.Add(1)
	defer p.stats.Active.Add(-1)
	defer c.Close()

	src := addrPort(c.RemoteAddr())
	dst, ok, err := p.opts.Orig.OriginalDst(src)
	if err != nil {
		p.log.Warn("original destination look-up failed", zap.Stringer("src", src), zap.Error(err))
	}
	if !ok {
		// Not captured: an application dialled the proxy explicitly (or
		// through IPVS); the local address is the destination.
		p.stats.NoOriginalDst.Add(1)
		dst = addrPort(c.LocalAddr())
	}
	snap := p.snap.Load()
	if snap == nil {
		p.stats.NoListener.Add(1)
		p.log.Warn("no config yet; connection closed", zap.Stringer("src", src), zap.Stringer("dst", dst))
		return
	}
	l := snap.Listener(dst)
	if l == nil {
		p.stats.NoListener.Add(1)
		p.log.Info("no listener for destination", zap.Stringer("src", src), zap.Stringer("dst", dst))
		return
	}
	in := state.ChainInput{Dst: dst}
	chain := l.Chain(in)
	proto := sniff.Unknown
	if l.Sniff || (chain != nil && chain.HTTP != nil) {
		// Look at the first bytes (bounded in bytes and time, so a
		// server-speaks-first protocol is not held up for long).
		var sc *sniff.Conn
		var err error
		proto, sc, err = sniff.Detect(c, sniff.DefaultMaxBytes, sniff.DefaultTimeout)
		if err != nil {
			p.log.Debug("connection closed before its first bytes", zap.Stringer("src", src), zap.Error(err))
			return
		}
		c = sc
		switch proto {
		case sniff.TLS:
			in.Transport = "tls"
		case sniff.HTTP1, sniff.HTTP2:
			in.AppProtocol = proto.String()
		}
		chain = l.Chain(in)
	}
	if chain == nil {
		p.stats.NoListener.Add(1)
		p.log.Info("no filter chain matched", zap.String("listener", l.Name), zap.Stringer("dst", dst))
		if l.AccessLog != nil {
			// Envoy logs such connections with the listener's access log, flagged NR.
			l.AccessLog.Log(&accesslog.Entry{Type: accesslog.TCPConnectionEnd, Start: time.Now(), Flags: "NR",
				DownstreamLocal: dst, DownstreamRemote: src})
		}
		return
	}
	switch {
	case chain.TCP != nil:
		p.serveTCP(ctx, c, snap, chain.TCP, src, dst, ok)
	case chain.HTTP != nil && (proto == sniff.HTTP1 || proto == sniff.HTTP2):
		p.stats.HTTPConns.Add(1)
		p.l7.serve(ctx, c, chain.HTTP, proto, dst)
	default:
		p.stats.NoListener.Add(1)
		p.log.Info("HTTP filter chain but the connection does not speak HTTP; closed",
			zap.String("listener", l.Name), zap.Stringer("detected", proto))
		if proto == sniff.Unknown {
			// Like Envoy's codec: answer a protocol error, then close.
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
		}
	}
}

// fetchCluster asks the config source for a cluster the config lacks and
// holds the caller until it arrives or OnDemandWait passes.
func (p *Proxy) fetchCluster(ctx context.Context, cluster string) error {
	wait := p.opts.OnDemandWait
	if wait <= 0 {
		wait = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return p.opts.OnDemand(ctx, cluster)
}

// DialUpstream connects to an endpoint of the named cluster; the endpoint's
// Active count is held until release is called.
func (p *Proxy) DialUpstream(ctx context.Context, snap *state.Snapshot, cluster string, dst netip.AddrPort) (net.Conn, *state.Endpoint, error) {
	cl := snap.Clusters[cluster]
	if cl == nil && p.opts.OnDemand != nil {
		if err := p.fetchCluster(ctx, cluster); err != nil {
			return nil, nil, fmt.Errorf("cluster %q: %w, and asking for it failed: %w", cluster, hcm.ErrNoCluster, err)
		}
		if s := p.snap.Load(); s != nil {
			cl = s.Clusters[cluster]
		}
	}
	if cl == nil {
		return nil, nil, fmt.Errorf("cluster %q: %w", cluster, hcm.ErrNoCluster)
	}
	ep, err := cl.Pick(dst)
	if err != nil {
		return nil, nil, err
	}
	d := net.Dialer{Timeout: cl.ConnectTimeout}
	if p.opts.DialControl != nil {
		d.Control = p.opts.DialControl(p.opts.AccelUpstream)
	}
	up, err := d.DialContext(ctx, "tcp", ep.Addr.String())
	if err != nil {
		if ctx.Err() == nil {
			ep.Report(503) // outlier detection: a connect failure
		}
		return nil, nil, fmt.Errorf("connect to %v of cluster %s: %w", ep.Addr, cluster, err)
	}
	ep.Report(200)
	return up, ep, nil
}

func (p *Proxy) serveTCP(ctx context.Context, c net.Conn, snap *state.Snapshot, t *state.TCPProxy, src, dst netip.AddrPort, captured bool) {
	cluster := t.PickCluster()
	var e accesslog.Entry
	if t.AccessLog != nil {
		e = accesslog.Entry{Type: accesslog.TCPConnectionEnd, Start: time.Now(), Cluster: cluster,
			DownstreamLocal: dst, DownstreamRemote: src}
		defer func() {
			e.Duration = time.Since(e.Start)
			t.AccessLog.Log(&e)
		}()
	}
	if cl := snap.Clusters[cluster]; cl != nil && cl.Breaker != nil {
		if !cl.Breaker.TryConnection() {
			// max_connections reached: refused like Envoy's tcp_proxy (UO).
			e.Flags = "UO"
			p.stats.UpstreamFail.Add(1)
			p.log.Warn("upstream connection refused by the circuit breaker", zap.Stringer("src", src), zap.Stringer("dst", dst),
				zap.String("cluster", cluster), zap.Int64("max_connections", cl.Breaker.MaxConnections))
			return
		}
		defer cl.Breaker.DoneConnection()
	}
	up, ep, err := p.DialUpstream(ctx, snap, cluster, dst)
	if err != nil {
		switch {
		case errors.Is(err, hcm.ErrNoCluster):
			e.Flags = "NC"
		case errors.Is(err, state.ErrNoHealthyEndpoint):
			e.Flags = "UH"
		default:
			e.Flags = "UF"
			e.UpstreamFailure = err.Error()
		}
		p.stats.UpstreamFail.Add(1)
		p.log.Warn("upstream connect failed", zap.Stringer("src", src), zap.Stringer("dst", dst),
			zap.String("cluster", cluster), zap.Error(err))
		return
	}
	ep.Active.Add(1)
	defer ep.Active.Add(-1)
	defer up.Close()
	e.UpstreamHost, e.Attempts = ep.Addr.String(), 1
	p.log.Debug("proxying", zap.Stringer("src", src), zap.Stringer("dst", dst),
		zap.String("cluster", cluster), zap.Stringer("upstream", ep.Addr))

	// Shutting down aborts the connection.
	stop := context.AfterFunc(ctx, func() { c.Close(); up.Close() })
	defer stop()
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	cr, cw := rawIO(c)
	ur, uw := rawIO(up)
	upward := &relay{dst: up, src: c, r: cr, w: uw, idle: t.IdleTimeout, counter: &p.stats.BytesUp, lastRead: &last}
	downward := &relay{dst: c, src: up, r: ur, w: cw, idle: t.IdleTimeout, counter: &p.stats.BytesDown, lastRead: &last}
	if p.opts.Forwarder != nil && captured {
		p.forward(c, up, upward, downward)
		defer func() {
			for _, f := range []Forwarding{upward.fwd, downward.fwd} {
				if f != nil {
					f.Stop()
				}
			}
		}()
	}
	errc := make(chan error, 2)
	go func() { errc <- upward.run() }()
	go func() { errc <- downward.run() }()
	for i := 0; i < 2; i++ {
		if err := <-errc; err != nil {
			if !isReset(err) && !errors.Is(err, errIdle) {
				p.log.Debug("connection ended with error", zap.Stringer("src", src), zap.Error(err))
			}
			// One direction failed: abort both.
			c.Close()
			up.Close()
		}
	}
	// Both relays are done (received from errc): their counts are final.
	// Bytes the kernel forwarded (kernel forwarding) are not among them.
	e.BytesReceived, e.BytesSent = upward.total, downward.total
}

// forward sets kernel forwarding up for both directions of a captured
// connection. Bytes the kernel forwards never reach the proxy, so its idle
// timer is off for such connections.
func (p *Proxy) forward(c, up net.Conn, upward, downward *relay) {
	accepted := Tuple{Local: addrPort(c.LocalAddr()), Remote: addrPort(c.RemoteAddr())}
	upstream := Tuple{Local: addrPort(up.LocalAddr()), Remote: addrPort(up.RemoteAddr())}
	// The application's sends go to the server through the upstream socket.
	if f, err := p.opts.Forwarder.Forward(accepted.Reverse(), upstream); err == nil {
		upward.fwd = f
		upward.idle, downward.idle = 0, 0
	} else {
		p.log.Debug("kernel forwarding unavailable", zap.Error(err))
		return
	}
	// The server's replies go to the application through the accepted socket.
	if f, err := p.opts.Forwarder.Forward(upstream.Reverse(), accepted); err == nil {
		downward.fwd = f
	}
}
