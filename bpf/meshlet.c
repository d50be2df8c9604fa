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

// Per paired socket: bytes it sent through the proxy, and flags (a sender
// that missed once stays on TCP for good, so bytes are never reordered
// between the TCP receive queue and the psock queue; kernel forwarding arms
// once the proxy has relayed every byte sent before).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, struct sock_key);
	__type(value, struct sk_state);
} mlt_sk_state SEC(".maps");

// Kernel forwarding set up by the proxy for plain TCP routes: sends of the
// key socket go straight to the target (egress of the proxy's other socket,
// or the receive queue of the socket at the other end), skipping the proxy.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, struct sock_key);
	__type(value, struct fwd);
} mlt_fwd SEC(".maps");

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

// new_state starts a paired socket's record before it can send anything.
static __always_inline void new_state(struct sock_key *k)
{
	struct sk_state st = {};
	bpf_map_update_elem(&mlt_sk_state, k, &st, BPF_ANY);
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
		new_state(&k);
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
	new_state(&k);
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
		new_state(&k);
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
	new_state(&k);
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

static __always_inline void count_pass(struct stats *st, __u32 size)
{
	if (st) {
		st->pass_msgs++;
		st->pass_bytes += size;
	}
}

// forward applies kernel forwarding when the proxy armed it for this
// sender. It returns 1 when the message was forwarded.
static __always_inline int forward(struct sk_msg_md *msg, struct sock_key *self, struct sk_state *ss,
				   struct stats *st, __u32 size)
{
	struct fwd *f = bpf_map_lookup_elem(&mlt_fwd, self);
	if (!f || (ss->flags & SKS_FWD_DEAD))
		return 0;
	if (!(ss->flags & SKS_FWD_ARMED)) {
		// Arm only when the proxy has relayed every byte this socket
		// sent so far: then nothing sent later can overtake them.
		if (f->relayed != ss->sent)
			return 0;
		// Straight into the far socket's receive queue, and only if
		// everything the proxy sent it went that way too. (Redirecting
		// to the egress of the proxy's other socket is not used: under
		// back-pressure the sender's wake-up is lost.)
		struct sock_key via = f->via;
		struct sk_state *vs = bpf_map_lookup_elem(&mlt_sk_state, &via);
		if (!vs || (vs->flags & SKS_TAINTED)) {
			ss->flags |= SKS_FWD_DEAD;
			return 0;
		}
		ss->flags |= SKS_FWD_ARMED;
		if (st)
			st->fwd_armed++;
	}
	struct sock_key target = f->target;
	long ret = bpf_msg_redirect_hash(msg, &mlt_sock_app, &target, BPF_F_INGRESS);
	if (ret == SK_PASS) {
		if (st) {
			st->fwd_msgs++;
			st->fwd_bytes += size;
		}
		return 1;
	}
	// The target is gone (the connection is closing): back to the proxy,
	// for good. Bytes still go in order: the proxy appends after them.
	ss->flags |= SKS_FWD_DEAD;
	return 0;
}

static __always_inline int redirect(struct sk_msg_md *msg, void *peers, __u32 direction_flag, int may_forward)
{
	struct stats *st = stats();
	struct agent_config *cfg = config();
	__u32 size = msg->size;

	struct sock_key self = {
		.local_addr = msg->local_ip4,
		.remote_addr = msg->remote_ip4,
		.local_port = (__u16)msg->local_port,
		.remote_port = (__u16)bpf_ntohl(msg->remote_port),
	};
	struct sk_state *ss = bpf_map_lookup_elem(&mlt_sk_state, &self);
	int off = !cfg || (cfg->flags & CFG_ACCEL_OFF);

	if (ss && may_forward) {
		if (off || (cfg->flags & CFG_NO_FORWARD)) {
			if (ss->flags & SKS_FWD_ARMED)
				ss->flags |= SKS_FWD_DEAD;
		} else if (forward(msg, &self, ss, st, size)) {
			return SK_PASS;
		}
	}
	// From here the bytes go to the proxy's socket: count them so the
	// proxy can tell when it has relayed them all.
	if (ss)
		__sync_fetch_and_add(&ss->sent, size);

	if (!ss) {
		count_pass(st, size);
		return SK_PASS;
	}
	if (off || !(cfg->flags & direction_flag) || (ss->flags & SKS_TAINTED)) {
		// Once bytes went through TCP, this socket never redirects into
		// its peer's queue again (they could overtake them).
		ss->flags |= SKS_TAINTED;
		count_pass(st, size);
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
	ss->flags |= SKS_TAINTED;
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
	return redirect(msg, &mlt_sock_proxy, CFG_ACCEL_INTO_PROXY, 1);
}

// Sends by the proxy's sockets go into application sockets.
SEC("sk_msg")
int meshlet_msg_proxy(struct sk_msg_md *msg)
{
	return redirect(msg, &mlt_sock_app, CFG_ACCEL_INTO_APP, 0);
}

SEC("sk_skb/stream_verdict")
int meshlet_skb_verdict(struct __sk_buff *skb)
{
	return SK_PASS;
}
