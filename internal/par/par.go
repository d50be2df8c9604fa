package par

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// MinItems is the item count from which For spreads its work: below it the
// goroutine start-up costs more than it saves.
const MinItems = 256

// chunk is how many items a worker takes at once.
const chunk = 64

// For calls f(0), ..., f(n-1), on up to GOMAXPROCS (at most 8) goroutines
// when n is at least MinItems, and returns when every call has returned.
// The calls must be independent of each other; each writes its result to
// its own index of a slice the caller allocated.
func For(n int, f func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), 8)
	if n < MinItems || workers < 2 {
		for i := range n {
			f(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				lo := int(next.Add(chunk)) - chunk
				if lo >= n {
					return
				}
				for i := lo; i < min(lo+chunk, n); i++ {
					f(i)
				}
			}
		})
	}
	wg.Wait()
}
