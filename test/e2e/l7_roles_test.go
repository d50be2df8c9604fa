package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Client roles of the L7 tests: the test binary, started inside the meshed
// cgroup, as a Go net/http or grpc-go client dialling a service address.

// runL7Role dispatches the roles named "l7-*" (see runRole).
func runL7Role(role string, args []string) error {
	switch role {
	case "l7-http":
		return roleL7HTTP(args)
	case "l7-split":
		return roleL7Split(args)
	case "l7-raw":
		return roleL7Raw(args)
	case "l7-grpc":
		return roleL7GRPC(args)
	case "l7-grpc-lat":
		return roleL7GRPCLatency(args)
	case "l7-grpc-serve":
		return roleL7GRPCServe(args)
	}
	return fmt.Errorf("unknown role %q", role)
}

// httpClient returns a keep-alive client with at most one connection, over
// HTTP/1.1 or h2c with prior knowledge, and a counter of the connections
// it opened.
func httpClient(proto string) (*http.Client, *atomic.Int64, error) {
	var dials atomic.Int64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	var rt http.RoundTripper
	switch proto {
	case "h1":
		rt = &http.Transport{DialContext: dial, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, DisableCompression: true}
	case "h2c":
		rt = &http2.Transport{AllowHTTP: true, DisableCompression: true,
			DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				return dial(ctx, network, addr)
			}}
	default:
		return nil, nil, fmt.Errorf("protocol %q: want h1 or h2c", proto)
	}
	return &http.Client{Transport: rt, Timeout: 60 * time.Second}, &dials, nil
}

// httpReport is what the l7-http role prints.
type httpReport struct {
	Requests int   `json:"requests"`
	Conns    int64 `json:"conns"`  // connections the client opened
	Reused   int   `json:"reused"` // requests sent on a reused connection
}

