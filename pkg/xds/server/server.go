package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds/validate"
)

// Defaults.
const (
	DefaultPollInterval = time.Second
	DefaultMaxMsgSize   = 64 << 20
	// MaxFileSize bounds the resources file the server reads.
	MaxFileSize = 512 << 20
)

// Options configures a Server.
type Options struct {
	// ConfigPath is the resources file to serve and watch. Empty: serve
	// what SetResources sets (nothing until then).
	ConfigPath string
	// PollInterval is how often the file's size, mtime and content hash
	// are checked (default 1s).
	PollInterval time.Duration
	// MaxMsgSize bounds messages in both directions (default 64 MiB).
	MaxMsgSize int
	// SkipValidation serves resources that fail protoc-gen-validate rules
	// (clients will NACK them). By default such a file is rejected.
	SkipValidation bool
	// Callbacks, when set, observe the xDS streams (requests, NACKs,
	// responses).
	Callbacks serverv3.Callbacks
	// Logger (default: no-op).
	Logger *zap.Logger
}

// Server is an embedded xDS control plane.
type Server struct {
	opts  Options
	log   *zap.Logger
	cache cachev3.SnapshotCache

	mu       sync.Mutex
	current  *resources.Set
	snap     *snapshot
	version  string
	lastErr  error
	fileStat fileState
	// decoded keeps the resources of the last file for reuse on reload.
	decoded *decodeCache
}

type fileState struct {
	size  int64
	mtime time.Time
	hash  [32]byte
}

// allNodes serves one snapshot to every node.
type allNodes struct{}

func (allNodes) ID(*corev3.Node) string { return "" }

// New creates a server. With a ConfigPath, the file is loaded now and an
// unreadable or invalid file is an error.
func New(opts Options) (*Server, error) {
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.MaxMsgSize <= 0 {
		opts.MaxMsgSize = DefaultMaxMsgSize
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	s := &Server{opts: opts, log: opts.Logger.Named("xds-server"), decoded: newDecodeCache()}
	// ads=false: answer named requests with the resources that exist
	// instead of holding the response until all of them do.
	s.cache = cachev3.NewSnapshotCache(false, allNodes{}, s.log.Sugar())
	if opts.ConfigPath != "" {
		if _, err := s.reload(context.Background()); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// LoadFile reads a resources file: Envoy bootstrap static_resources shape
// (YAML or JSON) or an Envoy admin /config_dump (JSON or YAML with a
// top-level "configs" list).
func LoadFile(path string) (*resources.Set, []resources.ConfigDumpIssue, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, nil, err
	}
	return Decode(data)
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read resources file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read resources file: %w", err)
	}
	if st.Size() > MaxFileSize {
		return nil, fmt.Errorf("resources file %s is %d bytes, over the %d-byte limit", path, st.Size(), MaxFileSize)
	}
	var buf bytes.Buffer
	buf.Grow(int(st.Size()) + bytes.MinRead) // no regrowth for a file that keeps its size
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, fmt.Errorf("read resources file %s: %w", path, err)
	}
	return buf.Bytes(), nil
}

