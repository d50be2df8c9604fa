package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/meshlet/meshlet/internal/privtest"
)

const mib = 1 << 20

// A client dials service VIPs; 1 MiB each way arrives byte-identical at the
// right upstream, and the proxy used the true original destination.
func TestMeshedBulkReachesRightUpstream(t *testing.T) {
	for _, mode := range []struct {
		name    string
		accel   string
		intoApp bool
	}{{"accel-off", "off", false}, {"accel-into-proxy", "on", false}, {"accel-both", "on", true}} {
		t.Run(mode.name, func(t *testing.T) {
			m := newSandbox(t)
			// A real address inside the sandbox for the ORIGINAL_DST service.
			privtest.MustRun(t, "ip", "-n", m.ns, "addr", "add", "10.96.5.5/32", "dev", "lo")
			a := m.bulkServer("127.0.0.1:18001", "a", mib)
			b := m.bulkServer("127.0.0.1:18002", "b", mib)
			od := m.bulkServer("10.96.5.5:18003", "orig", mib)
			m.start(meshConfig(mode.accel, mode.intoApp,
				svc{Name: "svc-a", Listen: "10.96.0.1:80", Endpoints: []string{"127.0.0.1:18001"}},
				svc{Name: "svc-b", Listen: "10.96.0.2:80", Endpoints: []string{"127.0.0.1:18002"}},
				svc{Name: "passthrough", Listen: "0.0.0.0:18003"}, // ORIGINAL_DST
			))

			for _, c := range []struct {
				addr string
				srv  *bulkServer
			}{{"10.96.0.1:80", a}, {"10.96.0.2:80", b}, {"10.96.0.2:80", b}, {"10.96.5.5:18003", od}} {
				local := run(t, m.role("bulk", c.addr, fmt.Sprint(mib)))
				if !strings.HasPrefix(local, "127.0.0.1:") && !strings.HasPrefix(local, "10.96.5.5:") {
					t.Fatalf("client local address %q", local)
				}
			}
			for _, s := range []*bulkServer{a, b, od} {
				n, errs := s.result()
				want := map[*bulkServer]int{a: 1, b: 2, od: 1}[s]
				if n != want || len(errs) > 0 {
					t.Fatalf("server %s: %d connections (want %d), errors %v", s.name, n, want, errs)
				}
			}
			st := m.status()
			if st.BPF == nil || st.BPF.Captured != 4 {
				t.Fatalf("bpf counters %+v: want 4 captured", st.BPF)
			}
			if st.ProxyStats.NoOriginalDst != 0 {
				t.Fatalf("proxy could not find the original destination %d times", st.ProxyStats.NoOriginalDst)
			}
			switch mode.accel {
			case "off":
				if st.BPF.RedirectMsgs != 0 {
					t.Fatalf("acceleration off but %d messages redirected", st.BPF.RedirectMsgs)
				}
			default:
				// 4 MiB went from apps into the proxy, all redirected. With
				// into_app the proxy's upstream sockets also try to redirect
				// into their servers, which run outside the meshed cgroup
				// here: one miss per upstream connection, then TCP.
				allowedMiss := uint64(0)
				if mode.intoApp {
					allowedMiss = 4
				}
				if st.BPF.RedirectBytes+st.BPF.FwdBytes < 4*mib || st.BPF.MissMsgs > allowedMiss {
					t.Fatalf("bpf counters %+v: want >= 4 MiB redirected or forwarded, at most %d misses", st.BPF, allowedMiss)
				}
				if mode.intoApp && st.BPF.RedirectBytes+st.BPF.FwdBytes < 8*mib {
					t.Fatalf("into_app on but only %d bytes redirected, %d forwarded", st.BPF.RedirectBytes, st.BPF.FwdBytes)
				}
			}
		})
	}
}

