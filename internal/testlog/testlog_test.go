package testlog

import (
	"sync"
	"testing"
)

// A goroutine that keeps logging past the end of its test neither races
// with the testing package nor panics (run with -race).
func TestQuietAfterTheTest(t *testing.T) {
	var wg sync.WaitGroup
	stop := make(chan struct{})
	t.Run("inner", func(t *testing.T) {
		log := New(t)
		log.Info("during the test")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					log.Debug("after the test, maybe")
				}
			}
		}()
	})
	close(stop)
	wg.Wait()
}
