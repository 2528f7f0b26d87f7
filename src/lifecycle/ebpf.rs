//! The eBPF source of the lifecycle counters (`--collector.lifecycle.source`): loads the
//! embedded `bpf/lifecycle.bpf.o`, attaches its raw tracepoints, and at scrape time adds
//! what the kernel's maps counted since the last scrape to the same [`Counters`] the
//! socket-destroy notifications feed. Also picks the source (`auto`, `ebpf`, `netlink`).
//!
//! The program (bpf/lifecycle.bpf.c) aggregates in the kernel by peer, so no event per
//! connection crosses into user space: a scrape reads at most the map's bound of entries.
//! The kernel's totals only grow, so each scrape adds the difference from what the last
//! one read. Raw tracepoints are attached with `BPF_RAW_TRACEPOINT_OPEN`, which needs no
//! tracefs; the kernel refuses to load without CAP_BPF and CAP_PERFMON (or root).
//!
//! Every namespace (`--collector.namespaces=all`): the program counts the sockets of all
//! of them, keyed by their nsfs inode. At scrape time the inodes are named from the
//! namespace registry (listed again every [`RESCAN`], or at once when the map holds an
//! inode not known yet); the counts of a namespace no longer found are dropped with its
//! series and deleted from the kernel's map, as the notifications drop a namespace that
//! goes. Interface indexes are a namespace's own: each namespace's interface table is
//! read by a job on its `netns` thread.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, RingBuf};
use aya::programs::{ProgramError, RawTracePoint};
use aya::{Ebpf, EbpfError, EbpfLoader};

use super::subscription::RESCAN;
use super::{Counters, Lifecycle, Origin, Status, Totals};
use crate::classify::{Direction, PeerKey, Remote};
use crate::iface::{IfaceId, InterfaceTable};
use crate::logging::RateLimit;
use crate::model::Endpoint;
use crate::netns::{Found, Namespaces, NetnsError};
use crate::owners::OwnerId;
use crate::snapshot::NsLabels;
use crate::source::{self, interfaces, SourceError};

/// The object `scripts/build-bpf.sh` compiles from `bpf/lifecycle.bpf.c`.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/lifecycle.bpf.o");

/// The programs and the raw tracepoints they attach to.
const PROGRAMS: [(&str, &str); 2] = [("on_state", "inet_sock_set_state"), ("on_retransmit", "tcp_retransmit_skb")];

/// `struct peer_key` of the program: local and remote address (16 bytes each, IPv4 in
/// the first 4), ifindex (u32), network namespace's nsfs inode (u32), service port (u16,
/// host order), family, direction.
type RawKey = [u8; 44];
/// `struct peer_totals`: closed, failed, sent bytes, received bytes, retransmits (as they
/// happen), total_retrans read at close.
type RawTotals = [u64; 6];

/// Indexes of the program's `stats` map.
const STAT_CLOSES: u32 = 0;
const STAT_UNTRACKED: u32 = 1;
const STAT_OVERFLOW: u32 = 2;
const STAT_DIRECTIONS_FULL: u32 = 3;
const STAT_CLOSES_LOST: u32 = 4;

/// Size of the close records' ring buffer when the quality collector reads it.
const CLOSES_BYTES: u32 = 4 << 20;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// How often the interface table is re-read (addresses change rarely).
const INTERFACES_EVERY: Duration = Duration::from_secs(5);
/// How long a scrape waits for new namespaces' first interface tables.
const FIRST_INTERFACES_WAIT: Duration = Duration::from_millis(500);
/// Peers the kernel map holds when `--collector.lifecycle.max-series` is 0 (no bound
/// in user space; the kernel's map needs one).
const UNBOUNDED_PEERS: u32 = 65_536;

/// `--collector.lifecycle.source`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// eBPF when the kernel lets this process load it, the notifications otherwise.
    #[default]
    Auto,
    /// The eBPF program only; the collector fails when it cannot be loaded.
    Ebpf,
    /// The socket-destroy notifications only.
    Netlink,
}

