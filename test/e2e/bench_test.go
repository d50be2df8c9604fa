package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/internal/privtest"
)

// TestBenchTCP is `make bench`'s same-node TCP benchmark, not a timed test:
// it only runs with MESHLET_BENCH=1 and asserts nothing about speed. It
// interleaves, in one run, ping-pong (64 B, 4 KiB) and bulk transfers over
// five paths: direct loopback; through the agent without acceleration (the
// kill switch on); with acceleration into the proxy (the default); with
// acceleration both ways; and both ways with kernel forwarding of the TCP
// route (the proxy hands the stream to the kernel once it chose the
// upstream). It writes a Markdown report to MESHLET_BENCH_OUT.
func TestBenchTCP(t *testing.T) {
	if os.Getenv("MESHLET_BENCH") != "1" {
		t.Skip("benchmark: run with MESHLET_BENCH=1 (make bench)")
	}
	rounds := 5
	if v := os.Getenv("MESHLET_BENCH_ROUNDS"); v != "" {
		fmt.Sscan(v, &rounds)
	}
	pingN := 20000
	bulkBytes := 512 * mib
	m := newSandbox(t)
	m.daemon(m.role("echo-server", "127.0.0.1:19999", "127.0.0.1:19998"))
	m.waitPort("127.0.0.1:19999")
	m.waitPort("127.0.0.1:19998")
	m.start(meshConfig("on", false,
		svc{Name: "echo", Listen: "10.96.9.9:80", Endpoints: []string{"127.0.0.1:19999"}},
		svc{Name: "sink", Listen: "10.96.9.9:81", Endpoints: []string{"127.0.0.1:19998"}}))

	type path struct {
		name, echo, sink, accel string
	}
	paths := []path{
		{"direct loopback (no mesh)", "127.0.0.1:19999", "127.0.0.1:19998", ""},
		{"agent, acceleration off", "10.96.9.9:80", "10.96.9.9:81", "mode=off"},
		{"agent, accel into proxy (default)", "10.96.9.9:80", "10.96.9.9:81", "mode=on&into_app=false"},
		{"agent, accel both ways", "10.96.9.9:80", "10.96.9.9:81", "mode=on&into_app=true&forward=false"},
		{"agent, both ways + kernel forwarding", "10.96.9.9:80", "10.96.9.9:81", "mode=on&into_app=true&forward=true"},
	}
	type sample struct{ p50_64, p99_64, p50_4k, p99_4k, mbps []float64 }
	res := make([]sample, len(paths))
	setAccel := func(q string) {
		if q == "" {
			return
		}
		resp, err := m.http.Post("http://127.0.0.1:15000/acceleration?"+q, "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("set acceleration %s: %s", q, resp.Status)
		}
	}
	for r := 0; r < rounds; r++ {
		for i, p := range paths {
			setAccel(p.accel)
			var a, b pingResult
			var bulk bulkResult
			json.Unmarshal([]byte(run(t, m.role("pingpong", p.echo, "64", fmt.Sprint(pingN)))), &a)
			json.Unmarshal([]byte(run(t, m.role("pingpong", p.echo, "4096", fmt.Sprint(pingN)))), &b)
			json.Unmarshal([]byte(run(t, m.role("bulk-send", p.sink, fmt.Sprint(bulkBytes)))), &bulk)
			res[i].p50_64 = append(res[i].p50_64, a.P50us)
			res[i].p99_64 = append(res[i].p99_64, a.P99us)
			res[i].p50_4k = append(res[i].p50_4k, b.P50us)
			res[i].p99_4k = append(res[i].p99_4k, b.P99us)
			res[i].mbps = append(res[i].mbps, bulk.MBps)
			t.Logf("round %d %-36s 64B p50 %6.1fus  4KiB p50 %6.1fus  bulk %7.0f MB/s", r, p.name, a.P50us, b.P50us, bulk.MBps)
		}
	}

	// A CPU profile of the agent during ping-pong in the default mode.
	setAccel("mode=on&into_app=false")
	prof := make(chan string, 1)
	go func() { prof <- m.profileTop(t, 4) }()
	run(t, m.role("pingpong", "10.96.9.9:80", "64", "60000"))
	top := <-prof

	med := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
	var b strings.Builder
	fmt.Fprintf(&b, "# Same-node TCP benchmark\n\nProduced by `make bench` (test/e2e/bench_test.go) on %s, kernel %s, %d CPUs, %s.\n",
		time.Now().UTC().Format("2006-01-02"), strings.TrimSpace(privtest.MustRun(t, "uname", "-r")), runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(&b, "One connection per measurement, %d round trips per ping-pong (after %d warm-up), %d MiB per bulk transfer; %d rounds, paths interleaved within each round; medians of the rounds. The machine is shared and noisy: compare ratios within this run.\n\n", pingN, pingN/10, bulkBytes/mib, rounds)
	b.WriteString("| path | 64 B p50 (us) | 64 B p99 (us) | 4 KiB p50 (us) | 4 KiB p99 (us) | bulk (MB/s) | 64 B p50 / direct | 4 KiB p50 / direct |\n|---|---|---|---|---|---|---|---|\n")
	d64, d4k := med(res[0].p50_64), med(res[0].p50_4k)
	for i, p := range paths {
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %.1f | %.1f | %.0f | %.2f | %.2f |\n", p.name,
			med(res[i].p50_64), med(res[i].p99_64), med(res[i].p50_4k), med(res[i].p99_4k), med(res[i].mbps),
			med(res[i].p50_64)/d64, med(res[i].p50_4k)/d4k)
	}
	fmt.Fprintf(&b, "\nAgent CPU profile during 64 B ping-pong in the default mode (accel into proxy; top functions, cumulative):\n\n```\n%s```\n", top)
	if out := os.Getenv("MESHLET_BENCH_OUT"); out != "" {
		writeReport(t, out, b.String())
	}
	t.Log("\n" + b.String())
}

// profileTop takes a CPU profile of the agent for secs seconds and returns
// `go tool pprof -top` output (first lines).
func (m *mesh) profileTop(t *testing.T, secs int) string {
	c := &http.Client{Timeout: time.Duration(secs+10) * time.Second, Transport: m.http.Transport}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:15000/debug/pprof/profile?seconds=%d", secs))
	if err != nil {
		return "profile failed: " + err.Error() + "\n"
	}
	defer resp.Body.Close()
	f, err := os.CreateTemp("", "meshlet-agent-*.prof")
	if err != nil {
		return err.Error()
	}
	defer os.Remove(f.Name())
	io.Copy(f, resp.Body)
	f.Close()
	out, err := runOut("go", "tool", "pprof", "-top", "-cum", "-nodecount=25", agentBin, f.Name())
	if err != nil {
		return "pprof failed: " + err.Error() + "\n" + out
	}
	return out
}
