// Command node-agent is meshlet's per-node service-mesh agent.
//
//	node-agent run [--config FILE] [--cgroup DIR] [--bpffs DIR] ...
//	node-agent exec [--cgroup DIR] -- CMD [ARGS...]
//	node-agent status [--admin ADDR]
//	node-agent ready [--admin ADDR] [--timeout D]
//	node-agent acceleration on|off [--admin ADDR]
//	node-agent cleanup [--bpffs DIR]
//	node-agent xds-server --config FILE [--listen ADDR] [--poll D]
//	node-agent default-config
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/meshlet/meshlet/pkg/agent"
	"github.com/meshlet/meshlet/pkg/config"
	"github.com/meshlet/meshlet/pkg/sockmap"
	xdsserver "github.com/meshlet/meshlet/pkg/xds/server"
)

const usage = `usage: node-agent COMMAND [flags]

commands:
  run             run the agent (embedded default config unless --config)
  exec -- CMD     run CMD inside the meshed cgroup
  status          print mode, kernel features, services and counters
  ready           wait until the running agent has a config in force
  acceleration    on|off: flip the acceleration kill switch of a running agent
  cleanup         remove pins left by an agent that was killed
  xds-server      run the embedded xDS control plane alone (--config FILE --listen ADDR)
  default-config  print the embedded default config
`

// exitError carries an exit code and a one-line message.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func fail(code int, format string, args ...any) error {
	return &exitError{code: code, msg: fmt.Sprintf(format, args...)}
}

func main() {
	err := run(os.Args[1:], os.Stdout)
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.code == 0 {
			return
		}
		fmt.Fprintln(os.Stderr, "node-agent:", ee.msg)
		os.Exit(ee.code)
	}
	fmt.Fprintln(os.Stderr, "node-agent:", err)
	os.Exit(1)
}

func run(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return fail(2, "no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(rest)
	case "exec":
		return cmdExec(rest)
	case "status":
		return cmdStatus(rest, stdout)
	case "acceleration":
		return cmdAccel(rest, stdout)
	case "cleanup":
		return cmdCleanup(rest)
	case "xds-server":
		return cmdXDSServer(rest)
	case "ready":
		return cmdReady(rest)
	case "default-config":
		_, err := stdout.Write(config.DefaultYAML())
		return err
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return fail(2, "unknown command %q (try: run, exec, status, acceleration, cleanup, xds-server, default-config)", cmd)
}

// newFlags returns a FlagSet whose errors come back as one line.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			return fail(0, "")
		}
		return fail(2, "%s: %v", fs.Name(), err)
	}
	return nil
}

func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fail(2, "run: --log-level %q: %v", level, err)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.EncoderConfig.TimeKey = "ts"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.DisableStacktrace = true
	return cfg.Build()
}

// daemon sets up a long-running command: its logger and a context that
// ends on SIGINT or SIGTERM. done flushes and releases both.
func daemon(level string) (context.Context, *zap.Logger, func(), error) {
	log, err := newLogger(level)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	return ctx, log, func() { stop(); _ = log.Sync() }, nil
}

