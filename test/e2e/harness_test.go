package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshlet/meshlet/internal/privtest"
	"github.com/meshlet/meshlet/pkg/agent"
)

const roleEnv = "MESHLET_E2E_ROLE"

var agentBin string

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role, os.Args[1:]))
	}
	dir, err := os.MkdirTemp("", "meshlet-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "node-agent")
	build := exec.Command("go", "build", "-o", agentBin, "github.com/meshlet/meshlet/cmd/node-agent")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build node-agent:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// pattern returns n deterministic pseudo-random bytes for seed.
func pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 7}))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// runRole makes the test binary a client program inside the mesh.
func runRole(role string, args []string) int {
	var err error
	switch role {
	case "bulk": // ADDR SIZE: send pattern(1), expect pattern(2), print local addr
		err = roleBulk(args)
	case "splice-proxy": // LISTEN UPSTREAM: io.Copy both ways (splice on Linux)
		err = roleSpliceProxy(args)
	case "echo-server": // LISTEN: echo with a read/write loop; bulk sink on a second port
		err = roleEchoServer(args)
	case "pingpong": // ADDR SIZE COUNT: print JSON latencies
		err = rolePingPong(args)
	case "bulk-send": // ADDR BYTES: print JSON throughput
		err = roleBulkSend(args)
	case "xds-load": // STOPFILE MAXSECONDS ADDR...: print a JSON loadReport
		err = roleXDSLoad(args)
	case "xds-dial": // ADDR: print the name of the upstream that answered
		err = roleXDSDial(args)
	case "xds-http": // PROBES-JSON: GET each, print the answers (xds_istio_test.go)
		err = roleXDSHTTP(args)
	case "l7-http", "l7-split", "l7-raw", "l7-grpc", "l7-grpc-lat", "l7-grpc-serve": // l7_roles_test.go
		err = runL7Role(role, args)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, role+":", err)
		return 1
	}
	return 0
}

func roleBulk(args []string) error {
	var size int
	if len(args) != 2 {
		return fmt.Errorf("usage: ADDR SIZE")
	}
	fmt.Sscan(args[1], &size)
	c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(pattern(1, size))
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, pattern(2, size)) {
		return fmt.Errorf("reply differs: %d bytes, want %d identical bytes", len(got), size)
	}
	fmt.Print(c.LocalAddr().String())
	return nil
}

func roleSpliceProxy(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: LISTEN UPSTREAM")
	}
	lis, err := net.Listen("tcp", args[0])
	if err != nil {
		return err
	}
	fmt.Println("listening")
	for {
		c, err := lis.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			up, err := net.Dial("tcp", args[1])
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{})
			go func() {
				io.Copy(up, c) // *net.TCPConn.ReadFrom: splice(2)
				up.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			io.Copy(c, up)
			c.(*net.TCPConn).CloseWrite()
			<-done
		}()
	}
}

// bulkServer serves the bulk role's protocol: it checks pattern(1) arrived
// intact and answers pattern(2). It records each connection's result.
type bulkServer struct {
	lis  net.Listener
	name string
	mu   sync.Mutex
	errs []error
	n    int
}

func (m *mesh) bulkServer(addr, name string, size int) *bulkServer {
	s := &bulkServer{lis: m.listen(addr), name: name}
	serveEach(s.lis, 60*time.Second, func(c net.Conn) {
		got, err := io.ReadAll(c)
		if err == nil && !bytes.Equal(got, pattern(1, size)) {
			err = fmt.Errorf("%s received %d bytes that differ from the %d sent", name, len(got), size)
		}
		if err == nil {
			_, err = c.Write(pattern(2, size))
		}
		s.mu.Lock()
		s.n++
		if err != nil {
			s.errs = append(s.errs, err)
		}
		s.mu.Unlock()
	})
	return s
}

func (s *bulkServer) result() (int, []error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n, append([]error(nil), s.errs...)
}

// mesh is one running agent in its own sandbox.
type mesh struct {
	t                       *testing.T
	ns, cg, agentCG, appsCG string
	pin                     string
	cmd                     *exec.Cmd
	log                     *syncBuffer
	http                    *http.Client
	exited                  chan struct{}
	stopped                 bool
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newSandbox prepares netns, cgroups and bpffs without starting the agent.
func newSandbox(t *testing.T) *mesh {
	t.Helper()
	privtest.Root(t)
	m := &mesh{t: t, cg: privtest.Cgroup(t), pin: privtest.BPFFS(t), ns: privtest.Netns(t)}
	m.agentCG = privtest.SubCgroup(t, m.cg, "agent")
	m.appsCG = privtest.SubCgroup(t, m.cg, "apps")
	m.http = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: privtest.NetnsDial(m.ns)}}
	return m
}

