package state

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"github.com/meshlet/meshlet/internal/par"
	"github.com/meshlet/meshlet/internal/weyl"
	"github.com/meshlet/meshlet/pkg/accesslog"
	"github.com/meshlet/meshlet/pkg/resources"
)

// Issue is something in the config the agent does not honour.
type Issue struct {
	Type   string `json:"type"` // listener, cluster, route, endpoint
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Capture is one entry of the capture table.
type Capture struct {
	// Addr is the service address, or the zero Addr for "any address".
	Addr     netip.Addr
	Port     uint16
	Listener string
}

// Snapshot is the runtime config built from one resources.Set.
type Snapshot struct {
	Version  string
	Captures []Capture
	Clusters map[string]*Cluster
	Routes   map[string]*routev3.RouteConfiguration
	Issues   []Issue

	exact    map[netip.AddrPort]*Listener
	wildcard map[uint16]*Listener
	// dispatch is the use_original_dst listener (Istio's virtualOutbound):
	// the fall-back for destinations no other listener names.
	dispatch *Listener

	// What each cluster and listener was translated from, for reuse by the
	// next Build (Options.Previous).
	clusters  map[string]*builtCluster
	listeners map[string]*builtListener
}

// Listener is a listener reduced to what dispatch needs.
type Listener struct {
	Name string
	Addr netip.AddrPort
	// AccessLog is the listener's access_log: connections no filter chain
	// accepts (nil: none).
	AccessLog *accesslog.Logger
	Chains    []*FilterChain
	Default   *FilterChain
	// Sniff is true when some chain matches on transport or application
	// protocol, so the proxy must look at the first bytes before choosing.
	Sniff bool
}

// FilterChain is one filter chain: its match and its terminal filter.
type FilterChain struct {
	Name  string
	Match ChainMatch
	// Exactly one of TCP and HTTP is set.
	TCP  *TCPProxy
	HTTP *HTTP
}

// ChainMatch is the subset of FilterChainMatch the agent evaluates.
type ChainMatch struct {
	DestinationPort      uint16
	PrefixRanges         []netip.Prefix
	ServerNames          []string
	TransportProtocol    string
	ApplicationProtocols []string
}

// TCPProxy is envoy.filters.network.tcp_proxy.
type TCPProxy struct {
	StatPrefix  string
	Cluster     string
	Weighted    []WeightedCluster
	IdleTimeout time.Duration
	AccessLog   *accesslog.Logger // nil: none

	total uint64   // sum of the weights
	picks weyl.Seq // spreads the weighted picks (PickCluster)
}

// PickCluster returns the cluster of the next connection: Cluster, or one
// of the weighted clusters in proportion to its weight. Weighted picks
// follow a Weyl sequence (internal/weyl), deterministic and exact within a
// few connections over any window, where Envoy draws at random.
func (t *TCPProxy) PickCluster() string {
	if len(t.Weighted) == 0 {
		return t.Cluster
	}
	if t.total == 0 {
		return t.Weighted[0].Name
	}
	x := t.picks.Next(t.total)
	for _, w := range t.Weighted {
		if x < uint64(w.Weight) {
			return w.Name
		}
		x -= uint64(w.Weight)
	}
	return t.Weighted[len(t.Weighted)-1].Name
}

// WeightedCluster is one branch of a weighted split.
type WeightedCluster struct {
	Name   string
	Weight uint32
}

// HTTP is envoy.filters.network.http_connection_manager: the L7 data plane
// interprets it; RouteName names an RDS config when Inline is nil.
type HTTP struct {
	Config    *hcmv3.HttpConnectionManager
	RouteName string
	Inline    *routev3.RouteConfiguration
	AccessLog *accesslog.Logger // the HCM's access_log (nil: none)
}

// Options constrain Build.
type Options struct {
	// ReservedPorts are the agent's own ports (proxy, admin): a listener
	// asking to capture one of them is refused.
	ReservedPorts []uint16
	// AccessLogFiles opens the files of the access_log lists; nil leaves
	// them validated but unbound (nothing is logged).
	AccessLogFiles *accesslog.Files
	// Previous, when set, is the snapshot in force: clusters and listeners
	// whose resources are the very same messages as the ones it was built
	// from (pointer equality, as the xDS client keeps unchanged resources)
	// are reused instead of translated again, so a one-endpoint change
	// costs a map lookup per unchanged resource. Reused clusters keep their
	// round-robin position and connection counts.
	Previous *Snapshot
}

// builtCluster remembers what a Cluster was translated from.
type builtCluster struct {
	src    *clusterv3.Cluster
	la     *resources.Assignment
	out    *Cluster
	issues []Issue
}

// placement is where a listener goes in the dispatch tables.
type placement int

const (
	placeNone placement = iota
	placeDispatch
	placeWildcard
	placeExact
)

// builtListener is a translated listener and what it was translated from.
type builtListener struct {
	src    *listenerv3.Listener
	files  *accesslog.Files
	lis    *Listener
	issues []Issue
	place  placement
	key    netip.AddrPort
}

// Build translates set into a Snapshot. It returns an error, and nothing is
// applied, when a resource is invalid; things it merely does not support
// are listed in Snapshot.Issues.
func Build(set *resources.Set, opts Options) (*Snapshot, error) {
	s := &Snapshot{
		Version:   set.Version,
		Clusters:  make(map[string]*Cluster, len(set.Clusters)),
		Routes:    set.Routes,
		exact:     make(map[netip.AddrPort]*Listener, len(set.Listeners)),
		wildcard:  map[uint16]*Listener{},
		clusters:  make(map[string]*builtCluster, len(set.Clusters)),
		listeners: make(map[string]*builtListener, len(set.Listeners)),
	}
	if s.Routes == nil {
		s.Routes = map[string]*routev3.RouteConfiguration{}
	}
	var prevClusters map[string]*builtCluster
	var prevListeners map[string]*builtListener
	if p := opts.Previous; p != nil {
		prevClusters, prevListeners = p.clusters, p.listeners
	}
	// Clusters and listeners translate independently of each other (only
	// placing a listener looks at the others), so the ones that changed
	// are built on all CPUs first; the results are then assembled in name
	// order, which keeps errors and issues deterministic.
	cnames := slices.Sorted(maps.Keys(set.Clusters))
	cbuilt := make([]*builtCluster, len(cnames))
	cerrs := make([]error, len(cnames))
	par.For(len(cnames), func(i int) {
		n := cnames[i]
		c := set.Clusters[n]
		la := endpointsOf(c, set)
		b := prevClusters[n]
		if b == nil || b.src != c || b.la != la {
			prev := b
			b = &builtCluster{src: c, la: la}
			b.out, cerrs[i] = buildCluster(c, la, &b.issues)
			if cerrs[i] == nil && prev != nil {
				b.out.inheritAdded(prev.out, time.Now())
			}
		}
		cbuilt[i] = b
	})
	for i, n := range cnames {
		if cerrs[i] != nil {
			return nil, fmt.Errorf("cluster %q: %w", n, cerrs[i])
		}
		b := cbuilt[i]
		s.clusters[n] = b
		s.Clusters[n] = b.out
		s.Issues = append(s.Issues, b.issues...)
	}

	lnames := slices.Sorted(maps.Keys(set.Listeners))
	lbuilt := make([]*builtListener, len(lnames))
	lerrs := make([]error, len(lnames))
	par.For(len(lnames), func(i int) {
		l := set.Listeners[lnames[i]]
		b := prevListeners[lnames[i]]
		if b == nil || b.src != l {
			b, lerrs[i] = buildListener(l, opts.AccessLogFiles)
		}
		lbuilt[i] = b
	})
	s.Captures = make([]Capture, 0, len(lnames))
	for i, n := range lnames {
		if lerrs[i] != nil {
			return nil, fmt.Errorf("listener %q: %w", n, lerrs[i])
		}
		b := lbuilt[i]
		if err := s.place(b, opts); err != nil {
			return nil, fmt.Errorf("listener %q: %w", n, err)
		}
		s.listeners[n] = b
		s.Issues = append(s.Issues, b.issues...)
	}
	s.Issues = append(s.Issues, s.referenceIssues(lnames)...)
	sort.Slice(s.Captures, func(i, j int) bool {
		a, b := s.Captures[i], s.Captures[j]
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		return a.Addr.Less(b.Addr)
	})
	return s, nil
}

func (b *builtListener) issue(format string, args ...any) {
	b.issues = append(b.issues, Issue{Type: "listener", Name: b.src.GetName(), Reason: fmt.Sprintf(format, args...)})
}

// buildListener translates one listener; it does not depend on the rest of
// the set, so its result can be reused while the message is unchanged.
func buildListener(l *listenerv3.Listener, files *accesslog.Files) (*builtListener, error) {
	b := &builtListener{src: l, files: files}
	name := l.GetName()
	if l.GetAddress() == nil {
		if l.GetInternalListener() == nil && l.GetApiListener() == nil {
			b.issue("no address: nothing to capture")
		} else {
			b.issue("internal or API listener: not captured")
		}
		return b, nil
	}
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		b.issue("address is not a socket address (pipe or internal): not captured")
		return b, nil
	}
	if sa.GetProtocol() == corev3.SocketAddress_UDP {
		b.issue("UDP listener: not captured")
		return b, nil
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", sa.GetAddress(), err)
	}
	pv, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue)
	if !ok || pv.PortValue == 0 || pv.PortValue > 65535 {
		return nil, fmt.Errorf("port: a port_value in 1..65535 is required")
	}
	port := uint16(pv.PortValue)
	lis := &Listener{Name: name, Addr: netip.AddrPortFrom(ip, port)}
	if lis.AccessLog, err = b.accessLog(l.GetAccessLog()); err != nil {
		return nil, fmt.Errorf("access_log: %w", err)
	}
	b.lis = lis
	for i, fc := range l.GetFilterChains() {
		c, err := b.buildChain(fc, i)
		if err != nil {
			return nil, err
		}
		if c != nil {
			lis.Chains = append(lis.Chains, c)
		}
	}
	if fc := l.GetDefaultFilterChain(); fc != nil {
		c, err := b.buildChain(fc, -1)
		if err != nil {
			return nil, err
		}
		lis.Default = c
	}
	for _, c := range lis.Chains {
		if c.Match.TransportProtocol != "" || len(c.Match.ApplicationProtocols) > 0 {
			lis.Sniff = true
		}
	}

	if l.GetUseOriginalDst().GetValue() {
		b.place = placeDispatch
		return b, nil
	}
	if l.GetTrafficDirection() == corev3.TrafficDirection_INBOUND {
		b.issue("inbound listener: inbound capture is not implemented")
		return b, nil
	}
	if !ip.Is4() {
		if ip.Is6() && ip.IsUnspecified() {
			// [::]:port: capture the port for IPv4 too, like a dual-stack bind.
			ip = netip.IPv4Unspecified()
		} else {
			b.issue("IPv6 address %v: only IPv4 is captured", ip)
			return b, nil
		}
	}
	b.key = netip.AddrPortFrom(ip, port)
	if ip.IsUnspecified() {
		b.place = placeWildcard
	} else {
		b.place = placeExact
	}
	return b, nil
}

