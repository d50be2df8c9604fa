package xds_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/internal/istiofixture"
	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/server"
)

func fixturePath(t *testing.T, name string) string { return istiofixture.Path(t, name) }

// containsAll reports the first resource of want missing from (or different
// in) got.
func containsAll(got, want *resources.Set) string {
	if got == nil {
		return "nothing applied"
	}
	for n, v := range want.Listeners {
		if !proto.Equal(got.Listeners[n], v) {
			return "listener " + n
		}
	}
	for n, v := range want.Routes {
		if !proto.Equal(got.Routes[n], v) {
			return "route " + n
		}
	}
	for n, v := range want.Clusters {
		if !proto.Equal(got.Clusters[n], v) {
			return "cluster " + n
		}
	}
	for n, v := range want.Endpoints {
		if !got.Endpoints[n].Equal(v) {
			return "endpoints " + n
		}
	}
	return ""
}

func TestIstioFixturesThroughEmbeddedServer(t *testing.T) {
	for _, f := range []string{"istio-configdump-1.json", "istio-configdump-2.json", "istio-configdump-4-lds-only.json", "istio-configdump-5-eds-only.json"} {
		for _, m := range modes() {
			t.Run(f+"/"+m.name, func(t *testing.T) {
				path := fixturePath(t, f)
				want, _, err := server.LoadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				want = reachable(want)
				srv := startServer(t, "127.0.0.1:0", server.Options{ConfigPath: path})
				tc := startClient(t, xds.Config{Address: srv.addr, Delta: m.delta, WarmTimeout: 500 * time.Millisecond}, newRecorder())
				if len(want.Clusters) == 0 && len(want.Endpoints) > 0 {
					// EDS-only dump: no cluster names them; ask by name.
					ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
					defer cancel()
					var wg sync.WaitGroup
					errs := make(chan error, len(want.Endpoints))
					for n := range want.Endpoints {
						wg.Add(1)
						go func() { defer wg.Done(); errs <- tc.c.Want(ctx, xds.EndpointType, n) }()
					}
					wg.Wait()
					close(errs)
					for err := range errs {
						if err != nil {
							t.Fatal(err)
						}
					}
				}
				var missing string
				waitFor(t, "every fixture resource at the client", tc.rec, func() bool {
					got, _ := tc.rec.get()
					missing = containsAll(got, want)
					return missing == ""
				})
				got, _ := tc.rec.get()
				t.Logf("%s: %d listeners, %d routes, %d clusters, %d endpoints", f, len(got.Listeners), len(got.Routes), len(got.Clusters), len(got.Endpoints))
			})
		}
	}
}

// Fixture 1's virtualInbound was NACKed by Envoy (an EnvoyFilter injected a
// Lua filter without source code). Served to the client it must be NACKed
// too, with the same reason, and the rest must stay in force.
func TestIstioInvalidLuaListenerIsNacked(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			path := fixturePath(t, "istio-configdump-1.json")
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			good, issues, err := resources.DecodeConfigDump(data)
			if err != nil {
				t.Fatal(err)
			}
			good = reachable(good)
			var failed *listenerv3.Listener
			for _, is := range issues {
				if is.Kind == resources.IssueErrorState && is.Name == "virtualInbound" {
					failed = &listenerv3.Listener{}
					if err := is.Failed.UnmarshalTo(failed); err != nil {
						t.Fatal(err)
					}
				}
			}
			if failed == nil {
				t.Fatal("fixture has no failed virtualInbound")
			}
			nl := &nackLog{}
			srv := startServer(t, "127.0.0.1:0", server.Options{SkipValidation: true, Callbacks: nl.callbacks()})
			if err := srv.srv.SetResources(context.Background(), good); err != nil {
				t.Fatal(err)
			}
			tc := startClient(t, xds.Config{Address: srv.addr, Delta: m.delta, WarmTimeout: 500 * time.Millisecond}, newRecorder())
			waitFor(t, "fixture at the client", tc.rec, func() bool { got, _ := tc.rec.get(); return containsAll(got, good) == "" })

			bad := cloneSet(good)
			bad.Listeners["virtualInbound"] = failed
			if err := srv.srv.SetResources(context.Background(), bad); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "LDS NACK", nil, func() bool { return len(nl.all()) > 0 })
			n := nl.all()[0]
			if !strings.HasPrefix(n, "LDS") || !strings.Contains(n, `"virtualInbound"`) || !strings.Contains(n, "Lua") || !strings.Contains(strings.ToLower(n), "specifier") {
				t.Fatalf("NACK does not say what and why: %s", n)
			}
			t.Logf("NACK: %s", n)
			got, _ := tc.rec.get()
			if _, ok := got.Listeners["virtualInbound"]; ok {
				t.Fatal("invalid listener applied")
			}
			if miss := containsAll(got, good); miss != "" {
				t.Fatalf("last good config lost: %s", miss)
			}
		})
	}
}

// reachable drops the load assignments that xDS does not deliver: a config
// dump lists endpoints for every cluster, but EDS serves only those of EDS
// clusters (by service name). Dumps without clusters keep all endpoints.
func reachable(s *resources.Set) *resources.Set {
	if len(s.Clusters) == 0 {
		return s
	}
	out := cloneSet(s)
	eds := map[string]bool{}
	for n, c := range s.Clusters {
		if c.GetType() == clusterv3.Cluster_EDS {
			if sn := c.GetEdsClusterConfig().GetServiceName(); sn != "" {
				eds[sn] = true
			} else {
				eds[n] = true
			}
		}
	}
	for n := range out.Endpoints {
		if !eds[n] {
			delete(out.Endpoints, n)
		}
	}
	return out
}
