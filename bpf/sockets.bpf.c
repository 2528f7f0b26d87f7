// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * The socket walk of conn-exporter's `--collector.namespaces=all` mode (issue 22): every
 * TCP socket of every network namespace that shares the host's TCP hash table, read in
 * one pass over that table, where a sock_diag dump per namespace walks the whole table
 * once per namespace and family and skips the other namespaces' sockets.
 *
 * `walk` runs at scrape time through BPF_PROG_TEST_RUN, in the exporter's thread. It
 * finds the table from the thread's namespace (net->ipv4.tcp_death_row.hashinfo), then
 * reads bucket after bucket of the established hash (full sockets from SYN_SENT on,
 * TIME_WAIT minisocks, SYN_RECV request socks) and of the listening hash (listeners),
 * and writes one record per socket to the `records` ring buffer, which user space
 * drains. Nothing is kept between scrapes and no event is traced: a socket is read
 * where the kernel keeps it, as a dump reads it.
 *
 * The chains are read without their locks, the way the kernel's own lookups read them
 * (the sockets' caches are SLAB_TYPESAFE_BY_RCU and the walk runs under RCU): a socket
 * freed and reused while the walk is on it can lead into another chain, which the
 * chain's end marker (its "nulls" value, the bucket's index) shows; the bucket is then
 * read again, its records carry the pass, and user space keeps the last pass only.
 *
 * A run stops before a bucket (or a new reading of one) when the ring has no room for a
 * whole chain, and says where to go on (`out`); user space drains the ring, drops what
 * it got of that bucket, and runs it again from there.
 *
 * Rebuilt by scripts/build-bpf.sh into bpf/sockets.bpf.o (committed, embedded).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

/* include/net/tcp_states.h */
#define TCP_SYN_RECV 3
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

/* What a record is (parse::ebpf_socket::Kind). */
#define KIND_FULL 1
#define KIND_TIMEWAIT 2
#define KIND_REQUEST 3

/* include/net/inet_hashtables.h: the listening hash's end markers start here. */
#define LISTENING_NULLS_BASE (1U << 29)

/* Bucket sizes: each ends with its chain's head, one pointer (the listening hash's
 * starts with a lock whose size depends on the kernel's configuration). */
#define EHASH_BUCKET_SIZE (bpf_core_field_offset(struct inet_ehash_bucket, chain) + 8)
#define LHASH2_BUCKET_SIZE (bpf_core_field_offset(struct inet_listen_hashbucket, nulls_head) + 8)

/* Sockets one chain may hold; a longer one fails the read (user space then dumps). The
 * hash keeps chains at a few sockets. */
#define MAX_CHAIN 128
/* Times a bucket is read again after its walk led into another chain. */
#define MAX_PASSES 8

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct hlist_nulls_node {
	struct hlist_nulls_node *next;
} __attribute__((preserve_access_index));

struct hlist_nulls_head {
	struct hlist_nulls_node *first;
} __attribute__((preserve_access_index));

struct inet_ehash_bucket {
	struct hlist_nulls_head chain;
} __attribute__((preserve_access_index));

struct inet_listen_hashbucket {
	struct hlist_nulls_head nulls_head;
} __attribute__((preserve_access_index));

struct inet_hashinfo {
	struct inet_ehash_bucket *ehash;
	unsigned int ehash_mask;
	unsigned int lhash2_mask;
	struct inet_listen_hashbucket *lhash2;
	_Bool pernet;
} __attribute__((preserve_access_index));

struct inet_timewait_death_row {
	struct inet_hashinfo *hashinfo;
} __attribute__((preserve_access_index));

struct netns_ipv4 {
	struct inet_timewait_death_row tcp_death_row;
} __attribute__((preserve_access_index));

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
	struct netns_ipv4 ipv4;
} __attribute__((preserve_access_index));

struct nsproxy {
	struct net *net_ns;
} __attribute__((preserve_access_index));

struct task_struct {
	struct nsproxy *nsproxy;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	int skc_bound_dev_if;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
	struct hlist_nulls_node skc_nulls_node;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
} __attribute__((preserve_access_index));

struct socket {
	void *file;
} __attribute__((preserve_access_index));

/* The socket and its inode are one allocation (SOCK_INODE). */
struct socket_alloc {
	struct socket socket;
	struct inode vfs_inode;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u32 sk_ack_backlog;
	__u32 sk_max_ack_backlog;
	struct socket *sk_socket;
} __attribute__((preserve_access_index));

struct inet_timewait_sock {
	struct sock_common __tw_common;
	unsigned char tw_substate;
} __attribute__((preserve_access_index));

