package e2e

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
)

// keepMarker starts the hand-written part of a benchmark report: what
// follows it (analysis, history) survives the next run of the benchmark,
// which rewrites only what comes before.
const keepMarker = "<!-- written by hand below: the benchmark keeps this line and what follows -->"

// spliceReport is the report file's new content: the generated part, then
// the marker and everything after it in the old content, if it has one.
func spliceReport(old, generated string) string {
	i := strings.Index(old, keepMarker)
	if i < 0 {
		return generated
	}
	return strings.TrimRight(generated, "\n") + "\n\n" + old[i:]
}

// writeReport writes a benchmark's generated Markdown to path, keeping the
// hand-written part of the file (see keepMarker).
func writeReport(t *testing.T, path, generated string) {
	t.Helper()
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("benchmark report: %v", err)
	}
	if err := os.WriteFile(path, []byte(spliceReport(string(old), generated)), 0o644); err != nil {
		t.Fatalf("benchmark report: %v", err)
	}
}

func TestSpliceReport(t *testing.T) {
	analysis := keepMarker + "\n\n## Analysis\n\nby hand\n"
	for _, c := range []struct{ old, gen, want string }{
		{"", "# new\n", "# new\n"},
		{"# old table\n", "# new\n", "# new\n"},
		{"# old table\n\n" + analysis, "# new\n\n", "# new\n\n" + analysis},
		{"# old\n" + analysis + "more " + keepMarker + "\n", "# new", "# new\n\n" + analysis + "more " + keepMarker + "\n"},
	} {
		if got := spliceReport(c.old, c.gen); got != c.want {
			t.Errorf("spliceReport(%q, %q) = %q, want %q", c.old, c.gen, got, c.want)
		}
	}
}
