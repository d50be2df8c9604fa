package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/internal/privtest"
	"github.com/meshlet/meshlet/test/bench/benchconf"
)

// TestBenchL7 is the L7 benchmark through the real agent, not a timed test:
// it only runs with MESHLET_BENCH=1 and asserts nothing about speed. One
// upstream (nginx, 1 worker, a 1 KiB body on every path) serves, side by
// side and interleaved round by round, wrk HTTP/1.1 keep-alive load that
// goes: direct; through the agent (a meshed wrk dials a service address,
// the agent captures it and serves it with its HTTP connection manager;
// acceleration on, into the proxy only and both ways); through HAProxy
// (http mode) and through nginx as a reverse proxy, which wrk dials
// directly. Every proxy is single-threaded and pinned to CPU 0; wrk and the
// upstream share CPU 1. CPU per request is the proxy's utime+stime delta
// from /proc/PID/stat over wrk's completed requests. gRPC: sequential
// UnaryCalls (1 KiB each way) from a meshed Go client, direct and through
// the agent. The Markdown report goes to MESHLET_BENCH_OUT (docs/bench-l7.md
// under `make bench`); MESHLET_BENCH_L7_PERF=DIR also keeps a `perf record -g`
// of each proxy (see perfRecord).
func TestBenchL7(t *testing.T) {
	if os.Getenv("MESHLET_BENCH") != "1" {
		t.Skip("benchmark: run with MESHLET_BENCH=1 (make bench)")
	}
	need(t, "wrk", "nginx", "haproxy", "taskset")
	rounds, dur, conns, grpcN := 3, 5, 32, 3000
	if v := os.Getenv("MESHLET_BENCH_ROUNDS"); v != "" {
		fmt.Sscan(v, &rounds)
	}
	const (
		upAddr   = "127.0.0.1:18401"
		haAddr   = "127.0.0.1:18402"
		ngAddr   = "127.0.0.1:18403"
		grpcAddr = "127.0.0.1:18404"
		httpVIP  = "10.96.40.1:80"
		grpcVIP  = "10.96.40.2:9090"
		tcpVIP   = "10.96.40.3:80"   // tcp_proxy to the same upstream: the relay without HTTP
		grpcTCP  = "10.96.40.4:9090" // tcp_proxy to the gRPC upstream: the hop without HTTP/2
		haGRPC   = "127.0.0.1:18405"
		// A second gRPC upstream outside the mesh (the test process): its
		// replies reach the proxy over loopback TCP, not redirected.
		grpcAddr2 = "127.0.0.1:18406"
		grpcTCP2  = "10.96.40.5:9090"
	)
	m := newSandbox(t)
	dir := t.TempDir()

	// The upstream runs in the meshed cgroup, as a same-node pod would: the
	// agent's upstream sockets pair with it. It is dialled by address, so
	// nothing it receives is captured.
	upConf := writeBenchNginx(t, filepath.Join(dir, "up"), upAddr, "")
	m.daemon(m.app("taskset", "-c", "1", "nginx", "-p", filepath.Join(dir, "up"), "-c", upConf, "-e", filepath.Join(dir, "up", "error.log")))
	// The gRPC upstream too, as a process of its own in the meshed cgroup.
	m.daemon(m.role("l7-grpc-serve", grpcAddr))
	startL7GRPC(m, grpcAddr2)

	// Proxies outside the mesh, in the sandbox netns, pinned to CPU 0.
	haConf := filepath.Join(dir, "haproxy.cfg")
	if err := benchconf.HAProxy(haConf, haAddr, upAddr, haGRPC, grpcAddr); err != nil {
		t.Fatal(err)
	}
	ha := privtest.Command(t, "", m.ns, "taskset", "-c", "0", "haproxy", "-db", "-f", haConf)
	m.daemon(ha)
	ngConf := writeBenchNginx(t, filepath.Join(dir, "px"), ngAddr, upAddr)
	ng := privtest.Command(t, "", m.ns, "taskset", "-c", "0", "nginx", "-p", filepath.Join(dir, "px"), "-c", ngConf, "-e", filepath.Join(dir, "px", "error.log"))
	m.daemon(ng)

	// The agent: single-threaded like the others, info logging, pinned.
	t.Setenv("GOMAXPROCS", "1")
	m.start(benchL7Config(benchL7Addrs{httpVIP: httpVIP, up: upAddr, grpcVIP: grpcVIP, grpcUp: grpcAddr, tcpVIP: tcpVIP,
		grpcTCPVIP: grpcTCP, grpcTCP2VIP: grpcTCP2, grpcUp2: grpcAddr2}), "--log-level", "info")
	agentPID := m.cmd.Process.Pid
	privtest.MustRun(t, "taskset", "-a", "-p", "-c", "0", strconv.Itoa(agentPID))
	for _, a := range []string{upAddr, haAddr, ngAddr, grpcAddr, haGRPC, grpcAddr2} {
		m.waitPort(a)
	}
	for pid, want := range map[int]string{agentPID: "node-agent", ha.Process.Pid: "haproxy", ng.Process.Pid: "nginx"} {
		if comm := strings.TrimSpace(readFileString(fmt.Sprintf("/proc/%d/comm", pid))); comm != want {
			t.Fatalf("pid %d is %q, want %q (CPU accounting would be wrong)", pid, comm, want)
		}
	}

	type target struct {
		name, url string
		pid       int
		intoApp   *bool // agent seats: the acceleration direction to set
	}
	no, yes := false, true
	targets := []target{
		{"direct (nginx upstream)", "http://" + upAddr + "/", 0, nil},
		{"meshlet agent, accel into proxy (default)", "http://" + httpVIP + "/", agentPID, &no},
		{"meshlet agent, accel both ways", "http://" + httpVIP + "/", agentPID, &yes},
		{"HAProxy 2.6 (http mode)", "http://" + haAddr + "/", ha.Process.Pid, nil},
		{"nginx 1.22 reverse proxy", "http://" + ngAddr + "/", ng.Process.Pid, nil},
		// The floor of the agent's HTTP path: the same capture, sockets
		// and system calls per request, bytes relayed without HTTP.
		{"meshlet agent, tcp_proxy (L4 relay, no HTTP; default accel)", "http://" + tcpVIP + "/", agentPID, &no},
	}
	recorded := map[string]bool{} // perfRecord: targets recorded in this run
	wrkRun := func(tg target, secs int) wrkStats {
		if tg.intoApp != nil {
			m.setAccel(*tg.intoApp)
		}
		var before cpuTimes
		if tg.pid != 0 {
			before = procCPU(t, tg.pid)
		}
		stopPerf := perfRecord(t, recorded, tg.pid, tg.name, secs)
		out := run(t, m.app("taskset", "-c", "1", "wrk", "-t1", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", secs), "--latency", tg.url))
		stopPerf()
		s := parseWrk(t, out)
		if tg.pid != 0 && s.total > 0 {
			d := procCPU(t, tg.pid).sub(before)
			s.cpuPerReq = d.total() / time.Duration(s.total)
			s.userPerReq = d.user / time.Duration(s.total)
		}
		return s
	}
	for _, tg := range targets { // warm-up: pools, JIT-less but caches and TCP
		if s := wrkRun(tg, 1); s.bad != "" {
			t.Fatalf("%s warm-up: %s", tg.name, s.bad)
		}
	}
	res := make([][]wrkStats, len(targets))
	notes := make([][]string, len(targets))
	// gRPC paths: direct, the agent's HCM, the agent's tcp_proxy (the same
	// capture and hop with the bytes relayed without HTTP/2: the floor of
	// any proxy in this seat) and HAProxy h2c on both sides; then the
	// agent's two with acceleration both ways, where the tcp_proxy hands
	// the connection to the kernel (forwarding: no proxy in the path).
	grpcPaths := []struct {
		name, addr string
		pid        int
		intoApp    bool
	}{
		{"direct", grpcAddr, 0, false},
		{"meshlet agent (HCM, default accel)", grpcVIP, agentPID, false},
		{"meshlet agent, tcp_proxy (L4 relay, no HTTP/2)", grpcTCP, agentPID, false},
		{"HAProxy 2.6 (h2c both sides)", haGRPC, ha.Process.Pid, false},
		{"direct to a gRPC upstream outside the mesh", grpcAddr2, 0, false},
		{"meshlet agent, tcp_proxy to that upstream", grpcTCP2, agentPID, false},
		{"meshlet agent (HCM, accel both ways)", grpcVIP, agentPID, true},
		{"meshlet agent, tcp_proxy, both ways (kernel forwarding)", grpcTCP, agentPID, true},
	}
	grpcRes := make([][]latReport, len(grpcPaths))
	for r := range rounds {
		for i, tg := range targets {
			s := wrkRun(tg, dur)
			if s.bad != "" {
				t.Errorf("%s: %s", tg.name, s.bad)
			}
			if s.timeouts > 0 {
				notes[i] = append(notes[i], fmt.Sprintf("round %d: %d wrk timeouts (no reply within 2 s)", r, s.timeouts))
			}
			res[i] = append(res[i], s)
			t.Logf("round %d %-42s %8.0f req/s  p99 %8v  cpu/req %v", r, tg.name, s.rps, s.p99, s.cpuPerReq)
		}
		for i, g := range grpcPaths {
			m.setAccel(g.intoApp)
			var l latReport
			var before cpuTimes
			if g.pid != 0 {
				before = procCPU(t, g.pid)
			}
			fwdBefore := m.status().BPF.FwdBytes
			cmd := m.role("l7-grpc-lat", g.addr, strconv.Itoa(grpcN))
			cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(runtime.NumCPU()))
			if err := json.Unmarshal([]byte(run(t, cmd)), &l); err != nil {
				t.Fatalf("grpc latency via %s: %v", g.addr, err)
			}
			if g.pid != 0 { // every call, the warm-up's included
				d := procCPU(t, g.pid).sub(before)
				calls := time.Duration(l.N + l.N/10)
				l.cpuPerCall, l.userPerCall = d.total()/calls, d.user/calls
			}
			grpcRes[i] = append(grpcRes[i], l)
			t.Logf("round %d grpc %-48s p50 %6.0fus p99 %6.0fus cpu/call %v kernel-forwarded %d bytes", r, g.name, l.P50us, l.P99us, l.cpuPerCall, m.status().BPF.FwdBytes-fwdBefore)
		}
		m.setAccel(false)
	}

	// A CPU profile of the agent under the same wrk load, default mode.
	m.setAccel(false)
	prof := make(chan string, 1)
	go func() { prof <- m.profileTop(t, 4) }()
	wrkRun(targets[1], 5)
	top := <-prof

	med := func(v []float64) float64 {
		s := slices.Clone(v)
		slices.Sort(s)
		if n := len(s); n%2 == 0 {
			return (s[n/2-1] + s[n/2]) / 2
		}
		return s[len(s)/2]
	}
	pick := func(rs []wrkStats, f func(wrkStats) float64) float64 {
		var v []float64
		for _, s := range rs {
			v = append(v, f(s))
		}
		return med(v)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# L7 benchmark through the agent\n\nProduced by `MESHLET_BENCH=1 go test ./test/e2e -run TestBenchL7` (test/e2e/l7_bench_test.go) on %s, kernel %s, %d CPUs (%s), %s; load average at the start: %s.\n\n",
		time.Now().UTC().Format("2006-01-02"), strings.TrimSpace(privtest.MustRun(t, "uname", "-r")), runtime.NumCPU(), cpuModelName(), runtime.Version(), loadAvg())
	fmt.Fprintf(&b, "One upstream (nginx, 1 worker, 1 KiB body, in the meshed cgroup). `wrk -t1 -c%d -d%ds --latency`, HTTP/1.1 keep-alive, run inside the meshed cgroup on CPU 1 with the upstream. Every proxy is single-threaded and pinned to CPU 0: the agent (GOMAXPROCS=1, all threads), HAProxy (`nbthread 1`, `http-reuse always`), nginx (`worker_processes 1`, upstream keepalive). The agent path is capture → VIP → HCM → upstream with sk_msg acceleration; HAProxy and nginx are dialled directly (not meshed). The last row is the agent's tcp_proxy on another VIP to the same upstream: the same capture, sockets and system calls per request with the bytes relayed without HTTP, the floor of the HTTP path. CPU per request: the proxy's utime+stime delta (/proc/PID/stat) over wrk's completed requests; with acceleration the kernel work of a redirected send is charged to the sender, so part of the path's cost lands on wrk's CPU, not the agent's. %d rounds, targets interleaved within each round; medians of the rounds. The machine is shared and noisy: compare within this run.\n\n", conns, dur, rounds)
	b.WriteString("| target | requests/s | p99 latency | proxy CPU per request | of which user / kernel | proxy's core busy | notes |\n|---|---:|---:|---:|---:|---:|---|\n")
	// Medians of CPU per request, its user part and the kernel part.
	cpuOf := make([][3]float64, len(targets))
	var haRPS, agentRPS float64
	for i, tg := range targets {
		rps := pick(res[i], func(s wrkStats) float64 { return s.rps })
		p99 := pick(res[i], func(s wrkStats) float64 { return float64(s.p99) })
		cpu := pick(res[i], func(s wrkStats) float64 { return float64(s.cpuPerReq) })
		user := pick(res[i], func(s wrkStats) float64 { return float64(s.userPerReq) })
		kern := pick(res[i], func(s wrkStats) float64 { return float64(s.cpuPerReq - s.userPerReq) })
		cpuOf[i] = [3]float64{cpu, user, kern}
		c, split, busy := "-", "-", "-"
		if tg.pid != 0 {
			c = fmt.Sprintf("%.1f µs", cpu/1e3)
			split = fmt.Sprintf("%.1f / %.1f µs", user/1e3, kern/1e3)
			// CPU per request × requests/s, round by round.
			busy = fmt.Sprintf("%.0f %%", 100*pick(res[i], func(s wrkStats) float64 { return float64(s.cpuPerReq) * s.rps })/1e9)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %v | %s | %s | %s | %s |\n", tg.name, rps, time.Duration(p99).Round(time.Microsecond), c, split, busy, strings.Join(notes[i], "; "))
		switch i {
		case 1:
			agentRPS = rps
		case 3:
			haRPS = rps
		}
	}
	agentCPU, haCPU := cpuOf[1][0], cpuOf[3][0]
	b.WriteString("\nUser and kernel time are the process's utime and stime, which the kernel splits by where its clock ticks land: good to a few per cent over a run of thousands of ticks.\n")
	fmt.Fprintf(&b, "\n| gRPC unary path | p50 | × direct | p99 | proxy CPU per call | of which user / kernel |\n|---|---:|---:|---:|---:|---:|\n")
	grpcP50 := make([]float64, len(grpcPaths))
	for i, g := range grpcPaths {
		grpcP50[i] = med(latField(grpcRes[i], func(l latReport) float64 { return l.P50us }))
		p99 := med(latField(grpcRes[i], func(l latReport) float64 { return l.P99us }))
		c, split := "-", "-"
		if g.pid != 0 {
			c = fmt.Sprintf("%.1f µs", med(latField(grpcRes[i], func(l latReport) float64 { return float64(l.cpuPerCall) }))/1e3)
			split = fmt.Sprintf("%.1f / %.1f µs", med(latField(grpcRes[i], func(l latReport) float64 { return float64(l.userPerCall) }))/1e3,
				med(latField(grpcRes[i], func(l latReport) float64 { return float64(l.cpuPerCall - l.userPerCall) }))/1e3)
		}
		fmt.Fprintf(&b, "| %s | %.0f µs | %.2f× | %.0f µs | %s | %s |\n", g.name, grpcP50[i], grpcP50[i]/grpcP50[0], p99, c, split)
	}
	gd, gv := grpcP50[0], grpcP50[1]
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	fmt.Fprintf(&b, "\nGoals (agent in its default mode, accel into the proxy):\n\n")
	fmt.Fprintf(&b, "* requests/s vs HAProxy: %.0f / %.0f = **%.2f×** (goal ≥ 1.20×): %s.\n", agentRPS, haRPS, agentRPS/haRPS, verdict(agentRPS >= 1.2*haRPS))
	var perRound, cpuRound []string
	var cpuRatios []float64
	for r := range rounds {
		perRound = append(perRound, fmt.Sprintf("%.2f×", res[1][r].rps/res[3][r].rps))
		if res[1][r].cpuPerReq > 0 {
			q := float64(res[3][r].cpuPerReq) / float64(res[1][r].cpuPerReq)
			cpuRatios = append(cpuRatios, q)
			cpuRound = append(cpuRound, fmt.Sprintf("%.2f×", q))
		}
	}
	fmt.Fprintf(&b, "  Per round: %s. Requests/s on this shared machine move with other sessions' load on CPU 0 (see the per-round table); a proxy whose core is not busy (the column proxy's core busy) is held back by something else (the client, the upstream, the loopback stack, the neighbours), so the load-independent comparison is CPU per request: at full use of one core the agent would serve HAProxy CPU/request ÷ agent CPU/request = **%.2f×** HAProxy's requests/s",
		strings.Join(perRound, ", "), haCPU/agentCPU)
	if len(cpuRatios) > 0 {
		// Both measured in the same round, minutes apart at most: the
		// ratio of each round is steadier than the ratio of the medians.
		fmt.Fprintf(&b, " (per round: %s; median %.2f×)", strings.Join(cpuRound, ", "), med(cpuRatios))
	}
	b.WriteString(".\n")
	// What 1.2× would take: the agent's whole cost per request at most
	// HAProxy's ÷ 1.2, of which its kernel time (the same four socket
	// operations HAProxy makes) is already spent.
	budget := haCPU / 1.2
	fmt.Fprintf(&b, "  The budget for 1.2×: %.1f µs per request (HAProxy's %.1f ÷ 1.2). The agent's kernel time per request is %.1f µs (HAProxy's %.1f), which leaves **%.1f µs of user space** for the whole HTTP path; with acceleration both ways (no loopback TCP on any of the four legs) the kernel time is %.1f µs and leaves %.1f µs. HAProxy's own user space is %.1f µs, the agent's %.1f µs (%.1f µs both ways), and the agent's L4 relay, which does no HTTP at all, spends %.1f µs of user space and %.1f µs in all.\n",
		budget/1e3, haCPU/1e3, cpuOf[1][2]/1e3, cpuOf[3][2]/1e3, (budget-cpuOf[1][2])/1e3, cpuOf[2][2]/1e3, (budget-cpuOf[2][2])/1e3,
		cpuOf[3][1]/1e3, cpuOf[1][1]/1e3, cpuOf[2][1]/1e3, cpuOf[5][1]/1e3, cpuOf[5][0]/1e3)
	bothRPS := pick(res[2], func(s wrkStats) float64 { return s.rps })
	var bothRound []string
	for r := range rounds {
		bothRound = append(bothRound, fmt.Sprintf("%.2f×", res[2][r].rps/res[3][r].rps))
	}
	fmt.Fprintf(&b, "  With acceleration both ways (`into_app`, opt-in): %.0f / %.0f = **%.2f×** HAProxy's requests/s (per round: %s), %.1f µs per request against HAProxy's %.1f µs (%.2f×).\n",
		bothRPS, haRPS, bothRPS/haRPS, strings.Join(bothRound, ", "), cpuOf[2][0]/1e3, haCPU/1e3, haCPU/cpuOf[2][0])
	fmt.Fprintf(&b, "* agent CPU per request: **%.1f µs** (goal ≤ 35 µs; HAProxy %.1f µs): %s.\n", agentCPU/1e3, haCPU/1e3, verdict(agentCPU <= 35e3))
	fmt.Fprintf(&b, "* gRPC unary p50 (grpc.testing.TestService/UnaryCall, 1 KiB each way, %d sequential calls after %d warm-up, meshed grpc-go client, upstream grpc-go server): direct %.0f µs, through the agent %.0f µs: **%.2f×** (goal ≤ 1.10×): %s. The same hop relaying bytes without HTTP/2 (the agent's tcp_proxy) is %.2f× direct and HAProxy h2c %.2f×: a hop that does no work at all already adds %.0f µs to the call here.\n",
		grpcN, grpcN/10, gd, gv, gv/gd, verdict(gv <= 1.1*gd), grpcP50[2]/gd, grpcP50[3]/gd, grpcP50[2]-gd)
	fmt.Fprintf(&b, "  With acceleration both ways the HCM path is %.2f× direct; the tcp_proxy path, handed to the kernel once its upstream is chosen (no proxy in the path at all, which an L7 route cannot do), %.2f×.\n",
		grpcP50[6]/gd, grpcP50[7]/gd)
	fmt.Fprintf(&b, "  The same relay to a gRPC upstream outside the mesh (its replies reach the proxy over loopback TCP instead of being redirected into it): %.2f× its own direct path (%.0f µs), against %.2f× for the meshed upstream.\n",
		grpcP50[5]/grpcP50[4], grpcP50[4], grpcP50[2]/gd)
	fmt.Fprintf(&b, "\nPer round (requests/s):\n\n| target |")
	for r := range rounds {
		fmt.Fprintf(&b, " %d |", r)
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", rounds) + "\n")
	for i, tg := range targets {
		fmt.Fprintf(&b, "| %s |", tg.name)
		for _, s := range res[i] {
			fmt.Fprintf(&b, " %.0f |", s.rps)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\nAgent CPU profile under the same wrk load, default mode (top functions, cumulative):\n\n```\n%s```\n", top)
	if out := os.Getenv("MESHLET_BENCH_OUT"); out != "" {
		writeReport(t, out, b.String())
	}
	t.Log("\n" + b.String())
}

func latField(ls []latReport, f func(latReport) float64) []float64 {
	var v []float64
	for _, l := range ls {
		v = append(v, f(l))
	}
	return v
}

// benchL7Addrs are the addresses benchL7Config wires together.
type benchL7Addrs struct {
	httpVIP, up          string // HCM service → the nginx upstream
	grpcVIP, grpcUp      string // HCM service → the meshed gRPC upstream (h2c)
	tcpVIP, grpcTCPVIP   string // tcp_proxies to the two
	grpcTCP2VIP, grpcUp2 string // tcp_proxy to a gRPC upstream outside the mesh
}

// benchL7Config: one HCM service for HTTP/1.1 to the nginx upstream, one
// for gRPC to an h2c cluster, and tcp_proxies to each, and to a gRPC
// upstream outside the mesh.
func benchL7Config(a benchL7Addrs) string {
	httpVIP, up, grpcVIP, grpcUp, tcpVIP, grpcTCPVIP := a.httpVIP, a.up, a.grpcVIP, a.grpcUp, a.tcpVIP, a.grpcTCPVIP
	// listener is a listener on vip with one filter (its YAML after
	// "- name: <filter>", indented for the filters list).
	listener := func(name, vip, filter string) string {
		host, port, _ := strings.Cut(vip, ":")
		return fmt.Sprintf(`  - name: %[1]s
    address: {socket_address: {address: %[2]s, port_value: %[3]s}}
    filter_chains:
    - filters:
      - name: %[4]s`, name, host, port, filter)
	}
	hcm := func(name, vip, routes string) string {
		return listener(name, vip, fmt.Sprintf(`envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: %[1]s
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            name: %[1]s
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
%[2]s`, name, routes))
	}
	tcp := func(name, vip, cluster string) string {
		return listener(name, vip, fmt.Sprintf(`envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: %[1]s
          cluster: %[2]s
`, name, cluster))
	}
	cluster := func(name, addr, extra string) string {
		host, port, _ := strings.Cut(addr, ":")
		return fmt.Sprintf(`  - name: %[1]s
    type: STATIC
    connect_timeout: 2s
%[4]s    load_assignment:
      cluster_name: %[1]s
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %[2]s, port_value: %[3]s}}}}]}]
`, name, host, port, extra)
	}
	return "capture:\n  acceleration: on\n  into_app: false\nstatic_resources:\n  listeners:\n" +
		hcm("web", httpVIP, "              - match: {prefix: \"/\"}\n                route: {cluster: web}\n") +
		hcm("grpc", grpcVIP, "              - match: {prefix: \"/\", grpc: {}}\n                route: {cluster: grpc, timeout: 0s, max_stream_duration: {grpc_timeout_header_max: 0s}}\n") +
		tcp("tcp", tcpVIP, "web") +
		tcp("grpctcp", grpcTCPVIP, "grpc") +
		tcp("grpctcp2", a.grpcTCP2VIP, "grpc2") +
		"  clusters:\n" +
		cluster("web", up, "") +
		cluster("grpc2", a.grpcUp2, "") +
		cluster("grpc", grpcUp, `    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
`)
}

// writeBenchNginx writes an nginx config in dir (benchconf.Nginx): with
// upstream empty it answers 1 KiB on every path, otherwise it proxies to
// upstream with keep-alive.
func writeBenchNginx(t *testing.T, dir, listen, upstream string) string {
	t.Helper()
	p, err := benchconf.Nginx(dir, listen, upstream)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFileString(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// cpuTimes is a process's utime and stime (all its threads).
type cpuTimes struct{ user, sys time.Duration }

func (c cpuTimes) sub(o cpuTimes) cpuTimes { return cpuTimes{c.user - o.user, c.sys - o.sys} }
func (c cpuTimes) total() time.Duration    { return c.user + c.sys }

// procCPU reads a process's CPU times from /proc/PID/stat.
func procCPU(t *testing.T, pid int) cpuTimes {
	t.Helper()
	s := readFileString(fmt.Sprintf("/proc/%d/stat", pid))
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	tck := int64(100) // USER_HZ
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && v > 0 {
			tck = v
		}
	}
	tick := func(n int64) time.Duration { return time.Duration(n) * time.Second / time.Duration(tck) }
	return cpuTimes{tick(ut), tick(st)}
}

type wrkStats struct {
	rps       float64
	p99       time.Duration
	total     int64
	cpuPerReq time.Duration
	// userPerReq is the user-space part of cpuPerReq.
	userPerReq time.Duration
	bad        string // non-2xx, connect, read or write errors wrk reported
	timeouts   int    // requests without a reply within wrk's 2 s (load, not a protocol error)
}

var (
	reWrkRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reWrkP99    = regexp.MustCompile(`\s99%\s+([0-9.]+)(us|ms|s)`)
	reWrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: \d+`)
	reWrkSock   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func parseWrk(t *testing.T, out string) wrkStats {
	t.Helper()
	rps, tot, p99 := reWrkRPS.FindStringSubmatch(out), reWrkTotal.FindStringSubmatch(out), reWrkP99.FindStringSubmatch(out)
	if rps == nil || tot == nil || p99 == nil {
		t.Fatalf("cannot parse wrk output:\n%s", out)
	}
	var s wrkStats
	s.rps, _ = strconv.ParseFloat(rps[1], 64)
	s.total, _ = strconv.ParseInt(tot[1], 10, 64)
	v, _ := strconv.ParseFloat(p99[1], 64)
	s.p99 = time.Duration(v * float64(map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[p99[2]]))
	var bad []string
	if m := reWrkNon2xx.FindString(out); m != "" {
		bad = append(bad, m)
	}
	if m := reWrkSock.FindStringSubmatch(out); m != nil {
		if m[1] != "0" || m[2] != "0" || m[3] != "0" {
			bad = append(bad, m[0])
		}
		s.timeouts, _ = strconv.Atoi(m[4])
	}
	s.bad = strings.Join(bad, "; ")
	return s
}

func cpuModelName() string {
	for _, line := range strings.Split(readFileString("/proc/cpuinfo"), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func loadAvg() string {
	f := strings.Fields(readFileString("/proc/loadavg"))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// perfRecord, when MESHLET_BENCH_L7_PERF names a folder, records the kernel
// and user stacks of proxy pid (perf record -g) during one wrk run of a
// target (the first run of at least 3 s of each target in this test run,
// noted in recorded; warm-ups are shorter) into FOLDER/<target>.perf.data,
// for `perf report -i`, replacing a recording of an earlier run. The
// returned func stops the recording.
func perfRecord(t *testing.T, recorded map[string]bool, pid int, target string, secs int) func() {
	t.Helper()
	dir := os.Getenv("MESHLET_BENCH_L7_PERF")
	if dir == "" || pid == 0 || secs < 3 {
		return func() {}
	}
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, strings.ToLower(target))
	if recorded[name] {
		return func() {} // one recording per target
	}
	recorded[name] = true
	out := filepath.Join(dir, name+".perf.data")
	_ = os.Remove(out) // perf would keep it as .old
	cmd := exec.Command("perf", "record", "-q", "-g", "-p", strconv.Itoa(pid), "-o", out)
	if err := cmd.Start(); err != nil {
		t.Fatalf("perf record: %v", err)
	}
	return func() {
		_ = cmd.Process.Signal(os.Interrupt)
		if err := cmd.Wait(); err != nil {
			t.Logf("perf record %s: %v", target, err)
		}
	}
}
