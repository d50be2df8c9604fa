package weyl

import (
	"math"
	"testing"
)

// Over windows of 100 to 100k picks, starting anywhere, each share of an
// 70/20/10 split is within a few picks of its weight.
func TestSharesAreExactWithinAFewPicks(t *testing.T) {
	weights := []uint64{70, 20, 10}
	var s Seq
	for range 9999 {
		s.Next(100)
	}
	for _, n := range []int{100, 1000, 10000, 100000} {
		counts := make([]int, len(weights))
		for range n {
			x := s.Next(100)
			for i, w := range weights {
				if x < w {
					counts[i]++
					break
				}
				x -= w
			}
		}
		for i, w := range weights {
			want := float64(n) * float64(w) / 100
			if d := math.Abs(float64(counts[i]) - want); d > 8 {
				t.Errorf("n=%d branch %d: %d picks, want %.0f ± 8", n, i, counts[i], want)
			}
		}
	}
}

func TestPointRange(t *testing.T) {
	for _, total := range []uint64{1, 2, 3, 100, 1 << 40} {
		for k := uint64(0); k < 1000; k++ {
			if p := Point(k, total); p >= total {
				t.Fatalf("Point(%d, %d) = %d", k, total, p)
			}
		}
	}
}
