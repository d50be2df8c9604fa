package hcm

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/meshlet/meshlet/internal/fraction"
)

// maxMirrors bounds the shadow requests in flight per Manager; beyond it
// a mirror is dropped (shadowing must never hold the real traffic up).
const maxMirrors = 256

// mirrorPolicy is a compiled RequestMirrorPolicy: a copy of the request
// goes to another cluster, its answer dropped ("fire and forget").
type mirrorPolicy struct {
	cluster       string
	clusterHeader string // canonical key
	pct           fraction.Percent
	noSuffix      bool
	hostLiteral   string
}

func compileMirrors(in []*routev3.RouteAction_RequestMirrorPolicy) []mirrorPolicy {
	var out []mirrorPolicy
	for _, p := range in {
		mp := mirrorPolicy{cluster: p.GetCluster(), noSuffix: p.GetDisableShadowHostSuffixAppend(),
			hostLiteral: p.GetHostRewriteLiteral(), pct: fraction.All}
		if h := p.GetClusterHeader(); h != "" {
			mp.clusterHeader = http.CanonicalHeaderKey(h)
		}
		if rf := p.GetRuntimeFraction(); rf != nil {
			mp.pct = fraction.FromProto(rf.GetDefaultValue())
		}
		out = append(out, mp)
	}
	return out
}

// shadowHost appends "-shadow" to the host, before any port
// ("svc:8080" → "svc-shadow:8080"), as Envoy marks mirrored requests.
func shadowHost(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
		return h[:i] + "-shadow" + h[i:]
	}
	return h + "-shadow"
}

// mirror sends the shadow copies of the stream's request, once the
// request has been forwarded: the headers as forwarded, and the body when
// it was read to its end within retryReplayLimit (else it is not
// mirrored). Called when serve1 returns, on the handler's goroutine.
func (s *stream) mirror(outPath, outHost string, timeout time.Duration) {
	if s.body != nil && !s.canReplay() {
		return
	}
	var body []byte
	if s.body != nil {
		body = s.body.rec
	}
	for i := range s.rt.mirrors {
		mp := &s.rt.mirrors[i]
		cluster := mp.cluster
		if mp.clusterHeader != "" {
			cluster = s.r.Header.Get(mp.clusterHeader)
		}
		if cluster == "" || !mp.pct.Draw() {
			continue
		}
		select {
		case s.m.mirrors <- struct{}{}:
		default:
			continue // too many in flight: dropped
		}
		host := outHost
		switch {
		case mp.hostLiteral != "":
			host = mp.hostLiteral
		case !mp.noSuffix:
			host = shadowHost(host)
		}
		req := &http.Request{
			Method: s.r.Method, URL: &url.URL{}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: s.r.Header.Clone(), Host: host, Body: http.NoBody, ContentLength: int64(len(body)),
		}
		setUpstreamURL(req.URL, outPath)
		if len(body) > 0 {
			req.Body = newReplay(body)
		}
		go s.m.sendMirror(req, cluster, s.info.orig, s.r.ProtoMajor == 2, timeout)
	}
}

func (m *Manager) sendMirror(req *http.Request, cluster string, orig netip.AddrPort, h2Down bool, timeout time.Duration) {
	defer func() { <-m.mirrors }()
	if timeout <= 0 {
		timeout = defaultRouteTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ep, err := m.up.Pick(ctx, cluster, PickInput{Orig: orig})
	if err != nil {
		return
	}
	cp := m.pools.cluster(cluster)
	req.URL.Host = cp.addrString(ep.Addr)
	resp, err := cp.roundTrip(ctx, req, clientFor(req, ep.h2(h2Down)), nil, nil)
	if err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}
