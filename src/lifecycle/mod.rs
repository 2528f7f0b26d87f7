//! The lifecycle counters: every TCP socket the kernel destroys, folded into closed and
//! failed connections, bytes and retransmits by peer (and, in `all` mode, by network
//! namespace; with owners, by process); [`subscription`] feeds them from the kernel's
//! destroy notifications of each namespace, [`ebpf`] from an eBPF program's in-kernel
//! counts (keyed by namespace too in `all` mode).
//!
//! Bounding keeps every exposed series non-decreasing: a label set, once admitted, is
//! never merged later (a re-ranking like the peers gauge's would move its count into
//! `other` and make the counter drop, which `rate()` reads as a reset). New label sets
//! are admitted whole while the map is under three quarters of the bound; past that
//! they go to `destination_address="other"` keyed by everything but the remote, and past
//! the bound less two to one of two fully folded series (one per direction). Memory is
//! bounded by `max_series` label sets whatever the number of remote addresses.
//!
//! Across namespaces and owners the bound is one: the fully folded series also fold the
//! owner (`process=""`) and every namespace but the exporter's own into one
//! ([`NETNS_OTHER`], `netns="other"`), so there are at most four of them (two
//! directions, own and other namespaces) and the bound less four is where they start.
//! When a namespace goes, its series go with it (its counters can never rise again).

pub mod ebpf;
pub mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::classify::{Direction, Folding, PeerKey, Remote, NETNS_OTHER};
use crate::iface::{IfaceId, InterfaceTable, InterfaceTableBuilder};
use crate::model::Endpoint;
use crate::nat::{Nat, Translation};
use crate::netns::Namespaces;
use crate::owners::{OwnerId, Owners};
use crate::parse::sock_destroy::{DestroyedSocket, Outcome};
use crate::quality::Quality;
use crate::snapshot::NsLabels;

/// Where a destroyed socket was and who held it, beyond what its message says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    /// Its network namespace's nsfs inode; 0 for the exporter's own.
    pub netns: u64,
    /// `process` (empty when unknown or without owners).
    pub process: &'a str,
    /// `systemd_unit`.
    pub unit: &'a str,
    /// What NAT did to its connection (`--collector.nat`).
    pub translation: Translation,
}

/// The labels of the namespaces and owners in the counters' keys.
#[derive(Debug, Clone, Default)]
pub struct Names {
    namespaces: HashMap<u64, NsLabels>,
    owners: Vec<(String, String)>,
}

impl Names {
    /// The labels of a key's namespace: `host` for the own one, `other` for
    /// [`NETNS_OTHER`]; `None` for one no longer known.
    pub fn namespace<'a>(&'a self, netns: u64, fixed: &'a [NsLabels; 2]) -> Option<&'a NsLabels> {
        match netns {
            0 => Some(&fixed[0]),
            NETNS_OTHER => Some(&fixed[1]),
            n => self.namespaces.get(&n),
        }
    }

    /// `process` and `systemd_unit` of a key's owner.
    pub fn owner(&self, id: OwnerId) -> (&str, &str) {
        self.owners.get(id.0 as usize).map_or(("", ""), |(p, u)| (p.as_str(), u.as_str()))
    }
}

/// The labels of the own namespace (`host`) and of the fully folded series of the others
/// (`other`), for [`Names::namespace`].
pub fn fixed_namespaces() -> [NsLabels; 2] {
    let labels = |n: &str| NsLabels { netns: n.to_owned(), container_id: String::new(), pod_uid: String::new() };
    [labels("host"), labels("other")]
}

/// What a label set has counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Established connections closed.
    pub closed: u64,
    /// Connects that failed.
    pub failed: u64,
    /// Payload bytes sent and acknowledged.
    pub sent_bytes: u64,
    /// Bytes received (payload, plus one per FIN received).
    pub received_bytes: u64,
    /// Segments retransmitted.
    pub retransmits: u64,
}

/// Counters by peer, bounded: the lifecycle's [`Totals`], or another collector's totals
/// kept under the same labels and the same bounding rule (the quality collector's).
#[derive(Debug)]
pub struct Counters<T = Totals> {
    series: HashMap<PeerKey, T>,
    max_series: usize,
    folding: Folding,
    merged: u64,
    /// Interface names by the ids in `series`: stable for the life of the process,
    /// unlike the ids of a scrape's table.
    iface_names: Vec<String>,
    iface_ids: HashMap<String, IfaceId>,
    table: Option<InterfaceTable>,
    /// (process, systemd_unit) by the owner ids in `series`, stable for the life of the
    /// process; id 0 is ("", "").
    owner_names: Vec<(String, String)>,
    owner_ids: HashMap<(String, String), OwnerId>,
    /// Labels of the namespaces other than the own one, by inode (`all` mode).
    namespaces: HashMap<u64, NsLabels>,
    all_namespaces: bool,
}

