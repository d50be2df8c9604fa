package hcm

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

func TestNormalizePath(t *testing.T) {
	for in, want := range map[string]string{
		"/":                  "/",
		"/a/b":               "/a/b",
		"/a/./b":             "/a/b",
		"/a/../b":            "/b",
		"/../../etc/passwd":  "/etc/passwd", // never above the root
		"/a/b/..":            "/a/",
		"/a/b/.":             "/a/b/",
		"/a/%2E%2e/b":        "/b", // encoded dots are dots
		"/%7Euser/%41":       "/~user/A",
		"/a%2fb":             "/a%2Fb", // a reserved character stays encoded, hex upper-cased
		"/a%20b":             "/a%20b",
		"/public\\..\\admin": "/admin", // backslashes are slashes
		"/a/..b/.c/...":      "/a/..b/.c/...",
		"/a//b/../c":         "/a//c", // empty segments are kept (merge_slashes is separate)
		"/a/b%2F..%2Fc":      "/a/b%2F..%2Fc",
	} {
		got, ok := normalizePath(in)
		if !ok || got != want {
			t.Errorf("normalizePath(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, bad := range []string{"/a%", "/a%2", "/a%zz", "/a\x00b", "/a/%G0"} {
		if got, ok := normalizePath(bad); ok {
			t.Errorf("normalizePath(%q) = %q, want failure", bad, got)
		}
	}
}

func TestPathPolicy(t *testing.T) {
	const (
		keep     = hcmv3.HttpConnectionManager_KEEP_UNCHANGED
		reject   = hcmv3.HttpConnectionManager_REJECT_REQUEST
		redirect = hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT
		forward  = hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD
	)
	cases := []struct {
		p       pathPolicy
		in      string
		want    string
		verdict pathVerdict
	}{
		{pathPolicy{normalize: true}, "/a/../b?x=/../y", "/b?x=/../y", pathContinue}, // the query is left alone
		{pathPolicy{merge: true}, "//a///b/", "/a/b/", pathContinue},
		{pathPolicy{normalize: true, merge: true}, "/a//../b", "/a/b", pathContinue},
		{pathPolicy{escaped: keep, normalize: true}, "/a%2F..%2Fb", "/a%2F..%2Fb", pathContinue},
		{pathPolicy{escaped: reject}, "/a%2fb", "/a%2fb", pathReject},
		{pathPolicy{escaped: reject}, "/a%5Cb", "/a%5Cb", pathReject},
		{pathPolicy{escaped: reject}, "/ab?q=%2F", "/ab?q=%2F", pathContinue},
		{pathPolicy{escaped: forward, normalize: true}, "/a%2F..%2Fb", "/b", pathContinue}, // unescaped first, then normalized
		{pathPolicy{escaped: redirect}, "/a%2Fb?q", "/a/b?q", pathRedirect},
		{pathPolicy{escaped: redirect}, "/a/b", "/a/b", pathContinue},
		{pathPolicy{normalize: true}, "/a%zz", "/a%zz", pathReject},
		{pathPolicy{normalize: true}, "*", "*", pathContinue},
	}
	for _, c := range cases {
		got, v := c.p.apply(c.in)
		if got != c.want || v != c.verdict {
			t.Errorf("%+v.apply(%q) = %q, %d; want %q, %d", c.p, c.in, got, v, c.want, c.verdict)
		}
	}
}

func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/a/../b", "/%2e%2E/x", "/a\\b", "/a%", "//x//y/./.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		if !strings.HasPrefix(in, "/") {
			return
		}
		out, ok := normalizePath(in)
		if !ok {
			return
		}
		if !strings.HasPrefix(out, "/") {
			t.Fatalf("%q → %q: not absolute", in, out)
		}
		for _, seg := range strings.Split(out, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("%q → %q: dot segment left", in, out)
			}
		}
		if strings.ContainsRune(out, '\\') {
			t.Fatalf("%q → %q: backslash left", in, out)
		}
		again, ok := normalizePath(out)
		if !ok || again != out {
			t.Fatalf("not idempotent: %q → %q → %q (%v)", in, out, again, ok)
		}
		m := mergeSlashes(out)
		if strings.Contains(m, "//") {
			t.Fatalf("mergeSlashes(%q) = %q", out, m)
		}
	})
}

// Routing sees the normalized path and the upstream gets it: with
// normalize_path, "/public/../admin" cannot reach the public route's
// cluster by way of its prefix.
func TestPathNormalizationRoutes(t *testing.T) {
	hcm := func(opts string) string {
		return `{"stat_prefix": "n", ` + opts + `
		  "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
		    {"match": {"prefix": "/public/"}, "route": {"cluster": "public"}},
		    {"match": {"prefix": "/"}, "route": {"cluster": "private"}}]}]}}`
	}
	up := newUpstreams()
	up.set("public", ep(startEcho(t, "public")))
	up.set("private", ep(startEcho(t, "private")))
	for _, c := range []struct {
		opts, path string
		code       int
		name, uri  string
		location   string
	}{
		{``, "/public/../admin", 200, "public", "/public/../admin", ""}, // Envoy's default: as received
		{`"normalize_path": true,`, "/public/../admin", 200, "private", "/admin", ""},
		{`"normalize_path": true,`, "/public/%2e%2e/admin", 200, "private", "/admin", ""},
		{`"normalize_path": true,`, "/public/a%zz", 400, "", "", ""},
		{`"normalize_path": true, "merge_slashes": true,`, "/public//x//y", 200, "public", "/public/x/y", ""},
		{`"path_with_escaped_slashes_action": "REJECT_REQUEST",`, "/public/a%2Fb", 400, "", "", ""},
		{`"path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD", "normalize_path": true,`, "/public/x%2F..%2F..%2Fadmin", 200, "private", "/admin", ""},
		{`"path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",`, "/public/a%2Fb?q=1", 307, "", "", "/public/a/b?q=1"},
	} {
		t.Run(fmt.Sprintf("%s%s", c.opts, c.path), func(t *testing.T) {
			p := startProxy(t, mustHCM(t, hcm(c.opts)), nil, up)
			conn, br := rawConn(t, p.addr)
			resp, b := roundTripRaw(t, conn, br, "GET", "GET "+c.path+" HTTP/1.1\r\nHost: svc.test\r\n\r\n")
			if resp.StatusCode != c.code {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, b, c.code)
			}
			if c.code == http.StatusOK {
				if e := decodeEcho(t, b); e.Name != c.name || e.URI != c.uri {
					t.Errorf("reached %s with %q, want %s with %q", e.Name, e.URI, c.name, c.uri)
				}
			}
			if got := resp.Header.Get("Location"); got != c.location {
				t.Errorf("Location %q, want %q", got, c.location)
			}
		})
	}
}
