package hcm

import (
	"fmt"
	"net/http"
	"net/netip"
	"testing"
)

func TestRequestHash(t *testing.T) {
	rt := compileT(t, `{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
	  {"match": {"prefix": "/h"}, "route": {"cluster": "c", "hash_policy": [
	    {"header": {"header_name": "x-user", "regex_rewrite": {"pattern": {"regex": "-[0-9]+$"}, "substitution": ""}}, "terminal": true},
	    {"cookie": {"name": "session"}},
	    {"query_parameter": {"name": "k"}},
	    {"connection_properties": {"source_ip": true}}]}}]}]}`)
	r := rt.match(view("h", "/h", nil))
	hash := func(hdr http.Header, path string, remote string) (uint64, bool) {
		req := &http.Request{Header: hdr, Host: "h", Method: "GET"}
		s := &stream{r: req, info: &connInfo{}}
		if remote != "" {
			s.info.remote = netip.MustParseAddrPort(remote)
		}
		return s.requestHash(r.hashes, path)
	}
	a, ok := hash(http.Header{"X-User": {"alice-1"}}, "/h", "10.0.0.1:1")
	b, _ := hash(http.Header{"X-User": {"alice-2"}}, "/h?k=z", "10.0.0.2:2")
	if !ok || a != b {
		t.Error("regex_rewrite'd header, terminal: the same user must hash the same, whatever else differs")
	}
	c, _ := hash(http.Header{"Cookie": {"session=s1"}}, "/h?k=1", "10.0.0.1:1")
	d, _ := hash(http.Header{"Cookie": {"session=s1"}}, "/h?k=2", "10.0.0.1:1")
	e, _ := hash(http.Header{"Cookie": {"session=s1"}}, "/h?k=1", "10.0.0.1:9")
	if c == d || c != e {
		t.Error("non-terminal keys combine: the query parameter changes the hash, the source port does not")
	}
	if _, ok := hash(http.Header{}, "/h", ""); ok {
		t.Error("no key in the request, yet hashed")
	}
}

// Sticky routing through the proxy: each user lands on one endpoint.
func TestHashPolicySticky(t *testing.T) {
	up := newUpstreams()
	var eps []Endpoint
	for i := range 3 {
		eps = append(eps, ep(startEcho(t, fmt.Sprint("e", i))))
	}
	up.set("c", eps...)
	p := startProxy(t, mustHCM(t, `{"stat_prefix": "h", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
	  {"match": {"prefix": "/"}, "route": {"cluster": "c", "hash_policy": [{"header": {"header_name": "x-user"}}]}}]}]}}`), nil, up)
	byUser := map[string]map[string]bool{}
	for i := range 30 {
		user := fmt.Sprint("user", i%6)
		_, b := get(t, &http.Client{}, "http://"+p.addr+"/", map[string]string{"Host": "svc.test", "X-User": user})
		if byUser[user] == nil {
			byUser[user] = map[string]bool{}
		}
		byUser[user][decodeEcho(t, b).Name] = true
	}
	all := map[string]bool{}
	for u, names := range byUser {
		if len(names) != 1 {
			t.Errorf("%s reached %v, want one endpoint", u, names)
		}
		for n := range names {
			all[n] = true
		}
	}
	if len(all) < 2 {
		t.Errorf("6 users all on %v", all)
	}
}
