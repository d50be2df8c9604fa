package e2e

import (
	"fmt"
	"strings"
)

// svc is one meshed service for a test config: connections to Listen
// ("ip:port", or "0.0.0.0:port" for any address) go to Endpoints, or to the
// original destination when Endpoints is empty (ORIGINAL_DST).
type svc struct {
	Name      string
	Listen    string
	Endpoints []string
}

// meshConfig renders an agent config with acceleration set to accel.
func meshConfig(accel string, intoApp bool, svcs ...svc) string {
	var b strings.Builder
	fmt.Fprintf(&b, "capture:\n  acceleration: %s\n  into_app: %v\nstatic_resources:\n  listeners:\n", accel, intoApp)
	for _, s := range svcs {
		host, port, _ := strings.Cut(s.Listen, ":")
		fmt.Fprintf(&b, `  - name: %[1]s
    address: {socket_address: {address: %[2]s, port_value: %[3]s}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: %[1]s
          cluster: %[1]s
`, s.Name, host, port)
	}
	b.WriteString("  clusters:\n")
	for _, s := range svcs {
		if len(s.Endpoints) == 0 {
			fmt.Fprintf(&b, "  - name: %s\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    connect_timeout: 2s\n", s.Name)
			continue
		}
		fmt.Fprintf(&b, "  - name: %[1]s\n    type: STATIC\n    connect_timeout: 2s\n    load_assignment:\n      cluster_name: %[1]s\n      endpoints:\n      - lb_endpoints:\n", s.Name)
		for _, e := range s.Endpoints {
			h, p, _ := strings.Cut(e, ":")
			fmt.Fprintf(&b, "        - endpoint: {address: {socket_address: {address: %s, port_value: %s}}}\n", h, p)
		}
	}
	return b.String()
}
