package xds_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/server"
	"github.com/meshlet/meshlet/pkg/xds/store"
)

func TestSyncUpdateRemove(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			srv := startServer(t, "127.0.0.1:0", server.Options{})
			want := smallSet(3)
			if err := srv.srv.SetResources(ctx, want); err != nil {
				t.Fatal(err)
			}
			tc := startClient(t, xds.Config{Address: srv.addr, Delta: m.delta}, newRecorder())
			converge(t, tc, want)
			st := tc.c.Status()
			if !st.Connected || !st.Ready || st.Source != xds.SourceControlPlane {
				t.Fatalf("status after sync: %+v", st)
			}
			if st.Types[xds.ClusterType].Version == "" || st.Types[xds.ClusterType].Resources != 3 {
				t.Errorf("cluster type status: %+v", st.Types[xds.ClusterType])
			}
			// EDS resources are held in their compact form (wire bytes and
			// an endpoint list), not as decoded message trees.
			synced, _ := tc.rec.get()
			for n, la := range synced.Endpoints {
				if !la.Compact() {
					t.Errorf("endpoints %q held as a decoded message", n)
				}
			}

			// Update a cluster and a route.
			want = cloneSet(want)
			want.Clusters["c1"].ConnectTimeout = durationpb.New(7 * time.Second)
			want.Routes["http"].VirtualHosts[0].Domains = append(want.Routes["http"].VirtualHosts[0].Domains, "c0.example")
			if err := srv.srv.SetResources(ctx, want); err != nil {
				t.Fatal(err)
			}
			converge(t, tc, want)

			// Remove a listener; add a cluster with endpoints.
			want = cloneSet(want)
			delete(want.Listeners, "l2")
			want.Clusters["new"] = edsCluster("new")
			want.Endpoints["eds:new"] = cla("eds:new", "10.9.9.9")
			if err := srv.srv.SetResources(ctx, want); err != nil {
				t.Fatal(err)
			}
			converge(t, tc, want)
			got, _ := tc.rec.get()
			if _, ok := got.Listeners["l2"]; ok {
				t.Fatal("removed listener still applied")
			}

			// Remove a cluster: its endpoints leave the Set too.
			want = cloneSet(want)
			delete(want.Clusters, "c0")
			delete(want.Endpoints, "eds:c0")
			if err := srv.srv.SetResources(ctx, want); err != nil {
				t.Fatal(err)
			}
			converge(t, tc, want)
		})
	}
}

