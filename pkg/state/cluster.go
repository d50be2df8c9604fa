package state

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/meshlet/meshlet/pkg/resources"
)

// Kind is how a cluster finds its endpoints.
type Kind int

const (
	// KindEndpoints: STATIC or EDS, an explicit endpoint list.
	KindEndpoints Kind = iota
	// KindOriginalDst: connect to the connection's original destination
	// (Istio's PassthroughCluster).
	KindOriginalDst
	// KindBlackhole: a STATIC cluster without endpoints; connections are
	// refused.
	KindBlackhole
)

// ErrNoHealthyEndpoint means a cluster has no endpoint to send to.
var ErrNoHealthyEndpoint = errors.New("no healthy endpoint")

// Endpoint is one upstream address.
type Endpoint struct {
	Addr   netip.AddrPort
	Weight uint32
	// Active counts connections the proxy has open to it (for
	// LEAST_REQUEST). It belongs to this snapshot's Cluster.
	Active atomic.Int64

	health endpointHealth
	added  time.Time // when it joined a cluster in force (slow start; zero: from the start)
	// down: active health checking found it unhealthy (pkg/health).
	down atomic.Bool
	cl   *Cluster // the cluster it belongs to (its outlier detection, down count)
}

// HTTPProtocol is the protocol the L7 proxy speaks to a cluster's endpoints.
type HTTPProtocol int

const (
	// HTTP1 is Envoy's default for a cluster without protocol options.
	HTTP1 HTTPProtocol = iota
	HTTP2
	// Downstream uses the protocol the client used.
	Downstream
)

// Cluster is a cluster with its endpoints and load balancer.
type Cluster struct {
	Name           string
	Kind           Kind
	HTTPProtocol   HTTPProtocol
	ConnectTimeout time.Duration
	LB             clusterv3.Cluster_LbPolicy
	Endpoints      []*Endpoint
	// Breaker holds the circuit-breaker limits and counts (never nil).
	Breaker *Breaker

	cum   []uint32 // cumulative weights for weighted round robin
	total uint32
	next  atomic.Uint32
	ring  *hashRing // RING_HASH, MAGLEV: built at the first PickHash
	det   *outlierDetector
	slow  *slowStart // slow_start_config (nil: none)
	// HealthChecks are the cluster's active health checks, run by
	// pkg/health, which marks endpoints down (SetActiveHealth).
	HealthChecks []*corev3.HealthCheck
	down         atomic.Int64 // endpoints marked down (Pick's fast path when 0)
}

// endpointsOf returns the EDS assignment an EDS cluster uses from set (nil
// for other clusters, whose endpoints are in the cluster itself).
func endpointsOf(c *clusterv3.Cluster, set *resources.Set) *resources.Assignment {
	if c.GetType() != clusterv3.Cluster_EDS {
		return nil
	}
	if _, ok := c.GetClusterDiscoveryType().(*clusterv3.Cluster_Type); !ok {
		return nil
	}
	name := c.GetEdsClusterConfig().GetServiceName()
	if name == "" {
		name = c.GetName()
	}
	return set.Endpoints[name]
}

