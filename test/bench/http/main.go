package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/meshlet/meshlet/test/bench/benchconf"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "proxy":
			if err := runProxy(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, "proxy:", err)
				os.Exit(1)
			}
			return
		case "grpc-upstream":
			if err := runGRPCUpstream(os.Args[2:]); err != nil {
				fmt.Fprintln(os.Stderr, "grpc-upstream:", err)
				os.Exit(1)
			}
			return
		}
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type result struct {
	name     string
	rps      float64
	p99      time.Duration
	cpuPerRq time.Duration // 0 when not applicable
	errors   string
}

func run() error {
	dur := flag.Duration("d", 8*time.Second, "wrk duration per target")
	conns := flag.Int("c", 32, "wrk connections")
	out := flag.String("out", "", "also write the markdown report to this file")
	grpcN := flag.Int("grpc-n", 5000, "sequential gRPC unary calls per target (0: skip)")
	pin := flag.Bool("pin", true, "pin proxies to CPU 0 and wrk/upstreams to CPU 1 (false: no pinning, GOMAXPROCS unset for meshlet)")
	baseline := flag.String("baseline", "", "also measure this build of the bench binary's proxy (e.g. built from git HEAD) as target \"baseline\"")
	prof := flag.String("cpuprofile", "", "write a CPU profile of the meshlet proxy to this file")
	only := flag.String("targets", "direct,meshlet,haproxy,nginx", "comma-separated wrk targets to run (none: gRPC only)")
	grpcOnly := flag.String("grpc-targets", "direct,meshlet,haproxy,baseline", "comma-separated gRPC paths to run (direct is always measured)")
	rounds := flag.Int("rounds", 1, "measure every target this many times, interleaved, and report medians (the machine is shared: use ≥ 3 to compare builds)")
	meshProcs := flag.Int("meshlet-procs", 0, "GOMAXPROCS of the meshlet proxy (0: the default, 1 when pinned and unset with -pin=false)")
	meshCPUs := flag.String("meshlet-cpus", "", "CPU list (taskset -c) of the meshlet proxy (empty: the default, 0 when pinned and all CPUs with -pin=false)")
	variants := flag.String("meshlet-variants", "", "space-separated extra meshlet proxy instances measured side by side, each PROCS@CPUS[:KEY=VALUE...] (PROCS 0: GOMAXPROCS unset), e.g. \"2@0-1 2@0 1@0:GOGC=400\"")
	perfEv := flag.String("perf-stat", "", "comma-separated perf events counted (perf stat -p) on every proxy process during each measured window and reported per request/call, e.g. raw_syscalls:sys_enter,syscalls:sys_enter_futex,context-switches,cpu-migrations")
	flag.Parse()

	seat := meshletSeat{name: "meshlet hcm", procs: 1, cpus: "0"}
	if !*pin {
		seat.procs, seat.cpus = 0, "0-"+strconv.Itoa(runtime.NumCPU()-1)
	}
	if *meshProcs > 0 {
		seat.procs = *meshProcs
	}
	if *meshCPUs != "" {
		if !reCPUList.MatchString(*meshCPUs) {
			return fmt.Errorf("-meshlet-cpus %q is not a CPU list like 0 or 0-1 or 0,2", *meshCPUs)
		}
		seat.cpus = *meshCPUs
	}
	extra, err := parseSeats(*variants)
	if err != nil {
		return fmt.Errorf("-meshlet-variants: %w", err)
	}
	if *perfEv != "" {
		if _, err := exec.LookPath("perf"); err != nil {
			return fmt.Errorf("-perf-stat needs perf (apt-get install linux-perf): %w", err)
		}
	}

	for _, tool := range []string{"wrk", "nginx", "haproxy", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (apt-get install wrk nginx-light haproxy util-linux): %w", tool, err)
		}
	}
	tmp, err := os.MkdirTemp("", "meshlet-bench-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			// SIGTERM first so the meshlet proxy writes its CPU profile.
			_ = p.Process.Signal(syscall.SIGTERM)
			t := time.AfterFunc(3*time.Second, func() { _ = p.Process.Kill() })
			_ = p.Wait()
			t.Stop()
		}
	}()
	// startAt runs name on exactly the given CPUs with env added.
	startAt := func(cpu string, env []string, name string, args ...string) (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, "taskset", append([]string{"-c", cpu, name}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		logf, err := os.Create(filepath.Join(tmp, filepath.Base(name)+"-"+strconv.Itoa(len(procs))+".log"))
		if err != nil {
			return nil, err
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		procs = append(procs, cmd)
		return cmd, nil
	}
	// start is startAt with -pin applied (false: all CPUs, no env).
	start := func(cpu string, env []string, name string, args ...string) (*exec.Cmd, error) {
		if !*pin {
			cpu = "0-" + strconv.Itoa(runtime.NumCPU()-1)
			env = nil
		}
		return startAt(cpu, env, name, args...)
	}
	ports, err := freePorts(7 + len(extra))
	if err != nil {
		return err
	}
	upPort, meshPort, haPort, ngPort, grpcPort, haGRPCPort, basePort := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6]
	self, err := os.Executable()
	if err != nil {
		return err
	}

	// Upstream: nginx returning 1 KiB (cheap, so the proxy is the bottleneck).
	upConf, err := benchconf.Nginx(filepath.Join(tmp, "up"), loopback(upPort), "")
	if err != nil {
		return err
	}
	if _, err := start("1", nil, "nginx", "-p", filepath.Join(tmp, "up"), "-c", upConf, "-e", filepath.Join(tmp, "up", "error.log")); err != nil {
		return err
	}
	if _, err := start("1", []string{"GOMAXPROCS=1"}, self, "grpc-upstream", "-listen", fmt.Sprintf("127.0.0.1:%d", grpcPort)); err != nil {
		return err
	}
	meshArgs := []string{"proxy", "-listen", fmt.Sprintf("127.0.0.1:%d", meshPort),
		"-upstream", fmt.Sprintf("127.0.0.1:%d", upPort), "-grpc-upstream", fmt.Sprintf("127.0.0.1:%d", grpcPort)}
	if *prof != "" {
		meshArgs = append(meshArgs, "-cpuprofile", *prof)
	}
	mesh, err := startAt(seat.cpus, seat.environ(), self, meshArgs...)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "%s: pid %d, GOMAXPROCS=%d (0: unset), cpus %s\n", seat.name, mesh.Process.Pid, seat.procs, seat.cpus)
	type meshInstance struct {
		seat meshletSeat
		port int
		cmd  *exec.Cmd
	}
	var extraMesh []meshInstance
	for i, s := range extra {
		port := ports[7+i]
		cmd, err := startAt(s.cpus, s.environ(), self, "proxy", "-listen", loopback(port),
			"-upstream", loopback(upPort), "-grpc-upstream", loopback(grpcPort))
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "%s: pid %d\n", s.name, cmd.Process.Pid)
		extraMesh = append(extraMesh, meshInstance{s, port, cmd})
	}
	var base *exec.Cmd
	if *baseline != "" {
		base, err = start("0", []string{"GOMAXPROCS=1"}, *baseline, "proxy", "-listen", fmt.Sprintf("127.0.0.1:%d", basePort),
			"-upstream", fmt.Sprintf("127.0.0.1:%d", upPort), "-grpc-upstream", fmt.Sprintf("127.0.0.1:%d", grpcPort))
		if err != nil {
			return err
		}
		if err := waitPort(ctx, basePort, 10*time.Second); err != nil {
			return fmt.Errorf("baseline port %d not ready: %w", basePort, err)
		}
		if *only != "none" { // "none": gRPC only
			*only += ",baseline"
		}
	}
	haConf := filepath.Join(tmp, "haproxy.cfg")
	if err := benchconf.HAProxy(haConf, loopback(haPort), loopback(upPort), loopback(haGRPCPort), loopback(grpcPort)); err != nil {
		return err
	}
	ha, err := start("0", nil, "haproxy", "-db", "-f", haConf)
	if err != nil {
		return err
	}
	ngConf, err := benchconf.Nginx(filepath.Join(tmp, "px"), loopback(ngPort), loopback(upPort))
	if err != nil {
		return err
	}
	ng, err := start("0", nil, "nginx", "-p", filepath.Join(tmp, "px"), "-c", ngConf, "-e", filepath.Join(tmp, "px", "error.log"))
	if err != nil {
		return err
	}
	wait := []int{upPort, meshPort, haPort, ngPort, grpcPort, haGRPCPort}
	for _, m := range extraMesh {
		wait = append(wait, m.port)
	}
	for _, p := range wait {
		if err := waitPort(ctx, p, 10*time.Second); err != nil {
			return fmt.Errorf("port %d not ready: %w\n%s", p, err, dumpLogs(tmp))
		}
	}

	type target struct {
		name string
		port int
		cmd  *exec.Cmd
	}
	targets := []target{
		{"direct (nginx upstream)", upPort, nil},
		{"meshlet hcm", meshPort, mesh},
	}
	for _, m := range extraMesh {
		targets = append(targets, target{m.seat.name, m.port, m.cmd})
	}
	targets = append(targets,
		target{"baseline (" + filepath.Base(*baseline) + ")", basePort, base},
		target{"HAProxy 2.6 (http mode)", haPort, ha},
		target{"nginx 1.22 reverse proxy", ngPort, ng},
	)
	var results []result
	perTarget := map[string][]result{}
	evs := perfEvents(*perfEv)
	perfHTTP := map[string][]map[string]float64{} // target → per round: event → count per request
	perfGRPC := map[string][]map[string]float64{} // path → per round: event → count per call
	perUnit := func(m map[string]float64, n int64) map[string]float64 {
		for k := range m {
			m[k] /= float64(n)
		}
		return m
	}
	for round := range max(*rounds, 1) {
		for _, tg := range targets {
			if !strings.Contains(*only, strings.ToLower(strings.Fields(tg.name)[0])) {
				continue
			}
			url := fmt.Sprintf("http://127.0.0.1:%d/", tg.port)
			if _, err := wrk(ctx, url, *conns, time.Second); err != nil { // warm-up
				return fmt.Errorf("%s warm-up: %w", tg.name, err)
			}
			m, err := startMeter(ctx, tg.cmd, *perfEv, cpuTime)
			if err != nil {
				return err
			}
			r, err := wrk(ctx, url, *conns, *dur)
			cpuPer, counts, perr := m.stop(r.total)
			if err != nil {
				return fmt.Errorf("%s: %w", tg.name, err)
			}
			if perr != nil {
				return fmt.Errorf("%s: %w", tg.name, perr)
			}
			r.name = tg.name
			r.cpuPerRq = cpuPer
			if counts != nil && r.total > 0 {
				perfHTTP[tg.name] = append(perfHTTP[tg.name], perUnit(counts, r.total))
				fmt.Fprintf(os.Stderr, "round %d %-28s perf per request: %v\n", round, tg.name, counts)
			}
			if round == 0 {
				results = append(results, r.result)
			}
			perTarget[tg.name] = append(perTarget[tg.name], r.result)
			fmt.Fprintf(os.Stderr, "round %d %-28s %10.0f req/s  p99 %8v  cpu/req %v %s\n", round, r.name, r.rps, r.p99, r.cpuPerRq, r.errors)
		}
	}
	for i := range results {
		rs := perTarget[results[i].name]
		results[i].rps = median(rs, func(r result) float64 { return r.rps })
		results[i].p99 = time.Duration(median(rs, func(r result) float64 { return float64(r.p99) }))
		results[i].cpuPerRq = time.Duration(median(rs, func(r result) float64 { return float64(r.cpuPerRq) }))
	}

	// gRPC: p50 of sequential unary calls, and the proxy's CPU per call
	// (warm-up included), which the host's scheduling noise disturbs less
	// than latency does. It is read from schedstat (exact run time): the
	// tick-sampled utime/stime misjudge a process that is mostly idle.
	type grpcRow struct {
		name   string
		p50    time.Duration
		cpuPer time.Duration
	}
	var grpcRows []grpcRow
	var direct, via time.Duration
	if *grpcN > 0 {
		paths := []target{
			{"direct", grpcPort, nil},
			{"meshlet hcm", meshPort, mesh},
		}
		for _, m := range extraMesh {
			paths = append(paths, target{m.seat.name, m.port, m.cmd})
		}
		paths = append(paths,
			target{"HAProxy 2.6 (h2c both sides)", haGRPCPort, ha},
			target{"baseline (" + filepath.Base(*baseline) + ")", basePort, base},
		)
		perPath := map[string][]grpcRow{}
		for range max(*rounds, 1) {
			for _, pth := range paths {
				if pth.port == basePort && base == nil {
					continue
				}
				if pth.port != grpcPort && !strings.Contains(*grpcOnly, strings.ToLower(strings.Fields(pth.name)[0])) {
					continue
				}
				m, err := startMeter(ctx, pth.cmd, *perfEv, runTime)
				if err != nil {
					return err
				}
				p50, calls, err := grpcP50(ctx, fmt.Sprintf("127.0.0.1:%d", pth.port), *grpcN)
				cpuPer, counts, perr := m.stop(int64(calls))
				if err != nil {
					return fmt.Errorf("grpc via %s: %w", pth.name, err)
				}
				if perr != nil {
					return fmt.Errorf("grpc via %s: %w", pth.name, perr)
				}
				if counts != nil {
					perfGRPC[pth.name] = append(perfGRPC[pth.name], perUnit(counts, int64(calls)))
					fmt.Fprintf(os.Stderr, "grpc %-28s perf per call: %v\n", pth.name, counts)
				}
				row := grpcRow{name: pth.name, p50: p50, cpuPer: cpuPer}
				if len(perPath[pth.name]) == 0 {
					grpcRows = append(grpcRows, row)
				}
				perPath[pth.name] = append(perPath[pth.name], row)
				fmt.Fprintf(os.Stderr, "grpc %-28s p50 %v cpu/call %v\n", pth.name, p50, row.cpuPer)
			}
		}
		for i := range grpcRows {
			rs := perPath[grpcRows[i].name]
			grpcRows[i].p50 = time.Duration(median(rs, func(r grpcRow) float64 { return float64(r.p50) }))
			grpcRows[i].cpuPer = time.Duration(median(rs, func(r grpcRow) float64 { return float64(r.cpuPer) }))
			switch grpcRows[i].name {
			case "direct":
				direct = grpcRows[i].p50
			case "meshlet hcm":
				via = grpcRows[i].p50
			}
		}
	}
	report := formatReport(results, direct, via, *dur, *conns, *pin)
	if seat.procs != 1 || seat.cpus != "0" || len(extra) > 0 {
		p := "unset"
		if seat.procs > 0 {
			p = strconv.Itoa(seat.procs)
		}
		report += fmt.Sprintf("\n\"meshlet hcm\" ran with GOMAXPROCS=%s on CPUs %s; each \"meshlet P=… cpus=…\" row is another instance of the same build (same upstreams) with that GOMAXPROCS, CPU list and environment.\n", p, seat.cpus)
	}
	if len(grpcRows) > 0 {
		report += "\n| gRPC unary path | p50 | × direct | proxy CPU per call |\n|---|---:|---:|---:|\n"
		for _, r := range grpcRows {
			cpu := "-"
			if r.cpuPer > 0 {
				cpu = fmt.Sprintf("%.1f µs", float64(r.cpuPer.Nanoseconds())/1e3)
			}
			report += fmt.Sprintf("| %s | %v | %.2f× | %s |\n", r.name, r.p50.Round(time.Microsecond), float64(r.p50)/float64(direct), cpu)
		}
	}
	if len(evs) > 0 {
		for _, tbl := range []struct {
			what string
			m    map[string][]map[string]float64
			rows []string
		}{
			{"HTTP/1.1: perf counts per request", perfHTTP, names(results, func(r result) string { return r.name })},
			{"gRPC: perf counts per call", perfGRPC, names(grpcRows, func(r grpcRow) string { return r.name })},
		} {
			if len(tbl.m) == 0 {
				continue
			}
			report += "\n" + perfHeader(tbl.what+" (median of rounds)", evs)
			for _, n := range tbl.rows {
				if rs, ok := tbl.m[n]; ok {
					report += perfRow(n, evs, rs)
				}
			}
		}
	}
	fmt.Print(report)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", *out, err)
		}
	}
	return nil
}