func TestNackInvalidResourceKeepsLastGood(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			nl := &nackLog{}
			srv := startServer(t, "127.0.0.1:0", server.Options{SkipValidation: true, Callbacks: nl.callbacks()})
			good := smallSet(2)
			if err := srv.srv.SetResources(ctx, good); err != nil {
				t.Fatal(err)
			}
			tc := startClient(t, xds.Config{Address: srv.addr, Delta: m.delta}, newRecorder())
			converge(t, tc, good)
			_, appliesBefore := tc.rec.get()

			bad := cloneSet(good)
			c := edsCluster("broken")
			c.ConnectTimeout = durationpb.New(-time.Second) // PGV: must be > 0
			bad.Clusters["broken"] = c
			bad.Clusters["c0"].ConnectTimeout = durationpb.New(3 * time.Second)
			if err := srv.srv.SetResources(ctx, bad); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "a CDS NACK at the server", nil, func() bool { return len(nl.all()) > 0 })
			n := nl.all()[0]
			if !strings.HasPrefix(n, "CDS") || !strings.Contains(n, `"broken"`) || !strings.Contains(n, "ConnectTimeout") {
				t.Fatalf("NACK does not say what and why: %q", n)
			}
			// SotW rejects the response as a whole; delta (like Envoy)
			// accepts the valid resources and keeps the previous version
			// of the invalid one (here: none).
			expect := good
			if m.delta {
				expect = cloneSet(bad)
				delete(expect.Clusters, "broken")
				converge(t, tc, expect)
			}
			got, applies := tc.rec.get()
			if d := diffSets(got, expect); d != "" || (!m.delta && applies != appliesBefore) {
				t.Fatalf("NACKed update was applied (applies %d -> %d): %s", appliesBefore, applies, d)
			}
			cur := tc.c.Current()
			if len(cur.Nacks) != 1 || cur.Nacks[0].Name != "broken" || cur.Nacks[0].Failed == nil {
				t.Fatalf("client NACK state: %+v", cur.Nacks)
			}
			if st := tc.c.Status(); st.LastNACK == nil || !strings.Contains(st.LastNACK.Detail, "ConnectTimeout") {
				t.Fatalf("status LastNACK: %+v", st.LastNACK)
			}

			// A fixed config is accepted again and clears the NACK.
			fixed := cloneSet(bad)
			fixed.Clusters["broken"].ConnectTimeout = durationpb.New(time.Second)
			fixed.Endpoints["eds:broken"] = cla("eds:broken", "10.3.3.3")
			if err := srv.srv.SetResources(ctx, fixed); err != nil {
				t.Fatal(err)
			}
			converge(t, tc, fixed)
			waitFor(t, "NACK cleared", nil, func() bool { return len(tc.c.Current().Nacks) == 0 })
			// go-control-plane resends a NACKed SotW response at once; the
			// client must not answer in a tight loop.
			if n := len(nl.all()); n > 50 {
				t.Fatalf("%d NACKs sent: NACK loop", n)
			}
		})
	}
}

func TestNackWhenApplierRejects(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			nl := &nackLog{}
			srv := startServer(t, "127.0.0.1:0", server.Options{Callbacks: nl.callbacks()})
			good := smallSet(2)
			if err := srv.srv.SetResources(ctx, good); err != nil {
				t.Fatal(err)
			}
			rec := newRecorder()
			rec.reject = func(s *resources.Set) error {
				if _, ok := s.Listeners["forbidden"]; ok {
					return fmt.Errorf("listener %q: port 1 is reserved", "forbidden")
				}
				return nil
			}
			tc := startClient(t, xds.Config{Address: srv.addr, Delta: m.delta}, rec)
			converge(t, tc, good)
			bad := cloneSet(good)
			bad.Listeners["forbidden"] = tcpListener("forbidden", 1, "c0")
			if err := srv.srv.SetResources(ctx, bad); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "an LDS NACK", nil, func() bool { return len(nl.all()) > 0 })
			if n := nl.all()[0]; !strings.HasPrefix(n, "LDS") || !strings.Contains(n, "port 1 is reserved") {
				t.Fatalf("NACK: %q (all: %q)", n, nl.all())
			}
			got, _ := rec.get()
			if d := diffSets(got, good); d != "" {
				t.Fatalf("previous Set not in force: %s", d)
			}
		})
	}
}

func TestDeltaStepByStep(t *testing.T) {
	ctx := context.Background()
	srv := startServer(t, "127.0.0.1:0", server.Options{})
	cur := resources.New()
	if err := srv.srv.SetResources(ctx, cur); err != nil {
		t.Fatal(err)
	}
	tc := startClient(t, xds.Config{Address: srv.addr, Delta: true}, newRecorder())
	converge(t, tc, cur)
	for i := 0; i < 5; i++ {
		cur = cloneSet(cur)
		name := fmt.Sprintf("s%d", i)
		cur.Clusters[name] = edsCluster(name)
		cur.Endpoints["eds:"+name] = cla("eds:"+name, fmt.Sprintf("10.2.0.%d", i+1))
		cur.Listeners["l"+name] = tcpListener("l"+name, uint32(7000+i), name)
		if err := srv.srv.SetResources(ctx, cur); err != nil {
			t.Fatal(err)
		}
		converge(t, tc, cur)
	}
	for i := 0; i < 5; i++ {
		cur = cloneSet(cur)
		name := fmt.Sprintf("s%d", i)
		delete(cur.Clusters, name)
		delete(cur.Endpoints, "eds:"+name)
		delete(cur.Listeners, "l"+name)
		if err := srv.srv.SetResources(ctx, cur); err != nil {
			t.Fatal(err)
		}
		converge(t, tc, cur)
	}
}

