package accesslog

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshlet/meshlet/internal/jsonstr"
)

// JSONFormat is a compiled json_format: one JSON object per entry, keys in
// sorted order. A value that is exactly one command operator keeps its
// type (RESPONSE_CODE a number, an absent value null); other strings are
// formatted as text; numbers, booleans and nested objects are copied.
type JSONFormat struct {
	fields    []jsonField
	omitEmpty bool
}

type jsonField struct {
	key    []byte // quoted, with the colon
	raw    []byte // a literal JSON value
	one    *segment
	text   *Format
	nested *JSONFormat
}

// ParseJSON compiles a json_format struct. omitEmpty drops keys whose
// value is absent (omit_empty_values).
func ParseJSON(st *structpb.Struct, omitEmpty bool) (*JSONFormat, error) {
	return parseJSON(st, omitEmpty, 0)
}

func parseJSON(st *structpb.Struct, omitEmpty bool, depth int) (*JSONFormat, error) {
	if depth > 16 {
		return nil, fmt.Errorf("json_format nested deeper than 16 objects")
	}
	keys := make([]string, 0, len(st.GetFields()))
	for k := range st.GetFields() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	jf := &JSONFormat{omitEmpty: omitEmpty}
	for _, k := range keys {
		v := st.GetFields()[k]
		kb, _ := json.Marshal(k)
		f := jsonField{key: append(kb, ':')}
		switch x := v.GetKind().(type) {
		case *structpb.Value_StringValue:
			segs, err := parse(x.StringValue)
			if err != nil {
				return nil, fmt.Errorf("json_format %q: %w", k, err)
			}
			switch {
			case len(segs) == 1 && segs[0].op != opLit:
				f.one = &segs[0]
			default:
				f.text = &Format{segs: segs, omitEmpty: omitEmpty}
			}
		case *structpb.Value_StructValue:
			n, err := parseJSON(x.StructValue, omitEmpty, depth+1)
			if err != nil {
				return nil, fmt.Errorf("json_format %q: %w", k, err)
			}
			f.nested = n
		case *structpb.Value_NumberValue, *structpb.Value_BoolValue, *structpb.Value_NullValue:
			raw, err := v.MarshalJSON()
			if err != nil {
				return nil, fmt.Errorf("json_format %q: %w", k, err)
			}
			f.raw = raw
		default:
			return nil, fmt.Errorf("json_format %q: only strings, numbers, booleans and nested objects are supported, not %T", k, x)
		}
		jf.fields = append(jf.fields, f)
	}
	return jf, nil
}

// Append appends the entry as one JSON object (no newline).
func (j *JSONFormat) Append(b []byte, e *Entry) []byte {
	b = append(b, '{')
	n := 0
	for i := range j.fields {
		f := &j.fields[i]
		mark := len(b)
		if n > 0 {
			b = append(b, ',')
		}
		b = append(b, f.key...)
		switch {
		case f.raw != nil:
			b = append(b, f.raw...)
		case f.nested != nil:
			b = f.nested.Append(b, e)
		case f.text != nil:
			b = jsonstr.Append(b, string(f.text.Append(nil, e)))
		default:
			var ok bool
			if b, ok = f.one.appendJSON(b, e); !ok && j.omitEmpty {
				b = b[:mark]
				continue
			}
		}
		n++
	}
	return append(b, '}')
}

// appendJSON appends the operator's typed value; ok is false for null.
func (g *segment) appendJSON(b []byte, e *Entry) ([]byte, bool) {
	if g.op == opStartTime {
		return jsonstr.Append(b, string(appendStrftime(nil, e.Start.UTC(), g.tf))), true
	}
	k, s, n := g.value(e)
	switch k {
	case vStr:
		return jsonstr.Append(b, truncate(s, g.maxLen)), true
	case vInt:
		return strconv.AppendInt(b, n, 10), true
	}
	return append(b, "null"...), false
}
