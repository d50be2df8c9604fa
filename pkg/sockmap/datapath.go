package sockmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// DefaultPinPath is where maps and programs are pinned unless told otherwise.
const DefaultPinPath = "/sys/fs/bpf/meshlet"

// Accel selects which directions of sockmap acceleration are on.
type Accel struct {
	// Off is the global kill switch: no redirects at all, capture keeps working.
	Off bool
	// IntoProxy redirects sends of application sockets (captured clients,
	// same-node servers of the proxy's upstream connections) straight into
	// the proxy's sockets. Safe for every application: only the proxy reads
	// the redirected bytes, and the proxy never splices.
	IntoProxy bool
	// IntoApp redirects the proxy's sends straight into application sockets.
	// Faster, but bytes land in the socket's psock queue, which splice(2)
	// readers (HAProxy, Go's io.Copy between sockets) never see.
	IntoApp bool
	// NoForward turns off kernel forwarding of plain TCP routes (the proxy
	// hands a connection's byte stream to the kernel once it has chosen
	// the upstream).
	NoForward bool
}

func (a Accel) flags() uint32 {
	var f uint32
	if a.Off {
		f |= 1 << 0
	}
	if a.IntoProxy {
		f |= 1 << 1
	}
	if a.IntoApp {
		f |= 1 << 2
	}
	if a.NoForward {
		f |= 1 << 3
	}
	return f
}

// Options configure Load.
type Options struct {
	// Cgroup is the cgroup v2 directory whose sockets are meshed. Programs
	// are attached there and nowhere else.
	Cgroup string
	// PinPath is the bpffs folder for pins (DefaultPinPath if empty). Its
	// last element must not contain a dot.
	PinPath string
	// Proxy is the proxy's capture listener (IPv4).
	Proxy netip.AddrPort
	// Accel selects the acceleration directions.
	Accel Accel
	// StreamVerdict attaches a no-op stream verdict program to the proxy's
	// sockhash so its members receive through the psock path (works around
	// lost epoll wake-ups of some stable kernels).
	StreamVerdict bool
	Logger        *zap.Logger
	// Probe replaces the kernel probe (tests use it to play a kernel that
	// lacks a feature). Nil means Probe.
	Probe func() Features
}

// Datapath is the loaded, pinned and attached BPF state.
type Datapath struct {
	objs    meshletObjects
	log     *zap.Logger
	cgroup  string
	pinPath string
	proxy   netip.AddrPort
	feat    Features

	mu       sync.Mutex
	accel    Accel
	links    []link.Link
	raw      []rawAttachment
	attached []string
	closed   bool
	// msgProxy is meshlet_msg_proxy's attachment to mlt_sock_proxy,
	// present only while Accel.IntoApp is on (see setMsgProxy).
	msgProxy *mapAttachment
}

// mapAttachment is a program attached to a sockhash: a bpf_link, or the
// older program attachment (raw) where the kernel has no link for it.
type mapAttachment struct {
	l    link.Link
	raw  rawAttachment
	desc string
}

func (a *mapAttachment) detach() error {
	if a.l != nil {
		return a.l.Close()
	}
	return link.RawDetachProgram(link.RawDetachProgramOptions{Target: a.raw.target.FD(), Program: a.raw.prog, Attach: a.raw.typ})
}

type rawAttachment struct {
	target *ebpf.Map
	prog   *ebpf.Program
	typ    ebpf.AttachType
}

// Preflight runs the checks Load starts with, none of which changes
// anything: the proxy address, the cgroup (which must exist and not be
// the hierarchy's root), the pin path, and the kernel's features. A caller
// that starts other work before Load calls it first, so that bad input
// fails before anything started.
func Preflight(opts Options) error {
	_, _, _, err := preflight(opts)
	return err
}

