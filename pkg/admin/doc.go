// Package admin is the agent's local admin endpoint (mounted on
// 127.0.0.1:15000 by the agent): /config_dump in the shape of Envoy's admin
// ConfigDump (so istioctl-style tooling can read it), /ready, and /status
// with the xDS client's state plus whatever extra status the agent hooks in.
//
// # Translation issues in /config_dump
//
// What the agent accepted but does not honour (state.Snapshot.Issues:
// ignored filters, listeners not captured, upstream TLS not applied...) is
// not a rejected update, so Envoy's error_state (UpdateFailureState, "the
// last update failed") is the wrong place for it, and Envoy's ConfigDump has
// no field for accepted-with-warnings. The dump therefore ends with one
// extra entry in configs, a google.protobuf.Struct, which every protobuf
// runtime resolves and which tools that pick configs entries by @type skip:
//
//	{"@type": "type.googleapis.com/google.protobuf.Struct",
//	 "value": {"meshlet_translation_issues": [{"type": "listener",
//	   "name": "virtualInbound", "reason": "inbound listener: ..."}],
//	  "version_info": "<version of the Set the issues were found in>"}}
//
// The entry is always present (an empty list when there are none). Rejected
// configuration still appears as error_state on the resource, as in Envoy.
// IssuesFromConfigDump reads the entry back.
package admin
