package benchconf

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The configs must be accepted by the real programs when they are
// installed (`nginx -t`, `haproxy -c`); the text checks hold everywhere.
func TestConfigs(t *testing.T) {
	dir := t.TempDir()
	up, err := Nginx(filepath.Join(dir, "up"), "127.0.0.1:18081", "")
	if err != nil {
		t.Fatal(err)
	}
	px, err := Nginx(filepath.Join(dir, "px"), "127.0.0.1:18082", "127.0.0.1:18081")
	if err != nil {
		t.Fatal(err)
	}
	ha := filepath.Join(dir, "haproxy.cfg")
	if err := HAProxy(ha, "127.0.0.1:18083", "127.0.0.1:18081", "127.0.0.1:18084", "127.0.0.1:18085"); err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if s := read(up); !strings.Contains(s, strings.Repeat("x", ResponseSize)+`"`) || strings.Contains(s, "proxy_pass") {
		t.Errorf("responder config:\n%s", s)
	}
	if s := read(px); !strings.Contains(s, "server 127.0.0.1:18081; keepalive 128;") || !strings.Contains(s, "listen 127.0.0.1:18082") {
		t.Errorf("proxy config:\n%s", s)
	}
	if s := read(ha); !strings.Contains(s, "bind 127.0.0.1:18084 proto h2") || !strings.Contains(s, "server g1 127.0.0.1:18085 proto h2") {
		t.Errorf("haproxy config:\n%s", s)
	}
	if nginx, err := exec.LookPath("nginx"); err == nil {
		for _, c := range []struct{ dir, conf string }{{filepath.Join(dir, "up"), up}, {filepath.Join(dir, "px"), px}} {
			if out, err := exec.Command(nginx, "-t", "-p", c.dir, "-c", c.conf, "-e", filepath.Join(c.dir, "error.log")).CombinedOutput(); err != nil {
				t.Errorf("nginx -t %s: %v\n%s", c.conf, err, out)
			}
		}
	}
	if haproxy, err := exec.LookPath("haproxy"); err == nil {
		if out, err := exec.Command(haproxy, "-c", "-f", ha).CombinedOutput(); err != nil {
			t.Errorf("haproxy -c: %v\n%s", err, out)
		}
	}
}
