//! The kernel side of the lifecycle counters: a NETLINK_SOCK_DIAG socket subscribed to
//! the TCP destroy groups, drained in batches on a thread of its own, and the listener
//! and interface tables the batches are classified against.
//!
//! Netlink multicast delivers one message per `recv`; waking per message costs more than
//! the message (the prototype lost half the connection rate that way). So the
//! thread reads everything queued, classifies the batch, and sleeps [`BATCH_PAUSE`]; the
//! receive buffer holds what arrives meanwhile.
//!
//! Listeners: a dump of LISTEN sockets only (the kernel then skips the established
//! table, so it costs in proportion to the listeners), made after each batch is drained
//! and before it is classified, at most once per [`BATCH_PAUSE`]. A listener that existed
//! when its connections were accepted is still there, or was destroyed in this batch or
//! lately: the dumped and the destroyed listeners are remembered for
//! [`LISTENER_MEMORY`] (a service that exits leaves connections that close up to minutes
//! later), and direction follows [`DirectionRule`] over them, the namespace's port range
//! and the batch (the last scrape's snapshot would be up to a scrape interval old and
//! miss listeners that live shorter than that). A socket that looks outbound is held
//! `OUTBOUND_HOLD` (0.5 s) before it is counted so, in case its listener's notification
//! comes in a later batch; the hold bounds memory to half a second of notifications.
//!
//! Every namespace (`--collector.namespaces=all`): the namespaces are listed again every
//! [`RESCAN`]; a new one gets its own subscription and listener-dump sockets, opened by
//! a job on that namespace's thread (the one `netns` keeps for the scrapes' reads, which
//! entered it with `setns`), handed back here and kept while the namespace lives; when it
//! goes they are closed (they would otherwise keep it alive) and its series dropped. One
//! receiving thread serves them all; a namespace costs two descriptors, its share of the
//! idle wake-ups (one non-blocking `recv` per [`BATCH_PAUSE`]) and no thread of its own
//! beyond the one `netns` keeps anyway. Each namespace is classified against its own
//! listeners and labelled with its own interfaces (re-read by a job on its thread).
//!
//! Owners (`--collector.connections.owner`): an inbound socket takes the owner of the
//! listener on its local endpoint (the exact address before a wildcard; among several,
//! the lowest `(process, systemd_unit)`), read from the listener dump's inode and what
//! the scrapes' owner walk found for it, and kept as long as the listener is remembered. An outbound
//! socket has `process=""`: the kernel reports a socket after its process let go of it
//! (the message carries no inode), and a short connection is gone before any walk sees
//! it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use nix::sys::socket::{getsockopt, setsockopt, sockopt};

use super::{Counters, Lifecycle, Origin, Status};
use crate::classify::{Direction, DirectionRule, ListenerMemory, PeerHasher, PeerKey, PortRange, LISTENER_MEMORY};
use crate::iface::InterfaceTable;
use crate::logging::RateLimit;
use crate::model::{Endpoint, TcpState};
use crate::nat::{self, Nat, Resolver, Translation};
use crate::netns::{Found, Namespaces};
use crate::owners::{OwnerId, OwnerTable};
use crate::parse::ebpf_close;
use crate::parse::sock_destroy::{self, DestroyedSocket, Outcome};
use crate::parse::sock_diag::{self, Batch, DecodeError, InfoSocket};
use crate::quality::{self, Backlog, Growth, Look, Quality, QualityTotals, Sampler, Status as QualityStatus};
use crate::snapshot::NsLabels;
use crate::source::{self, interfaces, sysctl, SourceError};

/// `SKNLGRP_INET_TCP_DESTROY` and `SKNLGRP_INET6_TCP_DESTROY` (`linux/sock_diag.h`).
pub const GROUPS: [u32; 2] = [1, 3];
/// Pause between batches.
pub const BATCH_PAUSE: Duration = Duration::from_millis(25);
/// How long a socket that looks outbound waits before it is counted so. An accepted
/// socket's notification can be read in one batch and its listener's, queued just after
/// it by another kernel worker, in the next, with the listener already gone from the
/// dump in between: held this long, the socket meets its listener among the destroyed
/// ones and counts inbound. Outbound counts appear this much later.
const OUTBOUND_HOLD: Duration = Duration::from_millis(500);
/// How long a close waits, with NAT resolution, so that the conntrack events of its
/// connection are applied before it is looked up (the `nat` thread drains them every
/// 20 ms; a close can come a millisecond after its connection's first SYN).
const NAT_HOLD: Duration = Duration::from_millis(250);
/// How often the interface table is re-read (addresses change rarely).
const INTERFACES_EVERY: Duration = Duration::from_secs(5);
/// The receive buffer asked for: 64 MiB holds ~170k messages, about 8 s at 20k/s.
pub const RECV_BUFFER: usize = 64 << 20;
/// Messages classified at once, to bound the batch's memory.
const MAX_BATCH: usize = 16_384;
/// Minimum time between two overrun log lines.
const OVERRUN_LOG_EVERY: Duration = Duration::from_secs(60);
/// How often the namespaces are listed again (`all` mode).
pub const RESCAN: Duration = Duration::from_secs(2);
const TCP_LISTEN: u32 = 10;

