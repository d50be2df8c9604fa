package xds

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshlet/meshlet/internal/par"
	"github.com/meshlet/meshlet/pkg/resources"
)

// ErrNotFound is returned by Want when the control plane says the resource
// does not exist.
var ErrNotFound = errors.New("xds: resource does not exist on the control plane")

// Client is an ADS client. Create it with NewClient and run it with Run.
type Client struct {
	cfg     Config
	applier Applier
	log     *zap.Logger
	wake    chan struct{}

	// loop-owned state (only the Run goroutine touches it)
	types    map[string]*typeState
	dirty    bool // working state differs from the applied Set
	streamOK bool // a Set from the current stream has been applied
	resyncAt time.Time
	// gen counts changes of the working state; desiredCache is valid for
	// one gen and wants generation.
	gen          uint64
	desiredCache map[string]desiredEntry

	mu          sync.Mutex
	status      Status
	applied     *resources.Set
	appliedMeta map[string]map[string]ResourceMeta
	nacks       map[string]NackError // per type URL
	wants       map[string]map[string]bool
	wantsGen    uint64
	waiters     map[*waiter]struct{}

	persistCh chan *Persisted
}

type desiredEntry struct {
	gen, wantsGen uint64
	wild          bool
	names         map[string]bool
}

type waiter struct {
	typeURL, name string
	done          chan error
}

type entry struct {
	// msg is the resource: its message (*clusterType, *listenerType,
	// *routeType) or, for EDS, a compact *resources.Assignment.
	msg     any
	version string
	updated time.Time
	// routes are the RDS names a listener refers to (listeners only).
	routes []string
	// sum identifies the serialised resource, to recognise resources
	// resent unchanged without keeping their bytes.
	sum rawSum
}

// rawSum is a 128-bit keyed hash and the length of a serialised resource.
// The seeds are random per process, so a control plane cannot aim for a
// collision, and an accidental one is a 2^-128 event.
type rawSum struct {
	a, b uint64
	n    int
}

// rawSeeds seed rawSum (process-wide; the hashes never leave the process).
var rawSeeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}

func sumOf(raw []byte) rawSum {
	return rawSum{maphash.Bytes(rawSeeds[0], raw), maphash.Bytes(rawSeeds[1], raw), len(raw)}
}

func newEntry(m any, sum rawSum, version string, updated time.Time) *entry {
	e := &entry{msg: m, version: version, updated: updated, sum: sum}
	if l, ok := m.(*listenerType); ok {
		names := map[string]bool{}
		routeNames(l, names)
		e.routes = slices.Sorted(maps.Keys(names))
	}
	return e
}

type typeState struct {
	url     string
	res     map[string]*entry
	version string
	nonce   string
	updated time.Time

	// per stream
	requested    bool
	received     bool
	gaveUp       bool
	waitSince    time.Time
	sent         map[string]bool
	sentWildcard bool
	seen         map[string]bool
	firstWanted  map[string]time.Time
	reported     map[string]bool

	// lastRejected remembers the last NACKed SotW response, so that a
	// server that resends it at once (go-control-plane does) gets its NACK
	// after a growing delay instead of in a tight loop.
	lastRejected *rejected
	deferred     *deferredNack
}

type rejected struct {
	version string
	digest  [32]byte
	repeats int
}

type deferredNack struct {
	at     time.Time
	status *rpcstatus.Status
}

// errResync ends a delta stream so that the next one starts from a full
// state: after a NACK of a delta response the server believes the client
// has the rejected versions and would not resend them.
var errResync = errors.New("xds: restarting the delta stream to resynchronise after a rejected update")

// digest identifies a whole response by its resources' type and content
// sums (u.sums once decodeAll ran: the payloads are released by then).
func digest(u *update) [32]byte {
	h := sha256.New()
	var b [24]byte
	for i, a := range u.resources {
		sum := u.sumAt(i)
		h.Write([]byte(a.GetTypeUrl()))
		binary.LittleEndian.PutUint64(b[0:], sum.a)
		binary.LittleEndian.PutUint64(b[8:], sum.b)
		binary.LittleEndian.PutUint64(b[16:], uint64(sum.n))
		h.Write(b[:])
	}
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d
}

func (t *typeState) resetStream() {
	t.nonce = ""
	t.requested, t.received, t.gaveUp = false, false, false
	t.sent, t.seen, t.firstWanted, t.reported = map[string]bool{}, map[string]bool{}, map[string]time.Time{}, map[string]bool{}
	t.sentWildcard = false
	t.deferred = nil
}

