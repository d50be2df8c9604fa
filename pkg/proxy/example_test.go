package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/meshlet/meshlet/pkg/proxy"
	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/state"
)

// fixedDst stands in for the BPF original-destination map: every
// connection is reported as captured on its way to one service address.
type fixedDst netip.AddrPort

func (f fixedDst) OriginalDst(netip.AddrPort) (netip.AddrPort, bool, error) {
	return netip.AddrPort(f), true, nil
}

// The minimal wiring: a static config (an Envoy bootstrap's
// static_resources) built into a snapshot, an original-destination source,
// and a listener to serve on. Here an application "dialling" the service
// 10.96.0.10:80 reaches a local echo server through the proxy.
func ExampleNew() {
	// The backend: echoes what it reads.
	backend, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer backend.Close()
	go func() {
		c, err := backend.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()

	set, err := resources.Decode([]byte(fmt.Sprintf(`
static_resources:
  listeners:
  - name: echo-service
    address: {socket_address: {address: 10.96.0.10, port_value: 80}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: echo
          cluster: echo
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %d}}}
`, backend.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		fmt.Println(err)
		return
	}
	snap, err := state.Build(set, state.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}

	p := proxy.New(proxy.Options{Orig: fixedDst(netip.MustParseAddrPort("10.96.0.10:80"))})
	p.Update(snap)
	lis, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, lis) }()

	// In the mesh the capture program sends the application here; the
	// example dials the proxy directly.
	c, err := net.Dial("tcp4", lis.Addr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Fprintln(c, "hello through the proxy")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(line)
	c.Close()

	cancel()
	if err := <-done; err != nil {
		fmt.Println(err)
	}
	fmt.Println("accepted:", p.Stats().Accepted)
	// Output:
	// hello through the proxy
	// accepted: 1
}
