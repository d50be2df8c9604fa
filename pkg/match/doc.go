// Package match implements Envoy's value matchers as xDS spells them:
// envoy.type.matcher.v3.StringMatcher and envoy.config.route.v3.HeaderMatcher.
// Routes (pkg/hcm) and access-log filters (pkg/accesslog) share them, so a
// header_filter on an access log matches exactly like a route's headers.
//
// A matcher is compiled once from its proto and then tested against values
// without allocating. Where a header's value comes from (an http.Header, a
// pseudo-header, several values joined with ",") is the caller's business:
// Header.Match takes the value and whether the header was present.
package match
