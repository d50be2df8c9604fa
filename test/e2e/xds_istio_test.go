package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"github.com/meshlet/meshlet/internal/privtest"
	"github.com/meshlet/meshlet/pkg/resources"
)

// istioFixtures is where the Istio sidecar config dumps live, relative to
// this package (the repository's sibling "shared" folder).
const istioFixtures = "../../../shared/fixtures/istio"

// istioSample bounds the meshed connections made per fixture.
const istioSample = 10

// Istio sidecar config dumps served through the agent's embedded control
// plane, with every EDS cluster's endpoints rewritten to a local upstream
// that answers with the cluster's name: the capture table covers every
// outbound service listener, what the agent does not honour is reported,
// and connections to per-ClusterIP TCP listeners reach the right cluster.
func TestXDSIstioConfigDump(t *testing.T) {
	for _, name := range []string{"istio-configdump-1.json", "istio-configdump-2.json"} {
		t.Run(strings.TrimSuffix(name, ".json"), func(t *testing.T) {
			path := filepath.Join(istioFixtures, name)
			data, err := os.ReadFile(path)
			if err != nil {
				if os.Getenv("CI") == "true" || privtest.Required() {
					t.Fatalf("Istio fixture missing: %v", err)
				}
				t.Skipf("Istio fixture %s not available (%v): the fixtures live in /work/shared/fixtures/istio", path, err)
			}
			m := newSandbox(t)
			orig, _, err := resources.DecodeConfigDump(data)
			if err != nil {
				t.Fatalf("decode %s: %v", name, err)
			}

			// One upstream per EDS cluster, named after the cluster.
			edsService := map[string]string{} // cluster -> EDS service name
			var clusters []string
			for n, c := range orig.Clusters {
				if c.GetType() == clusterv3.Cluster_EDS {
					clusters = append(clusters, n)
					svc := c.GetEdsClusterConfig().GetServiceName()
					if svc == "" {
						svc = n
					}
					edsService[n] = svc
				}
			}
			sort.Strings(clusters)
			if len(clusters) == 0 {
				t.Fatalf("%s has no EDS clusters", name)
			}
			upstream := map[string]string{} // EDS service -> 127.0.0.1:port
			for i, n := range clusters {
				addr := fmt.Sprintf("127.0.0.1:%d", 19000+i)
				m.idServer(addr, n)
				upstream[edsService[n]] = addr
			}
			file := filepath.Join(t.TempDir(), "istio.json")
			if err := os.WriteFile(file, rewriteEndpoints(t, data, upstream), 0o644); err != nil {
				t.Fatal(err)
			}
			set, dumpIssues, err := resources.DecodeConfigDump(mustRead(t, file))
			if err != nil {
				t.Fatalf("decode the rewritten dump: %v", err)
			}
			t.Logf("%s: %d listeners, %d clusters (%d EDS), %d routes, %d endpoints; %d decode issues",
				name, len(set.Listeners), len(set.Clusters), len(clusters), len(set.Routes), len(set.Endpoints), len(dumpIssues))

			m.start(xdsAgentConfig, "--resources", file)
			st := m.status()
			if st.XDS.LastNACK != nil {
				t.Fatalf("the agent rejected the fixture: %s", st.XDS.LastNACK.Detail)
			}

			// Capture table versus the fixture's outbound listeners.
			captured := map[string]string{} // listener -> addr:port
			for _, s := range st.Services {
				k, rest, _ := strings.Cut(s, " -> listener ")
				captured[rest] = k
			}
			issued := map[string]map[string]string{}
			for _, is := range st.Config.Issues {
				if issued[is.Type] == nil {
					issued[is.Type] = map[string]string{}
				}
				issued[is.Type][is.Name] += is.Reason + "; "
			}
			if len(st.Config.Issues) == 0 {
				t.Fatal("no config issues reported, yet an Istio sidecar config has things the agent does not honour")
			}
			want := 0
			for n, l := range set.Listeners {
				key, ok := outboundCapture(l)
				switch {
				case l.GetUseOriginalDst().GetValue():
					if _, c := captured[n]; c {
						t.Errorf("use_original_dst listener %s is in the capture table", n)
					}
				case ok:
					want++
					if captured[n] != key {
						t.Errorf("outbound listener %s (%s) not captured (status has %q; issue %q)", n, key, captured[n], issued["listener"][n])
					}
				default:
					if _, c := captured[n]; !c && issued["listener"][n] == "" {
						t.Errorf("listener %s is neither captured nor reported as an issue", n)
					}
					if l.GetTrafficDirection() == corev3.TrafficDirection_INBOUND && l.GetAddress().GetSocketAddress() != nil &&
						!strings.Contains(issued["listener"][n], "inbound") {
						t.Errorf("inbound listener %s: issue %q does not say inbound capture is missing", n, issued["listener"][n])
					}
				}
			}
			if len(captured) != want {
				t.Errorf("capture table has %d entries, the fixture %d outbound listeners", len(captured), want)
			}
			// Issues name resources that exist.
			for _, is := range st.Config.Issues {
				var exists bool
				switch is.Type {
				case "listener":
					_, exists = set.Listeners[is.Name]
				case "cluster":
					_, exists = set.Clusters[is.Name]
				case "route":
					_, exists = set.Routes[is.Name]
				case "endpoint":
					_, exists = set.Endpoints[is.Name]
				default:
					exists = true
				}
				if !exists {
					t.Errorf("issue names a %s %q that is not in the config: %s", is.Type, is.Name, is.Reason)
				}
			}
			kinds := map[string]int{}
			for _, is := range st.Config.Issues {
				kinds[is.Type]++
			}
			t.Logf("captured %d outbound listeners; %d issues %v, e.g. %+v", want, len(st.Config.Issues), kinds, st.Config.Issues[0])

			// Meshed connections to per-ClusterIP TCP listeners.
			type target struct{ addr, cluster string }
			var targets []target
			for n, l := range set.Listeners {
				key, ok := outboundCapture(l)
				if !ok || strings.HasPrefix(key, "*:") || len(l.GetFilterChains()) != 1 || l.GetDefaultFilterChain() != nil {
					continue
				}
				cl := tcpCluster(l.GetFilterChains()[0])
				if cl == "" || edsService[cl] == "" || captured[n] != key {
					continue
				}
				targets = append(targets, target{key, cl})
			}
			sort.Slice(targets, func(i, j int) bool { return targets[i].addr < targets[j].addr })
			if len(targets) == 0 {
				t.Fatalf("%s: no per-ClusterIP TCP listener with an EDS cluster", name)
			}
			step := max(1, len(targets)/istioSample)
			n := 0
			for i := 0; i < len(targets) && n < istioSample; i += step {
				tg := targets[i]
				if got := m.dialVia(tg.addr); got != tg.cluster {
					t.Errorf("%s answered by %q, want cluster %q", tg.addr, got, tg.cluster)
				}
				n++
			}
			t.Logf("%d of %d per-ClusterIP TCP listeners dialled, each reached its cluster's upstream", n, len(targets))
		})
	}
}