// Decode detects the shape of data and decodes it.
func Decode(data []byte) (*resources.Set, []resources.ConfigDumpIssue, error) {
	// JSON is YAML, but the YAML parser is slow on large files (seconds
	// for tens of MB): convert only what is not JSON already.
	js := data
	if !json.Valid(data) {
		var err error
		if js, err = yaml.YAMLToJSON(data); err != nil {
			return nil, nil, fmt.Errorf("resources: not YAML or JSON: %w", err)
		}
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil {
		return nil, nil, fmt.Errorf("resources: top level is not an object: %w", err)
	}
	if _, ok := top["configs"]; ok {
		set, issues, err := resources.DecodeConfigDump(js)
		if err != nil {
			return nil, issues, err
		}
		return set, issues, nil
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		return nil, nil, fmt.Errorf("envoy v3 bootstrap: %w", err)
	}
	set, err := resources.FromBootstrap(&b)
	return set, nil, err
}

// decodeFile is Decode, reusing the messages of resources whose JSON text
// is unchanged since the previous file when the file is a plain bootstrap
// JSON document.
func (s *Server) decodeFile(data []byte) (*resources.Set, []resources.ConfigDumpIssue, error) {
	if set, handled, err := s.decoded.decode(data); handled {
		return set, nil, err
	}
	return Decode(data)
}

// Check validates every resource of set (protoc-gen-validate rules,
// including nested Any payloads) and returns the first failure.
func Check(set *resources.Set) error {
	for _, n := range slices.Sorted(maps.Keys(set.Listeners)) {
		if err := validate.Resource(set.Listeners[n]); err != nil {
			return fmt.Errorf("listener %q: %w", n, err)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(set.Routes)) {
		if err := validate.Resource(set.Routes[n]); err != nil {
			return fmt.Errorf("route configuration %q: %w", n, err)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(set.Clusters)) {
		if err := validate.Resource(set.Clusters[n]); err != nil {
			return fmt.Errorf("cluster %q: %w", n, err)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(set.Endpoints)) {
		m, err := set.Endpoints[n].Message()
		if err == nil {
			err = validate.Resource(m)
		}
		if err != nil {
			return fmt.Errorf("endpoints %q: %w", n, err)
		}
	}
	return nil
}

// SetResources serves set from now on (after validation unless
// SkipValidation). The server keeps the messages: neither set nor its
// messages may be modified afterwards. Pass new messages for resources that
// change; a resource given as the very same message as in the Set served
// before is taken as unchanged (it is not serialised, hashed or validated
// again), which makes a small change to a large Set cheap.
func (s *Server) SetResources(ctx context.Context, set *resources.Set) error {
	if set == nil {
		return errors.New("xds server: nil resource set")
	}
	if err := checkNames(set); err != nil {
		return fmt.Errorf("xds server: %w", err)
	}
	s.mu.Lock()
	prev := s.snap
	s.mu.Unlock()
	snap, filled, err := newSnapshot(set, prev)
	if err != nil {
		return fmt.Errorf("xds server: %w", err)
	}
	if !s.opts.SkipValidation {
		// Resources unchanged since the snapshot being served were
		// validated then.
		if err := checkChanged(snap, prev); err != nil {
			return fmt.Errorf("xds server: invalid resources: %w", err)
		}
	}
	if err := s.cache.SetSnapshot(ctx, "", snap); err != nil {
		return fmt.Errorf("xds server: set snapshot: %w", err)
	}
	s.mu.Lock()
	s.current, s.version, s.snap = set, snap.version(), snap
	s.mu.Unlock()
	s.log.Info("serving resources", zap.String("version", snap.version()),
		zap.Int("listeners", len(set.Listeners)), zap.Int("routes", len(set.Routes)),
		zap.Int("clusters", len(set.Clusters)), zap.Int("endpoints", len(set.Endpoints)),
		zap.Int("empty_endpoints_added", filled))
	return nil
}

// Current returns the Set being served and its version ("" before any).
func (s *Server) Current() (*resources.Set, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current, s.version
}

// LastError is the last file error (nil once a later read succeeded).
func (s *Server) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// reload reads the file if it changed; it reports whether a new snapshot is
// being served.
func (s *Server) reload(ctx context.Context) (bool, error) {
	path := s.opts.ConfigPath
	st, err := os.Stat(path)
	if err != nil {
		return false, s.fail(fmt.Errorf("xds server: resources file: %w", err))
	}
	s.mu.Lock()
	prev, serving := s.fileStat, s.version != ""
	s.mu.Unlock()
	if serving && st.Size() == prev.size && st.ModTime().Equal(prev.mtime) {
		return false, nil
	}
	data, err := readBounded(path)
	if err != nil {
		return false, s.fail(fmt.Errorf("xds server: %w", err))
	}
	sum := sha256.Sum256(data)
	s.mu.Lock()
	same := sum == s.fileStat.hash && (serving || s.lastErr != nil)
	s.fileStat = fileState{size: st.Size(), mtime: st.ModTime(), hash: sum}
	s.mu.Unlock()
	if same {
		return false, nil
	}
	set, issues, err := s.decodeFile(data)
	if err != nil {
		// Remember the hash so that the same broken content is reported
		// once, and keep serving the previous snapshot.
		return false, s.fail(fmt.Errorf("xds server: %s: %w (still serving the previous resources)", path, err))
	}
	for _, is := range issues {
		if is.Kind == resources.IssueDroppedPayload || is.Kind == resources.IssueErrorState {
			s.log.Warn("config dump issue", zap.String("file", path), zap.String("issue", is.String()))
		}
	}
	if err := s.SetResources(ctx, set); err != nil {
		return false, s.fail(fmt.Errorf("%w (file %s; still serving the previous resources)", err, path))
	}
	s.mu.Lock()
	s.lastErr = nil
	s.mu.Unlock()
	return true, nil
}

func (s *Server) fail(err error) error {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
	s.log.Error("resources file rejected", zap.Error(err))
	return err
}

// Serve serves ADS (SotW and delta) on lis until ctx is done, polling the
// resources file. It closes lis.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	xds := serverv3.NewServer(ctx, s.cache, s.callbacks())
	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(s.opts.MaxMsgSize),
		grpc.MaxSendMsgSize(s.opts.MaxMsgSize),
		// Stop returns only once every stream handler has returned (and
		// its stream-closed callback has run): nothing of the server
		// outlives Serve.
		grpc.WaitForHandlers(true),
	)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, xds)

	var wg sync.WaitGroup
	if s.opts.ConfigPath != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(s.opts.PollInterval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					_, _ = s.reload(ctx) // logged in reload
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		gs.Stop()
	}()
	s.log.Info("xds server listening", zap.String("address", lis.Addr().String()))
	err := gs.Serve(lis)
	cancel()
	wg.Wait()
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("xds server: serve %s: %w", lis.Addr(), err)
	}
	return nil
}