/// Why the eBPF source could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel refused the object (no CAP_BPF/CAP_PERFMON, lockdown, a field its BTF
    /// lacks).
    #[error("loading the eBPF object: {0}")]
    Object(Box<EbpfError>),
    /// A program could not be loaded or attached.
    #[error("{what} {program} ({tracepoint}): {source}")]
    Program {
        /// Loading or attaching.
        what: &'static str,
        /// The program's name.
        program: &'static str,
        /// Its tracepoint.
        tracepoint: &'static str,
        /// The kernel's answer.
        source: Box<ProgramError>,
    },
    /// A map of the object is missing or of another type.
    #[error("map {name}: {source}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// Why.
        source: MapError,
    },
    /// The object lacks a program or map (a build of another source).
    #[error("the embedded object has no {0}")]
    Missing(&'static str),
    /// This process's network namespace could not be read.
    #[error("reading /proc/self/ns/net: {0}")]
    Namespace(io::Error),
}

/// A namespace other than the own one (`all` mode), as the drains know it.
struct Space {
    found: Found,
    /// Its namespace file, held open: the namespace cannot be freed, and its inode number
    /// given to a new one, until a listing no longer finds it and its keys are deleted
    /// (the program keys by inode; a reused one would carry the old counts on).
    _held: Option<std::fs::File>,
    /// Its interfaces, once its thread has read them.
    interfaces: Option<InterfaceTable>,
    interfaces_read: Option<Instant>,
    /// An interface read running on the namespace's thread.
    job: Option<Receiver<Result<InterfaceTable, SourceError>>>,
    /// Its thread could not enter it (a missing capability): counted, but labelled by
    /// address only, and the collector reports failure as the notifications do.
    refused: bool,
}

impl Space {
    /// Takes a finished interface read and starts another when the table is stale;
    /// returns why the namespace could not be entered, when it could not.
    fn refresh_interfaces(&mut self, namespaces: &Namespaces, now: Instant) -> Option<NetnsError> {
        if let Some(job) = &self.job {
            match job.try_recv() {
                Ok(Ok(t)) => {
                    self.interfaces = Some(t);
                    self.job = None;
                }
                Ok(Err(_)) | Err(TryRecvError::Disconnected) => self.job = None,
                Err(TryRecvError::Empty) => {}
            }
        }
        if self.job.is_none() && self.interfaces_read.is_none_or(|t| now.duration_since(t) >= INTERFACES_EVERY) {
            self.interfaces_read = Some(now);
            // getifaddrs asks in the calling thread's namespace: its thread reads it.
            match namespaces.run(&self.found, interfaces::read_live) {
                Ok(rx) => {
                    self.job = Some(rx);
                    self.refused = false;
                }
                Err(e) if e.is_gone() && e.missing_capability().is_none() => {}
                Err(e) => {
                    self.refused = true;
                    return Some(e);
                }
            }
        }
        None
    }

    /// The interface table, `fallback` (addresses only) when none could be read; `None`
    /// while the first read is still running at `deadline`: the counts wait for a later
    /// scrape rather than take a wrong interface for good.
    fn interfaces<'a>(&'a mut self, fallback: &'a InterfaceTable, deadline: Instant) -> Option<&'a InterfaceTable> {
        if self.interfaces.is_none() {
            if let Some(job) = &self.job {
                match job.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(Ok(t)) => self.interfaces = Some(t),
                    Err(RecvTimeoutError::Timeout) => return None,
                    Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => {}
                }
                self.job = None;
            }
        }
        Some(self.interfaces.as_ref().unwrap_or(fallback))
    }
}

/// The loaded program and what the last scrape read from its maps.
pub struct Kernel {
    /// Owns the programs and their links: dropped, they are detached and unloaded.
    _bpf: Ebpf,
    peers: BpfHashMap<MapData, RawKey, RawTotals>,
    overflow: Array<MapData, RawTotals>,
    /// The close records for the quality collector, until its thread takes them.
    closes: Option<RingBuf<MapData>>,
    stats: Array<MapData, u64>,
    /// The totals of each key as last read, to add only what is new.
    seen: HashMap<RawKey, RawTotals>,
    seen_overflow: [RawTotals; 2],
    seen_overflow_adds: u64,
    untracked: u64,
    directions_full: u64,
    interfaces: InterfaceTable,
    interfaces_read: Option<Instant>,
    /// The exporter's own namespace's inode: its keys count as `netns` 0.
    own_netns: u32,
    /// The other namespaces by inode (`all` mode).
    spaces: HashMap<u64, Space>,
    rescanned: Option<Instant>,
    warn_limit: RateLimit,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel").field("peers_seen", &self.seen.len()).finish_non_exhaustive()
    }
}

