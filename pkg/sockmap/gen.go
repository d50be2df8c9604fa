package sockmap

// The BPF object is committed (meshlet_x86_bpfel.o, meshlet_arm64_bpfel.o)
// so `go build` needs no clang; `make generate` rebuilds it.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target amd64,arm64 -type svc_key -type svc_value -type agent_config -type orig_dst -type conn_key -type conn_value -type sock_key -type sk_state -type fwd -type stats meshlet ../../bpf/meshlet.c -- -I../../bpf
