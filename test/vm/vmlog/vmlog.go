package vmlog

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Binary is the outcome of one test binary inside the guest.
type Binary struct {
	Name    string  `json:"name"`
	RC      int     `json:"rc"`
	Seconds float64 `json:"seconds"`
}

// Feature is one probe line printed by the smoke tests.
type Feature struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Min    string `json:"min"`
	Detail string `json:"detail,omitempty"`
}

// Result is what a guest's serial log says about its run.
type Result struct {
	// Booted is true once /init printed its first marker; BootUptime is the guest's uptime then.
	Booted     bool    `json:"booted"`
	BootUptime float64 `json:"boot_uptime_seconds"`
	Kernel     string  `json:"kernel,omitempty"`
	// ModulesLoaded and ModuleFailures report the insmod step.
	ModulesLoaded  int    `json:"modules_loaded"`
	ModuleFailures string `json:"module_failures,omitempty"`
	// Binaries lists every test binary that finished, in order; Running names one that started and
	// did not finish (the guest died or timed out inside it).
	Binaries []Binary  `json:"binaries"`
	Running  string    `json:"running,omitempty"`
	Features []Feature `json:"features,omitempty"`
	// KernelWarnings counts WARNING/BUG/Oops lines in dmesg after the tests.
	KernelWarnings int      `json:"kernel_warnings"`
	SetupErrors    []string `json:"setup_errors,omitempty"`
	// Overall is the guest's overall exit status; nil when the marker never appeared.
	Overall *int `json:"overall_rc"`
	// Panic is set when the log shows a kernel panic.
	Panic bool `json:"panic"`
}

// Passed reports whether the run is a success: the overall marker says 0, at least one binary ran,
// and every binary exited 0.
func (r *Result) Passed() bool {
	if r.Overall == nil || *r.Overall != 0 || len(r.Binaries) == 0 {
		return false
	}
	for _, b := range r.Binaries {
		if b.RC != 0 {
			return false
		}
	}
	return true
}

// Parser accumulates a Result from log lines; feed it with Line.
type Parser struct {
	res Result
}

// Result returns the result so far.
func (p *Parser) Result() *Result { return &p.res }

// Done reports whether the overall marker has been seen.
func (p *Parser) Done() bool { return p.res.Overall != nil }

// Line consumes one line of serial output (with or without its line ending).
func (p *Parser) Line(line string) {
	line = strings.TrimRight(line, "\r\n")
	if strings.Contains(line, "Kernel panic - not syncing") {
		p.res.Panic = true
	}
	if i := strings.Index(line, "MESHLET-FEATURE "); i >= 0 {
		p.feature(line[i+len("MESHLET-FEATURE "):])
		return
	}
	i := strings.Index(line, "VMTEST-")
	if i < 0 {
		return
	}
	rest := line[i+len("VMTEST-"):]
	kind, args, _ := strings.Cut(rest, " ")
	kv := fields(args)
	switch kind {
	case "BOOTED":
		p.res.Booted = true
		p.res.BootUptime = parseFloat(kv["uptime"])
		p.res.Kernel = kv["kernel"]
	case "MODULES":
		p.res.ModulesLoaded = parseInt(kv["loaded"], 0)
		if f := strings.TrimSuffix(strings.TrimPrefix(after(args, "failed="), "["), "]"); f != "" {
			p.res.ModuleFailures = f
		}
	case "START":
		p.res.Running = kv["name"]
	case "RESULT":
		if _, ok := kv["overall"]; ok || strings.HasPrefix(args, "overall") {
			rc := parseInt(kv["rc"], -1)
			p.res.Overall = &rc
			return
		}
		name := kv["name"]
		if name == "" {
			return
		}
		p.res.Binaries = append(p.res.Binaries, Binary{Name: name, RC: parseInt(kv["rc"], -1), Seconds: parseFloat(kv["seconds"])})
		if p.res.Running == name {
			p.res.Running = ""
		}
	case "KERNEL-WARNINGS":
		p.res.KernelWarnings = parseInt(kv["count"], 0)
	case "SETUP-ERROR":
		p.res.SetupErrors = append(p.res.SetupErrors, args)
	}
}

func (p *Parser) feature(args string) {
	kv := fields(args)
	f := Feature{Name: kv["name"], Status: kv["status"], Min: kv["min"]}
	if d := after(args, "detail="); d != "" {
		if u, err := strconv.Unquote(d); err == nil {
			f.Detail = u
		} else {
			f.Detail = d
		}
	}
	if f.Name == "" || f.Status == "" {
		return
	}
	// A later line for the same probe (e.g. a second binary) replaces the earlier one.
	for i := range p.res.Features {
		if p.res.Features[i].Name == f.Name {
			p.res.Features[i] = f
			return
		}
	}
	p.res.Features = append(p.res.Features, f)
}

// Parse reads a whole log.
func Parse(r io.Reader) (*Result, error) {
	var p Parser
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		p.Line(sc.Text())
	}
	if err := sc.Err(); err != nil {
		return p.Result(), fmt.Errorf("read serial log: %w", err)
	}
	return p.Result(), nil
}

// fields splits "a=1 b=2 word" into a map; bare words map to "".
func fields(s string) map[string]string {
	m := make(map[string]string)
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		if _, dup := m[k]; !dup {
			m[k] = v
		}
	}
	return m
}

// after returns the rest of s following the first occurrence of key, or "".
func after(s, key string) string {
	if i := strings.Index(s, key); i >= 0 {
		return strings.TrimSpace(s[i+len(key):])
	}
	return ""
}

func parseInt(s string, def int) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return def
	}
	return n
}

func parseFloat(s string) float64 {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != f || f < 0 || f > 1e9 {
		return 0
	}
	return f
}