// roleL7HTTP: BASEURL PROTO SIZE. Twenty small GETs, then two POSTs to
// /echo whose bodies (SIZE bytes each, of unknown length: chunked on
// HTTP/1.1) are streamed up in 32 KiB pieces; the upstream echoes each body
// back in pieces of unknown length, and the reply must be byte-identical
// and streamed (no Content-Length). All on one keep-alive connection.
func roleL7HTTP(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: BASEURL h1|h2c SIZE")
	}
	base, proto := args[0], args[1]
	size, err := strconv.Atoi(args[2])
	if err != nil {
		return fmt.Errorf("size %q: %w", args[2], err)
	}
	client, dials, err := httpClient(proto)
	if err != nil {
		return err
	}
	var rep httpReport
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if i.Reused {
			rep.Reused++
		}
	}}
	do := func(req *http.Request) (*http.Response, []byte, error) {
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		resp, err := client.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		rep.Requests++
		return resp, body, err
	}
	for i := range 20 {
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s/hello/%d", base, i), nil)
		resp, body, err := do(req)
		if err != nil {
			return fmt.Errorf("GET %d: %w", i, err)
		}
		if want := fmt.Sprintf("cluster=a path=/hello/%d ", i); resp.StatusCode != 200 || !strings.HasPrefix(string(body), want) {
			return fmt.Errorf("GET %d: %s %q, want 200 %q...", i, resp.Status, body, want)
		}
	}
	for i := range 2 {
		want := pattern(uint64(100+i), size)
		pr, pw := io.Pipe()
		go func() {
			for off := 0; off < len(want); off += 32 << 10 {
				if _, err := pw.Write(want[off:min(off+32<<10, len(want))]); err != nil {
					return
				}
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", base+"/echo", pr) // unknown length: chunked on HTTP/1.1
		resp, body, err := do(req)
		pr.CloseWithError(errors.New("request finished"))
		if err != nil {
			return fmt.Errorf("POST /echo %d: %w", i, err)
		}
		if resp.StatusCode != 200 {
			return fmt.Errorf("POST /echo %d: %s: %.200q", i, resp.Status, body)
		}
		if resp.ContentLength != -1 {
			return fmt.Errorf("POST /echo %d: the reply has Content-Length %d, want a streamed reply of unknown length", i, resp.ContentLength)
		}
		if proto == "h1" && !slices.Equal(resp.TransferEncoding, []string{"chunked"}) {
			return fmt.Errorf("POST /echo %d: Transfer-Encoding %q, want chunked", i, resp.TransferEncoding)
		}
		if !bytes.Equal(body, want) {
			return fmt.Errorf("POST /echo %d: got %d bytes that differ from the %d sent", i, len(body), len(want))
		}
	}
	rep.Conns = dials.Load()
	return json.NewEncoder(os.Stdout).Encode(rep)
}

// splitReport is what the l7-split role prints.
type splitReport struct {
	By       map[string]int `json:"by"` // cluster named by the reply -> requests
	Errors   int            `json:"errors"`
	FirstErr string         `json:"first_error,omitempty"`
	Conns    int64          `json:"conns"`
}

// roleL7Split: URL N WORKERS. N keep-alive GETs from WORKERS goroutines
// (one connection each), counting the cluster each reply names
// ("cluster=NAME ..."). Bounded by N and by 60 s.
func roleL7Split(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: URL N WORKERS")
	}
	n, err1 := strconv.Atoi(args[1])
	workers, err2 := strconv.Atoi(args[2])
	if err := errors.Join(err1, err2); err != nil || n <= 0 || n > 200000 || workers <= 0 || workers > 64 {
		return fmt.Errorf("bad N or WORKERS (N ≤ 200000, WORKERS ≤ 64): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		mu    sync.Mutex
		rep   = splitReport{By: map[string]int{}}
		next  atomic.Int64
		wg    sync.WaitGroup
		conns atomic.Int64
	)
	for range workers {
		client, dials, err := httpClient("h1")
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { conns.Add(dials.Load()) }()
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				name, err := splitOnce(ctx, client, args[0])
				mu.Lock()
				if err != nil {
					rep.Errors++
					if rep.FirstErr == "" {
						rep.FirstErr = err.Error()
					}
				} else {
					rep.By[name]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	rep.Conns = conns.Load()
	if ctx.Err() != nil {
		return fmt.Errorf("not done within 60 s: %+v", rep)
	}
	return json.NewEncoder(os.Stdout).Encode(rep)
}

func splitOnce(ctx context.Context, c *http.Client, url string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	name, _, _ := strings.Cut(string(body), " ")
	if resp.StatusCode != 200 || !strings.HasPrefix(name, "cluster=") {
		return "", fmt.Errorf("%s %.100q", resp.Status, body)
	}
	return strings.TrimPrefix(name, "cluster="), nil
}

// rawReport is what the l7-raw role prints.
type rawReport struct {
	Reply  string `json:"reply"`  // everything read until EOF (at most 64 KiB)
	Closed bool   `json:"closed"` // the peer closed the connection within 5 s
}

// roleL7Raw: ADDR QUOTED. Sends the Go-quoted bytes, then reads until the
// peer closes (or 5 s pass) and prints what came back.
func roleL7Raw(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: ADDR QUOTED-BYTES")
	}
	payload, err := strconv.Unquote(args[1])
	if err != nil {
		return fmt.Errorf("payload: %w", err)
	}
	c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, payload); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got, err := io.ReadAll(io.LimitReader(c, 64<<10))
	var ne net.Error
	rep := rawReport{Reply: string(got), Closed: err == nil}
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("read: %w", err)
	}
	if errors.Is(err, syscall.ECONNRESET) {
		rep.Closed = true
	}
	return json.NewEncoder(os.Stdout).Encode(rep)
}

// grpcConn dials addr with insecure credentials (h2c).
func grpcConn(addr string) (*grpc.ClientConn, testgrpc.TestServiceClient, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("grpc client for %s: %w", addr, err)
	}
	return cc, testgrpc.NewTestServiceClient(cc), nil
}

// roleL7GRPC: ADDR SCENARIO... Runs each scenario on one ClientConn and
// prints "ok SCENARIO" lines. Scenarios: unary, server-stream,
// client-stream, bidi, big-unary, concurrent, deadline, route-timeout,
// cancel. The last three ask
// the server afterwards (x-wait-event) what it saw, so the upstream's view
// is checked while the downstream connection is still open.
func roleL7GRPC(args []string) error {
	if len(args) < 2 {
		return errors.New("usage: ADDR SCENARIO...")
	}
	cc, tc, err := grpcConn(args[0])
	if err != nil {
		return err
	}
	defer cc.Close()
	for _, sc := range args[1:] {
		// A bound that is not a deadline, so no grpc-timeout is sent
		// unless the scenario sets one.
		ctx, cancel := context.WithCancel(context.Background())
		stop := time.AfterFunc(20*time.Second, cancel)
		err := grpcScenario(ctx, tc, sc)
		stop.Stop()
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", sc, err)
		}
		fmt.Println("ok", sc)
	}
	return nil
}

// streamSizes are the message sizes of the streaming scenarios (one over
// the 16 KiB default HTTP/2 frame and one over the 64 KiB initial window).
var streamSizes = []int{1, 1000, 16 << 10, 100 << 10, 7}

