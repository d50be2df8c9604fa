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

	"github.com/meshlet/meshlet/pkg/resources"
)

// snapshot implements cache.ResourceSnapshot with a version per type (a
// hash of that type's resources), so that a change of one endpoint resends
// only EDS in state-of-the-world, and a version per resource for delta.
type snapshot struct {
	types map[string]*typeSnap
}

type typeSnap struct {
	version   string
	resources map[string]types.ResourceWithTTL
	plain     map[string]types.Resource
	versions  map[string]string
}

var servedTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// newSnapshot builds a snapshot of set. EDS clusters whose load assignment
// is missing get an empty one (as istiod does), so that clients waiting for
// endpoints get an answer. It returns how many were added.
func newSnapshot(set *resources.Set) (*snapshot, int, error) {
	s := &snapshot{types: map[string]*typeSnap{}}
	for _, t := range servedTypes {
		s.types[t] = &typeSnap{resources: map[string]types.ResourceWithTTL{}, plain: map[string]types.Resource{}, versions: map[string]string{}}
	}
	add := func(t, name string, m proto.Message) error {
		ts := s.types[t]
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			return fmt.Errorf("marshal %s %q: %w", t, name, err)
		}
		sum := sha256.Sum256(b)
		ts.versions[name] = hex.EncodeToString(sum[:8])
		ts.resources[name] = types.ResourceWithTTL{Resource: m}
		ts.plain[name] = m
		return nil
	}
	for n, r := range set.Listeners {
		if err := add(resourcev3.ListenerType, n, r); err != nil {
			return nil, 0, err
		}
	}
	for n, r := range set.Routes {
		if err := add(resourcev3.RouteType, n, r); err != nil {
			return nil, 0, err
		}
	}
	filled := 0
	endpoints := make(map[string]*endpointv3.ClusterLoadAssignment, len(set.Endpoints))
	for n, r := range set.Endpoints {
		if r.GetClusterName() == "" {
			// Inline load assignments may leave cluster_name empty.
			r = proto.Clone(r).(*endpointv3.ClusterLoadAssignment)
			r.ClusterName = n
		}
		endpoints[n] = r
	}
	for n, c := range set.Clusters {
		if err := add(resourcev3.ClusterType, n, c); err != nil {
			return nil, 0, err
		}
		if c.GetType() == clusterv3.Cluster_EDS {
			eds := c.GetEdsClusterConfig().GetServiceName()
			if eds == "" {
				eds = n
			}
			if _, ok := endpoints[eds]; !ok {
				endpoints[eds] = &endpointv3.ClusterLoadAssignment{ClusterName: eds}
				filled++
			}
		}
	}
	for n, r := range endpoints {
		if err := add(resourcev3.EndpointType, n, r); err != nil {
			return nil, 0, err
		}
	}
	for _, t := range servedTypes {
		ts := s.types[t]
		names := make([]string, 0, len(ts.versions))
		for n := range ts.versions {
			names = append(names, n)
		}
		sort.Strings(names)
		h := sha256.New()
		var l [8]byte
		for _, n := range names {
			binary.BigEndian.PutUint64(l[:], uint64(len(n)))
			h.Write(l[:])
			h.Write([]byte(n))
			h.Write([]byte(ts.versions[n]))
		}
		ts.version = hex.EncodeToString(h.Sum(nil)[:8])
	}
	return s, filled, nil
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
		return t.plain
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
