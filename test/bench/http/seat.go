package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// meshletSeat is how one meshlet proxy instance runs: its GOMAXPROCS
// (0: left unset, so the Go runtime picks), the CPU list taskset gives it,
// and extra environment (e.g. GOGC=400).
type meshletSeat struct {
	name  string
	procs int
	cpus  string
	env   []string
}

// environ is the seat's environment additions.
func (s meshletSeat) environ() []string {
	env := append([]string(nil), s.env...)
	if s.procs > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(s.procs))
	}
	return env
}

var reCPUList = regexp.MustCompile(`^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$`)

// parseSeat parses PROCS@CPUS[:KEY=VALUE...], e.g. "2@0-1" or
// "2@0-1:GOGC=400". PROCS 0 leaves GOMAXPROCS unset.
func parseSeat(spec string) (meshletSeat, error) {
	parts := strings.Split(spec, ":")
	p, cpus, ok := strings.Cut(parts[0], "@")
	if !ok {
		return meshletSeat{}, fmt.Errorf("meshlet variant %q: want PROCS@CPUS[:KEY=VALUE...]", spec)
	}
	procs, err := strconv.Atoi(p)
	if err != nil || procs < 0 {
		return meshletSeat{}, fmt.Errorf("meshlet variant %q: PROCS %q is not a non-negative integer", spec, p)
	}
	if !reCPUList.MatchString(cpus) {
		return meshletSeat{}, fmt.Errorf("meshlet variant %q: CPUS %q is not a CPU list like 0 or 0-1 or 0,2", spec, cpus)
	}
	s := meshletSeat{procs: procs, cpus: cpus}
	for _, kv := range parts[1:] {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return meshletSeat{}, fmt.Errorf("meshlet variant %q: %q is not KEY=VALUE", spec, kv)
		}
		s.env = append(s.env, kv)
	}
	s.name = seatName(s)
	return s, nil
}

// parseSeats parses a space-separated list of parseSeat specs.
func parseSeats(list string) ([]meshletSeat, error) {
	var seats []meshletSeat
	seen := map[string]bool{}
	for _, spec := range strings.Fields(list) {
		s, err := parseSeat(spec)
		if err != nil {
			return nil, err
		}
		if seen[s.name] {
			return nil, fmt.Errorf("meshlet variant %q given twice", spec)
		}
		seen[s.name] = true
		seats = append(seats, s)
	}
	return seats, nil
}

// seatName names a variant target; its first word is "meshlet" so that
// -targets/-grpc-targets "meshlet" select every meshlet instance.
func seatName(s meshletSeat) string {
	p := "unset"
	if s.procs > 0 {
		p = strconv.Itoa(s.procs)
	}
	n := fmt.Sprintf("meshlet P=%s cpus=%s", p, s.cpus)
	if len(s.env) > 0 {
		n += " " + strings.Join(s.env, " ")
	}
	return n
}

// perfCounter counts perf events on one process while a measurement runs.
type perfCounter struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

// startPerfStat attaches `perf stat -x, -e events -p pid`; stop returns the
// counts. An empty events string returns a nil counter (no-op).
func startPerfStat(ctx context.Context, pid int, events string) (*perfCounter, error) {
	if events == "" {
		return nil, nil
	}
	pc := &perfCounter{}
	pc.cmd = exec.CommandContext(ctx, "perf", "stat", "-x", ",", "-e", events, "-p", strconv.Itoa(pid))
	pc.cmd.Stderr = &pc.out
	if err := pc.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start perf stat on pid %d: %w", pid, err)
	}
	// perf stat attaches asynchronously; give it time to open its events
	// before the measured window starts (it only misses counts, never adds).
	time.Sleep(200 * time.Millisecond)
	return pc, nil
}

// stop ends the counting (SIGINT makes perf print) and returns event → count.
func (pc *perfCounter) stop() (map[string]float64, error) {
	if pc == nil {
		return nil, nil
	}
	_ = pc.cmd.Process.Signal(syscall.SIGINT)
	t := time.AfterFunc(5*time.Second, func() { _ = pc.cmd.Process.Kill() })
	defer t.Stop()
	_ = pc.cmd.Wait() // exits non-zero on SIGINT
	counts := parsePerfStat(pc.out.String())
	if len(counts) == 0 {
		return nil, fmt.Errorf("perf stat printed no counts: %s", pc.out.String())
	}
	return counts, nil
}

// parsePerfStat parses `perf stat -x ,` output (value,unit,event,...) into
// event → count; lines without a numeric value ("<not counted>") are skipped.
func parsePerfStat(out string) map[string]float64 {
	counts := map[string]float64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 || f[2] == "" {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue // "<not counted>" and similar
		}
		counts[f[2]] = v
	}
	return counts
}

// perfEvents is the event list in flag order (for stable report columns).
func perfEvents(events string) []string {
	var evs []string
	for _, e := range strings.Split(events, ",") {
		if e = strings.TrimSpace(e); e != "" {
			evs = append(evs, e)
		}
	}
	return evs
}

// shortEvent drops the tracepoint group ("syscalls:sys_enter_futex" →
// "sys_enter_futex") for report column headers.
func shortEvent(e string) string {
	if _, after, ok := strings.Cut(e, ":"); ok {
		return after
	}
	return e
}

// perfRow formats per-unit counts, medians over rounds, as a markdown row.
func perfRow(name string, evs []string, rounds []map[string]float64) string {
	var b strings.Builder
	b.WriteString("| " + name + " |")
	for _, e := range evs {
		fmt.Fprintf(&b, " %.2f |", median(rounds, func(m map[string]float64) float64 { return m[e] }))
	}
	return b.String() + "\n"
}

// perfHeader is the markdown header for perfRow rows.
func perfHeader(what string, evs []string) string {
	var b strings.Builder
	b.WriteString("| " + what + " |")
	for _, e := range evs {
		b.WriteString(" " + shortEvent(e) + " |")
	}
	b.WriteString("\n|---|")
	for range evs {
		b.WriteString("---:|")
	}
	return b.String() + "\n"
}

// meter measures one proxy process over a measured window: the CPU it used
// (clock: cpuTime or runTime) and, with -perf-stat, perf event counts. A
// nil command (a target with no proxy, e.g. direct) measures nothing.
type meter struct {
	pid    int
	clock  func(pid int) time.Duration
	before time.Duration
	pc     *perfCounter
}

func startMeter(ctx context.Context, cmd *exec.Cmd, events string, clock func(pid int) time.Duration) (*meter, error) {
	if cmd == nil {
		return &meter{}, nil
	}
	m := &meter{pid: cmd.Process.Pid, clock: clock}
	var err error
	if m.pc, err = startPerfStat(ctx, m.pid, events); err != nil {
		return nil, err
	}
	m.before = clock(m.pid)
	return m, nil
}

// stop ends the window: the CPU per unit (request or call; 0 without a
// process or units) and the perf counts (nil without -perf-stat).
func (m *meter) stop(units int64) (time.Duration, map[string]float64, error) {
	counts, err := m.pc.stop()
	var per time.Duration
	if m.clock != nil && units > 0 {
		per = (m.clock(m.pid) - m.before) / time.Duration(units)
	}
	return per, counts, err
}
