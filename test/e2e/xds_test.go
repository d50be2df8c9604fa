package e2e

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/meshlet/meshlet/internal/privtest"
	"github.com/meshlet/meshlet/pkg/agent"
	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds"
)

// End-to-end tests of the xDS spine at the agent level: a standalone
// go-control-plane server (node-agent xds-server) inside the sandbox netns
// serves a resources file, the agent (node-agent run --xds-address) applies
// it to the proxy and the BPF capture table, and meshed clients check where
// their connections land while the file changes under them.

// xdsAgentConfig is the agent config of these tests: capture and
// acceleration; the resources come over xDS.
const xdsAgentConfig = "capture:\n  acceleration: on\n"

// controlPlaneOutage is how long the control plane is down in the outage
// test (what the issue asks for).
const controlPlaneOutage = 60 * time.Second

// xListener is a listener capturing Addr:Port into a tcp_proxy to Cluster
// or, when Weighted is set, to a weighted split.
type xListener struct {
	Name     string
	Addr     string
	Port     int
	Cluster  string
	Weighted map[string]int
}

// xCluster is a cluster: EDS (endpoints served as a ClusterLoadAssignment)
// or STATIC (inline load assignment).
type xCluster struct {
	Name      string
	EDS       bool
	Endpoints []string
}

type xdsFile struct {
	Listeners []xListener
	Clusters  []xCluster
}

func sockAddr(hostport string) map[string]any {
	ap := netip.MustParseAddrPort(hostport)
	return map[string]any{"socket_address": map[string]any{"address": ap.Addr().String(), "port_value": ap.Port()}}
}

