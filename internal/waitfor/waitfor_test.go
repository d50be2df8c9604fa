package waitfor

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestCond(t *testing.T) {
	var n atomic.Int64
	go func() {
		for range 3 {
			time.Sleep(time.Millisecond)
			n.Add(1)
		}
	}()
	Cond(t, "three increments", func() bool { return n.Load() == 3 })
}

// fatalTB records Fatalf instead of stopping the test.
type fatalTB struct {
	testing.TB
	failed bool
}

func (f *fatalTB) Helper()               {}
func (f *fatalTB) Fatalf(string, ...any) { f.failed = true; panic(f) }

func TestWithinTimesOut(t *testing.T) {
	f := &fatalTB{TB: t}
	func() {
		defer func() {
			if r := recover(); r != nil && r != f {
				panic(r)
			}
		}()
		Within(f, 10*time.Millisecond, "never", func() bool { return false })
	}()
	if !f.failed {
		t.Fatal("a condition that never holds did not fail the test")
	}
}