func grpcScenario(ctx context.Context, tc testgrpc.TestServiceClient, sc string) error {
	switch sc {
	case "unary":
		body := pattern(7, 64<<10)
		var hdr, trl metadata.MD
		ctx = metadata.AppendToOutgoingContext(ctx, "x-echo", "meshlet")
		resp, err := tc.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}}, grpc.Header(&hdr), grpc.Trailer(&trl))
		if err != nil {
			return err
		}
		if !bytes.Equal(resp.GetPayload().GetBody(), body) {
			return fmt.Errorf("reply of %d bytes differs from the %d sent", len(resp.GetPayload().GetBody()), len(body))
		}
		if !slices.Equal(hdr.Get("x-echo"), []string{"meshlet"}) || !slices.Equal(trl.Get("x-echo-trailer"), []string{"meshlet"}) {
			return fmt.Errorf("header metadata %v, trailer %v: want x-echo and x-echo-trailer = meshlet", hdr, trl)
		}
		st, err := tc.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.PermissionDenied), Message: "no entry"}})
		if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "no entry" {
			return fmt.Errorf("status call: %v, %v; want PermissionDenied \"no entry\"", st, err)
		}
	case "server-stream":
		req := &testpb.StreamingOutputCallRequest{}
		for _, n := range streamSizes {
			req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: int32(n)})
		}
		s, err := tc.StreamingOutputCall(ctx, req)
		if err != nil {
			return err
		}
		for i, n := range streamSizes {
			m, err := s.Recv()
			if err != nil {
				return fmt.Errorf("message %d: %w", i, err)
			}
			if !bytes.Equal(m.GetPayload().GetBody(), pattern(uint64(i), n)) {
				return fmt.Errorf("message %d: %d bytes, not the %d expected", i, len(m.GetPayload().GetBody()), n)
			}
		}
		if _, err := s.Recv(); err != io.EOF {
			return fmt.Errorf("after the last message: %v, want EOF", err)
		}
	case "client-stream":
		s, err := tc.StreamingInputCall(ctx)
		if err != nil {
			return err
		}
		total := 0
		for i, n := range streamSizes {
			if err := s.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: pattern(uint64(i), n)}}); err != nil {
				return fmt.Errorf("send %d: %w", i, err)
			}
			total += n
		}
		resp, err := s.CloseAndRecv()
		if err != nil {
			return err
		}
		// The server adds 1 per message whose bytes matched pattern(i).
		if got, want := resp.GetAggregatedPayloadSize(), int32(total+len(streamSizes)); got != want {
			return fmt.Errorf("server counted %d, want %d (sizes plus one per intact message)", got, want)
		}
	case "bidi":
		s, err := tc.FullDuplexCall(ctx)
		if err != nil {
			return err
		}
		for i := range 20 { // ping-pong: each reply arrives before the next send
			n := 1 + i*5000
			if err := s.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: int32(n)}}}); err != nil {
				return fmt.Errorf("send %d: %w", i, err)
			}
			m, err := s.Recv()
			if err != nil {
				return fmt.Errorf("recv %d: %w", i, err)
			}
			if !bytes.Equal(m.GetPayload().GetBody(), pattern(0, n)) {
				return fmt.Errorf("reply %d: %d bytes, not the %d expected", i, len(m.GetPayload().GetBody()), n)
			}
		}
		if err := s.CloseSend(); err != nil {
			return err
		}
		if _, err := s.Recv(); err != io.EOF {
			return fmt.Errorf("after CloseSend: %v, want EOF", err)
		}
	case "big-unary":
		// 3 MiB each way: many DATA frames, several flow-control windows.
		body := pattern(9, 3<<20)
		resp, err := tc.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
		if err != nil {
			return err
		}
		if !bytes.Equal(resp.GetPayload().GetBody(), body) {
			return fmt.Errorf("reply of %d bytes differs from the %d sent", len(resp.GetPayload().GetBody()), len(body))
		}
	case "concurrent":
		// 64 bidi streams at once on the one connection, each ping-pong.
		errs := make(chan error, 64)
		for k := range 64 {
			go func() {
				s, err := tc.FullDuplexCall(ctx)
				if err != nil {
					errs <- err
					return
				}
				for i := range 5 {
					n := 1 + (k*5+i)*101
					if err := s.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: int32(n)}}}); err != nil {
						errs <- fmt.Errorf("stream %d send %d: %w", k, i, err)
						return
					}
					m, err := s.Recv()
					if err != nil {
						errs <- fmt.Errorf("stream %d recv %d: %w", k, i, err)
						return
					}
					if !bytes.Equal(m.GetPayload().GetBody(), pattern(0, n)) {
						errs <- fmt.Errorf("stream %d reply %d: %d bytes, not the %d expected", k, i, len(m.GetPayload().GetBody()), n)
						return
					}
				}
				if err := s.CloseSend(); err != nil {
					errs <- err
					return
				}
				if _, err := s.Recv(); err != io.EOF {
					errs <- fmt.Errorf("stream %d after CloseSend: %v, want EOF", k, err)
					return
				}
				errs <- nil
			}()
		}
		var all []error
		for range 64 {
			all = append(all, <-errs)
		}
		return errors.Join(all...)
	case "deadline":
		// The client's own deadline: it must reach the server as
		// grpc-timeout, and the server must see its context end.
		dctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "x-sleep", "deadline"), 300*time.Millisecond)
		_, err := tc.UnaryCall(dctx, &testpb.SimpleRequest{})
		cancel()
		if status.Code(err) != codes.DeadlineExceeded {
			return fmt.Errorf("got %v, want DeadlineExceeded", err)
		}
		return waitEvent(ctx, tc, "deadline")
	case "route-timeout":
		// No client deadline: the route's 300 ms timeout expires in the
		// agent, which must answer DEADLINE_EXCEEDED and reset upstream.
		_, err := tc.EmptyCall(metadata.AppendToOutgoingContext(ctx, "x-sleep", "route-timeout"), &testpb.Empty{})
		if status.Code(err) != codes.DeadlineExceeded {
			return fmt.Errorf("got %v, want DeadlineExceeded from the agent's route timeout", err)
		}
		return waitEvent(ctx, tc, "route-timeout")
	case "cancel":
		sctx, cancel := context.WithCancel(ctx)
		s, err := tc.FullDuplexCall(metadata.AppendToOutgoingContext(sctx, "x-cancel-event", "cancel"))
		if err != nil {
			cancel()
			return err
		}
		if err := s.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 10}}}); err != nil {
			cancel()
			return err
		}
		if _, err := s.Recv(); err != nil { // the stream is up end to end
			cancel()
			return err
		}
		cancel()
		if _, err := s.Recv(); status.Code(err) != codes.Canceled {
			return fmt.Errorf("after cancel: %v, want Canceled", err)
		}
		return waitEvent(ctx, tc, "cancel")
	default:
		return fmt.Errorf("unknown scenario")
	}
	return nil
}