func formatReport(rs []result, grpcDirect, grpcVia time.Duration, d time.Duration, c int, pinned bool) string {
	var b strings.Builder
	seat := "proxies pinned to CPU 0 single-threaded, wrk + upstream on CPU 1"
	if !pinned {
		seat = "proxies and upstreams unpinned (-pin=false), wrk on CPU 1"
	}
	fmt.Fprintf(&b, "Host: %d CPUs (%s), Go %s. wrk -t1 -c%d -d%s, 1 KiB responses, keep-alive; %s.\n\n",
		runtime.NumCPU(), cpuModel(), runtime.Version(), c, d, seat)
	b.WriteString("| target | requests/s | p99 latency | proxy CPU per request | notes |\n|---|---:|---:|---:|---|\n")
	var ha, mesh result
	for _, r := range rs {
		cpu := "-"
		if r.cpuPerRq > 0 {
			cpu = fmt.Sprintf("%.1f µs", float64(r.cpuPerRq.Nanoseconds())/1e3)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %v | %s | %s |\n", r.name, r.rps, r.p99.Round(time.Microsecond), cpu, r.errors)
		if strings.HasPrefix(r.name, "HAProxy") {
			ha = r
		}
		if r.name == "meshlet hcm" {
			mesh = r
		}
	}
	if ha.rps > 0 {
		fmt.Fprintf(&b, "\nmeshlet / HAProxy requests/s: **%.2f×** (goal ≥ 1.20×); meshlet CPU per request: **%.1f µs** (goal ≤ 35 µs).\n",
			mesh.rps/ha.rps, float64(mesh.cpuPerRq.Nanoseconds())/1e3)
	}
	if grpcDirect == 0 || grpcVia == 0 {
		return b.String() // gRPC not measured, or not through meshlet
	}
	fmt.Fprintf(&b, "\ngRPC unary (grpc.testing.TestService/UnaryCall, sequential): p50 direct %v, via meshlet %v: **%.2f×** (goal ≤ 1.10×).\n",
		grpcDirect.Round(time.Microsecond), grpcVia.Round(time.Microsecond), float64(grpcVia)/float64(grpcDirect))
	return b.String()
}

// median returns the median of f over xs (the mean of the middle two for
// an even count).
func median[T any](xs []T, f func(T) float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

type wrkResult struct {
	result
	total int64
}

var (
	reRPS   = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reP99   = regexp.MustCompile(`\s99%\s+([0-9.]+)(us|ms|s)`)
	reTotal = regexp.MustCompile(`(\d+) requests in`)
	reErr   = regexp.MustCompile(`(Non-2xx or 3xx responses: \d+|Socket errors: [^\n]+)`)
)

func wrk(ctx context.Context, url string, conns int, d time.Duration) (wrkResult, error) {
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "taskset", "-c", "1", "wrk", "-t1", fmt.Sprintf("-c%d", conns),
		fmt.Sprintf("-d%ds", int(d.Seconds())), "--latency", url).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %w: %s", err, out)
	}
	s := string(out)
	var r wrkResult
	m := reRPS.FindStringSubmatch(s)
	t := reTotal.FindStringSubmatch(s)
	p := reP99.FindStringSubmatch(s)
	if m == nil || t == nil || p == nil {
		return r, fmt.Errorf("cannot parse wrk output:\n%s", s)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	r.total, _ = strconv.ParseInt(t[1], 10, 64)
	v, _ := strconv.ParseFloat(p[1], 64)
	unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[p[2]]
	r.p99 = time.Duration(v * float64(unit))
	r.errors = strings.Join(reErr.FindAllString(s, -1), "; ")
	return r, nil
}

// cpuTime is utime+stime of a process (all threads) from /proc/PID/stat.
// pid is taskset's pid, which execs the target, so it is the target's pid.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}

// runTime is the time all threads of pid have run on a CPU, summed from
// /proc/PID/task/*/schedstat (nanoseconds; threads that exited are lost,
// which Go's and HAProxy's worker threads do not).
func runTime(pid int) time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			sum += time.Duration(ns)
		}
	}
	return sum
}

