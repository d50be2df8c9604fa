package health

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/pkg/state"
)

// check is one compiled HealthCheck.
type check struct {
	timeout, interval, jitter time.Duration
	unhealthy, healthy        int
	kind                      string // "tcp" or "http"
	send                      []byte
	receive                   [][]byte
	path, host                string
	expected                  [][2]int64 // [start, end)
	service, authority        string     // gRPC
}

func compile(hc *corev3.HealthCheck, cluster string) (*check, error) {
	c := &check{timeout: hc.GetTimeout().AsDuration(), interval: hc.GetInterval().AsDuration(),
		jitter: hc.GetIntervalJitter().AsDuration(), unhealthy: 1, healthy: 1}
	if v := hc.GetUnhealthyThreshold(); v != nil && v.GetValue() > 0 {
		c.unhealthy = int(v.GetValue())
	}
	if v := hc.GetHealthyThreshold(); v != nil && v.GetValue() > 0 {
		c.healthy = int(v.GetValue())
	}
	if c.timeout <= 0 || c.interval <= 0 {
		return nil, fmt.Errorf("health check: timeout and interval must be positive")
	}
	payload := func(p *corev3.HealthCheck_Payload) ([]byte, error) {
		switch x := p.GetPayload().(type) {
		case *corev3.HealthCheck_Payload_Text:
			return hex.DecodeString(x.Text)
		case *corev3.HealthCheck_Payload_Binary:
			return x.Binary, nil
		}
		return nil, nil
	}
	switch x := hc.GetHealthChecker().(type) {
	case *corev3.HealthCheck_TcpHealthCheck_:
		c.kind = "tcp"
		var err error
		if c.send, err = payload(x.TcpHealthCheck.GetSend()); err != nil {
			return nil, fmt.Errorf("tcp_health_check send: %w", err)
		}
		for _, r := range x.TcpHealthCheck.GetReceive() {
			b, err := payload(r)
			if err != nil {
				return nil, fmt.Errorf("tcp_health_check receive: %w", err)
			}
			c.receive = append(c.receive, b)
		}
	case *corev3.HealthCheck_HttpHealthCheck_:
		h := x.HttpHealthCheck
		c.kind, c.path, c.host = "http", h.GetPath(), h.GetHost()
		if c.host == "" {
			c.host = cluster // Envoy's default
		}
		for _, r := range h.GetExpectedStatuses() {
			c.expected = append(c.expected, [2]int64{r.GetStart(), r.GetEnd()})
		}
		if len(c.expected) == 0 {
			c.expected = [][2]int64{{200, 201}}
		}
	case *corev3.HealthCheck_GrpcHealthCheck_:
		c.kind, c.service, c.authority = "grpc", x.GrpcHealthCheck.GetServiceName(), x.GrpcHealthCheck.GetAuthority()
		if c.authority == "" {
			c.authority = cluster
		}
	default:
		return nil, fmt.Errorf("health checker %T is not implemented", x)
	}
	return c, nil
}

// probe checks one endpoint address with one check, for the endpoints of
// that address in the snapshots in force.
type probe struct {
	c       *check
	addr    netip.AddrPort
	mu      sync.Mutex
	targets []*state.Endpoint
	healthy bool
	fails   int
	oks     int
	cancel  context.CancelFunc
	done    chan struct{}
	// grpcConn is the gRPC check's connection, kept across checks (Envoy
	// reuses it too); only the probe's goroutine uses it.
	grpcConn *grpc.ClientConn
}

func (p *probe) setTargets(eps []*state.Endpoint) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.targets = eps
	for _, e := range eps {
		e.SetActiveHealth(p.healthy)
	}
}

// record counts one check's result and flips the verdict at a threshold.
func (p *probe) record(ok bool) (changed, healthy bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ok {
		p.oks, p.fails = p.oks+1, 0
		if !p.healthy && p.oks >= p.c.healthy {
			p.healthy, changed = true, true
		}
	} else {
		p.fails, p.oks = p.fails+1, 0
		if p.healthy && p.fails >= p.c.unhealthy {
			p.healthy, changed = false, true
		}
	}
	if changed {
		for _, e := range p.targets {
			e.SetActiveHealth(p.healthy)
		}
	}
	return changed, p.healthy
}

func (p *probe) run(ctx context.Context, log *zap.Logger) {
	defer close(p.done)
	defer func() {
		if p.grpcConn != nil {
			p.grpcConn.Close()
		}
	}()
	t := time.NewTimer(p.c.interval / 10) // a first check soon after start
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := p.once(ctx)
		if ctx.Err() != nil {
			return
		}
		if changed, healthy := p.record(err == nil); changed {
			log.Info("active health check changed an endpoint", zap.Stringer("endpoint", p.addr),
				zap.Bool("healthy", healthy), zap.Error(err))
		}
		d := p.c.interval
		if p.c.jitter > 0 {
			d += time.Duration(rand.Int64N(int64(p.c.jitter) + 1))
		}
		t.Reset(d)
	}
}

