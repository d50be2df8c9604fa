package hcm

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Real clients nobody here wrote, against the proxy on loopback.

func TestCurl(t *testing.T) {
	curl := requireTool(t, "curl")
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	base := "http://" + p.addr
	t.Run("http1.1", func(t *testing.T) {
		out := runTool(t, 30*time.Second, curl, "-sS", "--http1.1", "-H", "Host: svc.test", "-D", "-", base+"/v1/x")
		s := string(out)
		if !strings.HasPrefix(s, "HTTP/1.1 200") || !strings.Contains(s, `"URI":"/api/x"`) || !strings.Contains(strings.ToLower(s), "x-resp: yes") {
			t.Errorf("curl output:\n%s", s)
		}
	})
	t.Run("h2c prior knowledge", func(t *testing.T) {
		out := runTool(t, 30*time.Second, curl, "-sS", "--http2-prior-knowledge", "-H", "Host: svc.test", "-D", "-", base+"/v1/x")
		s := string(out)
		if !strings.HasPrefix(s, "HTTP/2 200") || !strings.Contains(s, `"URI":"/api/x"`) {
			t.Errorf("curl output:\n%s", s)
		}
	})
	t.Run("100-continue upload", func(t *testing.T) {
		body := strings.Repeat("z", 100000)
		out := runTool(t, 30*time.Second, curl, "-sS", "--http1.1", "-H", "Host: svc.test", "-H", "Expect: 100-continue", "--data-binary", body, base+"/up")
		if !strings.Contains(string(out), `"BodyLen":100000`) {
			t.Errorf("curl output: %s", out)
		}
	})
	t.Run("keep-alive reuse", func(t *testing.T) {
		// curl reports connection reuse on stderr with -v; count upstream
		// answers instead: two URLs on one invocation, both answered.
		out := runTool(t, 30*time.Second, curl, "-sS", "--http1.1", "-H", "Host: svc.test", base+"/a", base+"/b")
		if c := strings.Count(string(out), `"Name":"echo"`); c != 2 {
			t.Errorf("got %d answers: %s", c, out)
		}
	})
}

func TestWrk(t *testing.T) {
	wrk := requireTool(t, "wrk")
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up, func(o *Options) { o.Log = nil; o.AccessLog = nil })
	out := runTool(t, 60*time.Second, wrk, "-t1", "-c8", "-d1s", "-H", "Host: svc.test", "http://"+p.addr+"/w")
	s := string(out)
	m := regexp.MustCompile(`(\d+) requests in`).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("wrk output:\n%s", s)
	}
	if n, _ := strconv.Atoi(m[1]); n < 100 {
		t.Errorf("only %d requests in 1s:\n%s", n, s)
	}
	if strings.Contains(s, "Non-2xx") {
		t.Errorf("non-2xx responses:\n%s", s)
	}
	// wrk counts requests slower than 2 s as "timeout"; on a loaded CI box
	// that is latency, not a proxy error. Connect/read/write errors are.
	if m := regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+)`).FindStringSubmatch(s); m != nil && (m[1] != "0" || m[2] != "0" || m[3] != "0") {
		t.Errorf("socket errors:\n%s", s)
	}
}

func TestH2load(t *testing.T) {
	h2load := requireTool(t, "h2load")
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up, func(o *Options) { o.Log = nil; o.AccessLog = nil })
	out := runTool(t, 60*time.Second, h2load, "-n2000", "-c4", "-m10", "-H", ":authority: svc.test", "http://"+p.addr+"/h2")
	s := string(out)
	if !regexp.MustCompile(`requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored`).MatchString(s) {
		t.Errorf("h2load output:\n%s", s)
	}
	t.Log(s)
	if !strings.Contains(s, "status codes: 2000 2xx") {
		t.Errorf("h2load status codes:\n%s", s)
	}
}