func TestReconnectAfterServerRestart(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			srv := startServer(t, "127.0.0.1:0", server.Options{})
			addr := srv.addr
			first := smallSet(2)
			if err := srv.srv.SetResources(ctx, first); err != nil {
				t.Fatal(err)
			}
			tc := startClient(t, xds.Config{Address: addr, Delta: m.delta}, newRecorder())
			converge(t, tc, first)
			srv.stop()
			waitFor(t, "client to notice the server is gone", nil, func() bool { return !tc.c.Status().Connected })
			if got, _ := tc.rec.get(); diffSets(got, first) != "" {
				t.Fatal("config changed while disconnected")
			}
			second := smallSet(3)
			delete(second.Listeners, "l0")
			srv2 := startServer(t, addr, server.Options{})
			if err := srv2.srv.SetResources(ctx, second); err != nil {
				t.Fatal(err)
			}
			converge(t, tc, second)
			if st := tc.c.Status(); st.Streams < 2 {
				t.Fatalf("streams = %d, want a reconnect", st.Streams)
			}
		})
	}
}

func TestPersistedStateServedWhileControlPlaneDown(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.New(filepath.Join(dir, "xds.json"), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, "127.0.0.1:0", server.Options{})
	want := smallSet(2)
	// A static cluster with an inline load assignment round-trips too.
	want.Clusters["static"] = &clusterv3.Cluster{Name: "static", ConnectTimeout: durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}, LoadAssignment: claMsg("static", "127.0.0.1")}
	if err := srv.srv.SetResources(ctx, want); err != nil {
		t.Fatal(err)
	}
	expect := cloneSet(want)
	expect.Endpoints["static"] = cla("static", "127.0.0.1")
	tc := startClient(t, xds.Config{Address: srv.addr, Persister: st}, newRecorder())
	converge(t, tc, expect)
	waitFor(t, "state persisted", nil, func() bool {
		p, err := st.Load(ctx)
		return err == nil && p != nil && diffSets(p.Set, expect) == ""
	})
	tc.stop(t)
	srv.stop()

	// A closed port: the control plane is unreachable.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	tc2 := startClient(t, xds.Config{Address: dead, Persister: st}, newRecorder())
	converge(t, tc2, expect)
	waitFor(t, "status to report the persisted source", nil, func() bool { return tc2.c.Status().Source == xds.SourcePersisted })
	s := tc2.c.Status()
	if !s.Ready || s.Connected {
		t.Fatalf("status while serving persisted state: %+v", s)
	}
}

func TestOversizedResponse(t *testing.T) {
	ctx := context.Background()
	srv := startServer(t, "127.0.0.1:0", server.Options{})
	if err := srv.srv.SetResources(ctx, smallSet(50)); err != nil {
		t.Fatal(err)
	}
	tc := startClient(t, xds.Config{Address: srv.addr, MaxRecvMsgSize: 1024}, newRecorder())
	waitFor(t, "an oversized-message error", nil, func() bool {
		return strings.Contains(tc.c.Status().LastError, "message size limit of 1024 bytes")
	})
	if got, n := tc.rec.get(); got != nil || n != 0 {
		t.Fatalf("something was applied: %d applies", n)
	}
	t.Logf("error: %s", tc.c.Status().LastError)
}

