package accesslog

import (
	"strconv"
	"time"
)

// defaultTimeFormat is %START_TIME%'s format without an argument, e.g.
// 2026-11-24T09:31:02.517Z (UTC, milliseconds).
const defaultTimeFormat = "%Y-%m-%dT%H:%M:%E3SZ"

// tpiece is one piece of a strftime format: literal text, or a verb.
type tpiece struct {
	lit  string
	verb byte
	n    int // digits for %E<n>S, %<n>f
}

// parseStrftime compiles the strftime subset Envoy's START_TIME(...)
// documents: the C verbs (%Y %m %d %H %M %S %y %b %B %a %A %j %e %p %I %Z
// %z %T %F %D %R %s %n %t %%) plus %E<n>S (seconds with n fraction digits)
// and %<n>f / %f (n or 9 fraction digits). Unknown verbs are printed as
// written, which is what strftime does with them.
func parseStrftime(f string) []tpiece {
	var out []tpiece
	lit := func(s string) {
		if n := len(out); n > 0 && out[n-1].verb == 0 {
			out[n-1].lit += s
			return
		}
		out = append(out, tpiece{lit: s})
	}
	for i := 0; i < len(f); i++ {
		if f[i] != '%' || i+1 == len(f) {
			lit(f[i : i+1])
			continue
		}
		j := i + 1
		switch c := f[j]; {
		case c == 'E' && j+2 < len(f) && f[j+1] >= '1' && f[j+1] <= '9' && f[j+2] == 'S':
			out = append(out, tpiece{verb: 'S', n: int(f[j+1] - '0')})
			i = j + 2
		case c == 'E' && j+2 < len(f) && f[j+1] == '*' && f[j+2] == 'S':
			out = append(out, tpiece{verb: 'S', n: 9})
			i = j + 2
		case c >= '1' && c <= '9' && j+1 < len(f) && f[j+1] == 'f':
			out = append(out, tpiece{verb: 'f', n: int(c - '0')})
			i = j + 1
		case c == 'f':
			out = append(out, tpiece{verb: 'f', n: 9})
			i = j
		case c == '%':
			lit("%")
			i = j
		case c == 'n':
			lit("\n")
			i = j
		case c == 't':
			lit("\t")
			i = j
		case stringsContains("YmdHMSybBaAjepIZzTFDRs", c):
			out = append(out, tpiece{verb: c})
			i = j
		default:
			lit(f[i : j+1])
			i = j
		}
	}
	return out
}

func stringsContains(set string, c byte) bool {
	for i := 0; i < len(set); i++ {
		if set[i] == c {
			return true
		}
	}
	return false
}

func pad2(b []byte, n int) []byte {
	if n < 10 {
		b = append(b, '0')
	}
	return strconv.AppendInt(b, int64(n), 10)
}

func appendStrftime(b []byte, t time.Time, ps []tpiece) []byte {
	for _, p := range ps {
		switch p.verb {
		case 0:
			b = append(b, p.lit...)
		case 'Y':
			b = strconv.AppendInt(b, int64(t.Year()), 10)
		case 'y':
			b = pad2(b, t.Year()%100)
		case 'm':
			b = pad2(b, int(t.Month()))
		case 'd':
			b = pad2(b, t.Day())
		case 'e':
			if t.Day() < 10 {
				b = append(b, ' ')
			}
			b = strconv.AppendInt(b, int64(t.Day()), 10)
		case 'H':
			b = pad2(b, t.Hour())
		case 'I':
			h := t.Hour() % 12
			if h == 0 {
				h = 12
			}
			b = pad2(b, h)
		case 'p':
			if t.Hour() < 12 {
				b = append(b, "AM"...)
			} else {
				b = append(b, "PM"...)
			}
		case 'M':
			b = pad2(b, t.Minute())
		case 'S':
			b = pad2(b, t.Second())
			if p.n > 0 {
				b = append(b, '.')
				b = appendFrac(b, t.Nanosecond(), p.n)
			}
		case 'f':
			b = appendFrac(b, t.Nanosecond(), p.n)
		case 'b':
			b = append(b, t.Month().String()[:3]...)
		case 'B':
			b = append(b, t.Month().String()...)
		case 'a':
			b = append(b, t.Weekday().String()[:3]...)
		case 'A':
			b = append(b, t.Weekday().String()...)
		case 'j':
			d := t.YearDay()
			if d < 100 {
				b = append(b, '0')
			}
			b = pad2(b, d)
		case 'Z':
			b = t.AppendFormat(b, "MST")
		case 'z':
			b = t.AppendFormat(b, "-0700")
		case 'T':
			b = t.AppendFormat(b, "15:04:05")
		case 'F':
			b = t.AppendFormat(b, "2006-01-02")
		case 'D':
			b = t.AppendFormat(b, "01/02/06")
		case 'R':
			b = t.AppendFormat(b, "15:04")
		case 's':
			b = strconv.AppendInt(b, t.Unix(), 10)
		}
	}
	return b
}

// appendFrac appends the first n (1..9) digits of ns, a nanosecond count.
func appendFrac(b []byte, ns, n int) []byte {
	var d [9]byte
	for i := 8; i >= 0; i-- {
		d[i] = byte('0' + ns%10)
		ns /= 10
	}
	return append(b, d[:n]...)
}