impl Counters<Totals> {
    /// At most `max_series` label sets (0: no bound), remotes folded by `folding`.
    pub fn new(max_series: usize, folding: Folding) -> Counters {
        Counters::with_bound(max_series, folding)
    }

    /// Counts one destroyed socket of the exporter's own namespace, owner unknown.
    /// `direction` is what the namespace's [`DirectionRule`](crate::classify::DirectionRule)
    /// decided when it was destroyed, `table` its interfaces.
    pub fn add(&mut self, s: &DestroyedSocket, direction: Direction, table: &InterfaceTable) {
        self.add_from(&Origin::default(), s, direction, table, s.retransmits());
    }

    /// [`add`](Self::add) for a socket of any namespace, with its owner; `retransmits`
    /// is what is left to count of its `tcpi_total_retrans` (all of it, unless the
    /// quality collector counted some while it was open).
    pub fn add_from(
        &mut self,
        origin: &Origin<'_>,
        s: &DestroyedSocket,
        direction: Direction,
        table: &InterfaceTable,
        retransmits: u64,
    ) {
        let inbound = direction == Direction::Inbound;
        let outcome = s.outcome(inbound);
        if outcome == Outcome::NotAConnection {
            return;
        }
        // A failed connect or an aborted client has lost its remote port: no port label
        // rather than a false 0.
        let port_lost = !inbound && s.remote.port == 0;
        let t = self.entry(origin, direction, &s.local, &s.remote, s.if_index, table, port_lost);
        match outcome {
            Outcome::Failed => t.failed += 1,
            _ => {
                t.closed += 1;
                t.sent_bytes += s.sent_payload(inbound);
                t.received_bytes += s.received_bytes();
                t.retransmits += retransmits;
            }
        }
    }
}

impl<T: Default + Clone> Counters<T> {
    /// At most `max_series` label sets (0: no bound), remotes folded by `folding`.
    pub fn with_bound(max_series: usize, folding: Folding) -> Counters<T> {
        let reserved = InterfaceTable::default();
        let iface_names: Vec<String> =
            (0..reserved.len()).map(|i| reserved.name(IfaceId(i as u16)).to_owned()).collect();
        let iface_ids = iface_names.iter().enumerate().map(|(i, n)| (n.clone(), IfaceId(i as u16))).collect();
        Counters {
            series: HashMap::new(),
            max_series,
            folding,
            merged: 0,
            iface_names,
            iface_ids,
            table: None,
            owner_names: vec![(String::new(), String::new())],
            owner_ids: HashMap::new(),
            namespaces: HashMap::new(),
            all_namespaces: false,
        }
    }

    /// Counts sockets of every namespace (`--collector.namespaces=all`): sets aside room
    /// for the fully folded series of the other namespaces. Before any is counted.
    pub fn set_all_namespaces(&mut self) {
        self.all_namespaces = true;
    }

    /// Whether the counters are of every namespace.
    pub fn all_namespaces(&self) -> bool {
        self.all_namespaces
    }

    fn intern_owner(&mut self, process: &str, unit: &str) -> OwnerId {
        if process.is_empty() && unit.is_empty() {
            return OwnerId::default();
        }
        if let Some(&id) = self.owner_ids.get(&(process.to_owned(), unit.to_owned())) {
            return id;
        }
        let Ok(n) = u32::try_from(self.owner_names.len()) else { return OwnerId::default() };
        self.owner_names.push((process.to_owned(), unit.to_owned()));
        self.owner_ids.insert((process.to_owned(), unit.to_owned()), OwnerId(n));
        OwnerId(n)
    }

    /// Names a namespace (`all` mode); a namespace's labels may change between reads
    /// (a clash with a new one's name), its counts stay.
    pub fn set_namespace(&mut self, netns: u64, labels: NsLabels) {
        self.namespaces.insert(netns, labels);
    }

