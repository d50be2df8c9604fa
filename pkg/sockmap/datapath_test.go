package sockmap

import (
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/meshlet/meshlet/internal/privtest"
	"github.com/meshlet/meshlet/internal/testlog"
)

func TestMain(m *testing.M) {
	if privtest.RunRole() {
		return
	}
	os.Exit(m.Run())
}

// sandbox is one test's cgroup, bpffs, netns and a listener standing in for
// the proxy inside that netns.
type sandbox struct {
	cg, pin, ns string
	lis         net.Listener
	dp          *Datapath
}

// Needs: root, cgroup2, bpffs, kernel >= 5.10 (connect4 with bpf_sk_lookup_tcp, sockhash, sk_msg).
func newSandbox(t *testing.T, accel Accel) *sandbox {
	t.Helper()
	privtest.Root(t)
	s := &sandbox{cg: privtest.Cgroup(t), pin: privtest.BPFFS(t), ns: privtest.Netns(t)}
	privtest.InNetns(t, s.ns, func() {
		var err error
		s.lis, err = net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { s.lis.Close() })
	if f := Probe(); !f.Capture || !f.Pairing || !f.Redirect {
		privtest.Unavailable(t, "kernel %s lacks: %v", f.Kernel, f.Missing)
	}
	dp, err := Load(Options{
		Cgroup: s.cg, PinPath: s.pin,
		Proxy: netip.MustParseAddrPort(s.lis.Addr().String()),
		Accel: accel, StreamVerdict: true, Logger: testlog.New(t),
	})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	s.dp = dp
	t.Cleanup(func() { dp.Close() })
	return s
}

// dial runs a client in the sandbox's cgroup and netns.
func (s *sandbox) dial(t *testing.T, addr, msg string) (string, error) {
	t.Helper()
	cmd := privtest.Command(t, s.cg, s.ns, os.Args[0], addr, msg)
	cmd.Env = append(os.Environ(), privtest.RoleEnv+"=dial")
	out, err := cmd.Output()
	if ee, ok := err.(*exec_ExitError); ok {
		return string(out), &dialError{string(ee.Stderr)}
	}
	return string(out), err
}

func TestCaptureRecordsOriginalDestination(t *testing.T) {
	s := newSandbox(t, Accel{IntoProxy: true})
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	if err := s.dp.SyncServices([]Service{{Addr: vip.Addr(), Port: vip.Port(), ID: 7}}); err != nil {
		t.Fatal(err)
	}

	got := make(chan Original, 1)
	errc := make(chan error, 1)
	go func() {
		c, err := s.lis.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		orig, ok, err := s.dp.OriginalDst(netip.MustParseAddrPort(c.RemoteAddr().String()))
		if err != nil || !ok {
			errc <- err
			return
		}
		got <- orig
		b, _ := io.ReadAll(c)
		_, _ = io.WriteString(c, "proxy saw "+string(b)+" for "+orig.Dst.String())
	}()

	out, err := s.dial(t, vip.String(), "hello")
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	select {
	case orig := <-got:
		if orig.Dst != vip || orig.ServiceID != 7 || orig.Cookie == 0 {
			t.Fatalf("original destination = %+v, want %v id 7", orig, vip)
		}
	case err := <-errc:
		t.Fatalf("proxy side: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("proxy never accepted")
	}
	if want := "proxy saw hello for 10.96.0.10:80"; out != want {
		t.Fatalf("reply %q, want %q", out, want)
	}
	st, err := s.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Captured != 1 || st.PairedApp != 1 {
		t.Fatalf("stats %+v: want captured=1 paired_app=1", st)
	}
}

func TestNoCaptureWithoutListener(t *testing.T) {
	s := newSandbox(t, Accel{IntoProxy: true})
	// A direct path to the service inside the sandbox netns.
	privtest.MustRun(t, "ip", "-n", s.ns, "addr", "add", "10.96.0.11/32", "dev", "lo")
	var direct net.Listener
	privtest.InNetns(t, s.ns, func() {
		var err error
		if direct, err = net.Listen("tcp4", "10.96.0.11:8080"); err != nil {
			t.Fatal(err)
		}
	})
	defer direct.Close()
	go func() {
		for {
			c, err := direct.Accept()
			if err != nil {
				return
			}
			b, _ := io.ReadAll(c)
			_, _ = io.WriteString(c, "direct "+string(b))
			c.Close()
		}
	}()
	if err := s.dp.SyncServices([]Service{{Addr: netip.MustParseAddr("10.96.0.11"), Port: 8080, ID: 1}}); err != nil {
		t.Fatal(err)
	}
	s.lis.Close() // the proxy is gone: connect() must not be rewritten
	out, err := s.dial(t, "10.96.0.11:8080", "x")
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	if out != "direct x" {
		t.Fatalf("reply %q: the connection did not take the direct path", out)
	}
	st, _ := s.dp.Stats()
	if st.CaptureNoListener != 1 || st.Captured != 0 {
		t.Fatalf("stats %+v: want capture_no_listener=1 captured=0", st)
	}
}

func TestSyncServicesAddsAndRemoves(t *testing.T) {
	s := newSandbox(t, Accel{})
	a := Service{Addr: netip.MustParseAddr("10.0.0.1"), Port: 80, ID: 1}
	b := Service{Port: 9080, ID: 2} // any address
	if err := s.dp.SyncServices([]Service{a, b}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.dp.Services(); len(got) != 2 {
		t.Fatalf("services %v, want 2", got)
	}
	if err := s.dp.SyncServices([]Service{b}); err != nil {
		t.Fatal(err)
	}
	got, _ := s.dp.Services()
	if len(got) != 1 || got[0].Port != 9080 || !got[0].Addr.IsUnspecified() {
		t.Fatalf("services %v, want only *:9080", got)
	}
	if err := s.dp.SyncServices([]Service{{Addr: netip.MustParseAddr("::1"), Port: 1}}); err == nil {
		t.Fatal("IPv6 service accepted")
	}
}

func TestCloseDetachesAndUnpins(t *testing.T) {
	s := newSandbox(t, Accel{IntoProxy: true})
	if _, err := os.Stat(s.pin + "/mlt_services"); err != nil {
		t.Fatalf("map not pinned: %v", err)
	}
	if n := attachedPrograms(t, s.cg); n != 2 {
		t.Fatalf("%d programs attached to the test cgroup, want 2", n)
	}
	if err := s.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if n := attachedPrograms(t, s.cg); n != 0 {
		t.Fatalf("%d programs still attached after Close", n)
	}
	if _, err := os.Stat(s.pin); !os.IsNotExist(err) {
		t.Fatalf("pin folder left behind: %v", err)
	}
}

func attachedPrograms(t *testing.T, cg string) int {
	return len(privtest.AttachedPrograms(t, cg))
}

func TestLoadRejectsBadInput(t *testing.T) {
	privtest.Root(t)
	pin := privtest.BPFFS(t)
	proxy := netip.MustParseAddrPort("127.0.0.1:15001")
	cases := map[string]Options{
		"missing cgroup": {Cgroup: "/sys/fs/cgroup/definitely-not-there-meshlet", PinPath: pin, Proxy: proxy},
		"not a cgroup":   {Cgroup: os.TempDir(), PinPath: pin, Proxy: proxy},
		"cgroup root":    {Cgroup: privtest.Cgroup2Root(t), PinPath: pin, Proxy: proxy},
		"dot in pin":     {Cgroup: privtest.Cgroup(t), PinPath: pin + ".v1", Proxy: proxy},
		"ipv6 proxy":     {Cgroup: privtest.Cgroup(t), PinPath: pin, Proxy: netip.MustParseAddrPort("[::1]:1")},
	}
	for name, o := range cases {
		t.Run(name, func(t *testing.T) {
			dp, err := Load(o)
			if err == nil {
				dp.Close()
				t.Fatal("Load accepted bad input")
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			t.Log(err)
		})
	}
}

// A kernel without a needed feature gets one line that names it, and
// nothing is attached.
func TestLoadRefusesKernelWithoutFeature(t *testing.T) {
	privtest.Root(t)
	cg := privtest.Cgroup(t)
	pin := privtest.BPFFS(t)
	_, err := Load(Options{
		Cgroup: cg, PinPath: pin, Proxy: netip.MustParseAddrPort("127.0.0.1:15001"),
		Probe: func() Features {
			return Features{Kernel: "4.14.0", Capture: true, Pairing: true,
				Missing: []string{"sk_msg programs (4.17): not supported by this kernel"}}
		},
	})
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "sk_msg programs") {
		t.Fatalf("want one line naming sk_msg, got %v", err)
	}
	if n := attachedPrograms(t, cg); n != 0 {
		t.Fatalf("%d programs attached", n)
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Fatalf("pin folder created: %v", err)
	}
}

// The proxy's sockhash carries meshlet_msg_proxy only while into_app is on:
// without it the program could only pass, and a socket that enters a
// sockhash with an sk_msg program sends through the slower sk_msg path.
// Needs: what newSandbox needs; listing a sockhash's programs needs 5.19+
// (older kernels: only the agent's own record is checked).
func TestMsgProxyAttachedOnlyWithIntoApp(t *testing.T) {
	s := newSandbox(t, Accel{IntoProxy: true})
	check := func(step string, want bool) {
		t.Helper()
		recorded := false
		for _, a := range s.dp.Attachments() {
			if strings.HasSuffix(a, "(into_app)") {
				recorded = true
			}
		}
		if recorded != want {
			t.Errorf("%s: Attachments() = %v, want the into_app program listed: %v", step, s.dp.Attachments(), want)
		}
		for m, wantN := range map[string]int{"mlt_sock_proxy": map[bool]int{false: 0, true: 1}[want], "mlt_sock_app": 1} {
			mp, err := ebpf.LoadPinnedMap(s.pin+"/"+m, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := link.QueryPrograms(link.QueryOptions{Target: mp.FD(), Attach: ebpf.AttachSkMsgVerdict})
			mp.Close()
			if err != nil {
				t.Logf("%s: this kernel cannot list a sockhash's programs (%v): the agent's record only", step, err)
				return
			}
			if len(res.Programs) != wantN {
				t.Errorf("%s: %d sk_msg programs on %s, want %d", step, len(res.Programs), m, wantN)
			}
		}
	}
	check("into_proxy only", false)
	if err := s.dp.SetAccel(Accel{IntoProxy: true, IntoApp: true}); err != nil {
		t.Fatal(err)
	}
	check("into_app switched on", true)
	if err := s.dp.SetAccel(Accel{IntoProxy: true, IntoApp: true, Off: true}); err != nil {
		t.Fatal(err)
	}
	check("kill switch with into_app", true)
	if err := s.dp.SetAccel(Accel{IntoProxy: true}); err != nil {
		t.Fatal(err)
	}
	check("into_app switched off", false)
	if err := s.dp.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}