impl Kernel {
    /// Loads and attaches the program, counting sockets of this process's network
    /// namespace (of every one with `all_namespaces`), with room for `max_peers` peers in
    /// the kernel's map.
    ///
    /// `report_closes`: each established connection's close is also written to the
    /// `closes` ring buffer, for the quality collector ([`Kernel::take_closes`]).
    /// `count_in_user`: every close and failed connect is written there instead of being
    /// counted by peer in the kernel, for user space to count with what the kernel's
    /// key folds away (the whole tuple, which NAT resolution looks up).
    pub fn load(
        max_peers: u32,
        all_namespaces: bool,
        report_closes: bool,
        count_in_user: bool,
    ) -> Result<Kernel, LoadError> {
        let own = std::fs::metadata("/proc/self/ns/net").map_err(LoadError::Namespace)?.ino();
        // An inode number is 32 bits in the kernel (ns_common.inum).
        let own_netns = u32::try_from(own).unwrap_or(0);
        // 0: the program counts every namespace.
        let counted = if all_namespaces { 0 } else { own_netns };
        let report = u8::from(report_closes);
        let in_user = u8::from(count_in_user);
        let ring = report_closes || count_in_user;
        let mut bpf = EbpfLoader::new()
            .override_global("netns_ino", &counted, true)
            .override_global("report_closes", &report, true)
            .override_global("count_in_user", &in_user, true)
            .map_max_entries("peers", max_peers)
            // 4 MiB: 58,000 records, a second at the highest close rate measured here
            // (the reader drains it every 25 ms); one page when nothing is reported.
            .map_max_entries("closes", if ring { CLOSES_BYTES } else { 4096 })
            .load(OBJECT)
            .map_err(|e| LoadError::Object(Box::new(e)))?;
        for (program, tracepoint) in PROGRAMS {
            let p: &mut RawTracePoint = bpf
                .program_mut(program)
                .ok_or(LoadError::Missing(program))?
                .try_into()
                .map_err(program_error("a raw tracepoint", program, tracepoint))?;
            p.load().map_err(program_error("loading", program, tracepoint))?;
            p.attach(tracepoint).map_err(program_error("attaching", program, tracepoint))?;
        }
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
            bpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, LoadError> {
            let map = bpf.take_map(name).ok_or(LoadError::Missing(name))?;
            T::try_from(map).map_err(|source| LoadError::Map { name, source })
        }
        let peers = take(&mut bpf, "peers")?;
        let overflow = take(&mut bpf, "overflow")?;
        let stats = take(&mut bpf, "stats")?;
        let closes = if ring { Some(take(&mut bpf, "closes")?) } else { None };
        Ok(Kernel {
            _bpf: bpf,
            peers,
            overflow,
            closes,
            stats,
            seen: HashMap::new(),
            seen_overflow: [[0; 6]; 2],
            seen_overflow_adds: 0,
            untracked: 0,
            directions_full: 0,
            interfaces: InterfaceTable::default(),
            interfaces_read: None,
            own_netns,
            spaces: HashMap::new(),
            rescanned: None,
            warn_limit: RateLimit::new(Duration::from_secs(60)),
        })
    }

    /// The close records, once: the quality collector's thread reads them.
    pub fn take_closes(&mut self) -> Option<RingBuf<MapData>> {
        self.closes.take()
    }

    /// Close records the ring buffer had no room for.
    pub fn closes_lost(&self) -> u64 {
        self.stat(STAT_CLOSES_LOST)
    }

    fn stat(&self, i: u32) -> u64 {
        self.stats.get(&i, 0).unwrap_or(0)
    }

    /// Lists the namespaces (`all` mode): names the new ones in `counters`, forgets
    /// those gone with their series, and deletes their keys from the kernel's map (their
    /// sockets are gone with them; the map would otherwise fill with dead namespaces).
    fn rescan(&mut self, namespaces: &Namespaces, counters: &mut Counters, now: Instant) {
        self.rescanned = Some(now);
        let live: HashMap<u64, Found> =
            namespaces.discover().into_iter().filter(|f| !f.own).map(|f| (f.inode, f)).collect();
        self.spaces.retain(|n, _| live.contains_key(n));
        counters.retain_namespaces(|n| live.contains_key(&n));
        for (&inode, f) in &live {
            counters.set_namespace(
                inode,
                NsLabels { netns: f.name.clone(), container_id: f.container_id.clone(), pod_uid: f.pod_uid.clone() },
            );
            let space = self.spaces.entry(inode).or_insert_with(|| Space {
                found: f.clone(),
                _held: hold(f),
                interfaces: None,
                interfaces_read: None,
                job: None,
                refused: false,
            });
            // The labels may change (a name clash with a new namespace); the thread's path too.
            space.found = f.clone();
        }
        let own = self.own_netns;
        let gone: Vec<RawKey> = self
            .seen
            .keys()
            .filter(|k| key_netns(k) != own && !live.contains_key(&u64::from(key_netns(k))))
            .copied()
            .collect();
        for k in gone {
            self.seen.remove(&k);
            // Deleted meanwhile by nobody else: the program never deletes a key.
            let _ = self.peers.remove(&k);
        }
    }