// buildCluster translates c; eds is its EDS assignment (see endpointsOf).
func buildCluster(c *clusterv3.Cluster, eds *resources.Assignment, issues *[]Issue) (*Cluster, error) {
	out := &Cluster{Name: c.GetName(), LB: c.GetLbPolicy(), ConnectTimeout: 5 * time.Second, Breaker: newBreaker(c)}
	if d := c.GetConnectTimeout(); d != nil {
		out.ConnectTimeout = d.AsDuration()
	}
	note := func(format string, args ...any) {
		*issues = append(*issues, Issue{Type: "cluster", Name: c.GetName(), Reason: fmt.Sprintf(format, args...)})
	}
	switch out.LB {
	case clusterv3.Cluster_RING_HASH, clusterv3.Cluster_MAGLEV:
		out.ring = &hashRing{min: defaultMinRing, max: defaultMaxRing}
		if rc := c.GetRingHashLbConfig(); rc != nil {
			if v := rc.GetMinimumRingSize(); v != nil && v.GetValue() > 0 {
				out.ring.min = v.GetValue()
			}
			if v := rc.GetMaximumRingSize(); v != nil && v.GetValue() > 0 {
				out.ring.max = v.GetValue()
			}
		}
		if out.ring.min > out.ring.max {
			return nil, fmt.Errorf("ring_hash_lb_config: minimum_ring_size %d above maximum_ring_size %d", out.ring.min, out.ring.max)
		}
	case clusterv3.Cluster_ROUND_ROBIN, clusterv3.Cluster_LEAST_REQUEST, clusterv3.Cluster_RANDOM:
	case clusterv3.Cluster_CLUSTER_PROVIDED:
	default:
		note("lb_policy %s not implemented: round robin used", out.LB)
		out.LB = clusterv3.Cluster_ROUND_ROBIN
	}
	out.HTTPProtocol = httpProtocol(c, note)
	if c.GetTransportSocket() != nil || len(c.GetTransportSocketMatches()) > 0 {
		note("upstream TLS (transport_socket) not implemented yet: plaintext is used")
	}

	var la *resources.Assignment
	dns := false
	switch t := c.GetClusterDiscoveryType().(type) {
	case *clusterv3.Cluster_Type:
		switch t.Type {
		case clusterv3.Cluster_STATIC:
			la = inline(c)
		case clusterv3.Cluster_EDS:
			name := c.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = c.GetName()
			}
			la = eds
			if la == nil {
				note("EDS assignment %q not received yet: no endpoints", name)
			}
		case clusterv3.Cluster_ORIGINAL_DST:
			out.Kind = KindOriginalDst
			return out, nil
		case clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
			// Hosts that are IP literals work; names need the DNS resolver.
			la = inline(c)
			dns = true
			note("%s: only IP-literal endpoints are used (no DNS resolution yet)", t.Type)
		default:
			return nil, fmt.Errorf("discovery type %s unknown", t.Type)
		}
	case *clusterv3.Cluster_ClusterType:
		note("custom cluster type %s not implemented: no endpoints", t.ClusterType.GetName())
	case nil:
		la = inline(c)
	}

	// One allocation for all of the cluster's endpoints (never grown, so
	// the pointers into it stay valid).
	var eps []resources.Endpoint
	if la != nil {
		eps = la.Endpoints()
	}
	backing := make([]Endpoint, 0, len(eps))
	out.Endpoints = make([]*Endpoint, 0, len(eps))
	for i := range eps {
		e := &eps[i]
		switch e.Health {
		case corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_DRAINING, corev3.HealthStatus_TIMEOUT:
			continue
		}
		if e.NoSocketAddress {
			note("endpoint without a socket address skipped")
			continue
		}
		if !e.Addr.IsValid() {
			if dns && e.Host != "" {
				note("endpoint %q is a host name: skipped", e.Host)
				continue
			}
			_, err := netip.ParseAddr(e.Host)
			return nil, fmt.Errorf("endpoint address %q: %w", e.Host, err)
		}
		if e.Port == 0 || e.Port > 65535 {
			return nil, fmt.Errorf("endpoint %s: port %d out of range", e.Addr, e.Port)
		}
		w := e.Weight
		if w == 0 {
			w = 1
		}
		backing = append(backing, Endpoint{Addr: netip.AddrPortFrom(e.Addr, uint16(e.Port)), Weight: w})
		out.Endpoints = append(out.Endpoints, &backing[len(backing)-1])
	}
	if len(out.Endpoints) == 0 && c.GetType() == clusterv3.Cluster_STATIC && la == nil {
		out.Kind = KindBlackhole
	}
	out.slow = newSlowStart(c)
	out.HealthChecks = c.GetHealthChecks()
	for _, e := range out.Endpoints {
		e.cl = out
	}
	out.det = newOutlierDetector(c)
	out.cum = make([]uint32, 0, len(out.Endpoints))
	for _, e := range out.Endpoints {
		out.total += e.Weight
		out.cum = append(out.cum, out.total)
	}
	return out, nil
}

