package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshlet/meshlet/pkg/accesslog"
	"github.com/meshlet/meshlet/pkg/hcm"
	"github.com/meshlet/meshlet/pkg/sniff"
)

// benchUpstreams resolves the two bench clusters to fixed endpoints.
type benchUpstreams struct{ http1, grpc hcm.Endpoint }

func (u benchUpstreams) Pick(_ context.Context, cluster string, _ hcm.PickInput) (hcm.Endpoint, error) {
	switch cluster {
	case "http":
		return u.http1, nil
	case "grpc":
		return u.grpc, nil
	}
	return hcm.Endpoint{}, fmt.Errorf("cluster %q: %w", cluster, hcm.ErrNoCluster)
}

const benchHCM = `{
  "stat_prefix": "bench",
  "stream_idle_timeout": "300s",
  "route_config": {"name": "bench", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
    {"match": {"prefix": "/grpc.testing.", "grpc": {}}, "route": {"cluster": "grpc", "timeout": "0s", "max_stream_duration": {"grpc_timeout_header_max": "0s"}}},
    {"match": {"prefix": "/"}, "route": {"cluster": "http"}}
  ]}]}
}`

// runProxy is the standalone meshlet L7 proxy used by the benchmark: a TCP
// listener, sniffing, and hcm.Manager.ServeConn per connection (what the
// node agent does after capture).
func runProxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:15001", "listen address")
	upstream := fs.String("upstream", "", "HTTP/1.1 upstream host:port")
	grpcUp := fs.String("grpc-upstream", "", "h2c (gRPC) upstream host:port")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile here until SIGTERM")
	accessLog := fs.Bool("access-log", false, "write Envoy-format access log to stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	up1, err := netip.ParseAddrPort(*upstream)
	if err != nil {
		return fmt.Errorf("-upstream: %w", err)
	}
	up2, err := netip.ParseAddrPort(*grpcUp)
	if err != nil {
		return fmt.Errorf("-grpc-upstream: %w", err)
	}
	var cfg hcmv3.HttpConnectionManager
	if err := protojson.Unmarshal([]byte(benchHCM), &cfg); err != nil {
		return fmt.Errorf("bench hcm config: %w", err)
	}
	log, err := zap.NewProduction()
	if err != nil {
		return err
	}
	pools := hcm.NewPools(hcm.PoolOptions{})
	defer pools.Close()
	opts := hcm.Options{Pools: pools, Log: log}
	if *accessLog {
		files := accesslog.NewFiles(log)
		defer files.Close()
		f, err := accesslog.ParseText(accesslog.DefaultFormat)
		if err != nil {
			return err
		}
		al, err := files.Bind([]*accesslog.Log{{Name: "stderr", Path: accesslog.Stderr, Format: f}})
		if err != nil {
			return err
		}
		opts.AccessLog = al
	}
	m, err := hcm.New(&cfg, nil, benchUpstreams{
		http1: hcm.Endpoint{Addr: up1, Protocol: hcm.UpstreamHTTP1},
		grpc:  hcm.Endpoint{Addr: up2, Protocol: hcm.UpstreamHTTP2},
	}, opts)
	if err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				m.Close()
				return nil
			}
			return err
		}
		go func() {
			proto, sc, err := sniff.Detect(c, sniff.DefaultMaxBytes, time.Second)
			if err != nil || (proto != sniff.HTTP1 && proto != sniff.HTTP2) {
				sc.Close()
				return
			}
			orig, _ := netip.ParseAddrPort(c.LocalAddr().String())
			_ = m.ServeConn(ctx, sc, proto, orig)
		}()
	}
}

// runGRPCUpstream serves grpc.testing.TestService/UnaryCall.
func runGRPCUpstream(args []string) error {
	fs := flag.NewFlagSet("grpc-upstream", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, unary{})
	return s.Serve(ln)
}

type unary struct {
	testgrpc.UnimplementedTestServiceServer
}

func (unary) UnaryCall(_ context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: make([]byte, in.GetResponseSize())}}, nil
}