/* A socket as the walk reports it. Mirrored by `parse::ebpf_socket`: 64 bytes, no
 * implicit padding. */
struct record {
	__u8 local[16];   /* IPv4: first 4 bytes, network order */
	__u8 remote[16];
	__u32 netns;      /* nsfs inode of its namespace */
	__u32 ifindex;    /* sk_bound_dev_if */
	__u32 inode;      /* its socket's inode; 0 for minisocks, request socks and sockets
	                   * not yet accepted, as inet_diag says */
	__u32 rqueue;     /* listeners: the accept queue's length */
	__u32 wqueue;     /* listeners: its limit */
	__u16 local_port; /* host order */
	__u16 remote_port;
	__u8 family;
	__u8 state;       /* the state `ss` shows: a minisock's substate, SYN_RECV for requests */
	__u8 kind;
	__u8 pass;        /* how many times its bucket was read again before it */
	__u32 bucket;     /* its bucket: established hash 0..n-1, then the listening hash */
};
_Static_assert(sizeof(struct record) == 64, "struct record has implicit padding");

/* What a run leaves for user space, by index. */
#define OUT_NEXT 0     /* the bucket to go on from; OUT_TOTAL when done */
#define OUT_TOTAL 1    /* buckets of both hashes */
#define OUT_WRITTEN 2  /* records written by this run */
#define OUT_PASSES 3   /* buckets read again by this run */
#define OUT_ERROR 4    /* ERROR_* */
#define OUT_MAX 5

#define ERROR_PERNET 1    /* the exporter's namespace has a TCP table of its own */
#define ERROR_CHAIN 2     /* a chain longer than MAX_CHAIN */
#define ERROR_PASSES 3    /* a bucket still moving after MAX_PASSES reads */

/* Its size is set by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} records SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OUT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} out SEC(".maps");

static __always_inline void out_set(__u32 i, __u64 v)
{
	__u64 *p = bpf_map_lookup_elem(&out, &i);

	if (p)
		*p = v;
}

/* The pointer at `addr`: a chain head's `first` or a node's `next`, each the first
 * member of its struct (include/linux/list_nulls.h), so read without relocation. */
static __always_inline struct hlist_nulls_node *read_ptr(unsigned long addr)
{
	struct hlist_nulls_node *p = 0;

	bpf_probe_read_kernel(&p, sizeof(p), (const void *)addr);
	return p;
}

struct walk_ctx {
	struct inet_hashinfo *h;
	struct inet_ehash_bucket *ehash;
	struct inet_listen_hashbucket *lhash2;
	__u32 ehash_n;
	__u32 total;
	__u32 start;
	__u32 next;
	__u32 written;
	__u32 passes;
	__u32 error;
	/* the chain walk's state */
	struct hlist_nulls_node *node;
	__u32 bucket;
	__u32 nulls;
	__u8 pass;
	__u8 ended;
};

/* Writes the record of one socket of the chain; 1 when the ring is full (the caller
 * checked room for a whole chain, so it is not). */
static __always_inline int emit(struct sock_common *skc, struct walk_ctx *w)
{
	struct record *r;
	__u16 family = BPF_CORE_READ(skc, skc_family);
	__u8 state = BPF_CORE_READ(skc, skc_state);
	__u8 kind = KIND_FULL;

	if (family != AF_INET && family != AF_INET6)
		return 0;
	/* Being unhashed (the state is stored after the unhash): no dump shows it. */
	if (state == TCP_CLOSE)
		return 0;
	if (state == TCP_TIME_WAIT) {
		kind = KIND_TIMEWAIT;
		state = BPF_CORE_READ((struct inet_timewait_sock *)skc, tw_substate);
	} else if (state == TCP_NEW_SYN_RECV) {
		kind = KIND_REQUEST;
		state = TCP_SYN_RECV;
	}
	r = bpf_ringbuf_reserve(&records, sizeof(*r), 0);
	if (!r)
		return 1;
	__builtin_memset(r, 0, sizeof(*r));
	if (family == AF_INET) {
		__be32 local = BPF_CORE_READ(skc, skc_rcv_saddr);
		__be32 remote = BPF_CORE_READ(skc, skc_daddr);

		__builtin_memcpy(r->local, &local, 4);
		__builtin_memcpy(r->remote, &remote, 4);
	} else {
		BPF_CORE_READ_INTO(&r->local, skc, skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&r->remote, skc, skc_v6_daddr.in6_u.u6_addr8);
	}
	r->netns = BPF_CORE_READ(skc, skc_net.net, ns.inum);
	r->ifindex = BPF_CORE_READ(skc, skc_bound_dev_if);
	r->local_port = BPF_CORE_READ(skc, skc_num);
	r->remote_port = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));
	r->family = family;
	r->state = state;
	r->kind = kind;
	r->pass = w->pass;
	r->bucket = w->bucket;
	if (kind == KIND_FULL) {
		struct sock *sk = (struct sock *)skc;
		struct socket *sock = BPF_CORE_READ(sk, sk_socket);

		if (sock)
			r->inode = BPF_CORE_READ((struct socket_alloc *)sock, vfs_inode.i_ino);
		if (state == TCP_LISTEN) {
			r->rqueue = BPF_CORE_READ(sk, sk_ack_backlog);
			r->wqueue = BPF_CORE_READ(sk, sk_max_ack_backlog);
		}
	}
	bpf_ringbuf_submit(r, 0);
	w->written++;
	return 0;
}

