package state

import (
	"net/netip"
	"strings"
	"testing"
)

func ringCluster(t *testing.T, lb string, eps ...string) *Cluster {
	t.Helper()
	y := "static_resources:\n  clusters:" + static("c", eps...) + "\n    lb_policy: " + lb
	s, err := Build(mustSet(t, y), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s.Clusters["c"]
}

func TestRingHash(t *testing.T) {
	for _, lb := range []string{"RING_HASH", "MAGLEV"} {
		t.Run(lb, func(t *testing.T) {
			four := ringCluster(t, lb, "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80")
			three := ringCluster(t, lb, "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
			count := map[netip.AddrPort]int{}
			moved, kept := 0, 0
			const n = 20000
			for i := range n {
				h := mix(uint64(i) * 0x9e3779b97f4a7c15)
				e, err := four.PickHash(netip.AddrPort{}, h)
				if err != nil {
					t.Fatal(err)
				}
				if again, _ := four.PickHash(netip.AddrPort{}, h); again != e {
					t.Fatal("the same hash picked two endpoints")
				}
				count[e.Addr]++
				if e.Addr.String() == "10.0.0.4:80" {
					continue
				}
				// Keys of the endpoints that stay keep their endpoint.
				if e3, _ := three.PickHash(netip.AddrPort{}, h); e3.Addr == e.Addr {
					kept++
				} else {
					moved++
				}
			}
			for a, c := range count {
				if c < n/4*7/10 || c > n/4*13/10 {
					t.Errorf("%v owns %d of %d keys, want about a quarter", a, c, n)
				}
			}
			// The ring keeps its size as the set changes (as Envoy's does),
			// so the endpoints that stay trade a few points among
			// themselves; most of their keys stay put.
			if kept < (kept+moved)*8/10 {
				t.Errorf("removing one endpoint of four moved %d of the others' %d keys", moved, kept+moved)
			}
			t.Logf("removing one endpoint of four moved %d of the others' %d keys", moved, kept+moved)
		})
	}
	if rr := ringCluster(t, "ROUND_ROBIN", "10.0.0.1:80", "10.0.0.2:80"); rr.ring != nil {
		t.Error("a round-robin cluster has a ring")
	}
	y := "static_resources:\n  clusters:" + static("c", "10.0.0.1:80") + "\n    lb_policy: RING_HASH\n    ring_hash_lb_config: {minimum_ring_size: 100, maximum_ring_size: 10}"
	if _, err := Build(mustSet(t, y), Options{}); err == nil || !strings.Contains(err.Error(), "minimum_ring_size") {
		t.Errorf("bad ring sizes: %v", err)
	}
}
