package server_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/internal/testlog"
	"github.com/meshlet/meshlet/internal/waitfor"
	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/server"
)

const bootstrapV1 = `
static_resources:
  listeners:
  - name: web
    address: {socket_address: {address: 10.0.0.1, port_value: 80}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: web
          cluster: backend
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
`

type rec struct {
	mu   sync.Mutex
	last *resources.Set
}

func (r *rec) Apply(_ context.Context, s *resources.Set) error {
	r.mu.Lock()
	r.last = s
	r.mu.Unlock()
	return nil
}

func (r *rec) get() *resources.Set {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

func sameSet(a, b *resources.Set) bool {
	if a == nil || b == nil || len(a.Listeners) != len(b.Listeners) || len(a.Clusters) != len(b.Clusters) ||
		len(a.Routes) != len(b.Routes) || len(a.Endpoints) != len(b.Endpoints) {
		return false
	}
	for k, v := range a.Listeners {
		if !proto.Equal(v, b.Listeners[k]) {
			return false
		}
	}
	for k, v := range a.Clusters {
		if !proto.Equal(v, b.Clusters[k]) {
			return false
		}
	}
	for k, v := range a.Routes {
		if !proto.Equal(v, b.Routes[k]) {
			return false
		}
	}
	for k, v := range a.Endpoints {
		if !v.Equal(b.Endpoints[k]) {
			return false
		}
	}
	return true
}

func serve(t *testing.T, s *server.Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

func client(t *testing.T, addr string, delta bool) *rec {
	t.Helper()
	r := &rec{}
	c, err := xds.NewClient(xds.Config{Address: addr, Delta: delta, Node: xds.NewNode("n", "c", nil),
		Logger: testlog.New(t).Named("client"), BackoffBase: 50 * time.Millisecond, BackoffMax: time.Second}, r)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func TestFileReloadAndBrokenEdit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resources.yaml")
	if err := os.WriteFile(path, []byte(bootstrapV1), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := server.New(server.Options{ConfigPath: path, PollInterval: 20 * time.Millisecond, Logger: testlog.New(t).Named("server")})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s)
	r := client(t, addr, false)
	want, err := resources.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, "initial file content at the client", func() bool { return sameSet(r.get(), want) })

	// Edit: new timeout and a second listener.
	v2 := strings.Replace(bootstrapV1, "connect_timeout: 1s", "connect_timeout: 5s", 1) + `
  - name: other
    type: STATIC
    connect_timeout: 1s
`
	if err := os.WriteFile(path, []byte(v2), 0o600); err != nil {
		t.Fatal(err)
	}
	want2, err := resources.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, "edited file content at the client", func() bool { return sameSet(r.get(), want2) })
	_, ver2 := s.Current()

	// Broken edits: syntax error, then a resource failing validation.
	for _, broken := range []string{
		v2 + "\n  - name: [unterminated\n",
		strings.Replace(v2, "connect_timeout: 5s", "connect_timeout: -5s", 1),
	} {
		if err := os.WriteFile(path, []byte(broken), 0o600); err != nil {
			t.Fatal(err)
		}
		waitfor.Cond(t, "the broken file to be reported", func() bool { return s.LastError() != nil })
		t.Logf("reported: %v", s.LastError())
		if !strings.Contains(s.LastError().Error(), "still serving the previous resources") {
			t.Fatalf("unclear error: %v", s.LastError())
		}
		if _, v := s.Current(); v != ver2 {
			t.Fatal("server switched away from the last good resources")
		}
		if !sameSet(r.get(), want2) {
			t.Fatal("client lost the last good resources")
		}
		// Restore so that the next broken edit is a change again.
		if err := os.WriteFile(path, []byte(v2), 0o600); err != nil {
			t.Fatal(err)
		}
		waitfor.Cond(t, "recovery", func() bool { return s.LastError() == nil })
	}
}

func TestNewRejectsBadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte("static_resources: {clusters: [{name: x, type: NOPE}]}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := server.New(server.Options{ConfigPath: path}); err == nil {
		t.Fatal("bad file accepted")
	} else {
		t.Logf("error: %v", err)
	}
	if _, err := server.New(server.Options{ConfigPath: filepath.Join(t.TempDir(), "missing.yaml")}); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "xds.sock")
	lis, err := server.Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.New(server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	set := resources.New()
	set.Listeners["web"] = mustListener(t)
	if err := s.SetResources(context.Background(), set); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis) }()
	defer func() { cancel(); <-done }()
	r := client(t, "unix://"+sock, true)
	waitfor.Cond(t, "config over the unix socket", func() bool { return sameSet(r.get(), set) })
}

func mustListener(t *testing.T) *listenerT {
	t.Helper()
	s, err := resources.Decode([]byte(bootstrapV1))
	if err != nil {
		t.Fatal(err)
	}
	return s.Listeners["web"]
}
