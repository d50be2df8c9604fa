package proxy_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/meshlet/meshlet/pkg/proxy"
)

// Outlier detection through the proxy: an endpoint answering 503 is
// ejected after consecutive_5xx of them, and the requests that follow all
// reach the healthy one.
func TestOutlierEjection(t *testing.T) {
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }))
	t.Cleanup(bad.Close)
	good := httpUpstream(t, "good", false)
	cl := staticCluster("web", bad.Listener.Addr().(*net.TCPAddr).AddrPort(), good)
	cl["outlier_detection"] = M{"consecutive_5xx": 2, "base_ejection_time": "60s", "max_ejection_percent": 50}
	snap := snapshot(t, []M{listener("web", "10.0.0.5:80", chain("http", nil, httpManager("web")))}, []M{cl})
	h := startProxy(t, proxy.Options{}, snap, nil)
	c := httpClient(t, h, "10.0.0.5:80", false)
	codes := map[int]int{}
	for i := range 14 {
		resp, err := c.Get("http://web.test/x")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if i >= 4 && resp.StatusCode != 200 {
			t.Fatalf("request %d: %d after the bad endpoint should be ejected", i, resp.StatusCode)
		}
		codes[resp.StatusCode]++
	}
	if codes[503] != 2 {
		t.Errorf("answers %v, want exactly 2 × 503 (consecutive_5xx) before the ejection", codes)
	}
}