// NewClient validates cfg and returns a client that hands every complete
// configuration to applier.
func NewClient(cfg Config, applier Applier) (*Client, error) {
	if applier == nil {
		return nil, errors.New("xds: nil Applier")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &Client{
		cfg:       cfg,
		applier:   applier,
		log:       cfg.Logger.With(zap.String("xds_server", cfg.Address)),
		wake:      make(chan struct{}, 1),
		types:     map[string]*typeState{},
		nacks:     map[string]NackError{},
		wants:     map[string]map[string]bool{},
		waiters:   map[*waiter]struct{}{},
		persistCh: make(chan *Persisted, 1),
	}
	for _, u := range typeOrder {
		ts := &typeState{url: u, res: map[string]*entry{}}
		ts.resetStream()
		c.types[u] = ts
	}
	mode := "sotw"
	if cfg.Delta {
		mode = "delta"
	}
	c.status = Status{Address: cfg.Address, Mode: mode, Source: SourceNone}
	return c, nil
}

// Run loads the persisted Set (if a Persister is configured), then keeps an
// ADS stream to the control plane until ctx is done, reconnecting with
// jittered exponential backoff. It returns nil when ctx is cancelled.
func (c *Client) Run(ctx context.Context) error {
	c.loadPersisted(ctx)
	opts, err := dialOptions(&c.cfg)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(c.cfg.Address, opts...)
	if err != nil {
		return fmt.Errorf("xds: dial %s: %w", c.cfg.Address, err)
	}
	defer conn.Close()

	var wg sync.WaitGroup
	pctx, pcancel := context.WithCancel(context.WithoutCancel(ctx))
	if c.cfg.Persister != nil {
		wg.Add(1)
		go func() { defer wg.Done(); c.persistLoop(pctx) }()
	}
	defer func() {
		close(c.persistCh)
		wg.Wait()
		pcancel()
	}()

	bo := backoff{base: c.cfg.BackoffBase, max: c.cfg.BackoffMax}
	for {
		// gRPC keeps its own reconnect backoff (up to 120 s) under ours:
		// after a long outage a stream opened on our schedule would fail
		// at once while gRPC waits, and the waits add up. Wake it so the
		// attempt happens now.
		if conn.GetState() == connectivity.TransientFailure {
			conn.ResetConnectBackoff()
			wctx, wcancel := context.WithTimeout(ctx, time.Second)
			conn.WaitForStateChange(wctx, connectivity.TransientFailure)
			wcancel()
		}
		progressed, err := c.runStream(ctx, conn)
		c.mu.Lock()
		c.status.Connected = false
		if err != nil && ctx.Err() == nil {
			c.status.LastError = err.Error()
		}
		c.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			bo.reset()
		}
		d := bo.next()
		c.log.Warn("xds stream ended; reconnecting", zap.Error(err), zap.Duration("backoff", d))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func (c *Client) loadPersisted(ctx context.Context) {
	if c.cfg.Persister == nil {
		return
	}
	p, err := c.cfg.Persister.Load(ctx)
	if err != nil {
		c.log.Error("xds: cannot use the persisted configuration; waiting for the control plane", zap.Error(err))
		c.mu.Lock()
		c.status.PersistError = err.Error()
		c.mu.Unlock()
		return
	}
	if p == nil || p.Set == nil {
		c.log.Info("xds: no persisted configuration")
		return
	}
	if err := c.applier.Apply(ctx, p.Set); err != nil {
		c.log.Error("xds: persisted configuration rejected by the applier", zap.Error(err))
		c.mu.Lock()
		c.status.PersistError = "apply persisted: " + err.Error()
		c.mu.Unlock()
		return
	}
	// Seed the working state so that the control plane's answers are merged
	// onto what is being served.
	var raw []byte
	fill := func(url string, name string, m any) {
		raw, _ = AppendWire(raw[:0], m)
		meta := p.Meta[url][name]
		c.types[url].res[name] = newEntry(m, sumOf(raw), meta.Version, meta.LastUpdated)
	}
	for n, r := range p.Set.Clusters {
		fill(ClusterType, n, r)
	}
	for n, r := range p.Set.Endpoints {
		if cl, ok := p.Set.Clusters[n]; ok && edsName(cl) == "" {
			continue // inline load assignment
		}
		fill(EndpointType, n, r)
	}
	for n, r := range p.Set.Listeners {
		fill(ListenerType, n, r)
	}
	for n, r := range p.Set.Routes {
		fill(RouteType, n, r)
	}
	c.bump()
	for url, v := range p.Versions {
		if ts, ok := c.types[url]; ok {
			ts.version = v
		}
	}
	c.mu.Lock()
	c.applied = p.Set
	c.appliedMeta = p.Meta
	c.status.Ready = true
	c.status.Source = SourcePersisted
	c.status.LastApplied = time.Now()
	c.mu.Unlock()
	c.log.Warn("xds: serving the persisted configuration until the control plane answers",
		zap.Time("saved", p.Saved), zap.String("version", p.Set.Version),
		zap.Int("listeners", len(p.Set.Listeners)), zap.Int("clusters", len(p.Set.Clusters)))
}

func (c *Client) persistLoop(ctx context.Context) {
	for p := range c.persistCh {
		err := c.cfg.Persister.Save(ctx, p)
		c.mu.Lock()
		if err != nil {
			c.status.PersistError = err.Error()
		} else {
			c.status.PersistError = ""
		}
		c.mu.Unlock()
		if err != nil {
			c.log.Error("xds: persisting the applied configuration failed", zap.Error(err))
		}
	}
}

// stream abstracts the SotW and delta ADS streams.
type stream interface {
	recv() (*update, error)
}

// update is a response of either protocol, normalised.
type update struct {
	url     string
	version string
	nonce   string
	// sotw: resources; delta: resources with names and versions
	resources []*anypb.Any
	names     []string
	versions  []string
	removed   []string
	delta     bool
	// sums are the resources' content sums, set by decodeAll, which
	// releases the payloads of the resources it decoded.
	sums []rawSum
}

// sumAt is the content sum of resource i.
func (u *update) sumAt(i int) rawSum {
	if i < len(u.sums) {
		return u.sums[i]
	}
	return sumOf(u.resources[i].GetValue())
}

type sotwStream struct {
	s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
}

func (s sotwStream) recv() (*update, error) {
	r, err := s.s.Recv()
	if err != nil {
		return nil, err
	}
	return &update{url: r.GetTypeUrl(), version: r.GetVersionInfo(), nonce: r.GetNonce(), resources: r.GetResources()}, nil
}

type deltaStream struct {
	s discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func (s deltaStream) recv() (*update, error) {
	r, err := s.s.Recv()
	if err != nil {
		return nil, err
	}
	u := &update{url: r.GetTypeUrl(), version: r.GetSystemVersionInfo(), nonce: r.GetNonce(), removed: r.GetRemovedResources(), delta: true}
	for _, res := range r.GetResources() {
		u.resources = append(u.resources, res.GetResource())
		u.names = append(u.names, res.GetName())
		u.versions = append(u.versions, res.GetVersion())
	}
	return u, nil
}

// streamCtx is the per-stream sending side.
type streamCtx struct {
	sotw      discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	delta     discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node      *corev3.Node
	nodeSent  bool
	responses int
}

func (c *Client) runStream(ctx context.Context, conn *grpc.ClientConn) (progressed bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.cfg.ClusterID != "" {
		sctx = metadata.AppendToOutgoingContext(sctx, "clusterid", c.cfg.ClusterID)
	}
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	sc := &streamCtx{node: c.cfg.Node}
	var st stream
	if c.cfg.Delta {
		s, err := ads.DeltaAggregatedResources(sctx)
		if err != nil {
			return false, c.wrapRPCErr("open delta ADS stream", err)
		}
		sc.delta, st = s, deltaStream{s}
	} else {
		s, err := ads.StreamAggregatedResources(sctx)
		if err != nil {
			return false, c.wrapRPCErr("open ADS stream", err)
		}
		sc.sotw, st = s, sotwStream{s}
	}
	for _, ts := range c.types {
		ts.resetStream()
	}
	c.streamOK = false
	c.resyncAt = time.Time{}
	c.mu.Lock()
	c.status.Connected = true
	c.status.Streams++
	c.mu.Unlock()
	c.log.Info("xds stream open", zap.String("mode", c.status.Mode), zap.String("node", c.cfg.Node.GetId()))

	type recvd struct {
		u   *update
		err error
	}
	ch := make(chan recvd, 1)
	go func() {
		for {
			u, err := st.recv()
			select {
			case ch <- recvd{u, err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()

	if err := c.sync(sc); err != nil {
		return false, err
	}
	tickEvery := c.cfg.WarmTimeout / 10
	if tickEvery < 20*time.Millisecond {
		tickEvery = 20 * time.Millisecond
	}
	if tickEvery > time.Second {
		tickEvery = time.Second
	}
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return sc.responses > 0, ctx.Err()
		case r := <-ch:
			if r.err != nil {
				return sc.responses > 0, c.wrapRPCErr("receive", r.err)
			}
			sc.responses++
			if err := c.handle(ctx, sc, r.u); err != nil {
				return true, err
			}
			if err := c.sync(sc); err != nil {
				return true, err
			}
		case <-c.wake:
			if err := c.sync(sc); err != nil {
				return sc.responses > 0, err
			}
			c.tryApply(ctx, "subscription change")
		case <-tick.C:
			if !c.resyncAt.IsZero() && !time.Now().Before(c.resyncAt) {
				return false, errResync
			}
			if err := c.flushDeferred(sc); err != nil {
				return sc.responses > 0, err
			}
			if c.expire() {
				if err := c.sync(sc); err != nil {
					return sc.responses > 0, err
				}
				c.tryApply(ctx, "warm-up timeout")
			}
		}
	}
}

func (c *Client) wrapRPCErr(op string, err error) error {
	if s, ok := status.FromError(err); ok && s.Code() == codes.ResourceExhausted {
		return fmt.Errorf("xds %s: a response exceeds the message size limit of %d bytes (raise it with the max message size setting): %w", op, c.cfg.MaxRecvMsgSize, err)
	}
	return fmt.Errorf("xds %s: %w", op, err)
}

// desired returns the subscription a type should have now.
// The returned map must not be modified.
func (c *Client) desired(url string) (wildcard bool, names map[string]bool) {
	c.mu.Lock()
	wg := c.wantsGen
	if d, ok := c.desiredCache[url]; ok && d.gen == c.gen && d.wantsGen == wg {
		c.mu.Unlock()
		return d.wild, d.names
	}
	names = map[string]bool{}
	for n := range c.wants[url] {
		names[n] = true
	}
	c.mu.Unlock()
	wildcard, names = c.computeDesired(url, names)
	c.mu.Lock()
	if c.desiredCache == nil {
		c.desiredCache = map[string]desiredEntry{}
	}
	c.desiredCache[url] = desiredEntry{gen: c.gen, wantsGen: wg, wild: wildcard, names: names}
	c.mu.Unlock()
	return wildcard, names
}

func (c *Client) computeDesired(url string, names map[string]bool) (bool, map[string]bool) {
	switch url {
	case ListenerType:
		// Listeners say what to capture: always the whole set.
		return true, map[string]bool{}
	case ClusterType:
		if !c.cfg.OnDemand {
			return true, map[string]bool{}
		}
	case EndpointType:
		for _, e := range c.types[ClusterType].res {
			if n := edsName(e.msg.(*clusterType)); n != "" {
				names[n] = true
			}
		}
	case RouteType:
		for _, e := range c.types[ListenerType].res {
			for _, n := range e.routes {
				names[n] = true
			}
		}
	}
	return false, names
}

// typeDone reports whether a type has delivered what it was asked for on
// this stream (or gave up waiting).
func (c *Client) typeDone(url string) bool {
	ts := c.types[url]
	wild, names := c.desired(url)
	if !wild && len(names) == 0 {
		return true
	}
	if !ts.requested {
		return false
	}
	if wild {
		return ts.received || ts.gaveUp
	}
	for n := range names {
		if ts.seen[n] {
			continue
		}
		if t, ok := ts.firstWanted[n]; ok && time.Since(t) >= c.cfg.WarmTimeout {
			continue
		}
		return false
	}
	return true
}

// allowed reports whether url may be requested now. EDS names come from
// the clusters and RDS names from the listeners, so those wait for their
// parent type; CDS and LDS are requested together at once, so that the
// control plane prepares the listeners while the clusters are decoded.
// Nothing is applied before every type has arrived (settled), so the
// order of requests never shows in the configuration in force.
func (c *Client) allowed(url string) bool {
	switch url {
	case EndpointType:
		return c.typeDone(ClusterType)
	case RouteType:
		return c.typeDone(ListenerType)
	}
	return true
}

func (c *Client) settled() bool {
	for _, u := range typeOrder {
		if !c.typeDone(u) {
			return false
		}
	}
	return true
}

// expire gives up waiting for resources older than the warm timeout and
// reports whether anything changed.
func (c *Client) expire() bool {
	changed := false
	now := time.Now()
	for _, u := range typeOrder {
		ts := c.types[u]
		if ts.requested && !ts.received && !ts.gaveUp && now.Sub(ts.waitSince) >= c.cfg.WarmTimeout {
			ts.gaveUp = true
			changed = true
			c.log.Warn("xds: no response within the warm-up timeout; continuing without it",
				zap.String("type", ShortType(u)), zap.Duration("timeout", c.cfg.WarmTimeout))
		}
		var late []string
		for n, t := range ts.firstWanted {
			if !ts.seen[n] && !ts.reported[n] && now.Sub(t) >= c.cfg.WarmTimeout {
				ts.reported[n] = true
				late = append(late, n)
			}
		}
		if len(late) > 0 {
			changed = true
			sort.Strings(late)
			c.log.Warn("xds: subscribed resources not received within the warm-up timeout; continuing without them",
				zap.String("type", ShortType(u)), zap.Strings("resources", late), zap.Duration("timeout", c.cfg.WarmTimeout))
		}
	}
	return changed
}

// sync sends the subscription requests that the current state calls for,
// in Envoy's type order (CDS, EDS, LDS, RDS) as far as allowed permits.
func (c *Client) sync(sc *streamCtx) error {
	for _, u := range typeOrder {
		if !c.allowed(u) {
			continue
		}
		ts := c.types[u]
		wild, names := c.desired(u)
		if !wild && len(names) == 0 && !ts.requested {
			continue
		}
		if ts.requested && wild == ts.sentWildcard && sameSet(names, ts.sent) {
			continue
		}
		now := time.Now()
		for n := range names {
			if _, ok := ts.firstWanted[n]; !ok {
				ts.firstWanted[n] = now
			}
		}
		var err error
		if c.cfg.Delta {
			err = c.sendDelta(sc, ts, wild, names)
		} else {
			err = c.sendSotw(sc, ts, names, nil)
		}
		if err != nil {
			return err
		}
		if !ts.requested {
			ts.requested = true
			ts.waitSince = now
		}
		// Forget resources no longer subscribed.
		if !wild {
			for n := range ts.res {
				if !names[n] {
					delete(ts.res, n)
					c.dirty = true
					c.bump()
				}
			}
		}
		ts.sent, ts.sentWildcard = names, wild
	}
	return nil
}

func sameSet(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func (c *Client) nodeOnce(sc *streamCtx) *corev3.Node {
	if sc.nodeSent {
		return nil
	}
	sc.nodeSent = true
	return sc.node
}

func (c *Client) sendSotw(sc *streamCtx, ts *typeState, names map[string]bool, nack *rpcstatus.Status) error {
	req := &discoveryv3.DiscoveryRequest{
		VersionInfo:   ts.version,
		Node:          c.nodeOnce(sc),
		ResourceNames: slices.Sorted(maps.Keys(names)),
		TypeUrl:       ts.url,
		ResponseNonce: ts.nonce,
		ErrorDetail:   nack,
	}
	if err := sc.sotw.Send(req); err != nil {
		return fmt.Errorf("xds send %s request: %w", ShortType(ts.url), err)
	}
	return nil
}

func (c *Client) sendDelta(sc *streamCtx, ts *typeState, wild bool, names map[string]bool) error {
	req := &discoveryv3.DeltaDiscoveryRequest{Node: c.nodeOnce(sc), TypeUrl: ts.url}
	if wild {
		if ts.requested && ts.sentWildcard {
			return nil
		}
		// An initial request without names is a (legacy) wildcard.
	} else {
		for _, n := range slices.Sorted(maps.Keys(names)) {
			if !ts.sent[n] {
				req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
			}
		}
		for _, n := range slices.Sorted(maps.Keys(ts.sent)) {
			if !names[n] {
				req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, n)
			}
		}
		if len(req.ResourceNamesSubscribe) == 0 && len(req.ResourceNamesUnsubscribe) == 0 {
			return nil
		}
	}
	if err := sc.delta.Send(req); err != nil {
		return fmt.Errorf("xds send %s delta request: %w", ShortType(ts.url), err)
	}
	return nil
}

func (c *Client) sendAck(sc *streamCtx, ts *typeState, nack *rpcstatus.Status) error {
	if c.cfg.Delta {
		req := &discoveryv3.DeltaDiscoveryRequest{Node: c.nodeOnce(sc), TypeUrl: ts.url, ResponseNonce: ts.nonce, ErrorDetail: nack}
		if err := sc.delta.Send(req); err != nil {
			return fmt.Errorf("xds send %s delta ack: %w", ShortType(ts.url), err)
		}
		return nil
	}
	names := ts.sent
	return c.sendSotw(sc, ts, names, nack)
}

// handle processes one response: decode, validate, merge, apply when the
// configuration is complete, then ACK or NACK.
func (c *Client) handle(ctx context.Context, sc *streamCtx, u *update) error {
	ts, ok := c.types[u.url]
	if !ok {
		c.log.Warn("xds: response of an unrequested type; NACKing it", zap.String("type", u.url))
		return c.nackUnknown(sc, u)
	}
	ts.nonce = u.nonce
	ts.deferred = nil // a new response supersedes a delayed NACK
	firstOnStream := !ts.received
	ts.received = true
	log := c.log.With(zap.String("type", ShortType(u.url)), zap.String("version", u.version), zap.String("nonce", u.nonce))

	if !u.delta && ts.lastRejected != nil && ts.lastRejected.version == u.version && ts.lastRejected.digest == digest(u) {
		ts.lastRejected.repeats++
		d := c.cfg.BackoffBase
		for i := 1; i < ts.lastRejected.repeats && d < c.cfg.BackoffMax; i++ {
			d *= 2
		}
		if d > c.cfg.BackoffMax {
			d = c.cfg.BackoffMax
		}
		c.mu.Lock()
		detail := c.nacks[u.url].Detail
		c.mu.Unlock()
		ts.deferred = &deferredNack{at: time.Now().Add(d), status: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: detail}}
		log.Debug("xds: the rejected response was sent again; NACKing it after a delay", zap.Duration("delay", d))
		return nil
	}

	decoded := make([]any, 0, len(u.resources))
	sums := make([]rawSum, 0, len(u.resources))
	versions := make([]string, 0, len(u.resources))
	seenNames := make(map[string]bool, len(u.resources))
	var bad []error
	var firstBad *ResourceError
	var firstBadAny *anypb.Any
	// Resources resent byte-for-byte unchanged (every SotW response) were
	// validated when they were accepted: reuse them.
	var known map[rawSum]*entry
	if len(u.resources) > 0 && len(ts.res) > 0 {
		known = make(map[rawSum]*entry, len(ts.res))
		for _, e := range ts.res {
			known[e.sum] = e
		}
	}
	results := decodeAll(u, known)
	for i, a := range u.resources {
		m, err, sum := results[i].msg, results[i].err, results[i].sum
		if err == nil {
			if n := ResourceName(m); seenNames[n] {
				err = &ResourceError{TypeURL: u.url, Name: n, Index: i, Err: errors.New("appears twice in the response")}
			} else {
				seenNames[n] = true
			}
		}
		if err != nil {
			re := &ResourceError{TypeURL: u.url, Index: i, Err: err}
			if !errors.As(err, &re) && u.delta {
				re.Name = u.names[i]
			}
			if !u.delta {
				// State of the world: the response is rejected as a whole.
				return c.reject(sc, ts, u, re.Name, a, err, log)
			}
			// Delta: like Envoy, accept the valid resources and reject
			// the invalid ones, which keep their previous version.
			if firstBad == nil {
				firstBad, firstBadAny = re, a
			}
			if re.Name != "" {
				ts.seen[re.Name] = true
			}
			bad = append(bad, err)
			continue
		}
		decoded = append(decoded, m)
		sums = append(sums, sum)
		if u.delta {
			versions = append(versions, u.versions[i])
		} else {
			versions = append(versions, u.version)
		}
	}

	// Merge into the working state, remembering how to undo it.
	now := time.Now()
	undo := map[string]*entry{}
	changed := false
	replaceAll := !u.delta && (u.url == ClusterType || u.url == ListenerType) ||
		firstOnStream && (u.url == ClusterType || u.url == ListenerType) && !c.cfg.OnDemand
	if replaceAll {
		for n, e := range ts.res {
			if !seenNames[n] {
				undo[n] = e
				delete(ts.res, n)
				changed = true
			}
		}
	}
	for i, m := range decoded {
		n := ResourceName(m)
		ver := versions[i]
		old := ts.res[n]
		if _, done := undo[n]; !done {
			undo[n] = old
		}
		if old != nil && old.sum == sums[i] {
			ne := *old
			ne.version = ver
			ts.res[n] = &ne
			continue
		}
		ts.res[n] = newEntry(m, sums[i], ver, now)
		changed = true
		ts.seen[n] = true
	}
	for n := range seenNames {
		ts.seen[n] = true
	}
	var missing []string
	for _, n := range u.removed {
		ts.seen[n] = true
		missing = append(missing, n)
		if e, ok := ts.res[n]; ok {
			if _, done := undo[n]; !done {
				undo[n] = e
			}
			delete(ts.res, n)
			changed = true
		}
	}
	if changed {
		c.dirty = true
		c.bump()
	}
	revert := func() {
		c.bump()
		for n, e := range undo {
			if e == nil {
				delete(ts.res, n)
			} else {
				ts.res[n] = e
			}
		}
	}

	if c.settled() && (c.dirty || !c.streamOK) {
		if err := c.applyNow(ctx, u.url, u.version); err != nil {
			revert()
			if err := c.reject(sc, ts, u, "", nil, fmt.Errorf("configuration rejected by the agent: %w", err), log); err != nil {
				return err
			}
			if u.delta && c.resyncAt.IsZero() {
				// Give the NACK time to reach the server, then resync.
				c.resyncAt = time.Now().Add(c.cfg.BackoffBase)
			}
			return nil
		}
	}
	c.notifyMissing(u.url, missing)
	if len(bad) > 0 {
		return c.reject(sc, ts, u, firstBad.Name, firstBadAny, joinErrors(bad), log)
	}
	ts.lastRejected = nil
	ts.version = u.version
	ts.updated = now
	c.mu.Lock()
	delete(c.nacks, u.url)
	c.mu.Unlock()
	log.Debug("xds: accepted", zap.Int("resources", len(decoded)), zap.Int("removed", len(u.removed)))
	return c.sendAck(sc, ts, nil)
}

// decodedRes is one resource of a response after decodeAll.
type decodedRes struct {
	msg any
	err error
	sum rawSum
}

// decodeAll decodes and validates every resource of u, reusing the entries
// in known (by content hash) for resources resent unchanged. Resources are
// independent, so large responses (a full state at start-up) are decoded
// on all CPUs (par.For); results keep the response's order.
func decodeAll(u *update, known map[rawSum]*entry) []decodedRes {
	out := make([]decodedRes, len(u.resources))
	one := func(i int) {
		a := u.resources[i]
		want := ""
		if u.delta {
			want = u.names[i]
		}
		d := &out[i]
		d.sum = sumOf(a.GetValue())
		if e := known[d.sum]; e != nil && a.GetTypeUrl() == u.url && (want == "" || want == ResourceName(e.msg)) {
			d.msg = e.msg
		} else {
			d.msg, d.err = decodeResource(u.url, a, want, i)
		}
		if d.err == nil {
			// Decoded: the payload is not needed any more (a rejected
			// one is kept for the NACK report). Released now, a large
			// response does not stay in memory beside its decoded form.
			a.Value = nil
		}
	}
	par.For(len(out), one)
	u.sums = make([]rawSum, len(out))
	for i := range out {
		u.sums[i] = out[i].sum
	}
	return out
}

func (c *Client) nackUnknown(sc *streamCtx, u *update) error {
	st := &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: fmt.Sprintf("unsupported resource type %q", u.url)}
	if c.cfg.Delta {
		return sc.delta.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: u.url, ResponseNonce: u.nonce, ErrorDetail: st})
	}
	return sc.sotw.Send(&discoveryv3.DiscoveryRequest{TypeUrl: u.url, ResponseNonce: u.nonce, ErrorDetail: st})
}

func (c *Client) reject(sc *streamCtx, ts *typeState, u *update, name string, failed *anypb.Any, err error, log *zap.Logger) error {
	detail := err.Error()
	log.Warn("xds: NACK; keeping the last good configuration", zap.String("resource", name), zap.Error(err))
	ne := NackError{TypeURL: u.url, Name: name, Version: u.version, Nonce: u.nonce, Detail: detail, Time: time.Now(), Failed: failed}
	if !u.delta {
		ts.lastRejected = &rejected{version: u.version, digest: digest(u)}
	}
	c.mu.Lock()
	c.nacks[u.url] = ne
	c.status.LastNACK = &ne
	c.mu.Unlock()
	return c.sendAck(sc, ts, &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: detail})
}

