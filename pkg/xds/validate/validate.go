package validate

import (
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
)

// maxDepth bounds the Any nesting that Resource follows.
const maxDepth = 32

type validator interface{ Validate() error }

// Resource validates m and every linked-in Any payload nested in it. The
// error names the field path of the failing payload, e.g.
// `filter_chains[2].filters[0].typed_config(envoy.extensions.filters.http.lua.v3.Lua): invalid Lua...`.
func Resource(m proto.Message) error {
	if m == nil {
		return errors.New("nil resource")
	}
	return check(m.ProtoReflect(), 0)
}

func check(m protoreflect.Message, depth int) error {
	if v, ok := m.Interface().(validator); ok {
		if err := v.Validate(); err != nil {
			return err
		}
	}
	return walk(m, depth)
}

// walk recurses into populated message fields looking for Any payloads.
func walk(m protoreflect.Message, depth int) error {
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		name := string(fd.Name())
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if e := inner(l.Get(i).Message(), depth); e != nil {
					err = join(fmt.Sprintf("%s[%d]", name, i), e)
					return false
				}
			}
		case fd.IsMap():
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if e := inner(mv.Message(), depth); e != nil {
					err = join(fmt.Sprintf("%s[%s]", name, strconv.Quote(k.String())), e)
					return false
				}
				return true
			})
			if err != nil {
				return false
			}
		default:
			if e := inner(v.Message(), depth); e != nil {
				err = join(name, e)
				return false
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	return nil
}

// fieldErr marks the end of a path: inner returns errors that read well after
// a "field." prefix.
type fieldErr struct {
	what string
	err  error
}

func (e *fieldErr) Error() string { return e.what + ": " + e.err.Error() }
func (e *fieldErr) Unwrap() error { return e.err }

func inner(m protoreflect.Message, depth int) error {
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		if e := walk(m, depth); e != nil {
			return e
		}
		return nil
	}
	if depth >= maxDepth {
		return &fieldErr{what: "typed payload", err: fmt.Errorf("Any nesting deeper than %d", maxDepth)}
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(a.GetTypeUrl())
	if err != nil {
		// Unknown (or not linked) type: not ours to judge.
		return nil
	}
	payload := mt.New()
	if err := proto.Unmarshal(a.GetValue(), payload.Interface()); err != nil {
		return &fieldErr{what: "(" + string(mt.Descriptor().FullName()) + ")", err: fmt.Errorf("undecodable payload: %w", err)}
	}
	if err := check(payload, depth+1); err != nil {
		return &fieldErr{what: "(" + string(mt.Descriptor().FullName()) + ")", err: err}
	}
	return nil
}

func join(prefix string, e error) error {
	if _, ok := e.(*fieldErr); ok {
		return fmt.Errorf("%s%w", prefix, e)
	}
	return fmt.Errorf("%s.%w", prefix, e)
}
