package state

import "testing"

func TestBreaker(t *testing.T) {
	y := "static_resources:\n  clusters:" + static("c", "10.0.0.1:80") +
		"\n    circuit_breakers: {thresholds: [{priority: HIGH, max_requests: 1}, {max_connections: 2, max_pending_requests: 1, max_requests: 1, max_retries: 0}]}" +
		static("d", "10.0.0.2:80")
	s, err := Build(mustSet(t, y), Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := s.Clusters["c"].Breaker
	if b.MaxConnections != 2 || b.MaxPendingRequests != 1 || b.MaxRequests != 1 || b.MaxRetries != 0 {
		t.Errorf("thresholds %+v", b)
	}
	if d := s.Clusters["d"].Breaker; d.MaxConnections != 1024 || d.MaxPendingRequests != 1024 || d.MaxRequests != 1024 || d.MaxRetries != 3 {
		t.Errorf("Envoy's defaults: %d %d %d %d", d.MaxConnections, d.MaxPendingRequests, d.MaxRequests, d.MaxRetries)
	}
	if !b.TryPending() || b.TryPending() || b.Pending() != 1 {
		t.Fatal("max_pending_requests 1")
	}
	b.DonePending()
	if !b.TryRequest() || b.TryRequest() {
		t.Fatal("max_requests 1: the first request passes, the second does not")
	}
	b.DoneRequest()
	if !b.TryRequest() {
		t.Fatal("a slot given back is free again")
	}
	if b.TryRetry() {
		t.Fatal("max_retries 0 allowed a retry")
	}
	if !b.TryConnection() || !b.TryConnection() || b.TryConnection() {
		t.Fatal("max_connections 2")
	}
	if c, r, rt := b.InFlight(); c != 2 || r != 1 || rt != 0 {
		t.Errorf("in flight %d %d %d", c, r, rt)
	}
}
