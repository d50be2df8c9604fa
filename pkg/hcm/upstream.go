package hcm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"golang.org/x/net/http2"
)

// UpstreamProtocol selects the HTTP version spoken to an endpoint.
type UpstreamProtocol uint8

const (
	// UseDownstreamProtocol speaks HTTP/2 upstream when the downstream
	// request arrived over HTTP/2 and HTTP/1.1 otherwise (Envoy's
	// use_downstream_protocol_config).
	UseDownstreamProtocol UpstreamProtocol = iota
	// UpstreamHTTP1 always uses HTTP/1.1 with a keep-alive pool.
	UpstreamHTTP1
	// UpstreamHTTP2 always uses HTTP/2 prior knowledge (h2c), multiplexed.
	UpstreamHTTP2
)

// Endpoint is one upstream host chosen for a request.
type Endpoint struct {
	Addr     netip.AddrPort
	Protocol UpstreamProtocol
	// Breaker is its cluster's circuit breaker (nil: none).
	Breaker Breaker
	// Health takes the outcome of each request to it, for outlier
	// detection (nil: none).
	Health HealthReporter
}

// HealthReporter records one upstream request's outcome: the response
// status, or 503 for a connection that failed or was reset and 504 for a
// per-try timeout.
type HealthReporter interface {
	Report(status int)
}

// h2 reports whether a request goes to e over HTTP/2 (h2c), given whether
// it came downstream over HTTP/2.
func (e Endpoint) h2(downstreamH2 bool) bool {
	return e.Protocol == UpstreamHTTP2 || (e.Protocol == UseDownstreamProtocol && downstreamH2)
}

// Breaker is a cluster's circuit breaker: requests and retries in flight
// to the cluster beyond its limits fail fast (UO) or are not made; the
// HTTP/1.1 pool opens at most its connections and lets at most its pending
// requests wait for one (h1client.go).
type Breaker interface {
	TryRequest() bool
	DoneRequest()
	TryRetry() bool
	DoneRetry()
	TryConnection() bool
	DoneConnection()
	TryPending() bool
	DonePending()
}

// errOverflow: the cluster's circuit breaker refused the request.
var errOverflow = errors.New("upstream overflow")

// Upstreams resolves clusters to endpoints. It is implemented by the
// node agent's cluster state (load balancing, health, ORIGINAL_DST) and
// consumed here.
type Upstreams interface {
	// Pick chooses one endpoint of cluster for a request. Return an error
	// wrapping ErrNoCluster or ErrNoHealthyUpstream so the access log gets
	// the right response flag (NC / UH).
	Pick(ctx context.Context, cluster string, in PickInput) (Endpoint, error)
}

// PickInput is what endpoint selection may use about a request.
type PickInput struct {
	// Orig is the original destination of the downstream connection
	// (ORIGINAL_DST clusters such as PassthroughCluster).
	Orig netip.AddrPort
	// Hash is the route's hash_policy result when HasHash (RING_HASH and
	// MAGLEV clusters).
	Hash    uint64
	HasHash bool
}

// RouteSource resolves RDS route configuration names. Returning a new
// pointer is how a route change becomes visible; the compiled form is
// cached per pointer.
type RouteSource interface {
	Route(name string) *routev3.RouteConfiguration
}

var (
	// ErrNoCluster means the route names a cluster that does not exist.
	ErrNoCluster = errors.New("cluster not found")
	// ErrNoHealthyUpstream means the cluster has no usable endpoint.
	ErrNoHealthyUpstream = errors.New("no healthy upstream")
)

// DialFunc opens a TCP connection to an upstream endpoint. The node agent
// uses it to mark sockets so they are not captured again.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// PoolOptions tunes the upstream connection pools.
type PoolOptions struct {
	// Dial opens upstream connections; nil uses a net.Dialer.
	Dial DialFunc
	// ConnectTimeout bounds Dial (default 10s, Envoy's connect_timeout is
	// per cluster: the Upstreams implementation may enforce a shorter one
	// through its own Dial).
	ConnectTimeout time.Duration
	// MaxIdlePerEndpoint is the HTTP/1.1 keep-alive pool size per endpoint
	// (default 256).
	MaxIdlePerEndpoint int
	// IdleTimeout closes pooled connections unused for this long (default 60s).
	IdleTimeout time.Duration
}

// Pools holds upstream connection pools keyed by (cluster, endpoint) and
// the cache of compiled route configurations. Create one per process and
// share it between Managers, so configuration swaps keep warm connections.
type Pools struct {
	opts     PoolOptions
	mu       sync.Mutex
	clusters map[string]*clusterPool
	routes   routeCache
}

// clusterPool is one cluster's HTTP/1.1 and HTTP/2 transports. Each
// transport pools connections per endpoint address internally.
type clusterPool struct {
	fast *h1Pool // synchronous HTTP/1.1 client (h1client.go)
	h1   *http.Transport
	h2   *http2.Transport
	last atomic.Pointer[addrString] // the endpoint address last formatted
}

