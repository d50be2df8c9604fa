package hcm

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/meshlet/meshlet/internal/nettest"
)

// One timer serves the route deadline and the stream idle timeout:
// whichever comes first cuts the stream, and activity re-arms the idle
// part without moving the deadline.
func TestStreamTimer(t *testing.T) {
	cases := []struct {
		name           string
		deadline, idle time.Duration
		touch          bool
		want           error
	}{
		{"deadline before idle", 50 * time.Millisecond, time.Hour, false, errRouteTimeout},
		{"idle before deadline", time.Hour, 50 * time.Millisecond, false, errStreamIdle},
		{"idle only", 0, 50 * time.Millisecond, false, errStreamIdle},
		{"activity keeps idle off until the deadline", 400 * time.Millisecond, 150 * time.Millisecond, true, errRouteTimeout},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			s := &stream{start: time.Now(), ctx: ctx, cancel: cancel, idle: tc.idle, deadline: tc.deadline}
			s.armTimer()
			defer func() { s.t.Load().Stop() }()
			var maxGap time.Duration
			if tc.touch {
				tick := time.NewTicker(10 * time.Millisecond)
				defer tick.Stop()
				last := time.Now()
			loop:
				for {
					select {
					case <-ctx.Done():
						break loop
					case now := <-tick.C:
						maxGap = max(maxGap, now.Sub(last))
						last = now
						s.touch()
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("stream never cut")
			}
			got := context.Cause(ctx)
			if got == errStreamIdle && tc.want == errRouteTimeout && maxGap >= tc.idle {
				t.Skipf("machine too loaded: %v between touches", maxGap)
			}
			if got != tc.want {
				t.Fatalf("cut by %v, want %v", got, tc.want)
			}
			if el := time.Since(s.start); tc.want == errRouteTimeout && el < tc.deadline {
				t.Fatalf("cut after %v, before the %v deadline", el, tc.deadline)
			}
		})
	}
}

// A fast-path request's cancellation interrupts the upstream connection
// registered with it, and only while registered.
func TestReqCancel(t *testing.T) {
	a, _ := nettest.TCPPair(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	rc := &reqCancel{cancel: cancel}
	if !rc.watch(a) {
		t.Fatal("watch failed before any cancel")
	}
	done := make(chan error, 1)
	go func() {
		var p [1]byte
		_, err := a.Read(p[:]) // blocks: the peer writes nothing
		done <- err
	}()
	rc.fire(errRouteTimeout)
	select {
	case err := <-done:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("read ended with %v, want a deadline error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("blocked upstream read not interrupted")
	}
	if context.Cause(ctx) != errRouteTimeout {
		t.Fatalf("context cause %v", context.Cause(ctx))
	}
	if rc.stop() {
		t.Fatal("stop after fire reported an unharmed connection")
	}
	if rc.watch(a) {
		t.Fatal("watch after fire succeeded")
	}

	// Unregistered before the cancel: the connection is left alone.
	c, d := nettest.TCPPair(t)
	_, cancel2 := context.WithCancelCause(context.Background())
	rc2 := &reqCancel{cancel: cancel2}
	rc2.watch(c)
	if !rc2.stop() {
		t.Fatal("stop before fire reported a harmed connection")
	}
	rc2.fire(context.Canceled)
	if _, err := d.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var p [1]byte
	if _, err := c.Read(p[:]); err != nil {
		t.Fatalf("connection harmed after stop: %v", err)
	}
}
