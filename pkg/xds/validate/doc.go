// Package validate checks Envoy v3 xDS resources the way Envoy does before it
// accepts them: the protoc-gen-validate rules of the resource and, because
// PGV stops at google.protobuf.Any boundaries, of every Any payload nested in
// it (filters, transport sockets, extension options) whose type is linked into
// the binary. Payloads of unknown types are not an error: Envoy would reject
// them only if it had to instantiate them, and the agent ignores them by name.
package validate