/// Why the subscription could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// A netlink call failed.
    #[error("{what}: {source}")]
    Kernel {
        /// The call.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Opens the socket that dumps listeners, in the calling thread's namespace.
fn dump_socket() -> Result<Socket, SubscribeError> {
    let kernel = |what| move |source| SubscribeError::Kernel { what, source };
    let mut s = Socket::new(NETLINK_SOCK_DIAG).map_err(kernel("opening a listener-dump socket"))?;
    s.bind_auto().map_err(kernel("binding the listener-dump socket"))?;
    s.connect(&SocketAddr::new(0, 0)).map_err(kernel("connecting the listener-dump socket"))?;
    Ok(s)
}

/// Opens and subscribes the socket; returns it with the receive buffer it got.
pub fn subscribe() -> Result<(Socket, usize, &'static str), SubscribeError> {
    subscribe_to(true)
}

/// [`subscribe`], or with `join` false a socket of the same kind that joins no group: the
/// kernel then builds no destroy messages for it (the closes come from the eBPF program).
fn subscribe_to(join: bool) -> Result<(Socket, usize, &'static str), SubscribeError> {
    let kernel = |what| move |source| SubscribeError::Kernel { what, source };
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(kernel("opening a NETLINK_SOCK_DIAG socket"))?;
    // SO_RCVBUFFORCE passes net.core.rmem_max with CAP_NET_ADMIN; without it SO_RCVBUF
    // is capped at rmem_max by the kernel.
    let how = if setsockopt(&socket.as_fd(), sockopt::RcvBufForce, &RECV_BUFFER).is_ok() {
        "SO_RCVBUFFORCE"
    } else {
        let _ = setsockopt(&socket.as_fd(), sockopt::RcvBuf, &RECV_BUFFER);
        "SO_RCVBUF, capped by net.core.rmem_max"
    };
    let got = getsockopt(&socket.as_fd(), sockopt::RcvBuf).unwrap_or(0);
    socket.bind(&SocketAddr::new(0, 0)).map_err(kernel("binding the NETLINK_SOCK_DIAG socket"))?;
    for g in GROUPS.into_iter().filter(|_| join) {
        socket.add_membership(g).map_err(kernel("joining the TCP destroy groups"))?;
    }
    socket.set_non_blocking(true).map_err(kernel("making the destroy socket non-blocking"))?;
    Ok((socket, got, how))
}

/// Starts the receiving thread (named `lifecycle`). A refused subscription is logged and
/// leaves the collector failed; the exporter goes on. A `procfs` of another network
/// namespace (a fixture tree) has no notifications to give: the collector stays off.
/// In `all` mode the thread subscribes in the other namespaces as it finds them.
pub fn start(state: Arc<Lifecycle>, procfs: &Path) {
    if !source::is_own_namespace(procfs) {
        if state.counts {
            log::warn!(
                "lifecycle collector: --path.procfs {} is not this process's network namespace, whose socket-destroy notifications are the only ones it can receive; off",
                procfs.display()
            );
        }
        state.set_status(Status::Failed);
        quality_failed(
            &state,
            "--path.procfs is not this process's network namespace, whose sockets' tcp_info only netlink gives",
        );
        return;
    }
    let join = state.ebpf_closes.lock().unwrap_or_else(|e| e.into_inner()).is_none();
    let (socket, got, how) = match subscribe_to(join) {
        Ok(s) => s,
        Err(e) => {
            if state.counts {
                log::error!(
                    "lifecycle collector: the kernel refused the socket-destroy subscription ({e}); closed and failed connection counters are unavailable"
                );
            }
            state.set_status(Status::Failed);
            quality_failed(&state, "the kernel refused the socket-destroy subscription its closes come from");
            return;
        }
    };
    match (state.counts, join) {
        (true, false) => log::info!(
            "lifecycle collector: closes and failed connects from the eBPF program's ring buffer (each connection's whole tuple, for NAT resolution), no socket-destroy notifications subscribed"
        ),
        (true, true) => log::info!(
            "lifecycle collector: subscribed to TCP socket-destroy notifications, receive buffer {got} bytes ({how}; asked {RECV_BUFFER})"
        ),
        (false, true) => log::info!(
            "quality collector: subscribed to TCP socket-destroy notifications of its own (the lifecycle counters do not take them), receive buffer {got} bytes ({how}; asked {RECV_BUFFER})"
        ),
        (false, false) => log::info!(
            "quality collector: closes from the eBPF program's ring buffer, no socket-destroy notifications subscribed"
        ),
    }
    state.set_status(Status::Subscribed);
    state.subscribed.store(1, Ordering::Relaxed);
    let thread_state = Arc::clone(&state);
    let procfs: Arc<Path> = Arc::from(procfs);
    let name = if state.counts { "lifecycle" } else { "quality" };
    let spawned = std::thread::Builder::new().name(name.into()).spawn(move || run(socket, &thread_state, procfs));
    if let Err(e) = spawned {
        log::error!("{} collector: cannot start its thread ({e})", name);
        state.set_status(Status::Failed);
        quality_failed(&state, "its thread could not start");
    }
}

/// The collector a thread's messages are about: the lifecycle counters', or the quality
/// collector's when the notifications serve only it.
fn who(state: &Lifecycle) -> &'static str {
    if state.counts {
        "lifecycle"
    } else {
        "quality"
    }
}

/// Says once why the quality collector cannot run, and fails it.
fn quality_failed(state: &Lifecycle, why: &str) {
    if let Some(q) = &state.quality {
        log::error!("quality collector: off: {why}; it reports success 0");
        q.set_status(QualityStatus::Failed);
    }
}

/// States dumped for the quality samples: the full sockets but listeners (TIME_WAIT and
/// request sockets have no `tcp_info`; listeners come from a dump of their own).
const SAMPLED_STATES: u32 = 1 << 1 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 11;

