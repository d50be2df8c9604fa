// Package config reads the node agent's configuration file: capture and
// acceleration settings, listener addresses, the config source, and (for
// the embedded control plane) Envoy v3 static resources.
package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"

	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/pkg/resources"
)

// Config is the agent's configuration file.
type Config struct {
	Capture Capture `json:"capture"`
	Proxy   Proxy   `json:"proxy"`
	Admin   Admin   `json:"admin"`
	XDS     XDS     `json:"xds"`
	// StaticResources is Envoy's bootstrap static_resources: listeners say
	// what to capture, clusters (with load_assignment) where to send it.
	StaticResources json.RawMessage `json:"static_resources,omitempty"`
}

// Capture configures the BPF data path.
type Capture struct {
	// Cgroup is the cgroup v2 directory whose sockets are meshed.
	Cgroup string `json:"cgroup"`
	// BPFFS is the pin folder (default /sys/fs/bpf/meshlet).
	BPFFS string `json:"bpffs"`
	// Acceleration: "auto" (on where the compatibility suite passed),
	// "on", or "off" (the kill switch; capture keeps working).
	Acceleration AccelMode `json:"acceleration"`
	// IntoProxy accelerates application sends into the proxy (default on).
	IntoProxy *bool `json:"into_proxy,omitempty"`
	// IntoApp accelerates proxy sends into application sockets (default
	// off: splice(2) readers cannot see redirected bytes).
	IntoApp bool `json:"into_app"`
	// Upstream pairs the proxy's upstream sockets with same-node servers
	// (default on).
	Upstream *bool `json:"upstream,omitempty"`
	// Forward hands plain TCP routes to the kernel once the upstream is
	// chosen (default on; takes effect with into_app, since the kernel then
	// delivers into application sockets).
	Forward *bool `json:"forward,omitempty"`
	// StreamVerdict attaches the no-op stream verdict to the proxy's
	// sockhash (default on).
	StreamVerdict *bool `json:"stream_verdict,omitempty"`
}

// Proxy configures the capture listener.
type Proxy struct {
	Listen string `json:"listen"`
	// AccessLog logs one line per HTTP request (zap, logger "access").
	AccessLog bool `json:"access_log,omitempty"`
	// Concurrency is the number of Go scheduler slots (GOMAXPROCS) the
	// agent runs on, at most what Go picks by itself (the CPUs, or the
	// container's CPU limit): 0 means DefaultConcurrency. Like Envoy's
	// --concurrency and ztunnel's worker threads, a node agent uses a few
	// of the node's CPUs, and each further slot costs CPU per request (idle
	// slots are woken and put back to sleep as requests pass between
	// goroutines; docs/l7.md). The GOMAXPROCS environment variable, when
	// set, wins.
	Concurrency int `json:"concurrency,omitempty"`
}

// DefaultConcurrency is the agent's default proxy.concurrency: two
// slots, as ztunnel's default two worker threads. One is cheaper per
// request (test/bench/http: 36.7 vs 45.0 µs per HTTP/1.1 request on two
// CPUs) but puts the control plane on the data path's slot: a 10k-listener
// xDS start took 1.1–1.2 s to apply with one, 0.7–0.9 s with two.
const DefaultConcurrency = 2

// Admin configures the admin endpoint.
type Admin struct {
	Listen string `json:"listen"`
}

// XDS says where the configuration comes from.
type XDS struct {
	// Source is "embedded" (default: a control plane inside the agent
	// serving ResourcesFile, or this file's static_resources) or "remote"
	// (Address).
	Source string `json:"source"`
	// Address of a remote control plane (host:port or unix:///path).
	Address string `json:"address,omitempty"`
	// EmbeddedListen is where the embedded control plane listens
	// (host:port or unix:///path); other agents may use it as their
	// remote.
	EmbeddedListen string `json:"embedded_listen,omitempty"`
	// ResourcesFile is the Envoy v3 resources file the embedded control
	// plane serves and re-reads on change (bootstrap static_resources
	// shape or an Envoy config dump).
	ResourcesFile string `json:"resources_file,omitempty"`
	// Delta selects the incremental protocol; OnDemand (needs Delta)
	// subscribes to clusters by name when a connection needs one.
	Delta    bool `json:"delta,omitempty"`
	OnDemand bool `json:"on_demand,omitempty"`
	// NodeID and Cluster identify the agent (default "meshlet~HOSTNAME").
	NodeID  string `json:"node_id,omitempty"`
	Cluster string `json:"cluster,omitempty"`
	// Istio, when set, presents the agent to istiod as one sidecar node.
	Istio *IstioNode `json:"istio,omitempty"`
	// CAFile verifies a TLS control plane; TokenFile is sent as a bearer
	// token with every call.
	CAFile     string `json:"ca_file,omitempty"`
	ServerName string `json:"server_name,omitempty"`
	TokenFile  string `json:"token_file,omitempty"`
	// StateDir keeps the last accepted configuration (empty: not kept).
	StateDir string `json:"state_dir,omitempty"`
	// MaxMessageBytes bounds one xDS response (default 64 MiB); a larger
	// one is refused with a clear error and nothing is applied.
	MaxMessageBytes int `json:"max_message_bytes,omitempty"`
}