// tryApply applies the working state outside of a response (after a
// warm-up timeout or a subscription change), when it is complete.
func (c *Client) tryApply(ctx context.Context, why string) {
	if !c.settled() || (!c.dirty && c.streamOK) {
		return
	}
	if err := c.applyNow(ctx, "", ""); err != nil {
		c.dirty = false // do not retry the same state on every tick
		c.log.Error("xds: configuration rejected by the agent", zap.String("trigger", why), zap.Error(err))
		c.mu.Lock()
		c.status.LastError = "apply: " + err.Error()
		c.mu.Unlock()
	}
}

// buildSet assembles the Set of the working state: subscribed endpoints
// and routes only, plus the inline load assignments of static clusters.
func (c *Client) buildSet(curURL, curVersion string) (*resources.Set, map[string]map[string]ResourceMeta) {
	set := resources.New()
	meta := map[string]map[string]ResourceMeta{}
	versions := make([]string, 0, 4)
	for _, u := range typeOrder {
		ts := c.types[u]
		_, wanted := c.desired(u)
		m := make(map[string]ResourceMeta, len(ts.res))
		for n, e := range ts.res {
			if (u == EndpointType || u == RouteType) && !wanted[n] {
				continue
			}
			m[n] = ResourceMeta{Version: e.version, LastUpdated: e.updated}
			switch u {
			case ClusterType:
				set.Clusters[n] = e.msg.(*clusterType)
			case EndpointType:
				set.Endpoints[n] = e.msg.(*endpointType)
			case ListenerType:
				set.Listeners[n] = e.msg.(*listenerType)
			case RouteType:
				set.Routes[n] = e.msg.(*routeType)
			}
		}
		meta[u] = m
		v := ts.version
		if u == curURL {
			v = curVersion
		}
		versions = append(versions, strings.ToLower(ShortType(u))+"="+v)
	}
	inlineEndpoints(set)
	set.Version = strings.Join(versions, ",")
	return set, meta
}

