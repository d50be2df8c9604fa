package hcm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	bufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/buffer/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"go.uber.org/zap"
	"golang.org/x/net/http2"

	"github.com/meshlet/meshlet/pkg/sniff"
)

// Defaults that Envoy applies when the HCM leaves a field unset.
const (
	defaultMaxHeadersKB      = 60
	defaultMaxHeadersCount   = 100
	defaultStreamIdleTimeout = 5 * time.Minute
	defaultConnIdleTimeout   = time.Hour
	// defaultHeadersTimeout is our slowloris guard when
	// request_headers_timeout is unset (Envoy leaves it disabled).
	defaultHeadersTimeout = 10 * time.Second
)

// Options are the Manager's non-xDS dependencies.
type Options struct {
	// Pools is the shared upstream pool set (required).
	Pools *Pools
	// Log receives operational logs (nil: no logs).
	Log *zap.Logger
	// AccessLog receives one entry per request (nil: none).
	AccessLog AccessLogger
	// HeadersTimeout overrides the slowloris guard used when the HCM has no
	// request_headers_timeout (0: defaultHeadersTimeout, <0: disabled).
	HeadersTimeout time.Duration
}

// Manager serves HTTP/1.1 and h2c downstream connections for one
// HttpConnectionManager filter config. It is safe for concurrent use.
type Manager struct {
	log    *zap.Logger
	alog   AccessLogger
	pools  *Pools
	up     Upstreams
	routes RouteSource

	rdsName string      // RDS route_config_name, or "" with inline
	inline  *routeTable // inline route_config
	last    atomic.Pointer[rdsEntry]

	maxHeaderBytes  int
	maxHeadersCount int
	maxBodyBytes    int64 // 0: unlimited (envoy.filters.http.buffer max_request_bytes)
	streamIdle      time.Duration
	requestTimeout  time.Duration
	// maxStreamDuration: common_http_protocol_options.max_stream_duration
	// (0: none), overridden by a route's max_stream_duration.
	maxStreamDuration time.Duration
	// maxRequestsPerConn: common_http_protocol_options
	// .max_requests_per_connection (0: unlimited).
	maxRequestsPerConn int64
	// underscores: headers_with_underscores_action (ALLOW, REJECT_REQUEST
	// or DROP_HEADER).
	underscores      corev3.HttpProtocolOptions_HeadersWithUnderscoresAction
	useRemoteAddr    bool
	skipXFFAppend    bool
	genRequestID     bool
	alwaysSetReqID   bool
	upgrades         map[string]bool // lower-case upgrade types enabled
	serverName       string
	stripAnyHostPort bool
	paths            pathPolicy
	// faultName is the fault filter's name in http_filters ("": none), the
	// key of routes' typed_per_filter_config; fault its own config.
	faultName string
	fault     *faultPolicy
	// limitName, limit: the local rate limit filter, likewise;
	// limitFirst: it comes before the fault filter in http_filters.
	limitName  string
	limit      *rateLimit
	limitFirst bool

	mirrors chan struct{} // slots of shadow requests in flight (maxMirrors)

	h1     *http.Server
	h2     *http2.Server
	ln     *chanListener
	serve  sync.Once
	closed chan struct{}
	once   sync.Once

	// HTTP/1.1 fast path (h1server.go).
	fmu       sync.Mutex
	fconns    map[*fastConn]struct{}
	draining  atomic.Bool
	dateCache atomic.Pointer[cachedDate]
}

type rdsEntry struct {
	rc *routev3.RouteConfiguration
	c  *compiled
}

