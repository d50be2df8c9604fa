package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/meshlet/meshlet/pkg/accesslog"
	"github.com/meshlet/meshlet/pkg/admin"
	"github.com/meshlet/meshlet/pkg/config"
	"github.com/meshlet/meshlet/pkg/proxy"
	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/sockmap"
	"github.com/meshlet/meshlet/pkg/state"
	"github.com/meshlet/meshlet/pkg/xds"
	xdsserver "github.com/meshlet/meshlet/pkg/xds/server"
	"github.com/meshlet/meshlet/pkg/xds/store"
)

// Agent is one running node agent.
type Agent struct {
	cfg *config.Config
	log *zap.Logger

	mu        sync.Mutex
	dp        *sockmap.Datapath
	mode      Mode
	proxy     *proxy.Proxy
	started   time.Time
	proxyAddr netip.AddrPort
	xds       *xds.Client
	// dataReady closes once the proxy and the data path are in place: the
	// xDS client starts fetching before (the BPF load and the first
	// responses overlap), and its first apply waits for it.
	dataReady chan struct{}
	// alogs holds the access-log files the xDS config names.
	alogs *accesslog.Files
}

// Mode says how traffic reaches the proxy and why.
type Mode struct {
	Capture      string           `json:"capture"` // "cgroup" or "explicit"
	Acceleration string           `json:"acceleration"`
	Reason       string           `json:"reason"`
	Features     sockmap.Features `json:"kernel"`
}

// New validates the config and prepares an agent.
func New(cfg *config.Config, log *zap.Logger) *Agent {
	return &Agent{cfg: cfg, log: log}
}

func (a *Agent) reservedPorts() []uint16 {
	var ports []uint16
	for _, s := range []string{a.cfg.Proxy.Listen, a.cfg.Admin.Listen} {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			ports = append(ports, ap.Port())
		}
	}
	return ports
}

// accel turns the config's acceleration setting into data path switches.
func (a *Agent) accel(f sockmap.Features) (sockmap.Accel, string) {
	c := a.cfg.Capture
	on := sockmap.Accel{IntoProxy: c.IntoProxyOn(), IntoApp: c.IntoApp, NoForward: !c.ForwardOn()}
	switch c.Acceleration {
	case "off":
		on.Off = true
		return on, "acceleration off by config (kill switch)"
	case "on":
		return on, "acceleration on by config"
	}
	if f.Verified() {
		return on, fmt.Sprintf("acceleration on: kernel %s is in a series where the compatibility suite passed (%v)", f.Kernel, sockmap.VerifiedKernels)
	}
	on.Off = true
	return on, fmt.Sprintf("acceleration off: kernel %s is not in a verified series %v (set capture.acceleration: on to force)", f.Kernel, sockmap.VerifiedKernels)
}