type addrString struct {
	ap netip.AddrPort
	s  string
}

// addrString formats ap, reusing the string of the previous call when the
// endpoint is the same (one allocation less per request).
func (cp *clusterPool) addrString(ap netip.AddrPort) string {
	if l := cp.last.Load(); l != nil && l.ap == ap {
		return l.s
	}
	s := ap.String()
	cp.last.Store(&addrString{ap: ap, s: s})
	return s
}

// NewPools creates the shared upstream pools.
func NewPools(opts PoolOptions) *Pools {
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.MaxIdlePerEndpoint <= 0 {
		opts.MaxIdlePerEndpoint = 256
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 60 * time.Second
	}
	if opts.Dial == nil {
		d := &net.Dialer{}
		opts.Dial = d.DialContext
	}
	return &Pools{opts: opts, clusters: map[string]*clusterPool{}, routes: newRouteCache()}
}

// dialError marks a failure to establish the upstream connection (UF).
type dialError struct{ err error }

func (e *dialError) Error() string { return "upstream connect: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// plainConn hides io.ReaderFrom/io.WriterTo of *net.TCPConn so no copy on
// this connection takes the splice(2) path (it stalls on sockmap sockets).
type plainConn struct{ net.Conn }

func (p *Pools) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.ConnectTimeout)
	defer cancel()
	c, err := p.opts.Dial(ctx, network, addr)
	if err != nil {
		return nil, &dialError{err: err}
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return plainConn{c}, nil
}

func (p *Pools) cluster(name string) *clusterPool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cp, ok := p.clusters[name]; ok {
		return cp
	}
	cp := &clusterPool{
		fast: newH1Pool(p),
		h1: &http.Transport{
			DialContext:           p.dial,
			MaxIdleConnsPerHost:   p.opts.MaxIdlePerEndpoint,
			IdleConnTimeout:       p.opts.IdleTimeout,
			DisableCompression:    true,
			ExpectContinueTimeout: time.Second,
			WriteBufferSize:       16 << 10,
			ReadBufferSize:        16 << 10,
			Proxy:                 nil,
			ForceAttemptHTTP2:     false,
			TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
		},
		h2: &http2.Transport{
			AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				c, err := p.dial(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				cc := newCoalescingConn(c, false)
				cc.deferControl(len(http2.ClientPreface))
				return cc, nil
			},
			DisableCompression: true,
			ReadIdleTimeout:    30 * time.Second,
			PingTimeout:        10 * time.Second,
			IdleConnTimeout:    p.opts.IdleTimeout,
		},
	}
	p.clusters[name] = cp
	return cp
}

// Retain closes the pools of clusters not in keep (call after a CDS update).
func (p *Pools) Retain(keep func(cluster string) bool) {
	p.mu.Lock()
	var drop []*clusterPool
	for name, cp := range p.clusters {
		if !keep(name) {
			drop = append(drop, cp)
			delete(p.clusters, name)
		}
	}
	p.mu.Unlock()
	for _, cp := range drop {
		cp.close()
	}
}

// Close retires every pooled connection: idle ones close now, HTTP/1.1
// ones in use when their exchange ends, the transports' (HTTP/2, and
// HTTP/1.1 requests net/http carries) once idle; in-flight requests finish.
// The pools stay usable: requests after it open new connections, which is
// how a change that applies only to sockets made after it (the agent's
// into_app acceleration) reaches the upstream connections too.
func (p *Pools) Close() {
	p.Retain(func(string) bool { return false })
}

func (cp *clusterPool) close() {
	cp.fast.close()
	cp.h1.CloseIdleConnections()
	cp.h2.CloseIdleConnections()
}

// upstreamClient is which client of a clusterPool carries a request.
type upstreamClient uint8

const (
	clientFast upstreamClient = iota // the synchronous HTTP/1.1 client (h1client.go)
	clientH1                         // net/http's Transport
	clientH2                         // x/net/http2's Transport
)

// clientFor picks the client for req: HTTP/2 when h2, else the
// synchronous client when req suits it (fastClientOK).
func clientFor(req *http.Request, h2 bool) upstreamClient {
	switch {
	case h2:
		return clientH2
	case fastClientOK(req):
		return clientFast
	}
	return clientH1
}

// roundTrip sends req upstream through client within ctx (req's own
// context is not used). rc, when not nil, is how ctx is cancelled
// (HTTP/1.1 fast path); the synchronous client uses it instead of watching
// the context.
func (cp *clusterPool) roundTrip(ctx context.Context, req *http.Request, client upstreamClient, rc *reqCancel, br Breaker) (*http.Response, error) {
	switch client {
	case clientH2:
		return cp.h2.RoundTrip(req.WithContext(ctx))
	case clientFast:
		return cp.fast.roundTrip(ctx, req, rc, br)
	}
	return cp.h1.RoundTrip(req.WithContext(ctx))
}

// String describes the pool for logs.
func (e Endpoint) String() string { return fmt.Sprintf("%s/%d", e.Addr, e.Protocol) }
