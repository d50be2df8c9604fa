package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
)

// BenchmarkReloadOneChange reloads a 10k-listener, 10k-cluster JSON file
// (the TestBenchXDS shape) after one endpoint changed.
//
//	go test ./pkg/xds/server -run '^$' -bench Reload -benchmem
func BenchmarkReloadOneChange(b *testing.B) {
	path := filepath.Join(b.TempDir(), "resources.json")
	files := [2][]byte{
		bootstrapJSONPer(10000, 10, func(int) int { return 80 }),
		bootstrapJSONPer(10000, 10, func(i int) int { return 80 + map[bool]int{true: 1}[i == 5] }),
	}
	if err := os.WriteFile(path, files[0], 0o600); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	s, err := New(Options{ConfigPath: path, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("file %.1f MB; first load %v", float64(len(files[0]))/1e6, time.Since(start))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := os.WriteFile(path, files[(i+1)%2], 0o600); err != nil {
			b.Fatal(err)
		}
		changed, err := s.reload(context.Background())
		if err != nil || !changed {
			b.Fatalf("reload: changed=%v err=%v", changed, err)
		}
	}
}
