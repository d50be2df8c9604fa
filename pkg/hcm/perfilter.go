package hcm

import (
	"fmt"
	"slices"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// HTTP filter configs by filter name: a filter's own config in
// http_filters, overridden by a virtual host's typed_per_filter_config
// entry under the filter's name, overridden by the route's.

const filterConfigURL = "type.googleapis.com/envoy.config.route.v3.FilterConfig"

// innerTypeURL is the type of a typed_per_filter_config entry, looking
// inside a FilterConfig wrapper.
func innerTypeURL(a *anypb.Any) (string, error) {
	if a.GetTypeUrl() != filterConfigURL {
		return a.GetTypeUrl(), nil
	}
	var fc routev3.FilterConfig
	if err := a.UnmarshalTo(&fc); err != nil {
		return "", fmt.Errorf("decode FilterConfig: %w", err)
	}
	return fc.GetConfig().GetTypeUrl(), nil
}

// unwrapFilterConfig decodes a filter config into m, bare or wrapped in a
// FilterConfig; an absent config leaves m empty.
func unwrapFilterConfig(a *anypb.Any, m proto.Message) error {
	if a.GetTypeUrl() == filterConfigURL {
		var fc routev3.FilterConfig
		if err := a.UnmarshalTo(&fc); err != nil {
			return fmt.Errorf("decode FilterConfig: %w", err)
		}
		a = fc.GetConfig()
	}
	if a == nil {
		return nil
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("decode %s: %w", a.GetTypeUrl(), err)
	}
	return nil
}

// perFilter compiles the entries of a typed_per_filter_config whose type
// is typeURL, by filter name (nil when there is none).
func perFilter[T any](m map[string]*anypb.Any, typeURL string, decode func(*anypb.Any) (T, error)) (map[string]T, error) {
	var out map[string]T
	for name, a := range m {
		u, err := innerTypeURL(a)
		if err != nil {
			return nil, fmt.Errorf("typed_per_filter_config %q: %w", name, err)
		}
		if u != typeURL {
			continue
		}
		v, err := decode(a)
		if err != nil {
			return nil, fmt.Errorf("typed_per_filter_config %q: %w", name, err)
		}
		if out == nil {
			out = map[string]T{}
		}
		out[name] = v
	}
	return out, nil
}

// inherit adds to route's configs the virtual host's it does not override.
func inherit[T any](route, vhost map[string]T) map[string]T {
	for name, v := range vhost {
		if _, ok := route[name]; !ok {
			if route == nil {
				route = map[string]T{}
			}
			route[name] = v
		}
	}
	return route
}

// httpFilter finds the first http_filters entry that is the filter named
// one of names or configured with typeURL: its index (-1: absent), its
// name (the key of typed_per_filter_config entries) and its config (nil
// when it has none or an empty one).
func httpFilter(filters []*hcmv3.HttpFilter, typeURL string, names ...string) (int, string, *anypb.Any) {
	for i, f := range filters {
		a := f.GetTypedConfig()
		if a.GetTypeUrl() != typeURL && !slices.Contains(names, f.GetName()) {
			continue
		}
		if len(a.GetValue()) == 0 {
			a = nil
		}
		return i, f.GetName(), a
	}
	return -1, "", nil
}
