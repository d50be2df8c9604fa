package hcm

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// proxyUpgrade forwards an HTTP/1.1 Upgrade request (WebSocket, ...) on a
// dedicated upstream connection and, on 101, turns both connections into
// a raw byte pipe, closed when both directions have been quiet for idle
// (0: never; flag SI). Any other status is relayed as a normal response.
func (s *stream) proxyUpgrade(cluster, host, path string, idle time.Duration) {
	ep, err := s.m.up.Pick(s.ctx, cluster, s.pickInput())
	if err != nil {
		s.local(http.StatusServiceUnavailable, FlagNoHealthyUpstream, "no_healthy_upstream", "no healthy upstream")
		return
	}
	addr := ep.Addr.String()
	s.e.UpstreamHost = addr
	s.e.Attempts = 1
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
	s.e.Code, s.e.RespHeaders, s.e.Details = resp.StatusCode, h, "via_upstream"
	applyHeaderOps(h, s.rt.respAdd, s.rt.respDel, &s.e)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		stripHopByHop(h, false)
		s.wrote = true
		s.writeHeader(resp.StatusCode)
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
	q := &quiet{idle: idle, start: time.Now()}
	wg.Add(2)
	go func() {
		defer wg.Done()
		recv = pipe(uc, brw.Reader, dc, q)
		closeBoth(uc, dc)
	}()
	go func() {
		defer wg.Done()
		n := pipe(dc, br, uc, q)
		s.sent.Add(n)
		closeBoth(uc, dc)
	}()
	wg.Wait()
	s.e.BytesReceived = recv
	if q.expired.Load() {
		s.addFlag(FlagStreamIdleTimeout)
	}
}

// quiet is a tunnel's idle timeout, shared by its two directions: traffic
// either way keeps both open.
type quiet struct {
	idle    time.Duration // 0: none
	start   time.Time
	last    atomic.Int64 // time of the latest traffic, since start
	expired atomic.Bool  // a direction ended because both were quiet
}

func (q *quiet) touch() { q.last.Store(int64(time.Since(q.start))) }

// deadline is when the tunnel expires unless there is traffic before.
func (q *quiet) deadline() time.Time {
	return q.start.Add(time.Duration(q.last.Load()) + q.idle)
}

// pipe copies buffered bytes then the live connection to dst with an
// explicit read/write loop (never splice), until either end fails or, with
// an idle timeout, both directions have been quiet for it.
func pipe(dst net.Conn, buffered *bufio.Reader, src net.Conn, q *quiet) int64 {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var total int64
	if k := buffered.Buffered(); k > 0 {
		q.touch()
		pre, _ := buffered.Peek(k)
		n, err := dst.Write(pre)
		total += int64(n)
		if err != nil {
			return total
		}
	}
	for {
		if q.idle > 0 {
			_ = src.SetReadDeadline(q.deadline())
		}
		n, err := src.Read(buf)
		if n > 0 {
			q.touch()
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total
			}
		}
		if err != nil {
			var ne net.Error
			if q.idle > 0 && errors.As(err, &ne) && ne.Timeout() {
				if time.Now().Before(q.deadline()) {
					continue // the other direction had traffic: not quiet yet
				}
				q.expired.Store(true)
			}
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
