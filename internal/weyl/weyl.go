package weyl

import (
	"math/bits"
	"sync/atomic"
)

// step is 2^64 divided by the golden ratio, rounded to odd.
const step = 0x9E3779B97F4A7C15

// Point maps the k-th pick into [0, total). The points k·φ⁻¹ mod 1 (a Weyl
// sequence) are spread more evenly than random ones: over any n
// consecutive picks the share of each sub-range of [0, total) is off by
// O(log n) picks, not O(√n), while consecutive picks still interleave
// (80/20 gives a a b a a b a b ..., never long runs), and any periodic
// pattern in the callers gets an even share too.
func Point(k, total uint64) uint64 {
	hi, _ := bits.Mul64(k*step, total)
	return hi
}

// Seq numbers the picks of one weighted choice; the zero value is ready.
// It is safe for concurrent use.
type Seq struct{ n atomic.Uint64 }

// Next returns the next point in [0, total); total must be positive.
func (s *Seq) Next(total uint64) uint64 { return Point(s.n.Add(1), total) }
