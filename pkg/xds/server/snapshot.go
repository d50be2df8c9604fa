package server

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/internal/par"
	"github.com/meshlet/meshlet/pkg/resources"
)

// snapshot implements cache.ResourceSnapshot with a version per type (a
// hash of that type's resources), so that a change of one endpoint resends
// only EDS in state-of-the-world, and a version per resource for delta.
type snapshot struct {
	types map[string]*typeSnap
}

type typeSnap struct {
	version string
	// resources and served are what go-control-plane serves: pre-encoded
	// forms of the messages (preEncoded), so its per-response marshalling
	// is a copy.
	resources map[string]types.ResourceWithTTL
	served    map[string]types.Resource
	// plain are the messages themselves (validation, reuse).
	plain    map[string]types.Resource
	versions map[string]string
	// src is the entry of the Set each resource was served from (plain
	// may hold a copy), to recognise it in the next Set.
	src map[string]any
}

var servedTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// newSnapshot builds a snapshot of set. EDS clusters whose load assignment
// is missing get an empty one (as istiod does), so that clients waiting for
// endpoints get an answer. It returns how many were added. Resources that
// are the very same messages as in prev (the snapshot served before, may be
// nil) keep their version without being serialised and hashed again.
func newSnapshot(set *resources.Set, prev *snapshot) (*snapshot, int, error) {
	in := map[string]map[string]served{
		resourcev3.ListenerType: make(map[string]served, len(set.Listeners)),
		resourcev3.RouteType:    make(map[string]served, len(set.Routes)),
		resourcev3.ClusterType:  make(map[string]served, len(set.Clusters)),
		resourcev3.EndpointType: make(map[string]served, max(len(set.Endpoints), len(set.Clusters))),
	}
	for n, r := range set.Listeners {
		in[resourcev3.ListenerType][n] = served{r, r}
	}
	for n, r := range set.Routes {
		in[resourcev3.RouteType][n] = served{r, r}
	}
	endpoints := in[resourcev3.EndpointType]
	for n, r := range set.Endpoints {
		var m proto.Message // nil: the message served before is reused
		if prev.endpointSrc(n) != any(r) {
			la, err := r.Message()
			if err != nil {
				return nil, 0, err
			}
			if la.GetClusterName() == "" {
				// Inline load assignments may leave cluster_name empty.
				la = proto.Clone(la).(*endpointv3.ClusterLoadAssignment)
				la.ClusterName = n
			}
			m = la
		}
		endpoints[n] = served{r, m}
	}
	filled := 0
	for n, c := range set.Clusters {
		if c.GetType() != clusterv3.Cluster_EDS {
			in[resourcev3.ClusterType][n] = served{c, c}
			continue
		}
		var m proto.Message = c
		if c.GetLoadAssignment() != nil && prev.srcOf(resourcev3.ClusterType, n) != proto.Message(c) {
			// An EDS cluster's inline load_assignment is served as its
			// EDS resource; Envoy ignores it in the cluster, so it is not
			// sent twice (it would double CDS, and every endpoint change
			// would change the cluster too).
			cp := proto.Clone(c).(*clusterv3.Cluster)
			cp.LoadAssignment = nil
			m = cp
		}
		in[resourcev3.ClusterType][n] = served{c, m}
		eds := c.GetEdsClusterConfig().GetServiceName()
		if eds == "" {
			eds = n
		}
		if _, ok := endpoints[eds]; ok {
			continue
		}
		var la proto.Message = &endpointv3.ClusterLoadAssignment{ClusterName: eds}
		if pt, ok := prev.endpointSrc(eds).(proto.Message); ok && proto.Equal(pt, la) {
			la = pt // the empty assignment served before
		}
		endpoints[eds] = served{la, la}
		filled++
	}
	s := &snapshot{types: make(map[string]*typeSnap, len(servedTypes))}
	for _, t := range servedTypes {
		var pt *typeSnap
		if prev != nil {
			pt = prev.types[t]
		}
		ts, err := newTypeSnap(t, in[t], pt)
		if err != nil {
			return nil, 0, err
		}
		s.types[t] = ts
	}
	return s, filled, nil
}

