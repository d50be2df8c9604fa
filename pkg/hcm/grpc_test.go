package hcm

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// testService is a small grpc.testing.TestService used as the upstream.
type testService struct {
	testgrpc.UnimplementedTestServiceServer
	sawDeadline chan time.Duration // UnaryCall with x-sleep reports its deadline
	cancelled   chan struct{}      // FullDuplexCall reports its ctx ending
}

func (s *testService) UnaryCall(ctx context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-echo"); len(v) > 0 {
		grpc.SetHeader(ctx, metadata.Pairs("x-echo", v[0]))
		grpc.SetTrailer(ctx, metadata.Pairs("x-echo-trailer", v[0]))
	}
	if len(md.Get("x-sleep")) > 0 {
		dl, ok := ctx.Deadline()
		d := time.Duration(-1)
		if ok {
			d = time.Until(dl)
		}
		s.sawDeadline <- d
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if st := in.GetResponseStatus(); st != nil {
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: make([]byte, in.GetResponseSize())}}, nil
}

func (s *testService) StreamingOutputCall(in *testpb.StreamingOutputCallRequest, st testgrpc.TestService_StreamingOutputCallServer) error {
	for _, p := range in.GetResponseParameters() {
		if err := st.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
	}
	return nil
}

func (s *testService) StreamingInputCall(st testgrpc.TestService_StreamingInputCallServer) error {
	var total int32
	for {
		m, err := st.Recv()
		if err == io.EOF {
			return st.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: total})
		}
		if err != nil {
			return err
		}
		total += int32(len(m.GetPayload().GetBody()))
	}
}

func (s *testService) FullDuplexCall(st testgrpc.TestService_FullDuplexCallServer) error {
	defer func() {
		if st.Context().Err() != nil {
			select {
			case s.cancelled <- struct{}{}:
			default:
			}
		}
	}()
	if md, _ := metadata.FromIncomingContext(st.Context()); len(md.Get("x-send-header")) > 0 {
		if err := st.SendHeader(metadata.Pairs("x-early", "1")); err != nil {
			return err
		}
	}
	for {
		m, err := st.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		for _, p := range m.GetResponseParameters() {
			if err := st.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
				return err
			}
		}
	}
}

const grpcHCM = `{
  "stat_prefix": "grpc",
  "route_config": {"name": "grpc", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
    {"match": {"prefix": "/grpc.testing.TestService/", "grpc": {}}, "route": {"cluster": "grpc", "timeout": "0s", "max_stream_duration": {"grpc_timeout_header_max": "0s"}}},
    {"match": {"prefix": "/grpc.testing.UnimplementedService/"}, "route": {"cluster": "nowhere"}}
  ]}]}
}`

func startGRPC(t *testing.T) (*testService, netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc := &testService{sawDeadline: make(chan time.Duration, 1), cancelled: make(chan struct{}, 1)}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, svc)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return svc, netip.MustParseAddrPort(ln.Addr().String())
}

func grpcClient(t *testing.T, addr string) testgrpc.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

func TestGRPCThroughProxy(t *testing.T) {
	svc, gaddr := startGRPC(t)
	up := newUpstreams()
	up.set("grpc", Endpoint{Addr: gaddr, Protocol: UpstreamHTTP2})
	p := startProxy(t, mustHCM(t, grpcHCM), nil, up)
	tc := grpcClient(t, p.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()

	t.Run("unary with metadata and trailers", func(t *testing.T) {
		var hdr, trl metadata.MD
		octx := metadata.AppendToOutgoingContext(ctx, "x-echo", "v1")
		resp, err := tc.UnaryCall(octx, &testpb.SimpleRequest{ResponseSize: 100000, Payload: &testpb.Payload{Body: make([]byte, 200000)}}, grpc.Header(&hdr), grpc.Trailer(&trl))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetPayload().GetBody()) != 100000 {
			t.Errorf("payload %d", len(resp.GetPayload().GetBody()))
		}
		if hdr.Get("x-echo")[0] != "v1" || len(trl.Get("x-echo-trailer")) == 0 {
			t.Errorf("header %v trailer %v", hdr, trl)
		}
	})
	t.Run("status code and message", func(t *testing.T) {
		_, err := tc.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "no such thing"}})
		if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "no such thing" {
			t.Errorf("got %v", err)
		}
	})
	t.Run("server streaming", func(t *testing.T) {
		var params []*testpb.ResponseParameters
		for i := range 20 {
			params = append(params, &testpb.ResponseParameters{Size: int32(1000 * (i + 1))})
		}
		st, err := tc.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: params})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			m, err := st.Recv()
			if err == io.EOF {
				if i != 20 {
					t.Fatalf("got %d messages", i)
				}
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(m.GetPayload().GetBody()) != 1000*(i+1) {
				t.Fatalf("message %d size %d", i, len(m.GetPayload().GetBody()))
			}
		}
	})
	t.Run("client streaming", func(t *testing.T) {
		st, err := tc.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{27182, 8, 1828, 45904} {
			if err := st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, n)}}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := st.CloseAndRecv()
		if err != nil || resp.GetAggregatedPayloadSize() != 74922 {
			t.Fatalf("got %v %v", resp, err)
		}
	})
	t.Run("bidi ping-pong", func(t *testing.T) {
		// Each response must arrive before the next request is sent: no
		// buffering anywhere in the proxy.
		st, err := tc.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range []int32{31415, 9, 2653, 58979} {
			if err := st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: n}}}); err != nil {
				t.Fatal(err)
			}
			m, err := st.Recv()
			if err != nil || int32(len(m.GetPayload().GetBody())) != n {
				t.Fatalf("ping %d: %v", i, err)
			}
		}
		st.CloseSend()
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("end: %v", err)
		}
	})
	t.Run("headers before first message", func(t *testing.T) {
		// The server sends header metadata and then waits for the client;
		// the client waits for those headers before sending: the proxy must
		// not hold headers back until the first message.
		st, err := tc.FullDuplexCall(metadata.AppendToOutgoingContext(ctx, "x-send-header", "1"))
		if err != nil {
			t.Fatal(err)
		}
		md, err := st.Header()
		if err != nil || len(md.Get("x-early")) == 0 {
			t.Fatalf("header %v, %v", md, err)
		}
		st.CloseSend()
		if _, err := st.Recv(); err != io.EOF {
			t.Fatalf("end: %v", err)
		}
	})
	t.Run("deadline propagates as grpc-timeout", func(t *testing.T) {
		dctx, dcancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "x-sleep", "1"), 500*time.Millisecond)
		defer dcancel()
		_, err := tc.UnaryCall(dctx, &testpb.SimpleRequest{})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("got %v", err)
		}
		select {
		case d := <-svc.sawDeadline:
			if d <= 0 || d > 500*time.Millisecond {
				t.Errorf("upstream deadline %v", d)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("upstream never called")
		}
	})
	t.Run("cancellation reaches upstream", func(t *testing.T) {
		cctx, ccancel := context.WithCancel(ctx)
		st, err := tc.FullDuplexCall(cctx)
		if err != nil {
			t.Fatal(err)
		}
		st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}}})
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		ccancel()
		select {
		case <-svc.cancelled:
		case <-time.After(10 * time.Second):
			t.Fatal("upstream stream not cancelled")
		}
	})
	t.Run("no cluster is UNAVAILABLE", func(t *testing.T) {
		cc, _ := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		defer cc.Close()
		err := cc.Invoke(ctx, "/grpc.testing.UnimplementedService/UnimplementedCall", &testpb.Empty{}, &testpb.Empty{})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("got %v", err)
		}
	})
}

