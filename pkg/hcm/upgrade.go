package hcm

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"go.uber.org/zap"
)

// proxyUpgrade forwards an HTTP/1.1 Upgrade request (WebSocket, ...) on a
// dedicated upstream connection and, on 101, turns both connections into
// a raw byte pipe. Any other status is relayed as a normal response.
func (s *stream) proxyUpgrade(cluster, host, path string) {
	ep, err := s.m.up.Pick(s.ctx, cluster, s.info.orig)
	if err != nil {
		s.local(http.StatusServiceUnavailable, FlagNoHealthyUpstream, "no_healthy_upstream", "no healthy upstream")
		return
	}
	addr := ep.Addr.String()
	s.e.UpstreamHost = addr
	if s.rt.autoHost {
		host = addr
	}
	upStart := time.Now()
	uc, err := s.m.pools.dial(s.ctx, "tcp", addr)
	if err != nil {
		s.upstreamFailed(err, false)
		return
	}
	defer uc.Close()
	stopOnCancel := afterFunc(s, uc)
	defer stopOnCancel()
	out := &http.Request{
		Method: s.r.Method, URL: &url.URL{Opaque: path}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: s.r.Header, Host: host, Body: http.NoBody,
	}
	if err := out.Write(uc); err != nil {
		s.upstreamFailed(err, false)
		return
	}
	br := bufio.NewReader(uc)
	resp, err := http.ReadResponse(br, out)
	if err != nil {
		s.upstreamFailed(err, false)
		return
	}
	s.e.UpstreamTime = time.Since(upStart)
	h := s.w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	applyHeaderOps(h, s.rt.respAdd, s.rt.respDel)
	s.e.Code = resp.StatusCode
	if resp.StatusCode != http.StatusSwitchingProtocols {
		stripHopByHop(h, false)
		s.wrote = true
		s.w.WriteHeader(resp.StatusCode)
		n, _ := io.Copy(writerOnly{s.w}, resp.Body)
		s.sent.Add(n)
		resp.Body.Close()
		return
	}
	dc, brw, err := http.NewResponseController(s.w).Hijack()
	if err != nil {
		s.m.log.Warn("upgrade: hijack failed", zap.Error(err))
		s.local(http.StatusInternalServerError, FlagLocalReset, "upgrade_failed", "")
		return
	}
	defer dc.Close()
	s.wrote = true
	_ = dc.SetDeadline(time.Time{})
	if _, err := io.WriteString(brw, "HTTP/1.1 101 Switching Protocols\r\n"); err == nil {
		_ = h.Write(brw)
		_, _ = io.WriteString(brw, "\r\n")
	}
	if err := brw.Flush(); err != nil {
		s.addFlag(FlagDownstreamConnTerm)
		return
	}
	// Bytes already buffered on either side go first.
	var wg sync.WaitGroup
	var recv int64
	wg.Add(2)
	go func() {
		defer wg.Done()
		recv = pipe(uc, brw.Reader, dc)
		closeBoth(uc, dc)
	}()
	go func() {
		defer wg.Done()
		n := pipe(dc, br, uc)
		s.sent.Add(n)
		closeBoth(uc, dc)
	}()
	wg.Wait()
	s.e.BytesReceived = recv
}

// pipe copies buffered bytes then the live connection to dst with an
// explicit read/write loop (never splice).
func pipe(dst net.Conn, buffered *bufio.Reader, src net.Conn) int64 {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var total int64
	if k := buffered.Buffered(); k > 0 {
		pre, _ := buffered.Peek(k)
		n, err := dst.Write(pre)
		total += int64(n)
		if err != nil {
			return total
		}
	}
	for {
		n, err := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total
			}
		}
		if err != nil {
			return total
		}
	}
}

func closeBoth(a, b net.Conn) {
	a.Close()
	b.Close()
}

// writerOnly hides optional interfaces (ReadFrom) of the wrapped writer.
type writerOnly struct{ io.Writer }

func afterFunc(s *stream, c net.Conn) func() bool {
	return context.AfterFunc(s.ctx, func() { c.Close() })
}