// place enters a translated listener into the dispatch tables and the
// capture list, refusing conflicts and the agent's own ports.
func (s *Snapshot) place(b *builtListener, opts Options) error {
	lis := b.lis
	switch b.place {
	case placeNone:
		return nil
	case placeDispatch:
		if s.dispatch != nil {
			return fmt.Errorf("second use_original_dst listener (first is %q)", s.dispatch.Name)
		}
		s.dispatch = lis
		return nil
	}
	port := b.key.Port()
	for _, r := range opts.ReservedPorts {
		if port == r {
			return fmt.Errorf("asks to capture port %d, which is the agent's own", port)
		}
	}
	if b.place == placeWildcard {
		if prev := s.wildcard[port]; prev != nil {
			return fmt.Errorf("captures *:%d, already captured by listener %q", port, prev.Name)
		}
		s.wildcard[port] = lis
		s.Captures = append(s.Captures, Capture{Port: port, Listener: lis.Name})
		return nil
	}
	if prev := s.exact[b.key]; prev != nil {
		return fmt.Errorf("captures %v, already captured by listener %q", b.key, prev.Name)
	}
	s.exact[b.key] = lis
	s.Captures = append(s.Captures, Capture{Addr: b.key.Addr(), Port: port, Listener: lis.Name})
	return nil
}

