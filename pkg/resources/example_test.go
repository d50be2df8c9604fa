package resources_test

import (
	"fmt"
	"maps"
	"slices"

	"github.com/meshlet/meshlet/pkg/resources"
)

// Decode reads the static_resources of an Envoy bootstrap (YAML or JSON)
// into a Set keyed by resource name. A cluster's inline load_assignment
// becomes an Endpoints entry, as if it had come over EDS.
func ExampleDecode() {
	set, err := resources.Decode([]byte(`
static_resources:
  listeners:
  - name: web
    address: {socket_address: {address: 10.96.0.20, port_value: 80}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: web
          cluster: web-backend
  clusters:
  - name: web-backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: web-backend
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8081}}}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	// The maps are keyed by name; sort for a stable listing.
	fmt.Println("listeners:", slices.Sorted(maps.Keys(set.Listeners)))
	fmt.Println("clusters: ", slices.Sorted(maps.Keys(set.Clusters)))
	for _, name := range slices.Sorted(maps.Keys(set.Endpoints)) {
		for _, e := range set.Endpoints[name].Endpoints() {
			fmt.Printf("endpoint of %s: %s:%d\n", name, e.Addr, e.Port)
		}
	}
	// Output:
	// listeners: [web]
	// clusters:  [web-backend]
	// endpoint of web-backend: 127.0.0.1:8080
	// endpoint of web-backend: 127.0.0.1:8081
}
