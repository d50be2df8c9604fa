package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/internal/privtest"
)

// The compatibility suite: real programs no one here wrote, talking through
// service addresses meshed by the agent with acceleration on, each checked
// for correct data. Their servers run in the meshed cgroup too, so the
// proxy's upstream sockets are paired with them (same-node acceleration).

func need(t *testing.T, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			privtest.Unavailable(t, "%s not installed (apt-get install: see .ci/deps.sh)", b)
		}
	}
}

// accelModes are the acceleration settings each program is checked under.
var accelModes = []struct {
	name    string
	intoApp bool
}{{"into-proxy", false}, {"into-proxy+into-app", true}}

// checkAccelerated asserts the run was captured and redirected.
func checkAccelerated(t *testing.T, m *mesh) {
	t.Helper()
	st := m.status()
	if st.BPF == nil || st.BPF.Captured == 0 || st.BPF.RedirectBytes+st.BPF.FwdBytes == 0 {
		t.Fatalf("traffic was not meshed and accelerated: %+v", st.BPF)
	}
	t.Logf("captured %d connections; redirected %d bytes in %d messages (%d misses); kernel-forwarded %d bytes in %d messages (%d directions armed)",
		st.BPF.Captured, st.BPF.RedirectBytes, st.BPF.RedirectMsgs, st.BPF.MissMsgs, st.BPF.FwdBytes, st.BPF.FwdMsgs, st.BPF.FwdArmed)
}

func TestCompatNginxSendfileCurl(t *testing.T) {
	need(t, "nginx", "curl")
	for _, mode := range accelModes {
		t.Run(mode.name, func(t *testing.T) {
			m := newSandbox(t)
			dir := t.TempDir()
			www := filepath.Join(dir, "www")
			os.MkdirAll(www, 0o755)
			body := make([]byte, 8*mib+123)
			rand.Read(body)
			os.WriteFile(filepath.Join(www, "blob.bin"), body, 0o644)
			os.Chmod(dir, 0o755)
			conf := fmt.Sprintf(`daemon off; master_process off; worker_processes 1;
pid %[1]s/nginx.pid; error_log %[1]s/error.log;
events { worker_connections 64; }
http {
  access_log off; sendfile on; tcp_nopush on; keepalive_timeout 5;
  client_body_temp_path %[1]s/body; proxy_temp_path %[1]s/proxy; fastcgi_temp_path %[1]s/fcgi;
  uwsgi_temp_path %[1]s/uwsgi; scgi_temp_path %[1]s/scgi;
  server { listen 127.0.0.1:18080; root %[2]s; }
}`, dir, www)
			os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644)
			m.daemon(m.app("nginx", "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log")))
			m.waitPort("127.0.0.1:18080")
			m.start(meshConfig("on", mode.intoApp, svc{Name: "nginx", Listen: "10.96.1.1:80", Endpoints: []string{"127.0.0.1:18080"}}))

			want := sha256.Sum256(body)
			for i := 0; i < 3; i++ {
				out := filepath.Join(dir, fmt.Sprintf("got%d", i))
				run(t, m.app("curl", "-sS", "--fail", "--max-time", "60", "-o", out, "http://10.96.1.1/blob.bin"))
				got, _ := os.ReadFile(out)
				if sha256.Sum256(got) != want {
					t.Fatalf("download %d: %d bytes, differs from the %d-byte file", i, len(got), len(body))
				}
			}
			checkAccelerated(t, m)
		})
	}
}

func TestCompatRedis(t *testing.T) {
	need(t, "redis-server", "redis-benchmark", "redis-cli")
	for _, mode := range accelModes {
		t.Run(mode.name, func(t *testing.T) {
			m := newSandbox(t)
			dir := t.TempDir()
			m.daemon(m.app("redis-server", "--port", "16379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
				"--dir", dir, "--protected-mode", "no"))
			m.waitPort("127.0.0.1:16379")
			m.start(meshConfig("on", mode.intoApp, svc{Name: "redis", Listen: "10.96.1.2:6379", Endpoints: []string{"127.0.0.1:16379"}}))

			out := run(t, m.app("redis-benchmark", "-h", "10.96.1.2", "-p", "6379", "-n", "20000", "-c", "8", "-t", "set,get", "-q"))
			if !strings.Contains(out, "SET:") || !strings.Contains(out, "GET:") {
				t.Fatalf("redis-benchmark output: %s", out)
			}
			out = run(t, m.app("redis-benchmark", "-h", "10.96.1.2", "-p", "6379", "-n", "20000", "-c", "4", "-P", "16", "-t", "set", "-q"))
			t.Logf("redis-benchmark: %s", strings.TrimSpace(out))

			// Data check: a 2 MiB value set and read back through the mesh.
			val := make([]byte, 2*mib)
			rand.Read(val)
			hexval := []byte(fmt.Sprintf("%x", val))
			set := m.app("redis-cli", "-h", "10.96.1.2", "-p", "6379", "-x", "set", "big")
			set.Stdin = bytes.NewReader(hexval)
			if got := strings.TrimSpace(run(t, set)); got != "OK" {
				t.Fatalf("SET: %q", got)
			}
			got := run(t, m.app("redis-cli", "-h", "10.96.1.2", "-p", "6379", "--raw", "get", "big"))
			if strings.TrimRight(got, "\n") != string(hexval) {
				t.Fatalf("GET returned %d bytes that differ from the %d set", len(got), len(hexval))
			}
			checkAccelerated(t, m)
		})
	}
}

