// Package istiofixture loads the Istio config dumps the project tests
// against (../shared/fixtures/istio beside the repository, see its
// SOURCES.md) as paths, bytes or resource sets. Tests skip when the folder
// is absent, and fail in CI, where it is always provided.
package istiofixture

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/meshlet/meshlet/pkg/resources"
)

// Dumps are the fixtures that carry listeners.
var Dumps = []string{"istio-configdump-1.json", "istio-configdump-2.json", "istio-configdump-4-lds-only.json"}

// Dir is the fixture folder: ../shared/fixtures/istio from the module root.
func Dir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		// A -trimpath build: from a package two levels below the root.
		return filepath.Join("..", "..", "..", "shared", "fixtures", "istio")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "shared", "fixtures", "istio")
}

// Path returns the named dump's path. Absent, it skips the test, or fails
// it in CI (CI=true), where the fixtures are always provided.
func Path(tb testing.TB, name string) string {
	tb.Helper()
	p := filepath.Join(Dir(), name)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("Istio fixture %s missing in CI: %v", name, err)
		}
		tb.Skipf("Istio fixture %s not present in %s: %v", name, Dir(), err)
	}
	return p
}

// Read returns the named dump's bytes (see Path for a missing one).
func Read(tb testing.TB, name string) []byte {
	tb.Helper()
	data, err := os.ReadFile(Path(tb, name))
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// Set reads and decodes the named dump (see Path for a missing one); it
// fails the test when the dump does not decode.
func Set(tb testing.TB, name string) *resources.Set {
	tb.Helper()
	set, _, err := resources.DecodeConfigDump(Read(tb, name))
	if err != nil {
		tb.Fatalf("decode %s: %v", name, err)
	}
	return set
}