/// A sample of one namespace's sockets with their `tcp_info` into the quality counters
/// (and, when the notifications feed them, the lifecycle counters' retransmits of open
/// connections), its queues into `backlog`.
fn sample(
    sub: &mut Subscription,
    state: &Lifecycle,
    quality: &Quality,
    undecided: &mut Vec<InfoSocket>,
    backlog: &mut HashMap<PeerKey, Backlog>,
) -> Result<(), SubscribeError> {
    let tables = &mut sub.tables;
    // Listeners first (a dump of LISTEN sockets only, cheap), so that most sockets of the
    // main dump are decided as they arrive and only the undecided are kept for the
    // rule's tally: memory in proportion to those, not to every socket.
    let now = Instant::now();
    let listeners = tables.dump_listeners()?;
    tables.memory.observe(now, listeners.iter().map(|(e, _)| *e));
    tables.open = listeners;
    tables.rule = DirectionRule::new(tables.memory.set(), tables.port_range);
    let sampler = &mut sub.sampler;
    let rule = tables.rule.clone();
    undecided.clear();
    // Folded per raw peer (direction, the service's endpoint, the client's address,
    // interface index) with a cheap hasher, so that the bounded counters, the owner
    // lookups and the backlog see each peer once rather than each socket.
    let mut peers: HashMap<RawPeer, Gathered, BuildHasherDefault<PeerHasher>> = HashMap::default();
    let reader = state.nat.as_deref().filter(|n| n.labels()).map(Nat::reader);
    let nat = Translator { tables: reader.as_ref(), netns: sub.netns };
    sampler.begin();
    tables.dump(
        "quality sample",
        |af| sock_diag::info_dump_request(af, SAMPLED_STATES, 2),
        |buf| {
            sock_diag::decode_info_batch(buf, |s| match rule.decided(&s.connection.local, &s.connection.remote) {
                Some(direction) => gather(&mut peers, sampler, &s, direction, &nat),
                None => undecided.push(s),
            })
        },
    )?;
    {
        let d = rule.tally(undecided.iter().map(|s| (&s.connection.local, &s.connection.remote)));
        for s in undecided.iter() {
            gather(&mut peers, sampler, s, d.of(&s.connection.local, &s.connection.remote), &nat);
        }
    }
    drop(reader);
    let netns = sub.netns;
    let mut counters = quality.lock();
    let mut lifecycle = state.counts.then(|| state.lock());
    for (peer, g) in &peers {
        let owner = if peer.direction == Direction::Inbound { tables.owner_of(&peer.local) } else { None };
        let origin = Origin {
            netns,
            process: owner.map_or("", |o| o.0.as_str()),
            unit: owner.map_or("", |o| o.1.as_str()),
            translation: peer.translation,
        };
        let key = counters.admit(
            &origin,
            peer.direction,
            &peer.local,
            &peer.remote,
            peer.if_index,
            &tables.interfaces,
            false,
        );
        if let Some(t) = counters.get_mut(&key) {
            g.count_into(t);
        }
        let b = backlog.entry(key).or_default();
        b.send += g.backlog.send;
        b.receive += g.backlog.receive;
        b.unsent += g.backlog.unsent;
        if let (Some(l), true) = (lifecycle.as_mut(), g.growth.retransmits > 0) {
            l.entry(&origin, peer.direction, &peer.local, &peer.remote, peer.if_index, &tables.interfaces, false)
                .retransmits += g.growth.retransmits;
        }
    }
    sub.sampler.end();
    quality.untracked.fetch_add(sub.sampler.untracked().saturating_sub(sub.untracked_seen), Ordering::Relaxed);
    sub.untracked_seen = sub.sampler.untracked();
    // A reused buffer, but not one that stays at a past peak of sockets.
    if undecided.capacity() > 4 * undecided.len().max(1024) {
        undecided.shrink_to(undecided.len().max(1024));
    }
    Ok(())
}

/// One socket of a sample into its raw peer's gathering.
fn gather(
    peers: &mut HashMap<RawPeer, Gathered, BuildHasherDefault<PeerHasher>>,
    sampler: &mut Sampler,
    s: &InfoSocket,
    direction: Direction,
    nat: &Translator<'_>,
) {
    let Some(look) = sampler.observe(s, direction) else { return };
    let c = &s.connection;
    let translation = nat.of(look.direction, &c.local, &c.remote);
    let (local, remote) = match look.direction {
        Direction::Inbound => (c.local, Endpoint::new(c.remote.ip, 0)),
        Direction::Outbound => (Endpoint::new(c.local.ip, 0), c.remote),
    };
    let g = peers
        .entry(RawPeer { direction: look.direction, local, remote, if_index: c.if_index, translation })
        .or_default();
    g.add(&look);
    g.backlog.send += u64::from(c.send_queue);
    g.backlog.receive += u64::from(c.recv_queue);
    g.backlog.unsent += u64::from(s.info.and_then(|i| i.notsent_bytes).unwrap_or(0));
}

/// Most close records read in one go, so that the namespaces' queues are served between.
const MAX_RECORDS: usize = 16_384;

/// Keeps a set of counters in step with the namespaces found: forgets those gone (and
/// their series), names the live ones; returns how many went.
fn follow_namespaces<T: Default + Clone>(counters: &mut Counters<T>, live: &HashMap<u64, &Found>) -> usize {
    let gone = counters.retain_namespaces(|n| live.contains_key(&n));
    for f in live.values() {
        let labels =
            NsLabels { netns: f.name.clone(), container_id: f.container_id.clone(), pod_uid: f.pod_uid.clone() };
        counters.set_namespace(f.inode, labels);
    }
    gone
}