// served is a resource as served (m) and the Set entry it comes from (src:
// a message, m being src or a copy of it, or a *resources.Assignment). m is
// nil when src is the entry served before: its message is reused.
type served struct {
	src any
	m   proto.Message
}

// newTypeSnap builds the resources of one type. When every resource is the
// same message as in prev, prev itself is returned (type snapshots are never
// modified); otherwise unchanged resources keep their version.
func newTypeSnap(t string, in map[string]served, prev *typeSnap) (*typeSnap, error) {
	if prev != nil && len(prev.src) == len(in) {
		same := true
		for n, r := range in {
			if prev.src[n] != r.src {
				same = false
				break
			}
		}
		if same {
			return prev, nil
		}
	}
	n := len(in)
	ts := &typeSnap{resources: make(map[string]types.ResourceWithTTL, n), served: make(map[string]types.Resource, n),
		plain: make(map[string]types.Resource, n), versions: make(map[string]string, n), src: make(map[string]any, n)}
	names := make([]string, 0, n)
	for name := range in {
		names = append(names, name)
	}
	sort.Strings(names)
	// Changed resources are encoded, hashed and pre-encoded on all CPUs
	// (independent of each other); the maps are filled afterwards.
	type built struct {
		m, sv   types.Resource
		version string
		err     error
	}
	out := make([]built, len(names))
	par.For(len(names), func(i int) {
		name, r := names[i], in[names[i]]
		o := &out[i]
		if prev != nil && prev.src[name] == r.src {
			o.m, o.version, o.sv = prev.plain[name], prev.versions[name], prev.served[name]
			return
		}
		o.m = r.m
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r.m)
		if err != nil {
			o.err = fmt.Errorf("marshal %s %q: %w", t, name, err)
			return
		}
		sum := sha256.Sum256(b)
		o.version = hex.EncodeToString(sum[:8])
		if o.sv, err = preEncoded(r.m, b); err != nil {
			o.err = fmt.Errorf("%s %q: %w", t, name, err)
		}
	})
	for i, name := range names {
		o := out[i]
		if o.err != nil {
			return nil, o.err
		}
		ts.src[name] = in[name].src
		ts.versions[name] = o.version
		ts.resources[name] = types.ResourceWithTTL{Resource: o.sv}
		ts.served[name] = o.sv
		ts.plain[name] = o.m
	}
	h := sha256.New()
	var l [8]byte
	for _, n := range names {
		binary.BigEndian.PutUint64(l[:], uint64(len(n)))
		h.Write(l[:])
		h.Write([]byte(n))
		h.Write([]byte(ts.versions[n]))
	}
	ts.version = hex.EncodeToString(h.Sum(nil)[:8])
	return ts, nil
}

// endpointSrc is the Set entry endpoints name was served from (nil if
// none or s is nil).
func (s *snapshot) endpointSrc(name string) any {
	return s.srcOf(resourcev3.EndpointType, name)
}

// srcOf is the Set entry resource name of type t was served from (nil if
// none or s is nil).
func (s *snapshot) srcOf(t, name string) any {
	if s == nil {
		return nil
	}
	return s.types[t].src[name]
}

func (s *snapshot) GetVersion(typeURL string) string {
	if t, ok := s.types[typeURL]; ok {
		return t.version
	}
	return ""
}

func (s *snapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	if t, ok := s.types[typeURL]; ok {
		return t.resources
	}
	return nil
}

func (s *snapshot) GetResources(typeURL string) map[string]types.Resource {
	if t, ok := s.types[typeURL]; ok {
		return t.served
	}
	return nil
}

func (s *snapshot) ConstructVersionMap() error { return nil }

func (s *snapshot) GetVersionMap(typeURL string) map[string]string {
	if t, ok := s.types[typeURL]; ok {
		return t.versions
	}
	return nil
}

// version is a short digest of all type versions.
func (s *snapshot) version() string {
	h := sha256.New()
	for _, t := range servedTypes {
		h.Write([]byte(s.types[t].version))
	}
	return hex.EncodeToString(h.Sum(nil)[:6])
}
