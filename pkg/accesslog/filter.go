package accesslog

import (
	"fmt"
	"hash/fnv"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"

	"github.com/meshlet/meshlet/internal/fraction"
	"github.com/meshlet/meshlet/pkg/match"
)

// Filter decides whether an entry is logged.
type Filter interface {
	Match(e *Entry) bool
}

type filterFunc func(e *Entry) bool

func (f filterFunc) Match(e *Entry) bool { return f(e) }

// passAll stands for a filter that is valid but not evaluated here.
var passAll = filterFunc(func(*Entry) bool { return true })

// compileFilter compiles an AccessLogFilter. issue records what is valid
// but not acted on (the filter then lets every entry through).
func compileFilter(f *accesslogv3.AccessLogFilter, issue func(string, ...any)) (Filter, error) {
	switch x := f.GetFilterSpecifier().(type) {
	case *accesslogv3.AccessLogFilter_StatusCodeFilter:
		cmp, err := comparison(x.StatusCodeFilter.GetComparison(), "status_code_filter")
		if err != nil {
			return nil, err
		}
		return filterFunc(func(e *Entry) bool { return cmp(int64(e.Code)) }), nil
	case *accesslogv3.AccessLogFilter_DurationFilter:
		cmp, err := comparison(x.DurationFilter.GetComparison(), "duration_filter")
		if err != nil {
			return nil, err
		}
		return filterFunc(func(e *Entry) bool { return cmp(e.Duration.Milliseconds()) }), nil
	case *accesslogv3.AccessLogFilter_NotHealthCheckFilter:
		// The agent does not originate health checks through its
		// listeners: no request is one.
		return passAll, nil
	case *accesslogv3.AccessLogFilter_TraceableFilter:
		// No tracing here: no request is traceable.
		return filterFunc(func(*Entry) bool { return false }), nil
	case *accesslogv3.AccessLogFilter_RuntimeFilter:
		return runtimeFilter(x.RuntimeFilter), nil
	case *accesslogv3.AccessLogFilter_AndFilter, *accesslogv3.AccessLogFilter_OrFilter:
		var subs []*accesslogv3.AccessLogFilter
		and := false
		if a, ok := x.(*accesslogv3.AccessLogFilter_AndFilter); ok {
			subs, and = a.AndFilter.GetFilters(), true
		} else {
			subs = x.(*accesslogv3.AccessLogFilter_OrFilter).OrFilter.GetFilters()
		}
		if len(subs) < 2 {
			return nil, fmt.Errorf("and_filter/or_filter needs at least 2 filters, has %d", len(subs))
		}
		fs := make([]Filter, len(subs))
		for i, s := range subs {
			var err error
			if fs[i], err = compileFilter(s, issue); err != nil {
				return nil, fmt.Errorf("filters[%d]: %w", i, err)
			}
		}
		return filterFunc(func(e *Entry) bool {
			for _, f := range fs {
				if f.Match(e) != and {
					return !and
				}
			}
			return and
		}), nil
	case *accesslogv3.AccessLogFilter_HeaderFilter:
		hm, err := match.CompileHeader(x.HeaderFilter.GetHeader())
		if err != nil {
			return nil, fmt.Errorf("header_filter: %w", err)
		}
		return filterFunc(func(e *Entry) bool {
			if strings.HasPrefix(hm.Name, ":") {
				return hm.Match(e.reqHeader(hm.Name))
			}
			return hm.Match(match.Get(e.ReqHeaders, hm.Name))
		}), nil
	case *accesslogv3.AccessLogFilter_ResponseFlagFilter:
		want := x.ResponseFlagFilter.GetFlags()
		for _, f := range want {
			if !validFlags[f] {
				return nil, fmt.Errorf("response_flag_filter: unknown response flag %q", f)
			}
		}
		return filterFunc(func(e *Entry) bool {
			if e.Flags == "" {
				return false
			}
			if len(want) == 0 {
				return true
			}
			for _, w := range want {
				for f := range strings.SplitSeq(e.Flags, ",") {
					if f == w {
						return true
					}
				}
			}
			return false
		}), nil
	case *accesslogv3.AccessLogFilter_GrpcStatusFilter:
		var set [17]bool
		for _, s := range x.GrpcStatusFilter.GetStatuses() {
			if s < 0 || int(s) >= len(set) {
				return nil, fmt.Errorf("grpc_status_filter: unknown status %d", s)
			}
			set[s] = true
		}
		exclude := x.GrpcStatusFilter.GetExclude()
		return filterFunc(func(e *Entry) bool {
			c, ok := grpcStatus(e)
			if !ok {
				c = HTTPToGRPC(e.Code)
			}
			in := c >= 0 && c < len(set) && set[c]
			return in != exclude
		}), nil
	case *accesslogv3.AccessLogFilter_LogTypeFilter:
		var set [2]bool
		for _, t := range x.LogTypeFilter.GetTypes() {
			switch t {
			case datav3.AccessLogType_DownstreamEnd:
				set[DownstreamEnd] = true
			case datav3.AccessLogType_TcpConnectionEnd:
				set[TCPConnectionEnd] = true
			}
		}
		exclude := x.LogTypeFilter.GetExclude()
		return filterFunc(func(e *Entry) bool { return set[e.Type] != exclude }), nil
	case *accesslogv3.AccessLogFilter_MetadataFilter:
		issue("metadata_filter is not evaluated (no dynamic metadata here): every entry passes it")
		return passAll, nil
	case *accesslogv3.AccessLogFilter_ExtensionFilter:
		issue("extension filter %q is not evaluated: every entry passes it", x.ExtensionFilter.GetName())
		return passAll, nil
	case nil:
		return nil, fmt.Errorf("access log filter has no filter_specifier")
	default:
		return nil, fmt.Errorf("unsupported access log filter %T", x)
	}
}