// kill -9 the agent: a service that also has a direct path keeps working for
// new connections (no capture without a live proxy listener), and a clean
// stop leaves nothing attached.
func TestFailOpenAndCleanStop(t *testing.T) {
	m := newSandbox(t)
	privtest.MustRun(t, "ip", "-n", m.ns, "addr", "add", "10.96.7.7/32", "dev", "lo")
	direct := m.bulkServer("10.96.7.7:8080", "direct", 4096)
	viaMesh := m.bulkServer("127.0.0.1:18080", "mesh", 4096)
	cfg := meshConfig("on", false, svc{Name: "web", Listen: "10.96.7.7:8080", Endpoints: []string{"127.0.0.1:18080"}})
	m.start(cfg)

	run(t, m.role("bulk", "10.96.7.7:8080", "4096"))
	if n, errs := viaMesh.result(); n != 1 || len(errs) > 0 {
		t.Fatalf("meshed connection: n=%d errs=%v", n, errs)
	}

	killed := time.Now()
	if err := m.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-m.exited
	m.stopped = true
	// The very first connection after the agent is gone must go direct.
	run(t, m.role("bulk", "10.96.7.7:8080", "4096"))
	t.Logf("first connection after kill -9 succeeded %v after the kill", time.Since(killed))
	if n, errs := direct.result(); n != 1 || len(errs) > 0 {
		t.Fatalf("direct path after kill: n=%d errs=%v", n, errs)
	}
	if n := attached(t, m.cg); n != 0 {
		t.Fatalf("%d programs still attached after the agent died", n)
	}

	// Restart: the new agent replaces the dead one's pins; then stop it
	// cleanly and check nothing is left.
	m.start(cfg)
	run(t, m.role("bulk", "10.96.7.7:8080", "4096"))
	if n, _ := viaMesh.result(); n != 2 {
		t.Fatalf("after restart the connection did not go through the mesh (n=%d)", n)
	}
	if n := attached(t, m.cg); n != 2 {
		t.Fatalf("%d programs attached to the test cgroup, want 2 (connect4, sockops)", n)
	}
	assertNotAttachedElsewhere(t, m)
	m.stop()
	if n := attached(t, m.cg); n != 0 {
		t.Fatalf("%d programs still attached after a clean stop", n)
	}
	if _, err := os.Stat(m.pin); !os.IsNotExist(err) {
		t.Fatalf("pins left after a clean stop: %v", err)
	}
}

func attached(t *testing.T, cg string) int {
	return len(privtest.AttachedPrograms(t, cg))
}

// assertNotAttachedElsewhere checks that the agent's programs (found by
// their pins) are attached to no cgroup above the one it was given.
func assertNotAttachedElsewhere(t *testing.T, m *mesh) {
	t.Helper()
	var ours []ebpf.ProgramID
	for _, name := range []string{"prog_connect4", "prog_sockops"} {
		p, err := ebpf.LoadPinnedProgram(m.pin+"/"+name, nil)
		if err != nil {
			t.Fatalf("load pinned %s: %v", name, err)
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		ours = append(ours, id)
	}
	for _, dir := range []string{privtest.Cgroup2Root(t), m.agentCG, m.appsCG} {
		for _, p := range privtest.AttachedPrograms(t, dir) {
			for _, id := range ours {
				if p == id {
					t.Fatalf("agent program %d attached to %s, outside the cgroup it was given", id, dir)
				}
			}
		}
	}
}

// Bad input: one clear line on stderr, non-zero exit, nothing attached.
func TestBadInputGivesOneClearLine(t *testing.T) {
	privtest.Root(t)
	cg := privtest.Cgroup(t)
	pin := privtest.BPFFS(t)
	badCfg := t.TempDir() + "/bad.yaml"
	os.WriteFile(badCfg, []byte("capture:\n  acceleraton: on\n"), 0o644)
	badRes := t.TempDir() + "/badres.yaml"
	os.WriteFile(badRes, []byte(meshConfig("on", false, svc{Name: "x", Listen: "10.0.0.1:15001", Endpoints: []string{"127.0.0.1:1"}})), 0o644)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"run", "--frobnicate"}, "flag provided but not defined"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"missing cgroup", []string{"run", "--cgroup", cg + "/nope", "--bpffs", pin, "--admin-listen", "127.0.0.1:0"}, "no such file or directory"},
		{"cgroup root", []string{"run", "--cgroup", privtest.Cgroup2Root(t), "--bpffs", pin, "--admin-listen", "127.0.0.1:0"}, "refusing to capture the whole host"},
		{"bad acceleration", []string{"run", "--acceleration", "fast"}, "want auto, on or off"},
		{"unknown config field", []string{"run", "--config", badCfg}, "unknown field"},
		{"captures own port", []string{"run", "--config", badRes, "--cgroup", cg, "--bpffs", pin, "--admin-listen", "127.0.0.1:0"}, "agent's own"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ns := privtest.Netns(t)
			cmd := privtest.Command(t, "", ns, agentBin, c.args...)
			timer := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
			out, err := cmd.CombinedOutput()
			timer.Stop()
			if _, ok := err.(*exec.ExitError); !ok {
				t.Fatalf("want a non-zero exit, got %v: %s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], c.want) {
				t.Fatalf("want one line containing %q, got:\n%s", c.want, out)
			}
			if n := attached(t, cg); n != 0 {
				t.Fatalf("%d programs attached after a failed start", n)
			}
		})
	}
	_ = netip.Addr{}
}

