// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// meshlet's socket-steering programs.
//
//   cgroup/connect4  capture: rewrite connect() to a meshed service into the
//                    agent's proxy listener, remembering the original
//                    destination by socket cookie.
//   sockops          pairing: put only the sockets the agent paired into the
//                    sockhashes (the app's captured socket, the proxy's
//                    accepted socket, the proxy's upstream socket and a
//                    same-node server's socket) and publish the original
//                    destination keyed by the app socket's local address.
//   sk_msg           acceleration: redirect a send straight into the paired
//                    socket's receive queue; on any miss return SK_PASS and
//                    stop redirecting that socket (never drop, never reorder).
//   sk_skb           a no-op stream verdict on the proxy's sockhash so its
//                    members receive through the psock path (epoll wake-ups).
//
// Byte orders: addresses are kept in network order, ports in host order.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "meshlet.h"

char __license[] SEC("license") = "Dual MIT/GPL";


struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} mlt_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct agent_config);
} mlt_config SEC(".maps");

// Sockets the agent opened itself (upstream dials): never captured.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64);
	__type(value, __u32);
} mlt_bypass SEC(".maps");

// Captured sockets between connect() and ESTABLISHED, by socket cookie.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64);
	__type(value, struct orig_dst);
} mlt_origdst SEC(".maps");

// Captured connections by the app socket's local address: what the proxy
// reads on accept to learn the original destination.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, struct conn_key);
	__type(value, struct conn_value);
} mlt_conns SEC(".maps");

// Sockets owned by applications (captured clients, same-node servers).
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, struct sock_key);
	__type(value, __u64);
} mlt_sock_app SEC(".maps");

// Sockets owned by the agent's proxy (accepted and upstream).
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, struct sock_key);
	__type(value, __u64);
} mlt_sock_proxy SEC(".maps");

// Senders that missed once: they stay on the TCP path for good, so bytes
// are never reordered between the TCP receive queue and the psock queue.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, struct sock_key);
	__type(value, __u32);
} mlt_taint SEC(".maps");

// Expected server-side sockets of proxy upstream connections (keyed by the
// server's view of the tuple).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, struct sock_key);
	__type(value, __u32);
} mlt_up_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stats);
} mlt_stats SEC(".maps");

static __always_inline struct stats *stats(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&mlt_stats, &zero);
}

static __always_inline struct agent_config *config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&mlt_config, &zero);
}

SEC("cgroup/connect4")
int meshlet_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM)
		return 1;
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != 0)
		return 1;

	struct agent_config *cfg = config();
	if (!cfg || !cfg->proxy_port)
		return 1;

	struct svc_key key = {
		.addr = ctx->user_ip4,
		.port = bpf_ntohs((__u16)ctx->user_port),
	};
	struct svc_value *svc = bpf_map_lookup_elem(&mlt_services, &key);
	if (!svc) {
		key.addr = 0; // any address on a meshed port
		svc = bpf_map_lookup_elem(&mlt_services, &key);
		if (!svc)
			return 1;
	}

	struct stats *st = stats();
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_lookup_elem(&mlt_bypass, &cookie)) {
		if (st)
			st->capture_bypassed++;
		return 1;
	}
	// Never capture connections to the proxy itself.
	if (ctx->user_ip4 == cfg->proxy_addr && key.port == cfg->proxy_port)
		return 1;

	// Fail open: capture only while a proxy listener is alive in the
	// caller's network namespace.
	struct bpf_sock_tuple tuple = {};
	tuple.ipv4.daddr = cfg->proxy_addr;
	tuple.ipv4.dport = bpf_htons(cfg->proxy_port);
	struct bpf_sock *sk = bpf_sk_lookup_tcp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk) {
		if (st)
			st->capture_no_listener++;
		return 1;
	}
	bpf_sk_release(sk);

	struct orig_dst orig = {
		.addr = ctx->user_ip4,
		.port = bpf_ntohs((__u16)ctx->user_port),
		.service_id = svc->id,
	};
	if (bpf_map_update_elem(&mlt_origdst, &cookie, &orig, BPF_ANY) != 0) {
		if (st)
			st->capture_errors++;
		return 1; // cannot remember the destination: do not capture
	}
	ctx->user_ip4 = cfg->proxy_addr;
	ctx->user_port = bpf_htons(cfg->proxy_port);
	if (st)
		st->captured++;
	return 1;
}

static __always_inline void sockops_key(struct bpf_sock_ops *skops, struct sock_key *k)
{
	k->local_addr = skops->local_ip4;
	k->remote_addr = skops->remote_ip4;
	k->local_port = (__u16)skops->local_port;
	k->remote_port = (__u16)bpf_ntohl(skops->remote_port);
}

static __always_inline void reverse_key(const struct sock_key *in, struct sock_key *out)
{
	out->local_addr = in->remote_addr;
	out->remote_addr = in->local_addr;
	out->local_port = in->remote_port;
	out->remote_port = in->local_port;
}

