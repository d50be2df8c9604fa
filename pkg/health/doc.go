// Package health runs a cluster's active health checks (Envoy's
// health_checks: TCP connect, TCP send/receive payloads, HTTP/1.1 GET with
// expected statuses, gRPC grpc.health.v1 Check) against its endpoints and marks the ones that fail
// unhealthy_threshold checks in a row down, and up again after
// healthy_threshold successes, so the cluster's picks pass over them
// (state.Endpoint.SetActiveHealth).
//
// A Checker follows the snapshots in force (Sync): one prober per cluster,
// endpoint address and health-check config, kept across snapshots for as
// long as the three stay, so a verdict survives EDS updates. Endpoints
// start healthy (fail open): an endpoint is taken out only by failed checks.
// Custom checkers are not run (reported by Sync).
package health