// iperf3's control protocol reads a 4-byte length and then the JSON it
// announces, and its read loop gives up early when read() would block
// ("Size of data read does not correspond to offered length"); any
// proxy that adds a gap between the two writes (a loaded machine) can make
// the server give up ("unable to receive parameters"). Seen once in many
// runs under heavy load; it is iperf3's race, kept visible here rather
// than retried.
func TestCompatIperf3(t *testing.T) {
	need(t, "iperf3")
	for _, mode := range accelModes {
		t.Run(mode.name, func(t *testing.T) {
			m := newSandbox(t)
			m.daemon(m.app("iperf3", "-s", "-p", "15201", "-B", "127.0.0.1"))
			m.waitPort("127.0.0.1:15201")
			m.start(meshConfig("on", mode.intoApp, svc{Name: "iperf", Listen: "10.96.1.3:5201", Endpoints: []string{"127.0.0.1:15201"}}))
			for _, reverse := range []bool{false, true} {
				args := []string{"-c", "10.96.1.3", "-p", "5201", "-t", "2", "-J"}
				if reverse {
					args = append(args, "-R")
				}
				var res struct {
					End struct {
						SumSent     struct{ Bytes float64 } `json:"sum_sent"`
						SumReceived struct{ Bytes float64 } `json:"sum_received"`
					} `json:"end"`
					Error string `json:"error"`
				}
				out := run(t, m.app("iperf3", args...))
				if err := json.Unmarshal([]byte(out), &res); err != nil || res.Error != "" {
					t.Fatalf("iperf3 %v: %v %s", args, err, res.Error)
				}
				if res.End.SumReceived.Bytes <= 0 || res.End.SumReceived.Bytes > res.End.SumSent.Bytes {
					t.Fatalf("iperf3 reverse=%v: sent %v received %v", reverse, res.End.SumSent.Bytes, res.End.SumReceived.Bytes)
				}
				t.Logf("iperf3 reverse=%v: %.0f MB received", reverse, res.End.SumReceived.Bytes/1e6)
			}
			checkAccelerated(t, m)
		})
	}
}

// A Go program that proxies with io.Copy between two TCP connections: on
// Linux that is splice(2), which cannot see bytes redirected into a socket's
// psock queue. With the default directions it must work; into_app is
// documented as unsafe for it and not run here.
func TestCompatGoIOCopySplice(t *testing.T) {
	m := newSandbox(t)
	backend := m.bulkServer("127.0.0.1:18091", "backend", mib)
	out := m.daemon(m.role("splice-proxy", "127.0.0.1:18090", "10.96.1.5:7000"))
	m.waitPort("127.0.0.1:18090")
	_ = out
	m.start(meshConfig("on", false,
		svc{Name: "front", Listen: "10.96.1.4:80", Endpoints: []string{"127.0.0.1:18090"}},
		svc{Name: "back", Listen: "10.96.1.5:7000", Endpoints: []string{"127.0.0.1:18091"}}))
	for i := 0; i < 3; i++ {
		run(t, m.role("bulk", "10.96.1.4:80", fmt.Sprint(mib)))
	}
	if n, errs := backend.result(); n != 3 || len(errs) > 0 {
		t.Fatalf("backend: n=%d errs=%v", n, errs)
	}
	checkAccelerated(t, m)
}

const asyncioServer = `
import asyncio, sys
async def handle(r, w):
    while True:
        data = await r.read(65536)
        if not data:
            break
        w.write(data)
        await w.drain()
    w.write_eof()
    await w.drain()
    w.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
`

const asyncioClient = `
import asyncio, os, sys, hashlib
async def one(host, port, size):
    r, w = await asyncio.open_connection(host, port)
    payload = os.urandom(size)
    async def send():
        for i in range(0, size, 16384):
            w.write(payload[i:i+16384])
            await w.drain()
        w.write_eof()
    sender = asyncio.create_task(send())
    got = bytearray()
    while True:
        chunk = await r.read(65536)
        if not chunk:
            break
        got += chunk
    await sender
    w.close()
    if bytes(got) != payload:
        raise SystemExit(f"echo differs: {len(got)} bytes back, {size} sent")
async def main():
    host, port, conns, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    await asyncio.wait_for(asyncio.gather(*(one(host, port, size) for _ in range(conns))), 60)
    print("ok", conns)
asyncio.run(main())
`

func TestCompatPythonAsyncio(t *testing.T) {
	need(t, "python3")
	for _, mode := range accelModes {
		t.Run(mode.name, func(t *testing.T) {
			m := newSandbox(t)
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "server.py"), []byte(asyncioServer), 0o644)
			os.WriteFile(filepath.Join(dir, "client.py"), []byte(asyncioClient), 0o644)
			m.daemon(m.app("python3", filepath.Join(dir, "server.py"), "18070"))
			m.waitPort("127.0.0.1:18070")
			m.start(meshConfig("on", mode.intoApp, svc{Name: "echo", Listen: "10.96.1.6:7070", Endpoints: []string{"127.0.0.1:18070"}}))
			start := time.Now()
			out := run(t, m.app("python3", filepath.Join(dir, "client.py"), "10.96.1.6", "7070", "8", fmt.Sprint(mib)))
			t.Logf("asyncio client: %v", time.Since(start))
			if strings.TrimSpace(out) != "ok 8" {
				t.Fatalf("client: %q", out)
			}
			checkAccelerated(t, m)
		})
	}
}