/// Counts the eBPF program's close records into the quality collector, each in the
/// sampler of its namespace (whose last samples give the remainders), and, when the
/// program leaves the lifecycle counters to user space (`--collector.nat`), into those
/// as a notification would be; returns whether the ring was emptied. A record of a
/// namespace not subscribed yet is counted whole at its first sample's baseline, so it
/// is dropped here.
fn count_ebpf_closes(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    subs: &mut [Subscription],
    state: &Lifecycle,
    own_netns: u64,
    held: &mut VecDeque<(Instant, ebpf_close::EbpfClose)>,
) -> bool {
    let nat = state.nat.as_deref();
    let now = Instant::now();
    let mut full = false;
    while held.len() < MAX_RECORDS {
        let Some(item) = ring.next() else { break };
        if let Some(r) = ebpf_close::decode(&item) {
            held.push_back((now, r));
        }
        full = held.len() == MAX_RECORDS;
    }
    // With NAT resolution a record waits until the conntrack events of its connection
    // have surely been applied (the `nat` thread reads them every few milliseconds).
    let hold = if nat.is_some_and(|n| n.labels()) { NAT_HOLD } else { Duration::ZERO };
    let ready = held.iter().take_while(|(t, _)| now.duration_since(*t) >= hold).count();
    if ready == 0 {
        return !full;
    }
    let records: Vec<ebpf_close::EbpfClose> = held.drain(..ready).map(|(_, r)| r).collect();
    // Folded per namespace and raw peer first, as a sample is: the bounded counters see
    // each peer once per read, not each close.
    let mut peers: HashMap<(usize, RawPeer), Gathered, BuildHasherDefault<PeerHasher>> = HashMap::default();
    if state.counts {
        // Nothing else refreshes them when the closes come from the ring alone.
        let now = Instant::now();
        for sub in subs.iter_mut() {
            sub.tables.refresh_interfaces(now, state.namespaces.as_deref());
        }
    }
    let reader = nat.filter(|n| n.labels()).map(Nat::reader);
    let mut lifecycle = state.counts.then(|| state.lock());
    for r in &records {
        let netns = if u64::from(r.netns) == own_netns { 0 } else { u64::from(r.netns) };
        let Some(i) = subs.iter().position(|s| s.netns == netns) else { continue };
        let s = &r.socket;
        let nat = Translator { tables: reader.as_ref(), netns };
        let look = state.quality.as_ref().map(|_| subs[i].sampler.close(s, r.direction));
        if let Some(counters) = lifecycle.as_mut() {
            // With samples, what grew while it was open was counted by them.
            let retransmits = look.as_ref().map_or_else(|| s.retransmits(), |l| l.growth.retransmits);
            let origin = Origin { netns, translation: nat.of(r.direction, &s.local, &s.remote), ..Origin::default() };
            counters.add_from(&origin, s, r.direction, &subs[i].tables.interfaces, retransmits);
        }
        let Some(look) = look else { continue };
        let translation = nat.of(look.direction, &s.local, &s.remote);
        let (local, remote) = match look.direction {
            Direction::Inbound => (s.local, Endpoint::new(s.remote.ip, 0)),
            Direction::Outbound => (Endpoint::new(s.local.ip, 0), s.remote),
        };
        let g = peers
            .entry((i, RawPeer { direction: look.direction, local, remote, if_index: s.if_index, translation }))
            .or_default();
        g.add(&look);
    }
    drop(lifecycle);
    drop(reader);
    let Some(quality) = state.quality.as_deref() else { return !full };
    let mut counters = quality.lock();
    for ((i, peer), g) in &peers {
        let sub = &subs[*i];
        let owner = if peer.direction == Direction::Inbound { sub.tables.owner_of(&peer.local) } else { None };
        let origin = Origin {
            netns: sub.netns,
            process: owner.map_or("", |o| o.0.as_str()),
            unit: owner.map_or("", |o| o.1.as_str()),
            translation: peer.translation,
        };
        let t = counters.entry(
            &origin,
            peer.direction,
            &peer.local,
            &peer.remote,
            peer.if_index,
            &sub.tables.interfaces,
            false,
        );
        g.count_into(t);
    }
    !full
}

/// A socket's peer before labels: the service's endpoint kept whole, the client's port
/// zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct RawPeer {
    direction: Direction,
    local: Endpoint,
    remote: Endpoint,
    if_index: u32,
    translation: Translation,
}

/// Looks up what NAT did to a namespace's sockets; nothing without `--collector.nat`.
struct Translator<'a> {
    tables: Option<&'a nat::Tables<'a>>,
    netns: u64,
}

impl Translator<'_> {
    fn of(&self, direction: Direction, local: &Endpoint, remote: &Endpoint) -> Translation {
        self.tables.map_or(Translation::None, |t| t.translate(self.netns, direction, local, remote))
    }
}

/// What one sample (or one read of close records) gathered of a raw peer's sockets.
#[derive(Default)]
struct Gathered {
    rtts: Vec<u32>,
    growth: Growth,
    backlog: Backlog,
}

impl Gathered {
    /// Adds one look at a socket.
    fn add(&mut self, look: &Look) {
        if let Some(rtt) = look.rtt_us {
            self.rtts.push(rtt);
        }
        self.growth.retransmits += look.growth.retransmits;
        self.growth.lost_segments += look.growth.lost_segments;
        self.growth.sent_segments += look.growth.sent_segments;
        self.growth.rwnd_limited_us += look.growth.rwnd_limited_us;
        self.growth.sndbuf_limited_us += look.growth.sndbuf_limited_us;
    }

