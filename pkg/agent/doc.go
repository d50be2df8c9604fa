// Package agent wires the node agent together: config source, state
// translation, the BPF data path (pkg/sockmap), the proxy (pkg/proxy) and the
// admin endpoint. cmd/node-agent is a thin command line around it.
package agent
