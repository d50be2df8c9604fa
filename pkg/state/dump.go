package state

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// HealthFlags is e's health as Envoy's /clusters prints it: "healthy", or
// the reasons it is out of the picks ("/failed_active_hc" from active
// health checking, "/failed_outlier_check" from outlier detection).
func (e *Endpoint) HealthFlags() string {
	var f []string
	if e.down.Load() {
		f = append(f, "/failed_active_hc")
	}
	if u := e.health.ejectedUntil.Load(); u != 0 && u > time.Now().UnixNano() {
		f = append(f, "/failed_outlier_check")
	}
	if len(f) == 0 {
		return "healthy"
	}
	return strings.Join(f, "")
}

// WriteClusters writes the clusters in force the way Envoy's admin
// /clusters does, one "cluster::host::field::value" line each: circuit
// breaker limits and what is in flight, then per endpoint its weight,
// open connections (cx_active), health flags and outlier ejections.
func (s *Snapshot) WriteClusters(w io.Writer) error {
	bw := bufio.NewWriter(w)
	for _, name := range slices.Sorted(maps.Keys(s.Clusters)) {
		c := s.Clusters[name]
		if b := c.Breaker; b != nil {
			conns, reqs, retries := b.InFlight()
			fmt.Fprintf(bw, "%s::default_priority::max_connections::%d\n", name, b.MaxConnections)
			fmt.Fprintf(bw, "%s::default_priority::max_pending_requests::%d\n", name, b.MaxPendingRequests)
			fmt.Fprintf(bw, "%s::default_priority::max_requests::%d\n", name, b.MaxRequests)
			fmt.Fprintf(bw, "%s::default_priority::max_retries::%d\n", name, b.MaxRetries)
			fmt.Fprintf(bw, "%s::in_flight::connections::%d\n%s::in_flight::pending_requests::%d\n%s::in_flight::requests::%d\n%s::in_flight::retries::%d\n",
				name, conns, name, b.Pending(), name, reqs, name, retries)
		}
		for _, e := range c.Endpoints {
			fmt.Fprintf(bw, "%s::%s::weight::%d\n", name, e.Addr, e.Weight)
			fmt.Fprintf(bw, "%s::%s::cx_active::%d\n", name, e.Addr, e.Active.Load())
			fmt.Fprintf(bw, "%s::%s::health_flags::%s\n", name, e.Addr, e.HealthFlags())
			if c.det != nil {
				c.det.mu.Lock()
				n := e.health.ejections
				c.det.mu.Unlock()
				fmt.Fprintf(bw, "%s::%s::outlier_ejections::%d\n", name, e.Addr, n)
			}
		}
	}
	return bw.Flush()
}