// Run starts the proxy listener, attaches the data path, starts the config
// source (embedded control plane or remote) and the admin endpoint, and
// blocks until ctx ends. On return everything is detached.
func (a *Agent) Run(ctx context.Context) (err error) {
	// Fail fast on a bad inline config before touching the kernel.
	if a.cfg.XDS.Source == "embedded" && a.cfg.XDS.ResourcesFile == "" {
		set, err := a.cfg.Resources()
		if err != nil {
			return err
		}
		if _, err := state.Build(set, state.Options{ReservedPorts: a.reservedPorts()}); err != nil {
			return fmt.Errorf("config rejected: %w", err)
		}
	}
	// Access-log files outlive the proxy's last connection: closed (and
	// flushed) last.
	a.alogs = accesslog.NewFiles(a.log.Named("accesslog"))
	defer func() {
		if cerr := a.alogs.Close(); cerr != nil {
			a.log.Warn("closing access logs", zap.Error(cerr))
		}
	}()
	a.proxyAddr = a.cfg.ProxyAddr()
	lis, err := net.Listen("tcp4", a.proxyAddr.String())
	if err != nil {
		return fmt.Errorf("proxy listener: %w", err)
	}
	defer lis.Close()
	adminLis, err := net.Listen("tcp", a.cfg.Admin.Listen)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	defer adminLis.Close()

	popts := proxy.Options{Log: a.log.Named("proxy"), Orig: noCapture{}}
	if a.cfg.Proxy.AccessLog {
		popts.AccessLog = a.log.Named("access")
	}
	a.mode = Mode{Capture: "explicit", Acceleration: "off", Features: sockmap.Probe()}
	var dpOpts sockmap.Options
	if a.cfg.Capture.Cgroup != "" {
		accel, why := a.accel(a.mode.Features)
		a.mode.Acceleration, a.mode.Reason = accelName(accel), why
		dpOpts = sockmap.Options{
			Cgroup: a.cfg.Capture.Cgroup, PinPath: a.cfg.Capture.BPFFS, Proxy: a.proxyAddr,
			Accel: accel, StreamVerdict: a.cfg.Capture.StreamVerdictOn(), Logger: a.log.Named("sockmap"),
			Probe: func() sockmap.Features { return a.mode.Features },
		}
		// Bad input (cgroup, pin path, kernel) fails here, before anything
		// starts.
		if err := sockmap.Preflight(dpOpts); err != nil {
			return err
		}
	}

	// The config source starts first: fetching and decoding the first
	// configuration overlaps with loading the BPF programs below.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.dataReady = make(chan struct{})
	client, serveErr, err := a.startConfigSource(ctx)
	if err != nil {
		return err
	}
	a.xds = client
	clientDone := make(chan error, 1)
	go func() { clientDone <- client.Run(ctx) }()
	// stopClient ends the client and waits for it: it runs before the data
	// path is detached, so no apply can race with the detach.
	stopClient := sync.OnceValue(func() error {
		cancel()
		if cerr := <-clientDone; cerr != nil {
			return fmt.Errorf("xds client: %w", cerr)
		}
		return nil
	})
	defer func() {
		if cerr := stopClient(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	if a.cfg.Capture.Cgroup == "" {
		a.mode.Reason = "no cgroup configured: applications must dial the proxy explicitly"
		a.log.Warn("capture disabled", zap.String("reason", a.mode.Reason))
	} else {
		dp, err := sockmap.Load(dpOpts)
		if err != nil {
			return err
		}
		defer func() {
			if cerr := stopClient(); cerr != nil && err == nil {
				err = cerr
			}
			if cerr := dp.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}()
		a.dp = dp
		a.mode.Capture = "cgroup"
		a.mode.Features = dp.Features()
		popts.Orig = origAdapter{dp}
		popts.DialControl = dp.DialControl
		popts.AccelUpstream = a.cfg.Capture.UpstreamOn() && !dpOpts.Accel.Off
		popts.Forwarder = forwarder{dp}
		a.log.Info("data path mode", zap.String("capture", a.mode.Capture), zap.String("acceleration", a.mode.Acceleration), zap.String("reason", a.mode.Reason))
	}

	if a.cfg.XDS.OnDemand {
		popts.OnDemand = client.WantCluster
	}
	a.proxy = proxy.New(popts)
	a.started = time.Now()
	close(a.dataReady)

	srv := &http.Server{Handler: a.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(adminLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("admin server stopped", zap.Error(err))
		}
	}()
	defer srv.Close()

	a.log.Info("node agent running", zap.Stringer("proxy", a.proxyAddr), zap.String("admin", a.cfg.Admin.Listen),
		zap.String("xds_source", a.cfg.XDS.Source), zap.String("xds_address", a.xdsAddress()))

	proxyDone := make(chan error, 1)
	go func() { proxyDone <- a.proxy.Serve(ctx, lis) }()
	select {
	case err = <-proxyDone:
		cancel()
	case err = <-serveErr:
		cancel()
		<-proxyDone
		if err != nil {
			err = fmt.Errorf("embedded control plane: %w", err)
		}
	case <-ctx.Done():
		err = <-proxyDone
	}
	return err
}

func (a *Agent) xdsAddress() string {
	if a.cfg.XDS.Source == "remote" {
		return a.cfg.XDS.Address
	}
	return a.cfg.XDS.EmbeddedListen
}

// startConfigSource starts the embedded control plane when configured and
// returns the xDS client (not yet running) that feeds the agent.
func (a *Agent) startConfigSource(ctx context.Context) (*xds.Client, <-chan error, error) {
	serveErr := make(chan error, 1)
	x := a.cfg.XDS
	if x.Source == "embedded" {
		srv, err := xdsserver.New(xdsserver.Options{ConfigPath: x.ResourcesFile, Logger: a.log.Named("xds-server")})
		if err != nil {
			return nil, nil, fmt.Errorf("embedded control plane: %w", err)
		}
		if x.ResourcesFile == "" {
			set, err := a.cfg.Resources()
			if err != nil {
				return nil, nil, err
			}
			if err := srv.SetResources(ctx, set); err != nil {
				return nil, nil, fmt.Errorf("embedded control plane: %w", err)
			}
		}
		lis, err := xdsserver.Listen(x.EmbeddedListen)
		if err != nil {
			return nil, nil, fmt.Errorf("embedded control plane listener: %w", err)
		}
		go func() { serveErr <- srv.Serve(ctx, lis) }()
	}
	node, err := a.node()
	if err != nil {
		return nil, nil, err
	}
	cfg := xds.Config{
		Address: a.xdsAddress(), Node: node, Delta: x.Delta, OnDemand: x.OnDemand,
		TokenFile: x.TokenFile, Logger: a.log.Named("xds"), MaxRecvMsgSize: x.MaxMessageBytes,
	}
	if x.CAFile != "" {
		cfg.TLS = &xds.TLSConfig{CAFile: x.CAFile, ServerName: x.ServerName}
	}
	if x.Istio != nil {
		cfg.ClusterID = x.Istio.ClusterID
	}
	if x.StateDir != "" {
		st, err := store.New(filepath.Join(x.StateDir, "xds-snapshot.json"), a.log.Named("xds-store"))
		if err != nil {
			return nil, nil, fmt.Errorf("config store: %w", err)
		}
		cfg.Persister = st
	}
	client, err := xds.NewClient(cfg, xds.ApplierFunc(a.applySet))
	if err != nil {
		return nil, nil, err
	}
	return client, serveErr, nil
}

// node is the identity the agent presents to its control plane.
func (a *Agent) node() (*corev3.Node, error) {
	x := a.cfg.XDS
	if i := x.Istio; i != nil {
		return xds.IstioIdentity{
			PodIP: i.PodIP, PodName: i.PodName, Namespace: i.Namespace, ClusterID: i.ClusterID,
			ServiceAccount: i.ServiceAccount, NodeName: i.NodeName, IstioVersion: i.IstioVersion,
			InterceptionMode: "REDIRECT",
		}.Node()
	}
	id := x.NodeID
	if id == "" {
		host, _ := os.Hostname()
		id = "meshlet~" + host
	}
	return xds.NewNode(id, x.Cluster, nil), nil
}

// applySet is the xDS Applier: a Set that does not translate is rejected
// (the client NACKs it and the previous config stays in force).
func (a *Agent) applySet(ctx context.Context, set *resources.Set) error {
	select {
	case <-a.dataReady:
	case <-ctx.Done():
		return fmt.Errorf("not applied: %w", ctx.Err())
	}
	t0 := time.Now()
	snap, err := state.Build(set, state.Options{ReservedPorts: a.reservedPorts(), Previous: a.proxy.Snapshot(), AccessLogFiles: a.alogs})
	if err != nil {
		return err
	}
	built := time.Now()
	for _, is := range snap.Issues {
		a.log.Debug("config not fully honoured", zap.String("type", is.Type), zap.String("name", is.Name), zap.String("reason", is.Reason))
	}
	if err := a.proxy.Check(snap); err != nil {
		return err
	}
	if err := a.apply(snap); err != nil {
		return err
	}
	a.log.Info("config applied", zap.String("version", snap.Version), zap.Int("captures", len(snap.Captures)),
		zap.Int("clusters", len(snap.Clusters)), zap.Int("issues", len(snap.Issues)),
		zap.Duration("translate", built.Sub(t0)), zap.Duration("install", time.Since(built)))
	return nil
}

// apply swaps in a new snapshot. The proxy gets it first, so a capture entry
// added now is routable by the time a connection uses it; entries removed
// stop capturing right after.
func (a *Agent) apply(snap *state.Snapshot) error {
	prev := a.proxy.Snapshot()
	a.proxy.Update(snap)
	if a.dp == nil {
		return nil
	}
	svcs := make([]sockmap.Service, 0, len(snap.Captures))
	for _, c := range snap.Captures {
		// A stable ID per listener: a change rewrites only what changed.
		h := fnv.New32a()
		h.Write([]byte(c.Listener))
		svcs = append(svcs, sockmap.Service{Addr: c.Addr, Port: c.Port, ID: h.Sum32() | 1})
	}
	if err := a.dp.SyncServices(svcs); err != nil {
		a.proxy.Update(prev)
		return fmt.Errorf("sync capture table: %w", err)
	}
	return nil
}

func accelName(a sockmap.Accel) string {
	if a.Off {
		return "off"
	}
	var parts []string
	if a.IntoProxy {
		parts = append(parts, "into proxy")
	}
	if a.IntoApp {
		parts = append(parts, "into app")
	}
	if a.IntoApp && !a.NoForward {
		parts = append(parts, "kernel forwarding")
	}
	if len(parts) == 0 {
		return "off"
	}
	return "on (" + strings.Join(parts, ", ") + ")"
}

type forwarder struct{ dp *sockmap.Datapath }

var errNoForwarding = errors.New("kernel forwarding is off (it needs acceleration on with into_app)")

// Forward sets kernel forwarding up when the directions in force allow it:
// it delivers into application sockets' receive queues, so it comes with
// the into_app direction.
func (f forwarder) Forward(from, via proxy.Tuple) (proxy.Forwarding, error) {
	if a := f.dp.Accel(); a.Off || a.NoForward || !a.IntoApp {
		return nil, errNoForwarding
	}
	return f.dp.Forward(sockmap.Tuple(from), sockmap.Tuple(via))
}

type noCapture struct{}

func (noCapture) OriginalDst(netip.AddrPort) (netip.AddrPort, bool, error) {
	return netip.AddrPort{}, false, nil
}

type origAdapter struct{ dp *sockmap.Datapath }

func (o origAdapter) OriginalDst(app netip.AddrPort) (netip.AddrPort, bool, error) {
	orig, ok, err := o.dp.OriginalDst(app)
	return orig.Dst, ok, err
}

// Status is what `node-agent status` prints.
type Status struct {
	Mode        Mode            `json:"mode"`
	Uptime      string          `json:"uptime"`
	Cgroup      string          `json:"cgroup,omitempty"`
	PinPath     string          `json:"pin_path,omitempty"`
	Attachments []string        `json:"attachments,omitempty"`
	Proxy       string          `json:"proxy_listen"`
	Services    []string        `json:"services"`
	BPF         *sockmap.Stats  `json:"bpf_counters,omitempty"`
	ProxyStats  proxy.StatsView `json:"proxy_counters"`
	Config      ConfigStatus    `json:"config"`
	XDS         *xds.Status     `json:"xds,omitempty"`
}

// ConfigStatus describes the config in force.
type ConfigStatus struct {
	Version  string        `json:"version"`
	Source   string        `json:"source"`
	Clusters int           `json:"clusters"`
	Issues   []state.Issue `json:"issues,omitempty"`
}

func (a *Agent) status() Status {
	a.mu.Lock()
	mode := a.mode
	a.mu.Unlock()
	st := Status{Mode: mode, Uptime: time.Since(a.started).Round(time.Second).String(), Proxy: a.proxyAddr.String()}
	snap := a.proxy.Snapshot()
	if a.xds != nil {
		xs := a.xds.Status()
		st.XDS = &xs
	}
	if snap != nil {
		st.Config = ConfigStatus{Version: snap.Version, Clusters: len(snap.Clusters), Issues: snap.Issues}
		if st.XDS != nil {
			st.Config.Source = string(st.XDS.Source)
		}
		for _, c := range snap.Captures {
			addr := "*"
			if c.Addr.IsValid() {
				addr = c.Addr.String()
			}
			st.Services = append(st.Services, fmt.Sprintf("%s:%d -> listener %s", addr, c.Port, c.Listener))
		}
	}
	if a.dp != nil {
		st.Cgroup = a.dp.Cgroup()
		st.PinPath = a.dp.PinPath()
		st.Attachments = a.dp.Attachments()
		if s, err := a.dp.Stats(); err == nil {
			st.BPF = &s
		}
	}
	st.ProxyStats = a.proxy.Stats()
	return st
}

// adminSource is what the admin endpoint shows: the xDS client's
// configuration and the issues of the snapshot the proxy runs.
type adminSource struct{ a *Agent }

func (s adminSource) Current() xds.Current { return s.a.xds.Current() }

func (s adminSource) Translation() admin.Translation {
	snap := s.a.proxy.Snapshot()
	if snap == nil {
		return admin.Translation{}
	}
	return admin.Translation{Version: snap.Version, Issues: snap.Issues}
}

func (a *Agent) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(a.status())
	})
	// Envoy-shaped /config_dump and /ready come from the xDS admin handler.
	xa := admin.New(adminSource{a}, a.log.Named("admin"), nil)
	mux.Handle("GET /config_dump", xa)
	mux.Handle("GET /ready", xa)
	mux.HandleFunc("POST /acceleration", func(w http.ResponseWriter, r *http.Request) {
		if a.dp == nil {
			http.Error(w, "no data path: capture is not enabled", http.StatusConflict)
			return
		}
		acc := a.dp.Accel()
		before := acc
		for name, dst := range map[string]*bool{"into_app": &acc.IntoApp, "forward": &acc.NoForward} {
			v := r.URL.Query().Get(name)
			if v == "" {
				continue
			}
			b, err := strconv.ParseBool(v)
			if err != nil {
				http.Error(w, fmt.Sprintf("%s %q: want true or false", name, v), http.StatusBadRequest)
				return
			}
			if name == "forward" {
				b = !b // stored as NoForward
			}
			*dst = b
		}
		switch m := r.URL.Query().Get("mode"); m {
		case "off":
			acc.Off = true
		case "on":
			acc.Off = false
		default:
			http.Error(w, fmt.Sprintf("mode %q: want on or off", m), http.StatusBadRequest)
			return
		}
		if err := a.dp.SetAccel(acc); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if before.IntoApp != acc.IntoApp {
			// A socket keeps the sk_msg program it entered the sockhash
			// with: pooled upstream connections made before the switch
			// would stay as they were (and once sent through TCP, a
			// connection must stay there). New ones take the new mode.
			a.proxy.RenewUpstreams()
		}
		a.mu.Lock()
		a.mode.Acceleration = accelName(acc)
		a.mode.Reason = "set through the admin endpoint"
		a.mu.Unlock()
		a.log.Info("acceleration switched", zap.String("acceleration", a.mode.Acceleration))
		fmt.Fprintln(w, "acceleration", a.mode.Acceleration)
	})
	// Envoy's /clusters: limits, in-flight counts and each endpoint's
	// health (active health checks, outlier ejections).
	mux.HandleFunc("GET /clusters", func(w http.ResponseWriter, r *http.Request) {
		snap := a.proxy.Snapshot()
		if snap == nil {
			http.Error(w, "no config yet", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_ = snap.WriteClusters(w)
	})
	// Envoy's /reopen_logs: after logrotate moved the access-log files,
	// write to new ones at the same paths.
	mux.HandleFunc("POST /reopen_logs", func(w http.ResponseWriter, r *http.Request) {
		if err := a.alogs.Reopen(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "OK")
	})
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}
