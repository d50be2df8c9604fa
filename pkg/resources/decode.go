package resources

import (
	"fmt"
	"os"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// LoadFile reads a file of Envoy v3 resources (YAML or JSON) in the shape of
// Envoy's bootstrap: a top-level static_resources with listeners and
// clusters (clusters may carry an inline load_assignment).
func LoadFile(path string) (*Set, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read resources file: %w", err)
	}
	set, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	return set, nil
}

// Decode parses YAML or JSON in the bootstrap static_resources shape.
func Decode(data []byte) (*Set, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &b); err != nil {
		return nil, fmt.Errorf("envoy v3 bootstrap: %w", err)
	}
	return FromBootstrap(&b)
}

// FromBootstrap collects the static resources of an Envoy bootstrap into a
// Set. Inline cluster load assignments become Endpoints entries.
func FromBootstrap(b *bootstrapv3.Bootstrap) (*Set, error) {
	set := New()
	sr := b.GetStaticResources()
	for _, l := range sr.GetListeners() {
		if l.GetName() == "" {
			return nil, fmt.Errorf("listener without a name")
		}
		if _, dup := set.Listeners[l.GetName()]; dup {
			return nil, fmt.Errorf("listener %q defined twice", l.GetName())
		}
		set.Listeners[l.GetName()] = l
	}
	for _, c := range sr.GetClusters() {
		if c.GetName() == "" {
			return nil, fmt.Errorf("cluster without a name")
		}
		if _, dup := set.Clusters[c.GetName()]; dup {
			return nil, fmt.Errorf("cluster %q defined twice", c.GetName())
		}
		set.Clusters[c.GetName()] = c
		if la := c.GetLoadAssignment(); la != nil {
			name := la.GetClusterName()
			if name == "" {
				name = c.GetName()
			}
			set.Endpoints[name] = NewAssignment(la)
		}
	}
	return set, nil
}
