package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// The protocol of the xDS tests' upstreams: the client sends a payload and
// closes its write side; the server answers "<name>\n" followed by the
// payload, so every exchange says which upstream answered and proves the
// bytes crossed intact.

// loadReport is what the xds-load role prints.
type loadReport struct {
	OK   int            `json:"ok"`
	Fail int            `json:"fail"`
	By   map[string]int `json:"by"` // "addr|upstream" -> count
	Errs []string       `json:"errors,omitempty"`
}

const (
	loadMaxConns = 60000 // bound on connections per load loop
	loadPause    = 2 * time.Millisecond
)

// exchange dials addr, sends payload, and returns the upstream's name.
func exchange(addr string, payload []byte) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(payload); err != nil {
		return "", fmt.Errorf("write to %s: %w", addr, err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return "", fmt.Errorf("close write to %s: %w", addr, err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return "", fmt.Errorf("read from %s: %w", addr, err)
	}
	name, rest, ok := bytes.Cut(got, []byte("\n"))
	if !ok || !bytes.Equal(rest, payload) {
		return "", fmt.Errorf("%s: reply of %d bytes is not a name line and the %d bytes sent", addr, len(got), len(payload))
	}
	return string(name), nil
}

// roleXDSLoad: STOPFILE MAXSECONDS ADDR...: opens new connections to the
// addresses in turn until STOPFILE exists (or the bound passes), checks
// each echo, and prints a loadReport.
func roleXDSLoad(args []string) error {
	if len(args) < 3 {
		return fmt.Errorf("usage: STOPFILE MAXSECONDS ADDR...")
	}
	maxSec, err := strconv.Atoi(args[1])
	if err != nil {
		return fmt.Errorf("MAXSECONDS %q: %w", args[1], err)
	}
	stop, addrs := args[0], args[2:]
	deadline := time.Now().Add(time.Duration(maxSec) * time.Second)
	rep := loadReport{By: map[string]int{}}
	for i := 0; i < loadMaxConns && time.Now().Before(deadline); i++ {
		if _, err := os.Stat(stop); err == nil {
			break
		}
		addr := addrs[i%len(addrs)]
		payload := pattern(uint64(i), 64+i%512)
		name, err := exchange(addr, payload)
		if err != nil {
			rep.Fail++
			if len(rep.Errs) < 10 {
				rep.Errs = append(rep.Errs, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
			}
		} else {
			rep.OK++
			rep.By[addr+"|"+name]++
		}
		time.Sleep(loadPause) // pacing, not synchronisation
	}
	return json.NewEncoder(os.Stdout).Encode(rep)
}

// roleXDSDial: ADDR: one exchange, prints the upstream's name.
func roleXDSDial(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: ADDR")
	}
	name, err := exchange(args[0], pattern(9, 1000))
	if err != nil {
		return err
	}
	fmt.Print(name)
	return nil
}

// idServer is an upstream that answers with its name and the payload.
type idServer struct {
	lis  net.Listener
	name string
	mu   sync.Mutex
	n    int
}

func (m *mesh) idServer(addr, name string) *idServer {
	s := &idServer{lis: m.listen(addr), name: name}
	serveEach(s.lis, 30*time.Second, func(c net.Conn) {
		got, err := io.ReadAll(c)
		if err != nil {
			return
		}
		if _, err := c.Write(append([]byte(s.name+"\n"), got...)); err != nil {
			return
		}
		s.mu.Lock()
		s.n++
		s.mu.Unlock()
	})
	return s
}

func (s *idServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func (s *idServer) addr() string { return s.lis.Addr().String() }
