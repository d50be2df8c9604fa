package admin

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/state"
	"github.com/meshlet/meshlet/pkg/xds"
)

// ConfigSource is where the handler gets the configuration in force and
// what the agent made of it. The agent implements it over its xDS client
// (Current) and the snapshot its proxy runs (Translation).
type ConfigSource interface {
	// Current is the configuration in force, as *xds.Client.Current.
	Current() xds.Current
	// Translation is what of that configuration the agent does not
	// honour; the zero Translation before anything was applied.
	Translation() Translation
}

// Translation is the outcome of translating the configuration in force
// into the agent's runtime state.
type Translation struct {
	// Version is the version of the Set the issues were found in
	// (state.Snapshot.Version).
	Version string
	// Issues is state.Snapshot.Issues: what the agent accepted but does not
	// honour (ignored filters, listeners not captured, ...).
	Issues []state.Issue
}

// IssuesKey is the key of the google.protobuf.Struct entry of /config_dump's
// configs list that carries the translation issues; the Struct also has a
// "version_info" string.
const IssuesKey = "meshlet_translation_issues"

// IssuesTypeURL is the type URL of that entry.
const IssuesTypeURL = "type.googleapis.com/google.protobuf.Struct"

// StatusHook returns extra status to merge into /status under its name.
type StatusHook func() any

// Handler serves the admin endpoints. Create it with New; mount it on an
// http.Server. Add endpoints with Handle.
type Handler struct {
	src   ConfigSource
	log   *zap.Logger
	mux   *http.ServeMux
	hooks map[string]StatusHook
}

// New returns a Handler for src. hooks add named sections to /status.
func New(src ConfigSource, log *zap.Logger, hooks map[string]StatusHook) *Handler {
	if log == nil {
		log = zap.NewNop()
	}
	h := &Handler{src: src, log: log, mux: http.NewServeMux(), hooks: hooks}
	h.mux.HandleFunc("GET /config_dump", h.configDump)
	h.mux.HandleFunc("GET /ready", h.ready)
	h.mux.HandleFunc("GET /status", h.status)
	return h
}

// Handle mounts another endpoint on the admin mux.
func (h *Handler) Handle(pattern string, handler http.Handler) { h.mux.Handle(pattern, handler) }

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) ready(w http.ResponseWriter, _ *http.Request) {
	cur := h.src.Current()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !cur.Status.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "PRE_INITIALIZING: no configuration in force yet")
		return
	}
	fmt.Fprintf(w, "LIVE (source %s)\n", cur.Status.Source)
}

type statusDoc struct {
	XDS    xds.Status     `json:"xds"`
	Nacks  []nackDoc      `json:"nacks,omitempty"`
	Issues []state.Issue  `json:"issues,omitempty"`
	Extra  map[string]any `json:"extra,omitempty"`
}

type nackDoc struct {
	Type    string    `json:"type"`
	Name    string    `json:"name,omitempty"`
	Version string    `json:"version"`
	Detail  string    `json:"detail"`
	Time    time.Time `json:"time"`
}

