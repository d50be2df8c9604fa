package smoke

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// strict reports whether a missing privilege or kernel feature must fail rather than skip.
func strict() bool {
	return os.Getenv("CI") == "true" || os.Getenv("MESHLET_REQUIRE_PRIV") == "1"
}

// inVM reports whether the test runs inside the test/vm initramfs (set by its /init).
func inVM() bool { return os.Getenv("MESHLET_VM") == "1" }

// needPriv skips (or, in strict mode, fails) when the process cannot use BPF.
func needPriv(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		if strict() {
			tb.Fatalf("privileged test needs root (euid %d) and CI/MESHLET_REQUIRE_PRIV demands it", os.Geteuid())
		}
		tb.Skipf("skipping: needs root for BPF (euid %d); set MESHLET_REQUIRE_PRIV=1 to make this a failure", os.Geteuid())
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		tb.Fatalf("remove memlock rlimit: %v", err)
	}
}

// kernelVersion is a kernel release reduced to major.minor.patch.
type kernelVersion [3]int

func (v kernelVersion) String() string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }

func (v kernelVersion) less(o kernelVersion) bool {
	for i := range v {
		if v[i] != o[i] {
			return v[i] < o[i]
		}
	}
	return false
}

// parseKernelVersion reads the leading "X.Y[.Z]" of a release string such as "6.12.95+deb12-cloud-amd64".
func parseKernelVersion(release string) (kernelVersion, error) {
	var v kernelVersion
	end := strings.IndexFunc(release, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if end >= 0 {
		release = release[:end]
	}
	parts := strings.Split(strings.TrimSuffix(release, "."), ".")
	if len(parts) < 2 {
		return v, fmt.Errorf("kernel release %q: want at least major.minor", release)
	}
	for i := 0; i < len(parts) && i < 3; i++ {
		n, err := strconv.Atoi(parts[i])
		if err != nil || n < 0 {
			return v, fmt.Errorf("kernel release %q: component %d: not a number", release, i)
		}
		v[i] = n
	}
	return v, nil
}

func runningKernel(tb testing.TB) (kernelVersion, string) {
	tb.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		tb.Fatalf("uname: %v", err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	v, err := parseKernelVersion(rel)
	if err != nil {
		tb.Fatalf("parse running kernel: %v", err)
	}
	return v, rel
}

func mustVersion(s string) kernelVersion {
	v, err := parseKernelVersion(s)
	if err != nil {
		panic(err)
	}
	return v
}

// report prints the machine-readable probe line read by test/vm/cmd/vmrun.
func report(name, status string, minVer kernelVersion, err error) {
	detail := ""
	if err != nil {
		detail = strings.ReplaceAll(err.Error(), `"`, `'`)
	}
	fmt.Printf("MESHLET-FEATURE name=%s status=%s min=%d.%d detail=%q\n", name, status, minVer[0], minVer[1], detail)
}

// judge turns a probe result into a test outcome: unsupported on a kernel at or above the upstream
// minimum fails (the kernel lacks something it should have); below the minimum a required feature fails
// in strict mode and skips otherwise; an optional feature below its minimum is only reported.
func judge(t *testing.T, name string, minVer kernelVersion, required bool, err error) {
	t.Helper()
	running, rel := runningKernel(t)
	switch {
	case err == nil:
		report(name, "ok", minVer, nil)
		t.Logf("%s: supported on %s", name, rel)
	case errors.Is(err, ebpf.ErrNotSupported):
		report(name, "unsupported", minVer, err)
		switch {
		case !running.less(minVer):
			t.Fatalf("%s: not supported on %s although upstream has it since %s: %v", name, rel, minVer, err)
		case required && strict():
			t.Fatalf("%s: required by meshlet, not supported on %s (needs %s): %v", name, rel, minVer, err)
		case required:
			t.Skipf("%s: required by meshlet, not supported on %s (needs %s)", name, rel, minVer)
		default:
			t.Logf("%s: optional, not supported on %s (needs %s): %v", name, rel, minVer, err)
		}
	default:
		report(name, "error", minVer, err)
		t.Fatalf("%s: probe inconclusive on %s: %v", name, rel, err)
	}
}

// TestKernelFeatures probes program types, map types and helpers with the features package.
func TestKernelFeatures(t *testing.T) {
	needPriv(t)
	cases := []struct {
		name     string
		min      string
		required bool
		probe    func() error
	}{
		{"prog/sock_ops", "4.13", true, func() error { return features.HaveProgramType(ebpf.SockOps) }},
		{"prog/sk_skb", "4.14", true, func() error { return features.HaveProgramType(ebpf.SkSKB) }},
		{"prog/sk_msg", "4.17", true, func() error { return features.HaveProgramType(ebpf.SkMsg) }},
		{"prog/cgroup_sock_addr(connect4)", "4.17", true, func() error { return features.HaveProgramType(ebpf.CGroupSockAddr) }},
		{"prog/cgroup_sockopt", "5.3", false, func() error { return features.HaveProgramType(ebpf.CGroupSockopt) }},
		{"map/sockmap", "4.14", true, func() error { return features.HaveMapType(ebpf.SockMap) }},
		{"map/sockhash", "4.18", true, func() error { return features.HaveMapType(ebpf.SockHash) }},
		{"map/lru_hash", "4.10", true, func() error { return features.HaveMapType(ebpf.LRUHash) }},
		{"helper/sock_ops:sock_hash_update", "4.18", true, func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnSockHashUpdate)
		}},
		{"helper/sock_ops:get_socket_cookie", "4.19", true, func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnGetSocketCookie)
		}},
		{"helper/sk_msg:msg_redirect_hash", "4.18", true, func() error {
			return features.HaveProgramHelper(ebpf.SkMsg, asm.FnMsgRedirectHash)
		}},
		{"helper/sk_skb:sk_redirect_hash", "4.18", false, func() error {
			return features.HaveProgramHelper(ebpf.SkSKB, asm.FnSkRedirectHash)
		}},
		{"helper/connect4:get_socket_cookie", "4.19", true, func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetSocketCookie)
		}},
		{"helper/connect4:sk_lookup_tcp", "5.2", false, func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSkLookupTcp)
		}},
		{"helper/connect4:get_netns_cookie", "5.7", false, func() error {
			return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnGetNetnsCookie)
		}},
		{"helper/sock_ops:get_netns_cookie", "5.15", false, func() error {
			return features.HaveProgramHelper(ebpf.SockOps, asm.FnGetNetnsCookie)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			judge(t, c.name, mustVersion(c.min), c.required, c.probe())
		})
	}
}