func (c *Client) applyNow(ctx context.Context, curURL, curVersion string) error {
	set, meta := c.buildSet(curURL, curVersion)
	start := time.Now()
	if err := c.applier.Apply(ctx, set); err != nil {
		return err
	}
	c.dirty = false
	c.streamOK = true
	versions := map[string]string{}
	for _, u := range typeOrder {
		versions[u] = c.types[u].version
	}
	if curURL != "" {
		versions[curURL] = curVersion
	}
	c.mu.Lock()
	prev := c.status.Source
	c.applied, c.appliedMeta = set, meta
	c.status.Ready = true
	c.status.Source = SourceControlPlane
	c.status.LastApplied = time.Now()
	c.mu.Unlock()
	if prev != SourceControlPlane {
		c.log.Info("xds: serving the control plane's configuration", zap.String("previous_source", string(prev)))
	}
	c.log.Info("xds: configuration applied", zap.String("version", set.Version),
		zap.Int("listeners", len(set.Listeners)), zap.Int("routes", len(set.Routes)),
		zap.Int("clusters", len(set.Clusters)), zap.Int("endpoints", len(set.Endpoints)),
		zap.Duration("apply_time", time.Since(start)))
	c.notifyWaiters()
	if c.cfg.Persister != nil {
		p := &Persisted{Set: set, Versions: versions, Meta: meta, Saved: time.Now()}
		select {
		case c.persistCh <- p:
		default:
			// Replace the queued, older state.
			select {
			case <-c.persistCh:
			default:
			}
			c.persistCh <- p
		}
	}
	return nil
}

