package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/test/vm/vmlog"
)

// defaultCPU is qemu's "max" model without CMPXCHG16B. qemu 7.2's TCG emulation of cmpxchg16b
// corrupts memory under 6.12's SLUB (double faults and oopses during boot in 3 of 9 to 8 of 10 boots,
// measured here); without the flag the kernel takes its locked slow path and boots reliably (12 of 12).
const defaultCPU = "max,cx16=off"

type config struct {
	cache    string
	kernels  []string
	tests    string
	results  string
	timeout  time.Duration
	qemu     string
	cpu      string
	memory   string
	smp      int
	append   string
	verbose  bool
	guestTTL time.Duration
	retries  int
}

// kernelResult is one row of results.json.
type kernelResult struct {
	Key         string        `json:"key"`
	Release     string        `json:"release"`
	Packages    string        `json:"packages"`
	Version     string        `json:"version"`
	Suite       string        `json:"suite"`
	Result      string        `json:"result"` // pass, fail, timeout, no-marker, panic, error
	Reason      string        `json:"reason,omitempty"`
	WallSeconds float64       `json:"wall_seconds"`
	BootSeconds float64       `json:"boot_seconds"`
	Attempts    int           `json:"attempts"`
	Log         string        `json:"log"`
	Guest       *vmlog.Result `json:"guest"`
}

type summary struct {
	Started    time.Time      `json:"started"`
	HostKernel string         `json:"host_kernel"`
	Qemu       string         `json:"qemu"`
	Accel      string         `json:"accel"`
	CPU        string         `json:"cpu"`
	CPUs       int            `json:"cpus"`
	Memory     string         `json:"memory"`
	Tests      []string       `json:"tests"`
	AllPassed  bool           `json:"all_passed"`
	Kernels    []kernelResult `json:"kernels"`
}

func main() {
	os.Exit(run())
}

func run() int {
	var cfg config
	var kernels string
	flag.StringVar(&cfg.cache, "cache", "test/vm/.cache", "cache directory of fetch-kernels.sh and mkinitramfs.sh")
	flag.StringVar(&kernels, "kernels", "5.10,6.1,6.12", "comma-separated kernel keys (kernels.conf)")
	flag.StringVar(&cfg.tests, "tests", "", "gzip'd newc cpio with /tests/*.test, appended to each base initramfs")
	flag.StringVar(&cfg.results, "results", "", "summary JSON path (default CACHE/results.json)")
	flag.DurationVar(&cfg.timeout, "timeout", 5*time.Minute, "wall-clock limit per kernel (boot + all tests)")
	flag.DurationVar(&cfg.guestTTL, "test-timeout", 4*time.Minute, "-test.timeout of each binary inside the guest")
	flag.StringVar(&cfg.qemu, "qemu", "qemu-system-x86_64", "qemu binary")
	flag.StringVar(&cfg.cpu, "cpu", defaultCPU, "qemu -cpu model (software emulation)")
	flag.StringVar(&cfg.memory, "m", "1G", "guest memory")
	flag.IntVar(&cfg.smp, "smp", 2, "guest CPUs")
	flag.StringVar(&cfg.append, "append", "", "extra kernel command-line words (KEY=VALUE reach the guest's environment)")
	flag.BoolVar(&cfg.verbose, "v", false, "stream each guest's serial console to stdout")
	flag.IntVar(&cfg.retries, "boot-retries", 1, "extra boots of a kernel whose guest died before reaching /init (never retried once tests ran)")
	flag.Parse()
	for _, k := range strings.Split(kernels, ",") {
		if k = strings.TrimSpace(k); k != "" {
			cfg.kernels = append(cfg.kernels, k)
		}
	}
	if cfg.results == "" {
		cfg.results = filepath.Join(cfg.cache, "results.json")
	}

	logCfg := zap.NewDevelopmentConfig()
	logCfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
	logCfg.DisableStacktrace = true
	logger, err := logCfg.Build()
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmrun: build logger: %v\n", err)
		return 2
	}
	defer func() { _ = logger.Sync() }()

	if cfg.tests == "" || len(cfg.kernels) == 0 {
		logger.Error("usage: vmrun -tests TESTS.cpio.gz [-kernels 5.10,6.1,6.12]")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	sum, err := matrix(ctx, logger, cfg)
	if err != nil {
		logger.Error("kernel matrix", zap.Error(err))
		return 2
	}
	printTable(os.Stdout, sum)
	if err := writeJSON(cfg.results, sum); err != nil {
		logger.Error("write results", zap.String("path", cfg.results), zap.Error(err))
		return 2
	}
	logger.Info("results written", zap.String("path", cfg.results), zap.Bool("all_passed", sum.AllPassed))
	if !sum.AllPassed {
		return 1
	}
	return 0
}

