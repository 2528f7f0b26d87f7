// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * The socket table of conn-exporter's `--collector.namespaces=all` mode (issue 22): every
 * TCP socket of every network namespace, in one hash map keyed by the kernel's address
 * of the socket, so that a scrape reads all namespaces in one pass instead of one
 * sock_diag dump per namespace (each of which walks the whole shared hash table).
 *
 * Membership is kept by events; what a socket is (state, tuple, inode) is read from the
 * kernel's memory at scrape time by `walk`, so it is as fresh as a dump's:
 * - full sockets: inserted at any state change but the one to CLOSE, deleted at CLOSE
 *   (raw tracepoint inet_sock_set_state);
 * - TIME_WAIT minisocks and SYN_RECV request socks have no state event: their timers
 *   (tw_timer, rsk_timer) start when they are hashed and are cancelled or expire when
 *   they go (raw tracepoints timer_start, timer_cancel, timer_expire_entry). The
 *   handlers' addresses come from /proc/kallsyms through the loader;
 * - sockets older than the program: `seed` (an iter/tcp program) inserts those of the
 *   namespace that opens the iterator, never overwriting an entry events made.
 *
 * `walk` runs at scrape time through BPF_PROG_TEST_RUN: for each entry not yet written
 * in this read (its `gen`), it re-reads the socket and writes a record to `records`. A
 * minisock's substate (FIN_WAIT2 becomes TIME_WAIT without any event: the timer is
 * re-armed in place) and a connecting socket's source port (set after its SYN_SENT
 * event) are thus read when they are reported. An entry whose socket is gone (CLOSE, or
 * a reference count of zero: TCP's socket caches are SLAB_TYPESAFE_BY_RCU, so the memory
 * stays a socket of the same kind) is deleted. When the ring is full it stops; user space
 * drains the ring and runs it again, and the entries already written are skipped. A
 * read makes two such passes with one generation: the second writes the entries
 * inserted behind the first (a socket's new form, see src/source/socket_table.rs).
 *
 * Rebuilt by scripts/build-bpf.sh into bpf/sockets.bpf.o (committed, embedded).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define E2BIG 7
#define ENOMEM 12
#define EEXIST 17

/* include/net/tcp_states.h */
#define TCP_SYN_RECV 3
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

/* What an entry's key points at. */
#define KIND_FULL 1
#define KIND_TIMEWAIT 2
#define KIND_REQUEST 3

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
	int counter;
} atomic_t;

typedef struct {
	atomic_t refs;
} refcount_t;

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
	refcount_t skc_refcnt;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
} __attribute__((preserve_access_index));

struct file;

struct socket {
	struct file *file;
} __attribute__((preserve_access_index));

/* The socket and its inode are one allocation (SOCK_INODE). */
struct socket_alloc {
	struct socket socket;
	struct inode vfs_inode;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	__u32 sk_ack_backlog;
	__u32 sk_max_ack_backlog;
	struct socket *sk_socket;
} __attribute__((preserve_access_index));

struct timer_list {
	void (*function)(struct timer_list *);
} __attribute__((preserve_access_index));

struct inet_timewait_sock {
	struct sock_common __tw_common;
	unsigned char tw_substate;
	struct timer_list tw_timer;
} __attribute__((preserve_access_index));

struct request_sock {
	struct sock_common __req_common;
	struct timer_list rsk_timer;
} __attribute__((preserve_access_index));

struct bpf_iter_meta;
struct bpf_map;

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

/* An entry of `sockets`. */
struct entry {
	__u32 gen;      /* the read that last wrote it to `records` */
	__u32 gone_gen; /* the read that last found its socket gone; 0: none since */
	__u8 kind;      /* KIND_* */
	__u8 pad[7];
};

/* A socket as a read reports it. Mirrored by `parse::ebpf_socket`: 64 bytes, no
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
	__u8 pad[5];
};
_Static_assert(sizeof(struct record) == 64, "struct record has implicit padding");

/* Indexes of `stats`. */
#define STAT_INSERTS_FAILED 0 /* inserts refused by a full map */
#define STAT_STALE 1          /* entries a walk found gone and deleted */
#define STAT_NESTED 2         /* state changes on_state was skipped for, kept by on_state_nested */
#define STAT_MAX 3

/* Addresses of tw_timer_handler and reqsk_timer_handler; set by the loader. */
const volatile __u64 tw_handler = 0;
const volatile __u64 req_handler = 0;

/* Its max_entries is set by the loader from --collector.namespaces.max-sockets. Not
 * preallocated: memory follows the sockets held. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 20);
	__type(key, __u64);
	__type(value, struct entry);
} sockets SEC(".maps");

/* Records of a walk; sized by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} records SEC(".maps");

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

static __always_inline void insert(__u64 key, __u8 kind)
{
	struct entry e = { .kind = kind };
	long err = bpf_map_update_elem(&sockets, &key, &e, BPF_NOEXIST);

	/* An entry that exists keeps its `gen`: a walk in progress must not write it twice.
	 * Any other refusal (a full map, or a bucket lock not taken) leaves a socket out:
	 * counted, so that user space reads that scrape by dumps and seeds again. */
	if (err && err != -EEXIST)
		stat_add(STAT_INSERTS_FAILED);
}

static __always_inline void state_event(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int newstate = (int)ctx->args[2];
	__u64 key = (__u64)sk;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return;
	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&sockets, &key);
	else
		insert(key, KIND_FULL);
}

