package hcm

import (
	"runtime"
	"sync"
	"weak"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// compiled is a cached compilation result (a table or the error).
type compiled struct {
	t   *routeTable
	err error
}

// routeCache maps a RouteConfiguration pointer to its compiled form. Keys
// are weak: an entry disappears once the control plane drops the proto.
type routeCache struct {
	mu sync.Mutex
	m  map[weak.Pointer[routev3.RouteConfiguration]]*compiled
}

func newRouteCache() routeCache {
	return routeCache{m: map[weak.Pointer[routev3.RouteConfiguration]]*compiled{}}
}

func (c *routeCache) get(rc *routev3.RouteConfiguration) *compiled {
	k := weak.Make(rc)
	c.mu.Lock()
	e, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return e
	}
	t, err := compileRoutes(rc)
	e = &compiled{t: t, err: err}
	c.mu.Lock()
	if old, ok := c.m[k]; ok {
		e = old
	} else {
		c.m[k] = e
		runtime.AddCleanup(rc, func(k weak.Pointer[routev3.RouteConfiguration]) {
			c.mu.Lock()
			delete(c.m, k)
			c.mu.Unlock()
		}, k)
	}
	c.mu.Unlock()
	return e
}

func (c *routeCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
