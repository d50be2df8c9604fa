// Package admin is the agent's local admin endpoint (mounted on
// 127.0.0.1:15000 by the agent): /config_dump in the shape of Envoy's admin
// ConfigDump (so istioctl-style tooling can read it), /ready, and /status
// with the xDS client's state plus whatever extra status the agent hooks in.
package admin
