package server

import (
	"bytes"
	"encoding/json"
	"hash/maphash"
	"sync"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshlet/meshlet/pkg/resources"
)

// splitBootstrap finds, without decoding them, the JSON texts of the
// elements of static_resources.listeners and static_resources.clusters in a
// bootstrap JSON document of exactly that shape (no other keys). ok is false
// for anything else (other keys, YAML, nulls, duplicate keys, malformed
// JSON outside the elements): the caller then decodes the whole document.
// Elements are delimited, not validated: each one is later either decoded
// by protojson or byte-identical to one that was.
func splitBootstrap(data []byte) (listeners, clusters [][]byte, ok bool) {
	p := &jsonScan{b: data}
	seenTop := false
	ok = p.object(func(key string) bool {
		if key != "static_resources" || seenTop {
			return false
		}
		seenTop = true
		var seenL, seenC bool
		return p.object(func(key string) bool {
			var into *[][]byte
			switch {
			case key == "listeners" && !seenL:
				seenL, into = true, &listeners
			case key == "clusters" && !seenC:
				seenC, into = true, &clusters
			default:
				return false
			}
			return p.array(func(elem []byte) { *into = append(*into, elem) })
		})
	})
	if !ok {
		return nil, nil, false
	}
	p.ws()
	if p.i != len(p.b) {
		return nil, nil, false
	}
	return listeners, clusters, true
}

// jsonScan is a minimal JSON cursor for splitBootstrap.
type jsonScan struct {
	b []byte
	i int
}

func (p *jsonScan) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonScan) eat(c byte) bool {
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// str reads a JSON string and returns its decoded value.
func (p *jsonScan) str() (string, bool) {
	p.ws()
	start := p.i
	if !p.skipString() {
		return "", false
	}
	raw := p.b[start:p.i]
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1]), true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// skipString moves past a string starting at p.i.
func (p *jsonScan) skipString() bool {
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return false
	}
	for j := p.i + 1; j < len(p.b); j++ {
		switch p.b[j] {
		case '\\':
			j++
		case '"':
			p.i = j + 1
			return true
		default:
			if p.b[j] < 0x20 {
				return false
			}
		}
	}
	return false
}

// object reads an object, calling member for each key with the cursor
// before the value; member must consume the value.
func (p *jsonScan) object(member func(key string) bool) bool {
	if !p.eat('{') {
		return false
	}
	if p.eat('}') {
		return true
	}
	for {
		k, ok := p.str()
		if !ok || !p.eat(':') || !member(k) {
			return false
		}
		if p.eat(',') {
			continue
		}
		return p.eat('}')
	}
}

// array reads an array of objects, handing each element's text to elem.
func (p *jsonScan) array(elem func([]byte)) bool {
	if !p.eat('[') {
		return false
	}
	if p.eat(']') {
		return true
	}
	for {
		p.ws()
		start := p.i
		if !p.skipComposite() {
			return false
		}
		elem(p.b[start:p.i])
		if p.eat(',') {
			continue
		}
		return p.eat(']')
	}
}

// skipComposite moves past an object or array starting at p.i, matching
// brackets outside strings.
func (p *jsonScan) skipComposite() bool {
	if p.i >= len(p.b) || (p.b[p.i] != '{' && p.b[p.i] != '[') {
		return false
	}
	var stack []byte
	for p.i < len(p.b) {
		switch c := p.b[p.i]; c {
		case '"':
			if !p.skipString() {
				return false
			}
			continue
		case '{', '[':
			stack = append(stack, c)
		case '}', ']':
			if len(stack) == 0 || (c == '}') != (stack[len(stack)-1] == '{') {
				return false
			}
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				p.i++
				return true
			}
		}
		p.i++
	}
	return false
}

// decodeCache keeps the resources decoded from the previous file, keyed by
// a 128-bit hash of their JSON text, so that a reload decodes only the
// resources whose text changed and keeps the very same messages for the
// others (which newSnapshot then neither hashes nor validates again).
type decodeCache struct {
	mu        sync.Mutex
	seeds     [2]maphash.Seed
	listeners map[textKey]*listenerv3.Listener
	clusters  map[textKey]*clusterv3.Cluster
	// assignments are the Set entries made for the inline load
	// assignments of the clusters above, by message.
	assignments map[*endpointv3.ClusterLoadAssignment]*resources.Assignment
}

type textKey struct {
	a, b uint64
	n    int
}

func newDecodeCache() *decodeCache {
	return &decodeCache{seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}}
}

func (c *decodeCache) key(b []byte) textKey {
	return textKey{maphash.Bytes(c.seeds[0], b), maphash.Bytes(c.seeds[1], b), len(b)}
}

// decode is Decode for a bootstrap JSON file of the plain shape, reusing
// unchanged resources; handled is false when data has another shape or a
// resource does not decode (Decode then gives the canonical answer: a
// document that is not JSON may still be YAML). The cache is replaced only
// when decoding succeeds.
func (c *decodeCache) decode(data []byte) (set *resources.Set, handled bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ls, cs, ok := splitBootstrap(data)
	if !ok {
		return nil, false, nil
	}
	nl := make(map[textKey]*listenerv3.Listener, len(ls))
	nc := make(map[textKey]*clusterv3.Cluster, len(cs))
	sr := &bootstrapv3.Bootstrap_StaticResources{
		Listeners: make([]*listenerv3.Listener, 0, len(ls)),
		Clusters:  make([]*clusterv3.Cluster, 0, len(cs)),
	}
	for _, raw := range ls {
		k := c.key(raw)
		m := c.listeners[k]
		if m == nil {
			m = nl[k]
		}
		if m == nil {
			m = &listenerv3.Listener{}
			if protojson.Unmarshal(raw, m) != nil {
				return nil, false, nil
			}
		}
		nl[k] = m
		sr.Listeners = append(sr.Listeners, m)
	}
	for _, raw := range cs {
		k := c.key(raw)
		m := c.clusters[k]
		if m == nil {
			m = nc[k]
		}
		if m == nil {
			m = &clusterv3.Cluster{}
			if protojson.Unmarshal(raw, m) != nil {
				return nil, false, nil
			}
		}
		nc[k] = m
		sr.Clusters = append(sr.Clusters, m)
	}
	set, err = resources.FromBootstrap(&bootstrapv3.Bootstrap{StaticResources: sr})
	if err != nil {
		return nil, true, err
	}
	// An unchanged cluster's load assignment keeps its Set entry, so the
	// server sees it unchanged (entries are compared by identity).
	na := make(map[*endpointv3.ClusterLoadAssignment]*resources.Assignment, len(set.Endpoints))
	for n, a := range set.Endpoints {
		m, err := a.Message() // message-backed: the cluster's own message
		if err != nil {
			return nil, true, err
		}
		if old := c.assignments[m]; old != nil {
			set.Endpoints[n], a = old, old
		}
		na[m] = a
	}
	c.listeners, c.clusters, c.assignments = nl, nc, na
	return set, true, nil
}
