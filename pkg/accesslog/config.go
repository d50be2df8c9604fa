package accesslog

import (
	"fmt"
	"os"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// DefaultFormat is Envoy's format for a file, stdout or stderr logger
// configured without one.
const DefaultFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" ` +
	`"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` + "\n"

// Stdout and Stderr are the paths of the process's standard streams.
const (
	Stdout = "/dev/stdout"
	Stderr = "/dev/stderr"
)

// Formatter renders an entry: a text Format or a JSONFormat.
type Formatter interface {
	Append(b []byte, e *Entry) []byte
}

// Log is one compiled access_log item: where it writes, how, and which
// entries.
type Log struct {
	Name   string
	Path   string // a file, Stdout or Stderr
	Format Formatter
	// JSON formats get a newline after each entry (text formats carry
	// their own, as in Envoy).
	JSON   bool
	Filter Filter // nil: every entry
}

const (
	typeFile   = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
	typeStdout = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
	typeStderr = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
)

// Compile compiles an access_log list. It fails on what Envoy rejects
// (malformed formats, unknown operators or response flags, bad regexes);
// issue is told about loggers and filters that are valid but not
// implemented here (they are skipped, or let every entry through).
func Compile(logs []*accesslogv3.AccessLog, issue func(string)) ([]*Log, error) {
	var out []*Log
	for i, al := range logs {
		name := al.GetName()
		warn := func(f string, a ...any) {
			if issue != nil {
				issue(fmt.Sprintf("access_log[%d] %s: ", i, name) + fmt.Sprintf(f, a...))
			}
		}
		l, err := compileOne(al, warn)
		if err != nil {
			return nil, fmt.Errorf("access_log[%d] %s: %w", i, name, err)
		}
		if l != nil {
			out = append(out, l)
		}
	}
	return out, nil
}

func compileOne(al *accesslogv3.AccessLog, warn func(string, ...any)) (*Log, error) {
	tc := al.GetTypedConfig()
	if tc == nil {
		warn("no typed_config: skipped")
		return nil, nil
	}
	l := &Log{Name: al.GetName()}
	var err error
	switch tc.GetTypeUrl() {
	case typeFile:
		var f filev3.FileAccessLog
		if err := unmarshal(tc, &f); err != nil {
			return nil, err
		}
		if f.GetPath() == "" {
			return nil, fmt.Errorf("file access log without path")
		}
		l.Path = f.GetPath()
		switch x := f.GetAccessLogFormat().(type) {
		case *filev3.FileAccessLog_Format:
			l.Format, err = textOrDefault(x.Format, false)
		case *filev3.FileAccessLog_JsonFormat:
			l.Format, err = ParseJSON(x.JsonFormat, false)
			l.JSON = true
		case *filev3.FileAccessLog_TypedJsonFormat:
			l.Format, err = ParseJSON(x.TypedJsonFormat, false)
			l.JSON = true
		case *filev3.FileAccessLog_LogFormat:
			l.Format, l.JSON, err = substitution(x.LogFormat, warn)
		default:
			l.Format, err = ParseText(DefaultFormat)
		}
	case typeStdout, typeStderr:
		var sf *corev3.SubstitutionFormatString
		if tc.GetTypeUrl() == typeStdout {
			var m streamv3.StdoutAccessLog
			if err := unmarshal(tc, &m); err != nil {
				return nil, err
			}
			sf, l.Path = m.GetLogFormat(), Stdout
		} else {
			var m streamv3.StderrAccessLog
			if err := unmarshal(tc, &m); err != nil {
				return nil, err
			}
			sf, l.Path = m.GetLogFormat(), Stderr
		}
		if sf == nil {
			l.Format, err = ParseText(DefaultFormat)
		} else {
			l.Format, l.JSON, err = substitution(sf, warn)
		}
	default:
		warn("logger type %s is not implemented: skipped", tc.GetTypeUrl())
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if f := al.GetFilter(); f != nil {
		if l.Filter, err = compileFilter(f, warn); err != nil {
			return nil, fmt.Errorf("filter: %w", err)
		}
	}
	return l, nil
}

func unmarshal(a *anypb.Any, m proto.Message) error {
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("decode %s: %w", a.GetTypeUrl(), err)
	}
	return nil
}

func textOrDefault(s string, omitEmpty bool) (*Format, error) {
	if s == "" {
		s = DefaultFormat
	}
	f, err := ParseText(s)
	if err != nil {
		return nil, err
	}
	f.omitEmpty = omitEmpty
	return f, nil
}

// substitution compiles a SubstitutionFormatString (log_format).
func substitution(sf *corev3.SubstitutionFormatString, warn func(string, ...any)) (Formatter, bool, error) {
	if len(sf.GetFormatters()) > 0 {
		warn("formatter extensions are not implemented: their command operators are rejected")
	}
	omit := sf.GetOmitEmptyValues()
	switch x := sf.GetFormat().(type) {
	case *corev3.SubstitutionFormatString_TextFormat:
		f, err := textOrDefault(x.TextFormat, omit)
		return f, false, err
	case *corev3.SubstitutionFormatString_TextFormatSource:
		s, err := dataSource(x.TextFormatSource)
		if err != nil {
			return nil, false, fmt.Errorf("text_format_source: %w", err)
		}
		f, err := textOrDefault(s, omit)
		return f, false, err
	case *corev3.SubstitutionFormatString_JsonFormat:
		f, err := ParseJSON(x.JsonFormat, omit)
		return f, true, err
	}
	return nil, false, fmt.Errorf("log_format has no format")
}

func dataSource(ds *corev3.DataSource) (string, error) {
	switch x := ds.GetSpecifier().(type) {
	case *corev3.DataSource_InlineString:
		return x.InlineString, nil
	case *corev3.DataSource_InlineBytes:
		return string(x.InlineBytes), nil
	case *corev3.DataSource_Filename:
		b, err := os.ReadFile(x.Filename)
		if err != nil {
			return "", err
		}
		return string(b), nil
	case *corev3.DataSource_EnvironmentVariable:
		v, ok := os.LookupEnv(x.EnvironmentVariable)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", x.EnvironmentVariable)
		}
		return v, nil
	}
	return "", fmt.Errorf("data source has no specifier")
}
