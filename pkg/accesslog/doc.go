// Package accesslog is Envoy's access logging as xDS configures it: the
// access_log list of an HTTP connection manager or a tcp_proxy, with
//
//   - substitution format strings (text_format, text_format_source,
//     json_format, the deprecated format and json_format of FileAccessLog)
//     and their command operators, %REQ(X-REQUEST-ID)%, %RESPONSE_FLAGS%,
//     %START_TIME(%s.%3f)% and the rest (Format; the same strings are the
//     values of request_headers_to_add and response_headers_to_add);
//   - the access-log filters (status code, duration, response flags, gRPC
//     status, headers, runtime sampling, log type, and/or trees);
//   - the file, stdout and stderr loggers, with one buffered writer per path
//     shared by every listener that names it (Files).
//
// Compile turns the protos into Logs and fails on what Envoy would reject
// (an unknown command operator, a malformed format string, a bad regex), so
// the xDS update is NACKed with that reason; what is valid but not acted on
// here (gRPC access-log services, metadata and CEL filters) is reported
// as an issue and skipped.
//
// An Entry is one finished stream or TCP connection as the proxy saw it;
// the data plane fills it and hands it to a Logger (Files.Bind) at the end.
package accesslog