// comparison compiles a ComparisonFilter (the runtime key, without a
// runtime here, leaves the default value).
func comparison(c *accesslogv3.ComparisonFilter, what string) (func(int64) bool, error) {
	if c == nil {
		return nil, fmt.Errorf("%s: comparison is required", what)
	}
	v := int64(c.GetValue().GetDefaultValue())
	switch c.GetOp() {
	case accesslogv3.ComparisonFilter_EQ:
		return func(n int64) bool { return n == v }, nil
	case accesslogv3.ComparisonFilter_GE:
		return func(n int64) bool { return n >= v }, nil
	case accesslogv3.ComparisonFilter_LE:
		return func(n int64) bool { return n <= v }, nil
	case accesslogv3.ComparisonFilter_NE:
		return func(n int64) bool { return n != v }, nil
	}
	return nil, fmt.Errorf("%s: unknown comparison op %v", what, c.GetOp())
}

// runtimeFilter samples percent_sampled of the entries: by x-request-id
// (the same decision for a request on every node) unless
// use_independent_randomness or the request has none.
func runtimeFilter(r *accesslogv3.RuntimeFilter) Filter {
	pct := fraction.FromProto(r.GetPercentSampled())
	indep := r.GetUseIndependentRandomness()
	return filterFunc(func(e *Entry) bool {
		if e.RequestID == "" || indep {
			return pct.Draw()
		}
		h := fnv.New64a()
		h.Write([]byte(e.RequestID))
		return pct.Pick(h.Sum64())
	})
}

// HTTPToGRPC is the gRPC status a gRPC client infers from an HTTP status
// without grpc-status (the gRPC HTTP/2 spec's mapping, as Envoy's).
func HTTPToGRPC(code int) int {
	switch code {
	case 400:
		return 13 // INTERNAL
	case 401:
		return 16 // UNAUTHENTICATED
	case 403:
		return 7 // PERMISSION_DENIED
	case 404:
		return 12 // UNIMPLEMENTED
	case 429, 502, 503, 504:
		return 14 // UNAVAILABLE
	default:
		return 2 // UNKNOWN
	}
}