// accessLog compiles (and, with AccessLogFiles, binds) an access_log list;
// loggers and filters it does not implement become issues.
func (b *builtListener) accessLog(als []*accesslogv3.AccessLog) (*accesslog.Logger, error) {
	if len(als) == 0 {
		return nil, nil
	}
	logs, err := accesslog.Compile(als, func(s string) { b.issue("%s", s) })
	if err != nil || b.files == nil {
		return nil, err
	}
	return b.files.Bind(logs)
}

func (b *builtListener) buildChain(fc *listenerv3.FilterChain, idx int) (*FilterChain, error) {
	cname := fc.GetName()
	if cname == "" {
		cname = fmt.Sprintf("#%d", idx)
		if idx < 0 {
			cname = "default"
		}
	}
	c := &FilterChain{Name: cname}
	if m := fc.GetFilterChainMatch(); m != nil {
		if p := m.GetDestinationPort(); p != nil {
			if p.GetValue() == 0 || p.GetValue() > 65535 {
				return nil, fmt.Errorf("filter chain %s: destination_port %d out of range", cname, p.GetValue())
			}
			c.Match.DestinationPort = uint16(p.GetValue())
		}
		for _, r := range m.GetPrefixRanges() {
			a, err := netip.ParseAddr(r.GetAddressPrefix())
			if err != nil {
				return nil, fmt.Errorf("filter chain %s: prefix %q: %w", cname, r.GetAddressPrefix(), err)
			}
			bits := a.BitLen()
			if r.GetPrefixLen() != nil {
				bits = int(r.GetPrefixLen().GetValue())
			}
			p, err := a.Prefix(bits)
			if err != nil {
				return nil, fmt.Errorf("filter chain %s: prefix %s/%d: %w", cname, a, bits, err)
			}
			c.Match.PrefixRanges = append(c.Match.PrefixRanges, p)
		}
		c.Match.ServerNames = m.GetServerNames()
		c.Match.TransportProtocol = m.GetTransportProtocol()
		c.Match.ApplicationProtocols = m.GetApplicationProtocols()
		if len(m.GetSourcePrefixRanges()) > 0 || len(m.GetSourcePorts()) > 0 || len(m.GetDirectSourcePrefixRanges()) > 0 {
			b.issue("filter chain %s: source matches are ignored", cname)
		}
	}
	if fc.GetTransportSocket() != nil {
		b.issue("filter chain %s: downstream TLS is not implemented; chain skipped", cname)
		return nil, nil
	}
	for _, f := range fc.GetFilters() {
		switch f.GetName() {
		case "envoy.filters.network.tcp_proxy", "envoy.tcp_proxy":
			var tp tcpv3.TcpProxy
			if err := f.GetTypedConfig().UnmarshalTo(&tp); err != nil {
				return nil, fmt.Errorf("filter chain %s: tcp_proxy: %w", cname, err)
			}
			t := &TCPProxy{StatPrefix: tp.GetStatPrefix(), Cluster: tp.GetCluster()}
			for _, w := range tp.GetWeightedClusters().GetClusters() {
				t.Weighted = append(t.Weighted, WeightedCluster{Name: w.GetName(), Weight: w.GetWeight()})
				t.total += uint64(w.GetWeight())
			}
			if t.Cluster == "" && len(t.Weighted) == 0 {
				return nil, fmt.Errorf("filter chain %s: tcp_proxy names no cluster", cname)
			}
			if d := tp.GetIdleTimeout(); d != nil {
				t.IdleTimeout = d.AsDuration()
			} else {
				t.IdleTimeout = time.Hour // Envoy's default
			}
			var err error
			if t.AccessLog, err = b.accessLog(tp.GetAccessLog()); err != nil {
				return nil, fmt.Errorf("filter chain %s: tcp_proxy access_log: %w", cname, err)
			}
			c.TCP = t
		case "envoy.filters.network.http_connection_manager", "envoy.http_connection_manager":
			var h hcmv3.HttpConnectionManager
			if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
				return nil, fmt.Errorf("filter chain %s: http_connection_manager: %w", cname, err)
			}
			hh := &HTTP{Config: &h}
			var err error
			if hh.AccessLog, err = b.accessLog(h.GetAccessLog()); err != nil {
				return nil, fmt.Errorf("filter chain %s: http_connection_manager access_log: %w", cname, err)
			}
			switch {
			case h.GetRds() != nil:
				hh.RouteName = h.GetRds().GetRouteConfigName()
			case h.GetRouteConfig() != nil:
				hh.Inline = h.GetRouteConfig()
			default:
				return nil, fmt.Errorf("filter chain %s: http_connection_manager has neither rds nor route_config", cname)
			}
			c.HTTP = hh
		default:
			// Telemetry and policy filters (Istio stats, metadata exchange,
			// RBAC...) are skipped by name.
			b.issue("filter chain %s: network filter %s ignored", cname, f.GetName())
		}
		if c.TCP != nil || c.HTTP != nil {
			break
		}
	}
	if c.TCP == nil && c.HTTP == nil {
		b.issue("filter chain %s: no tcp_proxy or http_connection_manager; chain skipped", cname)
		return nil, nil
	}
	return c, nil
}

