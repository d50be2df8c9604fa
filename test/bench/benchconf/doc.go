// Package benchconf writes the configurations of the reference proxies and
// the upstream that meshlet's L7 benchmarks measure against: nginx (a 1 KiB
// responder, or a keep-alive reverse proxy) and HAProxy (http mode, and
// optionally h2c for gRPC). Both the end-to-end benchmark (test/e2e
// TestBenchL7) and the standalone harness (test/bench/http) use it, so the
// two measure the same seats.
//
// Every path a config names lives in the folder given; nothing reads or
// touches the system's own nginx or HAProxy configuration.
package benchconf
