// SPDX-License-Identifier: (MIT OR GPL-2.0)
// Shared layouts of meshlet's BPF maps. pkg/sockmap mirrors these structs
// (bpf2go generates the Go types from this file's BTF).
#pragma once

#include <linux/types.h>

#define SOCK_STREAM 1

#define MAX_SERVICES 65536
#define MAX_CONNS 65536

// agent_config.flags
#define CFG_ACCEL_OFF (1U << 0)        // global kill switch: no redirects
#define CFG_ACCEL_INTO_PROXY (1U << 1) // app/server sends -> proxy sockets
#define CFG_ACCEL_INTO_APP (1U << 2)   // proxy sends -> app/server sockets
#define CFG_NO_FORWARD (1U << 3)       // no kernel forwarding of TCP routes

// sk_state.flags
#define SKS_TAINTED 1U   // missed its peer once: stays on TCP
#define SKS_FWD_ARMED 2U // kernel forwarding in force
#define SKS_FWD_DEAD 4U  // kernel forwarding ended for good


// mlt_bypass values
#define BYPASS_CAPTURE 1U          // never capture this socket
#define BYPASS_ACCEL_UPSTREAM 2U   // pair it as a proxy upstream socket

struct svc_key {
	__u32 addr; // network order; 0 = any address on this port
	__u16 port; // host order
	__u16 pad;
};

struct svc_value {
	__u32 id;
	__u32 flags;
};

struct agent_config {
	__u32 proxy_addr; // network order
	__u16 proxy_port; // host order
	__u16 pad;
	__u32 flags;
	__u32 pad2;
};

struct orig_dst {
	__u32 addr;
	__u16 port;
	__u16 pad;
	__u32 service_id;
};

struct conn_key {
	__u32 addr; // the app socket's local address
	__u16 port;
	__u16 pad;
};

struct conn_value {
	__u32 orig_addr;
	__u16 orig_port;
	__u16 pad;
	__u32 service_id;
	__u32 pad2;
	__u64 cookie; // the app socket's cookie
};

struct sock_key {
	__u32 local_addr;
	__u32 remote_addr;
	__u16 local_port;
	__u16 remote_port;
};

struct sk_state {
	__u64 sent; // bytes sent into the proxy (not forwarded)
	__u32 flags;
	__u32 pad;
};

struct fwd {
	struct sock_key target; // the socket at the far end (mlt_sock_app)
	struct sock_key via;    // the proxy's socket towards it (mlt_sock_proxy)
	__u64 relayed; // bytes the proxy has relayed from this socket
	__u32 flags;
	__u32 pad;
};

struct stats {
	__u64 captured;
	__u64 capture_bypassed;
	__u64 capture_no_listener;
	__u64 capture_errors;
	__u64 paired_app;
	__u64 paired_proxy;
	__u64 paired_upstream;
	__u64 paired_server;
	__u64 pair_errors;
	__u64 redirect_msgs;
	__u64 redirect_bytes;
	__u64 miss_msgs;
	__u64 miss_bytes;
	__u64 pass_msgs;
	__u64 pass_bytes;
	__u64 fwd_armed;
	__u64 fwd_msgs;
	__u64 fwd_bytes;
};
