// Package xds is meshlet's xDS v3 client: an aggregated discovery service
// (ADS) stream to a control plane (istiod, any go-control-plane server, or
// the agent's embedded server in pkg/xds/server), in state-of-the-world or
// delta (incremental) mode, for listeners, routes, clusters and endpoints.
//
// The client subscribes like Envoy does: clusters first (wildcard), then the
// endpoints of EDS clusters by their eds service_name, then listeners
// (wildcard) once the clusters are warm, then the route configurations named
// by the HTTP connection managers of the listeners. Each response is decoded
// and validated (protoc-gen-validate rules, including nested Any payloads,
// names, duplicates); once every subscribed resource has arrived (or a warm-up
// timeout has passed) the complete, consistent resources.Set is handed to an
// Applier. A response that fails validation or that the Applier rejects is
// NACKed with an error_detail naming the resource and the reason, and the
// last good Set stays in force; otherwise the response is ACKed with its
// version and nonce.
//
// The client reconnects with jittered exponential backoff, can persist every
// applied Set through a Persister (pkg/xds/store) and serve from it while the
// control plane is unreachable, supports on-demand subscriptions by name
// (Client.Want) and reports its state through Client.Status and
// Client.Current (consumed by pkg/admin).
package xds
