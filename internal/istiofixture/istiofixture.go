// Package istiofixture loads the Istio config dumps the project tests
// against (../shared/fixtures/istio beside the repository, see its
// SOURCES.md) as resource sets. Tests skip when the folder is absent.
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

// Set reads and decodes the named dump; it skips the test when the
// fixtures are absent and fails it when the dump does not decode.
func Set(tb testing.TB, name string) *resources.Set {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join(Dir(), name))
	if os.IsNotExist(err) {
		tb.Skipf("Istio fixture %s not present in %s", name, Dir())
	}
	if err != nil {
		tb.Fatal(err)
	}
	set, _, err := resources.DecodeConfigDump(data)
	if err != nil {
		tb.Fatalf("decode %s: %v", name, err)
	}
	return set
}