func preflight(opts Options) (cgroup, pin string, feat Features, err error) {
	if !opts.Proxy.IsValid() || !opts.Proxy.Addr().Is4() {
		return "", "", feat, fmt.Errorf("proxy listener %v: an IPv4 address and port are required", opts.Proxy)
	}
	cgroup, err = ResolveCgroup(opts.Cgroup)
	if err != nil {
		return "", "", feat, err
	}
	pin = opts.PinPath
	if pin == "" {
		pin = DefaultPinPath
	}
	if strings.Contains(filepath.Base(pin), ".") {
		return "", "", feat, fmt.Errorf("pin path %s: bpffs refuses names with a dot", pin)
	}
	probe := opts.Probe
	if probe == nil {
		probe = Probe
	}
	feat = probe()
	if !feat.Capture || !feat.Pairing || !feat.Redirect {
		return "", "", feat, fmt.Errorf("kernel %s lacks what the data path needs: %s", feat.Kernel, strings.Join(feat.Missing, "; "))
	}
	return cgroup, pin, feat, nil
}

// Load probes the kernel, loads the programs, pins them and their maps under
// opts.PinPath and attaches them to opts.Cgroup. On any error everything
// already done is undone.
func Load(opts Options) (_ *Datapath, err error) {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	cg, pin, feat, err := preflight(opts)
	if err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise RLIMIT_MEMLOCK for BPF maps: %w", err)
	}
	if err := preparePinDir(pin, log); err != nil {
		return nil, err
	}

	d := &Datapath{log: log, cgroup: cg, pinPath: pin, proxy: opts.Proxy, feat: feat, accel: opts.Accel}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if err := loadMeshletObjects(&d.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load BPF programs: verifier: %+v", ve)
		}
		return nil, fmt.Errorf("load BPF programs: %w", err)
	}
	if err := d.writeConfig(); err != nil {
		return nil, err
	}
	if err := d.pinAll(); err != nil {
		return nil, err
	}

	// Redirect programs first, then pairing, then capture: capture is what
	// starts the traffic, so it goes last and leaves first.
	if err := d.attachToMap(d.objs.MltSockApp, d.objs.MeshletMsgApp, ebpf.AttachSkMsgVerdict); err != nil {
		return nil, err
	}
	if err := d.setMsgProxy(opts.Accel.IntoApp); err != nil {
		return nil, err
	}
	if opts.StreamVerdict {
		if err := d.attachToMap(d.objs.MltSockProxy, d.objs.MeshletSkbVerdict, ebpf.AttachSkSKBStreamVerdict); err != nil {
			return nil, err
		}
	}
	if err := d.attachCgroup(d.objs.MeshletSockops, ebpf.AttachCGroupSockOps); err != nil {
		return nil, err
	}
	if err := d.attachCgroup(d.objs.MeshletConnect4, ebpf.AttachCGroupInet4Connect); err != nil {
		return nil, err
	}
	log.Info("datapath attached",
		zap.String("cgroup", cg), zap.String("pin_path", pin), zap.Stringer("proxy", opts.Proxy),
		zap.Strings("attachments", d.Attachments()), zap.Bool("accel_off", opts.Accel.Off),
		zap.Bool("accel_into_proxy", opts.Accel.IntoProxy), zap.Bool("accel_into_app", opts.Accel.IntoApp))
	return d, nil
}

// preparePinDir makes sure the pin folder is on a bpffs and empty. Pins left
// by an earlier agent that died are removed.
func preparePinDir(pin string, log *zap.Logger) error {
	parent := filepath.Dir(pin)
	var st unix.Statfs_t
	if err := unix.Statfs(parent, &st); err != nil {
		return fmt.Errorf("pin path %s: %w", pin, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		if parent != "/sys/fs/bpf" {
			return fmt.Errorf("pin path %s: %s is not a bpffs mount (mount -t bpf bpf %s)", pin, parent, parent)
		}
		// Like other BPF agents, mount the conventional bpffs if missing.
		if err := unix.Mount("bpf", parent, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", parent, err)
		}
		log.Info("mounted bpffs", zap.String("path", parent))
	}
	entries, err := os.ReadDir(pin)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read pin path %s: %w", pin, err)
	default:
		for _, e := range entries {
			if err := os.Remove(filepath.Join(pin, e.Name())); err != nil {
				return fmt.Errorf("remove stale pin %s: %w", e.Name(), err)
			}
		}
		if len(entries) > 0 {
			log.Warn("removed stale pins of an earlier agent", zap.String("pin_path", pin), zap.Int("count", len(entries)))
		}
	}
	if err := os.MkdirAll(pin, 0o700); err != nil {
		return fmt.Errorf("create pin path %s: %w", pin, err)
	}
	return nil
}