// grpcP50 makes 500 warm-up and then n sequential unary calls to addr and
// returns the p50 of the n and the number of calls made.
func grpcP50(ctx context.Context, addr string, n int) (time.Duration, int, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, 0, err
	}
	defer cc.Close()
	tc := testgrpc.NewTestServiceClient(cc)
	req := &testpb.SimpleRequest{ResponseSize: 1024, Payload: &testpb.Payload{Body: make([]byte, 1024)}}
	for range 500 { // warm-up
		if _, err := tc.UnaryCall(ctx, req); err != nil {
			return 0, 0, err
		}
	}
	lat := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if _, err := tc.UnaryCall(ctx, req); err != nil {
			return 0, 0, err
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	return lat[len(lat)/2], 500 + n, nil
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, int(netip.MustParseAddrPort(l.Addr().String()).Port()))
	}
	return ports, nil
}

func waitPort(ctx context.Context, port int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.Join(err, ctx.Err())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dumpLogs returns the tail of every process log in dir (for start-up errors).
func dumpLogs(dir string) string {
	var b strings.Builder
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	more, _ := filepath.Glob(filepath.Join(dir, "*", "error.log"))
	for _, l := range append(logs, more...) {
		data, _ := os.ReadFile(l)
		if len(data) > 2000 {
			data = data[len(data)-2000:]
		}
		fmt.Fprintf(&b, "== %s\n%s\n", filepath.Base(l), data)
	}
	return b.String()
}

// loopback is 127.0.0.1:port.
func loopback(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// names maps xs to their names, in order.
func names[T any](xs []T, name func(T) string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = name(x)
	}
	return out
}
