package state

import (
	"strings"
	"testing"
)

func TestWriteClusters(t *testing.T) {
	y := "static_resources:\n  clusters:" + static("c", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80") +
		"\n    outlier_detection: {consecutive_5xx: 1, base_ejection_time: 60s, max_ejection_percent: 100}" +
		"\n    circuit_breakers: {thresholds: [{max_requests: 7}]}"
	s, err := Build(mustSet(t, y), Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := s.Clusters["c"]
	c.Endpoints[0].SetActiveHealth(false)
	c.Endpoints[1].Report(503)
	c.Breaker.TryRequest()
	var b strings.Builder
	if err := s.WriteClusters(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"c::default_priority::max_requests::7\n",
		"c::in_flight::requests::1\n",
		"c::default_priority::max_pending_requests::1024\n",
		"c::in_flight::pending_requests::0\n",
		"c::10.0.0.1:80::health_flags::/failed_active_hc\n",
		"c::10.0.0.2:80::health_flags::/failed_outlier_check\n",
		"c::10.0.0.2:80::outlier_ejections::1\n",
		"c::10.0.0.3:80::health_flags::healthy\n",
		"c::10.0.0.3:80::weight::1\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}