// IstioNode is the identity an agent presents to istiod.
type IstioNode struct {
	PodIP          string `json:"pod_ip"`
	PodName        string `json:"pod_name"`
	Namespace      string `json:"namespace"`
	ClusterID      string `json:"cluster_id,omitempty"`
	ServiceAccount string `json:"service_account,omitempty"`
	NodeName       string `json:"node_name,omitempty"`
	IstioVersion   string `json:"istio_version,omitempty"`
}

// Defaults used when a field is empty.
const (
	DefaultProxyListen    = "127.0.0.1:15001"
	DefaultAdminListen    = "127.0.0.1:15000"
	DefaultEmbeddedListen = "127.0.0.1:15010"
	DefaultStateDir       = "/var/lib/meshlet"
)

func boolOr(p *bool, def bool) bool {
	if p == nil {
		return def
	}
	return *p
}

// IntoProxyOn reports the into-proxy direction with its default.
func (c Capture) IntoProxyOn() bool { return boolOr(c.IntoProxy, true) }

// UpstreamOn reports the upstream pairing with its default.
func (c Capture) UpstreamOn() bool { return boolOr(c.Upstream, true) }

// ForwardOn reports kernel forwarding with its default.
func (c Capture) ForwardOn() bool { return boolOr(c.Forward, true) }

// StreamVerdictOn reports the stream verdict with its default.
func (c Capture) StreamVerdictOn() bool { return boolOr(c.StreamVerdict, true) }

// Parse decodes YAML or JSON strictly (unknown fields are errors), fills
// defaults and validates.
func Parse(data []byte) (*Config, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if c.Proxy.Listen == "" {
		c.Proxy.Listen = DefaultProxyListen
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = DefaultAdminListen
	}
	if c.Capture.Acceleration == "" {
		c.Capture.Acceleration = "auto"
	}
	if c.XDS.Source == "" {
		c.XDS.Source = "embedded"
	}
	if c.XDS.EmbeddedListen == "" {
		c.XDS.EmbeddedListen = DefaultEmbeddedListen
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Load reads and parses a config file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate checks values that parse but make no sense.
func (c *Config) Validate() error {
	switch c.Capture.Acceleration {
	case "auto", "on", "off":
	default:
		return fmt.Errorf("config: capture.acceleration %q: want auto, on or off", c.Capture.Acceleration)
	}
	p, err := netip.ParseAddrPort(c.Proxy.Listen)
	if err != nil || !p.Addr().Is4() || p.Port() == 0 {
		return fmt.Errorf("config: proxy.listen %q: want an IPv4 address and port", c.Proxy.Listen)
	}
	if c.Proxy.Concurrency < 0 {
		return fmt.Errorf("config: proxy.concurrency %d: want 0 (default) or more", c.Proxy.Concurrency)
	}
	if _, err := netip.ParseAddrPort(c.Admin.Listen); err != nil {
		return fmt.Errorf("config: admin.listen %q: %w", c.Admin.Listen, err)
	}
	switch c.XDS.Source {
	case "embedded":
	case "remote":
		if c.XDS.Address == "" {
			return fmt.Errorf("config: xds.source remote needs xds.address")
		}
	default:
		return fmt.Errorf("config: xds.source %q: want embedded or remote", c.XDS.Source)
	}
	if c.XDS.OnDemand && !c.XDS.Delta {
		return fmt.Errorf("config: xds.on_demand needs xds.delta")
	}
	if c.XDS.Istio != nil && (c.XDS.Istio.PodIP == "" || c.XDS.Istio.PodName == "" || c.XDS.Istio.Namespace == "") {
		return fmt.Errorf("config: xds.istio needs pod_ip, pod_name and namespace")
	}
	return nil
}

// Resources decodes the static resources (an empty Set if there are none).
func (c *Config) Resources() (*resources.Set, error) {
	if len(c.StaticResources) == 0 {
		return resources.New(), nil
	}
	wrapped := append(append([]byte(`{"static_resources":`), c.StaticResources...), '}')
	set, err := resources.Decode(wrapped)
	if err != nil {
		return nil, fmt.Errorf("config: static_resources: %w", err)
	}
	return set, nil
}

// ProxyAddr is proxy.listen parsed.
func (c *Config) ProxyAddr() netip.AddrPort { return netip.MustParseAddrPort(c.Proxy.Listen) }

// Procs is the GOMAXPROCS the agent sets for proxy.concurrency, given what
// the Go runtime chose (runtime.GOMAXPROCS(0)), and whether the GOMAXPROCS
// environment variable is set (then the runtime's choice stands).
func (c *Config) Procs(current int, envSet bool) int {
	if envSet {
		return current
	}
	n := c.Proxy.Concurrency
	if n == 0 {
		n = DefaultConcurrency
	}
	return max(min(n, current), 1)
}

// AccelMode is "auto", "on" or "off". YAML 1.1 reads a bare on/off as a
// boolean, so booleans are accepted too.
type AccelMode string

// UnmarshalJSON accepts a string or a boolean.
func (m *AccelMode) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case "true":
		*m = "on"
		return nil
	case "false":
		*m = "off"
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("acceleration: want auto, on or off")
	}
	*m = AccelMode(s)
	return nil
}