    /// Adds to `counters` what the kernel counted since the last call; returns the
    /// sockets seen entering CLOSE in all. `namespaces` in `all` mode.
    fn drain(&mut self, counters: &mut Counters, namespaces: Option<&Namespaces>) -> u64 {
        let now = Instant::now();
        if self.interfaces_read.is_none_or(|t| now.duration_since(t) >= INTERFACES_EVERY) {
            if let Ok(t) = interfaces::read_live() {
                self.interfaces = t;
            }
            self.interfaces_read = Some(now);
        }
        // A key deleted meanwhile is skipped: only this thread deletes keys.
        let entries: Vec<(RawKey, RawTotals)> = self.peers.iter().flatten().collect();
        if let Some(ns) = namespaces {
            let own = self.own_netns;
            let unknown = entries.iter().any(|(k, _)| {
                let n = key_netns(k);
                n != own && !self.spaces.contains_key(&u64::from(n))
            });
            if unknown || self.rescanned.is_none_or(|t| now.duration_since(t) >= RESCAN) {
                self.rescan(ns, counters, now);
            }
            for space in self.spaces.values_mut() {
                if let Some(e) = space.refresh_interfaces(ns, now) {
                    if self.warn_limit.allow() {
                        log::warn!(
                            "lifecycle collector: cannot read the interfaces of network namespace {}: {e}; its closed connections are counted with interfaces by address only",
                            space.found.name
                        );
                    }
                }
            }
        }
        let default_table = InterfaceTable::default();
        let deadline = now + FIRST_INTERFACES_WAIT;
        for (key, totals) in entries {
            let inode = key_netns(&key);
            let netns = if inode == self.own_netns { 0 } else { u64::from(inode) };
            if netns != 0 && !self.spaces.contains_key(&netns) {
                // Not found by the listing just made: a namespace that went before any
                // scrape named it. Nothing to label its counts with; its key would stay
                // in the kernel's map for good.
                self.seen.remove(&key);
                let _ = self.peers.remove(&key);
                continue;
            }
            let table = match self.spaces.get_mut(&netns) {
                // No table read (the namespace's thread failed): addresses only, as the
                // notifications do.
                Some(space) => match space.interfaces(&default_table, deadline) {
                    Some(t) => t,
                    // Not yet: `seen` keeps the old totals, so the next scrape adds it all.
                    None => continue,
                },
                None => &self.interfaces,
            };
            let before = self.seen.insert(key, totals).unwrap_or_default();
            let delta = difference(&totals, &before);
            if delta == Totals::default() {
                continue;
            }
            if let Some((peer, if_index)) = decode(&key) {
                counters.add_kernel(&peer, if_index, netns, table, delta);
            }
        }
        for dir in [0u32, 1] {
            let Ok(totals) = self.overflow.get(&dir, 0) else { continue };
            let slot = &mut self.seen_overflow[dir as usize];
            let delta = difference(&totals, slot);
            *slot = totals;
            if delta != Totals::default() {
                let direction = if dir == 0 { Direction::Inbound } else { Direction::Outbound };
                counters.add_overflow(direction, delta);
            }
        }
        let adds = self.stat(STAT_OVERFLOW);
        counters.merged += adds.saturating_sub(self.seen_overflow_adds);
        self.seen_overflow_adds = adds;
        self.untracked = self.stat(STAT_UNTRACKED);
        self.directions_full = self.stat(STAT_DIRECTIONS_FULL);
        self.stat(STAT_CLOSES)
    }

