// Package privtest gives privileged tests their own sandbox: a cgroup v2
// directory they create, a private bpffs mount and a network namespace, all
// removed when the test ends. It also decides whether a missing privilege
// skips a test (developer machines) or fails it (CI=true or
// MESHLET_REQUIRE_PRIV=1).
package privtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/internal/waitfor"
)

// Required reports whether privileged tests must run (and so fail instead
// of skipping when they cannot).
func Required() bool {
	return os.Getenv("CI") == "true" || os.Getenv("MESHLET_REQUIRE_PRIV") == "1"
}

// Unavailable skips the test with reason, or fails it when privileged tests
// are required.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("privileged test cannot run (CI=true or MESHLET_REQUIRE_PRIV=1): %s", msg)
	}
	t.Skipf("skipping privileged test: %s (set MESHLET_REQUIRE_PRIV=1 to make this a failure)", msg)
}

// Root skips or fails the test unless it runs as root.
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root (BPF, cgroups, mounts)")
	}
}

func randName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Cgroup2Root returns the cgroup v2 mount point.
func Cgroup2Root(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		Unavailable(t, "read mountinfo: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if ok && strings.HasPrefix(post, "cgroup2 ") {
			if f := strings.Fields(pre); len(f) >= 5 {
				return f[4]
			}
		}
	}
	Unavailable(t, "no cgroup2 hierarchy mounted")
	return ""
}

// Cgroup creates a fresh cgroup under the cgroup2 mount. On cleanup every
// process still in it (all started by the test) is killed and the directory
// removed.
func Cgroup(t testing.TB) string {
	t.Helper()
	Root(t)
	dir := filepath.Join(Cgroup2Root(t), randName("meshlet-test-"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		Unavailable(t, "create cgroup: %v", err)
	}
	t.Cleanup(func() { RemoveCgroup(t, dir) })
	return dir
}

// SubCgroup creates a child cgroup of parent (removed with the parent).
func SubCgroup(t testing.TB, parent, name string) string {
	t.Helper()
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup %s: %v", dir, err)
	}
	return dir
}

// RemoveCgroup kills what runs in dir and its children, then removes them.
func RemoveCgroup(t testing.TB, dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			RemoveCgroup(t, filepath.Join(dir, e.Name()))
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := procs(dir)
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("remove cgroup %s: %v (pids %v)", dir, err, pids)
			return
		}
		time.Sleep(20 * time.Millisecond) // waiting for killed processes to exit
	}
}

func procs(dir string) []int {
	data, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	var out []int
	for _, f := range strings.Fields(string(data)) {
		if p, err := strconv.Atoi(f); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// BPFFS mounts a private bpffs instance in a temporary folder and returns a
// pin path inside it (a name without dots).
func BPFFS(t testing.TB) string {
	t.Helper()
	Root(t)
	dir, err := os.MkdirTemp("", "meshlet-bpffs-")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(dir)
		Unavailable(t, "mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs %s: %v", dir, err)
		}
		os.Remove(dir)
	})
	return filepath.Join(dir, "meshlet")
}

// Command prepares cmd to start inside cgroup dir (clone3 CLONE_INTO_CGROUP)
// and, if netns is not empty, inside that named network namespace (through
// nsenter, which unlike `ip netns exec` keeps the mount namespace, so
// /sys/fs/cgroup and bpffs stay visible).
func Command(t testing.TB, cgroup, netns string, name string, args ...string) *exec.Cmd {
	t.Helper()
	if netns != "" {
		args = append([]string{"--net=/run/netns/" + netns, name}, args...)
		name = "nsenter"
	}
	cmd := exec.Command(name, args...)
	if cgroup != "" {
		f, err := os.Open(cgroup)
		if err != nil {
			t.Fatalf("open cgroup: %v", err)
		}
		t.Cleanup(func() { f.Close() })
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd()), Setpgid: true}
	}
	return cmd
}

// Netns creates a named network namespace with loopback up, removed on
// cleanup. Tests send traffic only inside it.
func Netns(t testing.TB) string {
	t.Helper()
	Root(t)
	if _, err := exec.LookPath("ip"); err != nil {
		Unavailable(t, "iproute2 (ip) not installed")
	}
	name := randName("mlt")
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		Unavailable(t, "ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	MustRun(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// MustRun runs a command and fails the test on error.
func MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// InNetns runs f on a locked OS thread switched into the named network
// namespace, so sockets f creates live there.
func InNetns(t testing.TB, name string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns %s: %v", name, err)
	}
	defer func() {
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			panic(fmt.Sprintf("cannot return to the original netns: %v", err))
		}
	}()
	f()
}

// NetnsDial returns a DialContext function whose sockets are created inside
// the named network namespace (for HTTP clients talking to an agent there).
func NetnsDial(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			// The thread is left in the target netns and discarded:
			// returning from a locked goroutine without unlocking ends it.
			target, err := os.Open("/run/netns/" + name)
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer target.Close()
			if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
				ch <- result{nil, fmt.Errorf("setns %s: %w", name, err)}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// WaitFor polls cond every 20 ms until it returns true or timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	waitfor.Within(t, timeout, what, cond)
}

// AttachedPrograms returns the IDs of the programs attached to the cgroup
// dir as cgroup/connect4 or sockops (meshlet's cgroup attach types).
func AttachedPrograms(t testing.TB, dir string) []ebpf.ProgramID {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatalf("open cgroup %s: %v", dir, err)
	}
	defer f.Close()
	var ids []ebpf.ProgramID
	for _, typ := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupSockOps} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: typ})
		if err != nil {
			t.Fatalf("query %s programs on %s: %v", typ, dir, err)
		}
		for _, p := range res.Programs {
			ids = append(ids, p.ID)
		}
	}
	return ids
}
