// Package store persists the last configuration the xDS client applied, so
// that the agent can serve it after a restart while the control plane is
// unreachable. It implements xds.Persister.
//
// The file is JSON and self-describing: a format tag, a SHA-256 of the body,
// and a body with the per-type versions and every resource as a
// google.protobuf.Any (type URL, name, version, last update, base64 binary
// value). Writes are atomic (temporary file, fsync, rename, directory fsync).
// A file that fails to decode is renamed aside (never deleted) and Load
// returns an error that says so; nothing from it is applied.
package store