func cmdRun(args []string) error {
	fs := newFlags("run")
	cfgPath := fs.String("config", "", "agent config file (YAML/JSON); the embedded default when empty")
	cgroup := fs.String("cgroup", "", "cgroup v2 directory to mesh (overrides capture.cgroup)")
	bpffs := fs.String("bpffs", "", "bpffs pin folder (overrides capture.bpffs; default "+sockmap.DefaultPinPath+")")
	proxyListen := fs.String("proxy-listen", "", "capture listener address (overrides proxy.listen)")
	adminListen := fs.String("admin-listen", "", "admin endpoint address (overrides admin.listen)")
	accel := fs.String("acceleration", "", "auto, on or off (overrides capture.acceleration)")
	intoApp := fs.Bool("accel-into-app", false, "also redirect proxy sends into application sockets")
	resourcesFile := fs.String("resources", "", "Envoy v3 resources file for the embedded control plane (re-read on change)")
	xdsAddress := fs.String("xds-address", "", "remote xDS control plane (host:port or unix:///path); switches xds.source to remote")
	embeddedListen := fs.String("xds-listen", "", "where the embedded control plane listens (overrides xds.embedded_listen)")
	stateDir := fs.String("state-dir", "", "folder for the last accepted config (overrides xds.state_dir)")
	nodeID := fs.String("node-id", "", "xDS node id (overrides xds.node_id)")
	delta := fs.Bool("delta", false, "use delta (incremental) xDS")
	onDemand := fs.Bool("on-demand", false, "subscribe to clusters on demand (implies --delta)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	concurrency := fs.Int("concurrency", 0, fmt.Sprintf("Go scheduler slots (GOMAXPROCS) to run on (overrides proxy.concurrency; default %d; a set GOMAXPROCS variable wins)", config.DefaultConcurrency))
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fail(2, "run: unexpected argument %q", fs.Arg(0))
	}
	var cfg *config.Config
	if *cfgPath == "" {
		cfg = config.Default()
	} else {
		var err error
		if cfg, err = config.Load(*cfgPath); err != nil {
			return fail(2, "%v", err)
		}
	}
	for _, o := range []struct {
		dst *string
		v   string
	}{
		{&cfg.Capture.Cgroup, *cgroup}, {&cfg.Capture.BPFFS, *bpffs}, {&cfg.Proxy.Listen, *proxyListen},
		{&cfg.Admin.Listen, *adminListen}, {(*string)(&cfg.Capture.Acceleration), *accel},
		{&cfg.XDS.ResourcesFile, *resourcesFile}, {&cfg.XDS.EmbeddedListen, *embeddedListen},
		{&cfg.XDS.StateDir, *stateDir}, {&cfg.XDS.NodeID, *nodeID},
	} {
		if o.v != "" {
			*o.dst = o.v
		}
	}
	if *intoApp {
		cfg.Capture.IntoApp = true
	}
	if *concurrency != 0 {
		cfg.Proxy.Concurrency = *concurrency
	}
	if *xdsAddress != "" {
		cfg.XDS.Source, cfg.XDS.Address = "remote", *xdsAddress
	}
	if *delta || *onDemand {
		cfg.XDS.Delta = true
	}
	if *onDemand {
		cfg.XDS.OnDemand = true
	}
	if err := cfg.Validate(); err != nil {
		return fail(2, "%v", err)
	}
	ctx, log, done, err := daemon(*logLevel)
	if err != nil {
		return err
	}
	defer done()
	cpus := runtime.GOMAXPROCS(0)
	_, envSet := os.LookupEnv("GOMAXPROCS")
	procs := cfg.Procs(cpus, envSet)
	if procs != cpus {
		// Setting GOMAXPROCS stops the runtime from following the
		// container's CPU limit (a pod resized in place): only when
		// proxy.concurrency is below what the runtime chose.
		runtime.GOMAXPROCS(procs)
	}
	log.Debug("scheduler slots", zap.Int("gomaxprocs", procs), zap.Int("available", cpus), zap.Bool("from_env", envSet), zap.Bool("follows_cpu_limit", procs == cpus && !envSet))
	if err := agent.New(cfg, log).Run(ctx); err != nil {
		return fail(1, "%v", err)
	}
	log.Info("node agent stopped")
	return nil
}

// cmdExec moves itself into the meshed cgroup and executes the command, so
// the command and everything it starts are meshed.
func cmdExec(args []string) error {
	fs := newFlags("exec")
	cgroup := fs.String("cgroup", "", "cgroup v2 directory to run in (default: the running agent's, from its admin endpoint)")
	admin := fs.String("admin", config.DefaultAdminListen, "admin endpoint of the running agent")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fail(2, "exec: no command given (node-agent exec -- CMD [ARGS...])")
	}
	dir := *cgroup
	if dir == "" {
		st, err := fetchStatus(*admin)
		if err != nil {
			return fail(1, "exec: no --cgroup and the agent's status is unavailable: %v", err)
		}
		if st.Cgroup == "" {
			return fail(1, "exec: the running agent has no meshed cgroup (capture disabled)")
		}
		dir = st.Cgroup
	}
	dir, err := sockmap.ResolveCgroup(dir)
	if err != nil {
		return fail(1, "exec: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return fail(1, "exec: join cgroup %s: %v", dir, err)
	}
	path, err := exec.LookPath(fs.Arg(0))
	if err != nil {
		return fail(127, "exec: %v", err)
	}
	if err := syscall.Exec(path, fs.Args(), os.Environ()); err != nil {
		return fail(126, "exec %s: %v", path, err)
	}
	return nil
}

