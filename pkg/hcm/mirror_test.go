package hcm

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// request_mirror_policies: a copy of each request (headers as forwarded,
// body included) goes to the shadow cluster with "-shadow" on its host;
// the client gets the primary's answer, whatever the shadow does.
func TestRequestMirroring(t *testing.T) {
	type seen struct{ host, path, body, hdr string }
	shadow := make(chan seen, 10)
	up := newUpstreams()
	up.set("main", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "primary")
	}))))
	up.set("shadow", ep(startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		shadow <- seen{r.Host, r.URL.RequestURI(), string(b), r.Header.Get("X-Added")}
		w.WriteHeader(500) // never seen by the client
	}))))
	hcm := `{"stat_prefix": "m", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"],
	  "request_headers_to_add": [{"header": {"key": "x-added", "value": "yes"}}],
	  "routes": [
	    {"match": {"prefix": "/none"}, "route": {"cluster": "main", "request_mirror_policies": [{"cluster": "shadow", "runtime_fraction": {"default_value": {"numerator": 0}}}]}},
	    {"match": {"prefix": "/"}, "route": {"cluster": "main", "request_mirror_policies": [{"cluster": "shadow"}]}}]}]}}`
	p := startProxy(t, mustHCM(t, hcm), nil, up)
	for _, c := range []struct{ method, body string }{{"GET", ""}, {"POST", "to both"}} {
		req, _ := http.NewRequest(c.method, "http://"+p.addr+"/m?q=1", strings.NewReader(c.body))
		req.Host = "svc.test:8080"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "primary" {
			t.Fatalf("%s: %d %q, want the primary's 200", c.method, resp.StatusCode, b)
		}
		select {
		case got := <-shadow:
			if want := (seen{"svc.test-shadow:8080", "/m?q=1", c.body, "yes"}); got != want {
				t.Errorf("%s: shadow saw %+v, want %+v", c.method, got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no shadow request", c.method)
		}
	}
	// 0 %: no shadow. A later mirrored request proves none was queued.
	get(t, &http.Client{}, "http://"+p.addr+"/none", map[string]string{"Host": "svc.test"})
	get(t, &http.Client{}, "http://"+p.addr+"/after", map[string]string{"Host": "svc.test"})
	select {
	case got := <-shadow:
		if got.path != "/after" {
			t.Errorf("shadow saw %q, want only /after", got.path)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no shadow for /after")
	}
	if got := shadowHost("[::1]"); got != "[::1]-shadow" {
		t.Errorf("shadowHost([::1]) = %q", got)
	}
}