// Listener returns the listener that handles a connection whose original
// destination is dst: the exact address first, then the wildcard address on
// the port, then the use_original_dst listener. Nil means no listener.
func (s *Snapshot) Listener(dst netip.AddrPort) *Listener {
	if l := s.exact[dst]; l != nil {
		return l
	}
	if l := s.wildcard[dst.Port()]; l != nil {
		return l
	}
	return s.dispatch
}

// ChainInput is what is known about a connection when choosing its chain.
type ChainInput struct {
	Dst netip.AddrPort
	// Transport is "raw_buffer" or "tls".
	Transport string
	// AppProtocol is "http/1.1", "http/1.0", "h2c" or "" (unknown).
	AppProtocol string
	ServerName  string
}

// Chain selects the filter chain by Envoy's FilterChainMatch precedence
// (destination port, destination prefix, server name, transport protocol,
// application protocols), falling back to the default chain.
func (l *Listener) Chain(in ChainInput) *FilterChain {
	cands := l.Chains
	// 1. destination port: chains naming the port win over chains without.
	cands = narrow(cands, func(c *FilterChain) (bool, bool) {
		return c.Match.DestinationPort != 0, c.Match.DestinationPort == in.Dst.Port()
	})
	// 2. destination prefix: the longest matching prefix wins.
	best := -1
	for _, c := range cands {
		for _, p := range c.Match.PrefixRanges {
			if p.Contains(in.Dst.Addr().Unmap()) && p.Bits() > best {
				best = p.Bits()
			}
		}
	}
	cands = narrow(cands, func(c *FilterChain) (bool, bool) {
		if len(c.Match.PrefixRanges) == 0 {
			return false, false
		}
		for _, p := range c.Match.PrefixRanges {
			if p.Contains(in.Dst.Addr().Unmap()) && p.Bits() == best {
				return true, true
			}
		}
		return true, false
	})
	// 3. server names.
	cands = narrow(cands, func(c *FilterChain) (bool, bool) {
		if len(c.Match.ServerNames) == 0 {
			return false, false
		}
		return true, in.ServerName != "" && contains(c.Match.ServerNames, in.ServerName)
	})
	// 4. transport protocol.
	transport := in.Transport
	if transport == "" {
		transport = "raw_buffer"
	}
	cands = narrow(cands, func(c *FilterChain) (bool, bool) {
		return c.Match.TransportProtocol != "", c.Match.TransportProtocol == transport
	})
	// 5. application protocols.
	cands = narrow(cands, func(c *FilterChain) (bool, bool) {
		if len(c.Match.ApplicationProtocols) == 0 {
			return false, false
		}
		return true, in.AppProtocol != "" && contains(c.Match.ApplicationProtocols, in.AppProtocol)
	})
	if len(cands) > 0 {
		return cands[0]
	}
	return l.Default
}

