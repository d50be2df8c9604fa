package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshlet/meshlet/pkg/resources"
	"github.com/meshlet/meshlet/pkg/xds"
)

func sample() *xds.Persisted {
	set := resources.New()
	set.Version = "cds=1,eds=2,lds=3,rds=4"
	set.Clusters["a"] = &clusterv3.Cluster{Name: "a", ConnectTimeout: durationpb.New(time.Second)}
	set.Endpoints["a"] = resources.NewAssignment(&endpointv3.ClusterLoadAssignment{ClusterName: "a"})
	set.Listeners["l"] = &listenerv3.Listener{Name: "l"}
	set.Routes["r"] = &routev3.RouteConfiguration{Name: "r"}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return &xds.Persisted{
		Set:      set,
		Versions: map[string]string{xds.ClusterType: "1", xds.ListenerType: "3"},
		Meta:     map[string]map[string]xds.ResourceMeta{xds.ClusterType: {"a": {Version: "1", LastUpdated: now}}},
		Saved:    now,
	}
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, err := New(filepath.Join(t.TempDir(), "sub", "state.json"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := s.Load(ctx); p != nil || err != nil {
		t.Fatalf("empty store: %v %v", p, err)
	}
	in := sample()
	if err := s.Save(ctx, in); err != nil {
		t.Fatal(err)
	}
	out, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if out.Set.Version != in.Set.Version || !out.Saved.Equal(in.Saved) || out.Versions[xds.ClusterType] != "1" {
		t.Fatalf("metadata differs: %+v", out)
	}
	if m := out.Meta[xds.ClusterType]["a"]; m.Version != "1" || !m.LastUpdated.Equal(in.Meta[xds.ClusterType]["a"].LastUpdated) {
		t.Fatalf("resource meta: %+v", m)
	}
	if !proto.Equal(out.Set.Clusters["a"], in.Set.Clusters["a"]) || !proto.Equal(out.Set.Listeners["l"], in.Set.Listeners["l"]) ||
		!proto.Equal(out.Set.Routes["r"], in.Set.Routes["r"]) || !out.Set.Endpoints["a"].Equal(in.Set.Endpoints["a"]) {
		t.Fatal("resources differ after round trip")
	}
	// No temporary files left behind.
	entries, _ := os.ReadDir(filepath.Dir(s.Path()))
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only the state file", len(entries))
	}
}

func TestCorruptFileIsMovedAsideNotApplied(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	s, err := New(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ctx, sample()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"truncated":   data[:len(data)/2],
		"bit flip":    flip(data),
		"not json":    []byte("\x00\x01garbage"),
		"wrong magic": []byte(`{"format":"other/v9","sha256":"","body":{}}`),
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(path, bad, 0o600); err != nil {
				t.Fatal(err)
			}
			p, err := s.Load(ctx)
			if err == nil || p != nil {
				t.Fatalf("corrupt file accepted: %v", p)
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "moved to") {
				t.Fatalf("unclear error: %v", err)
			}
			t.Logf("error: %v", err)
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("corrupt file still in place: %v", err)
			}
			matches, _ := filepath.Glob(path + ".corrupt-*")
			found := false
			for _, m := range matches {
				if b, _ := os.ReadFile(m); string(b) == string(bad) {
					found = true
				}
			}
			if !found {
				t.Fatal("corrupt content was not kept aside")
			}
		})
	}
}

func flip(b []byte) []byte {
	out := append([]byte(nil), b...)
	// Flip a byte inside the body (past the header).
	i := len(out) * 3 / 4
	if out[i] == 'A' {
		out[i] = 'B'
	} else {
		out[i] = 'A'
	}
	return out
}

func FuzzDecode(f *testing.F) {
	good, err := Encode(sample())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"format":"meshlet.xds.persisted/v1","sha256":"","body":{}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		// Whatever decodes must encode again.
		if _, err := Encode(p); err != nil {
			t.Fatalf("decoded state does not re-encode: %v", err)
		}
	})
}

// failAfter fails every write once n bytes went through.
type failAfter struct{ n int }

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		return 0, errors.New("disk full")
	}
	f.n -= len(p)
	return len(p), nil
}

// The streamed document decodes to what was encoded, for many resources,
// and a writer that fails part-way gives an error, never a short success.
func TestEncodeToStreams(t *testing.T) {
	in := sample()
	for i := range 500 {
		n := "c" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + time.Duration(i).String()
		in.Set.Clusters[n] = &clusterv3.Cluster{Name: n}
	}
	data, err := Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Decode(data)
	if err != nil {
		t.Fatalf("decode the streamed document: %v", err)
	}
	if len(out.Set.Clusters) != len(in.Set.Clusters) {
		t.Fatalf("%d clusters after the round trip, want %d", len(out.Set.Clusters), len(in.Set.Clusters))
	}
	for _, cut := range []int{0, 10, len(data) / 2, len(data) - 1} {
		if err := EncodeTo(&failAfter{n: cut}, in); err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Fatalf("writer failing after %d of %d bytes: err %v", cut, len(data), err)
		}
	}
	// One flipped byte in the body fails the checksum.
	i := strings.Index(string(data), `"set_version"`)
	bad := []byte(string(data))
	bad[i+2] = 'S'
	if _, err := Decode(bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("edited body: %v", err)
	}
}
