package proxy_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/internal/waitfor"
	"github.com/meshlet/meshlet/pkg/proxy"
	"github.com/meshlet/meshlet/pkg/state"
)

// onDemand is a fake config source for clusters the config lacks. On a
// request it reports the cluster, waits for release (or the proxy's bound),
// then applies next (if set) and returns err.
type onDemand struct {
	p       atomic.Pointer[proxy.Proxy]
	asked   chan string
	release chan struct{}
	next    *state.Snapshot
	err     error
	calls   atomic.Int64
	// What the proxy's context looked like.
	deadline atomic.Int64 // time to the context's deadline at the call, ns; -1 without one
	ctxErr   atomic.Pointer[error]
}

func newOnDemand(next *state.Snapshot, err error) *onDemand {
	return &onDemand{asked: make(chan string, 16), release: make(chan struct{}), next: next, err: err}
}

func (o *onDemand) fetch(ctx context.Context, cluster string) error {
	o.calls.Add(1)
	o.deadline.Store(-1)
	if d, ok := ctx.Deadline(); ok {
		o.deadline.Store(int64(time.Until(d)))
	}
	o.asked <- cluster
	select {
	case <-o.release:
	case <-ctx.Done():
		err := ctx.Err()
		o.ctxErr.Store(&err)
		return err
	}
	if o.next != nil {
		o.p.Load().Update(o.next)
	}
	return o.err
}

func TestOnDemandClusterTCP(t *testing.T) {
	up := echoUpstream(t, "late")
	lis := []M{listener("svc", "10.0.0.1:80", chain("", nil, tcpProxy("late")))}
	without := snapshot(t, lis, nil)
	with := snapshot(t, lis, []M{staticCluster("late", up.addr)})

	t.Run("connection held until the cluster arrives", func(t *testing.T) {
		od := newOnDemand(with, nil)
		const wait = 8 * time.Second
		h := startProxy(t, proxy.Options{OnDemand: od.fetch, OnDemandWait: wait}, without, nil)
		od.p.Store(h.p)
		c := h.dial(t, "10.0.0.1:80")
		if _, err := io.WriteString(c, "early"); err != nil {
			t.Fatal(err)
		}
		if got := recv(t, "the on-demand request", od.asked); got != "late" {
			t.Fatalf("asked for cluster %q, want late", got)
		}
		if d := time.Duration(od.deadline.Load()); d <= 0 || d > wait {
			t.Errorf("fetch context deadline in %v, want within OnDemandWait %v", d, wait)
		}
		if n := up.accepted.Load(); n != 0 {
			t.Fatalf("upstream contacted (%d) before the cluster arrived", n)
		}
		close(od.release)
		if g := readGreeting(t, c); g != "late" {
			t.Fatalf("greeting %q", g)
		}
		// The bytes sent while the connection was held are not lost.
		got := make([]byte, len("early"))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "early" {
			t.Fatalf("echo of the bytes sent while held: %q, %v", got, err)
		}
		roundTrip(t, c, "then more")
		// The next connection finds the cluster without asking.
		c2 := h.dial(t, "10.0.0.1:80")
		readGreeting(t, c2)
		roundTrip(t, c2, "second")
		if n := od.calls.Load(); n != 1 {
			t.Errorf("on-demand source asked %d times, want once", n)
		}
		if s := h.p.Stats(); s.UpstreamFail != 0 {
			t.Errorf("UpstreamFail %d", s.UpstreamFail)
		}
	})

	cases := []struct {
		name    string
		od      *onDemand
		wait    time.Duration
		release bool
		minHeld time.Duration
	}{
		{"fetch fails", newOnDemand(nil, errors.New("control plane said no")), 5 * time.Second, true, 0},
		{"fetch succeeds without the cluster", newOnDemand(without, nil), 5 * time.Second, true, 0},
		{"fetch times out", newOnDemand(with, nil), 300 * time.Millisecond, false, 300 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := startProxy(t, proxy.Options{OnDemand: tc.od.fetch, OnDemandWait: tc.wait}, without, nil)
			tc.od.p.Store(h.p)
			before := up.accepted.Load()
			start := time.Now()
			c := h.dial(t, "10.0.0.1:80")
			recv(t, "the on-demand request", tc.od.asked)
			if tc.release {
				close(tc.od.release)
			}
			expectClosed(t, c)
			held := time.Since(start)
			if held < tc.minHeld-50*time.Millisecond {
				t.Errorf("closed after %v, before the fetch bound %v", held, tc.minHeld)
			}
			if limit := tc.wait + 5*time.Second; held > limit {
				t.Errorf("closed after %v, want within %v", held, limit)
			}
			if !tc.release {
				if p := tc.od.ctxErr.Load(); p == nil || !errors.Is(*p, context.DeadlineExceeded) {
					t.Errorf("fetch context ended with %v, want deadline exceeded", p)
				}
			}
			waitfor.Cond(t, "the failure to be counted", func() bool { return h.p.Stats().UpstreamFail == 1 })
			if n := up.accepted.Load(); n != before {
				t.Errorf("a connection whose cluster never arrived reached the upstream")
			}
		})
	}
}

func TestOnDemandClusterHTTP(t *testing.T) {
	up := httpUpstream(t, "late", false)
	lis := []M{listener("web", "10.0.0.5:80", chain("http", nil, httpManager("late")))}
	without := snapshot(t, lis, nil)
	with := snapshot(t, lis, []M{staticCluster("late", up)})

	cases := []struct {
		name string
		od   *onDemand
		want int
	}{
		{"cluster arrives", newOnDemand(with, nil), http.StatusOK},
		{"fetch fails", newOnDemand(nil, errors.New("unknown cluster")), http.StatusServiceUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			close(tc.od.release)
			h := startProxy(t, proxy.Options{OnDemand: tc.od.fetch, OnDemandWait: 5 * time.Second}, without, nil)
			tc.od.p.Store(h.p)
			resp, err := httpClient(t, h, "10.0.0.5:80", false).Get("http://web.test/x")
			if err != nil {
				t.Fatalf("request: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.want)
			}
			if got := recv(t, "the on-demand request", tc.od.asked); got != "late" {
				t.Errorf("asked for %q, want late", got)
			}
		})
	}
}
