// Command http is meshlet's L7 benchmark harness. One run measures, side by
// side on the same upstream (an nginx returning 1 KiB), HTTP/1.1 keep-alive
// requests/s and p99 latency with wrk through: meshlet's hcm Manager (this
// binary in "proxy" mode), HAProxy (http mode), nginx as reverse proxy, and
// direct; plus each proxy's CPU time per request from /proc/PID/stat, and
// gRPC unary p50 latency through meshlet versus direct, and through
// HAProxy (h2c on both sides, same pinning) as the reference for what one
// proxy hop costs on the host.
//
// Each proxy is pinned to CPU 0 and runs single-threaded (GOMAXPROCS=1,
// nbthread 1, worker_processes 1); wrk and the upstreams share CPU 1, so the
// proxy under test is the bottleneck and the comparison is per core.
//
// Usage (from the repository root):
//
//	go run ./test/bench/http [-d 8s] [-c 32] [-out results.md]
//
// To compare a change with the committed code in one run (same host load):
//
//	git worktree add /tmp/base HEAD && (cd /tmp/base && go build -o /tmp/httpbench-base ./test/bench/http)
//	go build -o /tmp/httpbench ./test/bench/http
//	/tmp/httpbench -targets meshlet,haproxy -baseline /tmp/httpbench-base
//
// The host is shared and its load moves figures by tens of percent between
// runs: -rounds N measures every target N times, interleaved, and reports
// medians (per-round figures go to stderr); -grpc-targets limits the gRPC
// paths (direct is always measured), e.g. for a gRPC-only comparison:
//
//	/tmp/httpbench -targets none -grpc-targets meshlet,baseline -rounds 3 -baseline /tmp/httpbench-base
//
// The meshlet proxy's seat is adjustable: -meshlet-procs N sets its
// GOMAXPROCS and -meshlet-cpus LIST its taskset CPU list (defaults: 1 and
// "0" when pinned; unset and all CPUs with -pin=false). -meshlet-variants
// runs further instances of the same proxy side by side, each
// PROCS@CPUS[:KEY=VALUE...] (PROCS 0 leaves GOMAXPROCS unset), measured in
// the same interleaved rounds as rows "meshlet P=… cpus=…"; -perf-stat
// EVENTS counts perf events on every proxy process during each measured
// window and reports them per request and per gRPC call. E.g. what more
// than one P costs:
//
//	/tmp/httpbench -targets meshlet,haproxy -grpc-targets meshlet,haproxy -rounds 3 \
//		-meshlet-variants "2@0-1 2@0 1@0-1" \
//		-perf-stat raw_syscalls:sys_enter,syscalls:sys_enter_futex,context-switches,cpu-migrations
//
// Every config, pid and log file lives in a temp dir removed on exit; the
// system nginx/haproxy configuration is never read or touched. All traffic
// is on 127.0.0.1.
package main
