package state

import (
	"hash/fnv"
	"net/netip"
	"slices"
	"strconv"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
)

// Consistent hashing (lb_policy RING_HASH and MAGLEV): a request's hash
// (the route's hash_policy) picks the same endpoint for as long as the
// endpoint set is the same, and a change of one endpoint moves mostly the
// keys that endpoint owned (the ring keeps its size, so the others trade a
// few points; TestRingHash measures about 14 % of their keys moving when
// one of four leaves). Both policies use one hash ring here, each endpoint
// holding points in proportion to its weight, the ring's size between
// ring_hash_lb_config's minimum (default 1024) and maximum, as Envoy's
// ring hash; which endpoint a given key lands on differs from Envoy's.

const (
	defaultMinRing = 1024
	defaultMaxRing = 8 << 20
)

type ringPoint struct {
	h   uint64
	idx int32
}

type hashRing struct {
	once   sync.Once
	min    uint64
	max    uint64
	points []ringPoint
}

// consistent reports whether the cluster picks by request hash.
func (c *Cluster) consistent() bool {
	return c.LB == clusterv3.Cluster_RING_HASH || c.LB == clusterv3.Cluster_MAGLEV
}

// mix is splitmix64's finalizer: spreads FNV's output over the ring.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

func (c *Cluster) buildRing() {
	r := c.ring
	size := r.min
	if size < uint64(len(c.Endpoints)) {
		size = uint64(len(c.Endpoints))
	}
	if size > r.max {
		size = r.max
	}
	total := uint64(c.total)
	for i, e := range c.Endpoints {
		n := max(1, (size*uint64(e.Weight)+total/2)/total)
		key := e.Addr.String() + "_"
		for j := range n {
			h := fnv.New64a()
			h.Write([]byte(key + strconv.FormatUint(j, 10)))
			r.points = append(r.points, ringPoint{h: mix(h.Sum64()), idx: int32(i)})
		}
	}
	slices.SortFunc(r.points, func(a, b ringPoint) int {
		switch {
		case a.h < b.h:
			return -1
		case a.h > b.h:
			return 1
		}
		return int(a.idx - b.idx)
	})
}

// PickHash chooses the endpoint that owns hash on the cluster's ring
// (RING_HASH, MAGLEV); other clusters ignore hash (Pick).
func (c *Cluster) PickHash(dst netip.AddrPort, hash uint64) (*Endpoint, error) {
	if !c.consistent() || c.Kind != KindEndpoints || len(c.Endpoints) < 2 {
		return c.Pick(dst)
	}
	c.ring.once.Do(c.buildRing)
	p := c.ring.points
	h := mix(hash)
	i, _ := slices.BinarySearchFunc(p, h, func(pt ringPoint, h uint64) int {
		switch {
		case pt.h < h:
			return -1
		case pt.h > h:
			return 1
		}
		return 0
	})
	if i == len(p) {
		i = 0
	}
	e := c.Endpoints[p[i].idx]
	if c.mayExclude() && e.Ejected() {
		// The next points on the ring belong to the endpoints that take
		// over an ejected one's keys.
		for j := 1; j < len(p); j++ {
			if x := c.Endpoints[p[(i+j)%len(p)].idx]; !x.Ejected() {
				return x, nil
			}
		}
	}
	return e, nil
}