// Status returns a snapshot of the client's state.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.statusLocked()
}

func (c *Client) statusLocked() Status {
	s := c.status
	if s.LastNACK != nil {
		n := *s.LastNACK
		s.LastNACK = &n
	}
	s.Types = map[string]TypeStatus{}
	for _, u := range typeOrder {
		m := c.appliedMeta[u]
		ts := TypeStatus{Resources: len(m)}
		// Versions are those of the Set in force.
		for _, rm := range m {
			if rm.LastUpdated.After(ts.LastUpdated) {
				ts.LastUpdated = rm.LastUpdated
			}
		}
		if c.applied != nil {
			ts.Version = versionOf(c.applied.Version, u)
		}
		s.Types[u] = ts
	}
	return s
}

func versionOf(setVersion, url string) string {
	key := strings.ToLower(ShortType(url)) + "="
	for _, p := range strings.Split(setVersion, ",") {
		if strings.HasPrefix(p, key) {
			return strings.TrimPrefix(p, key)
		}
	}
	return ""
}

// Current returns the Set in force (nil before the first one), per-resource
// metadata, the standing NACKs and the status.
func (c *Client) Current() Current {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := Current{Set: c.applied, Meta: c.appliedMeta, Status: c.statusLocked()}
	for _, u := range typeOrder {
		if n, ok := c.nacks[u]; ok {
			cur.Nacks = append(cur.Nacks, n)
		}
	}
	return cur
}

