package hcm

import (
	"io"
	"net"

	"github.com/meshlet/meshlet/internal/rawio"
	"github.com/meshlet/meshlet/pkg/sniff"
)

// socketOf unwraps the connection types of this package and of pkg/sniff
// down to the socket; pre is the sniffer's replay buffer holder, when the
// socket sits under one.
func socketOf(c net.Conn) (sock net.Conn, pre *sniff.Conn) {
	for {
		switch v := c.(type) {
		case plainConn:
			c = v.Conn
		case *serverConn:
			c = v.Conn
		case *sniff.Conn:
			if pre != nil {
				return nil, nil // two replay layers: not ours to unwrap
			}
			pre, c = v, v.Conn
		default:
			return c, pre
		}
	}
}

// newRawIO returns a reader and a writer for c with raw socket I/O
// (internal/rawio): the reader replays what a sniffer peeked first. When
// raw I/O is not possible, both are c itself.
func newRawIO(c net.Conn) (io.Reader, io.Writer) {
	sock, pre := socketOf(c)
	if pre == nil {
		return rawio.Split(c, sock, nil)
	}
	return rawio.Split(c, sock, pre)
}
