// Package waitfor is the tests' bounded wait on a condition: poll it until
// it holds, fail the test when the time is up. Tests wait on conditions,
// not sleeps, and every wait has an end, so a hang fails rather than
// stalls.
package waitfor

import (
	"testing"
	"time"
)

// Timeout is the bound Cond uses: generous for a loaded 2-core machine,
// short enough that a hang fails.
const Timeout = 10 * time.Second

// Cond polls cond until it holds, failing t after Timeout; what names the
// condition in the failure.
func Cond(t testing.TB, what string, cond func() bool) { Within(t, Timeout, what, cond) }

// Within is Cond with its own bound.
func Within(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	start := time.Now()
	for !cond() {
		waited := time.Since(start)
		if waited > timeout {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		// Polling, not synchronisation: often at first, then every 20 ms
		// so that a costly condition (a command, a request) does not load
		// the machine it waits on.
		if waited < 100*time.Millisecond {
			time.Sleep(2 * time.Millisecond)
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
}