// render writes f in Envoy bootstrap static_resources shape (JSON).
func (f xdsFile) render() []byte {
	var ls, cs []any
	for _, l := range f.Listeners {
		tcp := map[string]any{
			"@type":       "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
			"stat_prefix": l.Name,
		}
		if len(l.Weighted) > 0 {
			var wc []any
			for _, n := range slices.Sorted(mapsKeys(l.Weighted)) {
				wc = append(wc, map[string]any{"name": n, "weight": l.Weighted[n]})
			}
			tcp["weighted_clusters"] = map[string]any{"clusters": wc}
		} else {
			tcp["cluster"] = l.Cluster
		}
		ls = append(ls, map[string]any{
			"name":          l.Name,
			"address":       sockAddr(fmt.Sprintf("%s:%d", l.Addr, l.Port)),
			"filter_chains": []any{map[string]any{"filters": []any{map[string]any{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}}}},
		})
	}
	for _, c := range f.Clusters {
		var lbs []any
		for _, e := range c.Endpoints {
			lbs = append(lbs, map[string]any{"endpoint": map[string]any{"address": sockAddr(e)}})
		}
		cl := map[string]any{
			"name":            c.Name,
			"connect_timeout": "2s",
			"load_assignment": map[string]any{"cluster_name": c.Name, "endpoints": []any{map[string]any{"lb_endpoints": lbs}}},
		}
		if c.EDS {
			cl["type"] = "EDS"
			cl["eds_cluster_config"] = map[string]any{"eds_config": map[string]any{"ads": map[string]any{}, "resource_api_version": "V3"}}
		} else {
			cl["type"] = "STATIC"
		}
		cs = append(cs, cl)
	}
	out, err := json.MarshalIndent(map[string]any{"static_resources": map[string]any{"listeners": ls, "clusters": cs}}, "", " ")
	if err != nil {
		panic(err)
	}
	return out
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// writeAtomic replaces path with data in one rename, so the control plane
// never reads half a file.
func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// xdsProc is a standalone control plane (node-agent xds-server) running
// inside the sandbox netns.
type xdsProc struct {
	m            *mesh
	file, listen string
	extra        []string
	cmd          *exec.Cmd
	out          *syncBuffer
	exited       chan struct{}
}

// startXDSServer serves file on listen (host:port or unix:///path) and
// waits until it accepts connections.
func (m *mesh) startXDSServer(file, listen string, extra ...string) *xdsProc {
	m.t.Helper()
	p := &xdsProc{m: m, file: file, listen: listen, extra: extra}
	p.start()
	m.t.Cleanup(func() {
		p.kill()
		if m.t.Failed() {
			m.t.Logf("xds-server output:\n%s", p.out.String())
		}
	})
	return p
}

func (p *xdsProc) start() {
	t := p.m.t
	t.Helper()
	p.out = &syncBuffer{}
	p.cmd = privtest.Command(t, "", p.m.ns, agentBin, append([]string{"xds-server", "--config", p.file, "--listen", p.listen, "--log-level", "debug"}, p.extra...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start xds-server: %v", err)
	}
	p.exited = make(chan struct{})
	go func() { p.cmd.Wait(); close(p.exited) }()
	dial := privtest.NetnsDial(p.m.ns)
	network, addr := "tcp", p.listen
	if path, ok := strings.CutPrefix(p.listen, "unix://"); ok {
		network, addr = "unix", path
	}
	privtest.WaitFor(t, 20*time.Second, "xds-server listening on "+p.listen, func() bool {
		select {
		case <-p.exited:
			t.Fatalf("xds-server exited during start-up:\n%s", p.out.String())
		default:
		}
		c, err := dial(t.Context(), network, addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// kill stops the server at once (SIGKILL), as a crash would.
func (p *xdsProc) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// waitStatus polls /status until cond holds.
func (m *mesh) waitStatus(timeout time.Duration, what string, cond func(agent.Status) bool) agent.Status {
	m.t.Helper()
	var st agent.Status
	privtest.WaitFor(m.t, timeout, what, func() bool {
		st = m.status()
		return cond(st)
	})
	return st
}

// waitVersionChange waits until the config version in force differs from
// prev and returns the new status.
func (m *mesh) waitVersionChange(prev string) agent.Status {
	m.t.Helper()
	return m.waitStatus(20*time.Second, "config version to change from "+prev, func(st agent.Status) bool {
		return st.Config.Version != "" && st.Config.Version != prev
	})
}

// serviceKeys returns "addr:port" of the capture table in the status.
func serviceKeys(st agent.Status) []string {
	var out []string
	for _, s := range st.Services {
		k, _, _ := strings.Cut(s, " ")
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func fileKeys(f xdsFile) []string {
	var out []string
	for _, l := range f.Listeners {
		out = append(out, fmt.Sprintf("%s:%d", l.Addr, l.Port))
	}
	sort.Strings(out)
	return out
}

// pinnedServices reads the capture table from the pinned BPF map.
func pinnedServices(t *testing.T, pin string) []string {
	t.Helper()
	mp, err := ebpf.LoadPinnedMap(pin+"/mlt_services", nil)
	if err != nil {
		t.Fatalf("load pinned mlt_services: %v", err)
	}
	defer mp.Close()
	var key struct {
		Addr uint32
		Port uint16
		Pad  uint16
	}
	val := make([]byte, mp.ValueSize())
	var out []string
	it := mp.Iterate()
	for it.Next(&key, &val) {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], key.Addr)
		addr := "*"
		if key.Addr != 0 {
			addr = netip.AddrFrom4(b).String()
		}
		out = append(out, fmt.Sprintf("%s:%d", addr, key.Port))
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate mlt_services: %v", err)
	}
	sort.Strings(out)
	return out
}

// configDumpListeners returns the listener names in /config_dump and the
// raw dump.
func (m *mesh) configDump() (*resources.Set, string) {
	m.t.Helper()
	resp, err := m.http.Get("http://127.0.0.1:15000/config_dump")
	if err != nil {
		m.t.Fatalf("config_dump: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		m.t.Fatalf("read config_dump: %v", err)
	}
	set, _, err := resources.DecodeConfigDump(body)
	if err != nil {
		m.t.Fatalf("decode config_dump: %v\n%s", err, body)
	}
	return set, string(body)
}

// loadRun is a meshed client opening new connections in a loop.
type loadRun struct {
	t        *testing.T
	stop     string
	cmd      *exec.Cmd
	out, err *syncBuffer
	done     chan struct{}
}

func (m *mesh) startLoad(maxSec int, addrs ...string) *loadRun {
	m.t.Helper()
	l := &loadRun{t: m.t, stop: filepath.Join(m.t.TempDir(), "stop"), out: &syncBuffer{}, err: &syncBuffer{}, done: make(chan struct{})}
	l.cmd = m.role("xds-load", append([]string{l.stop, fmt.Sprint(maxSec)}, addrs...)...)
	l.cmd.Stdout, l.cmd.Stderr = l.out, l.err
	if err := l.cmd.Start(); err != nil {
		m.t.Fatalf("start load: %v", err)
	}
	go func() { l.cmd.Wait(); close(l.done) }()
	m.t.Cleanup(func() {
		select {
		case <-l.done:
		default:
			_ = syscall.Kill(-l.cmd.Process.Pid, syscall.SIGKILL)
			<-l.done
		}
	})
	return l
}

// finish stops the loop and returns its report; any failed exchange fails
// the test.
func (l *loadRun) finish() loadReport {
	l.t.Helper()
	if err := os.WriteFile(l.stop, nil, 0o644); err != nil {
		l.t.Fatal(err)
	}
	select {
	case <-l.done:
	case <-time.After(30 * time.Second):
		l.t.Fatalf("load loop did not stop within 30s")
	}
	var rep loadReport
	if err := json.Unmarshal([]byte(l.out.String()), &rep); err != nil {
		l.t.Fatalf("load loop output %q (stderr %q): %v", l.out.String(), l.err.String(), err)
	}
	l.t.Logf("load loop: %d exchanges ok, %d failed, by upstream %v", rep.OK, rep.Fail, rep.By)
	if rep.Fail != 0 {
		l.t.Fatalf("load loop: %d of %d exchanges failed: %v", rep.Fail, rep.OK+rep.Fail, rep.Errs)
	}
	return rep
}

// alive fails the test when the loop ended early.
func (l *loadRun) alive() {
	l.t.Helper()
	select {
	case <-l.done:
		l.t.Fatalf("load loop ended early: %s %s", l.out.String(), l.err.String())
	default:
	}
}

// waitCount waits until s served at least n more connections than from.
func (m *mesh) waitCount(s *idServer, from, n int, l *loadRun) {
	m.t.Helper()
	privtest.WaitFor(m.t, 30*time.Second, fmt.Sprintf("%d more connections at %s", n, s.name), func() bool {
		if l != nil {
			l.alive()
		}
		return s.count() >= from+n
	})
}

// dialVia makes one meshed exchange with addr and returns the upstream name.
func (m *mesh) dialVia(addr string) string {
	m.t.Helper()
	return run(m.t, m.role("xds-dial", addr))
}

func (p *xdsProc) write(f xdsFile) { writeAtomic(p.m.t, p.file, f.render()) }

const cpTCP = "127.0.0.1:15010"

// 1. Initial sync through a standalone go-control-plane server: each
// meshed connection lands at the right upstream (SotW and delta).
func TestXDSInitialSync(t *testing.T) {
	for _, delta := range []bool{false, true} {
		name := map[bool]string{false: "sotw", true: "delta"}[delta]
		t.Run(name, func(t *testing.T) {
			m := newSandbox(t)
			a := m.idServer("127.0.0.1:18101", "a")
			b := m.idServer("127.0.0.1:18102", "b")
			f := xdsFile{
				Listeners: []xListener{
					{Name: "svc-a", Addr: "10.96.10.1", Port: 80, Cluster: "ca"},
					{Name: "svc-b", Addr: "10.96.10.2", Port: 80, Cluster: "cb"},
				},
				Clusters: []xCluster{
					{Name: "ca", EDS: true, Endpoints: []string{a.addr()}},
					{Name: "cb", Endpoints: []string{b.addr()}},
				},
			}
			file := filepath.Join(t.TempDir(), "resources.json")
			writeAtomic(t, file, f.render())
			m.startXDSServer(file, cpTCP)
			args := []string{"--xds-address", cpTCP, "--node-id", "e2e-" + name}
			if delta {
				args = append(args, "--delta")
			}
			m.start(xdsAgentConfig, args...)

			for _, c := range []struct{ addr, want string }{{"10.96.10.1:80", "a"}, {"10.96.10.2:80", "b"}, {"10.96.10.1:80", "a"}} {
				if got := m.dialVia(c.addr); got != c.want {
					t.Fatalf("%s answered by %q, want %q", c.addr, got, c.want)
				}
			}
			st := m.status()
			if st.XDS == nil || st.XDS.Source != xds.SourceControlPlane || !st.XDS.Connected || st.XDS.Mode != name {
				t.Fatalf("xds status %+v: want connected, source control-plane, mode %s", st.XDS, name)
			}
			if st.Config.Source != string(xds.SourceControlPlane) || st.Config.Clusters != 2 {
				t.Fatalf("config status %+v", st.Config)
			}
			if got, want := serviceKeys(st), fileKeys(f); !slices.Equal(got, want) {
				t.Fatalf("capture table %v, want %v", got, want)
			}
			if st.BPF == nil || st.BPF.Captured < 3 {
				t.Fatalf("bpf counters %+v: want >= 3 captured", st.BPF)
			}
			if a.count() != 2 || b.count() != 1 {
				t.Fatalf("upstream counts a=%d b=%d, want 2 and 1", a.count(), b.count())
			}
		})
	}
}

// 2. Endpoint change and TCP route changes (weighted split, then another
// cluster) while a meshed client opens connections in a loop: no exchange
// fails, and new connections reach the new upstreams.
func TestXDSUpdatesUnderLoad(t *testing.T) {
	m := newSandbox(t)
	a1 := m.idServer("127.0.0.1:18201", "a1")
	a2 := m.idServer("127.0.0.1:18202", "a2")
	b := m.idServer("127.0.0.1:18203", "b")
	c := m.idServer("127.0.0.1:18204", "c")
	f := xdsFile{
		Listeners: []xListener{
			{Name: "svc-a", Addr: "10.96.11.1", Port: 80, Cluster: "ca"},
			{Name: "svc-r", Addr: "10.96.11.2", Port: 7000, Cluster: "cb"},
		},
		Clusters: []xCluster{
			{Name: "ca", EDS: true, Endpoints: []string{a1.addr()}},
			{Name: "cb", EDS: true, Endpoints: []string{b.addr()}},
			{Name: "cc", Endpoints: []string{c.addr()}},
		},
	}
	file := filepath.Join(t.TempDir(), "resources.json")
	writeAtomic(t, file, f.render())
	cp := m.startXDSServer(file, cpTCP)
	m.start(xdsAgentConfig, "--xds-address", cpTCP)

	load := m.startLoad(120, "10.96.11.1:80", "10.96.11.2:7000")
	m.waitCount(a1, 0, 10, load)
	m.waitCount(b, 0, 10, load)

	// Endpoint change: ca moves from a1 to a2 (EDS only).
	ver := m.status().Config.Version
	f.Clusters[0].Endpoints = []string{a2.addr()}
	start := time.Now()
	cp.write(f)
	ver = m.waitVersionChange(ver).Config.Version
	t.Logf("endpoint change applied %v after the file was written", time.Since(start).Round(time.Millisecond))
	m.waitCount(a2, 0, 10, load)
	before := a1.count()
	m.waitCount(a2, a2.count(), 10, load)
	if a1.count() != before {
		t.Fatalf("a1 still receives new connections after the endpoint change (%d -> %d)", before, a1.count())
	}

	// Route change: svc-r splits between cb and cc.
	f.Listeners[1].Cluster, f.Listeners[1].Weighted = "", map[string]int{"cb": 50, "cc": 50}
	cp.write(f)
	ver = m.waitVersionChange(ver).Config.Version
	m.waitCount(c, 0, 5, load)
	m.waitCount(b, b.count(), 5, load)

	// Route change: svc-r goes to cc alone.
	f.Listeners[1].Weighted, f.Listeners[1].Cluster = nil, "cc"
	cp.write(f)
	m.waitVersionChange(ver)
	m.waitCount(c, c.count(), 5, load)
	before = b.count()
	m.waitCount(c, c.count(), 10, load)
	if b.count() != before {
		t.Fatalf("cb still receives new connections after the route change (%d -> %d)", before, b.count())
	}

	rep := load.finish()
	for _, k := range []string{"10.96.11.1:80|a1", "10.96.11.1:80|a2", "10.96.11.2:7000|b", "10.96.11.2:7000|c"} {
		if rep.By[k] == 0 {
			t.Fatalf("no exchange answered as %s: %v", k, rep.By)
		}
	}
}

// 3. Removing a listener from the file removes its capture entry from the
// BPF map; the address is no longer captured.
func TestXDSRemoveService(t *testing.T) {
	m := newSandbox(t)
	x := m.idServer("127.0.0.1:18301", "x")
	y := m.idServer("127.0.0.1:18302", "y")
	f := xdsFile{
		Listeners: []xListener{
			{Name: "svc-x", Addr: "10.96.12.1", Port: 80, Cluster: "cx"},
			{Name: "svc-y", Addr: "10.96.12.2", Port: 8080, Cluster: "cy"},
			{Name: "svc-any", Addr: "0.0.0.0", Port: 9099, Cluster: "cy"},
		},
		Clusters: []xCluster{{Name: "cx", EDS: true, Endpoints: []string{x.addr()}}, {Name: "cy", Endpoints: []string{y.addr()}}},
	}
	file := filepath.Join(t.TempDir(), "resources.json")
	writeAtomic(t, file, f.render())
	cp := m.startXDSServer(file, cpTCP)
	m.start(xdsAgentConfig, "--xds-address", cpTCP)
	want := []string{"*:9099", "10.96.12.1:80", "10.96.12.2:8080"}
	if got := pinnedServices(t, m.pin); !slices.Equal(got, want) {
		t.Fatalf("mlt_services %v, want %v", got, want)
	}
	if got := m.dialVia("10.96.12.2:8080"); got != "y" {
		t.Fatalf("10.96.12.2:8080 answered by %q", got)
	}

	ver := m.status().Config.Version
	f.Listeners = f.Listeners[:1]
	cp.write(f)
	st := m.waitVersionChange(ver)
	want = []string{"10.96.12.1:80"}
	if got := serviceKeys(st); !slices.Equal(got, want) {
		t.Fatalf("status services %v, want %v", got, want)
	}
	m.waitPinned(want)
	// Not captured any more: the address exists nowhere in the sandbox.
	cmd := m.role("xds-dial", "10.96.12.2:8080")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("removed service still answers: %s", out)
	}
	if got := m.dialVia("10.96.12.1:80"); got != "x" {
		t.Fatalf("remaining service answered by %q", got)
	}
	if y.count() != 1 {
		t.Fatalf("y served %d connections, want 1", y.count())
	}
}

// 4. A listener the agent cannot apply (captures the agent's own port;
// then one capturing an address another listener has) is NACKed with the
// reason, visible in /status and /config_dump, while traffic keeps flowing
// on the previous configuration; a corrected file is accepted again.
func TestXDSNackKeepsTraffic(t *testing.T) {
	m := newSandbox(t)
	a := m.idServer("127.0.0.1:18401", "a")
	a2 := m.idServer("127.0.0.1:18402", "a2")
	f := xdsFile{
		Listeners: []xListener{{Name: "svc", Addr: "10.96.13.1", Port: 80, Cluster: "ca"}},
		Clusters:  []xCluster{{Name: "ca", EDS: true, Endpoints: []string{a.addr()}}},
	}
	file := filepath.Join(t.TempDir(), "resources.json")
	writeAtomic(t, file, f.render())
	cp := m.startXDSServer(file, cpTCP)
	m.start(xdsAgentConfig, "--xds-address", cpTCP)
	good := m.status()

	load := m.startLoad(120, "10.96.13.1:80")
	m.waitCount(a, 0, 10, load)

	for _, bad := range []struct {
		l      xListener
		reason string
	}{
		{xListener{Name: "bad-own-port", Addr: "10.96.13.9", Port: 15001, Cluster: "ca"}, "agent's own"},
		{xListener{Name: "bad-dup", Addr: "10.96.13.1", Port: 80, Cluster: "ca"}, "already captured"},
	} {
		nf := f
		nf.Listeners = append(slices.Clone(f.Listeners), bad.l)
		cp.write(nf)
		st := m.waitStatus(20*time.Second, "NACK naming "+bad.reason, func(st agent.Status) bool {
			return st.XDS != nil && st.XDS.LastNACK != nil && strings.Contains(st.XDS.LastNACK.Detail, bad.reason) &&
				strings.Contains(st.XDS.LastNACK.Detail, bad.l.Name)
		})
		t.Logf("NACK: %s", st.XDS.LastNACK.Detail)
		if st.Config.Version != good.Config.Version || !slices.Equal(st.Services, good.Services) {
			t.Fatalf("rejected config changed the config in force: version %s services %v (was %s %v)",
				st.Config.Version, st.Services, good.Config.Version, good.Services)
		}
		if got := pinnedServices(t, m.pin); !slices.Equal(got, []string{"10.96.13.1:80"}) {
			t.Fatalf("mlt_services %v after a NACK", got)
		}
		_, dump := m.configDump()
		if !strings.Contains(dump, `"error_state"`) || !strings.Contains(dump, bad.reason) {
			t.Fatalf("config_dump has no error_state with %q:\n%s", bad.reason, dump)
		}
		m.waitCount(a, a.count(), 10, load)
	}

	// A valid file (a new listener and an endpoint change) is accepted
	// again and the standing NACK goes away. (The new listener matters: a
	// file whose listeners equal the accepted ones gives go-control-plane
	// no new LDS version to send, so the LDS NACK would stand, as in Envoy.)
	f.Clusters[0].Endpoints = []string{a2.addr()}
	f.Listeners = append(f.Listeners, xListener{Name: "svc-2", Addr: "10.96.13.2", Port: 80, Cluster: "ca"})
	cp.write(f)
	m.waitStatus(20*time.Second, "the corrected file applied", func(st agent.Status) bool {
		return slices.Equal(serviceKeys(st), fileKeys(f))
	})
	m.waitCount(a2, 0, 10, load)
	_, dump := m.configDump()
	if strings.Contains(dump, `"error_state"`) {
		t.Fatalf("config_dump still has an error_state after a valid config:\n%s", dump)
	}
	load.finish()
}

// 5. Control-plane outage: the server is killed for controlPlaneOutage
// under load, then restarted: no exchange fails. Then the agent is
// restarted while the server is down and serves the persisted config.
func TestXDSControlPlaneOutage(t *testing.T) {
	m := newSandbox(t)
	a := m.idServer("127.0.0.1:18501", "a")
	b := m.idServer("127.0.0.1:18502", "b")
	f := xdsFile{
		Listeners: []xListener{
			{Name: "svc-a", Addr: "10.96.14.1", Port: 80, Cluster: "ca"},
			{Name: "svc-b", Addr: "0.0.0.0", Port: 9514, Cluster: "cb"},
		},
		Clusters: []xCluster{{Name: "ca", EDS: true, Endpoints: []string{a.addr()}}, {Name: "cb", Endpoints: []string{b.addr()}}},
	}
	file := filepath.Join(t.TempDir(), "resources.json")
	writeAtomic(t, file, f.render())
	stateDir := t.TempDir()
	cp := m.startXDSServer(file, cpTCP)
	args := []string{"--xds-address", cpTCP, "--state-dir", stateDir}
	m.start(xdsAgentConfig, args...)
	good := m.status()
	privtest.WaitFor(t, 10*time.Second, "persisted snapshot", func() bool {
		_, err := os.Stat(filepath.Join(stateDir, "xds-snapshot.json"))
		return err == nil
	})

	if testing.Short() {
		t.Log("-short: skipping the control-plane outage under load")
	} else {
		load := m.startLoad(int(controlPlaneOutage/time.Second)+120, "10.96.14.1:80", "10.96.14.9:9514")
		m.waitCount(a, 0, 10, load)
		streams := good.XDS.Streams
		cp.kill()
		down := time.Now()
		m.waitStatus(20*time.Second, "agent to see the control plane gone", func(st agent.Status) bool { return !st.XDS.Connected })
		// The outage lasts controlPlaneOutage; meanwhile connections keep
		// flowing on the configuration in force.
		for time.Since(down) < controlPlaneOutage {
			m.waitCount(a, a.count(), 20, load)
			m.waitCount(b, b.count(), 20, load)
			if st := m.status(); st.Config.Version != good.Config.Version || !slices.Equal(st.Services, good.Services) {
				t.Fatalf("config changed during the outage: %+v", st.Config)
			}
		}
		cp.start()
		up := time.Now()
		// The client's reconnect backoff is capped at 30 s.
		st := m.waitStatus(45*time.Second, "agent reconnected", func(st agent.Status) bool {
			return st.XDS.Connected && st.XDS.Streams > streams
		})
		t.Logf("reconnected %v after the control plane came back (streams %d -> %d)", time.Since(up).Round(time.Millisecond), streams, st.XDS.Streams)
		m.waitCount(a, a.count(), 10, load)
		rep := load.finish()
		if rep.OK < 100 {
			t.Fatalf("only %d exchanges during the outage", rep.OK)
		}
	}

	// Restart the agent while the control plane is down.
	m.stop()
	cp.kill()
	m.start(xdsAgentConfig, args...)
	st := m.status()
	if st.XDS.Source != xds.SourcePersisted || st.Config.Source != string(xds.SourcePersisted) {
		t.Fatalf("after a restart without control plane: source %q / %q, want persisted", st.XDS.Source, st.Config.Source)
	}
	if !slices.Equal(st.Services, good.Services) {
		t.Fatalf("persisted services %v, want %v", st.Services, good.Services)
	}
	na, nb := a.count(), b.count()
	if got := m.dialVia("10.96.14.1:80"); got != "a" {
		t.Fatalf("10.96.14.1:80 answered by %q", got)
	}
	if got := m.dialVia("10.96.14.77:9514"); got != "b" {
		t.Fatalf("*:9514 answered by %q", got)
	}
	if a.count() != na+1 || b.count() != nb+1 {
		t.Fatal("persisted config did not route to the upstreams")
	}
	// The control plane comes back: the agent switches source.
	cp.start()
	m.waitStatus(45*time.Second, "source control-plane", func(st agent.Status) bool {
		return st.XDS.Source == xds.SourceControlPlane && st.XDS.Connected
	})
}

// waitPinned waits for the pinned capture map to hold exactly want. The
// proxy takes a new snapshot before the BPF map is synced (so an entry is
// routable by the time it captures), so the status can run a little ahead
// of the map; the map follows within the same apply.
func (m *mesh) waitPinned(want []string) {
	m.t.Helper()
	privtest.WaitFor(m.t, 10*time.Second, fmt.Sprintf("mlt_services %v", want), func() bool {
		return slices.Equal(pinnedServices(m.t, m.pin), want)
	})
}

// 7. Delta: services are added and removed one at a time; after each step
// the agent's capture table and config_dump equal the file.
func TestXDSDeltaAddRemove(t *testing.T) {
	m := newSandbox(t)
	up := m.idServer("127.0.0.1:18701", "up")
	svc := func(i int) xListener {
		return xListener{Name: fmt.Sprintf("svc-%d", i), Addr: fmt.Sprintf("10.96.15.%d", i+1), Port: 80 + i, Cluster: "c"}
	}
	f := xdsFile{Listeners: []xListener{svc(0)}, Clusters: []xCluster{{Name: "c", EDS: true, Endpoints: []string{up.addr()}}}}
	file := filepath.Join(t.TempDir(), "resources.json")
	writeAtomic(t, file, f.render())
	sock := "unix://" + filepath.Join(t.TempDir(), "xds.sock")
	// A short file poll keeps the eight steps quick.
	cp := m.startXDSServer(file, sock, "--poll", "200ms")
	m.start(xdsAgentConfig, "--xds-address", sock, "--delta")
	if st := m.status(); st.XDS.Mode != "delta" {
		t.Fatalf("xds mode %q, want delta", st.XDS.Mode)
	}

	steps := []struct {
		op string
		i  int
	}{{"add", 1}, {"add", 2}, {"add", 3}, {"del", 1}, {"del", 0}, {"add", 4}, {"del", 3}, {"del", 2}}
	for _, s := range steps {
		if s.op == "add" {
			f.Listeners = append(f.Listeners, svc(s.i))
		} else {
			f.Listeners = slices.DeleteFunc(f.Listeners, func(l xListener) bool { return l.Name == svc(s.i).Name })
		}
		cp.write(f)
		want := fileKeys(f)
		st := m.waitStatus(20*time.Second, fmt.Sprintf("%s svc-%d: capture table %v", s.op, s.i, want), func(st agent.Status) bool {
			return slices.Equal(serviceKeys(st), want)
		})
		m.waitPinned(want)
		set, _ := m.configDump()
		var names, wantNames []string
		for n := range set.Listeners {
			names = append(names, n)
		}
		for _, l := range f.Listeners {
			wantNames = append(wantNames, l.Name)
		}
		sort.Strings(names)
		sort.Strings(wantNames)
		if !slices.Equal(names, wantNames) {
			t.Fatalf("%s svc-%d: config_dump listeners %v, want %v", s.op, s.i, names, wantNames)
		}
		if st.XDS.LastNACK != nil {
			t.Fatalf("%s svc-%d: NACK %+v", s.op, s.i, st.XDS.LastNACK)
		}
		if s.op == "add" {
			l := svc(s.i)
			if got := m.dialVia(fmt.Sprintf("%s:%d", l.Addr, l.Port)); got != "up" {
				t.Fatalf("added %s answered by %q", l.Name, got)
			}
		}
	}
}

// 8. Bad input: a corrupt persisted snapshot is set aside and the config
// comes from the control plane; the standalone server refuses a file with
// an unknown resource type with one clear line and a non-zero exit.
func TestXDSBadInput(t *testing.T) {
	t.Run("corrupt-persisted", func(t *testing.T) {
		m := newSandbox(t)
		a := m.idServer("127.0.0.1:18801", "a")
		f := xdsFile{
			Listeners: []xListener{{Name: "svc", Addr: "10.96.16.1", Port: 80, Cluster: "ca"}},
			Clusters:  []xCluster{{Name: "ca", EDS: true, Endpoints: []string{a.addr()}}},
		}
		file := filepath.Join(t.TempDir(), "resources.json")
		writeAtomic(t, file, f.render())
		stateDir := t.TempDir()
		snap := filepath.Join(stateDir, "xds-snapshot.json")
		if err := os.WriteFile(snap, pattern(42, 4096), 0o600); err != nil {
			t.Fatal(err)
		}
		m.startXDSServer(file, cpTCP)
		m.start(xdsAgentConfig, "--xds-address", cpTCP, "--state-dir", stateDir)
		st := m.status()
		if st.XDS.Source != xds.SourceControlPlane {
			t.Fatalf("source %q, want control-plane", st.XDS.Source)
		}
		log := m.log.String()
		if !strings.Contains(log, "cannot use the persisted configuration") || !strings.Contains(log, "corrupt") {
			t.Fatalf("agent log has no clear error about the corrupt snapshot:\n%s", log)
		}
		aside, _ := filepath.Glob(snap + ".corrupt-*")
		if len(aside) != 1 {
			t.Fatalf("corrupt snapshot not set aside: %v", aside)
		}
		if got, _ := os.ReadFile(aside[0]); string(got) != string(pattern(42, 4096)) {
			t.Fatal("the set-aside file is not the corrupt snapshot")
		}
		if got := m.dialVia("10.96.16.1:80"); got != "a" {
			t.Fatalf("answered by %q", got)
		}
		// The good config from the control plane is persisted anew.
		privtest.WaitFor(t, 10*time.Second, "new snapshot", func() bool {
			_, err := os.Stat(snap)
			return err == nil
		})
	})

	good := string(xdsFile{
		Listeners: []xListener{{Name: "svc", Addr: "10.96.16.1", Port: 80, Cluster: "c"}},
		Clusters:  []xCluster{{Name: "c", Endpoints: []string{"127.0.0.1:1"}}},
	}.render())
	for _, c := range []struct{ name, file, want string }{
		{"unknown-resource-type", strings.Replace(good, `"clusters"`, `"secrets": [], "clusterz"`, 1), "clusterz"},
		{"unknown-@type", strings.Replace(good, "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "example.com.NoSuchProxy", 1), "NoSuchProxy"},
		{"not-json", "{static_resources: [", "YAML"},
	} {
		t.Run("server-"+c.name, func(t *testing.T) {
			privtest.Root(t)
			ns := privtest.Netns(t)
			file := filepath.Join(t.TempDir(), "bad.json")
			if err := os.WriteFile(file, []byte(c.file), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := privtest.Command(t, "", ns, agentBin, "xds-server", "--config", file, "--listen", cpTCP)
			timer := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
			out, err := cmd.CombinedOutput()
			timer.Stop()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("want a non-zero exit, got %v: %s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], c.want) || !strings.Contains(lines[0], "xds-server") {
				t.Fatalf("want one line naming %q, got:\n%s", c.want, out)
			}
			t.Logf("exit %d: %s", ee.ExitCode(), lines[0])
		})
	}
	// Not covered here: an oversized xDS message. The client's limit
	// (xds.Config.MaxRecvMsgSize) is not settable from the agent's CLI or
	// config; pkg/xds tests it against the embedded server.
}
