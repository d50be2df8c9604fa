package fraction

import (
	"testing"

	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

func TestPercent(t *testing.T) {
	if p := FromProto(&typev3.FractionalPercent{Numerator: 25, Denominator: typev3.FractionalPercent_TEN_THOUSAND}); p != (Percent{25, 10_000}) {
		t.Errorf("FromProto = %+v", p)
	}
	if p := FromProto(nil); p.Num != 0 || p.Draw() || p.Pick(0) {
		t.Errorf("nil: %+v passes", p)
	}
	if !All.Draw() || !All.Pick(99) || !(Percent{200, 100}).Pick(12345) {
		t.Error("100 % (or more) must always pass")
	}
	p := Percent{30, 100}
	n := 0
	for range 10000 {
		if p.Draw() {
			n++
		}
	}
	if n < 2700 || n > 3300 {
		t.Errorf("30%% drew %d of 10000", n)
	}
	if !p.Pick(29) || p.Pick(30) || !p.Pick(129) {
		t.Error("Pick is x mod 100 < 30")
	}
	if p.Lower(5).Num != 5 || p.Lower(90).Num != 30 {
		t.Error("Lower may only lower")
	}
}
