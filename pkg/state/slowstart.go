package state

import (
	"math"
	"math/rand/v2"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
)

// Slow start (warm-up; the slow_start_config of round_robin_lb_config or
// least_request_lb_config, Istio's DestinationRule warmupDurationSecs): an
// endpoint added to a cluster already in force gets a share of the new
// requests that grows over slow_start_window, its weight scaled by
// max(min_weight_percent, (time since added / window)^(1/aggression)).
// Endpoints of a cluster's first translation start at full weight, as in
// Envoy, where slow start begins only after the cluster has initialized.

type slowStart struct {
	window     time.Duration
	aggression float64
	minFactor  float64
	warmUntil  time.Time // the last endpoint's window ends (zero: none warming)
}

func newSlowStart(c *clusterv3.Cluster) *slowStart {
	var sc *clusterv3.Cluster_SlowStartConfig
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
		sc = c.GetRoundRobinLbConfig().GetSlowStartConfig()
	case clusterv3.Cluster_LEAST_REQUEST:
		sc = c.GetLeastRequestLbConfig().GetSlowStartConfig()
	}
	if sc.GetSlowStartWindow().AsDuration() <= 0 {
		return nil
	}
	s := &slowStart{window: sc.GetSlowStartWindow().AsDuration(), aggression: 1, minFactor: 0.1}
	if a := sc.GetAggression(); a != nil && a.GetDefaultValue() > 0 {
		s.aggression = a.GetDefaultValue()
	}
	if p := sc.GetMinWeightPercent(); p != nil {
		s.minFactor = p.GetValue() / 100
	}
	return s
}

// inheritAdded carries over when each endpoint joined from the cluster's
// previous translation; endpoints it did not have join now and warm up.
func (c *Cluster) inheritAdded(prev *Cluster, now time.Time) {
	if c.slow == nil || prev == nil {
		return
	}
	seen := make(map[string]time.Time, len(prev.Endpoints))
	for _, e := range prev.Endpoints {
		seen[e.Addr.String()] = e.added
	}
	for _, e := range c.Endpoints {
		t, ok := seen[e.Addr.String()]
		if !ok {
			t = now
		}
		e.added = t
		if end := t.Add(c.slow.window); !t.IsZero() && end.After(c.slow.warmUntil) {
			c.slow.warmUntil = end
		}
	}
}

// factor is an endpoint's weight factor now.
func (s *slowStart) factor(added, now time.Time) float64 {
	if added.IsZero() {
		return 1
	}
	t := now.Sub(added)
	if t >= s.window {
		return 1
	}
	f := math.Pow(float64(t)/float64(s.window), 1/s.aggression)
	return max(f, s.minFactor)
}

// warmPick picks by weights scaled for slow start (ok false when no
// endpoint is warming: the usual pick applies).
func (c *Cluster) warmPick() (*Endpoint, bool) {
	s := c.slow
	if s == nil || s.warmUntil.IsZero() {
		return nil, false
	}
	now := time.Now()
	if !now.Before(s.warmUntil) {
		return nil, false
	}
	var total float64
	for _, e := range c.Endpoints {
		total += float64(e.Weight) * s.factor(e.added, now)
	}
	x := rand.Float64() * total
	for _, e := range c.Endpoints {
		x -= float64(e.Weight) * s.factor(e.added, now)
		if x < 0 {
			return e, true
		}
	}
	return c.Endpoints[len(c.Endpoints)-1], true
}
