package resources

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

// Kinds of ConfigDumpIssue.
const (
	// IssueDroppedPayload: Any payloads of a type that is not linked into
	// the binary were replaced by an empty message of the same type URL.
	IssueDroppedPayload = "dropped-payload"
	// IssueErrorState: the dump records a resource the proxy rejected
	// (error_state); it is not part of the Set, Failed holds it.
	IssueErrorState = "error-state"
	// IssueWarming: a resource that was still warming in the proxy; it is
	// included in the Set.
	IssueWarming = "warming"
	// IssueStatic: a bootstrap (static) resource; it is not part of the Set.
	IssueStatic = "static"
	// IssueIgnoredSection: a config dump section that carries no xDS
	// resources of the four types (bootstrap, secrets, scoped routes...).
	IssueIgnoredSection = "ignored-section"
)

// ConfigDumpIssue is a non-fatal finding while decoding a config dump.
type ConfigDumpIssue struct {
	Kind    string
	TypeURL string
	Name    string
	Detail  string
	// Failed is the rejected configuration of an IssueErrorState issue.
	Failed *anypb.Any
}

func (i ConfigDumpIssue) String() string {
	var b strings.Builder
	b.WriteString(i.Kind)
	if i.TypeURL != "" {
		b.WriteString(" " + i.TypeURL)
	}
	if i.Name != "" {
		b.WriteString(" " + fmt.Sprintf("%q", i.Name))
	}
	if i.Detail != "" {
		b.WriteString(": " + i.Detail)
	}
	return b.String()
}

// TolerantResolver resolves Any type URLs from the global protobuf registry
// and, for types that are not linked into the binary, hands out a field-less
// placeholder message of the same full name, so that decoding JSON with
// DiscardUnknown succeeds and keeps the type URL. It records how many payloads
// of each unknown type it stood in for. Safe for concurrent use.
type TolerantResolver struct {
	mu           sync.Mutex
	placeholders map[protoreflect.FullName]protoreflect.MessageType
	dropped      map[string]int
}

// NewTolerantResolver returns an empty resolver.
func NewTolerantResolver() *TolerantResolver {
	return &TolerantResolver{
		placeholders: map[protoreflect.FullName]protoreflect.MessageType{},
		dropped:      map[string]int{},
	}
}

// FindMessageByName implements protoregistry.MessageTypeResolver.
func (r *TolerantResolver) FindMessageByName(name protoreflect.FullName) (protoreflect.MessageType, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
	if err == nil {
		return mt, nil
	}
	if !errors.Is(err, protoregistry.NotFound) {
		return nil, err
	}
	return r.placeholder(name)
}

// FindMessageByURL implements protoregistry.MessageTypeResolver.
func (r *TolerantResolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	name := url
	if i := strings.LastIndexByte(url, '/'); i >= 0 {
		name = url[i+1:]
	}
	return r.FindMessageByName(protoreflect.FullName(name))
}

// FindExtensionByName implements protoregistry.ExtensionTypeResolver.
func (r *TolerantResolver) FindExtensionByName(field protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByName(field)
}

// FindExtensionByNumber implements protoregistry.ExtensionTypeResolver.
func (r *TolerantResolver) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByNumber(message, field)
}

// Dropped returns, per type URL, how many payloads were replaced by a
// placeholder (or, when marshalling, written without their content).
func (r *TolerantResolver) Dropped() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.dropped))
	for k, v := range r.dropped {
		out[k] = v
	}
	return out
}

func (r *TolerantResolver) placeholder(name protoreflect.FullName) (protoreflect.MessageType, error) {
	if !name.IsValid() || name.Parent() == "" && !name.Name().IsValid() {
		return nil, fmt.Errorf("type %q: not a valid protobuf message name: %w", name, protoregistry.NotFound)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropped["type.googleapis.com/"+string(name)]++
	if mt, ok := r.placeholders[name]; ok {
		return mt, nil
	}
	fdp := &descriptorpb.FileDescriptorProto{
		Name:        proto.String("meshlet/placeholder/" + string(name) + ".proto"),
		Syntax:      proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String(string(name.Name()))}},
	}
	if pkg := name.Parent(); pkg != "" {
		fdp.Package = proto.String(string(pkg))
	}
	fd, err := protodesc.NewFile(fdp, new(protoregistry.Files))
	if err != nil {
		return nil, fmt.Errorf("placeholder for %q: %w", name, err)
	}
	mt := dynamicpb.NewMessageType(fd.Messages().Get(0))
	r.placeholders[name] = mt
	return mt, nil
}

