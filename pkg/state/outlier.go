package state

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
)

// Outlier detection (a cluster's outlier_detection; Istio's DestinationRule
// outlierDetection), passive: the proxy reports each upstream answer or
// failure (Endpoint.Report) and an endpoint with too many consecutive
// failures is ejected, picked by no one, for base_ejection_time times the
// number of its ejections (capped at max_ejection_time), unless that would
// eject more than max_ejection_percent of the cluster. Consecutive 5xx
// (connect failures and resets count as 503) and consecutive gateway
// failures (502, 503, 504) are detected; the success-rate and
// failure-percentage algorithms are not. Each interval an endpoint spends
// back in the picks takes one off its ejection multiplier.

// Envoy's defaults.
const (
	defaultConsecutive5xx  = 5
	defaultBaseEjection    = 30 * time.Second
	defaultMaxEjection     = 300 * time.Second
	defaultMaxEjectPercent = 10
	defaultInterval        = 10 * time.Second
)

type outlierDetector struct {
	consec5xx, consecGateway   int64 // thresholds (0: off)
	enforce5xx, enforceGateway uint32
	base, maxTime, interval    time.Duration
	maxPercent                 int

	mu      sync.Mutex
	ejected atomic.Int64 // ejections made (Pick's fast path when 0)
}

func newOutlierDetector(c *clusterv3.Cluster) *outlierDetector {
	od := c.GetOutlierDetection()
	if od == nil {
		return nil
	}
	d := &outlierDetector{consec5xx: defaultConsecutive5xx, enforce5xx: 100, enforceGateway: 0,
		consecGateway: 5, base: defaultBaseEjection, maxTime: defaultMaxEjection, interval: defaultInterval,
		maxPercent: defaultMaxEjectPercent}
	if v := od.GetInterval(); v != nil && v.AsDuration() > 0 {
		d.interval = v.AsDuration()
	}
	if v := od.GetConsecutive_5Xx(); v != nil {
		d.consec5xx = int64(v.GetValue())
	}
	if v := od.GetEnforcingConsecutive_5Xx(); v != nil {
		d.enforce5xx = v.GetValue()
	}
	if v := od.GetConsecutiveGatewayFailure(); v != nil {
		d.consecGateway = int64(v.GetValue())
	}
	if v := od.GetEnforcingConsecutiveGatewayFailure(); v != nil {
		d.enforceGateway = v.GetValue()
	}
	if v := od.GetBaseEjectionTime(); v != nil {
		d.base = v.AsDuration()
	}
	if v := od.GetMaxEjectionTime(); v != nil {
		d.maxTime = v.AsDuration()
	}
	if v := od.GetMaxEjectionPercent(); v != nil {
		d.maxPercent = int(v.GetValue())
	}
	if d.maxTime < d.base {
		d.maxTime = d.base
	}
	return d
}

// endpointHealth is an endpoint's outlier state.
type endpointHealth struct {
	consec5xx, consecGateway atomic.Int64
	ejectedUntil             atomic.Int64 // unix ns; 0: not ejected
	ejections                int          // under the detector's mu
}

// Report records the outcome of one upstream request to e: its HTTP
// status, or 503 for a connection that failed or was reset.
func (e *Endpoint) Report(status int) {
	if e.cl == nil || e.cl.det == nil {
		return
	}
	d := e.cl.det
	gw := status == 502 || status == 503 || status == 504
	if status < 500 {
		// A success ends both runs (loads first: no write on the
		// common path).
		if e.health.consec5xx.Load() != 0 {
			e.health.consec5xx.Store(0)
		}
		if e.health.consecGateway.Load() != 0 {
			e.health.consecGateway.Store(0)
		}
		return
	}
	n5 := e.health.consec5xx.Add(1)
	var ng int64
	if gw {
		ng = e.health.consecGateway.Add(1)
	} else {
		e.health.consecGateway.Store(0)
	}
	switch {
	case d.consec5xx > 0 && n5 >= d.consec5xx && enforced(d.enforce5xx):
	case d.consecGateway > 0 && gw && ng >= d.consecGateway && enforced(d.enforceGateway):
	default:
		return
	}
	d.eject(e, e.cl.Endpoints)
}

func enforced(pct uint32) bool {
	return pct >= 100 || (pct > 0 && rand.Uint32N(100) < pct)
}

// eject takes e out of the picks of members, its cluster's endpoints.
func (d *outlierDetector) eject(e *Endpoint, members []*Endpoint) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if until := e.health.ejectedUntil.Load(); until > now.UnixNano() {
		return // already out
	}
	// Count the endpoints out now (ejections end lazily).
	out := 0
	for _, x := range members {
		if x.health.ejectedUntil.Load() > now.UnixNano() {
			out++
		}
	}
	if out*100/len(members) >= d.maxPercent {
		return // max_ejection_percent reached
	}
	// Each interval spent back in the picks since the last ejection
	// takes one off the multiplier, as in Envoy.
	if last := e.health.ejectedUntil.Load(); last != 0 {
		back := int(now.Sub(time.Unix(0, last)) / d.interval)
		e.health.ejections = max(0, e.health.ejections-back)
	}
	e.health.ejections++
	dur := time.Duration(e.health.ejections) * d.base
	if dur > d.maxTime {
		dur = d.maxTime
	}
	e.health.ejectedUntil.Store(now.Add(dur).UnixNano())
	e.health.consec5xx.Store(0)
	e.health.consecGateway.Store(0)
	d.ejected.Add(1)
}

// Ejected reports whether e is out of the picks now: ejected by outlier
// detection, or found unhealthy by active health checking.
func (e *Endpoint) Ejected() bool {
	if e.down.Load() {
		return true
	}
	u := e.health.ejectedUntil.Load()
	return u != 0 && u > time.Now().UnixNano()
}
