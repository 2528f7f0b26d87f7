// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * The eBPF source of conn-exporter's lifecycle collector (issue 13): TCP connections
 * closed and failed, bytes and retransmits, aggregated in the kernel by peer. User space
 * reads the maps at scrape time; nothing crosses per connection.
 *
 * Rebuilt by scripts/build-bpf.sh into bpf/lifecycle.bpf.o (committed; the binary
 * embeds it, so building conn-exporter needs no clang). scripts/test.sh checks that the
 * committed object is what this source compiles to.
 *
 * Attached as raw tracepoints (BPF_RAW_TRACEPOINT_OPEN), which need no tracefs.
 * Kernel structures are read with CO-RE: only the fields named below matter, their
 * offsets are relocated against the running kernel's BTF when the object is loaded.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* include/net/tcp_states.h */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

#define INBOUND 0
#define OUTBOUND 1

/* The fields read, as the kernel names them; layouts come from the kernel's BTF. */
struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

typedef struct {
	__s64 counter;
} atomic64_t;

struct sock_common {
	atomic64_t skc_cookie;
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	int skc_bound_dev_if;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

/* The local port: skc_num is zeroed when the port is released, before the tracepoint
 * of the transition to CLOSE fires; inet_sport stays. */
struct inet_sock {
	__be16 inet_sport;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 bytes_acked;
	__u64 bytes_retrans;
	__u32 total_retrans;
	__u32 srtt_us;        /* smoothed RTT << 3, microseconds */
	__u32 dsack_dups;
	__u32 data_segs_out;
} __attribute__((preserve_access_index));

/* The control buffer, where TCP keeps a struct tcp_skb_cb: seq, end_seq, then the
 * union whose first u16 is tcp_gso_segs (offset 8), the segments in the packet. */
struct sk_buff {
	char cb[48];
} __attribute__((preserve_access_index));

/* A peer with the ephemeral port folded away, in its network namespace. Mirrored by
 * `RawKey` in src/lifecycle/ebpf.rs: 44 bytes, no implicit padding. */
struct peer_key {
	__u8 local[16];  /* IPv4: first 4 bytes, network order */
	__u8 remote[16];
	__u32 ifindex;   /* sk_bound_dev_if, 0 when unbound; an index of the namespace's */
	__u32 netns;     /* the socket's network namespace, its nsfs inode (ns.inum) */
	__u16 port;      /* the service's port, host order: local inbound, remote outbound */
	__u8 family;     /* AF_INET or AF_INET6 */
	__u8 direction;  /* INBOUND or OUTBOUND */
};
_Static_assert(sizeof(struct peer_key) == 44, "struct peer_key has implicit padding");

/* Mirrored by `RawTotals` in src/lifecycle/ebpf.rs. */
struct peer_totals {
	__u64 closed;
	__u64 failed;
	__u64 sent_bytes;      /* min(bytes_acked less the SYN if outbound, bytes_sent - bytes_retrans) */
	__u64 received_bytes;  /* bytes_received: payload plus the FIN if it came */
	__u64 retransmits;     /* tcp:tcp_retransmit_skb, as they happen, by segments */
	__u64 total_retrans;   /* total_retrans of the sockets closed, read at close */
};

/* One established connection's close, for the quality collector (issue 19): what its
 * tcp_info would say of the fields it counts; with `count_in_user` (NAT resolution,
 * issue 21) also each failed connect, and the byte counts the lifecycle counters take.
 * Mirrored by `parse::ebpf_close`: 104 bytes, no implicit padding. */
struct close_record {
	__u64 cookie;         /* the socket's cookie; 0 when no dump ever asked for it */
	__u8 local[16];       /* IPv4: first 4 bytes, network order */
	__u8 remote[16];
	__u32 netns;          /* nsfs inode */
	__u32 ifindex;
	__u16 local_port;     /* host order */
	__u16 remote_port;
	__u8 family;
	__u8 direction;       /* INBOUND or OUTBOUND */
	__u8 failed;          /* 1: a connect that never reached ESTABLISHED */
	__u8 pad;
	__u32 srtt_us;        /* tcpi_rtt */
	__u32 total_retrans;  /* tcpi_total_retrans */
	__u32 dsack_dups;     /* tcpi_dsack_dups */
	__u32 data_segs_out;  /* tcpi_data_segs_out */
	__u64 bytes_acked;    /* tcpi_bytes_acked */
	__u64 bytes_sent;     /* tcpi_bytes_sent */
	__u64 bytes_retrans;  /* tcpi_bytes_retrans */
	__u64 bytes_received; /* tcpi_bytes_received */
};
_Static_assert(sizeof(struct close_record) == 104, "struct close_record has implicit padding");

/* Indexes of `stats`. */
#define STAT_CLOSES 0          /* sockets of the namespace that entered CLOSE */
#define STAT_UNTRACKED 1       /* established sockets closed with no direction known */
#define STAT_OVERFLOW 2        /* additions merged into `overflow` because `peers` was full */
#define STAT_DIRECTIONS_FULL 3 /* established sockets whose direction could not be kept */
#define STAT_CLOSES_LOST 4     /* close records the ring buffer had no room for */
#define STAT_MAX 5

/* The network namespace counted (its inode number); 0 counts every namespace. Set by
 * the loader. */
const volatile __u32 netns_ino = 0;

/* Whether each established connection's close is sent to `closes` (the quality
 * collector is on). Set by the loader. */
const volatile __u8 report_closes = 0;

/* Whether user space counts the lifecycle totals from the close records (NAT
 * resolution needs each connection's whole tuple, which `peers` folds away): every close
 * and failed connect is then reported, nothing is added to `peers`, and retransmits are
 * counted at close from total_retrans, as the notifications do. Set by the loader. */
const volatile __u8 count_in_user = 0;

/* Close records; its size is set by the loader (one page when none are reported). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} closes SEC(".maps");

/* Direction of each established socket, by the socket's address; deleted at close. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 20);
	__type(key, __u64);
	__type(value, __u8);
} directions SEC(".maps");

/* Totals by peer; max_entries is set by the loader from --collector.lifecycle.max-series. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct peer_key);
	__type(value, struct peer_totals);
} peers SEC(".maps");

/* What did not fit in `peers`, by direction: user space shows it as `other`. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct peer_totals);
} overflow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stat_add(__u32 i)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &i);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline int tcp_of_namespace(struct sock *sk)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	return netns_ino == 0 || BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) == netns_ino;
}

static __always_inline int make_key(struct sock *sk, __u8 direction, struct peer_key *key)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	__builtin_memset(key, 0, sizeof(*key));
	if (family == AF_INET) {
		__be32 local = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__be32 remote = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		__builtin_memcpy(key->local, &local, 4);
		__builtin_memcpy(key->remote, &remote, 4);
	} else if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&key->local, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&key->remote, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		return -1;
	}
	key->family = family;
	key->direction = direction;
	key->ifindex = BPF_CORE_READ(sk, __sk_common.skc_bound_dev_if);
	key->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (direction == INBOUND)
		key->port = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	else
		key->port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return 0;
}

/* The totals of a peer, made when new; the direction's overflow slot when `peers` is
 * full (counted in STAT_OVERFLOW). */
static __always_inline struct peer_totals *totals_of(struct peer_key *key)
{
	static const struct peer_totals zero;
	struct peer_totals *t = bpf_map_lookup_elem(&peers, key);
	__u32 dir = key->direction;

	if (t)
		return t;
	bpf_map_update_elem(&peers, key, &zero, BPF_NOEXIST);
	t = bpf_map_lookup_elem(&peers, key);
	if (t)
		return t;
	stat_add(STAT_OVERFLOW);
	return bpf_map_lookup_elem(&overflow, &dir);
}

static __always_inline void report_close(struct sock *sk, struct tcp_sock *tp, struct peer_key *key, __u8 failed)
{
	struct close_record *r = bpf_ringbuf_reserve(&closes, sizeof(*r), 0);

	if (!r) {
		stat_add(STAT_CLOSES_LOST);
		return;
	}
	r->cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	__builtin_memcpy(r->local, key->local, 16);
	__builtin_memcpy(r->remote, key->remote, 16);
	r->netns = key->netns;
	r->ifindex = key->ifindex;
	r->local_port = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	r->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	r->family = key->family;
	r->direction = key->direction;
	r->failed = failed;
	r->pad = 0;
	r->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	r->total_retrans = BPF_CORE_READ(tp, total_retrans);
	r->dsack_dups = BPF_CORE_READ(tp, dsack_dups);
	r->data_segs_out = BPF_CORE_READ(tp, data_segs_out);
	r->bytes_acked = BPF_CORE_READ(tp, bytes_acked);
	r->bytes_sent = BPF_CORE_READ(tp, bytes_sent);
	r->bytes_retrans = BPF_CORE_READ(tp, bytes_retrans);
	r->bytes_received = BPF_CORE_READ(tp, bytes_received);
	bpf_ringbuf_submit(r, 0);
}

SEC("raw_tracepoint/inet_sock_set_state")
int on_state(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int old = (int)ctx->args[1];
	int new = (int)ctx->args[2];
	__u64 addr = (__u64)sk;
	struct peer_key key;
	struct peer_totals *t;
	__u8 *known;
	__u8 dir;

	if (new != TCP_ESTABLISHED && new != TCP_CLOSE)
		return 0;
	if (!tcp_of_namespace(sk))
		return 0;
	if (new == TCP_ESTABLISHED) {
		if (old == TCP_SYN_RECV)
			dir = INBOUND;
		else if (old == TCP_SYN_SENT)
			dir = OUTBOUND;
		else
			return 0;
		if (bpf_map_update_elem(&directions, &addr, &dir, BPF_ANY))
			stat_add(STAT_DIRECTIONS_FULL);
		return 0;
	}

	stat_add(STAT_CLOSES);
	known = bpf_map_lookup_elem(&directions, &addr);
	if (known) {
		dir = *known;
		bpf_map_delete_elem(&directions, &addr);
	} else if (old == TCP_SYN_SENT) {
		/* A connect that failed: the socket still has its remote port. */
		if (make_key(sk, OUTBOUND, &key))
			return 0;
		if (count_in_user) {
			report_close(sk, (struct tcp_sock *)sk, &key, 1);
			return 0;
		}
		t = totals_of(&key);
		if (t)
			__sync_fetch_and_add(&t->failed, 1);
		return 0;
	} else if (old == TCP_SYN_RECV) {
		/* Accepted but closed before it was established (a Fast Open child). */
		dir = INBOUND;
	} else {
		/* A listener or a socket that never connected; or an established one whose
		 * direction is unknown (established before the program was attached, or the
		 * directions map was full). */
		if (old != TCP_LISTEN && old != TCP_CLOSE)
			stat_add(STAT_UNTRACKED);
		return 0;
	}

	if (make_key(sk, dir, &key))
		return 0;
	if (count_in_user) {
		report_close(sk, (struct tcp_sock *)sk, &key, 0);
		return 0;
	}
	t = totals_of(&key);
	if (!t)
		return 0;
	{
		struct tcp_sock *tp = (struct tcp_sock *)sk;
		__u64 acked = BPF_CORE_READ(tp, bytes_acked);
		__u64 sent = BPF_CORE_READ(tp, bytes_sent);
		__u64 retrans = BPF_CORE_READ(tp, bytes_retrans);
		__u64 payload;

		/* An outbound socket's SYN is acknowledged sequence space, not payload. */
		if (dir == OUTBOUND && acked > 0)
			acked -= 1;
		/* Acknowledged sequence space exceeds the payload ever sent only by the FIN. */
		payload = sent > retrans ? sent - retrans : 0;
		__sync_fetch_and_add(&t->closed, 1);
		__sync_fetch_and_add(&t->sent_bytes, acked < payload ? acked : payload);
		__sync_fetch_and_add(&t->received_bytes, BPF_CORE_READ(tp, bytes_received));
		__sync_fetch_and_add(&t->total_retrans, BPF_CORE_READ(tp, total_retrans));
		if (report_closes)
			report_close(sk, tp, &key, 0);
	}
	return 0;
}

SEC("raw_tracepoint/tcp_retransmit_skb")
int on_retransmit(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	__u64 addr = (__u64)sk;
	struct peer_key key;
	struct peer_totals *t;
	__u8 *known;
	__u8 dir;

	if (count_in_user || !tcp_of_namespace(sk))
		return 0;
	known = bpf_map_lookup_elem(&directions, &addr);
	if (known) {
		dir = *known;
	} else {
		unsigned char state = BPF_CORE_READ(sk, __sk_common.skc_state);

		if (state == TCP_SYN_SENT)
			dir = OUTBOUND;
		else if (state == TCP_SYN_RECV)
			dir = INBOUND;
		else
			return 0;
	}
	if (make_key(sk, dir, &key))
		return 0;
	t = totals_of(&key);
	if (t) {
		/* A retransmitted packet can carry several segments (GSO): the kernel adds
		 * tcp_skb_pcount(skb) to total_retrans and RetransSegs, so do we. */
		struct sk_buff *skb = (struct sk_buff *)ctx->args[1];
		char cb[48];
		__u16 segs = 0;

		BPF_CORE_READ_INTO(&cb, skb, cb);
		__builtin_memcpy(&segs, cb + 8, sizeof(segs));
		__sync_fetch_and_add(&t->retransmits, segs ? segs : 1);
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
