package hcm

import (
	"net/http"
	"net/textproto"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// headFields fills a header map from the field lines of a message head
// that this package parses itself (request heads on the HTTP/1.1 fast
// path, upstream response heads): one map operation per field. A field
// name seen before is found among the names added so far (a head has few)
// rather than by a second lookup per field.
type headFields struct {
	h    http.Header
	vals []string // backing store: one []string per field, cap 1
	seen [24]string
	n    int
}

// newHeadFields fills h (cleared by the caller) from at most n lines.
func newHeadFields(h http.Header, n int) headFields {
	return headFields{h: h, vals: make([]string, n)}
}

// add parses line i ("Name: value") and adds it; false: not a valid field
// (a name that is not a token, a control character in the value). It
// returns the canonical name and the value (optional whitespace trimmed).
func (f *headFields) add(i int, l string) (k, v string, ok bool) {
	colon := strings.IndexByte(l, ':')
	if colon <= 0 {
		return "", "", false
	}
	for j := 0; j < colon; j++ {
		if !httpguts.IsTokenRune(rune(l[j])) {
			return "", "", false
		}
	}
	v = trimOWS(l[colon+1:])
	for j := 0; j < len(v); j++ {
		if b := v[j]; (b < ' ' && b != '\t') || b == 0x7f {
			return "", "", false
		}
	}
	k = textproto.CanonicalMIMEHeaderKey(l[:colon]) // no allocation when already canonical
	if f.repeated(k) {
		f.h[k] = append(f.h[k], v)
		return k, v, true
	}
	f.vals[i] = v
	f.h[k] = f.vals[i : i+1 : i+1]
	return k, v, true
}

// repeated reports whether k was added before, and notes it if not.
func (f *headFields) repeated(k string) bool {
	if f.n > len(f.seen) {
		_, ok := f.h[k] // a long head: the map knows
		return ok
	}
	for _, s := range f.seen[:f.n] {
		if s == k {
			return true
		}
	}
	if f.n < len(f.seen) {
		f.seen[f.n] = k
	}
	f.n++
	return false
}

// trimOWS trims HTTP's optional whitespace (spaces and tabs) off both ends.
func trimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}
