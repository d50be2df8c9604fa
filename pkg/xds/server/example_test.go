package server_test

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds/server"
)

// SetResources replaces what the server serves to every node, after
// validating each resource (protoc-gen-validate rules, nested Any payloads
// included). An invalid Set is refused and the previous one stays in
// force. Serve (or ListenAndServe) then answers ADS streams, state of the
// world and delta; see the pkg/xds Client example for both ends together.
func ExampleServer_SetResources() {
	ctx := context.Background()
	srv, err := server.New(server.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	good, err := resources.Decode([]byte(`
static_resources:
  clusters:
  - {name: web, type: STATIC, connect_timeout: 1s}
  - {name: api, type: STATIC, connect_timeout: 1s}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := srv.SetResources(ctx, good); err != nil {
		fmt.Println(err)
		return
	}

	// A negative connect_timeout breaks the Cluster's validation rules.
	bad, err := resources.Decode([]byte(`
static_resources:
  clusters:
  - {name: web, type: STATIC, connect_timeout: -1s}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := srv.SetResources(ctx, bad); err != nil {
		fmt.Println("refused:", err)
	}

	set, _ := srv.Current()
	fmt.Println("serving clusters:", slices.Sorted(maps.Keys(set.Clusters)))
	// Output:
	// refused: xds server: invalid resources: cluster "web": invalid Cluster.ConnectTimeout: value must be greater than 0s
	// serving clusters: [api web]
}
