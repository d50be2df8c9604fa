package state

import (
	"maps"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/pkg/resources"
)

func mustSet(t *testing.T, y string) *resources.Set {
	t.Helper()
	set, err := resources.Decode([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return set
}

const tcpFilter = `
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: s
          cluster: %s`

func listener(name, addr, port string, chains string, extra string) string {
	return `
  - name: ` + name + `
    address: {socket_address: {address: ` + addr + `, port_value: ` + port + `}}` + extra + `
    filter_chains:` + chains
}

func chain(match, cluster string) string {
	s := "\n    - "
	if match != "" {
		s += "filter_chain_match: " + match + "\n      "
	}
	return s + "filters:" + strings.Replace(tcpFilter, "%s", cluster, 1)
}

func static(name string, eps ...string) string {
	s := "\n  - name: " + name + "\n    type: STATIC\n    load_assignment:\n      cluster_name: " + name + "\n      endpoints:\n      - lb_endpoints:"
	for _, e := range eps {
		h, p, _ := strings.Cut(e, ":")
		s += "\n        - endpoint: {address: {socket_address: {address: " + h + ", port_value: " + p + "}}}"
	}
	return s
}

func TestCapturesAndDispatch(t *testing.T) {
	y := "static_resources:\n  listeners:" +
		listener("exact", "10.0.0.1", "80", chain("", "a"), "") +
		listener("wild", "0.0.0.0", "9080", chain("", "b"), "") +
		listener("virtualOutbound", "0.0.0.0", "15001", chain("{destination_port: 15001}", "blackhole")+chain("", "passthrough"), "\n    use_original_dst: true") +
		"\n  clusters:" + static("a", "127.0.0.1:1") + static("b", "127.0.0.1:2") +
		"\n  - {name: passthrough, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED}\n  - {name: blackhole, type: STATIC}"
	s, err := Build(mustSet(t, y), Options{ReservedPorts: []uint16{15000}})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Captures) != 2 {
		t.Fatalf("captures %+v: the use_original_dst listener must not capture", s.Captures)
	}
	cases := map[string]string{"10.0.0.1:80": "exact", "10.9.9.9:9080": "wild", "10.0.0.1:9080": "wild", "1.2.3.4:5": "virtualOutbound"}
	for dst, want := range cases {
		l := s.Listener(netip.MustParseAddrPort(dst))
		if l == nil || l.Name != want {
			t.Fatalf("%s -> %v, want %s", dst, l, want)
		}
	}
	vo := s.Listener(netip.MustParseAddrPort("1.2.3.4:15001"))
	if c := vo.Chain(ChainInput{Dst: netip.MustParseAddrPort("1.2.3.4:15001")}); c.TCP.Cluster != "blackhole" {
		t.Fatalf("loop guard chain: %s", c.TCP.Cluster)
	}
	if c := vo.Chain(ChainInput{Dst: netip.MustParseAddrPort("1.2.3.4:443")}); c.TCP.Cluster != "passthrough" {
		t.Fatalf("catch-all chain: %s", c.TCP.Cluster)
	}
	ep, err := s.Clusters["passthrough"].Pick(netip.MustParseAddrPort("1.2.3.4:443"))
	if err != nil || ep.Addr.String() != "1.2.3.4:443" {
		t.Fatalf("original dst pick %v %v", ep, err)
	}
	if _, err := s.Clusters["blackhole"].Pick(netip.AddrPort{}); err == nil {
		t.Fatal("blackhole picked an endpoint")
	}
}

func TestChainPrecedence(t *testing.T) {
	y := "static_resources:\n  listeners:" + listener("l", "0.0.0.0", "80",
		chain("{prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}", "wide")+
			chain("{prefix_ranges: [{address_prefix: 10.1.0.0, prefix_len: 16}]}", "narrow")+
			chain("{transport_protocol: tls}", "tls")+
			chain("{transport_protocol: raw_buffer, application_protocols: [http/1.1, h2c]}", "http")+
			chain("{destination_port: 81}", "port81"), "\n    default_filter_chain:\n      filters:"+strings.Replace(tcpFilter, "%s", "default", 1)) +
		"\n  clusters:" + static("x", "127.0.0.1:1")
	s, err := Build(mustSet(t, y), Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := s.Listener(netip.MustParseAddrPort("10.1.2.3:80"))
	cases := []struct {
		in   ChainInput
		want string
	}{
		{ChainInput{Dst: netip.MustParseAddrPort("10.1.2.3:80")}, "narrow"},
		{ChainInput{Dst: netip.MustParseAddrPort("10.2.2.3:80")}, "wide"},
		{ChainInput{Dst: netip.MustParseAddrPort("192.168.0.1:80"), Transport: "tls"}, "tls"},
		{ChainInput{Dst: netip.MustParseAddrPort("192.168.0.1:80"), AppProtocol: "h2c"}, "http"},
		{ChainInput{Dst: netip.MustParseAddrPort("192.168.0.1:80")}, "default"},
		{ChainInput{Dst: netip.MustParseAddrPort("192.168.0.1:81")}, "port81"},
	}
	for _, c := range cases {
		got := l.Chain(c.in)
		if got == nil || got.TCP.Cluster != c.want {
			t.Errorf("%+v -> %v, want %s", c.in, got, c.want)
		}
	}
	if !l.Sniff {
		t.Fatal("listener with protocol matches must ask for sniffing")
	}
}

func TestBuildRejects(t *testing.T) {
	base := "\n  clusters:" + static("a", "127.0.0.1:1")
	cases := map[string]string{
		"own port":  listener("x", "10.0.0.1", "15001", chain("", "a"), ""),
		"duplicate": listener("x", "10.0.0.1", "80", chain("", "a"), "") + listener("x2", "10.0.0.1", "80", chain("", "a"), ""),
		"bad addr":  listener("x", "not-an-ip", "80", chain("", "a"), ""),
	}
	for name, l := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := Build(mustSet(t, "static_resources:\n  listeners:"+l+base), Options{ReservedPorts: []uint16{15001}}); err == nil {
				t.Fatal("accepted")
			} else {
				t.Log(err)
			}
		})
	}
}

