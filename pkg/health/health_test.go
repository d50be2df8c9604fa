package health_test

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshlet/meshlet/internal/waitfor"
	"github.com/meshlet/meshlet/pkg/health"
	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/state"
)

func build(t *testing.T, hc string, extra string, eps ...netip.AddrPort) *state.Snapshot {
	t.Helper()
	var lb []string
	for _, e := range eps {
		lb = append(lb, fmt.Sprintf(`{"endpoint": {"address": {"socket_address": {"address": %q, "port_value": %d}}}}`, e.Addr(), e.Port()))
	}
	js := `{"static_resources": {"clusters": [{"name": "c", "type": "STATIC", "connect_timeout": "1s"` + extra + `,
	  "health_checks": [` + hc + `],
	  "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [` + strings.Join(lb, ",") + `]}]}}]}}`
	set, err := resources.Decode([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	s, err := state.Build(set, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func freePort(t *testing.T) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return a
}

func TestTCPHealthCheck(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	good, bad := up.Addr().(*net.TCPAddr).AddrPort(), freePort(t)
	hc := `{"timeout": "1s", "interval": "0.05s", "unhealthy_threshold": 2, "healthy_threshold": 1, "tcp_health_check": {}}`
	snap := build(t, hc, "", good, bad)
	ch := health.New(nil)
	defer ch.Close()
	if errs := ch.Sync(snap); len(errs) > 0 {
		t.Fatal(errs)
	}
	cl := snap.Clusters["c"]
	waitfor.Cond(t, "the closed port marked down", func() bool { return cl.Endpoints[1].Ejected() })
	if cl.Endpoints[0].Ejected() {
		t.Fatal("the listening endpoint marked down")
	}
	for range 20 {
		if e, _ := cl.Pick(netip.AddrPort{}); e.Addr == bad {
			t.Fatal("picked the endpoint that fails its checks")
		}
	}
	// The verdict moves to a new translation of the cluster at once.
	snap2 := build(t, hc, `, "per_connection_buffer_limit_bytes": 4096`, good, bad)
	ch.Sync(snap2)
	if !snap2.Clusters["c"].Endpoints[1].Ejected() {
		t.Error("the new snapshot's endpoint starts healthy although its checks fail")
	}
	// The endpoint comes back: one success (healthy_threshold 1).
	ln, err := net.Listen("tcp", bad.String())
	if err != nil {
		t.Skipf("port %v taken meanwhile: %v", bad, err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	waitfor.Cond(t, "the endpoint back", func() bool { return !snap2.Clusters["c"].Endpoints[1].Ejected() })
}

func TestHTTPHealthCheck(t *testing.T) {
	var ok atomic.Bool
	var host atomic.Value
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host.Store(r.Host + " " + r.URL.Path)
		if !ok.Load() {
			w.WriteHeader(503)
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	snap := build(t, `{"timeout": "1s", "interval": "0.05s", "unhealthy_threshold": 1, "healthy_threshold": 2,
	  "http_health_check": {"path": "/healthz"}}`, "", addr, freePort(t))
	ch := health.New(nil)
	defer ch.Close()
	ch.Sync(snap)
	e := snap.Clusters["c"].Endpoints[0]
	waitfor.Cond(t, "503 marks it down", e.Ejected)
	if got := host.Load(); got != "c /healthz" {
		t.Errorf("check request %q, want host c (the cluster) and /healthz", got)
	}
	ok.Store(true)
	waitfor.Cond(t, "200s bring it back", func() bool { return !e.Ejected() })

	// Unsupported checkers are reported, not run.
	custom := build(t, `{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
	  "custom_health_check": {"name": "x", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Empty"}}}`, "", addr)
	if errs := ch.Sync(custom); len(errs) != 1 || !strings.Contains(errs[0].Error(), "not implemented") {
		t.Errorf("custom health check: %v", errs)
	}
}

// gRPC health checking (grpc.health.v1 Check of service_name): SERVING
// passes, anything else fails.
func TestGRPCHealthCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := grpchealth.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(ln)
	defer srv.Stop()
	hs.SetServingStatus("reviews", healthpb.HealthCheckResponse_NOT_SERVING)
	snap := build(t, `{"timeout": "1s", "interval": "0.05s", "unhealthy_threshold": 1, "healthy_threshold": 1,
	  "grpc_health_check": {"service_name": "reviews"}}`, "", ln.Addr().(*net.TCPAddr).AddrPort(), freePort(t))
	ch := health.New(nil)
	defer ch.Close()
	if errs := ch.Sync(snap); len(errs) > 0 {
		t.Fatal(errs)
	}
	e := snap.Clusters["c"].Endpoints[0]
	waitfor.Cond(t, "NOT_SERVING marks it down", e.Ejected)
	hs.SetServingStatus("reviews", healthpb.HealthCheckResponse_SERVING)
	waitfor.Cond(t, "SERVING brings it back", func() bool { return !e.Ejected() })
}