// Want subscribes to a resource by name (in on-demand mode; in wildcard mode
// it only waits) and blocks until it is part of the applied Set (for an EDS
// cluster: with its endpoints), the control plane says it does not exist
// (ErrNotFound), or ctx ends. Without a ctx deadline it waits at most
// DefaultWantTimeout. The subscription stays until Forget.
func (c *Client) Want(ctx context.Context, typeURL, name string) error {
	if _, ok := c.types[typeURL]; !ok {
		return fmt.Errorf("xds want: unsupported type %q", typeURL)
	}
	if name == "" {
		return errors.New("xds want: empty resource name")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultWantTimeout)
		defer cancel()
	}
	w := &waiter{typeURL: typeURL, name: name, done: make(chan error, 1)}
	c.mu.Lock()
	if c.wants[typeURL] == nil {
		c.wants[typeURL] = map[string]bool{}
	}
	if !c.wants[typeURL][name] {
		c.wants[typeURL][name] = true
		c.wantsGen++
	}
	if c.haveLocked(typeURL, name) {
		c.mu.Unlock()
		return nil
	}
	c.waiters[w] = struct{}{}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	defer func() {
		c.mu.Lock()
		delete(c.waiters, w)
		c.mu.Unlock()
	}()
	select {
	case err := <-w.done:
		if err != nil {
			return fmt.Errorf("xds want %s %q: %w", ShortType(typeURL), name, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("xds want %s %q: not received: %w", ShortType(typeURL), name, ctx.Err())
	}
}

// WantCluster is Want for a cluster (and its endpoints).
func (c *Client) WantCluster(ctx context.Context, name string) error {
	return c.Want(ctx, ClusterType, name)
}

// Forget drops a subscription made by Want.
func (c *Client) Forget(typeURL, name string) {
	c.mu.Lock()
	delete(c.wants[typeURL], name)
	c.wantsGen++
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Client) haveLocked(typeURL, name string) bool {
	s := c.applied
	if s == nil {
		return false
	}
	switch typeURL {
	case ClusterType:
		cl, ok := s.Clusters[name]
		if !ok {
			return false
		}
		if n := edsName(cl); n != "" {
			_, ok = s.Endpoints[n]
		}
		return ok
	case EndpointType:
		_, ok := s.Endpoints[name]
		return ok
	case ListenerType:
		_, ok := s.Listeners[name]
		return ok
	case RouteType:
		_, ok := s.Routes[name]
		return ok
	}
	return false
}

func (c *Client) notifyWaiters() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for w := range c.waiters {
		if c.haveLocked(w.typeURL, w.name) {
			select {
			case w.done <- nil:
			default:
			}
		}
	}
}

