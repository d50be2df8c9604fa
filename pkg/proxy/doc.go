// Package proxy is meshlet's data plane for captured connections.
//
// For each connection accepted on the capture listener it asks the BPF map
// for the original destination (never getsockopt), picks the listener and
// filter chain from the current state.Snapshot, and for TCP proxy chains
// picks an endpoint and copies bytes both ways with pooled buffers, a
// read/write loop (never splice(2): sockmap-accelerated sockets keep their
// bytes in a queue splice cannot see), half-close and idle timeouts.
// HTTP connection manager chains are handed to an L7 handler.
package proxy