// The upstream resets a stream mid-flight (RST_STREAM after one message):
// the client must see an error, not a clean end of stream, and the access
// log says UC.
func TestGRPCUpstreamReset(t *testing.T) {
	gaddr := startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(200)
		// One empty-payload StreamingOutputCallResponse: 5-byte gRPC frame.
		w.Write([]byte{0, 0, 0, 0, 0})
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // RST_STREAM upstream
	}))
	up := newUpstreams()
	up.set("grpc", Endpoint{Addr: gaddr, Protocol: UpstreamHTTP2})
	p := startProxy(t, mustHCM(t, grpcHCM), nil, up)
	tc := grpcClient(t, p.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := tc.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatalf("first message: %v", err)
	}
	_, err = st.Recv()
	if err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("stream ended cleanly (%v) after upstream reset", err)
	}
	if c := status.Code(err); c != codes.Internal && c != codes.Unavailable {
		t.Errorf("code %v (%v)", c, err)
	}
	if le := p.log.last(t, 1); le.Flags != FlagUpstreamConnTerm {
		t.Errorf("flags %q, want UC", le.Flags)
	}
}

// BenchmarkGRPCUnary compares sequential unary latency direct and through
// the proxy, in one process (no cross-process scheduling noise).
func BenchmarkGRPCUnary(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, &testService{})
	go s.Serve(ln)
	defer s.Stop()
	gaddr := netip.MustParseAddrPort(ln.Addr().String())
	up := newUpstreams()
	up.set("grpc", Endpoint{Addr: gaddr, Protocol: UpstreamHTTP2})
	p := startProxy(b, mustHCM(b, grpcHCM), nil, up, func(o *Options) { o.Log = nil; o.AccessLog = nil })
	req := &testpb.SimpleRequest{ResponseSize: 1024, Payload: &testpb.Payload{Body: make([]byte, 1024)}}
	for _, tc := range []struct{ name, addr string }{{"direct", gaddr.String()}, {"proxy", p.addr}} {
		b.Run(tc.name, func(b *testing.B) {
			cc, err := grpc.NewClient(tc.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			c := testgrpc.NewTestServiceClient(cc)
			ctx := context.Background()
			if _, err := c.UnaryCall(ctx, req); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := c.UnaryCall(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The upstream server goes away under a live bidi stream whose client is
// still sending: the client must get an error promptly (not at its
// deadline), and the access log says UC.
func TestGRPCUpstreamStopped(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, &testService{sawDeadline: make(chan time.Duration, 1), cancelled: make(chan struct{}, 1)})
	go s.Serve(ln)
	defer s.Stop()
	up := newUpstreams()
	up.set("grpc", Endpoint{Addr: netip.MustParseAddrPort(ln.Addr().String()), Protocol: UpstreamHTTP2})
	p := startProxy(t, mustHCM(t, grpcHCM), nil, up)
	tc := grpcClient(t, p.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := tc.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}}})
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s.Stop()
	_, err = st.Recv()
	if err == nil || errors.Is(err, io.EOF) || status.Code(err) == codes.DeadlineExceeded {
		t.Fatalf("got %v after the upstream stopped", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("error took %v", d)
	}
	if le := p.log.last(t, 1); le.Flags != FlagUpstreamConnTerm {
		t.Errorf("flags %q, want UC", le.Flags)
	}
}