func TestRoundRobinHonoursWeights(t *testing.T) {
	y := `static_resources:
  clusters:
  - name: w
    type: STATIC
    load_assignment:
      cluster_name: w
      endpoints:
      - lb_endpoints:
        - {endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}, load_balancing_weight: 3}
        - {endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 2}}}, load_balancing_weight: 1}
        - {endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 3}}}, health_status: UNHEALTHY}
`
	s, err := Build(mustSet(t, y), Options{})
	if err != nil {
		t.Fatal(err)
	}
	count := map[uint16]int{}
	for i := 0; i < 400; i++ {
		ep, err := s.Clusters["w"].Pick(netip.AddrPort{})
		if err != nil {
			t.Fatal(err)
		}
		count[ep.Addr.Port()]++
	}
	if count[1] != 300 || count[2] != 100 || count[3] != 0 {
		t.Fatalf("picks %v, want 300/100/0", count)
	}
}

func TestIssuesAreReported(t *testing.T) {
	y := `static_resources:
  listeners:
  - name: noaddr
    internal_listener: {}
  clusters:
  - name: eds
    type: EDS
    eds_cluster_config: {service_name: missing}
`
	s, err := Build(mustSet(t, y), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Issues) != 2 {
		t.Fatalf("issues %+v", s.Issues)
	}
	if _, err := s.Clusters["eds"].Pick(netip.AddrPort{}); err == nil {
		t.Fatal("picked from an empty EDS cluster")
	}
}

func TestBuildReusesUnchanged(t *testing.T) {
	set := bigSet(t, 20, 3)
	first, err := Build(set, Options{})
	if err != nil {
		t.Fatal(err)
	}
	changed := "outbound|80||svc5.ns.svc.cluster.local"
	next := *set
	next.Endpoints = maps.Clone(set.Endpoints)
	next.Endpoints[changed] = benchCLA(changed, 99, 1)
	second, err := Build(&next, Options{Previous: first})
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := Build(&next, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for n, c := range second.Clusters {
		if n == changed {
			if c == first.Clusters[n] {
				t.Errorf("cluster %s reused although its endpoints changed", n)
			}
			if len(c.Endpoints) != 1 || c.Endpoints[0].Addr.String() != "10.0.99.1:8080" {
				t.Errorf("changed cluster has endpoints %v", c.Endpoints)
			}
			continue
		}
		if c != first.Clusters[n] {
			t.Errorf("unchanged cluster %s translated again", n)
		}
	}
	for _, cp := range first.Captures {
		if second.Listener(netip.AddrPortFrom(cp.Addr, cp.Port)) != first.Listener(netip.AddrPortFrom(cp.Addr, cp.Port)) {
			t.Errorf("unchanged listener %s translated again", cp.Listener)
		}
	}
	// Reuse changes nothing observable.
	if !reflect.DeepEqual(second.Captures, fresh.Captures) || !reflect.DeepEqual(second.Issues, fresh.Issues) {
		t.Error("captures or issues differ from a fresh build")
	}
	if len(second.Clusters) != len(fresh.Clusters) {
		t.Errorf("%d clusters, fresh build has %d", len(second.Clusters), len(fresh.Clusters))
	}
	// A listener replaced by a new message (same content) is translated again;
	// a removed one disappears.
	delete(next.Listeners, first.Captures[0].Listener)
	l := next.Listeners[first.Captures[1].Listener]
	next.Listeners = maps.Clone(next.Listeners)
	next.Listeners[l.GetName()] = proto.Clone(l).(*listenerv3.Listener)
	third, err := Build(&next, Options{Previous: second})
	if err != nil {
		t.Fatal(err)
	}
	c0, c1 := first.Captures[0], first.Captures[1]
	if third.Listener(netip.AddrPortFrom(c0.Addr, c0.Port)) != nil {
		t.Error("removed listener still dispatched")
	}
	if got := third.Listener(netip.AddrPortFrom(c1.Addr, c1.Port)); got == nil || got == second.Listener(netip.AddrPortFrom(c1.Addr, c1.Port)) {
		t.Error("replaced listener not translated again")
	}
}

// A weighted tcp_proxy splits connections in proportion to the weights,
// exact within a few connections, and a zero weight is never picked.
func TestTCPProxyWeightedPick(t *testing.T) {
	y := `static_resources:
  listeners:
  - name: split
    address: {socket_address: {address: 10.0.0.7, port_value: 80}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: s
          weighted_clusters:
            clusters: [{name: a, weight: 3}, {name: b, weight: 1}, {name: zero, weight: 0}]
  clusters:` + static("a", "127.0.0.1:1") + static("b", "127.0.0.1:2") + static("zero", "127.0.0.1:3")
	s, err := Build(mustSet(t, y), Options{})
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddrPort("10.0.0.7:80")
	tp := s.Listener(dst).Chain(ChainInput{Dst: dst, Transport: "raw_buffer"}).TCP
	counts := map[string]int{}
	const n = 10000
	for range n {
		counts[tp.PickCluster()]++
	}
	if counts["zero"] != 0 || counts["a"] < n*3/4-8 || counts["a"] > n*3/4+8 || counts["a"]+counts["b"] != n {
		t.Fatalf("picks %v over %d connections, want a 7500 ± 8, b the rest, zero none", counts, n)
	}
}