    /// Counts what was gathered into a label set's totals.
    fn count_into(&self, t: &mut QualityTotals) {
        for &rtt in &self.rtts {
            t.rtt.observe_us(rtt);
        }
        quality::count(t, &Look { direction: Direction::Outbound, rtt_us: None, growth: self.growth });
    }
}

/// Samples every namespace once; returns when it did.
fn sample_all(spaces: &mut Spaces, state: &Lifecycle, quality: &Quality, sockets: &mut Vec<InfoSocket>) {
    let started = Instant::now();
    let mut backlog = HashMap::new();
    let mut failed = false;
    for sub in &mut spaces.subs {
        if let Err(e) = sample(sub, state, quality, sockets, &mut backlog) {
            failed = true;
            quality.failures.fetch_add(1, Ordering::Relaxed);
            if spaces.warn_limit.allow() {
                log::warn!("quality collector: a sample failed ({e}); its counts resume at the next one");
            }
        }
    }
    *quality.lock_backlog() = backlog;
    quality.set_last_ok(!failed);
    quality.samples.fetch_add(1, Ordering::Relaxed);
    quality.last_sample_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    if !failed || quality.status() == QualityStatus::Starting {
        quality.set_status(QualityStatus::Sampling);
    }
}

/// Where a namespace's reads run: here (the own one) or on its `netns` thread.
enum Place {
    Own,
    Other(Found),
}

/// Owners of listeners, by endpoint, as last seen.
type ListenerOwners = HashMap<Endpoint, ((String, String), Instant)>;

/// What a namespace's thread reads for the tables now and then: its interfaces, and its
/// port range (`None` where it cannot be read).
type Refreshed = (InterfaceTable, Option<PortRange>);

/// A namespace's listeners and interfaces as the thread keeps them.
struct Tables {
    place: Place,
    /// The `--path.procfs` of the exporter's own namespace; its `sys/net` shows the
    /// namespace of the thread that reads it.
    procfs: Arc<Path>,
    diag: Option<Socket>,
    /// Open listeners with their socket inodes.
    open: Vec<(Endpoint, u32)>,
    /// Listeners dumped or destroyed lately.
    memory: ListenerMemory,
    port_range: PortRange,
    rule: DirectionRule,
    /// With owners: the owner of each listener endpoint, kept as long as `memory` keeps it.
    owners: ListenerOwners,
    dumped: Option<Instant>,
    interfaces: InterfaceTable,
    interfaces_read: Option<Instant>,
    /// An interface read running on the namespace's thread.
    interfaces_job: Option<Receiver<Result<Refreshed, SourceError>>>,
    dump_failed_logged: bool,
    /// The listener dump failed in another namespace, whose socket cannot be reopened
    /// here: the subscription is opened again at the next rescan.
    broken: bool,
}

impl Tables {
    fn new(place: Place, procfs: Arc<Path>, diag: Option<Socket>, read: Option<Refreshed>) -> Tables {
        let now = Instant::now();
        let (interfaces, port_range) = match read {
            Some((t, r)) => (Some(t), r),
            None => (None, None),
        };
        let port_range = port_range.unwrap_or_else(|| match place {
            Place::Own => sysctl::port_range_or_default(&procfs, |e| {
                log::warn!("lifecycle collector: couldn't read the local port range, using Linux's default: {e}")
            }),
            Place::Other(_) => PortRange::LINUX_DEFAULT,
        });
        Tables {
            place,
            procfs,
            diag,
            open: Vec::new(),
            memory: ListenerMemory::default(),
            port_range,
            rule: DirectionRule::new(Default::default(), port_range),
            owners: HashMap::new(),
            dumped: None,
            interfaces_read: interfaces.as_ref().map(|_| now),
            interfaces: interfaces.unwrap_or_default(),
            interfaces_job: None,
            dump_failed_logged: false,
            broken: false,
        }
    }

    /// Brings listeners (and now and then interfaces) up to date for a batch.
    fn refresh(&mut self, batch: &[DestroyedSocket], namespaces: Option<&Namespaces>) {
        let now = Instant::now();
        // Listeners destroyed in this batch: no remote, a local port.
        self.memory.observe(
            now,
            batch
                .iter()
                .filter(|s| s.remote.port == 0 && s.remote.ip.is_unspecified() && s.local.port != 0)
                .map(|s| s.local),
        );
        if self.dumped.is_none_or(|t| now.duration_since(t) >= BATCH_PAUSE) {
            match self.dump_listeners() {
                Ok(l) => self.open = l,
                Err(e) if !self.dump_failed_logged => {
                    self.dump_failed_logged = true;
                    log::warn!(
                        "lifecycle collector: listener dump failed ({e}); directions use the last listeners known"
                    );
                }
                Err(_) => {}
            }
            self.dumped = Some(now);
        }
        self.memory.observe(now, self.open.iter().map(|(e, _)| *e));
        self.refresh_interfaces(now, namespaces);
        self.rule = DirectionRule::new(self.memory.set(), self.port_range);
    }

