// Package resources holds one consistent set of Envoy v3 xDS resources
// (listeners, routes, clusters, endpoints): the unit of configuration that
// flows from a config source (a static file, the embedded xDS server, a
// remote control plane) to the agent's runtime state.
package resources

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// Set is a complete view of the four resource types, keyed by resource name.
// A Set is treated as immutable once handed to a consumer: producers build a
// new Set for every change.
type Set struct {
	// Version identifies this set (e.g. the xDS version_info of each type
	// joined, or a file hash). Informational.
	Version string

	Listeners map[string]*listenerv3.Listener
	Routes    map[string]*routev3.RouteConfiguration
	Clusters  map[string]*clusterv3.Cluster
	// Endpoints are keyed by ClusterLoadAssignment.cluster_name (the EDS
	// service name). They are held as Assignments, compactly when they
	// come from the wire (see Assignment).
	Endpoints map[string]*Assignment
}

// New returns an empty, ready to fill Set.
func New() *Set {
	return &Set{
		Listeners: map[string]*listenerv3.Listener{},
		Routes:    map[string]*routev3.RouteConfiguration{},
		Clusters:  map[string]*clusterv3.Cluster{},
		Endpoints: map[string]*Assignment{},
	}
}
