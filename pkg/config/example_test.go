package config_test

import (
	"fmt"

	"github.com/meshlet/meshlet/pkg/config"
)

// Parse reads the agent's YAML strictly (an unknown field is an error),
// fills in the defaults and validates. Settings left out take their
// effective values: here the admin address, the embedded control plane
// and the acceleration defaults.
func ExampleParse() {
	cfg, err := config.Parse([]byte(`
capture:
  cgroup: /sys/fs/cgroup/mesh
  acceleration: off   # YAML 1.1 reads this as false: the kill switch
proxy:
  listen: 127.0.0.1:16001
static_resources:
  clusters:
  - name: web
    type: STATIC
    load_assignment:
      cluster_name: web
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("proxy:       ", cfg.ProxyAddr())
	fmt.Println("admin:       ", cfg.Admin.Listen)
	fmt.Println("xds source:  ", cfg.XDS.Source, "on", cfg.XDS.EmbeddedListen)
	fmt.Println("acceleration:", cfg.Capture.Acceleration)
	fmt.Println("into proxy:  ", cfg.Capture.IntoProxyOn(), "into app:", cfg.Capture.IntoApp)

	set, err := cfg.Resources()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("clusters:    ", len(set.Clusters))
	// Output:
	// proxy:        127.0.0.1:16001
	// admin:        127.0.0.1:15000
	// xds source:   embedded on 127.0.0.1:15010
	// acceleration: off
	// into proxy:   true into app: false
	// clusters:     1
}
