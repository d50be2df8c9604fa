package benchconf

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ResponseSize is the body size of the nginx responder.
const ResponseSize = 1024

// Nginx writes dir/nginx.conf and returns its path: with upstream empty an
// nginx answering every request on listen with a ResponseSize body,
// otherwise a reverse proxy to upstream with keep-alive on both sides. One
// worker, no master process, in the foreground; pid, logs and temp folders
// in dir (created if missing). Run it as `nginx -p DIR -c PATH -e DIR/error.log`.
func Nginx(dir, listen, upstream string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("nginx config folder: %w", err)
	}
	loc := fmt.Sprintf(`location / { default_type text/plain; return 200 "%s"; }`, strings.Repeat("x", ResponseSize))
	ups := ""
	if upstream != "" {
		ups = fmt.Sprintf("    upstream up { server %s; keepalive 128; }\n", upstream)
		loc = `location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }`
	}
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    keepalive_requests 1000000;
%[2]s    server {
        listen %[3]s backlog=4096;
        %[4]s
    }
}
`, dir, ups, listen, loc)
	p := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
		return "", fmt.Errorf("nginx config: %w", err)
	}
	return p, nil
}

// HAProxy writes path, an HAProxy config with one thread in http mode and
// keep-alive on both sides (http-reuse always): HTTP/1.1 from listen to
// upstream and, when grpcListen is not empty, h2c from grpcListen to
// grpcUpstream (the reference hop for gRPC latency). Run it as
// `haproxy -db -f PATH`.
func HAProxy(path, listen, upstream, grpcListen, grpcUpstream string) error {
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
    bind %s
    default_backend b

backend b
    server s1 %s
`, listen, upstream)
	if grpcListen != "" {
		conf += fmt.Sprintf(`
frontend fg
    bind %s proto h2
    default_backend bg

backend bg
    server g1 %s proto h2
`, grpcListen, grpcUpstream)
	}
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("haproxy config: %w", err)
	}
	return nil
}