static __always_inline void active_established(struct bpf_sock_ops *skops, struct stats *st)
{
	struct sock_key k = {};
	sockops_key(skops, &k);
	__u64 cookie = bpf_get_socket_cookie(skops);

	struct orig_dst *orig = bpf_map_lookup_elem(&mlt_origdst, &cookie);
	if (orig) {
		// An application socket the connect hook captured.
		struct conn_key ck = {.addr = k.local_addr, .port = k.local_port};
		struct conn_value cv = {
			.orig_addr = orig->addr,
			.orig_port = orig->port,
			.service_id = orig->service_id,
			.cookie = cookie,
		};
		bpf_map_update_elem(&mlt_conns, &ck, &cv, BPF_ANY);
		bpf_map_delete_elem(&mlt_origdst, &cookie);
		bpf_map_delete_elem(&mlt_taint, &k);
		if (bpf_sock_hash_update(skops, &mlt_sock_app, &k, BPF_ANY) == 0) {
			if (st)
				st->paired_app++;
		} else if (st) {
			st->pair_errors++;
		}
		return;
	}

	__u32 *flags = bpf_map_lookup_elem(&mlt_bypass, &cookie);
	if (!flags || !(*flags & BYPASS_ACCEL_UPSTREAM))
		return;
	// The proxy's upstream socket: pair it, and expect its server side.
	bpf_map_delete_elem(&mlt_taint, &k);
	if (bpf_sock_hash_update(skops, &mlt_sock_proxy, &k, BPF_ANY) != 0) {
		if (st)
			st->pair_errors++;
		return;
	}
	if (st)
		st->paired_upstream++;
	struct sock_key peer = {};
	reverse_key(&k, &peer);
	__u32 one = 1;
	bpf_map_update_elem(&mlt_up_peers, &peer, &one, BPF_ANY);
}

static __always_inline void passive_established(struct bpf_sock_ops *skops, struct stats *st)
{
	struct agent_config *cfg = config();
	if (!cfg)
		return;
	struct sock_key k = {};
	sockops_key(skops, &k);

	if (k.local_addr == cfg->proxy_addr && k.local_port == cfg->proxy_port) {
		// The proxy accepted a connection: pair it only if it is a
		// captured application socket.
		struct conn_key ck = {.addr = k.remote_addr, .port = k.remote_port};
		if (!bpf_map_lookup_elem(&mlt_conns, &ck))
			return;
		bpf_map_delete_elem(&mlt_taint, &k);
		if (bpf_sock_hash_update(skops, &mlt_sock_proxy, &k, BPF_ANY) == 0) {
			if (st)
				st->paired_proxy++;
		} else if (st) {
			st->pair_errors++;
		}
		return;
	}

	if (!bpf_map_lookup_elem(&mlt_up_peers, &k))
		return;
	// A same-node server accepted one of the proxy's upstream connections.
	bpf_map_delete_elem(&mlt_up_peers, &k);
	bpf_map_delete_elem(&mlt_taint, &k);
	if (bpf_sock_hash_update(skops, &mlt_sock_app, &k, BPF_ANY) == 0) {
		if (st)
			st->paired_server++;
	} else if (st) {
		st->pair_errors++;
	}
}

SEC("sockops")
int meshlet_sockops(struct bpf_sock_ops *skops)
{
	if (skops->family != 2 /* AF_INET */)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		active_established(skops, stats());
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		passive_established(skops, stats());
		break;
	}
	return 1;
}

static __always_inline int redirect(struct sk_msg_md *msg, void *peers, __u32 direction_flag)
{
	struct stats *st = stats();
	struct agent_config *cfg = config();
	__u32 size = msg->size;

	if (!cfg || (cfg->flags & CFG_ACCEL_OFF) || !(cfg->flags & direction_flag)) {
		if (st) {
			st->pass_msgs++;
			st->pass_bytes += size;
		}
		return SK_PASS;
	}

	struct sock_key self = {
		.local_addr = msg->local_ip4,
		.remote_addr = msg->remote_ip4,
		.local_port = (__u16)msg->local_port,
		.remote_port = (__u16)bpf_ntohl(msg->remote_port),
	};
	if (bpf_map_lookup_elem(&mlt_taint, &self)) {
		if (st) {
			st->pass_msgs++;
			st->pass_bytes += size;
		}
		return SK_PASS;
	}
	struct sock_key peer = {};
	reverse_key(&self, &peer);
	if (bpf_msg_redirect_hash(msg, peers, &peer, BPF_F_INGRESS) == SK_PASS) {
		if (st) {
			st->redirect_msgs++;
			st->redirect_bytes += size;
		}
		return SK_PASS;
	}
	// Peer not (yet) paired: send through TCP, and keep this socket on TCP
	// from now on so later redirected bytes cannot overtake these.
	__u32 one = 1;
	bpf_map_update_elem(&mlt_taint, &self, &one, BPF_ANY);
	if (st) {
		st->miss_msgs++;
		st->miss_bytes += size;
	}
	return SK_PASS;
}

// Sends by application sockets go into the proxy's sockets.
SEC("sk_msg")
int meshlet_msg_app(struct sk_msg_md *msg)
{
	return redirect(msg, &mlt_sock_proxy, CFG_ACCEL_INTO_PROXY);
}

// Sends by the proxy's sockets go into application sockets.
SEC("sk_msg")
int meshlet_msg_proxy(struct sk_msg_md *msg)
{
	return redirect(msg, &mlt_sock_app, CFG_ACCEL_INTO_APP);
}

SEC("sk_skb/stream_verdict")
int meshlet_skb_verdict(struct __sk_buff *skb)
{
	return SK_PASS;
}