func (d *Datapath) pinAll() error {
	maps := map[string]*ebpf.Map{
		"mlt_services": d.objs.MltServices, "mlt_config": d.objs.MltConfig, "mlt_bypass": d.objs.MltBypass,
		"mlt_origdst": d.objs.MltOrigdst, "mlt_conns": d.objs.MltConns, "mlt_sock_app": d.objs.MltSockApp,
		"mlt_sock_proxy": d.objs.MltSockProxy, "mlt_sk_state": d.objs.MltSkState, "mlt_fwd": d.objs.MltFwd,
		"mlt_up_peers": d.objs.MltUpPeers,
		"mlt_stats":    d.objs.MltStats,
	}
	for name, m := range maps {
		if err := m.Pin(filepath.Join(d.pinPath, name)); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	progs := map[string]*ebpf.Program{
		"prog_connect4": d.objs.MeshletConnect4, "prog_sockops": d.objs.MeshletSockops,
		"prog_msg_app": d.objs.MeshletMsgApp, "prog_msg_proxy": d.objs.MeshletMsgProxy,
		"prog_skb_verdict": d.objs.MeshletSkbVerdict,
	}
	for name, p := range progs {
		if err := p.Pin(filepath.Join(d.pinPath, name)); err != nil {
			return fmt.Errorf("pin program %s: %w", name, err)
		}
	}
	return nil
}

func (d *Datapath) attachCgroup(p *ebpf.Program, typ ebpf.AttachType) error {
	l, err := link.AttachCgroup(link.CgroupOptions{Path: d.cgroup, Attach: typ, Program: p})
	if err != nil {
		return fmt.Errorf("attach %s to cgroup %s: %w", typ, d.cgroup, err)
	}
	d.links = append(d.links, l)
	how := "prog_attach"
	if _, err := l.Info(); err == nil && d.feat.CgroupLink {
		how = "bpf_link"
	}
	d.attached = append(d.attached, fmt.Sprintf("%s:%s", typ, how))
	return nil
}

// attachToMap attaches an sk_msg or sk_skb program to a sockhash for the
// datapath's lifetime (see mapAttach).
func (d *Datapath) attachToMap(m *ebpf.Map, p *ebpf.Program, typ ebpf.AttachType) error {
	a, err := mapAttach(m, p, typ)
	if err != nil {
		return err
	}
	if a.l != nil {
		d.links = append(d.links, a.l)
	} else {
		d.raw = append(d.raw, a.raw)
	}
	d.attached = append(d.attached, a.desc)
	return nil
}

// mapAttach attaches an sk_msg or sk_skb program to a sockhash, through a
// bpf_link where the kernel supports it (6.10+) and the older program
// attachment otherwise.
func mapAttach(m *ebpf.Map, p *ebpf.Program, typ ebpf.AttachType) (*mapAttachment, error) {
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: m.FD(), Program: p, Attach: typ})
	if err == nil {
		return &mapAttachment{l: l, desc: fmt.Sprintf("%s:bpf_link", typ)}, nil
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: m.FD(), Program: p, Attach: typ}); err != nil {
		return nil, fmt.Errorf("attach %s to sockhash: %w", typ, err)
	}
	return &mapAttachment{raw: rawAttachment{target: m, prog: p, typ: typ}, desc: fmt.Sprintf("%s:prog_attach", typ)}, nil
}