func matrix(ctx context.Context, logger *zap.Logger, cfg config) (*summary, error) {
	tests, err := listTests(cfg.tests)
	if err != nil {
		return nil, err
	}
	sum := &summary{
		Started:    time.Now().UTC(),
		HostKernel: hostKernel(),
		Qemu:       qemuVersion(ctx, cfg.qemu),
		Accel:      "tcg",
		CPU:        cfg.cpu,
		CPUs:       cfg.smp,
		Memory:     cfg.memory,
		Tests:      tests,
		AllPassed:  true,
	}
	if err := os.MkdirAll(filepath.Join(cfg.cache, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	for _, key := range cfg.kernels {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted before kernel %s: %w", key, ctx.Err())
		}
		var kr kernelResult
		for attempt := 1; ; attempt++ {
			kr = bootKernel(ctx, logger.With(zap.String("kernel", key), zap.Int("attempt", attempt)), cfg, key)
			kr.Attempts = attempt
			// Only a guest that never reached /init is booted again: that is the emulator or the
			// kernel's early boot, not the code under test. Anything after that counts as it is.
			if kr.Result == "pass" || (kr.Guest != nil && kr.Guest.Booted) || attempt > cfg.retries || ctx.Err() != nil {
				break
			}
			logger.Warn("guest died before /init; booting again", zap.String("kernel", key), zap.String("log", kr.Log))
			if err := os.Rename(kr.Log, fmt.Sprintf("%s.attempt%d", kr.Log, attempt)); err != nil {
				logger.Warn("keep failed boot log", zap.Error(err))
			}
		}
		if kr.Result != "pass" {
			sum.AllPassed = false
		}
		sum.Kernels = append(sum.Kernels, kr)
	}
	return sum, nil
}

// bootKernel runs one guest and classifies its outcome. It never returns an error: every failure is
// a failed row, so one broken kernel does not hide the others.
func bootKernel(ctx context.Context, logger *zap.Logger, cfg config, key string) kernelResult {
	kd := filepath.Join(cfg.cache, "kernels", key)
	kr := kernelResult{
		Key:      key,
		Release:  readTrim(filepath.Join(kd, "release")),
		Packages: readTrim(filepath.Join(kd, "package")),
		Version:  readTrim(filepath.Join(kd, "version")),
		Suite:    readTrim(filepath.Join(kd, "suite")),
		Log:      filepath.Join(cfg.cache, "logs", key+".log"),
	}
	fail := func(result, reason string) kernelResult {
		kr.Result, kr.Reason = result, reason
		logger.Error("kernel failed", zap.String("result", result), zap.String("reason", reason))
		return kr
	}
	initrd := filepath.Join(cfg.cache, "initramfs", "run-"+key+".cpio.gz")
	if err := concat(initrd, filepath.Join(cfg.cache, "initramfs", key+".cpio.gz"), cfg.tests); err != nil {
		return fail("error", fmt.Sprintf("assemble initramfs: %v", err))
	}
	defer os.Remove(initrd)

	logFile, err := os.Create(kr.Log)
	if err != nil {
		return fail("error", fmt.Sprintf("create log: %v", err))
	}
	defer logFile.Close()

	cmdline := "console=ttyS0 panic=-1 oops=panic quiet VMTEST_TIMEOUT=" + cfg.guestTTL.String()
	if cfg.append != "" {
		cmdline += " " + cfg.append
	}
	args := []string{
		// KVM is deliberately never used: on these machines /dev/kvm exists but qemu aborts or hangs.
		"-accel", "tcg", "-cpu", cfg.cpu,
		"-m", cfg.memory, "-smp", fmt.Sprint(cfg.smp),
		"-nodefaults", "-nographic", "-display", "none", "-no-reboot",
		"-serial", "stdio",
		"-kernel", filepath.Join(kd, "vmlinuz"),
		"-initrd", initrd,
		"-append", cmdline,
	}
	runCtx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	cmd := exec.CommandContext(runCtx, cfg.qemu, args...)
	cmd.Stdin = nil
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fail("error", fmt.Sprintf("qemu stdout pipe: %v", err))
	}
	cmd.Stderr = logFile

	logger.Info("booting", zap.String("release", kr.Release), zap.Duration("timeout", cfg.timeout))
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fail("error", fmt.Sprintf("start %s: %v", cfg.qemu, err))
	}
	var p vmlog.Parser
	var sink io.Writer = logFile
	if cfg.verbose {
		sink = io.MultiWriter(logFile, &prefixWriter{w: os.Stdout, prefix: "[" + key + "] "})
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		_, _ = io.WriteString(sink, line+"\n")
		p.Line(line)
		if strings.Contains(line, "VMTEST-BOOTED") {
			kr.BootSeconds = time.Since(start).Seconds()
		}
	}
	waitErr := cmd.Wait()
	kr.WallSeconds = time.Since(start).Seconds()
	res := p.Result()
	kr.Guest = res
	// qemu's own exit status says nothing about the guest; only the markers count.
	result, reason := classify(res, runCtx.Err() != nil && ctx.Err() == nil, ctx.Err() != nil, cfg.timeout, waitErr)
	if result != "pass" {
		return fail(result, reason)
	}
	kr.Result = "pass"
	logger.Info("kernel passed", zap.Float64("wall_seconds", kr.WallSeconds),
		zap.Float64("guest_boot_seconds", res.BootUptime), zap.Int("kernel_warnings", res.KernelWarnings))
	return kr
}

