//! The lifecycle counters: every TCP socket the kernel destroys, folded into closed and
//! failed connections, bytes and retransmits by peer. The state of one network
//! namespace; [`subscription`] feeds it from the kernel's destroy notifications,
//! [`ebpf`] from an eBPF program's in-kernel counts.
//!
//! Bounding keeps every exposed series non-decreasing: a label set, once admitted, is
//! never merged later (a re-ranking like the peers gauge's would move its count into
//! `other` and make the counter drop, which `rate()` reads as a reset). New label sets
//! are admitted whole while the map is under three quarters of the bound; past that
//! they go to `destination_address="other"` keyed by everything but the remote, and past
//! the bound less two to one of two fully folded series (one per direction). Memory is
//! bounded by `max_series` label sets whatever the number of remote addresses.

pub mod ebpf;
pub mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::classify::{Direction, Folding, ListenerSet, PeerKey, Remote};
use crate::iface::{IfaceId, InterfaceTable, InterfaceTableBuilder};
use crate::parse::sock_destroy::{DestroyedSocket, Outcome};

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

/// The counters of one namespace, bounded.
#[derive(Debug)]
pub struct Counters {
    series: HashMap<PeerKey, Totals>,
    max_series: usize,
    folding: Folding,
    merged: u64,
    /// Interface names by the ids in `series`: stable for the life of the process,
    /// unlike the ids of a scrape's table.
    iface_names: Vec<String>,
    iface_ids: HashMap<String, IfaceId>,
    table: Option<InterfaceTable>,
}

impl Counters {
    /// At most `max_series` label sets (0: no bound), remotes folded by `folding`.
    pub fn new(max_series: usize, folding: Folding) -> Counters {
        let reserved = InterfaceTable::default();
        let iface_names: Vec<String> =
            (0..reserved.len()).map(|i| reserved.name(IfaceId(i as u16)).to_owned()).collect();
        let iface_ids = iface_names.iter().enumerate().map(|(i, n)| (n.clone(), IfaceId(i as u16))).collect();
        Counters { series: HashMap::new(), max_series, folding, merged: 0, iface_names, iface_ids, table: None }
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

    /// Counts one destroyed socket. `listeners` are the namespace's listeners when it was
    /// destroyed, `table` its interfaces.
    pub fn add(&mut self, s: &DestroyedSocket, listeners: &ListenerSet, table: &InterfaceTable) {
        let direction = listeners.direction(&s.local);
        let inbound = direction == Direction::Inbound;
        let outcome = s.outcome(inbound);
        if outcome == Outcome::NotAConnection {
            return;
        }
        let iface = self.intern(table.name(table.resolve(&s.local, s.if_index)));
        let mut key = PeerKey::of(direction, &s.local, &s.remote, None, iface, &self.folding);
        // A failed connect or an aborted client has lost its remote port: no port label
        // rather than a false 0.
        if !inbound && s.remote.port == 0 {
            key.service_port = None;
        }
        let t = self.slot(key);
        match outcome {
            Outcome::Failed => t.failed += 1,
            _ => {
                t.closed += 1;
                t.sent_bytes += s.sent_payload(inbound);
                t.received_bytes += s.received_bytes();
                t.retransmits += s.retransmits();
            }
        }
    }

    /// The series a key is counted in; see the module's note on bounding.
    fn slot(&mut self, key: PeerKey) -> &mut Totals {
        let max = self.max_series;
        let len = self.series.len();
        let key = if max == 0 || self.series.contains_key(&key) || len < max - max / 4 {
            key
        } else {
            self.merged += 1;
            let other = PeerKey { remote: Remote::Other, ..key };
            if self.series.contains_key(&other) || len + 2 < max {
                other
            } else {
                PeerKey { remote: Remote::Other, service_port: None, local: None, iface: IfaceId::UNKNOWN, ..key }
            }
        };
        self.series.entry(key).or_default()
    }

    /// Every label set with its totals, sorted.
    pub fn series(&self) -> Vec<(PeerKey, Totals)> {
        let mut v: Vec<(PeerKey, Totals)> = self.series.iter().map(|(k, t)| (*k, *t)).collect();
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
#[derive(Debug)]
pub struct Lifecycle {
    /// The counters.
    pub counters: Mutex<Counters>,
    /// Overruns the kernel reported (ENOBUFS): messages were lost.
    pub overruns: AtomicU64,
    /// Destroy messages received.
    pub events: AtomicU64,
    status: AtomicU8,
    source: AtomicU8,
    /// The eBPF program, when it is the source: read at scrape time.
    kernel: Mutex<Option<ebpf::Kernel>>,
}

impl Lifecycle {
    /// Empty counters with these bounds.
    pub fn new(max_series: usize, folding: Folding) -> Lifecycle {
        Lifecycle {
            counters: Mutex::new(Counters::new(max_series, folding)),
            overruns: AtomicU64::new(0),
            events: AtomicU64::new(0),
            status: AtomicU8::new(Status::Starting as u8),
            source: AtomicU8::new(Source::None as u8),
            kernel: Mutex::new(None),
        }
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
    use crate::model::{Endpoint, TcpState};
    use crate::parse::sock_destroy::FinalInfo;
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
            info: Some(FinalInfo {
                state: 7,
                rtt_us: 20,
                min_rtt_us: Some(10),
                total_retrans: 1,
                bytes_acked: 101,
                bytes_received: 51,
                bytes_sent: Some(100),
                bytes_retrans: Some(0),
            }),
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
        c.add(&closed("127.0.0.1:9000", "127.0.0.1:50000"), &l, &t); // server: no SYN in acked
        c.add(&closed("127.0.0.1:50000", "127.0.0.1:9000"), &l, &t); // client: SYN in acked
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
                c.add(&closed("192.0.2.1:443", &format!("{remote}:40000")), &l, &t);
                n += 1;
            }
            c.add(&closed("192.0.2.1:443", "10.0.0.0:40001"), &l, &t);
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
    fn failed_connects_have_no_port_and_listeners_are_no_connections() {
        let l = ListenerSet::new([ep("127.0.0.1:9000")]);
        let t = InterfaceTable::default();
        let mut c = Counters::new(10, Folding::default());
        let mut failed = closed("0.0.0.0:40000", "127.0.0.1:0");
        failed.info = Some(FinalInfo { state: 7, ..FinalInfo::default() });
        c.add(&failed, &l, &t);
        c.add(&closed("127.0.0.1:9000", "0.0.0.0:0"), &l, &t);
        let s = c.series();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0.service_port, None);
        assert_eq!((s[0].1.failed, s[0].1.closed, s[0].1.sent_bytes), (1, 0, 0));
    }
}