func TestOnDemand(t *testing.T) {
	ctx := context.Background()
	srv := startServer(t, "127.0.0.1:0", server.Options{})
	all := smallSet(4)
	if err := srv.srv.SetResources(ctx, all); err != nil {
		t.Fatal(err)
	}
	tc := startClient(t, xds.Config{Address: srv.addr, Delta: true, OnDemand: true, WarmTimeout: 2 * time.Second}, newRecorder())
	wctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	if err := tc.c.WantCluster(wctx, "c2"); err != nil {
		t.Fatalf("Want c2: %v", err)
	}
	got, _ := tc.rec.get()
	if len(got.Clusters) != 1 || got.Clusters["c2"] == nil || got.Endpoints["eds:c2"] == nil || len(got.Listeners) != len(all.Listeners) {
		t.Fatalf("on-demand set: %d clusters %d endpoints %d listeners", len(got.Clusters), len(got.Endpoints), len(got.Listeners))
	}
	if err := tc.c.WantCluster(wctx, "c3"); err != nil {
		t.Fatalf("Want c3: %v", err)
	}
	// Unknown resource: bounded wait.
	short, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	if err := tc.c.WantCluster(short, "nope"); err == nil {
		t.Fatal("Want of a missing cluster succeeded")
	}
	tc.c.Forget(xds.ClusterType, "c2")
	waitFor(t, "c2 dropped after Forget", tc.rec, func() bool {
		s, _ := tc.rec.get()
		return s.Clusters["c2"] == nil && s.Endpoints["eds:c2"] == nil && s.Clusters["c3"] != nil
	})
}

func TestClusterIDHeaderAndBearerToken(t *testing.T) {
	tokenPath := filepath.Join(t.TempDir(), "istio-token")
	if err := os.WriteFile(tokenPath, []byte("jwt-abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan metadata.MD, 4)
	cb := serverv3.CallbackFuncs{
		StreamOpenFunc: func(ctx context.Context, _ int64, _ string) error {
			md, _ := metadata.FromIncomingContext(ctx)
			select {
			case got <- md:
			default:
			}
			return nil
		},
	}
	srv := startServer(t, "127.0.0.1:0", server.Options{Callbacks: cb})
	if err := srv.srv.SetResources(context.Background(), smallSet(1)); err != nil {
		t.Fatal(err)
	}
	id := xds.IstioIdentity{PodIP: "10.0.0.9", PodName: "agent-x", Namespace: "meshlet"}
	node, err := id.Node()
	if err != nil {
		t.Fatal(err)
	}
	tc := startClient(t, xds.Config{Address: srv.addr, Node: node, ClusterID: "Kubernetes", TokenFile: tokenPath}, newRecorder())
	converge(t, tc, smallSet(1))
	select {
	case md := <-got:
		if v := md.Get("clusterid"); len(v) != 1 || v[0] != "Kubernetes" {
			t.Errorf("clusterid header = %v", v)
		}
		if v := md.Get("authorization"); len(v) != 1 || v[0] != "Bearer jwt-abc" {
			t.Errorf("authorization header = %v", v)
		}
	case <-time.After(waitTimeout):
		t.Fatal("no stream seen")
	}
}

func TestCorruptPersistedStateIsNotApplied(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "xds.json")
	if err := os.WriteFile(path, []byte(`{"format":"meshlet.xds.persisted/v1","sha256":"00","body":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := store.New(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, "127.0.0.1:0", server.Options{})
	want := smallSet(1)
	if err := srv.srv.SetResources(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	var first *resources.Set
	rec.reject = func(s *resources.Set) error {
		if first == nil {
			first = s
		}
		return nil
	}
	tc := startClient(t, xds.Config{Address: srv.addr, Persister: st}, rec)
	converge(t, tc, want)
	if d := diffSets(first, want); d != "" {
		t.Fatalf("first applied Set is not the control plane's: %s", d)
	}
	matches, _ := filepath.Glob(path + ".corrupt-*")
	if len(matches) != 1 {
		t.Fatalf("corrupt file not moved aside: %v", matches)
	}
}
