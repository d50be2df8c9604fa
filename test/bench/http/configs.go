package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

func nginxCommon(dir string) string {
	return fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
`, dir)
}

func nginxHTTPCommon(dir string) string {
	return fmt.Sprintf(`    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    keepalive_requests 1000000;
`, dir)
}

// writeNginxUpstream writes an nginx config that answers every request
// with a fixed 1 KiB body.
func writeNginxUpstream(tmp string, port int) (string, error) {
	dir := filepath.Join(tmp, "up")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	body := strings.Repeat("x", 1024)
	conf := nginxCommon(dir) + "http {\n" + nginxHTTPCommon(dir) + fmt.Sprintf(`    server {
        listen 127.0.0.1:%d backlog=4096;
        location / { default_type text/plain; return 200 "%s"; }
    }
}
`, port, body)
	p := filepath.Join(dir, "nginx.conf")
	return p, os.WriteFile(p, []byte(conf), 0o644)
}

func writeNginxProxy(tmp string, port, up int) (string, error) {
	dir := filepath.Join(tmp, "px")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	conf := nginxCommon(dir) + "http {\n" + nginxHTTPCommon(dir) + fmt.Sprintf(`    upstream up { server 127.0.0.1:%d; keepalive 128; }
    server {
        listen 127.0.0.1:%d backlog=4096;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
`, up, port)
	p := filepath.Join(dir, "nginx.conf")
	return p, os.WriteFile(p, []byte(conf), 0o644)
}

// writeHAProxy writes the HAProxy config: HTTP/1.1 on port to up, and
// h2c (gRPC) on grpcPort to grpcUp, the reference L7 proxy for the gRPC
// latency figure.
func writeHAProxy(tmp string, port, up, grpcPort, grpcUp int) (string, error) {
	conf := fmt.Sprintf(`global
    nbthread 1
    maxconn 4096
    log stderr format raw local0 emerg

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always

frontend f
    bind 127.0.0.1:%d
    default_backend b

backend b
    server s1 127.0.0.1:%d

frontend fg
    bind 127.0.0.1:%d proto h2
    default_backend bg

backend bg
    server g1 127.0.0.1:%d proto h2
`, port, up, grpcPort, grpcUp)
	p := filepath.Join(tmp, "haproxy.cfg")
	return p, os.WriteFile(p, []byte(conf), 0o644)
}
