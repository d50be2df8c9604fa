package sockmap

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/internal/privtest"
)

// TestGeneratedObjectsUpToDate rebuilds the BPF objects with the exact
// go:generate command of gen.go into a temporary folder and compares them
// byte for byte with the committed ones: editing bpf/ without `make
// generate` fails here. Needs clang (installed by .ci/deps.sh).
func TestGeneratedObjectsUpToDate(t *testing.T) {
	if os.Getenv("MESHLET_VM") == "1" {
		t.Skip("inside the test/vm kernel matrix: the host run checks the objects")
	}
	if _, err := exec.LookPath("clang"); err != nil {
		privtest.Unavailable(t, "clang not installed: cannot check the committed BPF objects")
	}
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(src), "\n") {
		if strings.HasPrefix(l, "//go:generate ") {
			line = strings.TrimPrefix(l, "//go:generate ")
		}
	}
	args := splitQuoted(t, line)
	if len(args) < 3 || args[0] != "go" || args[1] != "tool" || args[2] != "bpf2go" {
		t.Fatalf("unexpected go:generate line %q", line)
	}
	out := t.TempDir()
	cmd := exec.Command(args[0], append([]string{"tool", "bpf2go", "-output-dir", out}, args[3:]...)...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=sockmap")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bpf2go: %v\n%s", err, b)
	}
	files, _ := filepath.Glob(filepath.Join(out, "meshlet_*"))
	if len(files) == 0 {
		t.Fatal("bpf2go produced nothing")
	}
	for _, f := range files {
		want, _ := os.ReadFile(f)
		got, err := os.ReadFile(filepath.Base(f))
		if err != nil {
			t.Fatalf("committed %s missing: run make generate", filepath.Base(f))
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: bpf/ changed without `make generate`", filepath.Base(f))
		}
	}
}

// splitQuoted splits a command line on spaces, keeping "quoted strings".
func splitQuoted(t *testing.T, s string) []string {
	var out []string
	var cur strings.Builder
	inQ := false
	for _, r := range s {
		switch {
		case r == '"':
			inQ = !inQ
		case r == ' ' && !inQ:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if inQ {
		t.Fatalf("unbalanced quotes in %q", s)
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}