func (h *Handler) status(w http.ResponseWriter, _ *http.Request) {
	cur := h.src.Current()
	doc := statusDoc{XDS: cur.Status, Issues: h.src.Translation().Issues}
	for _, n := range cur.Nacks {
		doc.Nacks = append(doc.Nacks, nackDoc{Type: n.TypeURL, Name: n.Name, Version: n.Version, Detail: n.Detail, Time: n.Time})
	}
	if len(h.hooks) > 0 {
		doc.Extra = map[string]any{}
		for name, hook := range h.hooks {
			doc.Extra[name] = hook()
		}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil {
		h.log.Warn("admin: write /status", zap.Error(err))
	}
}

func (h *Handler) configDump(w http.ResponseWriter, r *http.Request) {
	_, includeEDS := r.URL.Query()["include_eds"]
	cd, err := BuildConfigDump(h.src.Current(), h.src.Translation(), includeEDS)
	if err != nil {
		h.log.Error("admin: build config dump", zap.Error(err))
		http.Error(w, "config dump: "+err.Error(), http.StatusInternalServerError)
		return
	}
	js, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true, Resolver: resources.NewTolerantResolver()}.Marshal(cd)
	if err != nil {
		h.log.Error("admin: marshal config dump", zap.Error(err))
		http.Error(w, "config dump: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(js)
}

// BuildConfigDump renders cur as envoy.admin.v3.ConfigDump: listeners,
// clusters, routes and (with includeEDS, as in Envoy) endpoints, each with
// version_info and last_updated, and the rejected configuration of standing
// NACKs as error_state. The last entry of configs is a
// google.protobuf.Struct with tr's issues under IssuesKey (always present,
// an empty list when there are none).
func BuildConfigDump(cur xds.Current, tr Translation, includeEDS bool) (*adminv3.ConfigDump, error) {
	set := cur.Set
	if set == nil {
		set = resources.New()
	}
	nacks := map[string]map[string]xds.NackError{}
	for _, n := range cur.Nacks {
		if nacks[n.TypeURL] == nil {
			nacks[n.TypeURL] = map[string]xds.NackError{}
		}
		nacks[n.TypeURL][n.Name] = n
	}
	meta := func(url, name string) (string, *timestamppb.Timestamp) {
		m := cur.Meta[url][name]
		var ts *timestamppb.Timestamp
		if !m.LastUpdated.IsZero() {
			ts = timestamppb.New(m.LastUpdated)
		}
		return m.Version, ts
	}
	errState := func(url, name string) *adminv3.UpdateFailureState {
		n, ok := nacks[url][name]
		if !ok {
			return nil
		}
		delete(nacks[url], name)
		return failure(n)
	}
	typeVersion := func(url string) string { return cur.Status.Types[url].Version }
	wrap := func(m proto.Message) (*anypb.Any, error) { return anypb.New(m) }

	out := &adminv3.ConfigDump{}
	add := func(m proto.Message) error {
		a, err := anypb.New(m)
		if err != nil {
			return err
		}
		out.Configs = append(out.Configs, a)
		return nil
	}

	// Clusters.
	cds := &adminv3.ClustersConfigDump{VersionInfo: typeVersion(xds.ClusterType)}
	for _, n := range slices.Sorted(maps.Keys(set.Clusters)) {
		a, err := wrap(set.Clusters[n])
		if err != nil {
			return nil, err
		}
		v, t := meta(xds.ClusterType, n)
		cds.DynamicActiveClusters = append(cds.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{
			VersionInfo: v, Cluster: a, LastUpdated: t, ErrorState: errState(xds.ClusterType, n)})
	}
	for _, n := range leftovers(nacks[xds.ClusterType]) {
		cds.DynamicActiveClusters = append(cds.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{ErrorState: failure(nacks[xds.ClusterType][n])})
	}
	if err := add(cds); err != nil {
		return nil, err
	}

	if includeEDS {
		eds := &adminv3.EndpointsConfigDump{}
		for _, n := range slices.Sorted(maps.Keys(set.Endpoints)) {
			// The wire form as held: a compact assignment is not decoded.
			w, err := set.Endpoints[n].Wire()
			if err != nil {
				return nil, err
			}
			a := &anypb.Any{TypeUrl: xds.EndpointType, Value: w}
			v, t := meta(xds.EndpointType, n)
			eds.DynamicEndpointConfigs = append(eds.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{
				VersionInfo: v, EndpointConfig: a, LastUpdated: t, ErrorState: errState(xds.EndpointType, n)})
		}
		for _, n := range leftovers(nacks[xds.EndpointType]) {
			eds.DynamicEndpointConfigs = append(eds.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{ErrorState: failure(nacks[xds.EndpointType][n])})
		}
		if err := add(eds); err != nil {
			return nil, err
		}
	}

	// Listeners.
	lds := &adminv3.ListenersConfigDump{VersionInfo: typeVersion(xds.ListenerType)}
	for _, n := range slices.Sorted(maps.Keys(set.Listeners)) {
		a, err := wrap(set.Listeners[n])
		if err != nil {
			return nil, err
		}
		v, t := meta(xds.ListenerType, n)
		lds.DynamicListeners = append(lds.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
			Name:        n,
			ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: v, Listener: a, LastUpdated: t},
			ErrorState:  errState(xds.ListenerType, n),
		})
	}
	for _, n := range leftovers(nacks[xds.ListenerType]) {
		lds.DynamicListeners = append(lds.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{Name: n, ErrorState: failure(nacks[xds.ListenerType][n])})
	}
	if err := add(lds); err != nil {
		return nil, err
	}

	// Routes.
	rds := &adminv3.RoutesConfigDump{}
	for _, n := range slices.Sorted(maps.Keys(set.Routes)) {
		a, err := wrap(set.Routes[n])
		if err != nil {
			return nil, err
		}
		v, t := meta(xds.RouteType, n)
		rds.DynamicRouteConfigs = append(rds.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{
			VersionInfo: v, RouteConfig: a, LastUpdated: t, ErrorState: errState(xds.RouteType, n)})
	}
	for _, n := range leftovers(nacks[xds.RouteType]) {
		rds.DynamicRouteConfigs = append(rds.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{ErrorState: failure(nacks[xds.RouteType][n])})
	}
	if err := add(rds); err != nil {
		return nil, err
	}

	// Translation issues: accepted configuration the agent does not honour.
	is, err := issuesStruct(tr)
	if err != nil {
		return nil, err
	}
	if err := add(is); err != nil {
		return nil, err
	}
	return out, nil
}

