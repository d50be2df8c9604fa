package server

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// preEncoded returns a message of m's type that go-control-plane can serve
// in place of m at the cost of a copy: b is m's deterministic encoding (the
// snapshot computes it anyway, for the resource's version), and the message
// returned holds m's name field, as go-control-plane reads resource names
// from the message, and the rest of b as unknown fields. Marshalling it
// yields b again: the name is field 1 of all four resource types, so a
// deterministic encoding writes it first, and unknown fields follow the
// known ones.
//
// Why: go-control-plane marshals every resource of every response anew for
// each stream (its cache wraps resources per response), which for a large
// configuration is most of a control plane's work per connecting client,
// and on a shared node it competes with the agents' own start-up.
//
// The message is for serving only: it is not a decoded resource (validation
// and translation use m).
func preEncoded(m proto.Message, b []byte) (proto.Message, error) {
	src := m.ProtoReflect()
	fd := src.Descriptor().Fields().ByNumber(1)
	if fd == nil || fd.Kind() != protoreflect.StringKind || fd.Cardinality() == protoreflect.Repeated {
		return nil, fmt.Errorf("pre-encode %s: field 1 is not the resource's name", src.Descriptor().FullName())
	}
	rest := make([]byte, 0, len(b))
	for p := b; len(p) > 0; {
		num, typ, n := protowire.ConsumeTag(p)
		if n < 0 {
			return nil, fmt.Errorf("pre-encode %s: %w", src.Descriptor().FullName(), protowire.ParseError(n))
		}
		k := protowire.ConsumeFieldValue(num, typ, p[n:])
		if k < 0 {
			return nil, fmt.Errorf("pre-encode %s: %w", src.Descriptor().FullName(), protowire.ParseError(k))
		}
		if num != fd.Number() || typ != protowire.BytesType {
			// (field 1 with another wire type is an unknown field of m)
			rest = append(rest, p[:n+k]...)
		}
		p = p[n+k:]
	}
	out := src.Type().New()
	if src.Has(fd) {
		out.Set(fd, src.Get(fd))
	}
	if len(rest) > 0 {
		out.SetUnknown(rest)
	}
	return out.Interface(), nil
}
