package state

import (
	"net/netip"
	"testing"
	"time"
)

func TestSlowStart(t *testing.T) {
	conf := "\n    round_robin_lb_config: {slow_start_config: {slow_start_window: 3600s, min_weight_percent: {value: 10}}}"
	y1 := "static_resources:\n  clusters:" + static("c", "10.0.0.1:80", "10.0.0.2:80") + conf
	s1, err := Build(mustSet(t, y1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s1.Clusters["c"].slow == nil || !s1.Clusters["c"].slow.warmUntil.IsZero() {
		t.Fatal("the first translation warms endpoints up")
	}
	y2 := "static_resources:\n  clusters:" + static("c", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80") + conf
	s2, err := Build(mustSet(t, y2), Options{Previous: s1})
	if err != nil {
		t.Fatal(err)
	}
	c := s2.Clusters["c"]
	n, newcomer := 30000, 0
	for range n {
		e, _ := c.Pick(netip.AddrPort{})
		if e.Addr.String() == "10.0.0.3:80" {
			newcomer++
		}
	}
	// At the start of its window the newcomer weighs 10 % of the others:
	// 0.1 / 2.1 ≈ 4.8 % of the picks (a third without slow start).
	if share := float64(newcomer) / float64(n); share < 0.03 || share > 0.07 {
		t.Errorf("the new endpoint got %.1f %% of the picks, want about 4.8 %%", 100*share)
	}
	// The factor grows with time (aggression 1: linearly) and ends at 1.
	ss := c.slow
	added := time.Now().Add(-30 * time.Minute)
	if f := ss.factor(added, time.Now()); f < 0.49 || f > 0.51 {
		t.Errorf("half-way factor %.2f, want 0.5", f)
	}
	if f := ss.factor(time.Now().Add(-2*time.Hour), time.Now()); f != 1 {
		t.Errorf("after the window: %.2f", f)
	}
	// A third translation keeps the newcomer's start time.
	s3, err := Build(mustSet(t, y2+"\n    connect_timeout: 2s"), Options{Previous: s2})
	if err != nil {
		t.Fatal(err)
	}
	if a, b := s3.Clusters["c"].Endpoints[2].added, c.Endpoints[2].added; !a.Equal(b) || a.IsZero() {
		t.Errorf("added %v, want %v carried over", a, b)
	}
}
