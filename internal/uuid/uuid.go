// Package uuid makes random version-4 UUID strings: x-request-id values and
// the access log's %UNIQUE_ID%.
package uuid

import (
	"encoding/hex"
	"math/rand/v2"
)

// New returns a random version-4 UUID, e.g.
// "0b8d6c5e-1f0a-4c61-9a3e-6d2f4a7b8c90". Not for secrets: math/rand/v2's
// per-thread generator, which costs no lock.
func New() string {
	var b [16]byte
	u1, u2 := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		b[i] = byte(u1 >> (8 * i))
		b[8+i] = byte(u2 >> (8 * i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:])
}
