// Package state turns one resources.Set (Envoy v3 listeners, routes, clusters
// and endpoints) into the agent's runtime view: which destinations to capture,
// how a captured connection picks its listener and filter chain (Envoy's
// use_original_dst hand-off and FilterChainMatch precedence), and how a
// cluster picks an endpoint.
//
// A Snapshot is immutable once built (only the sequence that spreads a
// weighted tcp_proxy's picks advances, see TCPProxy.PickCluster). The proxy
// loads the current one for each new connection, so a connection sees one
// whole config, never a mix.
// What a Snapshot cannot honour is listed in Issues, never dropped silently.
package state
