// Package sniff classifies a freshly accepted TCP connection by the first
// bytes the client sends: HTTP/1.x request line, HTTP/2 prior-knowledge
// preface (h2c), TLS ClientHello, or anything else (opaque TCP).
//
// Detection is bounded by a byte budget and by a deadline so that
// server-speaks-first protocols (SMTP, MySQL, ...) are never blocked: on
// timeout the connection is reported as Unknown with whatever bytes were
// read. The bytes consumed while sniffing are replayed by the returned
// Conn, so callers hand that wrapper (not the raw socket) to the next stage.
//
// The wrapper deliberately hides io.ReaderFrom / io.WriterTo of the
// underlying *net.TCPConn so that io.Copy never takes the splice(2) path,
// which stalls on sockmap-accelerated sockets.
package sniff