    /// Namespaces entered (their interfaces read), the own one included, and those that
    /// could not be.
    fn namespaces(&self) -> (u64, u64) {
        let refused = self.spaces.values().filter(|s| s.refused).count() as u64;
        (self.spaces.len() as u64 - refused + 1, refused)
    }
}

/// Opens a namespace's file, if it still is that namespace (a process's may have exited
/// and its pid gone to another).
fn hold(f: &Found) -> Option<std::fs::File> {
    let file = std::fs::File::open(&f.path).ok()?;
    (file.metadata().ok()?.ino() == f.inode).then_some(file)
}

/// The nsfs inode of a key's namespace.
fn key_netns(key: &RawKey) -> u32 {
    u32::from_ne_bytes([key[36], key[37], key[38], key[39]])
}

fn program_error(
    what: &'static str,
    program: &'static str,
    tracepoint: &'static str,
) -> impl FnOnce(ProgramError) -> LoadError {
    move |source| LoadError::Program { what, program, tracepoint, source: Box::new(source) }
}

/// What `now` holds beyond `before`, as totals.
fn difference(now: &RawTotals, before: &RawTotals) -> Totals {
    let d = |i: usize| now[i].saturating_sub(before[i]);
    Totals { closed: d(0), failed: d(1), sent_bytes: d(2), received_bytes: d(3), retransmits: d(4) }
}

/// A peer of the kernel's map: direction, local and remote endpoints (the service port on
/// the service's side, 0 on the other) and the bound interface's index.
fn decode(key: &RawKey) -> Option<((Direction, Endpoint, Endpoint), u32)> {
    let ip = |b: &[u8]| -> Option<IpAddr> {
        match key[42] {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
            _ => None,
        }
    };
    let (local, remote) = (ip(&key[0..16])?, ip(&key[16..32])?);
    let if_index = u32::from_ne_bytes([key[32], key[33], key[34], key[35]]);
    let port = u16::from_ne_bytes([key[40], key[41]]);
    let direction = if key[43] == 0 { Direction::Inbound } else { Direction::Outbound };
    let (local_port, remote_port) = if direction == Direction::Inbound { (port, 0) } else { (0, port) };
    Some(((direction, Endpoint::new(local, local_port), Endpoint::new(remote, remote_port)), if_index))
}

impl Counters {
    /// Adds totals the kernel counted for one peer of namespace `netns` (0: the own one),
    /// whose interfaces `table` holds.
    fn add_kernel(
        &mut self,
        peer: &(Direction, Endpoint, Endpoint),
        if_index: u32,
        netns: u64,
        table: &InterfaceTable,
        delta: Totals,
    ) {
        let (direction, local, remote) = peer;
        let origin = Origin { netns, ..Origin::default() };
        add(self.entry(&origin, *direction, local, remote, if_index, table, false), delta);
    }

    /// Adds totals the kernel could not keep by peer (its map was full): the fully folded
    /// `other` series of the direction.
    fn add_overflow(&mut self, direction: Direction, delta: Totals) {
        let key = PeerKey {
            direction,
            local: None,
            service_port: None,
            remote: Remote::Other,
            state: None,
            iface: IfaceId::UNKNOWN,
            owner: OwnerId::default(),
            netns: 0,
            translation: crate::nat::Translation::None,
        };
        add(self.series.entry(key).or_default(), delta);
    }
}

fn add(t: &mut Totals, d: Totals) {
    t.closed += d.closed;
    t.failed += d.failed;
    t.sent_bytes += d.sent_bytes;
    t.received_bytes += d.received_bytes;
    t.retransmits += d.retransmits;
}

impl Lifecycle {
    /// Adds what the eBPF program counted since the last call (nothing with the
    /// notifications, which feed the counters from their thread).
    pub fn refresh(&self) {
        let mut kernel = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
        let Some(k) = kernel.as_mut() else { return };
        let closes = k.drain(&mut self.lock(), self.namespaces.as_deref());
        self.events.store(closes, Ordering::Relaxed);
        if let Some(q) = &self.quality {
            q.closes_lost.store(k.closes_lost(), Ordering::Relaxed);
        }
        let (entered, refused) = k.namespaces();
        self.subscribed.store(entered, Ordering::Relaxed);
        self.unsubscribed.store(refused, Ordering::Relaxed);
    }

    /// Established sockets the eBPF program saw close with no direction known (opened
    /// before it was attached, or its direction map was full); `None` with the
    /// notifications.
    pub fn untracked(&self) -> Option<u64> {
        let kernel = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
        kernel.as_ref().map(|k| k.untracked + k.directions_full)
    }
}