    /// Forgets the namespaces that are gone, and their series; returns how many went.
    pub fn retain_namespaces(&mut self, live: impl Fn(u64) -> bool) -> usize {
        let before = self.namespaces.len();
        self.namespaces.retain(|n, _| live(*n));
        if self.namespaces.len() != before {
            let known = &self.namespaces;
            self.series.retain(|k, _| k.netns == 0 || k.netns == NETNS_OTHER || known.contains_key(&k.netns));
        }
        before - self.namespaces.len()
    }

    /// The names of the namespaces and owners of [`series`](Self::series), copied so
    /// that a scrape writes without holding the counters.
    pub fn names(&self) -> Names {
        Names { namespaces: self.namespaces.clone(), owners: self.owner_names.clone() }
    }

    fn intern(&mut self, name: &str) -> IfaceId {
        if let Some(&id) = self.iface_ids.get(name) {
            return id;
        }
        let Ok(n) = u16::try_from(self.iface_names.len()) else { return IfaceId::UNKNOWN };
        self.iface_names.push(name.to_owned());
        self.iface_ids.insert(name.to_owned(), IfaceId(n));
        self.table = None;
        IfaceId(n)
    }

    /// The totals a socket of a namespace counts in: its label set, or the merged one the
    /// bound sends it to. `port_lost`: the service port is unknown (no port label).
    #[allow(clippy::too_many_arguments)]
    pub fn entry(
        &mut self,
        origin: &Origin<'_>,
        direction: Direction,
        local: &Endpoint,
        remote: &Endpoint,
        if_index: u32,
        table: &InterfaceTable,
        port_lost: bool,
    ) -> &mut T {
        let key = self.admit(origin, direction, local, remote, if_index, table, port_lost);
        self.series.entry(key).or_default()
    }

    /// The label set a socket counts in (see [`entry`](Self::entry)), made if new.
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        &mut self,
        origin: &Origin<'_>,
        direction: Direction,
        local: &Endpoint,
        remote: &Endpoint,
        if_index: u32,
        table: &InterfaceTable,
        port_lost: bool,
    ) -> PeerKey {
        let iface = self.intern(table.name(table.resolve(local, if_index)));
        let owner = self.intern_owner(origin.process, origin.unit);
        let mut key = PeerKey {
            owner,
            netns: origin.netns,
            translation: origin.translation,
            ..PeerKey::of(direction, local, remote, None, iface, &self.folding)
        };
        if port_lost {
            key.service_port = None;
        }
        let key = self.slot_key(key);
        self.series.entry(key).or_default();
        key
    }

    /// The totals of an admitted label set.
    pub fn get_mut(&mut self, key: &PeerKey) -> Option<&mut T> {
        self.series.get_mut(key)
    }

    /// The series a key is counted in; see the module's note on bounding.
    fn slot_key(&mut self, key: PeerKey) -> PeerKey {
        let max = self.max_series;
        let len = self.series.len();
        // Fully folded series: two per direction in host mode; in `all` mode two more,
        // for every namespace but the own one.
        let folded = if self.all_namespaces { 4 } else { 2 };
        // Room is left for the fully folded series however small the bound: a label set
        // is admitted as it is only below three quarters of the bound and below the bound
        // less those series.
        if max == 0 || self.series.contains_key(&key) || len < (max - max / 4).min(max.saturating_sub(folded)) {
            key
        } else {
            self.merged += 1;
            let other = PeerKey { remote: Remote::Other, translation: Translation::None, ..key };
            if self.series.contains_key(&other) || len + folded < max {
                other
            } else {
                PeerKey {
                    remote: Remote::Other,
                    translation: Translation::None,
                    service_port: None,
                    local: None,
                    iface: IfaceId::UNKNOWN,
                    owner: OwnerId::default(),
                    netns: if key.netns == 0 { 0 } else { NETNS_OTHER },
                    ..key
                }
            }
        }
    }

    /// Every label set with its totals, sorted.
    pub fn series(&self) -> Vec<(PeerKey, T)> {
        let mut v: Vec<(PeerKey, T)> = self.series.iter().map(|(k, t)| (*k, t.clone())).collect();
        v.sort_unstable_by_key(|e| e.0);
        v
    }

    /// Sockets counted into a merged series because of the bound.
    pub fn merged(&self) -> u64 {
        self.merged
    }

    /// A table that names the interface ids of [`series`](Self::series).
    pub fn interfaces(&mut self) -> InterfaceTable {
        if self.table.is_none() {
            let mut b = InterfaceTableBuilder::default();
            // Ids are given in order of first use, as they were interned here.
            for (i, name) in self.iface_names.iter().enumerate().skip(InterfaceTable::default().len()) {
                b.index(i as u32 + 1, name);
            }
            self.table = Some(b.build());
        }
        self.table.clone().unwrap_or_default()
    }
}

