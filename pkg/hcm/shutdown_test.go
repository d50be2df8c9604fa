package hcm

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Shutdown sends GOAWAY on live h2c connections (graceful drain).
func TestShutdownSendsGOAWAY(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	p := startProxy(t, mustHCM(t, basicHCM), nil, up)
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "svc.test"}, {":path", "/x"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	sawResponse, sawGoaway := false, false
	shut := make(chan error, 1)
	for !sawGoaway {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read frame: %v (response seen: %v)", err, sawResponse)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.DataFrame:
			if f.StreamID == 1 && f.StreamEnded() && !sawResponse {
				sawResponse = true
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					shut <- p.m.Shutdown(ctx)
				}()
			}
		case *http2.GoAwayFrame:
			sawGoaway = true
			if !sawResponse {
				t.Error("GOAWAY before the in-flight response completed")
			}
			if f.ErrCode != http2.ErrCodeNo {
				t.Errorf("GOAWAY code %v", f.ErrCode)
			}
		}
	}
}

// request_timeout: a request whose body never completes gets 408.
func TestRequestTimeout(t *testing.T) {
	up := newUpstreams()
	up.set("echo", ep(startEcho(t, "echo")))
	cfg := mustHCM(t, `{"stat_prefix": "rt", "request_timeout": "0.3s",
	  "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]}}`)
	p := startProxy(t, cfg, nil, up)
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly-a-little")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no response: %v", err)
	}
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("status %d, want 408", resp.StatusCode)
	}
}