func fetchStatus(admin string) (*agent.Status, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin endpoint answered %s", resp.Status)
	}
	var st agent.Status
	if err := decodeJSON(resp.Body, &st); err != nil {
		return nil, fmt.Errorf("decode status: %w", err)
	}
	return &st, nil
}

func cmdStatus(args []string, stdout io.Writer) error {
	fs := newFlags("status")
	admin := fs.String("admin", config.DefaultAdminListen, "admin endpoint of the running agent")
	if err := parse(fs, args); err != nil {
		return err
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + *admin + "/status")
	if err != nil {
		return fail(1, "status: agent not reachable at %s: %v", *admin, err)
	}
	defer resp.Body.Close()
	_, err = io.Copy(stdout, resp.Body)
	return err
}

func cmdAccel(args []string, stdout io.Writer) error {
	if len(args) == 0 || (args[0] != "on" && args[0] != "off") {
		return fail(2, "acceleration: want on or off")
	}
	mode := args[0]
	fs := newFlags("acceleration")
	admin := fs.String("admin", config.DefaultAdminListen, "admin endpoint of the running agent")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Post("http://"+*admin+"/acceleration?mode="+mode, "text/plain", nil)
	if err != nil {
		return fail(1, "acceleration: agent not reachable at %s: %v", *admin, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fail(1, "acceleration: %s: %s", resp.Status, body)
	}
	_, err = stdout.Write(body)
	return err
}

func cmdCleanup(args []string) error {
	fs := newFlags("cleanup")
	bpffs := fs.String("bpffs", sockmap.DefaultPinPath, "bpffs pin folder to remove")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := sockmap.Cleanup(*bpffs); err != nil {
		return fail(1, "cleanup: %v", err)
	}
	return nil
}

// cmdXDSServer serves a resources file over xDS (SotW and delta), re-read
// on change, so several agents can share one control plane.
func cmdXDSServer(args []string) error {
	fs := newFlags("xds-server")
	file := fs.String("config", "", "Envoy v3 resources file (bootstrap static_resources shape or a config dump)")
	listen := fs.String("listen", config.DefaultEmbeddedListen, "address to serve on (host:port or unix:///path)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	poll := fs.Duration("poll", xdsserver.DefaultPollInterval, "how often the file is checked for changes")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *poll <= 0 {
		return fail(2, "xds-server: --poll %v: want a positive duration", *poll)
	}
	if *file == "" {
		return fail(2, "xds-server: --config FILE is required")
	}
	ctx, log, done, err := daemon(*logLevel)
	if err != nil {
		return err
	}
	defer done()
	if _, _, err := xdsserver.LoadFile(*file); err != nil {
		return fail(2, "xds-server: %v", err)
	}
	log.Info("xds server starting", zap.String("config", *file), zap.String("listen", *listen))
	if err := xdsserver.ListenAndServe(ctx, *listen, xdsserver.Options{ConfigPath: *file, PollInterval: *poll, Logger: log}); err != nil {
		return fail(1, "xds-server: %v", err)
	}
	return nil
}

// cmdReady polls the admin endpoint's /ready until it answers 200 or the
// timeout passes.
func cmdReady(args []string) error {
	fs := newFlags("ready")
	admin := fs.String("admin", config.DefaultAdminListen, "admin endpoint of the running agent")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait")
	if err := parse(fs, args); err != nil {
		return err
	}
	c := http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(*timeout)
	last := "not reachable"
	for {
		resp, err := c.Get("http://" + *admin + "/ready")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = strings.TrimSpace(string(body))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fail(1, "ready: agent at %s not ready after %v: %s", *admin, *timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