// once runs one check.
func (p *probe) once(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.c.timeout)
	defer cancel()
	if p.c.kind == "grpc" {
		return p.grpcCheck(ctx)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.addr.String())
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	switch p.c.kind {
	case "tcp":
		if len(p.c.send) > 0 {
			if _, err := conn.Write(p.c.send); err != nil {
				return err
			}
		}
		if len(p.c.receive) == 0 {
			return nil
		}
		var want []byte
		for _, r := range p.c.receive {
			want = append(want, r...)
		}
		got := make([]byte, 0, len(want))
		buf := make([]byte, 4096)
		for !bytes.Contains(got, want) {
			n, err := conn.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				return fmt.Errorf("receive: %w", err)
			}
			if len(got) > 1<<20 {
				return fmt.Errorf("receive: expected bytes not found")
			}
		}
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr.String()+p.c.path, nil)
	if err != nil {
		return err
	}
	req.Host = p.c.host
	req.Header.Set("User-Agent", "Envoy/HC")
	tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil }, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	for _, r := range p.c.expected {
		if int64(resp.StatusCode) >= r[0] && int64(resp.StatusCode) < r[1] {
			return nil
		}
	}
	return fmt.Errorf("status %d not expected", resp.StatusCode)
}

type key struct {
	cluster string
	addr    netip.AddrPort
	conf    string // the HealthCheck's deterministic bytes
}

// Checker runs the active health checks of the snapshots given to Sync.
type Checker struct {
	log    *zap.Logger
	mu     sync.Mutex
	probes map[key]*probe
	closed bool
}

// New returns a Checker; log (nil: none) gets verdict changes.
func New(log *zap.Logger) *Checker {
	if log == nil {
		log = zap.NewNop()
	}
	return &Checker{log: log, probes: map[key]*probe{}}
}

// Sync makes the probers follow snap: new (cluster, endpoint, check)
// triples start, vanished ones stop, kept ones hand their verdict to the
// snapshot's endpoints. It returns the checks it cannot run.
func (ch *Checker) Sync(snap *state.Snapshot) []error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.closed || snap == nil {
		return nil
	}
	var errs []error
	want := map[key][]*state.Endpoint{}
	checks := map[key]*check{}
	for name, cl := range snap.Clusters {
		if cl.Kind != state.KindEndpoints {
			continue
		}
		if len(cl.HealthChecks) > 1 {
			errs = append(errs, fmt.Errorf("cluster %s: only the first of %d health checks is run", name, len(cl.HealthChecks)))
		}
		for _, hc := range cl.HealthChecks[:min(len(cl.HealthChecks), 1)] {
			c, err := compile(hc, name)
			if err != nil {
				errs = append(errs, fmt.Errorf("cluster %s: %w", name, err))
				continue
			}
			b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(hc)
			for _, e := range cl.Endpoints {
				k := key{cluster: name, addr: e.Addr, conf: string(b)}
				want[k] = append(want[k], e)
				checks[k] = c
			}
		}
	}
	for k, p := range ch.probes {
		if _, ok := want[k]; !ok {
			p.cancel()
			<-p.done
			delete(ch.probes, k)
		}
	}
	for k, eps := range want {
		p := ch.probes[k]
		if p == nil {
			ctx, cancel := context.WithCancel(context.Background())
			p = &probe{c: checks[k], addr: k.addr, healthy: true, cancel: cancel, done: make(chan struct{})}
			ch.probes[k] = p
			go p.run(ctx, ch.log.With(zap.String("cluster", k.cluster)))
		}
		p.setTargets(eps)
	}
	return errs
}

// Close stops every prober and waits for them.
func (ch *Checker) Close() {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.closed = true
	for k, p := range ch.probes {
		p.cancel()
		<-p.done
		delete(ch.probes, k)
	}
}

// grpcCheck asks the endpoint's grpc.health.v1 service: SERVING passes.
func (p *probe) grpcCheck(ctx context.Context) error {
	if p.grpcConn == nil {
		cc, err := grpc.NewClient(p.addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithAuthority(p.c.authority))
		if err != nil {
			return err
		}
		p.grpcConn = cc
	}
	resp, err := healthpb.NewHealthClient(p.grpcConn).Check(ctx, &healthpb.HealthCheckRequest{Service: p.c.service})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("gRPC health: %v", resp.GetStatus())
	}
	return nil
}
