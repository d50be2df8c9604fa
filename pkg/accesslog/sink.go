package accesslog

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"go.uber.org/zap"
)

// DefaultFlushInterval is how long a line may wait in a file's buffer
// (Envoy's file_flush_interval default).
const DefaultFlushInterval = time.Second

const flushSize = 64 << 10 // write at once when the buffer holds this much

// Files owns the writers of the file, stdout and stderr loggers: one
// buffered writer per path, shared by every Logger bound to it, flushed
// within FlushInterval of a line being written and on Flush and Close, and
// flushed and closed once no Logger bound to it is reachable any more.
// Safe for concurrent use.
type Files struct {
	// FlushInterval overrides DefaultFlushInterval when > 0; set it before
	// the first Bind.
	FlushInterval time.Duration

	log   *zap.Logger
	mu    sync.Mutex
	files map[string]*file
}

// NewFiles returns an empty set; log (nil: none) gets write errors.
func NewFiles(log *zap.Logger) *Files {
	if log == nil {
		log = zap.NewNop()
	}
	return &Files{log: log, files: map[string]*file{}}
}

type file struct {
	path   string
	f      *os.File
	own    bool // opened here (closed by Close)
	refs   int  // Loggers bound to it (under Files.mu)
	every  time.Duration
	log    *zap.Logger
	mu     sync.Mutex
	buf    []byte
	armed  bool
	failed bool // a write failed; logged once until one succeeds
	closed bool
}

// open returns the shared writer of path, opening it (append, create)
// on first use.
func (fs *Files) open(path string) (*file, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f := fs.files[path]; f != nil {
		f.refs++
		return f, nil
	}
	every := fs.FlushInterval
	if every <= 0 {
		every = DefaultFlushInterval
	}
	f := &file{path: path, every: every, log: fs.log}
	switch path {
	case Stdout:
		f.f = os.Stdout
	case Stderr:
		f.f = os.Stderr
	default:
		of, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("open access log: %w", err)
		}
		f.f, f.own = of, true
	}
	f.refs = 1
	fs.files[path] = f
	return f, nil
}

// Bind opens the writers of logs and returns the Logger that filters,
// formats and writes entries to them. An empty list gives a nil Logger
// (whose Log does nothing).
func (fs *Files) Bind(logs []*Log) (*Logger, error) {
	if len(logs) == 0 {
		return nil, nil
	}
	g := &Logger{}
	var files []*file
	for _, l := range logs {
		f, err := fs.open(l.Path)
		if err != nil {
			fs.release(files)
			return nil, fmt.Errorf("access log %s: %w", l.Name, err)
		}
		g.items = append(g.items, bound{l: l, f: f})
		files = append(files, f)
	}
	// A file stays open while a Logger bound to it can still be used (a
	// connection of an older snapshot may log): it is flushed and closed
	// once the last such Logger is garbage.
	runtime.AddCleanup(g, fs.release, files)
	return g, nil
}

// release drops one reference to each of files, closing those no Logger
// uses any more (standard streams stay open).
func (fs *Files) release(files []*file) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, f := range files {
		f.refs--
		if f.refs > 0 || fs.files[f.path] != f {
			continue
		}
		delete(fs.files, f.path)
		f.mu.Lock()
		_ = f.flushLocked()
		f.closed = true
		if f.own {
			_ = f.f.Close()
		}
		f.mu.Unlock()
	}
}

// Flush writes out every buffered line.
func (fs *Files) Flush() error {
	fs.mu.Lock()
	files := make([]*file, 0, len(fs.files))
	for _, f := range fs.files {
		files = append(files, f)
	}
	fs.mu.Unlock()
	var errs []error
	for _, f := range files {
		f.mu.Lock()
		errs = append(errs, f.flushLocked())
		f.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Reopen flushes every file opened here and opens its path again (Envoy's
// /reopen_logs, for log rotation: lines go to the new file at the path
// from now on). Standard streams are left as they are.
func (fs *Files) Reopen() error {
	if err := fs.Flush(); err != nil {
		return err
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var errs []error
	for _, f := range fs.files {
		if !f.own {
			continue
		}
		nf, err := os.OpenFile(f.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			errs = append(errs, fmt.Errorf("reopen access log: %w", err))
			continue
		}
		f.mu.Lock()
		_ = f.flushLocked()
		old := f.f
		f.f = nf
		f.mu.Unlock()
		_ = old.Close()
	}
	return errors.Join(errs...)
}

// Close flushes and closes every file opened here; later lines are
// dropped.
func (fs *Files) Close() error {
	err := fs.Flush()
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for p, f := range fs.files {
		f.mu.Lock()
		f.closed = true
		if f.own {
			err = errors.Join(err, f.f.Close())
		}
		f.mu.Unlock()
		delete(fs.files, p)
	}
	return err
}

func (f *file) write(line []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	f.buf = append(f.buf, line...)
	if len(f.buf) >= flushSize {
		_ = f.flushLocked()
		return
	}
	if !f.armed {
		f.armed = true
		time.AfterFunc(f.every, f.timed)
	}
}

func (f *file) timed() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.armed = false
	if !f.closed {
		_ = f.flushLocked()
	}
}

func (f *file) flushLocked() error {
	if len(f.buf) == 0 || f.closed {
		return nil
	}
	_, err := f.f.Write(f.buf)
	f.buf = f.buf[:0]
	if err != nil {
		if !f.failed {
			f.log.Warn("access log write failed; lines are lost until it works again", zap.String("path", f.path), zap.Error(err))
		}
		f.failed = true
		return fmt.Errorf("write access log %s: %w", f.path, err)
	}
	f.failed = false
	return nil
}

// Logger writes entries to the access logs it was bound to. A nil
// *Logger logs nothing.
type Logger struct{ items []bound }

type bound struct {
	l *Log
	f *file
}

var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Log filters, formats and writes e to every log.
func (g *Logger) Log(e *Entry) {
	if g == nil {
		return
	}
	for _, it := range g.items {
		if it.l.Filter != nil && !it.l.Filter.Match(e) {
			continue
		}
		bp := lineBufs.Get().(*[]byte)
		b := it.l.Format.Append((*bp)[:0], e)
		if it.l.JSON {
			b = append(b, '\n')
		}
		it.f.write(b)
		*bp = b
		lineBufs.Put(bp)
	}
}

// Zap logs entries at info level through a zap logger, with stable keys
// named after Envoy's command operators (the agent's own access log,
// proxy.access_log in its config).
type Zap struct{ L *zap.Logger }

// Log implements the data plane's access-log interface.
func (z Zap) Log(e *Entry) {
	xff, _ := first(e.ReqHeaders, "X-Forwarded-For")
	ua, _ := first(e.ReqHeaders, "User-Agent")
	z.L.Info("access",
		zap.Time("start_time", e.Start),
		zap.String("method", e.Method),
		zap.String("path", e.Path),
		zap.String("protocol", e.Protocol),
		zap.Int("response_code", e.Code),
		zap.String("response_flags", orDash(e.Flags)),
		zap.Int64("bytes_received", e.BytesReceived),
		zap.Int64("bytes_sent", e.BytesSent),
		zap.Duration("duration", e.Duration),
		zap.Duration("upstream_service_time", e.UpstreamTime),
		zap.String("x_forwarded_for", xff),
		zap.String("user_agent", ua),
		zap.String("request_id", e.RequestID),
		zap.String("authority", e.Authority),
		zap.String("upstream_host", e.UpstreamHost),
		zap.String("upstream_cluster", e.Cluster),
		zap.String("route_name", e.Route),
		zap.String("response_code_details", e.Details),
	)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
