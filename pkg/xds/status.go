package xds

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshlet/meshlet/pkg/resources"
)

// Applier consumes the complete Set each time the configuration changes. An
// error rejects the Set: the client NACKs the response that produced it and
// the previous Set stays in force. Apply is called from one goroutine at a
// time; the Set must not be modified.
type Applier interface {
	Apply(ctx context.Context, set *resources.Set) error
}

// ApplierFunc adapts a function to Applier.
type ApplierFunc func(ctx context.Context, set *resources.Set) error

// Apply implements Applier.
func (f ApplierFunc) Apply(ctx context.Context, set *resources.Set) error { return f(ctx, set) }

// Persisted is the state a Persister stores: the last applied Set with the
// versions it was accepted at.
type Persisted struct {
	Set *resources.Set
	// Versions is the accepted version_info per type URL.
	Versions map[string]string
	// Meta is the version and update time per type URL and resource name.
	Meta map[string]map[string]ResourceMeta
	// Saved is when the state was written.
	Saved time.Time
}

// Persister stores the last applied Set and gives it back at start.
// Load returns (nil, nil) when nothing was persisted yet.
type Persister interface {
	Load(ctx context.Context) (*Persisted, error)
	Save(ctx context.Context, p *Persisted) error
}

// Source says where the Set in force came from.
type Source string

// Sources.
const (
	SourceNone         Source = "none"
	SourcePersisted    Source = "persisted"
	SourceControlPlane Source = "control-plane"
)

// ResourceMeta is the version and last update time of one resource.
type ResourceMeta struct {
	Version     string
	LastUpdated time.Time
}

// NackError is a rejected response.
type NackError struct {
	TypeURL string
	// Name of the first rejected resource; empty when the Applier rejected
	// the Set as a whole.
	Name string
	// Version is the rejected version_info (system_version_info in delta).
	Version string
	Nonce   string
	Detail  string
	Time    time.Time
	// Failed is the rejected resource, when there is one.
	Failed *anypb.Any
}

// TypeStatus is the state of one resource type.
type TypeStatus struct {
	// Version is the version_info of this type in the Set in force.
	Version string
	// LastUpdated is the latest update time of a resource of this type in
	// the Set in force.
	LastUpdated time.Time
	// Resources is the number of resources of this type in the Set in
	// force.
	Resources int
}

// Status is a point-in-time view of the client.
type Status struct {
	Address   string
	Mode      string // "sotw" or "delta"
	Connected bool
	// Ready is true once a Set is in force (from either source).
	Ready  bool
	Source Source
	// LastApplied is when the Set in force was applied.
	LastApplied time.Time
	Types       map[string]TypeStatus
	// LastNACK is the most recent rejection, if any.
	LastNACK *NackError
	// LastError is the last stream or connection error.
	LastError string
	// PersistError is the last error of the Persister, if any.
	PersistError string
	// Streams counts the ADS streams opened.
	Streams int
}

// Current is the Set in force with the metadata an admin endpoint needs.
type Current struct {
	Set    *resources.Set
	Meta   map[string]map[string]ResourceMeta
	Nacks  []NackError
	Status Status
}