// setMsgProxy attaches meshlet_msg_proxy to the proxy's sockhash when on,
// and detaches it when off. A socket takes the sockhash's sk_msg program
// when it enters the map, and every send of a socket that has one goes
// through the kernel's sk_msg path (a copy into a scatterlist, the
// program, then TCP); so without into_app, when the program could only
// pass, the proxy's sockets enter the map without it and send through
// plain TCP. Sockets keep what they entered with: connections made while
// into_app was off stay on TCP after it is switched on (as they would
// anyway: their first send marked them tainted), and a connection made
// while it was on keeps the program, which then passes (it reads the
// flags). Called with d.mu held or before d is shared.
func (d *Datapath) setMsgProxy(on bool) error {
	switch {
	case on && d.msgProxy == nil:
		a, err := mapAttach(d.objs.MltSockProxy, d.objs.MeshletMsgProxy, ebpf.AttachSkMsgVerdict)
		if err != nil {
			return err
		}
		d.msgProxy = a
	case !on && d.msgProxy != nil:
		if err := d.msgProxy.detach(); err != nil {
			return fmt.Errorf("detach %s from the proxy's sockhash: %w", d.msgProxy.desc, err)
		}
		d.msgProxy = nil
	}
	return nil
}

func (d *Datapath) writeConfig() error {
	a := d.proxy.Addr().As4()
	cfg := meshletAgentConfig{
		ProxyAddr: binary.NativeEndian.Uint32(a[:]),
		ProxyPort: d.proxy.Port(),
		Flags:     d.accel.flags(),
	}
	if err := d.objs.MltConfig.Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("write BPF config: %w", err)
	}
	return nil
}

// SetAccel switches acceleration directions at run time (the kill switch is
// Accel{Off: true}). Capture is unaffected.
func (d *Datapath) SetAccel(a Accel) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a.IntoApp {
		// The program first: it reads the flags written next.
		if err := d.setMsgProxy(true); err != nil {
			return err
		}
	}
	old := d.accel
	d.accel = a
	if err := d.writeConfig(); err != nil {
		d.accel = old
		return err
	}
	return d.setMsgProxy(a.IntoApp)
}

// Accel returns the acceleration directions in force.
func (d *Datapath) Accel() Accel {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.accel
}

// Features returns what the kernel probe found.
func (d *Datapath) Features() Features { return d.feat }

// Attachments describes each attachment and how it was made.
func (d *Datapath) Attachments() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := append([]string(nil), d.attached...)
	if d.msgProxy != nil {
		out = append(out, d.msgProxy.desc+" (into_app)")
	}
	return out
}

// Cgroup is the cgroup the programs are attached to.
func (d *Datapath) Cgroup() string { return d.cgroup }

// PinPath is the bpffs folder holding the pins.
func (d *Datapath) PinPath() string { return d.pinPath }

// Close detaches every program (capture first), unpins and removes the pin
// folder. It is safe to call more than once.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for i := len(d.links) - 1; i >= 0; i-- {
		if err := d.links[i].Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach: %w", err))
		}
	}
	if err := d.setMsgProxy(false); err != nil {
		errs = append(errs, err)
	}
	for _, r := range d.raw {
		if err := link.RawDetachProgram(link.RawDetachProgramOptions{Target: r.target.FD(), Program: r.prog, Attach: r.typ}); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", r.typ, err))
		}
	}
	if err := d.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close objects: %w", err))
	}
	if d.pinPath != "" {
		if err := removePins(d.pinPath); err != nil {
			errs = append(errs, err)
		}
	}
	d.log.Info("datapath detached", zap.String("cgroup", d.cgroup), zap.Int("errors", len(errs)))
	return errors.Join(errs...)
}

// removePins deletes the pin folder and what it holds. Closing the Go
// objects does not unpin: the bpffs entries are removed here.
func removePins(pin string) error {
	entries, err := os.ReadDir(pin)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read pin path %s: %w", pin, err)
	}
	for _, e := range entries {
		if err := os.Remove(filepath.Join(pin, e.Name())); err != nil {
			return fmt.Errorf("unpin %s: %w", e.Name(), err)
		}
	}
	if err := os.Remove(pin); err != nil {
		return fmt.Errorf("remove pin path %s: %w", pin, err)
	}
	return nil
}

// Cleanup removes the pins an agent left under pin (for example after it
// was killed). Attachments made through bpf_link end with the process that
// held them; pinned maps keep nothing attached to a cgroup.
func Cleanup(pin string) error {
	if pin == "" {
		pin = DefaultPinPath
	}
	return removePins(pin)
}