// trivialProgram loads "return ret" of the given type.
func trivialProgram(tb testing.TB, typ ebpf.ProgramType, attach ebpf.AttachType, ret int32) *ebpf.Program {
	tb.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "smoke",
		Type:         typ,
		AttachType:   attach,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, ret), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		tb.Fatalf("load trivial %s program: %v", typ, err)
	}
	tb.Cleanup(func() { _ = prog.Close() })
	return prog
}

// cgroup2Mount finds the cgroup v2 mount point in /proc/self/mountinfo.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("open mountinfo: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}

// TestCgroupLink creates a private cgroup under the cgroup2 mount and attaches sockops and connect4
// programs to it through bpf_link (5.7+), then detaches and removes it. Nothing else is attached.
func TestCgroupLink(t *testing.T) {
	needPriv(t)
	root, err := cgroup2Mount()
	if err != nil {
		if strict() {
			t.Fatalf("cgroup2: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	dir, err := os.MkdirTemp(root, "meshlet-smoke-")
	if err != nil {
		t.Fatalf("create test cgroup under %s: %v", root, err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove test cgroup %s: %v", dir, err)
		}
	})
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatalf("open cgroup %s: %v", dir, err)
	}
	defer cg.Close()
	t.Logf("test cgroup %s", dir)

	for _, c := range []struct {
		name   string
		typ    ebpf.ProgramType
		attach ebpf.AttachType
	}{
		{"bpf_link/cgroup_sock_ops", ebpf.SockOps, ebpf.AttachCGroupSockOps},
		{"bpf_link/cgroup_connect4", ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Connect},
	} {
		t.Run(c.name, func(t *testing.T) {
			prog := trivialProgram(t, c.typ, c.attach, 1)
			l, err := link.AttachRawLink(link.RawLinkOptions{Target: int(cg.Fd()), Program: prog, Attach: c.attach})
			if err == nil {
				info, ierr := l.Info()
				if ierr != nil {
					err = fmt.Errorf("link info: %w", ierr)
				} else if info.Type != link.CgroupType {
					err = fmt.Errorf("link type %v, want cgroup", info.Type)
				}
				if cerr := l.Close(); cerr != nil && err == nil {
					err = fmt.Errorf("close link: %w", cerr)
				}
			}
			judge(t, c.name, mustVersion("5.7"), true, err)
		})
	}
}

// TestSockmapAttach attaches sk_msg and sk_skb verdict programs to a sockhash: first as a bpf_link
// (BPF_LINK_TYPE_SOCKMAP, 6.10+), then the legacy BPF_PROG_ATTACH that older kernels need.
func TestSockmapAttach(t *testing.T) {
	needPriv(t)
	newHash := func(t *testing.T) *ebpf.Map {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "smoke_hash", Type: ebpf.SockHash, KeySize: 8, ValueSize: 8, MaxEntries: 16})
		if err != nil {
			t.Fatalf("create sockhash: %v", err)
		}
		t.Cleanup(func() { _ = m.Close() })
		return m
	}
	for _, c := range []struct {
		suffix string
		typ    ebpf.ProgramType
		attach ebpf.AttachType
	}{
		{"sk_msg", ebpf.SkMsg, ebpf.AttachSkMsgVerdict},
		{"sk_skb_stream_verdict", ebpf.SkSKB, ebpf.AttachSkSKBStreamVerdict},
	} {
		t.Run("bpf_link/sockmap_"+c.suffix, func(t *testing.T) {
			m := newHash(t)
			prog := trivialProgram(t, c.typ, c.attach, 1) // SK_PASS
			l, err := link.AttachRawLink(link.RawLinkOptions{Target: m.FD(), Program: prog, Attach: c.attach})
			if err == nil {
				err = l.Close()
			} else if errors.Is(err, unix.EINVAL) {
				// Kernels before 6.10 reject BPF_LINK_CREATE for sockmap attach types with EINVAL.
				err = fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
			}
			judge(t, "bpf_link/sockmap_"+c.suffix, mustVersion("6.10"), false, err)
		})
		t.Run("prog_attach/sockmap_"+c.suffix, func(t *testing.T) {
			m := newHash(t)
			prog := trivialProgram(t, c.typ, c.attach, 1)
			err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: m.FD(), Program: prog, Attach: c.attach})
			if err == nil {
				err = link.RawDetachProgram(link.RawDetachProgramOptions{Target: m.FD(), Program: prog, Attach: c.attach})
			}
			judge(t, "prog_attach/sockmap_"+c.suffix, mustVersion("4.17"), true, err)
		})
	}
}