/* The kernel runs a tracing program at most once per CPU at a time: an event raised
 * while the program runs on that CPU (a softirq's state change interrupting one made
 * in process context, such as a connect) is skipped, not queued. A skipped insert
 * would leave a socket out of the table for its whole life. So `on_state` marks the
 * CPU as busy while it runs, and `on_state_nested`, a second program on the same
 * tracepoint, does the work only when it finds the mark: then the event is one that
 * `on_state` was skipped for. Timer events need no such care: timer_start and
 * timer_cancel are raised with interrupts off, and a skipped delete leaves only a
 * stale entry, which the walk removes. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} busy SEC(".maps");

SEC("raw_tracepoint/inet_sock_set_state")
int on_state(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 zero = 0;
	__u32 *b = bpf_map_lookup_elem(&busy, &zero);

	if (b)
		*b = 1;
	state_event(ctx);
	if (b)
		*b = 0;
	return 0;
}

SEC("raw_tracepoint/inet_sock_set_state")
int on_state_nested(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 zero = 0;
	__u32 *b = bpf_map_lookup_elem(&busy, &zero);

	if (b && *b) {
		state_event(ctx);
		stat_add(STAT_NESTED);
	}
	return 0;
}

/* The socket a timer belongs to, and its kind; 0 for every other timer. */
static __always_inline __u64 timer_owner(struct timer_list *t, __u8 *kind)
{
	__u64 fn = (__u64)BPF_CORE_READ(t, function);

	if (fn == 0)
		return 0;
	if (fn == tw_handler) {
		*kind = KIND_TIMEWAIT;
		return (__u64)t - bpf_core_field_offset(struct inet_timewait_sock, tw_timer);
	}
	if (fn == req_handler) {
		*kind = KIND_REQUEST;
		return (__u64)t - bpf_core_field_offset(struct request_sock, rsk_timer);
	}
	return 0;
}

SEC("raw_tracepoint/timer_start")
int on_timer_start(struct bpf_raw_tracepoint_args *ctx)
{
	__u8 kind = 0;
	__u64 key = timer_owner((struct timer_list *)ctx->args[0], &kind);

	if (key)
		insert(key, kind);
	return 0;
}

static __always_inline int timer_gone(struct bpf_raw_tracepoint_args *ctx)
{
	__u8 kind = 0;
	__u64 key = timer_owner((struct timer_list *)ctx->args[0], &kind);

	if (key)
		bpf_map_delete_elem(&sockets, &key);
	return 0;
}

SEC("raw_tracepoint/timer_cancel")
int on_timer_cancel(struct bpf_raw_tracepoint_args *ctx)
{
	return timer_gone(ctx);
}

SEC("raw_tracepoint/timer_expire_entry")
int on_timer_expire(struct bpf_raw_tracepoint_args *ctx)
{
	return timer_gone(ctx);
}

SEC("iter/tcp")
int seed(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	__u8 state, kind;

	if (!skc)
		return 0;
	state = BPF_CORE_READ(skc, skc_state);
	if (state == TCP_CLOSE)
		return 0;
	kind = state == TCP_TIME_WAIT ? KIND_TIMEWAIT : state == TCP_NEW_SYN_RECV ? KIND_REQUEST : KIND_FULL;
	insert((__u64)skc, kind);
	return 0;
}

struct walk_ctx {
	__u32 gen;
	__u32 written;
	__u32 full;
};

static long visit(struct bpf_map *map, __u64 *key, struct entry *e, struct walk_ctx *w)
{
	struct sock_common *skc = (struct sock_common *)*key;
	struct record *r;
	__u16 family;
	__u8 state;

	if (e->gen == w->gen)
		return 0;
	if (BPF_CORE_READ(skc, skc_refcnt.refs.counter) == 0)
		goto gone;
	state = BPF_CORE_READ(skc, skc_state);
	family = BPF_CORE_READ(skc, skc_family);
	if (family != AF_INET && family != AF_INET6)
		goto gone;
	if (e->kind == KIND_FULL) {
		if (state == TCP_CLOSE || state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
			goto gone;
		/* A connect between its SYN_SENT event and its port: not hashed yet, so no
		 * dump would show it either. The next read will. */
		if (BPF_CORE_READ(skc, skc_num) == 0)
			return 0;
	} else if (e->kind == KIND_TIMEWAIT) {
		if (state != TCP_TIME_WAIT)
			goto gone;
		state = BPF_CORE_READ((struct inet_timewait_sock *)skc, tw_substate);
	} else {
		if (state != TCP_NEW_SYN_RECV)
			goto gone;
		state = TCP_SYN_RECV;
	}

	r = bpf_ringbuf_reserve(&records, sizeof(*r), 0);
	if (!r) {
		w->full = 1;
		return 1;
	}
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
	r->kind = e->kind;
	if (e->kind == KIND_FULL) {
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
	e->gen = w->gen;
	e->gone_gen = 0;
	w->written++;
	return 0;
gone:
	/* Deleted only when two reads find it gone (a read may run the walk more than once:
	 * those runs count as one). Between this check and a delete, the memory could
	 * become a new socket of the same kind whose insert found this entry and kept it (a
	 * TIME_WAIT minisock is set up with a reference count of zero before its timer
	 * starts): deleting at once would lose that socket. A socket found live clears the
	 * mark. */
	if (e->gone_gen == 0 || e->gone_gen == w->gen) {
		e->gone_gen = w->gen;
		return 0;
	}
	bpf_map_delete_elem(map, key);
	stat_add(STAT_STALE);
	return 0;
}

/* Run by BPF_PROG_TEST_RUN with the read's generation (non-zero) as its argument.
 * Returns the records written, shifted left by one, with bit 0 set when the ring
 * filled before every entry was written. */
SEC("raw_tracepoint/conn_exporter_walk")
int walk(struct bpf_raw_tracepoint_args *ctx)
{
	struct walk_ctx w = { .gen = (__u32)ctx->args[0] };

	bpf_for_each_map_elem(&sockets, visit, &w, 0);
	return (w.written << 1) | w.full;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
