package hcm_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshlet/meshlet/pkg/hcm"
	"github.com/meshlet/meshlet/pkg/sniff"
)

// noUpstreams is the endpoint picker for a config that never forwards.
type noUpstreams struct{}

func (noUpstreams) Pick(_ context.Context, cluster string, _ hcm.PickInput) (hcm.Endpoint, error) {
	return hcm.Endpoint{}, fmt.Errorf("cluster %q: %w", cluster, hcm.ErrNoCluster)
}

// A Manager built from an HttpConnectionManager with an inline route
// config answers /healthz itself (direct_response), so no upstream is
// needed. ServeConn serves one accepted downstream connection.
func ExampleManager_ServeConn() {
	// The proto a control plane would send, written as JSON.
	var cfg hcmv3.HttpConnectionManager
	err := protojson.Unmarshal([]byte(`{
	  "stat_prefix": "web",
	  "route_config": {"virtual_hosts": [{
	    "name": "web", "domains": ["*"],
	    "routes": [{"match": {"path": "/healthz"},
	                "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}]
	  }]}
	}`), &cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	pools := hcm.NewPools(hcm.PoolOptions{})
	defer pools.Close()
	m, err := hcm.New(&cfg, nil, noUpstreams{}, hcm.Options{Pools: pools})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()

	lis, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer lis.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			done <- err
			return
		}
		// The agent learns the protocol with sniff.Detect and orig from
		// the capture path (the address the application dialled).
		done <- m.ServeConn(ctx, c, sniff.HTTP1, netip.MustParseAddrPort("10.96.0.10:80"))
	}()

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + lis.Addr().String() + "/healthz")
	if err != nil {
		fmt.Println(err)
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(resp.Status)
	fmt.Print(string(body))

	cancel()
	if err := <-done; err != nil {
		fmt.Println(err)
	}
	// Output:
	// 200 OK
	// ok
}