/// Whether the subscription is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not started yet.
    Starting = 0,
    /// Receiving.
    Subscribed = 1,
    /// The kernel refused it (logged): the collector reports success 0.
    Failed = 2,
}

/// Which source feeds the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Not chosen yet.
    None = 0,
    /// The socket-destroy notifications.
    Netlink = 1,
    /// The eBPF program.
    Ebpf = 2,
}

impl Source {
    /// The `source` label value.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Source::None => None,
            Source::Netlink => Some("netlink"),
            Source::Ebpf => Some("ebpf"),
        }
    }
}

/// The lifecycle state shared by the receiving thread and the scrapes.
pub struct Lifecycle {
    /// The counters.
    pub counters: Mutex<Counters>,
    /// Overruns the kernel reported (ENOBUFS): messages were lost.
    pub overruns: AtomicU64,
    /// Destroy messages received.
    pub events: AtomicU64,
    /// Network namespaces subscribed (the own one included).
    pub subscribed: AtomicU64,
    /// Namespaces found at the last rescan that could not be subscribed (`all` mode);
    /// above 0 the collector reports failure, as the other collectors do.
    pub unsubscribed: AtomicU64,
    status: AtomicU8,
    source: AtomicU8,
    /// The eBPF program, when it is the source: read at scrape time.
    kernel: Mutex<Option<ebpf::Kernel>>,
    /// Every namespace's threads, in `--collector.namespaces=all` mode (shared with the
    /// scrapes' reads).
    pub namespaces: Option<Arc<Namespaces>>,
    /// The socket owner walk, with `--collector.connections.owner` (shared with the
    /// scrapes' reads).
    pub owners: Option<Arc<Owners>>,
    /// The quality collector, sampled by the notifications' thread (see [`crate::quality`]).
    pub quality: Option<Arc<Quality>>,
    /// Whether the notifications count in these counters; not when they only serve the
    /// quality collector (the lifecycle counters come from the eBPF program, or are off).
    pub counts: bool,
    /// The eBPF program's close records, for the quality collector's thread (which then
    /// subscribes to no notifications).
    pub ebpf_closes: Mutex<Option<aya::maps::RingBuf<aya::maps::MapData>>>,
    /// NAT resolution (`--collector.nat`): each counted socket's translation.
    pub nat: Option<Arc<Nat>>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("counters", &self.counters)
            .field("status", &self.status())
            .field("all_namespaces", &self.namespaces.is_some())
            .field("owners", &self.owners.is_some())
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// Empty counters with these bounds.
    pub fn new(max_series: usize, folding: Folding) -> Lifecycle {
        Lifecycle {
            counters: Mutex::new(Counters::new(max_series, folding)),
            overruns: AtomicU64::new(0),
            events: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            unsubscribed: AtomicU64::new(0),
            status: AtomicU8::new(Status::Starting as u8),
            namespaces: None,
            owners: None,
            source: AtomicU8::new(Source::None as u8),
            kernel: Mutex::new(None),
            quality: None,
            counts: true,
            ebpf_closes: Mutex::new(None),
            nat: None,
        }
    }

    /// Labels what is counted with its NAT translation (`--collector.nat`).
    pub fn with_nat(mut self, nat: Option<Arc<Nat>>) -> Lifecycle {
        self.nat = nat;
        self
    }

    /// Samples the quality collector on the notifications' thread, when it runs.
    pub fn with_quality(mut self, quality: Option<Arc<Quality>>) -> Lifecycle {
        self.quality = quality;
        self
    }

    /// A subscription that serves only the quality collector: its counters stay empty.
    /// `closes`: the eBPF program's close records, read instead of the notifications.
    pub fn quality_only(
        namespaces: Option<Arc<Namespaces>>,
        owners: Option<Arc<Owners>>,
        quality: Arc<Quality>,
        closes: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    ) -> Lifecycle {
        let mut l = Lifecycle::new(1, Folding::default()).with_sources(namespaces, owners).with_quality(Some(quality));
        l.counts = false;
        l.ebpf_closes = Mutex::new(closes);
        l
    }

    /// Subscribes in every namespace of `namespaces` (`all` mode) and labels counts by
    /// owner when `owners` is given.
    pub fn with_sources(mut self, namespaces: Option<Arc<Namespaces>>, owners: Option<Arc<Owners>>) -> Lifecycle {
        if namespaces.is_some() {
            self.lock().set_all_namespaces();
        }
        self.namespaces = namespaces;
        self.owners = owners;
        self
    }

