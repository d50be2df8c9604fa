package sniff_test

import (
	"fmt"

	"github.com/meshlet/meshlet/pkg/sniff"
)

// Classify looks at the first bytes a client sent and names the protocol
// the way Envoy's filter_chain_match does. While a prefix is still
// ambiguous it reports decided == false: read more bytes (up to
// DefaultMaxBytes) and ask again. Detect wraps this loop around a net.Conn
// with a deadline and replays the bytes it read.
func ExampleClassify() {
	samples := []struct {
		name  string
		bytes []byte
	}{
		{"HTTP/1.1 request", []byte("GET /healthz HTTP/1.1\r\nHost: web\r\n\r\n")},
		{"h2c preface", []byte(sniff.Preface)},
		{"TLS ClientHello", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}},
		{"opaque bytes", []byte{0x00, 0x00, 0x00, 0x2a, 0x0a, 0x03}},
		{"partial preface", []byte("PRI * HTTP/2")},
	}
	for _, s := range samples {
		proto, decided := sniff.Classify(s.bytes)
		if !decided {
			fmt.Printf("%-16s -> need more bytes\n", s.name)
			continue
		}
		fmt.Printf("%-16s -> %s\n", s.name, proto)
	}
	// Output:
	// HTTP/1.1 request -> http/1.1
	// h2c preface      -> h2c
	// TLS ClientHello  -> tls
	// opaque bytes     -> raw_buffer
	// partial preface  -> need more bytes
}
