package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"golang.org/x/net/http2"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshlet/meshlet/internal/istiofixture"
	"github.com/meshlet/meshlet/pkg/admin"
	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/state"
)

// istioSample bounds the meshed TCP connections, and separately the HTTP
// requests, made per fixture.
const istioSample = 10

// Istio sidecar config dumps served through the agent's embedded control
// plane, with every EDS cluster's endpoints rewritten to a local upstream
// that answers with the cluster's name: the capture table covers every
// outbound service listener, what the agent does not honour is reported
// (in /status and in /config_dump), connections to per-ClusterIP TCP
// listeners reach the right cluster, and HTTP requests with a virtual
// host's domain as Host reach the cluster its route names.
//
// The "broken-routes" case is fixture 2 with one RDS route configuration
// removed and one route sent to a cluster that does not exist: requests
// there cannot be honoured, and the agent must say so in its issues. (The
// xDS client waits its warm-up timeout, about 15 s, for the missing route
// configuration before it applies the rest.)
func TestXDSIstioConfigDump(t *testing.T) {
	cases := []struct {
		name, file string
		mutate     func(t *testing.T, data []byte) []byte
	}{
		{name: "istio-configdump-1", file: "istio-configdump-1.json"},
		{name: "istio-configdump-2", file: "istio-configdump-2.json"},
		{name: "istio-configdump-2-broken-routes", file: "istio-configdump-2.json", mutate: breakRoutes},
	}
	for _, tc := range cases {
		name := tc.file
		t.Run(tc.name, func(t *testing.T) {
			data := istiofixture.Read(t, name)
			if tc.mutate != nil {
				data = tc.mutate(t, data)
			}
			m := newSandbox(t)
			orig, _, err := resources.DecodeConfigDump(data)
			if err != nil {
				t.Fatalf("decode %s: %v", name, err)
			}

			// One upstream per EDS cluster, named after the cluster,
			// answering the raw id protocol and HTTP.
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
				m.clusterServer(addr, n)
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

			unhonoured := checkIstioHTTP(t, m, set, edsService, captured, st.Config.Issues)
			if tc.mutate != nil && unhonoured < 2 {
				t.Errorf("the broken routes were not found by the HTTP check (%d unhonourable)", unhonoured)
			}

			// /config_dump reports the same issues as /status.
			cd := m.envoyConfigDump()
			tr, ok, err := admin.IssuesFromConfigDump(cd)
			if err != nil || !ok {
				t.Fatalf("/config_dump has no %s entry (ok=%v, err=%v)", admin.IssuesKey, ok, err)
			}
			if !slices.Equal(tr.Issues, st.Config.Issues) {
				t.Errorf("/config_dump lists %d issues, /status %d; they differ", len(tr.Issues), len(st.Config.Issues))
			}
			if tr.Version != st.Config.Version {
				t.Errorf("/config_dump issues are of version %q, /status config of %q", tr.Version, st.Config.Version)
			}
			var lds adminv3.ListenersConfigDump
			for _, c := range cd.Configs {
				if c.MessageIs(&lds) {
					if err := c.UnmarshalTo(&lds); err != nil {
						t.Fatal(err)
					}
				}
			}
			if len(lds.DynamicListeners) != len(set.Listeners) {
				t.Errorf("/config_dump lists %d listeners, the fixture %d", len(lds.DynamicListeners), len(set.Listeners))
			}
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

// envoyConfigDump fetches the agent's /config_dump and decodes it as Envoy
// tooling would, as an envoy.admin.v3.ConfigDump.
func (m *mesh) envoyConfigDump() *adminv3.ConfigDump {
	m.t.Helper()
	body := m.adminGet("/config_dump")
	var cd adminv3.ConfigDump
	if err := (protojson.UnmarshalOptions{Resolver: resources.NewTolerantResolver()}).Unmarshal(body, &cd); err != nil {
		m.t.Fatalf("/config_dump is not an envoy.admin.v3.ConfigDump: %v", err)
	}
	return &cd
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ---- HTTP by host name ----

// clusterServer is an upstream for the Istio fixture tests that answers
// whichever protocol arrives: the raw id protocol of idServer (see
// exchange), HTTP/1.x or h2c with prior knowledge. HTTP replies are a JSON
// httpAnswer saying which cluster answered and what Host it received.
func (m *mesh) clusterServer(addr, name string) {
	lis := m.listen(addr)
	h2 := &http2.Server{}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(httpAnswer{Cluster: name, Host: r.Host, Proto: r.Proto, Path: r.URL.Path})
	})
	serveEach(lis, 30*time.Second, func(c net.Conn) {
		br := bufio.NewReader(c)
		head, _ := br.Peek(4)
		switch {
		case string(head) == "PRI ":
			h2.ServeConn(peekedConn{c, br}, &http2.ServeConnOpts{Handler: handler})
		case isHTTPMethod(head):
			bw := bufio.NewWriter(c)
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				rec := httptest.NewRecorder()
				handler.ServeHTTP(rec, req)
				resp := rec.Result()
				resp.ContentLength = int64(rec.Body.Len())
				resp.Close = req.Close
				if resp.Write(bw) != nil || bw.Flush() != nil || req.Close {
					return
				}
			}
		default:
			got, err := io.ReadAll(br)
			if err != nil {
				return
			}
			_, _ = c.Write(append([]byte(name+"\n"), got...))
		}
	})
}

// isHTTPMethod says whether a connection's first four bytes start an
// HTTP/1.x request line.
func isHTTPMethod(b []byte) bool {
	for _, m := range []string{"GET ", "HEAD", "POST", "PUT ", "DELE", "OPTI", "PATC"} {
		if string(b) == m {
			return true
		}
	}
	return false
}

// peekedConn reads through the bufio.Reader that peeked at the connection.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// httpAnswer is what a clusterServer answers to an HTTP request.
type httpAnswer struct {
	Cluster string `json:"cluster"`
	Host    string `json:"host"`
	Proto   string `json:"proto"`
	Path    string `json:"path"`
}

// httpProbe is one request of the xds-http role.
type httpProbe struct {
	Addr string `json:"addr"` // dial address, ip:port
	Host string `json:"host"` // Host header
	Path string `json:"path"`
}

// httpProbeResult is the xds-http role's answer to one httpProbe.
type httpProbeResult struct {
	Status int        `json:"status"`
	Answer httpAnswer `json:"answer"`
	Body   string     `json:"body,omitempty"` // when not an httpAnswer
	Err    string     `json:"error,omitempty"`
}

// roleXDSHTTP: PROBES (a JSON list of httpProbe). Sends each as a GET
// over its own connection with net/http and prints a JSON list of
// httpProbeResult.
func roleXDSHTTP(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: PROBES-JSON")
	}
	var probes []httpProbe
	if err := json.Unmarshal([]byte(args[0]), &probes); err != nil {
		return fmt.Errorf("probes: %w", err)
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, DisableCompression: true},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	out := make([]httpProbeResult, len(probes))
	for i, p := range probes {
		res := &out[i]
		req, err := http.NewRequest(http.MethodGet, "http://"+p.Addr+p.Path, nil)
		if err != nil {
			res.Err = err.Error()
			continue
		}
		req.Host = p.Host
		resp, err := client.Do(req)
		if err != nil {
			res.Err = err.Error()
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		res.Status = resp.StatusCode
		if err != nil {
			res.Err = "read body: " + err.Error()
		}
		if json.Unmarshal(body, &res.Answer) != nil || res.Answer.Cluster == "" {
			res.Body = string(body)
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// httpTarget is one virtual host of a fixture reached through a captured
// outbound listener's HTTP chain.
type httpTarget struct {
	listener string // the captured listener
	chain    string // its filter chain name (as state names it)
	wildcard bool   // the listener captures any address on the port
	port     uint32
	dialIPs  []string // candidate destination addresses, best first
	rds      string   // the route configuration's name (RDS or inline)
	rc       *routev3.RouteConfiguration
	vh       *routev3.VirtualHost
}

func (t httpTarget) String() string {
	return fmt.Sprintf("listener %s chain %s route %q vhost %q", t.listener, t.chain, t.rds, t.vh.GetName())
}

// httpChainFor returns the filter chain of l that a plaintext HTTP/1.1
// connection to port selects, when that chain ends in an HTTP connection
// manager, with its name as pkg/state names it ("#i" or "default" when
// unnamed); ok is false when no such chain exists or the choice is
// ambiguous.
func httpChainFor(l *listenerv3.Listener, port uint32) (fc *listenerv3.FilterChain, name string, hcm *hcmv3.HttpConnectionManager, ok bool) {
	pick := func(c *listenerv3.FilterChain) *hcmv3.HttpConnectionManager {
		for _, f := range c.GetFilters() {
			var h hcmv3.HttpConnectionManager
			if strings.HasSuffix(f.GetTypedConfig().GetTypeUrl(), ".HttpConnectionManager") && f.GetTypedConfig().UnmarshalTo(&h) == nil {
				return &h
			}
		}
		return nil
	}
	var found []int
	for i, c := range l.GetFilterChains() {
		m := c.GetFilterChainMatch()
		if m.GetDestinationPort() != nil && m.GetDestinationPort().GetValue() != port {
			continue
		}
		if len(m.GetPrefixRanges()) > 0 || len(m.GetServerNames()) > 0 {
			continue
		}
		if tp := m.GetTransportProtocol(); tp != "" && tp != "raw_buffer" {
			continue
		}
		if ap := m.GetApplicationProtocols(); len(ap) > 0 && !slices.Contains(ap, "http/1.1") {
			continue
		}
		found = append(found, i)
	}
	switch {
	case len(found) == 1:
		fc = l.GetFilterChains()[found[0]]
		name = fc.GetName()
		if name == "" {
			name = fmt.Sprintf("#%d", found[0])
		}
	case len(found) == 0 && l.GetDefaultFilterChain() != nil:
		fc, name = l.GetDefaultFilterChain(), l.GetDefaultFilterChain().GetName()
		if name == "" {
			name = "default"
		}
	default:
		return nil, "", nil, false
	}
	h := pick(fc)
	return fc, name, h, h != nil
}

// httpTargets lists, for every captured outbound listener whose HTTP chain
// names a route configuration, that configuration's virtual hosts.
// missing lists the route configurations such chains name that the
// configuration lacks.
func httpTargets(set *resources.Set, captured map[string]string, exact map[string]bool) (targets []httpTarget, missing []httpTarget) {
	for _, n := range slices.Sorted(maps.Keys(set.Listeners)) {
		l := set.Listeners[n]
		key, ok := outboundCapture(l)
		if !ok || captured[n] != key {
			continue
		}
		port := l.GetAddress().GetSocketAddress().GetPortValue()
		fc, chain, hcm, ok := httpChainFor(l, port)
		if !ok {
			continue
		}
		t := httpTarget{listener: n, chain: chain, wildcard: strings.HasPrefix(key, "*:"), port: port}
		if fc.GetTransportSocket() != nil {
			t.rds = "(downstream TLS)"
			missing = append(missing, t)
			continue
		}
		if !t.wildcard {
			t.dialIPs = []string{l.GetAddress().GetSocketAddress().GetAddress()}
		}
		switch {
		case hcm.GetRds() != nil:
			t.rds = hcm.GetRds().GetRouteConfigName()
			t.rc = set.Routes[t.rds]
		default:
			t.rc = hcm.GetRouteConfig()
			t.rds = t.rc.GetName()
		}
		if t.rc == nil {
			missing = append(missing, t)
			continue
		}
		for _, vh := range t.rc.GetVirtualHosts() {
			v := t
			v.vh = vh
			if v.wildcard {
				// The service's ClusterIP when the vhost lists it (and no
				// listener captures it exactly), then TEST-NET-1 addresses.
				for _, d := range vh.GetDomains() {
					if ip, err := netip.ParseAddr(d); err == nil && ip.Is4() && !exact[fmt.Sprintf("%s:%d", ip, port)] {
						v.dialIPs = append(v.dialIPs, ip.String())
					}
				}
				for i := 1; i < 10; i++ {
					if a := fmt.Sprintf("192.0.2.%d", i); !exact[fmt.Sprintf("%s:%d", a, port)] {
						v.dialIPs = append(v.dialIPs, a)
						break
					}
				}
			}
			targets = append(targets, v)
		}
	}
	return targets, missing
}

// vhostFor selects the virtual host of rc for host as Envoy does: exact
// domain, then the longest "*suffix", then the longest "prefix*", then "*";
// ports are ignored when rc says so. Domains compare case-insensitively.
func vhostFor(rc *routev3.RouteConfiguration, host string) *routev3.VirtualHost {
	host = strings.ToLower(host)
	if rc.GetIgnorePortInHostMatching() {
		if h, p, err := net.SplitHostPort(host); err == nil && p != "" {
			host = h
		}
	}
	var best *routev3.VirtualHost
	bestLen, bestKind := -1, 4 // kind: 0 exact, 1 suffix, 2 prefix, 3 star
	for _, vh := range rc.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			d = strings.ToLower(d)
			kind, n := -1, 0
			switch {
			case d == host:
				kind, n = 0, len(d)
			case d == "*":
				kind = 3
			case strings.HasPrefix(d, "*") && len(host) > len(d)-1 && strings.HasSuffix(host, d[1:]):
				kind, n = 1, len(d)
			case strings.HasSuffix(d, "*") && len(host) > len(d)-1 && strings.HasPrefix(host, d[:len(d)-1]):
				kind, n = 2, len(d)
			}
			if kind >= 0 && (kind < bestKind || kind == bestKind && n > bestLen) {
				best, bestKind, bestLen = vh, kind, n
			}
		}
	}
	return best
}

// hostsFor lists Host values that select vh in rc, host names first:
// the vhost's plain domains, names made up for its wildcard domains, and
// for a "*" vhost its name (Istio names vhosts "<fqdn>:<port>").
func hostsFor(rc *routev3.RouteConfiguration, vh *routev3.VirtualHost) []string {
	var cands []string
	var ips []string
	for _, d := range vh.GetDomains() {
		switch {
		case d == "*":
			if strings.Contains(vh.GetName(), ".") {
				cands = append(cands, vh.GetName())
			}
			cands = append(cands, "meshlet-e2e.invalid")
		case strings.HasPrefix(d, "*"):
			cands = append(cands, "meshlet-e2e"+d[1:])
		case strings.HasSuffix(d, "*"):
			cands = append(cands, d[:len(d)-1]+"meshlet-e2e")
		default:
			h := d
			if hh, _, err := net.SplitHostPort(d); err == nil {
				h = hh
			}
			if _, err := netip.ParseAddr(h); err == nil {
				ips = append(ips, d) // a ClusterIP: last, the test is about names
				continue
			}
			cands = append(cands, d)
		}
	}
	var out []string
	for _, h := range append(cands, ips...) {
		if h != "" && vhostFor(rc, h) == vh && !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

// routeExpect is what the first route of a vhost does with a simple GET.
type routeExpect struct {
	path     string   // a request path the route's match accepts
	clusters []string // clusters it may send to
	hostKept bool     // the Host header reaches the upstream unchanged
	why      string   // set when the route cannot be probed with a plain GET
}

func expectRoute(vh *routev3.VirtualHost) routeExpect {
	rs := vh.GetRoutes()
	if len(rs) == 0 {
		return routeExpect{why: "no routes"}
	}
	r := rs[0]
	m := r.GetMatch()
	var e routeExpect
	if len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 || m.GetGrpc() != nil || m.GetRuntimeFraction() != nil {
		return routeExpect{why: "first route matches on headers, query, gRPC or runtime"}
	}
	switch {
	case m.GetPath() != "":
		e.path = m.GetPath()
	case m.GetPathSeparatedPrefix() != "":
		e.path = m.GetPathSeparatedPrefix()
	case m.GetSafeRegex() != nil:
		return routeExpect{why: "first route matches a regex"}
	default:
		e.path = m.GetPrefix()
	}
	if !strings.HasPrefix(e.path, "/") {
		e.path = "/" + e.path
	}
	a := r.GetRoute()
	if a == nil {
		return routeExpect{why: "first route is not a cluster route (redirect, direct response...)"}
	}
	switch {
	case a.GetCluster() != "":
		e.clusters = []string{a.GetCluster()}
	case a.GetWeightedClusters() != nil:
		for _, w := range a.GetWeightedClusters().GetClusters() {
			if w.GetWeight().GetValue() > 0 {
				e.clusters = append(e.clusters, w.GetName())
			}
		}
	default:
		return routeExpect{why: "first route picks its cluster from a header or plugin"}
	}
	e.hostKept = a.GetHostRewriteSpecifier() == nil && a.GetPrefixRewrite() == "" && a.GetRegexRewrite() == nil
	return e
}

// sampleEven picks up to n entries of s, evenly spaced.
func sampleEven[T any](s []T, n int) []T {
	if n <= 0 || len(s) == 0 {
		return nil
	}
	if len(s) <= n {
		return s
	}
	out := make([]T, 0, n)
	for i := range n {
		out = append(out, s[i*len(s)/n])
	}
	return out
}

// checkIstioHTTP sends real HTTP requests, from a net/http client inside
// the meshed cgroup, to a sample of the fixture's virtual hosts (at most
// istioSample), each to an address its listener captures with a Host the
// vhost lists, and checks an endpoint of the routed cluster answers. What
// cannot be honoured (route configuration or cluster missing, HTTP chain
// dropped) must be reported as an issue.
// It returns how many listeners or routes it found that cannot be honoured.
func checkIstioHTTP(t *testing.T, m *mesh, set *resources.Set, edsService map[string]string, captured map[string]string, issues []state.Issue) (unhonoured int) {
	t.Helper()
	exact := map[string]bool{}
	for _, k := range captured {
		if !strings.HasPrefix(k, "*:") {
			exact[k] = true
		}
	}
	issueText := func(typ, name string) string {
		var b strings.Builder
		for _, is := range issues {
			if is.Type == typ && is.Name == name {
				b.WriteString(is.Reason + "; ")
			}
		}
		return b.String()
	}
	targets, missing := httpTargets(set, captured, exact)
	unhonoured = len(missing)
	// Not honourable, so reported.
	for _, tg := range missing {
		li := issueText("listener", tg.listener)
		if tg.rc == nil && tg.rds != "(downstream TLS)" {
			if issueText("route", tg.rds) == "" && !strings.Contains(li, tg.rds) {
				t.Errorf("%s: route configuration %q is not in the config, and no issue says so (listener issues: %q)", tg, tg.rds, li)
			}
			continue
		}
		if !strings.Contains(li, "filter chain "+tg.chain+":") {
			t.Errorf("%s: HTTP chain has downstream TLS, and no listener issue names the chain (issues: %q)", tg, li)
		}
	}

	var wild, perIP []httpTarget
	var notLocal, notProbed []string
	for _, tg := range targets {
		e := expectRoute(tg.vh)
		if e.why != "" {
			notProbed = append(notProbed, fmt.Sprintf("%s: %s", tg, e.why))
			continue
		}
		local := true
		for _, c := range e.clusters {
			if set.Clusters[c] == nil {
				// Envoy would answer 503: the route cannot be honoured.
				unhonoured++
				if issueText("route", tg.rds) == "" && issueText("cluster", c) == "" {
					t.Errorf("%s routes to cluster %q, which is not in the config, and no issue says so", tg, c)
				}
				local = false
			} else if edsService[c] == "" {
				local = false
			}
		}
		if !local {
			notLocal = append(notLocal, fmt.Sprintf("%s -> %v", tg.vh.GetName(), e.clusters))
			continue
		}
		if len(hostsFor(tg.rc, tg.vh)) == 0 || len(tg.dialIPs) == 0 {
			notProbed = append(notProbed, fmt.Sprintf("%s: no Host or address selects it", tg))
			continue
		}
		if tg.wildcard {
			wild = append(wild, tg)
		} else {
			perIP = append(perIP, tg)
		}
	}
	// Half the budget for wildcard per-port listeners (domains per
	// service), half for per-ClusterIP sniffed listeners; either fills in
	// for the other.
	nWild := min(len(wild), istioSample-min(len(perIP), istioSample/2))
	sample := append(sampleEven(wild, nWild), sampleEven(perIP, istioSample-nWild)...)
	if len(targets) > 0 && len(sample) == 0 {
		t.Fatalf("%d HTTP virtual hosts, none probeable: %v %v", len(targets), notLocal, notProbed)
	}

	type sent struct {
		tg httpTarget
		e  routeExpect
	}
	var probes []httpProbe
	var sents []sent
	for i, tg := range sample {
		e := expectRoute(tg.vh)
		hosts := hostsFor(tg.rc, tg.vh)
		host := hosts[i%len(hosts)]
		if tg.rc.GetIgnorePortInHostMatching() && i%2 == 1 && !strings.Contains(host, ":") {
			host = fmt.Sprintf("%s:%d", host, tg.port) // the port must not matter
		}
		probes = append(probes, httpProbe{Addr: fmt.Sprintf("%s:%d", tg.dialIPs[0], tg.port), Host: host, Path: e.path})
		sents = append(sents, sent{tg, e})
	}
	if len(probes) == 0 {
		t.Logf("no HTTP virtual hosts behind captured listeners")
		return unhonoured
	}
	js, err := json.Marshal(probes)
	if err != nil {
		t.Fatal(err)
	}
	var results []httpProbeResult
	out := run(t, m.role("xds-http", string(js)))
	if err := json.Unmarshal([]byte(out), &results); err != nil || len(results) != len(probes) {
		t.Fatalf("xds-http output (%v): %s", err, out)
	}
	reported, failed := 0, 0
	for i, r := range results {
		p, s := probes[i], sents[i]
		got := fmt.Sprintf("status %d, cluster %q, host %q, error %q, body %q", r.Status, r.Answer.Cluster, r.Answer.Host, r.Err, r.Body)
		ok := r.Err == "" && r.Status == http.StatusOK && slices.Contains(s.e.clusters, r.Answer.Cluster) &&
			(!s.e.hostKept || strings.EqualFold(r.Answer.Host, p.Host))
		switch {
		case ok:
			t.Logf("GET http://%s%s Host %s -> %s (%s) via %s", p.Addr, p.Path, p.Host, r.Answer.Cluster, r.Answer.Proto, s.tg.listener)
		case issueText("route", s.tg.rds) != "":
			// Reported as not (fully) honoured: a failure is expected.
			reported++
			t.Logf("GET http://%s%s Host %s (%s): %s; reported: %s", p.Addr, p.Path, p.Host, s.tg, got, issueText("route", s.tg.rds))
		default:
			failed++
			t.Errorf("GET http://%s%s Host %s (%s): %s; want 200 from cluster %v (issues: listener %q, route %q)",
				p.Addr, p.Path, p.Host, s.tg, got, s.e.clusters, issueText("listener", s.tg.listener), issueText("route", s.tg.rds))
		}
	}
	t.Logf("HTTP: %d virtual hosts behind captured listeners (%d wildcard-port, %d per-ClusterIP probeable); %d requests sent, %d answered by the routed cluster, %d failed with an issue reported; %d not routed to a local EDS cluster (e.g. %v); %d not probeable %v",
		len(targets), len(wild), len(perIP), len(probes), len(probes)-reported-failed, reported, len(notLocal), first(notLocal, 3), len(notProbed), first(notProbed, 3))
	return unhonoured
}

// Names breakRoutes removes or invents.
const (
	brokenRouteConfig = "9080"
	brokenRouteVhost  = "lazyload.mesh-operator.svc.cluster.local:80"
	brokenCluster     = "outbound|80||missing.meshlet-e2e.invalid"
)

// breakRoutes edits fixture 2: it drops the RDS route configuration
// "9080" (that 0.0.0.0_9080's HTTP chain names) and sends the vhost
// lazyload...:80 of route configuration "80" to a cluster the dump lacks.
func breakRoutes(t *testing.T, data []byte) []byte {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var dump map[string]any
	if err := dec.Decode(&dump); err != nil {
		t.Fatalf("config dump: %v", err)
	}
	dropped, redirected := false, false
	configs, _ := dump["configs"].([]any)
	for _, c := range configs {
		cm, _ := c.(map[string]any)
		if cm["@type"] != "type.googleapis.com/envoy.admin.v3.RoutesConfigDump" {
			continue
		}
		rcs, _ := cm["dynamic_route_configs"].([]any)
		kept := rcs[:0]
		for _, rc := range rcs {
			cfg, _ := rc.(map[string]any)["route_config"].(map[string]any)
			if cfg["name"] == brokenRouteConfig {
				dropped = true
				continue
			}
			vhs, _ := cfg["virtual_hosts"].([]any)
			for _, vh := range vhs {
				vhm, _ := vh.(map[string]any)
				if vhm["name"] != brokenRouteVhost {
					continue
				}
				routes, _ := vhm["routes"].([]any)
				for _, r := range routes {
					if a, ok := r.(map[string]any)["route"].(map[string]any); ok {
						a["cluster"] = brokenCluster
						redirected = true
					}
				}
			}
			kept = append(kept, rc)
		}
		cm["dynamic_route_configs"] = kept
	}
	if !dropped || !redirected {
		t.Fatalf("fixture 2 changed: route configuration %q dropped %v, vhost %q redirected %v", brokenRouteConfig, dropped, brokenRouteVhost, redirected)
	}
	out, err := json.Marshal(dump)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// first returns up to n entries of s.
func first(s []string, n int) []string { return s[:min(n, len(s))] }
