package xds_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"runtime"
	"runtime/pprof"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/server"
)

const (
	benchClusters     = 10000
	benchEndpointsPer = 10
	benchHTTPListen   = 100
)

// bigSet: 10k EDS clusters with 10 endpoints each (100k endpoints), one TCP
// listener per cluster, 100 HTTP listeners each with a route configuration
// of 100 virtual hosts.
func bigSet() *resources.Set {
	s := resources.New()
	for i := 0; i < benchClusters; i++ {
		name := fmt.Sprintf("outbound|%d||svc%d.ns.svc.cluster.local", 8000+i%1000, i)
		s.Clusters[name] = edsCluster(name)
		ips := make([]string, benchEndpointsPer)
		for j := range ips {
			ips[j] = fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j+1)
		}
		s.Endpoints["eds:"+name] = cla("eds:"+name, ips...)
		l := tcpListener(fmt.Sprintf("10.96.%d.%d_%d", i/250, i%250, 8000+i%1000), uint32(8000+i%1000), name)
		s.Listeners[l.Name] = l
	}
	names := make([]string, 0, benchClusters)
	for n := range s.Clusters {
		names = append(names, n)
	}
	for i := 0; i < benchHTTPListen; i++ {
		rn := fmt.Sprintf("%d", 9000+i)
		s.Listeners["http_"+rn] = httpListener("http_"+rn, uint32(9000+i), rn)
		s.Routes[rn] = routeConfig(rn, names[i*100:(i+1)*100]...)
	}
	return s
}

type walkApplier struct {
	want    func(*resources.Set) bool
	matched chan struct{}
	walked  atomic.Int64
}

func (w *walkApplier) Apply(_ context.Context, s *resources.Set) error {
	n := 0
	for _, la := range s.Endpoints {
		n += len(la.Endpoints())
	}
	for _, l := range s.Listeners {
		n += len(l.GetFilterChains())
	}
	for _, r := range s.Routes {
		n += len(r.GetVirtualHosts())
	}
	w.walked.Store(int64(n))
	if w.want(s) {
		select {
		case w.matched <- struct{}{}:
		default:
		}
	}
	return nil
}

// BenchmarkDeliver measures, through a real go-control-plane server on
// loopback, the time and peak heap to deliver and apply the big set, then
// the end-to-end latency of a single endpoint change.
//
//	go test ./pkg/xds/ -run '^$' -bench Deliver -benchtime 1x
func BenchmarkDeliver(b *testing.B) {
	for _, m := range modes() {
		b.Run(m.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchDeliver(b, m.delta)
			}
		})
	}
}

func benchDeliver(b *testing.B, delta bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	set := bigSet()
	srv := startServer(b, "127.0.0.1:0", server.Options{Logger: zap.NewNop(), MaxMsgSize: 512 << 20})
	if err := srv.srv.SetResources(ctx, set); err != nil {
		b.Fatal(err)
	}
	changedName := "eds:" + func() string {
		for n := range set.Clusters {
			return n
		}
		return ""
	}()
	app := &walkApplier{matched: make(chan struct{}, 1)}
	full := func(s *resources.Set) bool {
		return len(s.Clusters) == benchClusters && len(s.Endpoints) == benchClusters &&
			len(s.Listeners) == benchClusters+benchHTTPListen && len(s.Routes) == benchHTTPListen
	}
	app.want = full

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		var m runtime.MemStats
		for {
			select {
			case <-stopSampling:
				return
			case <-t.C:
				runtime.ReadMemStats(&m)
				if m.HeapInuse > peak.Load() {
					peak.Store(m.HeapInuse)
				}
			}
		}
	}()

	b.ResetTimer()
	start := time.Now()
	c, err := xds.NewClient(xds.Config{Address: srv.addr, Delta: delta, Node: xds.NewNode("bench", "bench", nil),
		MaxRecvMsgSize: 512 << 20, Logger: zap.NewNop()}, app)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	select {
	case <-app.matched:
	case <-time.After(5 * time.Minute):
		b.Fatal("big set not delivered within 5 minutes")
	}
	deliver := time.Since(start)
	b.StopTimer()
	close(stopSampling)
	<-sampled
	b.ReportMetric(deliver.Seconds(), "deliver-s")
	b.ReportMetric(float64(peak.Load()-min(base, peak.Load()))/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(app.walked.Load()), "walked")

	// One endpoint changes.
	next := cloneSet(set)
	next.Endpoints[changedName] = cla(changedName, "192.0.2.1")
	app.want = func(s *resources.Set) bool {
		la := s.Endpoints[changedName]
		return la != nil && len(la.Endpoints()) == 1
	}
	t0 := time.Now()
	if err := srv.srv.SetResources(ctx, next); err != nil {
		b.Fatal(err)
	}
	setDur := time.Since(t0)
	select {
	case <-app.matched:
	case <-time.After(2 * time.Minute):
		b.Fatal("endpoint change not delivered")
	}
	total := time.Since(t0)
	b.ReportMetric(float64(total.Milliseconds()), "ep-change-ms")
	b.ReportMetric(float64((total - setDur).Milliseconds()), "ep-change-after-snapshot-ms")
	cancel()
	<-done
}

// BenchmarkEndpointChange measures one endpoint change of the big set from
// SetResources to the applier, through a real server on loopback (the
// server reuses the unchanged messages, so this is mostly the client).
//
//	go test ./pkg/xds/ -run '^$' -bench EndpointChange -benchtime 10x
func BenchmarkEndpointChange(b *testing.B) {
	for _, m := range modes() {
		b.Run(m.name, func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			set := bigSet()
			srv := startServer(b, "127.0.0.1:0", server.Options{Logger: zap.NewNop(), MaxMsgSize: 512 << 20})
			if err := srv.srv.SetResources(ctx, set); err != nil {
				b.Fatal(err)
			}
			app := &walkApplier{matched: make(chan struct{}, 1)}
			app.want = func(s *resources.Set) bool { return len(s.Endpoints) == benchClusters }
			c, err := xds.NewClient(xds.Config{Address: srv.addr, Delta: m.delta, Node: xds.NewNode("bench", "bench", nil),
				MaxRecvMsgSize: 512 << 20, Logger: zap.NewNop()}, app)
			if err != nil {
				b.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			wait := func(what string) {
				select {
				case <-app.matched:
				case <-time.After(2 * time.Minute):
					b.Fatalf("%s not delivered", what)
				}
			}
			wait("big set")
			var changed string
			for n := range set.Endpoints {
				changed = n
				break
			}
			if f := os.Getenv("MESHLET_BENCH_CHANGE_CPU"); f != "" {
				// Profile the changes only, not the initial delivery.
				out, err := os.Create(f + "." + m.name)
				if err != nil {
					b.Fatal(err)
				}
				if err := pprof.StartCPUProfile(out); err != nil {
					b.Fatal(err)
				}
				defer func() { pprof.StopCPUProfile(); out.Close() }()
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				next := *set
				next.Endpoints = maps.Clone(set.Endpoints)
				ip := fmt.Sprintf("192.0.2.%d", i%250+1)
				next.Endpoints[changed] = cla(changed, ip)
				app.want = func(s *resources.Set) bool {
					la := s.Endpoints[changed]
					return la != nil && la.Endpoints()[0].Addr.String() == ip
				}
				if err := srv.srv.SetResources(ctx, &next); err != nil {
					b.Fatal(err)
				}
				wait("endpoint change")
				set = &next
			}
			b.StopTimer()
			cancel()
			<-done
		})
	}
}
