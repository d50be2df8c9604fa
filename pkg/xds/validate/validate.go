package validate

import (
	"errors"
	"fmt"
	"strconv"
	"sync"

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

// walk recurses into the populated fields of m that can hold an Any at
// some depth (anyFields), skipping every other field without looking.
func walk(m protoreflect.Message, depth int) error {
	for _, fd := range anyFields(m.Descriptor()) {
		if !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		name := string(fd.Name())
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if e := inner(l.Get(i).Message(), depth); e != nil {
					return join(fmt.Sprintf("%s[%d]", name, i), e)
				}
			}
		case fd.IsMap():
			var err error
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if e := inner(mv.Message(), depth); e != nil {
					err = join(fmt.Sprintf("%s[%s]", name, strconv.Quote(k.String())), e)
					return false
				}
				return true
			})
			if err != nil {
				return err
			}
		default:
			if e := inner(v.Message(), depth); e != nil {
				return join(name, e)
			}
		}
	}
	return nil
}

// fieldPlans memoises, per message type, its fields that can hold an Any
// at any depth (anyFields). It only caches facts about immutable,
// linked-in descriptors, so it is shared by the whole process.
var fieldPlans sync.Map // protoreflect.FullName -> []protoreflect.FieldDescriptor

const anyName protoreflect.FullName = "google.protobuf.Any"

// anyFields returns the fields of md (message fields or maps of messages)
// below which an Any can occur. Subtrees that cannot are never walked,
// which is most of an endpoint assignment (addresses, health checks): one
// lookup per message walked, none per field.
func anyFields(md protoreflect.MessageDescriptor) []protoreflect.FieldDescriptor {
	if v, ok := fieldPlans.Load(md.FullName()); ok {
		return v.([]protoreflect.FieldDescriptor)
	}
	var plan []protoreflect.FieldDescriptor
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		if fd := fields.Get(i); mayHoldAny(fd) {
			plan = append(plan, fd)
		}
	}
	fieldPlans.Store(md.FullName(), plan)
	return plan
}

// mayHoldAny reports whether a message field (or a map of messages) can
// contain an Any at any depth.
func mayHoldAny(fd protoreflect.FieldDescriptor) bool {
	if fd.IsMap() {
		fd = fd.MapValue()
	}
	md := fd.Message()
	if md == nil {
		return false
	}
	seen := map[protoreflect.FullName]bool{md.FullName(): true}
	queue := []protoreflect.MessageDescriptor{md}
	for len(queue) > 0 {
		m := queue[0]
		queue = queue[1:]
		if m.FullName() == anyName {
			return true
		}
		fields := m.Fields()
		for i := 0; i < fields.Len(); i++ {
			f := fields.Get(i)
			if f.IsMap() {
				f = f.MapValue()
			}
			sub := f.Message()
			if sub == nil || seen[sub.FullName()] {
				continue
			}
			seen[sub.FullName()] = true
			queue = append(queue, sub)
		}
	}
	return false
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