    /// The subscription's status.
    pub fn status(&self) -> Status {
        match self.status.load(Ordering::Relaxed) {
            1 => Status::Subscribed,
            2 => Status::Failed,
            _ => Status::Starting,
        }
    }

    fn set_status(&self, s: Status) {
        self.status.store(s as u8, Ordering::Relaxed);
    }

    /// The source feeding the counters.
    pub fn source(&self) -> Source {
        match self.source.load(Ordering::Relaxed) {
            1 => Source::Netlink,
            2 => Source::Ebpf,
            _ => Source::None,
        }
    }

    fn set_source(&self, s: Source) {
        self.source.store(s as u8, Ordering::Relaxed);
    }

    /// The counters, even if a thread panicked while holding them (they are only ever
    /// added to, so a half-made update loses at most that socket).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::ListenerSet;

    /// Counts a socket with the listener-only direction (the rule's other steps have
    /// tests of their own in `classify`).
    fn add(c: &mut Counters, s: &DestroyedSocket, l: &ListenerSet, t: &InterfaceTable) {
        c.add(s, l.direction(&s.local), t);
    }

    fn add_from(c: &mut Counters, origin: &Origin<'_>, s: &DestroyedSocket, l: &ListenerSet, t: &InterfaceTable) {
        c.add_from(origin, s, l.direction(&s.local), t, s.retransmits());
    }

    use crate::model::TcpState;
    use crate::parse::tcp_info::TcpInfo;
    use std::net::{IpAddr, Ipv4Addr};

    fn ep(s: &str) -> Endpoint {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        Endpoint::new(sa.ip(), sa.port())
    }

    fn closed(local: &str, remote: &str) -> DestroyedSocket {
        DestroyedSocket {
            local: ep(local),
            remote: ep(remote),
            state: TcpState::Close,
            if_index: 0,
            info: Some(TcpInfo {
                state: 7,
                rtt_us: 20,
                min_rtt_us: Some(10),
                total_retrans: 1,
                bytes_acked: 101,
                bytes_received: 51,
                bytes_sent: Some(100),
                bytes_retrans: Some(0),
                ..TcpInfo::default()
            }),
            cookie: 0,
        }
    }

    fn total(c: &Counters) -> Totals {
        c.series().iter().fold(Totals::default(), |a, (_, t)| Totals {
            closed: a.closed + t.closed,
            failed: a.failed + t.failed,
            sent_bytes: a.sent_bytes + t.sent_bytes,
            received_bytes: a.received_bytes + t.received_bytes,
            retransmits: a.retransmits + t.retransmits,
        })
    }

    #[test]
    fn an_exchange_counts_one_inbound_and_one_outbound_with_payload_bytes() {
        let l = ListenerSet::new([ep("127.0.0.1:9000")]);
        let t = InterfaceTable::default();
        let mut c = Counters::new(100, Folding::default());
        add(&mut c, &closed("127.0.0.1:9000", "127.0.0.1:50000"), &l, &t); // server: no SYN in acked
        add(&mut c, &closed("127.0.0.1:50000", "127.0.0.1:9000"), &l, &t); // client: SYN in acked
        let s = c.series();
        assert_eq!(s.len(), 2);
        let (inb, outb) = (&s[0], &s[1]);
        assert_eq!((inb.0.direction, inb.0.service_port), (Direction::Inbound, Some(9000)));
        assert_eq!((outb.0.direction, outb.0.service_port), (Direction::Outbound, Some(9000)));
        assert_eq!(inb.1.sent_bytes, 100, "min(acked 101, sent 100)");
        assert_eq!(outb.1.sent_bytes, 100, "acked 101 less the SYN");
        assert_eq!(c.interfaces().name(inb.0.iface), "lo");
    }