// DecodeConfigDump decodes the JSON (or YAML) of Envoy's admin /config_dump
// (envoy.admin.v3.ConfigDump) into a Set of the dynamic resources it holds:
// active and warming listeners, active and warming clusters, dynamic route
// configurations and dynamic endpoint configurations. Static (bootstrap)
// resources and resources in error_state are left out and reported as
// issues, as are Any payloads of types not linked into the binary (Istio's
// stats, alpn, metadata_exchange and authn configs), which are kept with their
// type URL and an empty value. Unknown JSON fields are ignored.
func DecodeConfigDump(data []byte) (*Set, []ConfigDumpIssue, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, nil, fmt.Errorf("config dump: not JSON or YAML: %w", err)
	}
	r := NewTolerantResolver()
	var cd adminv3.ConfigDump
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true, Resolver: r}).Unmarshal(js, &cd); err != nil {
		return nil, nil, fmt.Errorf("config dump: envoy.admin.v3.ConfigDump: %w", err)
	}
	if len(cd.GetConfigs()) == 0 {
		return nil, nil, errors.New("config dump: no configs (expected a top-level \"configs\" list of envoy.admin.v3 *ConfigDump entries)")
	}
	set := New()
	var issues []ConfigDumpIssue
	versions := []string{}
	for i, cfg := range cd.GetConfigs() {
		m, err := cfg.UnmarshalNew()
		if err != nil {
			issues = append(issues, ConfigDumpIssue{Kind: IssueIgnoredSection, TypeURL: cfg.GetTypeUrl(), Detail: fmt.Sprintf("configs[%d]: %v", i, err)})
			continue
		}
		switch d := m.(type) {
		case *adminv3.ListenersConfigDump:
			versions = append(versions, "lds="+d.GetVersionInfo())
			iss, err := decodeListenersDump(set, d)
			issues = append(issues, iss...)
			if err != nil {
				return nil, issues, err
			}
		case *adminv3.ClustersConfigDump:
			versions = append(versions, "cds="+d.GetVersionInfo())
			iss, err := decodeClustersDump(set, d)
			issues = append(issues, iss...)
			if err != nil {
				return nil, issues, err
			}
		case *adminv3.RoutesConfigDump:
			iss, err := decodeRoutesDump(set, d)
			issues = append(issues, iss...)
			if err != nil {
				return nil, issues, err
			}
		case *adminv3.EndpointsConfigDump:
			iss, err := decodeEndpointsDump(set, d)
			issues = append(issues, iss...)
			if err != nil {
				return nil, issues, err
			}
		default:
			issues = append(issues, ConfigDumpIssue{Kind: IssueIgnoredSection, TypeURL: cfg.GetTypeUrl()})
		}
	}
	dropped := r.Dropped()
	urls := make([]string, 0, len(dropped))
	for u := range dropped {
		urls = append(urls, u)
	}
	sort.Strings(urls)
	for _, u := range urls {
		issues = append(issues, ConfigDumpIssue{Kind: IssueDroppedPayload, TypeURL: u,
			Detail: fmt.Sprintf("%d payload(s) of a type not linked into meshlet kept with an empty value", dropped[u])})
	}
	sum := sha256.Sum256(data)
	set.Version = "configdump:" + hex.EncodeToString(sum[:8])
	if len(versions) > 0 {
		set.Version += ":" + strings.Join(versions, ",")
	}
	return set, issues, nil
}

