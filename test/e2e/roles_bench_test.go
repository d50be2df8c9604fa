package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"time"
)

// roleEchoServer: LISTEN SINKLISTEN. Echo on the first address; on the
// second, read to EOF then answer one byte (for bulk throughput).
func roleEchoServer(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: LISTEN SINKLISTEN")
	}
	echo, err := net.Listen("tcp", args[0])
	if err != nil {
		return err
	}
	sink, err := net.Listen("tcp", args[1])
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 256<<10)
				for {
					if _, err := c.Read(buf); err != nil {
						break
					}
				}
				c.Write([]byte{'k'})
			}()
		}
	}()
	for {
		c, err := echo.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

type pingResult struct {
	P50us, P99us, MeanUs float64
	N                    int
}

func rolePingPong(args []string) error {
	var size, count int
	if len(args) != 3 {
		return fmt.Errorf("usage: ADDR SIZE COUNT")
	}
	fmt.Sscan(args[1], &size)
	fmt.Sscan(args[2], &count)
	c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	msg := make([]byte, size)
	buf := make([]byte, size)
	lat := make([]time.Duration, 0, count)
	warm := count / 10
	for i := 0; i < count+warm; i++ {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if i >= warm {
			lat = append(lat, time.Since(start))
		}
	}
	slices.Sort(lat)
	var sum time.Duration
	for _, l := range lat {
		sum += l
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	return json.NewEncoder(os.Stdout).Encode(pingResult{
		P50us: us(lat[len(lat)/2]), P99us: us(lat[len(lat)*99/100]), MeanUs: us(sum / time.Duration(len(lat))), N: len(lat),
	})
}

type bulkResult struct{ MBps float64 }

func roleBulkSend(args []string) error {
	var total int
	if len(args) != 2 {
		return fmt.Errorf("usage: ADDR BYTES")
	}
	fmt.Sscan(args[1], &total)
	c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 128<<10)
	start := time.Now()
	for sent := 0; sent < total; {
		n, err := c.Write(buf[:min(len(buf), total-sent)])
		if err != nil {
			return err
		}
		sent += n
	}
	c.(*net.TCPConn).CloseWrite()
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(bulkResult{MBps: float64(total) / 1e6 / time.Since(start).Seconds()})
}