    #[test]
    fn past_the_bound_counts_merge_and_exposed_series_never_decrease() {
        let l = ListenerSet::new([ep("0.0.0.0:443")]);
        let t = InterfaceTable::default();
        let max = 40;
        let mut c = Counters::new(max, Folding::default());
        let mut seen: HashMap<PeerKey, Totals> = HashMap::new();
        let mut n = 0u64;
        for round in 0..50u32 {
            // Each round: new remotes (ever growing) plus the first remote again.
            for i in 0..20u32 {
                let remote = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + round * 20 + i));
                add(&mut c, &closed("192.0.2.1:443", &format!("{remote}:40000")), &l, &t);
                n += 1;
            }
            add(&mut c, &closed("192.0.2.1:443", "10.0.0.0:40001"), &l, &t);
            n += 1;
            let series = c.series();
            assert!(series.len() <= max, "{} series", series.len());
            assert_eq!(total(&c).closed, n, "merged, not lost");
            for (k, t) in &series {
                let before = seen.insert(*k, *t).unwrap_or_default();
                assert!(t.closed >= before.closed && t.sent_bytes >= before.sent_bytes, "{k:?} decreased");
            }
            assert_eq!(seen.len(), series.len(), "an exposed series vanished");
        }
        assert!(c.merged() > 900);
        let first = c.series().into_iter().find(|(k, _)| k.remote == Remote::Address("10.0.0.0".parse().unwrap()));
        assert_eq!(first.unwrap().1.closed, 51, "an admitted remote keeps counting");
    }

    #[test]
    fn across_namespaces_and_owners_the_bound_holds_and_counts_stay_apart() {
        let l = ListenerSet::new([ep("0.0.0.0:443")]);
        let t = InterfaceTable::default();
        let max = 40;
        let mut c = Counters::new(max, Folding::default());
        c.set_all_namespaces();
        let spaces = 30u64;
        for ns in 1..=spaces {
            let labels = NsLabels { netns: format!("ns{ns}"), container_id: String::new(), pod_uid: String::new() };
            c.set_namespace(ns, labels);
        }
        let mut n = 0u64;
        let mut seen: HashMap<PeerKey, Totals> = HashMap::new();
        for round in 0..20u32 {
            for ns in 0..=spaces {
                // Every namespace and owner its own remotes and process names.
                let remote = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + round * 64 + ns as u32));
                let process = format!("p{}", (round + ns as u32) % 7);
                let origin = Origin { netns: ns, process: &process, unit: "x.service", ..Origin::default() };
                add_from(&mut c, &origin, &closed("192.0.2.1:443", &format!("{remote}:40000")), &l, &t);
                add_from(&mut c, &origin, &closed("192.0.2.1:40001", &format!("{remote}:443")), &l, &t);
                n += 2;
            }
            let series = c.series();
            assert!(series.len() <= max, "{} series", series.len());
            assert_eq!(total(&c).closed, n, "merged, not lost");
            for (k, t) in &series {
                let before = seen.insert(*k, *t).unwrap_or_default();
                assert!(t.closed >= before.closed, "{k:?} decreased");
            }
        }
        let series = c.series();
        // The fully folded series: no owner, and every other namespace as one.
        let folded: Vec<_> = series.iter().filter(|(k, _)| k.local.is_none()).collect();
        assert!(!folded.is_empty() && folded.len() <= 4, "{folded:?}");
        assert!(folded.iter().all(|(k, _)| k.owner == OwnerId::default() && (k.netns == 0 || k.netns == NETNS_OTHER)));
        // Series admitted whole keep their namespace and owner.
        let names = c.names();
        let fixed = fixed_namespaces();
        let first = series.iter().find(|(k, _)| k.netns == 5 && k.local.is_some()).expect("namespace 5 admitted");
        assert_eq!(names.namespace(first.0.netns, &fixed).unwrap().netns, "ns5");
        assert_eq!(names.owner(first.0.owner).1, "x.service");
        // A namespace that goes takes its series; the others keep theirs.
        let before = c.series().len();
        assert_eq!(c.retain_namespaces(|ns| ns != 5), 1);
        assert!(c.series().iter().all(|(k, _)| k.netns != 5));
        assert!(c.series().len() < before);
        assert!(c.series().iter().any(|(k, _)| k.netns == 6));
    }

    #[test]
    fn failed_connects_have_no_port_and_listeners_are_no_connections() {
        let l = ListenerSet::new([ep("127.0.0.1:9000")]);
        let t = InterfaceTable::default();
        let mut c = Counters::new(10, Folding::default());
        let mut failed = closed("0.0.0.0:40000", "127.0.0.1:0");
        failed.info = Some(TcpInfo { state: 7, ..TcpInfo::default() });
        add(&mut c, &failed, &l, &t);
        add(&mut c, &closed("127.0.0.1:9000", "0.0.0.0:0"), &l, &t);
        let s = c.series();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0.service_port, None);
        assert_eq!((s[0].1.failed, s[0].1.closed, s[0].1.sent_bytes), (1, 0, 0));
    }
}
