package proxy_test

import (
	"testing"

	"github.com/meshlet/meshlet/internal/waitfor"
	"github.com/meshlet/meshlet/pkg/proxy"
)

func prefix(addr string, bits int) M {
	return M{"address_prefix": addr, "prefix_len": bits}
}

// TestDispatch checks listener and filter chain selection by original
// destination: exact address before the port's wildcard listener before
// the use_original_dst listener; within a listener, Envoy's
// FilterChainMatch order (destination port, then longest destination
// prefix, then the default chain).
func TestDispatch(t *testing.T) {
	names := []string{"exact", "wild", "narrow", "wide", "p7000", "p7000narrow", "fallback"}
	ups := map[string]*upstream{}
	var clusters []M
	for _, n := range names {
		ups[n] = echoUpstream(t, n)
		clusters = append(clusters, staticCluster(n, ups[n].addr))
	}
	dispatch := listener("virtualOutbound", "0.0.0.0:15001",
		chain("p7000", M{"destination_port": 7000}, tcpProxy("p7000")),
		chain("p7000narrow", M{"destination_port": 7000, "prefix_ranges": []M{prefix("10.1.0.0", 16)}}, tcpProxy("p7000narrow")),
		chain("narrow", M{"prefix_ranges": []M{prefix("10.1.0.0", 16)}}, tcpProxy("narrow")))
	dispatch["use_original_dst"] = true
	dispatch["default_filter_chain"] = M{"filters": []M{tcpProxy("fallback")}}
	snap := snapshot(t, []M{
		listener("exact", "10.0.0.1:80", chain("", nil, tcpProxy("exact"))),
		listener("wild", "0.0.0.0:80", chain("", nil, tcpProxy("wild"))),
		// No default chain: a destination outside both prefixes matches nothing.
		listener("prefixes", "0.0.0.0:8080",
			chain("wide", M{"prefix_ranges": []M{prefix("10.0.0.0", 8)}}, tcpProxy("wide")),
			chain("narrow", M{"prefix_ranges": []M{prefix("10.1.0.0", 16)}}, tcpProxy("narrow"))),
		dispatch,
	}, clusters)
	h := startProxy(t, proxy.Options{}, snap, nil)

	accepted := func() (n int64) {
		for _, u := range ups {
			n += u.accepted.Load()
		}
		return n
	}
	cases := []struct {
		dst  string
		want string // upstream greeting; "" means the proxy closes the connection
	}{
		{"10.0.0.1:80", "exact"},
		{"10.0.0.2:80", "wild"},
		{"127.0.0.1:80", "wild"},
		{"10.1.2.3:8080", "narrow"},
		{"10.2.0.1:8080", "wide"},
		{"192.168.0.1:8080", ""},
		{"10.1.2.3:7000", "p7000narrow"},
		{"10.2.2.2:7000", "p7000"},
		{"10.1.9.9:6000", "narrow"},
		{"172.16.0.1:6000", "fallback"},
		{"10.0.0.1:8080", "wide"},
	}
	for _, tc := range cases {
		t.Run(tc.dst, func(t *testing.T) {
			before, noLis := accepted(), h.p.Stats().NoListener
			c := h.dial(t, tc.dst)
			if tc.want == "" {
				expectClosed(t, c)
				waitfor.Cond(t, "the unmatched connection to be counted", func() bool { return h.p.Stats().NoListener == noLis+1 })
				if n := accepted(); n != before {
					t.Errorf("an unmatched connection reached an upstream")
				}
				return
			}
			if got := readGreeting(t, c); got != tc.want {
				t.Fatalf("dst %s went to %q, want %q", tc.dst, got, tc.want)
			}
			roundTrip(t, c, "ping "+tc.dst)
			if n := h.p.Stats().NoListener; n != noLis {
				t.Errorf("NoListener went from %d to %d on a routed connection", noLis, n)
			}
		})
	}
}

func TestNoListenerClosesAndCounts(t *testing.T) {
	up := echoUpstream(t, "backend")
	cases := []struct {
		name   string
		update bool // false: the proxy never got a config
		dst    string
	}{
		{"no config yet", false, "10.0.0.1:80"},
		{"no listener for the address or port", true, "10.0.0.1:81"},
		{"wildcard listener on another port only", true, "10.0.0.9:443"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := startProxy(t, proxy.Options{}, nil, nil)
			if tc.update {
				h.p.Update(snapshot(t, []M{
					listener("svc", "10.0.0.1:80", chain("", nil, tcpProxy("backend"))),
					listener("wild", "0.0.0.0:8443", chain("", nil, tcpProxy("backend"))),
				}, []M{staticCluster("backend", up.addr)}))
			}
			before := up.accepted.Load()
			c := h.dial(t, tc.dst)
			expectClosed(t, c)
			waitfor.Cond(t, "NoListener to count the connection", func() bool { return h.p.Stats().NoListener == 1 })
			s := h.p.Stats()
			if s.Accepted != 1 || s.UpstreamFail != 0 {
				t.Errorf("stats %+v: want 1 accepted, no upstream failure", s)
			}
			if up.accepted.Load() != before {
				t.Error("an unrouted connection reached the upstream")
			}
		})
	}
}