// issuesStruct is the configs entry for tr:
// {"meshlet_translation_issues": [{"type","name","reason"}...], "version_info": "..."}.
func issuesStruct(tr Translation) (*structpb.Struct, error) {
	list := make([]any, 0, len(tr.Issues))
	for _, is := range tr.Issues {
		list = append(list, map[string]any{"type": is.Type, "name": is.Name, "reason": is.Reason})
	}
	s, err := structpb.NewStruct(map[string]any{IssuesKey: list, "version_info": tr.Version})
	if err != nil {
		return nil, fmt.Errorf("translation issues: %w", err)
	}
	return s, nil
}

// IssuesFromConfigDump returns the translation issues of a dump built by
// BuildConfigDump, and false when the dump has no such entry.
func IssuesFromConfigDump(cd *adminv3.ConfigDump) (Translation, bool, error) {
	for _, c := range cd.GetConfigs() {
		if c.GetTypeUrl() != IssuesTypeURL {
			continue
		}
		var s structpb.Struct
		if err := c.UnmarshalTo(&s); err != nil {
			return Translation{}, false, fmt.Errorf("config dump: %s entry: %w", IssuesKey, err)
		}
		list, ok := s.GetFields()[IssuesKey]
		if !ok {
			continue // some other Struct entry
		}
		if list.GetListValue() == nil {
			return Translation{}, false, fmt.Errorf("config dump: %s is not a list", IssuesKey)
		}
		tr := Translation{Version: s.GetFields()["version_info"].GetStringValue(), Issues: []state.Issue{}}
		for i, v := range list.GetListValue().GetValues() {
			f := v.GetStructValue().GetFields()
			if f == nil {
				return Translation{}, false, fmt.Errorf("config dump: %s[%d] is not an object", IssuesKey, i)
			}
			tr.Issues = append(tr.Issues, state.Issue{Type: f["type"].GetStringValue(), Name: f["name"].GetStringValue(), Reason: f["reason"].GetStringValue()})
		}
		return tr, true, nil
	}
	return Translation{}, false, nil
}

func failure(n xds.NackError) *adminv3.UpdateFailureState {
	return &adminv3.UpdateFailureState{
		FailedConfiguration: n.Failed,
		LastUpdateAttempt:   timestamppb.New(n.Time),
		Details:             n.Detail,
		VersionInfo:         n.Version,
	}
}

func leftovers(m map[string]xds.NackError) []string { return slices.Sorted(maps.Keys(m)) }
