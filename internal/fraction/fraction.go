// Package fraction is Envoy's FractionalPercent (numerator over 100, 10 000
// or 1 000 000) as a sampler: fault percentages, rate-limit enablement,
// mirror fractions, access-log runtime filters.
package fraction

import (
	"math/rand/v2"

	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// Percent is Num out of Den.
type Percent struct{ Num, Den uint64 }

// All is 100 %.
var All = Percent{Num: 100, Den: 100}

// FromProto reads a FractionalPercent (nil: 0 %, the proto's default).
func FromProto(p *typev3.FractionalPercent) Percent {
	den := uint64(100)
	switch p.GetDenominator() {
	case typev3.FractionalPercent_TEN_THOUSAND:
		den = 10_000
	case typev3.FractionalPercent_MILLION:
		den = 1_000_000
	}
	return Percent{Num: uint64(p.GetNumerator()), Den: den}
}

// Pick reports whether x (uniform over uint64: a random draw or a hash)
// falls in the fraction; a numerator at or above the denominator always
// passes.
func (p Percent) Pick(x uint64) bool { return p.Num >= p.Den || x%p.Den < p.Num }

// Draw decides at random.
func (p Percent) Draw() bool { return p.Num >= p.Den || (p.Num > 0 && rand.Uint64N(p.Den) < p.Num) }

// Lower returns the fraction with numerator n when that is smaller (a
// request may only lower a configured percentage).
func (p Percent) Lower(n uint64) Percent {
	if n < p.Num {
		p.Num = n
	}
	return p
}