// New validates an HttpConnectionManager config and builds a Manager.
// routes may be nil when the config carries an inline route_config.
func New(cfg *hcmv3.HttpConnectionManager, routes RouteSource, up Upstreams, opts Options) (*Manager, error) {
	if opts.Pools == nil {
		return nil, errors.New("hcm: Options.Pools is required")
	}
	if up == nil {
		return nil, errors.New("hcm: Upstreams is required")
	}
	m := &Manager{
		log: opts.Log, alog: opts.AccessLog, pools: opts.Pools, up: up, routes: routes,
		maxHeaderBytes: defaultMaxHeadersKB << 10, maxHeadersCount: defaultMaxHeadersCount,
		streamIdle: defaultStreamIdleTimeout, genRequestID: true,
		upgrades: map[string]bool{}, closed: make(chan struct{}), mirrors: make(chan struct{}, maxMirrors),
	}
	if m.log == nil {
		m.log = zap.NewNop()
	}
	m.log = m.log.With(zap.String("stat_prefix", cfg.GetStatPrefix()))
	switch rs := cfg.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_Rds:
		if routes == nil {
			return nil, fmt.Errorf("hcm %q: rds route %q but no RouteSource", cfg.GetStatPrefix(), rs.Rds.GetRouteConfigName())
		}
		m.rdsName = rs.Rds.GetRouteConfigName()
	case *hcmv3.HttpConnectionManager_RouteConfig:
		t, err := compileRoutes(rs.RouteConfig)
		if err != nil {
			return nil, fmt.Errorf("hcm %q: inline route_config: %w", cfg.GetStatPrefix(), err)
		}
		m.inline = t
	default:
		return nil, fmt.Errorf("hcm %q: unsupported route specifier %T", cfg.GetStatPrefix(), rs)
	}
	if v := cfg.GetMaxRequestHeadersKb(); v != nil && v.GetValue() > 0 {
		m.maxHeaderBytes = int(v.GetValue()) << 10
	}
	cpo := cfg.GetCommonHttpProtocolOptions()
	if v := cpo.GetMaxHeadersCount(); v != nil && v.GetValue() > 0 {
		m.maxHeadersCount = int(v.GetValue())
	}
	m.underscores = cpo.GetHeadersWithUnderscoresAction()
	if n := cpo.GetMaxRequestsPerConnection(); n != nil {
		m.maxRequestsPerConn = int64(n.GetValue())
	}
	if d := cpo.GetMaxStreamDuration(); d != nil {
		m.maxStreamDuration = d.AsDuration()
	}
	connIdle := defaultConnIdleTimeout
	if cpo.GetIdleTimeout() != nil {
		connIdle = cpo.GetIdleTimeout().AsDuration() // 0 disables
	}
	if cfg.GetStreamIdleTimeout() != nil {
		m.streamIdle = cfg.GetStreamIdleTimeout().AsDuration()
	}
	if cfg.GetRequestTimeout() != nil {
		m.requestTimeout = cfg.GetRequestTimeout().AsDuration()
	}
	headersTimeout := defaultHeadersTimeout
	if opts.HeadersTimeout != 0 {
		headersTimeout = max(opts.HeadersTimeout, 0)
	}
	if cfg.GetRequestHeadersTimeout() != nil && cfg.GetRequestHeadersTimeout().AsDuration() > 0 {
		headersTimeout = cfg.GetRequestHeadersTimeout().AsDuration()
	}
	m.useRemoteAddr = cfg.GetUseRemoteAddress().GetValue()
	m.skipXFFAppend = cfg.GetSkipXffAppend()
	if cfg.GetGenerateRequestId() != nil {
		m.genRequestID = cfg.GetGenerateRequestId().GetValue()
	}
	m.alwaysSetReqID = cfg.GetAlwaysSetRequestIdInResponse()
	m.serverName = cfg.GetServerName()
	m.stripAnyHostPort = cfg.GetStripAnyHostPort()
	m.paths = pathPolicy{escaped: cfg.GetPathWithEscapedSlashesAction(), normalize: cfg.GetNormalizePath().GetValue(), merge: cfg.GetMergeSlashes()}
	for _, u := range cfg.GetUpgradeConfigs() {
		if u.GetEnabled() == nil || u.GetEnabled().GetValue() {
			m.upgrades[strings.ToLower(u.GetUpgradeType())] = true
		}
	}
	fi, fname, fcfg := httpFilter(cfg.GetHttpFilters(), faultTypeURL, faultFilterName, "envoy.fault")
	if fi >= 0 {
		m.faultName = fname
		if fcfg != nil {
			p, err := decodeFault(fcfg)
			if err != nil {
				return nil, fmt.Errorf("hcm %q: http filter %q: %w", cfg.GetStatPrefix(), fname, err)
			}
			if p.hasDelay || p.hasAbort {
				m.fault = p
			}
		}
	}
	li, lname, lcfg := httpFilter(cfg.GetHttpFilters(), rateLimitTypeURL, rateLimitFilterName)
	if li >= 0 {
		m.limitName = lname
		if lcfg != nil {
			rl, err := decodeRateLimit(lcfg)
			if err != nil {
				return nil, fmt.Errorf("hcm %q: http filter %q: %w", cfg.GetStatPrefix(), lname, err)
			}
			m.limit = rl
		}
	}
	m.limitFirst = li >= 0 && (fi < 0 || li < fi)
	for _, f := range cfg.GetHttpFilters() {
		if f.GetName() != "envoy.filters.http.buffer" && !strings.HasSuffix(f.GetTypedConfig().GetTypeUrl(), "envoy.extensions.filters.http.buffer.v3.Buffer") {
			continue
		}
		var b bufferv3.Buffer
		if f.GetTypedConfig() != nil {
			if err := f.GetTypedConfig().UnmarshalTo(&b); err != nil {
				return nil, fmt.Errorf("hcm %q: http filter %q: %w", cfg.GetStatPrefix(), f.GetName(), err)
			}
			m.maxBodyBytes = int64(b.GetMaxRequestBytes().GetValue())
		}
	}

	m.h1 = &http.Server{
		Handler:           m,
		ReadHeaderTimeout: headersTimeout,
		IdleTimeout:       connIdle,
		MaxHeaderBytes:    m.maxHeaderBytes,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if sc, ok := c.(*serverConn); ok {
				return context.WithValue(ctx, connInfoKey{}, &sc.info)
			}
			return ctx
		},
	}
	if el, err := zap.NewStdLogAt(m.log, zap.DebugLevel); err == nil {
		m.h1.ErrorLog = el
	}
	m.h2 = &http2.Server{
		MaxConcurrentStreams: 1000,
		IdleTimeout:          connIdle,
		MaxReadFrameSize:     1 << 20,
	}
	if err := http2.ConfigureServer(m.h1, m.h2); err != nil {
		return nil, fmt.Errorf("hcm: configure http2: %w", err)
	}
	m.h1.TLSNextProto = nil
	m.ln = newChanListener()
	return m, nil
}

