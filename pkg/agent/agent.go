package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/meshlet/meshlet/pkg/config"
	"github.com/meshlet/meshlet/pkg/proxy"
	"github.com/meshlet/meshlet/pkg/sockmap"
	"github.com/meshlet/meshlet/pkg/state"
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

// Run starts the proxy listener, attaches the data path, serves the admin
// endpoint, and blocks until ctx ends. On return everything is detached.
func (a *Agent) Run(ctx context.Context) (err error) {
	set, err := a.cfg.Resources()
	if err != nil {
		return err
	}
	snap, err := state.Build(set, state.Options{ReservedPorts: a.reservedPorts()})
	if err != nil {
		return fmt.Errorf("config rejected: %w", err)
	}
	for _, is := range snap.Issues {
		a.log.Warn("config not fully honoured", zap.String("type", is.Type), zap.String("name", is.Name), zap.String("reason", is.Reason))
	}

	a.proxyAddr = a.cfg.ProxyAddr()
	lis, err := net.Listen("tcp4", a.proxyAddr.String())
	if err != nil {
		return fmt.Errorf("proxy listener: %w", err)
	}
	defer lis.Close()
	admin, err := net.Listen("tcp", a.cfg.Admin.Listen)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	defer admin.Close()

	popts := proxy.Options{Log: a.log.Named("proxy"), Orig: noCapture{}}
	a.mode = Mode{Capture: "explicit", Acceleration: "off", Features: sockmap.Probe()}
	if a.cfg.Capture.Cgroup == "" {
		a.mode.Reason = "no cgroup configured: applications must dial the proxy explicitly"
		a.log.Warn("capture disabled", zap.String("reason", a.mode.Reason))
	} else {
		accel, why := a.accel(a.mode.Features)
		dp, err := sockmap.Load(sockmap.Options{
			Cgroup: a.cfg.Capture.Cgroup, PinPath: a.cfg.Capture.BPFFS, Proxy: a.proxyAddr,
			Accel: accel, StreamVerdict: a.cfg.Capture.StreamVerdictOn(), Logger: a.log.Named("sockmap"),
		})
		if err != nil {
			return err
		}
		defer func() {
			if cerr := dp.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}()
		a.dp = dp
		a.mode.Capture = "cgroup"
		a.mode.Acceleration = accelName(accel)
		a.mode.Reason = why
		a.mode.Features = dp.Features()
		popts.Orig = origAdapter{dp}
		popts.DialControl = dp.DialControl
		popts.AccelUpstream = a.cfg.Capture.UpstreamOn() && !accel.Off
		popts.Forwarder = forwarder{dp}
		a.log.Info("data path mode", zap.String("capture", a.mode.Capture), zap.String("acceleration", a.mode.Acceleration), zap.String("reason", why))
	}
	a.proxy = proxy.New(popts)
	if err := a.apply(snap); err != nil {
		return err
	}
	a.started = time.Now()

	srv := &http.Server{Handler: a.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(admin); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("admin server stopped", zap.Error(err))
		}
	}()
	defer srv.Close()

	a.log.Info("node agent running", zap.Stringer("proxy", a.proxyAddr), zap.String("admin", a.cfg.Admin.Listen),
		zap.Int("captures", len(snap.Captures)), zap.Int("clusters", len(snap.Clusters)))
	return a.proxy.Serve(ctx, lis)
}

// apply swaps in a new snapshot: the capture table first gains new entries
// only after the proxy can route them.
func (a *Agent) apply(snap *state.Snapshot) error {
	a.proxy.Update(snap)
	if a.dp == nil {
		return nil
	}
	svcs := make([]sockmap.Service, 0, len(snap.Captures))
	for i, c := range snap.Captures {
		svcs = append(svcs, sockmap.Service{Addr: c.Addr, Port: c.Port, ID: uint32(i + 1)})
	}
	if err := a.dp.SyncServices(svcs); err != nil {
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
	if snap != nil {
		st.Config = ConfigStatus{Version: snap.Version, Source: "static", Clusters: len(snap.Clusters), Issues: snap.Issues}
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

func (a *Agent) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(a.status())
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if a.proxy.Snapshot() == nil {
			http.Error(w, "no config yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("POST /acceleration", func(w http.ResponseWriter, r *http.Request) {
		if a.dp == nil {
			http.Error(w, "no data path: capture is not enabled", http.StatusConflict)
			return
		}
		acc := a.dp.Accel()
		switch v := r.URL.Query().Get("into_app"); v {
		case "":
		case "true", "false":
			acc.IntoApp = v == "true"
		default:
			http.Error(w, fmt.Sprintf("into_app %q: want true or false", v), http.StatusBadRequest)
			return
		}
		switch v := r.URL.Query().Get("forward"); v {
		case "":
		case "true", "false":
			acc.NoForward = v == "false"
		default:
			http.Error(w, fmt.Sprintf("forward %q: want true or false", v), http.StatusBadRequest)
			return
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
		a.mu.Lock()
		a.mode.Acceleration = accelName(acc)
		a.mode.Reason = "set through the admin endpoint"
		a.mu.Unlock()
		a.log.Info("acceleration switched", zap.String("acceleration", a.mode.Acceleration))
		fmt.Fprintln(w, "acceleration", a.mode.Acceleration)
	})
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}
