// Package server is meshlet's embedded xDS control plane: a go-control-plane
// ADS server (state-of-the-world and delta) that serves one set of Envoy v3
// resources to every node that connects. The resources come from a file
// (Envoy bootstrap static_resources shape, or an Envoy admin /config_dump),
// which is polled and re-read when it changes, or from SetResources.
//
// A file that cannot be read, decoded or validated is reported with a clear
// error and the previous snapshot keeps being served. The agent runs the
// server in-process by default (on a loopback port or a unix socket) and
// connects its own xDS client to it; `node-agent xds-server` runs it
// standalone so several agents share one.
package server