/// Size of the kernel's peer map for `--collector.lifecycle.max-series`: room for twice
/// the label sets (a label set folds several kernel keys: prefixes, interfaces).
fn kernel_peers(max_series: usize) -> u32 {
    if max_series == 0 {
        return UNBOUNDED_PEERS;
    }
    u32::try_from(max_series.saturating_mul(2)).unwrap_or(u32::MAX).clamp(1024, 1 << 20)
}

/// Starts the source `choice` picks. `auto` tries eBPF and falls back to the
/// notifications on any refusal; `ebpf` leaves the collector failed instead. A `procfs`
/// of another network namespace has no sockets of this process's to count: the
/// notifications' start says so and leaves the collector off.
///
/// With `--collector.namespaces=all` (`state.namespaces`) the program counts every
/// namespace. `needs_notifications`: `--collector.connections.owner` asks for a label
/// (the listener's owner) that only the notifications give, so `auto` takes them (the
/// configuration refuses `ebpf` with that flag).
pub fn start(state: Arc<Lifecycle>, procfs: &Path, choice: SourceChoice, max_series: usize, needs_notifications: bool) {
    if choice == SourceChoice::Auto && needs_notifications {
        log::info!(
            "lifecycle collector: source netlink (--collector.lifecycle.source=auto): socket owners are counted from the socket-destroy notifications; the eBPF source counts without owners"
        );
        state.set_source(super::Source::Netlink);
        super::subscription::start(state, procfs);
        return;
    }
    if choice == SourceChoice::Netlink || !source::is_own_namespace(procfs) {
        if choice == SourceChoice::Netlink {
            log::info!("lifecycle collector: source netlink (--collector.lifecycle.source=netlink)");
        }
        state.set_source(super::Source::Netlink);
        super::subscription::start(state, procfs);
        return;
    }
    let all_namespaces = state.namespaces.is_some();
    // NAT resolution looks up each connection's whole tuple: the program then reports
    // every close and user space counts, as it does the notifications.
    let count_in_user = state.nat.as_ref().is_some_and(|n| n.labels());
    match Kernel::load(kernel_peers(max_series), all_namespaces, state.quality.is_some(), count_in_user) {
        Ok(mut k) => {
            let closes = k.take_closes();
            *state.kernel.lock().unwrap_or_else(|e| e.into_inner()) = Some(k);
            state.set_source(super::Source::Ebpf);
            state.set_status(Status::Subscribed);
            if count_in_user {
                *state.ebpf_closes.lock().unwrap_or_else(|e| e.into_inner()) = closes;
                super::subscription::start(Arc::clone(&state), procfs);
            } else {
                // The program counts retransmits as they happen and reports each close
                // to the quality collector, whose samples run on a thread of their own.
                start_quality_only(&state, procfs, closes);
            }
            log::info!(
                "lifecycle collector: source ebpf (--collector.lifecycle.source={}): raw tracepoints inet_sock_set_state and tcp_retransmit_skb attached (no tracefs needed), {} peers in the kernel's map, {}",
                if choice == SourceChoice::Auto { "auto" } else { "ebpf" },
                kernel_peers(max_series),
                if all_namespaces { "every network namespace counted" } else { "the exporter's network namespace counted" }
            );
        }
        Err(e) if choice == SourceChoice::Auto => {
            log::info!(
                "lifecycle collector: source netlink (--collector.lifecycle.source=auto): the kernel refused the eBPF program ({e}); it needs CAP_BPF and CAP_PERFMON; using socket-destroy notifications"
            );
            state.set_source(super::Source::Netlink);
            super::subscription::start(state, procfs);
        }
        Err(e) => {
            log::error!(
                "lifecycle collector: the kernel refused the eBPF program ({e}); it needs CAP_BPF and CAP_PERFMON (--collector.lifecycle.source=ebpf, no fallback); closed and failed connection counters are unavailable"
            );
            state.set_status(Status::Failed);
            start_quality_only(&state, procfs, None);
        }
    }
}

