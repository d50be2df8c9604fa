// Package testlog gives tests a zap logger that writes to the test's log
// and goes quiet once the test ends. Servers started by a test can outlive
// it by a moment (an HTTP/2 handler finishing after its connection closed);
// logging to a finished test is a data race in the testing package, and
// zaptest's logger does exactly that.
package testlog

import (
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a development logger (debug level) writing to t until t's
// cleanups start.
func New(t testing.TB) *zap.Logger {
	w := &writer{t: t}
	// Registered now, so it runs after the cleanups the test registers
	// later (servers stopping, which may still log) but, holding the
	// lock, never while a line is being written.
	t.Cleanup(w.stop)
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), zapcore.DebugLevel))
}

type writer struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Helper()
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *writer) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