func unmarshalAny(a *anypb.Any, m proto.Message, what string) error {
	if a == nil {
		return fmt.Errorf("%s: missing", what)
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func decodeListenersDump(set *Set, d *adminv3.ListenersConfigDump) ([]ConfigDumpIssue, error) {
	var issues []ConfigDumpIssue
	for _, s := range d.GetStaticListeners() {
		var l listenerv3.Listener
		_ = s.GetListener().UnmarshalTo(&l)
		issues = append(issues, ConfigDumpIssue{Kind: IssueStatic, TypeURL: s.GetListener().GetTypeUrl(), Name: l.GetName()})
	}
	for i, dl := range d.GetDynamicListeners() {
		if es := dl.GetErrorState(); es != nil {
			name := dl.GetName()
			if name == "" {
				var failed listenerv3.Listener
				if es.GetFailedConfiguration().UnmarshalTo(&failed) == nil {
					name = failed.GetName()
				}
			}
			issues = append(issues, ConfigDumpIssue{Kind: IssueErrorState, TypeURL: es.GetFailedConfiguration().GetTypeUrl(),
				Name: name, Detail: es.GetDetails(), Failed: es.GetFailedConfiguration()})
		}
		st := dl.GetActiveState()
		if st == nil {
			st = dl.GetWarmingState()
			if st == nil {
				continue
			}
			issues = append(issues, ConfigDumpIssue{Kind: IssueWarming, TypeURL: st.GetListener().GetTypeUrl(), Name: dl.GetName()})
		}
		l := &listenerv3.Listener{}
		if err := unmarshalAny(st.GetListener(), l, fmt.Sprintf("dynamic_listeners[%d] %q", i, dl.GetName())); err != nil {
			return issues, fmt.Errorf("config dump: %w", err)
		}
		if err := addUnique(set.Listeners, l.GetName(), l, "listener"); err != nil {
			return issues, err
		}
	}
	return issues, nil
}

func decodeClustersDump(set *Set, d *adminv3.ClustersConfigDump) ([]ConfigDumpIssue, error) {
	var issues []ConfigDumpIssue
	for _, s := range d.GetStaticClusters() {
		var c clusterv3.Cluster
		_ = s.GetCluster().UnmarshalTo(&c)
		issues = append(issues, ConfigDumpIssue{Kind: IssueStatic, TypeURL: s.GetCluster().GetTypeUrl(), Name: c.GetName()})
	}
	add := func(list []*adminv3.ClustersConfigDump_DynamicCluster, field string, warming bool) error {
		for i, dc := range list {
			c := &clusterv3.Cluster{}
			if es := dc.GetErrorState(); es != nil {
				issues = append(issues, ConfigDumpIssue{Kind: IssueErrorState, TypeURL: es.GetFailedConfiguration().GetTypeUrl(),
					Detail: es.GetDetails(), Failed: es.GetFailedConfiguration()})
			}
			if dc.GetCluster() == nil {
				continue
			}
			if err := unmarshalAny(dc.GetCluster(), c, fmt.Sprintf("%s[%d]", field, i)); err != nil {
				return fmt.Errorf("config dump: %w", err)
			}
			if warming {
				issues = append(issues, ConfigDumpIssue{Kind: IssueWarming, TypeURL: dc.GetCluster().GetTypeUrl(), Name: c.GetName()})
			}
			if err := addUnique(set.Clusters, c.GetName(), c, "cluster"); err != nil {
				return err
			}
		}
		return nil
	}
	if err := add(d.GetDynamicActiveClusters(), "dynamic_active_clusters", false); err != nil {
		return issues, err
	}
	if err := add(d.GetDynamicWarmingClusters(), "dynamic_warming_clusters", true); err != nil {
		return issues, err
	}
	return issues, nil
}

func decodeRoutesDump(set *Set, d *adminv3.RoutesConfigDump) ([]ConfigDumpIssue, error) {
	var issues []ConfigDumpIssue
	for _, s := range d.GetStaticRouteConfigs() {
		var rc routev3.RouteConfiguration
		_ = s.GetRouteConfig().UnmarshalTo(&rc)
		issues = append(issues, ConfigDumpIssue{Kind: IssueStatic, TypeURL: s.GetRouteConfig().GetTypeUrl(), Name: rc.GetName()})
	}
	for i, dr := range d.GetDynamicRouteConfigs() {
		if es := dr.GetErrorState(); es != nil {
			issues = append(issues, ConfigDumpIssue{Kind: IssueErrorState, TypeURL: es.GetFailedConfiguration().GetTypeUrl(),
				Detail: es.GetDetails(), Failed: es.GetFailedConfiguration()})
		}
		if dr.GetRouteConfig() == nil {
			continue
		}
		rc := &routev3.RouteConfiguration{}
		if err := unmarshalAny(dr.GetRouteConfig(), rc, fmt.Sprintf("dynamic_route_configs[%d]", i)); err != nil {
			return issues, fmt.Errorf("config dump: %w", err)
		}
		if err := addUnique(set.Routes, rc.GetName(), rc, "route configuration"); err != nil {
			return issues, err
		}
	}
	return issues, nil
}

func decodeEndpointsDump(set *Set, d *adminv3.EndpointsConfigDump) ([]ConfigDumpIssue, error) {
	var issues []ConfigDumpIssue
	for _, s := range d.GetStaticEndpointConfigs() {
		var la endpointv3.ClusterLoadAssignment
		_ = s.GetEndpointConfig().UnmarshalTo(&la)
		issues = append(issues, ConfigDumpIssue{Kind: IssueStatic, TypeURL: s.GetEndpointConfig().GetTypeUrl(), Name: la.GetClusterName()})
	}
	for i, de := range d.GetDynamicEndpointConfigs() {
		if es := de.GetErrorState(); es != nil {
			issues = append(issues, ConfigDumpIssue{Kind: IssueErrorState, TypeURL: es.GetFailedConfiguration().GetTypeUrl(),
				Detail: es.GetDetails(), Failed: es.GetFailedConfiguration()})
		}
		if de.GetEndpointConfig() == nil {
			continue
		}
		la := &endpointv3.ClusterLoadAssignment{}
		if err := unmarshalAny(de.GetEndpointConfig(), la, fmt.Sprintf("dynamic_endpoint_configs[%d]", i)); err != nil {
			return issues, fmt.Errorf("config dump: %w", err)
		}
		if err := addUnique(set.Endpoints, la.GetClusterName(), NewAssignment(la), "cluster load assignment"); err != nil {
			return issues, err
		}
	}
	return issues, nil
}

func addUnique[T any](m map[string]T, name string, v T, kind string) error {
	if name == "" {
		return fmt.Errorf("config dump: %s without a name", kind)
	}
	if _, dup := m[name]; dup {
		return fmt.Errorf("config dump: %s %q appears twice", kind, name)
	}
	m[name] = v
	return nil
}