// Pick chooses an endpoint for a new connection whose original destination
// was dst, passing over endpoints that outlier detection ejected (all of
// them ejected: one is used anyway, as Envoy's panic mode does).
func (c *Cluster) Pick(dst netip.AddrPort) (*Endpoint, error) {
	e, err := c.pick(dst)
	if err != nil || !c.mayExclude() || !e.Ejected() {
		return e, err
	}
	for range len(c.Endpoints) {
		if x, _ := c.pick(dst); x != nil && !x.Ejected() {
			return x, nil
		}
	}
	for _, x := range c.Endpoints {
		if !x.Ejected() {
			return x, nil
		}
	}
	return e, nil
}

func (c *Cluster) pick(dst netip.AddrPort) (*Endpoint, error) {
	switch c.Kind {
	case KindOriginalDst:
		return &Endpoint{Addr: dst, Weight: 1}, nil
	case KindBlackhole:
		return nil, fmt.Errorf("cluster %s drops connections (no endpoints)", c.Name)
	}
	n := len(c.Endpoints)
	if n == 0 {
		return nil, fmt.Errorf("cluster %s: %w", c.Name, ErrNoHealthyEndpoint)
	}
	if n == 1 {
		return c.Endpoints[0], nil
	}
	if e, ok := c.warmPick(); ok {
		return e, nil
	}
	switch c.LB {
	case clusterv3.Cluster_RANDOM:
		return c.byWeight(rand.Uint32N(c.total)), nil
	case clusterv3.Cluster_LEAST_REQUEST:
		// Power of two choices on open connections.
		a, b := c.byWeight(rand.Uint32N(c.total)), c.byWeight(rand.Uint32N(c.total))
		if b.Active.Load() < a.Active.Load() {
			return b, nil
		}
		return a, nil
	default:
		return c.byWeight((c.next.Add(1) - 1) % c.total), nil
	}
}

// mayExclude: some endpoint may be ejected or down (else Pick needs no
// check).
func (c *Cluster) mayExclude() bool {
	return (c.det != nil && c.det.ejected.Load() > 0) || c.down.Load() > 0
}

// SetActiveHealth records active health checking's verdict on e; an
// unhealthy endpoint is passed over like an ejected one.
func (e *Endpoint) SetActiveHealth(healthy bool) {
	if e.down.Swap(!healthy) == !healthy || e.cl == nil {
		return
	}
	if healthy {
		e.cl.down.Add(-1)
	} else {
		e.cl.down.Add(1)
	}
}

// byWeight maps a point in [0, total) to its endpoint.
func (c *Cluster) byWeight(x uint32) *Endpoint {
	lo, hi := 0, len(c.cum)-1
	for lo < hi {
		mid := (lo + hi) / 2
		if x < c.cum[mid] {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return c.Endpoints[lo]
}

const httpProtocolOptionsName = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// httpProtocol reads the upstream HTTP protocol from the cluster's options.
func httpProtocol(c *clusterv3.Cluster, note func(string, ...any)) HTTPProtocol {
	if c.GetHttp2ProtocolOptions() != nil { //nolint:staticcheck // still sent by older control planes
		return HTTP2
	}
	anyOpts := c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsName]
	if anyOpts == nil {
		return HTTP1
	}
	var o httpv3.HttpProtocolOptions
	if err := anyOpts.UnmarshalTo(&o); err != nil {
		note("%s: %v: HTTP/1.1 upstream used", httpProtocolOptionsName, err)
		return HTTP1
	}
	switch {
	case o.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil:
		return HTTP2
	case o.GetUseDownstreamProtocolConfig() != nil, o.GetAutoConfig() != nil:
		return Downstream
	}
	return HTTP1
}

// inline wraps a cluster's inline load_assignment (nil when it has none).
func inline(c *clusterv3.Cluster) *resources.Assignment {
	if la := c.GetLoadAssignment(); la != nil {
		return resources.NewAssignment(la)
	}
	return nil
}
