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
}

// Admin configures the admin endpoint.
type Admin struct {
	Listen string `json:"listen"`
}

// Defaults used when a field is empty.
const (
	DefaultProxyListen = "127.0.0.1:15001"
	DefaultAdminListen = "127.0.0.1:15000"
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
	if _, err := netip.ParseAddrPort(c.Admin.Listen); err != nil {
		return fmt.Errorf("config: admin.listen %q: %w", c.Admin.Listen, err)
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
