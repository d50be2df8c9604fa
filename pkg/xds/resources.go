package xds

import (
	"errors"
	"fmt"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds/validate"
)

// Type URLs of the four resource types the client handles.
const (
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// typeOrder is Envoy's subscription order.
var typeOrder = []string{ClusterType, EndpointType, ListenerType, RouteType}

// ShortType returns "CDS", "EDS", "LDS" or "RDS" for a type URL.
func ShortType(typeURL string) string {
	switch typeURL {
	case ListenerType:
		return "LDS"
	case RouteType:
		return "RDS"
	case ClusterType:
		return "CDS"
	case EndpointType:
		return "EDS"
	}
	return typeURL
}

func newMessage(typeURL string) (proto.Message, error) {
	switch typeURL {
	case ListenerType:
		return &listenerv3.Listener{}, nil
	case RouteType:
		return &routev3.RouteConfiguration{}, nil
	case ClusterType:
		return &clusterv3.Cluster{}, nil
	case EndpointType:
		return &endpointv3.ClusterLoadAssignment{}, nil
	}
	return nil, fmt.Errorf("unsupported resource type %q", typeURL)
}

// ResourceName returns the xDS name of one of the four resource types (EDS
// resources as an endpoint message or a *resources.Assignment).
func ResourceName(m any) string {
	switch r := m.(type) {
	case *resources.Assignment:
		return r.ClusterName()
	case *listenerv3.Listener:
		return r.GetName()
	case *routev3.RouteConfiguration:
		return r.GetName()
	case *clusterv3.Cluster:
		return r.GetName()
	case *endpointv3.ClusterLoadAssignment:
		return r.GetClusterName()
	}
	return ""
}

// AppendWire appends the protobuf encoding of a resource held in a
// resources.Set to b: an Assignment's wire bytes, or the deterministic
// encoding of a message.
func AppendWire(b []byte, m any) ([]byte, error) {
	switch r := m.(type) {
	case *resources.Assignment:
		return r.AppendWire(b)
	case proto.Message:
		return proto.MarshalOptions{Deterministic: true}.MarshalAppend(b, r)
	}
	return b, fmt.Errorf("not an xDS resource: %T", m)
}

// ResourceError says which resource of a response was rejected and why.
type ResourceError struct {
	TypeURL string
	Name    string
	Index   int
	Err     error
}

func (e *ResourceError) Error() string {
	name := e.Name
	if name == "" {
		name = fmt.Sprintf("#%d", e.Index)
	}
	return fmt.Sprintf("%s %q: %v", ShortType(e.TypeURL), name, e.Err)
}

func (e *ResourceError) Unwrap() error { return e.Err }

// decodeResource unmarshals and validates one resource of typeURL. expectName,
// when non-empty (delta), must match the resource's own name. EDS resources
// are returned as compact *resources.Assignment values (they keep a's
// payload), the other types as their messages.
func decodeResource(typeURL string, a *anypb.Any, expectName string, idx int) (any, error) {
	fail := func(name string, err error) error {
		return &ResourceError{TypeURL: typeURL, Name: name, Index: idx, Err: err}
	}
	if a == nil {
		return nil, fail(expectName, errors.New("missing resource body"))
	}
	if a.GetTypeUrl() != typeURL {
		return nil, fail(expectName, fmt.Errorf("unexpected type %q in a %s response", a.GetTypeUrl(), ShortType(typeURL)))
	}
	m, err := newMessage(typeURL)
	if err != nil {
		return nil, fail(expectName, err)
	}
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return nil, fail(expectName, fmt.Errorf("undecodable: %w", err))
	}
	name := ResourceName(m)
	if name == "" {
		return nil, fail(expectName, errors.New("resource has no name"))
	}
	if expectName != "" && expectName != name {
		return nil, fail(expectName, fmt.Errorf("resource is named %q", name))
	}
	if err := validate.Resource(m); err != nil {
		return nil, fail(name, err)
	}
	if la, ok := m.(*endpointv3.ClusterLoadAssignment); ok {
		return resources.CompactAssignment(la, a.GetValue()), nil
	}
	return m, nil
}

// edsName is the EDS resource name of an EDS cluster ("" if not EDS).
func edsName(c *clusterv3.Cluster) string {
	if c.GetType() != clusterv3.Cluster_EDS {
		return ""
	}
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

// routeNames returns the RDS route_config_names of a listener's HTTP
// connection managers (filter chains and default filter chain).
func routeNames(l *listenerv3.Listener, into map[string]bool) {
	chains := l.GetFilterChains()
	if d := l.GetDefaultFilterChain(); d != nil {
		chains = append(chains[:len(chains):len(chains)], d)
	}
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			tc := f.GetTypedConfig()
			if tc == nil || !strings.HasSuffix(tc.GetTypeUrl(), "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager") {
				continue
			}
			var hcm hcmv3.HttpConnectionManager
			if err := tc.UnmarshalTo(&hcm); err != nil {
				continue // validation reports it
			}
			if n := hcm.GetRds().GetRouteConfigName(); n != "" {
				into[n] = true
			}
		}
	}
	if api := l.GetApiListener().GetApiListener(); api != nil {
		var hcm hcmv3.HttpConnectionManager
		if api.UnmarshalTo(&hcm) == nil {
			if n := hcm.GetRds().GetRouteConfigName(); n != "" {
				into[n] = true
			}
		}
	}
}

// inlineEndpoints adds the inline load assignments of non-EDS clusters to
// set.Endpoints, like resources.FromBootstrap does.
func inlineEndpoints(set *resources.Set) {
	for name, c := range set.Clusters {
		if c.GetType() == clusterv3.Cluster_EDS {
			continue
		}
		if la := c.GetLoadAssignment(); la != nil {
			n := la.GetClusterName()
			if n == "" {
				n = name
			}
			if _, ok := set.Endpoints[n]; !ok {
				set.Endpoints[n] = resources.NewAssignment(la)
			}
		}
	}
}

type (
	clusterType  = clusterv3.Cluster
	endpointType = resources.Assignment
	listenerType = listenerv3.Listener
	routeType    = routev3.RouteConfiguration
)
