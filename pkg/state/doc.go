// Package state turns one resources.Set (Envoy v3 listeners, routes, clusters
// and endpoints) into the agent's runtime view: which destinations to capture,
// how a captured connection picks its listener and filter chain (Envoy's
// use_original_dst hand-off and FilterChainMatch precedence), and how a
// cluster picks an endpoint: weighted round robin, random, least request,
// consistent hashing (RING_HASH, MAGLEV: ring.go), with slow start
// (slowstart.go), passing over endpoints outlier detection ejected
// (outlier.go, fed by the proxy through Endpoint.Report), and the
// cluster's circuit-breaker limits (Breaker). Each listener's, HCM's and
// tcp_proxy's access_log is compiled here too (pkg/accesslog), so a bad one
// rejects the update.
//
// A Snapshot's configuration is immutable once built; what changes is
// runtime state: the sequences that spread weighted picks, connection,
// request and retry counts, outlier ejections. The proxy
// loads the current one for each new connection, so a connection sees one
// whole config, never a mix.
// What a Snapshot cannot honour is listed in Issues, never dropped silently.
package state
