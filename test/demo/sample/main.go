// Command sample is the demo's stand-in for real applications: an echo
// server that names itself in every reply, and a client that dials a
// service address, sends a payload, checks the echo and prints who answered.
package main

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: sample server|client [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = server(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		err = fmt.Errorf("unknown role %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sample:", err)
		os.Exit(1)
	}
}

// server: each connection gets "NAME\n" then an echo of everything it sends.
func server(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:17001", "address to listen on")
	name := fs.String("name", "sample", "name to announce")
	if err := fs.Parse(args); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	for {
		c, err := lis.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			fmt.Fprintf(c, "%s\n", *name)
			buf := make([]byte, 32<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					c.(*net.TCPConn).CloseWrite()
					return
				}
			}
		}()
	}
}

func client(args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	addr := fs.String("addr", "10.96.0.10:7000", "service address to dial")
	count := fs.Int("count", 4, "connections to make")
	size := fs.Int("size", 1<<20, "bytes to send (and expect back) per connection")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for i := 0; i < *count; i++ {
		start := time.Now()
		c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
		if err != nil {
			return fmt.Errorf("dial %s: %w", *addr, err)
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		payload := make([]byte, *size)
		for j := range payload {
			payload[j] = byte(rand.Uint32())
		}
		go func() {
			c.Write(payload)
			c.(*net.TCPConn).CloseWrite()
		}()
		reply, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			return fmt.Errorf("read from %s: %w", *addr, err)
		}
		name, echo, ok := bytes.Cut(reply, []byte("\n"))
		if !ok || !bytes.Equal(echo, payload) {
			return fmt.Errorf("connection %d to %s: echo differs (%d bytes back, %d sent)", i, *addr, len(echo), len(payload))
		}
		sum := sha256.Sum256(echo)
		fmt.Printf("dial %-16s answered by %-8s %7d bytes echoed intact (sha256 %x) in %v\n",
			*addr, name, len(echo), sum[:6], time.Since(start).Round(time.Millisecond))
	}
	return nil
}