// narrow keeps the chains whose criterion is set and matches; if there are
// none, the chains whose criterion is not set. Chains whose criterion is set
// but does not match are dropped either way.
func narrow(cands []*FilterChain, f func(*FilterChain) (set, match bool)) []*FilterChain {
	var specific, generic []*FilterChain
	for _, c := range cands {
		set, match := f(c)
		switch {
		case set && match:
			specific = append(specific, c)
		case !set:
			generic = append(generic, c)
		}
	}
	if len(specific) > 0 {
		return specific
	}
	return generic
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// HTTPChains lists the HTTP connection manager chains of every listener.
func (s *Snapshot) HTTPChains() []*HTTP {
	var out []*HTTP
	add := func(l *Listener) {
		if l == nil {
			return
		}
		for _, c := range append(append([]*FilterChain(nil), l.Chains...), l.Default) {
			if c != nil && c.HTTP != nil {
				out = append(out, c.HTTP)
			}
		}
	}
	for _, l := range s.exact {
		add(l)
	}
	for _, l := range s.wildcard {
		add(l)
	}
	add(s.dispatch)
	return out
}

// referenceIssues reports what HTTP chains and routes name but the config
// lacks: a missing RDS route configuration (its requests are answered 404)
// and a route's missing cluster (503). listeners are the sorted listener
// names. It allocates only for the issues it finds and the route names.
func (s *Snapshot) referenceIssues(listeners []string) []Issue {
	var out []Issue
	routeClusters := func(rc *routev3.RouteConfiguration, typ, name, prefix string) {
		for _, vh := range rc.GetVirtualHosts() {
			for i, r := range vh.GetRoutes() {
				a := r.GetRoute()
				check := func(c string) {
					if c != "" && s.Clusters[c] == nil {
						out = append(out, Issue{Type: typ, Name: name, Reason: fmt.Sprintf("%svirtual host %q route %d (%q): cluster %q is not in the config: its requests are answered 503", prefix, vh.GetName(), i, r.GetName(), c)})
					}
				}
				check(a.GetCluster())
				for _, w := range a.GetWeightedClusters().GetClusters() {
					check(w.GetName())
				}
			}
		}
	}
	chain := func(n string, c *FilterChain) {
		if c == nil || c.HTTP == nil {
			return
		}
		if c.HTTP.Inline != nil {
			routeClusters(c.HTTP.Inline, "listener", n, "filter chain "+c.Name+": inline route_config: ")
			return
		}
		if s.Routes[c.HTTP.RouteName] == nil {
			out = append(out, Issue{Type: "listener", Name: n, Reason: fmt.Sprintf("filter chain %s: route configuration %q is not in the config: its requests are answered 404", c.Name, c.HTTP.RouteName)})
		}
	}
	for _, n := range listeners {
		b := s.listeners[n]
		if b == nil || b.lis == nil {
			continue
		}
		for _, c := range b.lis.Chains {
			chain(n, c)
		}
		chain(n, b.lis.Default)
	}
	for _, n := range slices.Sorted(maps.Keys(s.Routes)) {
		routeClusters(s.Routes[n], "route", n, "")
	}
	return out
}