/* One node of the chain (a bpf_loop callback): 1 ends the chain. */
static long chain_step(__u32 i, struct walk_ctx *w)
{
	struct hlist_nulls_node *node = w->node;
	struct sock_common *skc;

	if ((unsigned long)node & 1) {
		w->ended = 1;
		w->nulls = (unsigned long)node >> 1;
		return 1;
	}
	skc = (struct sock_common *)((unsigned long)node -
				     bpf_core_field_offset(struct sock_common, skc_nulls_node));
	if (emit(skc, w))
		return 1;
	w->node = read_ptr((unsigned long)node);
	return 0;
}

/* One bucket (a bpf_loop callback over buckets start..total): 1 stops the run. */
static long bucket_step(__u32 i, struct walk_ctx *w)
{
	__u32 b = w->start + i;
	__u32 want;
	__u64 room;
	struct hlist_nulls_node *first;

	if (b >= w->total) {
		w->next = w->total;
		return 1;
	}
	w->bucket = b;
	for (w->pass = 0; w->pass < MAX_PASSES; w->pass++) {
		/* Room for a whole chain, or the run ends here and the next one reads this
		 * bucket from the start (user space drops what this run wrote of it). */
		room = bpf_ringbuf_query(&records, BPF_RB_RING_SIZE) -
		       bpf_ringbuf_query(&records, BPF_RB_AVAIL_DATA);
		if (room < (MAX_CHAIN + 1) * (sizeof(struct record) + 8)) {
			w->next = b;
			return 1;
		}
		if (b < w->ehash_n) {
			first = read_ptr((unsigned long)w->ehash + (unsigned long)b * EHASH_BUCKET_SIZE +
					 bpf_core_field_offset(struct inet_ehash_bucket, chain));
			want = b;
		} else {
			__u32 l = b - w->ehash_n;

			first = read_ptr((unsigned long)w->lhash2 + (unsigned long)l * LHASH2_BUCKET_SIZE +
					 bpf_core_field_offset(struct inet_listen_hashbucket, nulls_head));
			want = l + LISTENING_NULLS_BASE;
		}
		w->node = first;
		w->ended = 0;
		bpf_loop(MAX_CHAIN + 1, chain_step, w, 0);
		if (!w->ended) {
			w->error = ERROR_CHAIN;
			w->next = b;
			return 1;
		}
		if (w->nulls == want)
			break;
		/* The walk left the chain: read the bucket again. */
		w->passes++;
	}
	if (w->pass >= MAX_PASSES) {
		w->error = ERROR_PASSES;
		w->next = b;
		return 1;
	}
	w->next = b + 1;
	return 0;
}

/* Run by BPF_PROG_TEST_RUN with the bucket to start from as its argument; leaves what
 * it did in `out`. */
SEC("raw_tracepoint/conn_exporter_walk")
int walk(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct walk_ctx w = {};
	struct inet_hashinfo *h = BPF_CORE_READ(task, nsproxy, net_ns, ipv4.tcp_death_row.hashinfo);

	w.start = (__u32)ctx->args[0];
	w.ehash = BPF_CORE_READ(h, ehash);
	w.lhash2 = BPF_CORE_READ(h, lhash2);
	w.ehash_n = BPF_CORE_READ(h, ehash_mask) + 1;
	w.total = w.ehash_n + BPF_CORE_READ(h, lhash2_mask) + 1;
	w.next = w.start;
	if (BPF_CORE_READ(h, pernet))
		w.error = ERROR_PERNET;
	else if (w.start < w.total)
		bpf_loop(w.total - w.start, bucket_step, &w, 0);
	out_set(OUT_NEXT, w.next);
	out_set(OUT_TOTAL, w.total);
	out_set(OUT_WRITTEN, w.written);
	out_set(OUT_PASSES, w.passes);
	out_set(OUT_ERROR, w.error);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
