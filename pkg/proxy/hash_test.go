package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/pkg/proxy"
)

// A RING_HASH cluster behind a route with a hash_policy (Istio's
// DestinationRule consistentHash on a header): each user sticks to one
// endpoint of the real cluster state.
func TestConsistentHashRoute(t *testing.T) {
	var eps []netip.AddrPort
	for _, n := range []string{"a", "b", "c"} {
		eps = append(eps, httpUpstream(t, n, false))
	}
	cl := staticCluster("web", eps...)
	cl["lb_policy"] = "RING_HASH"
	hcm := httpManager("web")
	rt := hcm["typed_config"].(M)["route_config"].(M)["virtual_hosts"].([]M)[0]["routes"].([]M)[0]["route"].(M)
	rt["hash_policy"] = []M{{"header": M{"header_name": "x-user"}}}
	snap := snapshot(t, []M{listener("web", "10.0.0.5:80", chain("http", nil, hcm))}, []M{cl})
	h := startProxy(t, proxy.Options{}, snap, nil)
	c := httpClient(t, h, "10.0.0.5:80", false)
	seen := map[string]map[string]bool{}
	for i := range 40 {
		user := fmt.Sprint("u", i%8)
		req, _ := http.NewRequest("GET", "http://web.test/x", nil)
		req.Header.Set("X-User", user)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		name, _, _ := strings.Cut(string(b), " ")
		if seen[user] == nil {
			seen[user] = map[string]bool{}
		}
		seen[user][name] = true
	}
	used := map[string]bool{}
	for u, names := range seen {
		if len(names) != 1 {
			t.Errorf("%s reached %v, want one endpoint", u, names)
		}
		for n := range names {
			used[n] = true
		}
	}
	if len(used) < 2 {
		t.Errorf("8 users all on %v", used)
	}
}
