package state

import (
	"sync/atomic"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Envoy's circuit-breaker defaults, in force when a cluster sets none.
const (
	defaultMaxConnections = 1024
	defaultMaxPending     = 1024
	defaultMaxRequests    = 1024
	defaultMaxRetries     = 3
)

// Breaker is a cluster's circuit breaker (circuit_breakers, DEFAULT
// priority; Istio's DestinationRule connectionPool): how many connections
// (tcp_proxy's, and the HTTP/1.1 pool's), requests waiting for a pooled
// HTTP/1.1 connection, requests and retries (HTTP) may be in flight to the
// cluster at once. Beyond a limit a connection or request fails fast with
// UO, and a retry is not made. The counts belong to the Cluster value: a
// changed cluster starts from zero.
type Breaker struct {
	MaxConnections, MaxPendingRequests, MaxRequests, MaxRetries int64

	conns, pending, requests, retries atomic.Int64
}

func newBreaker(c *clusterv3.Cluster) *Breaker {
	b := &Breaker{MaxConnections: defaultMaxConnections, MaxPendingRequests: defaultMaxPending, MaxRequests: defaultMaxRequests, MaxRetries: defaultMaxRetries}
	for _, t := range c.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		if v := t.GetMaxConnections(); v != nil {
			b.MaxConnections = int64(v.GetValue())
		}
		if v := t.GetMaxPendingRequests(); v != nil {
			b.MaxPendingRequests = int64(v.GetValue())
		}
		if v := t.GetMaxRequests(); v != nil {
			b.MaxRequests = int64(v.GetValue())
		}
		if v := t.GetMaxRetries(); v != nil {
			b.MaxRetries = int64(v.GetValue())
		}
	}
	return b
}

func try(n *atomic.Int64, limit int64) bool {
	if n.Add(1) > limit {
		n.Add(-1)
		return false
	}
	return true
}

// TryConnection takes a connection slot; false: max_connections reached.
func (b *Breaker) TryConnection() bool { return try(&b.conns, b.MaxConnections) }

// DoneConnection gives a connection slot back.
func (b *Breaker) DoneConnection() { b.conns.Add(-1) }

// TryPending takes a slot for a request waiting for a connection; false:
// max_pending_requests reached.
func (b *Breaker) TryPending() bool { return try(&b.pending, b.MaxPendingRequests) }

// DonePending gives a pending-request slot back.
func (b *Breaker) DonePending() { b.pending.Add(-1) }

// Pending reports the requests waiting for a connection.
func (b *Breaker) Pending() int64 { return b.pending.Load() }

// TryRequest takes a request slot; false: max_requests reached.
func (b *Breaker) TryRequest() bool { return try(&b.requests, b.MaxRequests) }

// DoneRequest gives a request slot back.
func (b *Breaker) DoneRequest() { b.requests.Add(-1) }

// TryRetry takes a retry slot; false: max_retries reached.
func (b *Breaker) TryRetry() bool { return try(&b.retries, b.MaxRetries) }

// DoneRetry gives a retry slot back.
func (b *Breaker) DoneRetry() { b.retries.Add(-1) }

// InFlight reports the connections, requests and retries in flight.
func (b *Breaker) InFlight() (conns, requests, retries int64) {
	return b.conns.Load(), b.requests.Load(), b.retries.Load()
}