// TestBPFFSPin pins a map under the bpf filesystem, as the agent does under /sys/fs/bpf/meshlet.
func TestBPFFSPin(t *testing.T) {
	needPriv(t)
	const bpffs = "/sys/fs/bpf"
	var st unix.Statfs_t
	if err := unix.Statfs(bpffs, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		if inVM() {
			t.Fatalf("%s is not a bpf filesystem inside the VM (statfs err %v)", bpffs, err)
		}
		t.Skipf("skipping: %s is not a bpf filesystem on this host", bpffs)
	}
	dir, err := os.MkdirTemp(bpffs, "meshlet_smoke_")
	if err != nil {
		t.Fatalf("mkdir in bpffs: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "smoke_pin", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatalf("create map: %v", err)
	}
	defer m.Close()
	pin := filepath.Join(dir, "smoke_pin")
	if err := m.Pin(pin); err != nil {
		t.Fatalf("pin map at %s: %v", pin, err)
	}
	m2, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		t.Fatalf("load pinned map %s: %v", pin, err)
	}
	defer m2.Close()
	if err := m.Put(uint32(1), uint32(42)); err != nil {
		t.Fatalf("put: %v", err)
	}
	var got uint32
	if err := m2.Lookup(uint32(1), &got); err != nil || got != 42 {
		t.Fatalf("lookup through pinned map: got %d, err %v; want 42", got, err)
	}
	report("bpffs/pin", "ok", mustVersion("4.4"), nil)
}

func TestParseKernelVersion(t *testing.T) {
	for in, want := range map[string]kernelVersion{
		"5.10.0-46-cloud-amd64":     {5, 10, 0},
		"6.12.95+deb12-cloud-amd64": {6, 12, 95},
		"7.2.13+deb14-cloud-amd64":  {7, 2, 13},
		"6.18.44-fc-v769":           {6, 18, 44},
		"6.1":                       {6, 1, 0},
	} {
		got, err := parseKernelVersion(in)
		if err != nil || got != want {
			t.Errorf("parseKernelVersion(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "6", "x.y", "-1.2"} {
		if _, err := parseKernelVersion(bad); err == nil {
			t.Errorf("parseKernelVersion(%q): want error", bad)
		}
	}
	if !mustVersion("5.10").less(mustVersion("6.1")) || mustVersion("6.12").less(mustVersion("6.10")) {
		t.Error("kernelVersion.less ordering wrong")
	}
}

func FuzzParseKernelVersion(f *testing.F) {
	for _, s := range []string{"5.10.0-46-cloud-amd64", "6.12.95+deb12", "7.2", "", "1..2", "9999999999999999999.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parseKernelVersion(s)
		if err != nil {
			return
		}
		for _, n := range v {
			if n < 0 {
				t.Fatalf("negative component in %v from %q", v, s)
			}
		}
		// Re-parsing the canonical form must give the same version.
		if v2, err := parseKernelVersion(v.String()); err != nil || v2 != v {
			t.Fatalf("round trip %q -> %v -> %v, %v", s, v, v2, err)
		}
	})
}