    fn refresh_interfaces(&mut self, now: Instant, namespaces: Option<&Namespaces>) {
        if let Some(job) = &self.interfaces_job {
            match job.try_recv() {
                Ok(Ok((t, range))) => {
                    self.interfaces = t;
                    self.port_range = range.unwrap_or(self.port_range);
                    self.interfaces_job = None;
                }
                Ok(Err(_)) | Err(TryRecvError::Disconnected) => self.interfaces_job = None,
                Err(TryRecvError::Empty) => {}
            }
        }
        if self.interfaces_job.is_some()
            || self.interfaces_read.is_some_and(|t| now.duration_since(t) < INTERFACES_EVERY)
        {
            return;
        }
        self.interfaces_read = Some(now);
        match (&self.place, namespaces) {
            (Place::Own, _) => {
                if let Ok((t, range)) = refreshed(&self.procfs) {
                    self.interfaces = t;
                    self.port_range = range.unwrap_or(self.port_range);
                }
            }
            // getifaddrs asks in the calling thread's namespace, and /proc/sys/net shows
            // it: the namespace's thread reads them, and the answer is picked up by a
            // later batch.
            (Place::Other(f), Some(ns)) => {
                let procfs = Arc::clone(&self.procfs);
                self.interfaces_job = ns.run(f, move || refreshed(&procfs)).ok();
            }
            (Place::Other(_), None) => {}
        }
    }

    fn dump_listeners(&mut self) -> Result<Vec<(Endpoint, u32)>, SubscribeError> {
        let mut out = Vec::new();
        self.dump(
            "listener dump",
            |af| sock_diag::dump_request(af, 1 << TCP_LISTEN, 1),
            |buf| {
                sock_diag::decode_batch(buf, |c| {
                    if c.state == TcpState::Listen {
                        out.push((c.local, c.inode))
                    }
                })
            },
        )?;
        Ok(out)
    }