// connInfo is what a request learns about its downstream connection.
type connInfo struct {
	orig     netip.AddrPort
	remote   netip.AddrPort
	remoteIP string // remote's address for X-Forwarded-For (set when used)
	h2       bool
	requests int64 // requests begun (max_requests_per_connection; atomic)
}

type connInfoKey struct{}

// serverConn is the downstream connection as handed to net/http. It
// hides ReadFrom/WriteTo (no splice) and signals when it is closed.
type serverConn struct {
	net.Conn
	info connInfo
	once sync.Once
	done chan struct{}
}

func (c *serverConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// ServeConn serves one downstream connection whose protocol has been
// sniffed as HTTP1 or HTTP2 (h2c prior knowledge). It blocks until the
// connection is closed, by either side or by ctx. orig is the original
// destination learnt from the capture path. c is closed on return.
func (m *Manager) ServeConn(ctx context.Context, c net.Conn, proto sniff.Protocol, orig netip.AddrPort) error {
	sc := &serverConn{Conn: c, done: make(chan struct{})}
	sc.info.orig = orig
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		sc.info.remote = ap
		if m.useRemoteAddr {
			sc.info.remoteIP = ap.Addr().Unmap().String()
		}
	}
	stop := context.AfterFunc(ctx, func() { sc.Close() })
	defer stop()
	switch proto {
	case sniff.HTTP2:
		sc.info.h2 = true
		// x/net's server flushes per frame batch; coalesce what it writes
		// while the handlers are busy into one write.
		cc := newCoalescingConn(c, true)
		cc.deferControl(0)
		sc.Conn = cc
		m.h2.ServeConn(sc, &http2.ServeConnOpts{
			Context:    context.WithValue(ctx, connInfoKey{}, &sc.info),
			BaseConfig: m.h1,
			Handler:    m,
		})
		sc.Close()
		return nil
	case sniff.HTTP1:
		select {
		case <-m.closed:
			sc.Close()
			return errors.New("hcm: manager closed")
		default:
		}
		return m.serveH1(ctx, sc)
	default:
		sc.Close()
		return fmt.Errorf("hcm: cannot serve protocol %v", proto)
	}
}

// Shutdown stops accepting connections, sends GOAWAY on HTTP/2 connections
// and closes idle HTTP/1.1 ones, then waits for active requests until ctx
// ends.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.once.Do(func() { close(m.closed); m.ln.Close() })
	if err := m.shutdownFast(ctx); err != nil {
		return err
	}
	if err := m.h1.Shutdown(ctx); err != nil {
		return fmt.Errorf("hcm: shutdown: %w", err)
	}
	return nil
}

// Close closes all connections immediately.
func (m *Manager) Close() error {
	m.once.Do(func() { close(m.closed); m.ln.Close() })
	m.draining.Store(true)
	m.closeFast(true)
	return m.h1.Close()
}

// table returns the route table a request must use (one consistent
// snapshot for the whole request).
func (m *Manager) table() (*routeTable, error) {
	if m.inline != nil {
		return m.inline, nil
	}
	rc := m.routes.Route(m.rdsName)
	if rc == nil {
		return nil, nil
	}
	if e := m.last.Load(); e != nil && e.rc == rc {
		return e.c.t, e.c.err
	}
	c := m.pools.routes.get(rc)
	m.last.Store(&rdsEntry{rc: rc, c: c})
	return c.t, c.err
}

// chanListener feeds connections from ServeConn to the shared http.Server.
type chanListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// Check reports what New would refuse in cfg (its RDS route configuration
// is checked by CheckRoutes), so a configuration can be refused when it
// arrives rather than at its first connection.
func (p *Pools) Check(cfg *hcmv3.HttpConnectionManager) error {
	m, err := New(cfg, checkRoutes{}, checkUpstreams{}, Options{Pools: p})
	if err != nil {
		return err
	}
	return m.Close()
}

// CheckRoutes compiles rc, or takes its cached compilation (the one its
// requests will use), and returns the error that would answer them 503.
func (p *Pools) CheckRoutes(rc *routev3.RouteConfiguration) error {
	return p.routes.get(rc).err
}

type checkRoutes struct{}

func (checkRoutes) Route(string) *routev3.RouteConfiguration { return nil }

type checkUpstreams struct{}

func (checkUpstreams) Pick(context.Context, string, PickInput) (Endpoint, error) {
	return Endpoint{}, ErrNoCluster
}