// outboundCapture returns "addr:port" ("*:port" for any address) when l is
// an outbound IPv4 (or wildcard) listener with a tcp_proxy or HTTP chain.
func outboundCapture(l *listenerv3.Listener) (string, bool) {
	if l.GetUseOriginalDst().GetValue() || l.GetTrafficDirection() == corev3.TrafficDirection_INBOUND {
		return "", false
	}
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil || sa.GetProtocol() == corev3.SocketAddress_UDP {
		return "", false
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil || !(ip.Is4() || ip.IsUnspecified()) {
		return "", false
	}
	chains := append([]*listenerv3.FilterChain{l.GetDefaultFilterChain()}, l.GetFilterChains()...)
	served := false
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			u := f.GetTypedConfig().GetTypeUrl()
			if strings.HasSuffix(u, ".TcpProxy") || strings.HasSuffix(u, ".HttpConnectionManager") {
				served = true
			}
		}
	}
	if !served {
		return "", false
	}
	host := ip.String()
	if ip.IsUnspecified() {
		host = "*"
	}
	return fmt.Sprintf("%s:%d", host, sa.GetPortValue()), true
}

// tcpCluster is the single cluster of fc's tcp_proxy, or "".
func tcpCluster(fc *listenerv3.FilterChain) string {
	for _, f := range fc.GetFilters() {
		var tp tcpv3.TcpProxy
		if f.GetTypedConfig().UnmarshalTo(&tp) == nil {
			return tp.GetCluster()
		}
	}
	return ""
}

// rewriteEndpoints replaces the dump's EDS section with one
// ClusterLoadAssignment per EDS service, each with a single endpoint at
// upstream[service]; everything else in the dump is kept as it is.
func rewriteEndpoints(t *testing.T, data []byte, upstream map[string]string) []byte {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var dump map[string]any
	if err := dec.Decode(&dump); err != nil {
		t.Fatalf("config dump: %v", err)
	}
	var clas []any
	services := make([]string, 0, len(upstream))
	for s := range upstream {
		services = append(services, s)
	}
	sort.Strings(services)
	for _, s := range services {
		clas = append(clas, map[string]any{
			"version_info": "e2e",
			"endpoint_config": map[string]any{
				"@type":        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
				"cluster_name": s,
				"endpoints":    []any{map[string]any{"lb_endpoints": []any{map[string]any{"endpoint": map[string]any{"address": sockAddr(upstream[s])}}}}},
			},
		})
	}
	eds := map[string]any{"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "dynamic_endpoint_configs": clas}
	configs, _ := dump["configs"].([]any)
	replaced := false
	for i, c := range configs {
		if cm, ok := c.(map[string]any); ok && cm["@type"] == eds["@type"] {
			configs[i], replaced = eds, true
		}
	}
	if !replaced {
		configs = append(configs, eds)
	}
	dump["configs"] = configs
	out, err := json.Marshal(dump)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