func (c *Client) notifyMissing(typeURL string, names []string) {
	if len(names) == 0 {
		return
	}
	gone := map[string]bool{}
	for _, n := range names {
		gone[n] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for w := range c.waiters {
		if w.typeURL == typeURL && gone[w.name] && !c.haveLocked(w.typeURL, w.name) {
			select {
			case w.done <- ErrNotFound:
			default:
			}
		}
	}
}

// joinErrors renders up to five errors and a count of the rest.
func joinErrors(errs []error) error {
	const show = 5
	parts := make([]string, 0, show+1)
	for i, e := range errs {
		if i == show {
			parts = append(parts, fmt.Sprintf("and %d more", len(errs)-show))
			break
		}
		parts = append(parts, e.Error())
	}
	return errors.New(strings.Join(parts, "; "))
}

// flushDeferred sends NACKs whose delay has passed.
func (c *Client) flushDeferred(sc *streamCtx) error {
	now := time.Now()
	for _, u := range typeOrder {
		ts := c.types[u]
		if ts.deferred != nil && !now.Before(ts.deferred.at) {
			st := ts.deferred.status
			ts.deferred = nil
			if err := c.sendAck(sc, ts, st); err != nil {
				return err
			}
		}
	}
	return nil
}

// bump invalidates the cached subscriptions after a working-state change.
func (c *Client) bump() {
	c.mu.Lock()
	c.gen++
	c.mu.Unlock()
}