// classify turns a decoded guest log into a result: pass, fail, timeout, panic, no-marker or error.
func classify(res *vmlog.Result, timedOut, interrupted bool, timeout time.Duration, waitErr error) (string, string) {
	switch {
	case timedOut:
		return "timeout", fmt.Sprintf("no overall result within %s (running: %q)", timeout, res.Running)
	case interrupted:
		return "error", "interrupted"
	case res.Panic:
		return "panic", fmt.Sprintf("kernel panic (running: %q)", res.Running)
	case res.Overall == nil:
		return "no-marker", fmt.Sprintf("guest ended without overall marker (qemu: %v, running: %q)", waitErr, res.Running)
	case !res.Passed():
		return "fail", failedBinaries(res)
	}
	return "pass", ""
}

func failedBinaries(r *vmlog.Result) string {
	var bad []string
	for _, b := range r.Binaries {
		if b.RC != 0 {
			bad = append(bad, fmt.Sprintf("%s rc=%d", b.Name, b.RC))
		}
	}
	if len(r.SetupErrors) > 0 {
		bad = append(bad, "setup: "+strings.Join(r.SetupErrors, "; "))
	}
	if len(bad) == 0 {
		bad = append(bad, fmt.Sprintf("overall rc=%d", *r.Overall))
	}
	return strings.Join(bad, ", ")
}

func printTable(w io.Writer, s *summary) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KERNEL\tRELEASE\tRESULT\tBOOT(s)\tWALL(s)\tBINARIES\tKWARN\tREASON")
	for _, k := range s.Kernels {
		bins, warn := "-", "-"
		if k.Guest != nil {
			var parts []string
			for _, b := range k.Guest.Binaries {
				parts = append(parts, fmt.Sprintf("%s:%d", b.Name, b.RC))
			}
			if len(parts) > 0 {
				bins = strings.Join(parts, ",")
			}
			warn = fmt.Sprint(k.Guest.KernelWarnings)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f\t%.1f\t%s\t%s\t%s\n", k.Key, k.Release, strings.ToUpper(k.Result),
			k.BootSeconds, k.WallSeconds, bins, warn, k.Reason)
	}
	_ = tw.Flush()
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return nil
}

// concat writes the concatenation of srcs to dst: the kernel unpacks concatenated cpio archives in
// order, so the test archive is layered on the reusable base.
func concat(dst string, srcs ...string) error {
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("create %s: %w", dst, err)
	}
	for _, s := range srcs {
		in, err := os.Open(s)
		if err != nil {
			out.Close()
			return fmt.Errorf("open %s: %w", s, err)
		}
		_, err = io.Copy(out, in)
		in.Close()
		if err != nil {
			out.Close()
			return fmt.Errorf("copy %s: %w", s, err)
		}
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("close %s: %w", dst, err)
	}
	return nil
}

// listTests names the binaries of the test cpio from its sibling manifest (written by run.sh).
func listTests(cpio string) ([]string, error) {
	if _, err := os.Stat(cpio); err != nil {
		return nil, fmt.Errorf("test archive: %w", err)
	}
	b, err := os.ReadFile(cpio + ".list")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read test list: %w", err)
	}
	return strings.Fields(string(b)), nil
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func hostKernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func qemuVersion(ctx context.Context, qemu string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, qemu, "--version").Output()
	if err != nil {
		return ""
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(first)
}

// prefixWriter prefixes each line written through it.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line == "" {
			continue
		}
		if _, err := io.WriteString(p.w, p.prefix+line); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}
