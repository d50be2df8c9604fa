package hcm

import (
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// pathPolicy is what the HCM does to a request path before routing, in
// Envoy's order: escaped slashes (path_with_escaped_slashes_action), then
// RFC 3986 normalization (normalize_path), then merge_slashes. The result
// is both what routes match and what goes upstream.
type pathPolicy struct {
	escaped   hcmv3.HttpConnectionManager_PathWithEscapedSlashesAction
	normalize bool
	merge     bool
}

func (p pathPolicy) active() bool {
	return p.normalize || p.merge || p.escapedActs()
}

func (p pathPolicy) escapedActs() bool {
	switch p.escaped {
	case hcmv3.HttpConnectionManager_REJECT_REQUEST, hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT,
		hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD:
		return true
	}
	return false
}

// pathVerdict is the outcome of applying a pathPolicy.
type pathVerdict uint8

const (
	pathContinue pathVerdict = iota
	pathReject               // 400
	pathRedirect             // 307 to the new path
)

// apply returns the request target with its path transformed (the query
// is left as it is) and what to do with the request.
func (p pathPolicy) apply(target string) (string, pathVerdict) {
	path, query := target, ""
	if i := strings.IndexByte(target, '?'); i >= 0 {
		path, query = target[:i], target[i:]
	}
	if !strings.HasPrefix(path, "/") {
		return target, pathContinue // "*" (OPTIONS) and absolute-form targets are left alone
	}
	verdict := pathContinue
	if p.escapedActs() {
		if un, found := unescapeSlashes(path); found {
			switch p.escaped {
			case hcmv3.HttpConnectionManager_REJECT_REQUEST:
				return target, pathReject
			case hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT:
				verdict = pathRedirect
			}
			path = un
		}
	}
	if p.normalize {
		n, ok := normalizePath(path)
		if !ok {
			return target, pathReject
		}
		path = n
	}
	if p.merge {
		path = mergeSlashes(path)
	}
	return path + query, verdict
}

// unescapeSlashes replaces %2F and %5C (any case) with / and \.
func unescapeSlashes(p string) (string, bool) {
	if !strings.Contains(p, "%") {
		return p, false
	}
	var b strings.Builder
	found := false
	for i := 0; i < len(p); i++ {
		var c byte
		if p[i] == '%' && i+2 < len(p) {
			switch {
			case p[i+1] == '2' && (p[i+2] == 'F' || p[i+2] == 'f'):
				c = '/'
			case p[i+1] == '5' && (p[i+2] == 'C' || p[i+2] == 'c'):
				c = '\\'
			}
		}
		if c == 0 {
			if found {
				b.WriteByte(p[i])
			}
			continue
		}
		if !found {
			b.Grow(len(p))
			b.WriteString(p[:i])
			found = true
		}
		b.WriteByte(c)
		i += 2
	}
	if !found {
		return p, false
	}
	return b.String(), true
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

// isUnreserved is RFC 3986's unreserved set: ALPHA DIGIT - . _ ~
func isUnreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// needsNormalize reports whether normalizePath could change p: a percent
// sign, a backslash, or a "." or ".." segment.
func needsNormalize(p string) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '%', '\\':
			return true
		case '.':
			// A segment "." or ".." starts after a slash and ends at a
			// slash or the end.
			if i > 0 && p[i-1] == '/' {
				j := i + 1
				if j < len(p) && p[j] == '.' {
					j++
				}
				if j == len(p) || p[j] == '/' {
					return true
				}
			}
		}
	}
	return false
}

// normalizePath normalizes an absolute path as RFC 3986 section 6.2.2
// does (Envoy's normalize_path): percent-encoded unreserved characters are
// decoded and other percent-encodings upper-cased; a backslash is taken
// as a slash (as browsers and Envoy's URL canonicalizer do); "." and ".."
// segments are removed (section 5.2.4, never above the root). A malformed
// percent-encoding or a control character fails.
func normalizePath(p string) (string, bool) {
	if !needsNormalize(p) {
		for i := 0; i < len(p); i++ {
			if p[i] < 0x20 || p[i] == 0x7f {
				return "", false
			}
		}
		return p, true
	}
	// 1. Percent-encodings and backslashes.
	buf := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c < 0x20 || c == 0x7f:
			return "", false
		case c == '\\':
			buf = append(buf, '/')
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return "", false
			}
			d := unhex(p[i+1])<<4 | unhex(p[i+2])
			if isUnreserved(d) {
				buf = append(buf, d)
			} else {
				buf = append(buf, '%', upperHex(p[i+1]), upperHex(p[i+2]))
			}
			i += 2
		default:
			buf = append(buf, c)
		}
	}
	// 2. Dot segments, over whole segments of an absolute path.
	segs := strings.Split(string(buf[1:]), "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "") // "/a/." -> "/a/"
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/"), true
}

func upperHex(c byte) byte {
	if c >= 'a' && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

// mergeSlashes collapses runs of slashes into one.
func mergeSlashes(p string) string {
	if !strings.Contains(p, "//") {
		return p
	}
	b := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && len(b) > 0 && b[len(b)-1] == '/' {
			continue
		}
		b = append(b, p[i])
	}
	return string(b)
}
