package state

import (
	"net/netip"
	"testing"
	"time"
)

func TestOutlierDetection(t *testing.T) {
	y := "static_resources:\n  clusters:" + static("c", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80") +
		"\n    outlier_detection: {consecutive_5xx: 3, base_ejection_time: 0.2s, max_ejection_percent: 50}"
	s, err := Build(mustSet(t, y), Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := s.Clusters["c"]
	e0, e1, e2 := c.Endpoints[0], c.Endpoints[1], c.Endpoints[2]
	e0.Report(503)
	e0.Report(500)
	e0.Report(200) // a success ends the run
	e0.Report(503)
	e0.Report(503)
	if e0.Ejected() {
		t.Fatal("ejected after 2 consecutive 5xx (threshold 3)")
	}
	e0.Report(502)
	if !e0.Ejected() {
		t.Fatal("not ejected after 3 consecutive 5xx")
	}
	for range 30 {
		if e, _ := c.Pick(netip.AddrPort{}); e == e0 {
			t.Fatal("picked an ejected endpoint")
		}
	}
	for range 3 {
		e1.Report(503)
	}
	for range 3 {
		e2.Report(503)
	}
	// 1 of 3 out (33 %) < 50 %: e1 goes too; then 2 of 3 (66 %): e2 stays.
	if !e1.Ejected() || e2.Ejected() {
		t.Fatalf("ejected: e1 %v e2 %v, want e1 only (max_ejection_percent 50)", e1.Ejected(), e2.Ejected())
	}
	for range 10 {
		if e, _ := c.Pick(netip.AddrPort{}); e != e2 {
			t.Fatalf("picked %v, want the one endpoint left", e.Addr)
		}
	}
	// The ejection ends after base_ejection_time (0.2 s for a first).
	deadline := time.Now().Add(10 * time.Second)
	for e0.Ejected() {
		if time.Now().After(deadline) {
			t.Fatal("never returned")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A second ejection lasts twice as long.
	before := time.Now()
	for range 3 {
		e0.Report(503)
	}
	if !e0.Ejected() {
		t.Fatal("not ejected again")
	}
	until := time.Unix(0, e0.health.ejectedUntil.Load())
	if d := until.Sub(before); d < 400*time.Millisecond {
		t.Errorf("second ejection lasts %v, want 0.4 s", d)
	}
	// Without outlier_detection nothing is ejected.
	y = "static_resources:\n  clusters:" + static("d", "10.0.0.1:80", "10.0.0.2:80")
	s, _ = Build(mustSet(t, y), Options{})
	d := s.Clusters["d"].Endpoints[0]
	for range 10 {
		d.Report(503)
	}
	if d.Ejected() {
		t.Error("ejected without outlier_detection")
	}
}

// Each interval back in the picks takes one off the ejection multiplier.
func TestOutlierMultiplierDecays(t *testing.T) {
	y := "static_resources:\n  clusters:" + static("c", "10.0.0.1:80", "10.0.0.2:80") +
		"\n    outlier_detection: {consecutive_5xx: 1, base_ejection_time: 0.05s, interval: 10s, max_ejection_percent: 100}"
	s, err := Build(mustSet(t, y), Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := s.Clusters["c"].Endpoints[0]
	back := func() {
		deadline := time.Now().Add(10 * time.Second)
		for e.Ejected() {
			if time.Now().After(deadline) {
				t.Fatal("never returned")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	e.Report(503)
	back()
	e.Report(503) // right after coming back: no interval passed
	if e.health.ejections != 2 {
		t.Fatalf("second ejection: multiplier %d, want 2", e.health.ejections)
	}
	back()
	// As if it had been back for 2.5 intervals (10 s each).
	e.health.ejectedUntil.Store(time.Now().Add(-25 * time.Second).UnixNano())
	e.Report(503)
	if e.health.ejections != 1 {
		t.Errorf("after two intervals back: multiplier %d, want 2 - 2 + 1", e.health.ejections)
	}
}