    /// One dump of both address families on the namespace's dump socket (opened here for
    /// the own namespace; another's is opened on its thread, and a missing one marks the
    /// subscription broken), each receive buffer handed to `decode`. A family the kernel
    /// has no diag module for (IPv6 off) ends quietly; an undecodable answer closes the
    /// socket, so that the next dump starts on a fresh one.
    fn dump(
        &mut self,
        what: &'static str,
        request: impl Fn(u8) -> [u8; sock_diag::REQUEST_LEN],
        mut decode: impl FnMut(&[u8]) -> Result<Batch, DecodeError>,
    ) -> Result<(), SubscribeError> {
        if self.diag.is_none() {
            match self.place {
                Place::Own => self.diag = Some(dump_socket()?),
                Place::Other(_) => {
                    self.broken = true;
                    return Err(SubscribeError::Kernel {
                        what,
                        source: io::Error::new(io::ErrorKind::NotConnected, "no dump socket in the namespace"),
                    });
                }
            }
        }
        let Some(diag) = &self.diag else { return Ok(()) };
        let mut buf = Vec::with_capacity(64 * 1024);
        let kernel = |source| SubscribeError::Kernel { what, source };
        for af in [sock_diag::AF_INET, sock_diag::AF_INET6] {
            diag.send(&request(af), 0).map_err(kernel)?;
            loop {
                buf.clear();
                diag.recv(&mut buf, 0).map_err(kernel)?;
                match decode(&buf) {
                    Ok(Batch::Done) => break,
                    Ok(Batch::More) => {}
                    Err(DecodeError::Kernel { errno }) if errno == nix::errno::Errno::ENOENT as i32 => break,
                    Err(e) => {
                        self.diag = None;
                        return Err(kernel(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Notes the owners of the open listeners, `ids` in the order of `self.open`.
    fn note_owners(&mut self, table: &OwnerTable, ids: &[OwnerId]) {
        let now = Instant::now();
        let mut seen: HashMap<Endpoint, (String, String)> = HashMap::new();
        for (&(ep, _), &id) in self.open.iter().zip(ids) {
            if id.0 == 0 {
                continue;
            }
            let owner = (table.process(id).to_owned(), table.unit(id).to_owned());
            // Several listeners on one endpoint (SO_REUSEPORT): the lowest owner.
            match seen.get(&ep) {
                Some(have) if *have <= owner => {}
                _ => {
                    seen.insert(ep, owner);
                }
            }
        }
        for (ep, owner) in seen {
            self.owners.insert(ep, (owner, now));
        }
        self.owners.retain(|_, (_, t)| now.duration_since(*t) < LISTENER_MEMORY);
    }

    /// The owner of an inbound socket: of the listener on its exact endpoint, else of the
    /// wildcard listener of its family on its port.
    fn owner_of(&self, local: &Endpoint) -> Option<&(String, String)> {
        if let Some((o, _)) = self.owners.get(local) {
            return Some(o);
        }
        let any: std::net::IpAddr = match local.ip {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        self.owners.get(&Endpoint::new(any, local.port)).map(|(o, _)| o)
    }
}

/// One namespace's subscription.
struct Subscription {
    /// The nsfs inode; 0 for the exporter's own.
    netns: u64,
    socket: Socket,
    tables: Tables,
    /// Sockets that look outbound, held until OUTBOUND_HOLD has passed: see its note.
    pending: Vec<(DestroyedSocket, Instant)>,
    /// The quality collector's last samples of the namespace's sockets.
    sampler: Sampler,
    /// `sampler.untracked()` when last added to the collector's total.
    untracked_seen: u64,
}

/// What is shared by the namespaces' subscriptions in the thread.
struct Shared<'a> {
    state: &'a Lifecycle,
    buf: Vec<u8>,
    batch: Vec<DestroyedSocket>,
    last_overrun_log: Option<Instant>,
    overruns_unlogged: u64,
}

impl Shared<'_> {
    /// Reads what is queued on a subscription, up to [`MAX_BATCH`]; returns whether the
    /// queue was emptied.
    fn drain(&mut self, socket: &Socket) -> bool {
        let state = self.state;
        while self.batch.len() < MAX_BATCH {
            self.buf.clear();
            match socket.recv(&mut self.buf, 0) {
                Ok(_) => {
                    state.events.fetch_add(1, Ordering::Relaxed);
                    match sock_destroy::decode_message(&self.buf) {
                        Ok(Some(s)) => self.batch.push(s),
                        Ok(None) => {}
                        Err(e) => log::debug!("lifecycle collector: undecodable destroy message ({e})"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {
                    state.overruns.fetch_add(1, Ordering::Relaxed);
                    if let (false, Some(q)) = (state.counts, &state.quality) {
                        q.closes_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    self.overruns_unlogged += 1;
                    if self.last_overrun_log.is_none_or(|t| t.elapsed() >= OVERRUN_LOG_EVERY) {
                        log::warn!(
                            "{} collector: the kernel dropped socket-destroy messages (receive buffer overrun, {} since the last warning); counts are lower bounds, raise net.core.rmem_max",
                            who(state),
                            self.overruns_unlogged
                        );
                        self.overruns_unlogged = 0;
                        self.last_overrun_log = Some(Instant::now());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("{} collector: receiving destroy messages failed ({e})", who(state));
                    return true;
                }
            }
        }
        false
    }

    /// Updates a namespace's listener owners from what the scrapes' owner walks found
    /// (see [`Owners::known`](crate::owners::Owners::known)).
    fn owners_for(&mut self, tables: &mut Tables) {
        let Some(owners) = &self.state.owners else { return };
        let inodes: Vec<u32> = tables.open.iter().map(|&(_, inode)| inode).collect();
        let (table, ids) = owners.known(&inodes);
        tables.note_owners(&table, &ids);
    }

    /// Reads a subscription's queue and counts what is ready; returns whether its queue
    /// was emptied.
    fn serve(&mut self, sub: &mut Subscription) -> bool {
        let empty = self.drain(&sub.socket);
        if self.batch.is_empty() && sub.pending.is_empty() {
            return empty;
        }
        sub.tables.refresh(&self.batch, self.state.namespaces.as_deref());
        self.owners_for(&mut sub.tables);
        let now = Instant::now();
        sub.pending.extend(self.batch.drain(..).map(|s| (s, now)));
        let tables = &sub.tables;
        let netns = sub.netns;
        // Decided over the whole pending list first: the rule's last step weighs the
        // sockets seen together.
        let directions: Vec<Direction> = {
            let d = tables.rule.tally(sub.pending.iter().map(|(s, _)| (&s.local, &s.remote)));
            sub.pending.iter().map(|(s, _)| d.of(&s.local, &s.remote)).collect()
        };
        let mut directions = directions.into_iter();
        let mut counters = None;
        let mut quality_counters = None;
        let quality = self.state.quality.as_deref();
        let counts = self.state.counts;
        let sampler = &mut sub.sampler;
        let reader = self.state.nat.as_deref().filter(|n| n.labels()).map(Nat::reader);
        let nat = Translator { tables: reader.as_ref(), netns };
        // An inbound close is counted at once, unless NAT resolution must wait for its
        // conntrack events.
        let inbound_hold = if reader.is_some() { NAT_HOLD } else { Duration::ZERO };
        sub.pending.retain(|(s, seen)| {
            let direction = directions.next().unwrap_or(Direction::Outbound);
            let hold = if direction == Direction::Outbound { OUTBOUND_HOLD } else { inbound_hold };
            let ready = now.duration_since(*seen) >= hold;
            if ready {
                let owner = if direction == Direction::Inbound { tables.owner_of(&s.local) } else { None };
                let origin = Origin {
                    netns,
                    process: owner.map_or("", |o| o.0.as_str()),
                    unit: owner.map_or("", |o| o.1.as_str()),
                    translation: nat.of(direction, &s.local, &s.remote),
                };
                let mut retransmits = s.retransmits();
                if let Some(q) = quality {
                    let look = sampler.close(s, direction);
                    retransmits = look.growth.retransmits;
                    if s.outcome(direction == Direction::Inbound) != Outcome::NotAConnection {
                        let c = quality_counters.get_or_insert_with(|| q.lock());
                        let port_lost = look.direction == Direction::Outbound && s.remote.port == 0;
                        let t = c.entry(
                            &origin,
                            look.direction,
                            &s.local,
                            &s.remote,
                            s.if_index,
                            &tables.interfaces,
                            port_lost,
                        );
                        quality::count(t, &look);
                    }
                }
                if counts {
                    counters.get_or_insert_with(|| self.state.lock()).add_from(
                        &origin,
                        s,
                        direction,
                        &tables.interfaces,
                        retransmits,
                    );
                }
            }
            !ready
        });
        empty
    }
}

/// What a namespace's thread opens for its subscription.
type Opened = (Socket, Socket, Option<Refreshed>);

/// Reads the interfaces and the port range of the calling thread's namespace.
fn refreshed(procfs: &Path) -> Result<Refreshed, SourceError> {
    Ok((interfaces::read_live()?, sysctl::port_range(procfs).ok()))
}

/// Opens a subscription in the calling thread's namespace (a namespace's thread).
fn open_here(procfs: &Path, join: bool) -> Result<Opened, SubscribeError> {
    let (socket, _, _) = subscribe_to(join)?;
    let diag = dump_socket()?;
    Ok((socket, diag, refreshed(procfs).ok()))
}

/// The namespaces' subscriptions: kept in step with the namespaces found.
struct Spaces {
    subs: Vec<Subscription>,
    opening: Vec<(Found, Receiver<Result<Opened, SubscribeError>>)>,
    /// Namespaces whose last subscription attempt failed, until one succeeds or they go.
    refused: HashSet<u64>,
    rescanned: Option<Instant>,
    warn_limit: RateLimit,
    /// `--path.procfs`, for the namespaces' port ranges.
    procfs: Arc<Path>,
    /// Whether the subscriptions join the destroy groups (not when the closes come from
    /// the eBPF program).
    join: bool,
}

impl Spaces {
    /// Lists the namespaces: closes the subscriptions of those gone (and forgets their
    /// series), opens one for each new one, names them all.
    fn rescan(&mut self, namespaces: &Namespaces, state: &Lifecycle) {
        let found = namespaces.discover();
        let live: HashMap<u64, &Found> = found.iter().filter(|f| !f.own).map(|f| (f.inode, f)).collect();
        let before = self.subs.len();
        // Dropping a subscription closes its sockets, which releases the namespace.
        self.subs.retain(|s| s.netns == 0 || (live.contains_key(&s.netns) && !s.tables.broken));
        self.opening.retain(|(f, _)| live.contains_key(&f.inode));
        self.refused.retain(|n| live.contains_key(n));
        let gone = follow_namespaces(&mut state.lock(), &live);
        if gone > 0 || self.subs.len() != before {
            log::debug!("{} collector: {gone} network namespace(s) gone", who(state));
        }
        if let Some(q) = &state.quality {
            follow_namespaces(&mut q.lock(), &live);
        }
        for f in live.values() {
            if self.subs.iter().any(|s| s.netns == f.inode) || self.opening.iter().any(|(o, _)| o.inode == f.inode) {
                continue;
            }
            let procfs = Arc::clone(&self.procfs);
            let join = self.join;
            match namespaces.run(f, move || open_here(&procfs, join)) {
                Ok(rx) => self.opening.push(((*f).clone(), rx)),
                Err(e) if e.is_gone() && e.missing_capability().is_none() => {}
                Err(e) => {
                    self.refused.insert(f.inode);
                    if self.warn_limit.allow() {
                        log::warn!("{} collector: cannot subscribe in network namespace {}: {e}", who(state), f.name);
                    }
                }
            }
        }
        state.subscribed.store(self.subs.len() as u64, Ordering::Relaxed);
        state.unsubscribed.store(self.refused.len() as u64, Ordering::Relaxed);
    }

    /// Takes the subscriptions the namespaces' threads have opened.
    fn collect_opened(&mut self, state: &Lifecycle) {
        let mut i = 0;
        while i < self.opening.len() {
            match self.opening[i].1.try_recv() {
                Err(TryRecvError::Empty) => i += 1,
                Ok(Ok((socket, diag, read))) => {
                    let (found, _) = self.opening.swap_remove(i);
                    self.refused.remove(&found.inode);
                    log::debug!("lifecycle collector: subscribed in network namespace {}", found.name);
                    let netns = found.inode;
                    let tables = Tables::new(Place::Other(found), Arc::clone(&self.procfs), Some(diag), read);
                    self.subs.push(Subscription {
                        netns,
                        socket,
                        tables,
                        pending: Vec::new(),
                        sampler: Sampler::default(),
                        untracked_seen: 0,
                    });
                }
                Ok(Err(e)) => {
                    let (found, _) = self.opening.swap_remove(i);
                    self.refused.insert(found.inode);
                    if self.warn_limit.allow() {
                        log::warn!(
                            "{} collector: cannot subscribe in network namespace {}: {e}",
                            who(state),
                            found.name
                        );
                    }
                }
                Err(TryRecvError::Disconnected) => {
                    self.opening.swap_remove(i);
                }
            }
        }
        state.subscribed.store(self.subs.len() as u64, Ordering::Relaxed);
        state.unsubscribed.store(self.refused.len() as u64, Ordering::Relaxed);
    }
}

fn run(socket: Socket, state: &Lifecycle, procfs: Arc<Path>) {
    let mut closes = state.ebpf_closes.lock().unwrap_or_else(|e| e.into_inner()).take();
    let own_netns =
        std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
    let mut spaces = Spaces {
        join: closes.is_none(),
        subs: vec![Subscription {
            netns: 0,
            socket,
            tables: Tables::new(Place::Own, Arc::clone(&procfs), None, None),
            pending: Vec::with_capacity(1024),
            sampler: Sampler::default(),
            untracked_seen: 0,
        }],
        procfs,
        opening: Vec::new(),
        refused: HashSet::new(),
        rescanned: None,
        warn_limit: RateLimit::new(Duration::from_secs(60)),
    };
    let mut shared = Shared {
        state,
        buf: Vec::with_capacity(8192),
        batch: Vec::with_capacity(1024),
        last_overrun_log: None,
        overruns_unlogged: 0,
    };
    let mut next_sample = Instant::now();
    let mut sampled: Vec<InfoSocket> = Vec::new();
    let mut held = VecDeque::new();
    loop {
        if let Some(namespaces) = state.namespaces.as_deref() {
            if spaces.rescanned.is_none_or(|t| t.elapsed() >= RESCAN) {
                spaces.rescan(namespaces, state);
                spaces.rescanned = Some(Instant::now());
            }
            spaces.collect_opened(state);
        }
        let mut empty = true;
        for sub in &mut spaces.subs {
            empty &= shared.serve(sub);
        }
        if let Some(ring) = closes.as_mut() {
            empty &= count_ebpf_closes(ring, &mut spaces.subs, state, own_netns, &mut held);
        }
        if let Some(quality) = state.quality.as_deref() {
            if Instant::now() >= next_sample {
                sample_all(&mut spaces, state, quality, &mut sampled);
                next_sample = Instant::now() + quality.interval;
            }
        }
        if empty {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
}