// waitEvent asks the server (through the agent, on the same connection)
// what it saw for event name; the server answers once it saw it, or fails.
func waitEvent(ctx context.Context, tc testgrpc.TestServiceClient, name string) error {
	resp, err := tc.UnaryCall(metadata.AppendToOutgoingContext(ctx, "x-wait-event", name), &testpb.SimpleRequest{})
	if err != nil {
		return fmt.Errorf("server's view of %s: %w", name, err)
	}
	fmt.Printf("server saw %s: %s\n", name, resp.GetPayload().GetBody())
	return nil
}

// roleL7GRPCServe: ADDR. Serves the test gRPC service on ADDR until killed:
// an upstream in the meshed cgroup, as a same-node pod is (TestBenchL7).
func roleL7GRPCServe(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: ADDR")
	}
	lis, err := net.Listen("tcp", args[0])
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, newL7GRPCService())
	return s.Serve(lis)
}

// latReport is what the l7-grpc-lat role prints.
type latReport struct {
	P50us, P90us, P99us float64
	N                   int
	// The proxy's CPU per call (TestBenchL7 fills them in).
	cpuPerCall, userPerCall time.Duration `json:"-"`
}

// roleL7GRPCLatency: ADDR N. N sequential UnaryCalls (1 KiB each way) after
// N/10 warm-up calls; prints latency percentiles.
func roleL7GRPCLatency(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: ADDR N")
	}
	n, err := strconv.Atoi(args[1])
	if err != nil || n <= 0 || n > 1000000 {
		return fmt.Errorf("N %q: want 1..1000000", args[1])
	}
	cc, tc, err := grpcConn(args[0])
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req := &testpb.SimpleRequest{ResponseSize: 1024, Payload: &testpb.Payload{Body: make([]byte, 1024)}}
	lat := make([]time.Duration, 0, n)
	for i := range n + n/10 {
		t0 := time.Now()
		if _, err := tc.UnaryCall(ctx, req); err != nil {
			return fmt.Errorf("call %d: %w", i, err)
		}
		if i >= n/10 {
			lat = append(lat, time.Since(t0))
		}
	}
	slices.Sort(lat)
	us := func(q int) float64 { return float64(lat[len(lat)*q/100]) / 1e3 }
	return json.NewEncoder(os.Stdout).Encode(latReport{P50us: us(50), P90us: us(90), P99us: us(99), N: n})
}
