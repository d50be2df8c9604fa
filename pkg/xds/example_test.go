package xds_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"time"

	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/server"
)

// webService is what the control plane serves: one TCP listener and its
// cluster, in Envoy's bootstrap static_resources shape.
const webService = `
static_resources:
  listeners:
  - name: web
    address: {socket_address: {address: 10.96.0.10, port_value: 80}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: web
          cluster: web
  clusters:
  - name: web
    type: STATIC
    load_assignment:
      cluster_name: web
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}}]}]
`

// A Client keeps an ADS stream to a control plane and hands each complete,
// validated configuration to its Applier. Here the control plane is the
// embedded one (pkg/xds/server) on a loopback port, serving one listener
// and its cluster; the example stops after the first Set is applied.
func ExampleClient() {
	set, err := resources.Decode([]byte(webService))
	if err != nil {
		fmt.Println(err)
		return
	}
	// Everything below is bounded: the example gives up after 10s.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	srv, err := server.New(server.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := srv.SetResources(ctx, set); err != nil {
		fmt.Println(err)
		return
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()

	// The Applier sees the whole Set; returning an error would NACK it.
	applied := make(chan struct{})
	c, err := xds.NewClient(xds.Config{
		Address: lis.Addr().String(),
		Node:    xds.NewNode("example-node", "example", nil),
	}, xds.ApplierFunc(func(_ context.Context, set *resources.Set) error {
		select {
		case <-applied: // print the first Set only
		default:
			fmt.Println("applied listeners:", slices.Sorted(maps.Keys(set.Listeners)))
			close(applied)
		}
		return nil
	}))
	if err != nil {
		fmt.Println(err)
		return
	}
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()

	select {
	case <-applied:
	case <-ctx.Done():
		fmt.Println("no configuration applied:", ctx.Err())
	}
	cancel() // stops both the client and the server
	fmt.Println("client:", <-ran)
	fmt.Println("server:", <-served)
	// Output:
	// applied listeners: [web]
	// client: <nil>
	// server: <nil>
}
