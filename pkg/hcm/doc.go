// Package hcm is meshlet's L7 data plane: an implementation of the subset
// of Envoy's HTTP connection manager (envoy.filters.network.http_connection_manager)
// and router filter that Istio's xDS uses.
//
// A Manager is built from one HttpConnectionManager proto. It serves
// downstream connections that pkg/sniff classified as HTTP/1.1 or h2c
// (HTTP/2 prior knowledge), with the Manager as handler for both:
//
//   - HTTP/1.1 starts on a fast path (h1server.go): one goroutine per
//     connection parses each request head itself, calls the handler with a
//     ResponseWriter that sends a small response (head and body) in one
//     write, and reads nothing ahead (a watcher read for a departing client
//     starts only when a request is slow). The first request it does not
//     take (Upgrade, Expect, Transfer-Encoding, absolute-form target, an
//     oversized or malformed head, ...) hands the connection, unconsumed
//     bytes included, to a net/http server, which keeps it.
//     The head parser is strict and fuzzed against net/http; headers are
//     slices of one string per head. The request's context (one per
//     request, cancelled by the watcher) is also the proxy stream's.
//   - h2c goes to golang.org/x/net/http2's server over a connection whose
//     reads are buffered (x/net reads each frame header and payload with
//     its own read otherwise) and whose writes are coalesced (coalesce.go):
//     a response's HEADERS, DATA and trailers leave in one write, and a
//     PING ack (WINDOW_UPDATEs may join it) waits at most ctlDelay, 1 ms,
//     for the next frames to travel with, so grpc-go's per-call BDP ping
//     costs no write of its own on either side of the proxy.
//
// Upstream, HTTP/1.1 requests with a known body of at most 64 KiB use a
// synchronous client (h1client.go: one write per request, response read
// on the caller's goroutine, stale pooled connections retried once). Its
// own response-head parser takes the common case (HTTP/1.1, one
// Content-Length, no Transfer-Encoding, not HEAD/1xx/204/304; fuzzed
// against net/http) and leaves everything else, unconsumed, to
// net/http.ReadResponse. Other requests use net/http's Transport, and
// HTTP/2 uses x/net's Transport, again over write-coalescing connections.
//
// For each request the handler normalizes the path as the HCM asks
// (normalize.go), takes one consistent snapshot of the route
// configuration (inline, or RDS through RouteSource; compiled forms are
// cached per proto pointer), selects a virtual host by domain and a route
// by path/header/query match, applies the route's action (cluster, weighted
// clusters, direct_response, redirect), header mutations (values are
// pkg/accesslog format strings), the fault filter (fault.go), host and path
// rewrites and timeouts (the route timeout, max_stream_duration and stream
// idle timeout share one timer per stream), then forwards, retrying as the
// route's retry_policy says (retry.go) and shadowing to mirror clusters
// (mirror.go), over the shared upstream Pools:
// per-cluster HTTP/1.1 keep-alive pools and multiplexed HTTP/2 (h2c)
// pools, each keyed by endpoint address. Request and response bodies are
// streamed (never buffered whole); trailers, gRPC status and grpc-timeout
// are honoured; cancellation and resets propagate both ways.
//
// Endpoint selection belongs to the caller through the Upstreams
// interface. Every request produces a pkg/accesslog Entry carrying Envoy's
// response flags (NR, UF, UT, UC, DC, URX, NC, UH, SI, DPE, LR, FI, DI, DT)
// for the AccessLogger in Options (the HCM's xDS access_log, bound by
// pkg/state, and the agent's own).
//
// Socket I/O on these hot paths (internal/rawio) uses read(2) and write(2) on
// the non-blocking socket directly, waiting through the runtime's poller
// (syscall.RawConn): net.Conn's system calls wake Go's sysmon thread each
// time the process comes out of idle, which cost a quarter of the CPU of a
// gRPC call. The synchronous client writes a request and waits for its
// response without first reading an empty socket (WriteAwait), and the
// HTTP/1.1 fast path yields once before reading the next request, which
// the client has usually sent by then: per proxied request, two writes
// and two reads.
//
// No code path copies between two *net.TCPConn with io.Copy: connections
// are wrapped so the splice(2) fast path (which stalls on sockmap
// accelerated sockets) is never taken.
package hcm