func (s *Server) callbacks() serverv3.Callbacks {
	user := s.opts.Callbacks
	log := s.log
	return &nackLogger{Callbacks: user, log: log}
}

// Listen opens addr: "unix:///path" (or "unix:path") for a unix socket
// (a stale socket file is removed), otherwise a TCP host:port.
func Listen(addr string) (net.Listener, error) {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		return listenUnix(p)
	}
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return listenUnix(p)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("xds server: listen on %s: %w", addr, err)
	}
	return lis, nil
}

func listenUnix(path string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("xds server: remove stale socket %s: %w", path, err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("xds server: listen on unix socket %s: %w", path, err)
	}
	return lis, nil
}

// ListenAndServe is New + Listen + Serve.
func ListenAndServe(ctx context.Context, addr string, opts Options) error {
	s, err := New(opts)
	if err != nil {
		return err
	}
	lis, err := Listen(addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, lis)
}

// checkNames verifies that every resource is keyed by its own name.
func checkNames(set *resources.Set) error {
	for k, v := range set.Listeners {
		if k != v.GetName() {
			return fmt.Errorf("listener keyed %q is named %q", k, v.GetName())
		}
	}
	for k, v := range set.Routes {
		if k != v.GetName() {
			return fmt.Errorf("route configuration keyed %q is named %q", k, v.GetName())
		}
	}
	for k, v := range set.Clusters {
		if k != v.GetName() {
			return fmt.Errorf("cluster keyed %q is named %q", k, v.GetName())
		}
	}
	for k, v := range set.Endpoints {
		if v.ClusterName() != "" && k != v.ClusterName() {
			return fmt.Errorf("endpoints keyed %q are for cluster_name %q", k, v.ClusterName())
		}
	}
	return nil
}

var typeNames = map[string]string{
	resourcev3.ListenerType: "listener",
	resourcev3.RouteType:    "route configuration",
	resourcev3.ClusterType:  "cluster",
	resourcev3.EndpointType: "endpoints",
}

// checkChanged validates the resources of snap that differ from prev (all
// of them when prev is nil), in a stable order.
func checkChanged(snap, prev *snapshot) error {
	for _, t := range servedTypes {
		ts := snap.types[t]
		var pv map[string]string
		if prev != nil {
			if prev.types[t] == ts {
				continue // the very same resources
			}
			pv = prev.types[t].versions
		}
		var changed []string
		for n, v := range ts.versions {
			if pv == nil || pv[n] != v {
				changed = append(changed, n)
			}
		}
		sortStrings(changed)
		for _, n := range changed {
			if err := validate.Resource(ts.plain[n]); err != nil {
				return fmt.Errorf("%s %q: %w", typeNames[t], n, err)
			}
		}
	}
	return nil
}