// The kill switch stops redirects at once while capture keeps working.
func TestKillSwitchKeepsCapture(t *testing.T) {
	m := newSandbox(t)
	srv := m.bulkServer("127.0.0.1:18101", "s", 256<<10)
	m.start(meshConfig("on", true, svc{Name: "s", Listen: "10.96.2.1:80", Endpoints: []string{"127.0.0.1:18101"}}))
	run(t, m.role("bulk", "10.96.2.1:80", fmt.Sprint(256<<10)))
	before := m.status().BPF
	if before.RedirectBytes+before.FwdBytes == 0 {
		t.Fatalf("no acceleration before the kill switch: %+v", before)
	}
	run(t, m.app(agentBin, "acceleration", "off"))
	if st := m.status(); !strings.HasPrefix(st.Mode.Acceleration, "off") {
		t.Fatalf("mode after kill switch: %q", st.Mode.Acceleration)
	}
	run(t, m.role("bulk", "10.96.2.1:80", fmt.Sprint(256<<10)))
	after := m.status().BPF
	if after.Captured != before.Captured+1 {
		t.Fatalf("capture stopped with the kill switch: %d -> %d", before.Captured, after.Captured)
	}
	if after.RedirectBytes != before.RedirectBytes || after.FwdBytes != before.FwdBytes {
		t.Fatalf("bytes still accelerated after the kill switch: %+v -> %+v", before, after)
	}
	if n, errs := srv.result(); n != 2 || len(errs) > 0 {
		t.Fatalf("server: n=%d errs=%v", n, errs)
	}
}

// On-demand: the agent subscribes to no cluster until a meshed connection
// needs one; that first connection waits for the cluster and gets through.
func TestOnDemandClusterHoldsFirstConnection(t *testing.T) {
	m := newSandbox(t)
	srv := m.bulkServer("127.0.0.1:18301", "late", 4096)
	m.start(meshConfig("on", false, svc{Name: "late", Listen: "10.96.4.1:80", Endpoints: []string{"127.0.0.1:18301"}}), "--on-demand")
	if st := m.status(); st.Config.Clusters != 0 || len(st.Services) != 1 {
		t.Fatalf("before the first connection: %d clusters (want 0), services %v", st.Config.Clusters, st.Services)
	}
	run(t, m.role("bulk", "10.96.4.1:80", "4096"))
	if n, errs := srv.result(); n != 1 || len(errs) > 0 {
		t.Fatalf("first connection: n=%d errs=%v", n, errs)
	}
	if st := m.status(); st.Config.Clusters != 1 || st.ProxyStats.UpstreamFail != 0 {
		t.Fatalf("after: %d clusters, %d upstream failures", st.Config.Clusters, st.ProxyStats.UpstreamFail)
	}
}