/// Starts the sampling thread for the quality collector alone, when it is on and the
/// lifecycle counters do not take the notifications: its closes come from the program's
/// records when given (no notifications are then subscribed, so the kernel builds none),
/// from the notifications otherwise.
fn start_quality_only(state: &Lifecycle, procfs: &Path, closes: Option<RingBuf<MapData>>) {
    if let Some(quality) = &state.quality {
        let sampling =
            Lifecycle::quality_only(state.namespaces.clone(), state.owners.clone(), Arc::clone(quality), closes)
                .with_nat(state.nat.clone());
        super::subscription::start(Arc::new(sampling), procfs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Folding;

    fn key(family: u8, local: &[u8], remote: &[u8], port: u16, direction: u8) -> RawKey {
        let mut k = [0u8; 44];
        k[..local.len()].copy_from_slice(local);
        k[16..16 + remote.len()].copy_from_slice(remote);
        k[40..42].copy_from_slice(&port.to_ne_bytes());
        k[42] = family;
        k[43] = direction;
        k
    }

    fn in_namespace(mut k: RawKey, if_index: u32, netns: u32) -> RawKey {
        k[32..36].copy_from_slice(&if_index.to_ne_bytes());
        k[36..40].copy_from_slice(&netns.to_ne_bytes());
        k
    }

    #[test]
    fn the_namespace_and_interface_fields_do_not_touch_the_peer() {
        let plain = key(AF_INET, &[10, 0, 0, 1], &[10, 0, 0, 2], 8080, 0);
        let k = in_namespace(plain, 7, 4_026_532_999);
        assert_eq!(key_netns(&k), 4_026_532_999);
        assert_eq!(key_netns(&plain), 0);
        let (peer, if_index) = decode(&k).unwrap();
        assert_eq!(if_index, 7);
        assert_eq!(peer, decode(&plain).unwrap().0);
    }

    #[test]
    fn keys_of_another_namespace_count_under_its_inode() {
        let mut c = Counters::new(100, Folding::default());
        c.set_all_namespaces();
        let t = InterfaceTable::default();
        let k = key(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], 7399, 1);
        let (peer, if_index) = decode(&k).unwrap();
        let one = difference(&[1, 0, 0, 0, 0, 0], &[0; 6]);
        c.add_kernel(&peer, if_index, 0, &t, one);
        c.add_kernel(&peer, if_index, 4_026_532_999, &t, one);
        c.add_kernel(&peer, if_index, 4_026_532_999, &t, one);
        let by_netns: Vec<(u64, u64)> = c.series().iter().map(|(k, t)| (k.netns, t.closed)).collect();
        assert_eq!(by_netns, vec![(0, 1), (4_026_532_999, 2)]);
    }

    #[test]
    fn keys_decode_to_the_service_port_on_the_services_side() {
        let ((dir, local, remote), _) = decode(&key(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 2], 8080, 0)).unwrap();
        assert_eq!((dir, local.port, remote.port), (Direction::Inbound, 8080, 0));
        assert_eq!(remote.ip, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let ((dir, local, remote), _) = decode(&key(AF_INET6, &v6.octets(), &v6.octets(), 443, 1)).unwrap();
        assert_eq!((dir, local.port, remote.port), (Direction::Outbound, 0, 443));
        assert_eq!(local.ip, IpAddr::V6(v6));
        assert!(decode(&key(7, &[1], &[1], 1, 0)).is_none(), "no such family");
    }

    #[test]
    fn only_what_grew_is_added_and_failed_connects_keep_their_port() {
        let mut c = Counters::new(100, Folding::default());
        let t = InterfaceTable::default();
        let k = key(AF_INET, &[127, 0, 0, 1], &[127, 0, 0, 1], 7399, 1);
        let peer = decode(&k).unwrap();
        let first: RawTotals = [0, 3, 0, 0, 0, 0];
        c.add_kernel(&peer.0, peer.1, 0, &t, difference(&first, &[0; 6]));
        let second: RawTotals = [2, 5, 10, 12, 3, 1];
        c.add_kernel(&peer.0, peer.1, 0, &t, difference(&second, &first));
        let s = c.series();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0.service_port, Some(7399));
        assert_eq!(s[0].1, Totals { closed: 2, failed: 5, sent_bytes: 10, received_bytes: 12, retransmits: 3 });
    }

    #[test]
    fn the_kernel_map_is_bounded_whatever_the_flag() {
        assert_eq!(kernel_peers(0), UNBOUNDED_PEERS);
        assert_eq!(kernel_peers(10), 1024);
        assert_eq!(kernel_peers(5000), 10_000);
        assert_eq!(kernel_peers(usize::MAX), 1 << 20);
    }
}