// startMesh starts the agent with the given config YAML.
func startMesh(t *testing.T, cfg string, args ...string) *mesh {
	m := newSandbox(t)
	m.start(cfg, args...)
	return m
}

func (m *mesh) start(cfg string, args ...string) {
	t := m.t
	t.Helper()
	f := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(f, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	m.log = &syncBuffer{}
	all := append([]string{"run", "--config", f, "--cgroup", m.cg, "--bpffs", m.pin, "--log-level", "debug"}, args...)
	m.cmd = privtest.Command(t, m.agentCG, m.ns, agentBin, all...)
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	m.exited = make(chan struct{})
	m.stopped = false
	go func() { m.cmd.Wait(); close(m.exited) }()
	t.Cleanup(func() {
		m.stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", m.log.String())
		}
	})
	privtest.WaitFor(t, 30*time.Second, "agent ready", func() bool {
		select {
		case <-m.exited:
			t.Fatalf("agent exited during start-up:\n%s", m.log.String())
		default:
		}
		resp, err := m.http.Get("http://127.0.0.1:15000/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// stop sends SIGTERM and waits (bounded) for a clean exit.
func (m *mesh) stop() {
	if m.stopped || m.cmd == nil {
		return
	}
	m.stopped = true
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(15 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.exited
		m.t.Errorf("agent did not stop within 15s of SIGTERM")
	}
}

func (m *mesh) status() agent.Status {
	m.t.Helper()
	resp, err := m.http.Get("http://127.0.0.1:15000/status")
	if err != nil {
		m.t.Fatalf("status: %v", err)
	}
	defer resp.Body.Close()
	var st agent.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		m.t.Fatalf("decode status: %v", err)
	}
	return st
}

// adminGet fetches path from the agent's admin endpoint and returns the
// body of a 200 answer.
func (m *mesh) adminGet(path string) []byte {
	m.t.Helper()
	resp, err := m.http.Get("http://127.0.0.1:15000" + path)
	if err != nil {
		m.t.Fatalf("admin %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		m.t.Fatalf("admin %s: read: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		m.t.Fatalf("admin %s: %s: %s", path, resp.Status, body)
	}
	return body
}

// listen opens a listener inside the sandbox netns (from the test process,
// so outside the meshed cgroup: a plain upstream server).
func (m *mesh) listen(addr string) net.Listener {
	m.t.Helper()
	var lis net.Listener
	privtest.InNetns(m.t, m.ns, func() {
		var err error
		if lis, err = net.Listen("tcp4", addr); err != nil {
			m.t.Fatalf("listen %s: %v", addr, err)
		}
	})
	m.t.Cleanup(func() { lis.Close() })
	return lis
}

// app prepares a command that runs inside the meshed apps cgroup and netns.
func (m *mesh) app(name string, args ...string) *exec.Cmd {
	return privtest.Command(m.t, m.appsCG, m.ns, name, args...)
}

// role prepares the test binary as a meshed client program.
func (m *mesh) role(role string, args ...string) *exec.Cmd {
	cmd := m.app(os.Args[0], args...)
	cmd.Env = append(os.Environ(), roleEnv+"="+role)
	return cmd
}

// daemon starts a long-running program in the apps cgroup, killed on cleanup.
func (m *mesh) daemon(cmd *exec.Cmd) *syncBuffer {
	m.t.Helper()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		m.t.Fatalf("start %s: %v", cmd.Path, err)
	}
	m.t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if m.t.Failed() {
			m.t.Logf("%s output:\n%s", cmd.Path, out.String())
		}
	})
	return out
}

func run(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			if cmd.Process != nil {
				cmd.Process.Kill()
			}
		case <-done:
		}
	}()
	out, err := cmd.Output()
	close(done)
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", cmd.Path, strings.Join(cmd.Args[1:], " "), err, out, stderr.String())
	}
	return string(out)
}

// waitPort waits until something listens on addr inside the netns.
func (m *mesh) waitPort(addr string) {
	m.t.Helper()
	dial := privtest.NetnsDial(m.ns)
	privtest.WaitFor(m.t, 20*time.Second, "listener on "+addr, func() bool {
		c, err := dial(context.Background(), "tcp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

func runOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// serveEach accepts until lis closes and runs handle on each connection in
// its own goroutine, with a deadline, closing the connection afterwards.
func serveEach(lis net.Listener, deadline time.Duration, handle func(net.Conn)) {
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(deadline))
				handle(c)
			}()
		}
	}()
}
