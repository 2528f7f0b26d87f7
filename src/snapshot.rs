//! One read of the socket tables, shared by the scrapes that run at the same time: the
//! snapshot every metric family writes from, and the guard that releases a read on every
//! path (a panic or a failed thread included) so that no scrape waits for a read that will
//! never finish.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::classify::PortRange;
use crate::exposition::{Encoder, Kind, Number, Value};
use crate::iface::{IfaceId, InterfaceTable};
use crate::model::{Endpoint, Family, TcpState};
use crate::owners::{OwnerId, OwnerTable};

/// A socket reduced to what the per-connection and peers families need: 44 bytes, no
/// heap, sorted so that duplicates are adjacent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// Local (source) endpoint.
    pub local: Endpoint,
    /// Remote (destination) endpoint.
    pub remote: Endpoint,
    /// TCP state.
    pub state: TcpState,
    /// Interface of the local address.
    pub iface: IfaceId,
    /// Owning process (`--collector.connections.owner`); always 0 without it.
    pub owner: OwnerId,
}

/// A listening socket and its queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListenerRecord {
    /// Where it listens.
    pub local: Endpoint,
    /// Interface of the local address.
    pub iface: IfaceId,
    /// Owning process; always 0 without `--collector.connections.owner`.
    pub owner: OwnerId,
    /// Connections waiting to be accepted.
    pub queue_length: u32,
    /// Backlog limit; meaningful only where [`Snapshot::queue_limits`] is true.
    pub queue_limit: u32,
}

/// Exact socket counts by family, interface id and state.
#[derive(Debug, Clone)]
pub struct StateCounts {
    interfaces: usize,
    counts: Vec<u64>,
}

impl StateCounts {
    /// Zero counts for every interface of `table`.
    pub fn new(table: &InterfaceTable) -> StateCounts {
        let interfaces = table.len();
        StateCounts { interfaces, counts: vec![0; Family::ALL.len() * interfaces * TcpState::ALL.len()] }
    }

    fn slot(&self, family: Family, iface: IfaceId) -> usize {
        (family.index() * self.interfaces + usize::from(iface.0)) * TcpState::ALL.len()
    }

    /// Counts one socket.
    pub fn add(&mut self, family: Family, iface: IfaceId, state: TcpState) {
        let i = self.slot(family, iface) + state as usize;
        self.counts[i] += 1;
    }

    /// Forgets every count (a read that starts over from another source).
    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|n| *n = 0);
    }

    /// Sockets counted in a state, over every family and interface.
    pub fn total(&self, state: TcpState) -> u64 {
        self.counts.iter().skip(state as usize).step_by(TcpState::ALL.len()).sum()
    }

    /// Every (family, interface) pair with a socket gets all eleven states, zeros
    /// included, so that a state appearing does not start a new series mid-graph.
    pub fn write<W: Write>(&self, enc: &mut Encoder<W>, table: &InterfaceTable) -> io::Result<()> {
        enc.family(
            "network_connection_states",
            Kind::Gauge,
            "Number of TCP sockets by family, interface and state; never truncated by a series limit.",
        )?;
        self.write_samples(enc, table, None)
    }

    /// The samples alone, with a namespace's labels in `all` mode.
    pub fn write_samples<W: Write>(
        &self,
        enc: &mut Encoder<W>,
        table: &InterfaceTable,
        ns: Option<&NsLabels>,
    ) -> io::Result<()> {
        for family in Family::ALL {
            for id in 0..self.interfaces {
                let iface = IfaceId(id as u16);
                let slot = self.slot(family, iface);
                let row = &self.counts[slot..slot + TcpState::ALL.len()];
                if row.iter().all(|&n| n == 0) {
                    continue;
                }
                for state in TcpState::ALL {
                    let n = row[state as usize];
                    if state == TcpState::Unknown && n == 0 {
                        continue;
                    }
                    let labels = [
                        ("family", Value::Str(family.label())),
                        ("interface", Value::Str(table.name(iface))),
                        ("state", Value::Str(state.label())),
                    ];
                    match ns {
                        None => enc.sample("network_connection_states", &labels, Number::Int(n))?,
                        Some(ns) => {
                            let mut all = labels.to_vec();
                            ns.extend(&mut all);
                            enc.sample("network_connection_states", &all, Number::Int(n))?
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The labels of a network namespace (`--collector.namespaces=all`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsLabels {
    /// `netns`: `host`, the `ip netns` name, the container, or `netns-<inode>`.
    pub netns: String,
    /// `container_id`; empty outside a container.
    pub container_id: String,
    /// `pod_uid`; empty outside a Kubernetes pod.
    pub pod_uid: String,
}

impl NsLabels {
    /// Adds the three labels to a sample's labels, keeping them in name order.
    pub fn extend<'a>(&'a self, labels: &mut Vec<(&'a str, Value<'a>)>) {
        labels.push(("container_id", Value::Str(&self.container_id)));
        labels.push(("netns", Value::Str(&self.netns)));
        labels.push(("pod_uid", Value::Str(&self.pod_uid)));
        labels.sort_by_key(|l| l.0);
    }
}

/// One network namespace's part of a read in `all` mode.
#[derive(Debug)]
pub struct Space {
    /// Its labels.
    pub labels: NsLabels,
    /// Its interfaces (its `eth0` is not the host's).
    pub table: InterfaceTable,
    /// Its sockets, sorted.
    pub keys: Vec<SeriesKey>,
    /// Its listeners, sorted.
    pub listeners: Vec<ListenerRecord>,
    /// Its exact counts.
    pub counts: StateCounts,
    /// Whether its listeners' backlog limits are known.
    pub queue_limits: bool,
    /// Its `net.ipv4.ip_local_port_range`, which decides direction where no listener does.
    pub port_range: PortRange,
    /// Its nsfs inode; 0 for the exporter's own.
    pub netns: u64,
    /// Whether it shares the host's TCP established-socket hash table (`None`: unknown,
    /// or the exporter's own namespace).
    pub shares_host_tcp_table: Option<bool>,
}

/// What a family writes from: the whole read in `host` mode, one namespace in `all` mode.
#[derive(Clone, Copy)]
pub struct Part<'a> {
    /// The namespace's labels; `None` in `host` mode, where no label is added.
    pub ns: Option<&'a NsLabels>,
    /// Interfaces.
    pub table: &'a InterfaceTable,
    /// Sockets, sorted.
    pub keys: &'a [SeriesKey],
    /// Listeners, sorted.
    pub listeners: &'a [ListenerRecord],
    /// Exact counts.
    pub counts: &'a StateCounts,
    /// Whether listeners' backlog limits are known.
    pub queue_limits: bool,
    /// The namespace's `net.ipv4.ip_local_port_range`.
    pub port_range: PortRange,
    /// Socket owners, with `--collector.connections.owner`.
    pub owners: Option<&'a OwnerTable>,
    /// The namespace's nsfs inode; 0 for the exporter's own (and in `host` mode).
    pub netns: u64,
}

impl Part<'_> {
    /// Whether samples get labels beyond the family's own.
    pub fn extra_labels(&self) -> bool {
        self.ns.is_some() || self.owners.is_some()
    }

    /// A sample's labels with the namespace's and the owner's added where they apply,
    /// in name order.
    pub fn labels<'a>(&'a self, mut labels: Vec<(&'a str, Value<'a>)>, owner: OwnerId) -> Vec<(&'a str, Value<'a>)> {
        if let Some(ns) = self.ns {
            ns.extend(&mut labels);
        }
        if let Some(owners) = self.owners {
            labels.push(("process", Value::Str(owners.process(owner))));
            labels.push(("systemd_unit", Value::Str(owners.unit(owner))));
            labels.sort_by_key(|l| l.0);
        }
        labels
    }
}

/// One read of the kernel, ready for every family to write from.
#[derive(Debug)]
pub struct Snapshot {
    /// Interfaces at the time of the read.
    pub table: InterfaceTable,
    /// Every socket (sorted when the per-connection family was wanted); empty unless a
    /// family that needs them was wanted.
    pub keys: Vec<SeriesKey>,
    /// Listening sockets with their queues, sorted.
    pub listeners: Vec<ListenerRecord>,
    /// Exact counts.
    pub counts: StateCounts,
    /// Whether the listeners' backlog limits are known (the netlink source tells them,
    /// `/proc/net/tcp` does not).
    pub queue_limits: bool,
    /// The own namespace's `net.ipv4.ip_local_port_range`.
    pub port_range: PortRange,
    /// Whether every source read succeeded.
    pub ok: bool,
    /// How long the read took.
    pub read_time: Duration,
    /// In `all` mode, every namespace (the fields above are then unused); empty in
    /// `host` mode.
    pub spaces: Vec<Space>,
    /// Socket owners, with `--collector.connections.owner`.
    pub owners: Option<std::sync::Arc<OwnerTable>>,
}

impl Snapshot {
    /// A snapshot with no sockets, marked failed: what a scrape writes from when the
    /// read it waited for was abandoned.
    pub fn failed() -> Snapshot {
        let table = InterfaceTable::default();
        Snapshot {
            counts: StateCounts::new(&table),
            table,
            keys: Vec::new(),
            listeners: Vec::new(),
            queue_limits: false,
            port_range: PortRange::default(),
            ok: false,
            read_time: Duration::ZERO,
            spaces: Vec::new(),
            owners: None,
        }
    }

    /// What the families write from, one part per namespace in `all` mode.
    pub fn parts(&self) -> Vec<Part<'_>> {
        if self.spaces.is_empty() {
            return vec![Part {
                ns: None,
                table: &self.table,
                keys: &self.keys,
                listeners: &self.listeners,
                counts: &self.counts,
                queue_limits: self.queue_limits,
                port_range: self.port_range,
                owners: self.owners.as_deref(),
                netns: 0,
            }];
        }
        self.spaces
            .iter()
            .map(|s| Part {
                ns: Some(&s.labels),
                table: &s.table,
                keys: &s.keys,
                listeners: &s.listeners,
                counts: &s.counts,
                queue_limits: s.queue_limits,
                port_range: s.port_range,
                owners: self.owners.as_deref(),
                netns: s.netns,
            })
            .collect()
    }
}

/// Why a scrape got no snapshot from the read it waited for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SharedReadError {
    /// The scrape making the read stopped without a result (it panicked or could not
    /// start a thread).
    #[error("the shared read of the socket tables was abandoned by the scrape making it")]
    Abandoned,
    /// The read took longer than a waiter may wait.
    #[error("the shared read of the socket tables took longer than {0:?}")]
    TimedOut(Duration),
}

enum FlightState {
    Reading,
    Done(Arc<Snapshot>),
    Abandoned,
}

/// A read in progress and the scrapes waiting for it.
struct Flight {
    state: Mutex<FlightState>,
    done: Condvar,
}

/// Reads in progress, one slot per kind of read: concurrent scrapes that want the same
/// kind wait for one read of the kernel instead of each making their own.
pub struct SharedReads {
    flights: Mutex<[Option<Arc<Flight>>; 3]>,
    max_wait: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing holding these locks can leave the data half-written, so a poisoned lock is
    // still good to use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held by the scrape making a read: publishes its result, or, dropped without one (a
/// panic unwinding, an early return), marks the read abandoned and wakes the waiters.
struct Leader<'a> {
    reads: &'a SharedReads,
    slot: usize,
    flight: Arc<Flight>,
    finished: bool,
}

impl Leader<'_> {
    fn finish(mut self, state: FlightState) {
        self.release(state);
        self.finished = true;
    }

    fn release(&self, state: FlightState) {
        *lock(&self.flight.state) = state;
        let mut flights = lock(&self.reads.flights);
        if flights[self.slot].as_ref().is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
            flights[self.slot] = None;
        }
        drop(flights);
        self.flight.done.notify_all();
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.release(FlightState::Abandoned);
        }
    }
}

impl SharedReads {
    /// Shared reads whose waiters give up after `max_wait`.
    pub fn new(max_wait: Duration) -> SharedReads {
        SharedReads { flights: Mutex::new(Default::default()), max_wait }
    }

    /// The snapshot of kind `slot` (0 to 2): made by `read` here, or the one another
    /// scrape is making.
    pub fn get(&self, slot: usize, read: impl FnOnce() -> Snapshot) -> Result<Arc<Snapshot>, SharedReadError> {
        let slot = slot.min(2);
        let (flight, leader) = {
            let mut flights = lock(&self.flights);
            match &flights[slot] {
                Some(f) => (Arc::clone(f), false),
                None => {
                    let f = Arc::new(Flight { state: Mutex::new(FlightState::Reading), done: Condvar::new() });
                    flights[slot] = Some(Arc::clone(&f));
                    (f, true)
                }
            }
        };
        if leader {
            let guard = Leader { reads: self, slot, flight, finished: false };
            let snapshot = Arc::new(read());
            guard.finish(FlightState::Done(Arc::clone(&snapshot)));
            return Ok(snapshot);
        }
        let deadline = Instant::now() + self.max_wait;
        let mut state = lock(&flight.state);
        loop {
            match &*state {
                FlightState::Done(s) => return Ok(Arc::clone(s)),
                FlightState::Abandoned => return Err(SharedReadError::Abandoned),
                FlightState::Reading => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SharedReadError::TimedOut(self.max_wait));
            }
            state = flight.done.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    #[test]
    fn concurrent_scrapes_share_one_read() {
        let reads = SharedReads::new(Duration::from_secs(30));
        let made = AtomicUsize::new(0);
        let inside = Barrier::new(2);
        let release = Barrier::new(2);
        std::thread::scope(|s| {
            let leader = s.spawn(|| {
                reads.get(0, || {
                    made.fetch_add(1, Ordering::SeqCst);
                    inside.wait();
                    release.wait();
                    Snapshot::failed()
                })
            });
            inside.wait();
            // The leader is inside its read: this one must wait for it, not read again.
            let waiter = s.spawn(|| reads.get(0, || unreachable!("a second read while one is in flight")));
            // Give the waiter time to block; if it read on its own it would panic above.
            while lock(&reads.flights)[0].as_ref().map_or(0, Arc::strong_count) < 3 {
                std::thread::yield_now();
            }
            release.wait();
            let a = leader.join().unwrap().unwrap();
            let b = waiter.join().unwrap().unwrap();
            assert!(Arc::ptr_eq(&a, &b));
            // Nothing but the two scrapes holds the snapshot: it goes when they are done.
            assert_eq!(Arc::strong_count(&a), 2);
        });
        assert_eq!(made.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_finished_read_is_held_by_its_scrape_alone() {
        // Regression: the leader's guard was forgotten with its flight, and so with the
        // snapshot in it: every scrape leaked its copy of the socket table.
        let reads = SharedReads::new(Duration::from_secs(30));
        let s = reads.get(2, Snapshot::failed).unwrap();
        assert_eq!(Arc::strong_count(&s), 1);
    }

    #[test]
    fn a_panicking_read_releases_its_waiters_and_the_next_scrape_reads_again() {
        let reads = SharedReads::new(Duration::from_secs(30));
        let inside = Barrier::new(2);
        let release = Barrier::new(2);
        std::thread::scope(|s| {
            let leader = s.spawn(|| {
                reads.get(1, || {
                    inside.wait();
                    release.wait();
                    panic!("injected failure in the read")
                })
            });
            inside.wait();
            let waiter = s.spawn(|| reads.get(1, || unreachable!()));
            while lock(&reads.flights)[1].as_ref().map_or(0, Arc::strong_count) < 3 {
                std::thread::yield_now();
            }
            release.wait();
            assert!(leader.join().is_err(), "the leader panicked");
            assert_eq!(waiter.join().unwrap().unwrap_err(), SharedReadError::Abandoned);
        });
        // Not wedged: the slot is free and a new read happens.
        let next = reads.get(1, || Snapshot { ok: true, ..Snapshot::failed() }).unwrap();
        assert!(next.ok);
    }

    #[test]
    fn a_waiter_gives_up_after_its_limit() {
        let reads = SharedReads::new(Duration::from_millis(50));
        let inside = Barrier::new(2);
        let release = Barrier::new(2);
        std::thread::scope(|s| {
            let leader = s.spawn(|| {
                reads.get(0, || {
                    inside.wait();
                    release.wait();
                    Snapshot::failed()
                })
            });
            inside.wait();
            let got = reads.get(0, || unreachable!());
            // Let the leader go before asserting, so that a failure fails instead of hanging.
            release.wait();
            assert_eq!(got.unwrap_err(), SharedReadError::TimedOut(Duration::from_millis(50)));
            leader.join().unwrap().unwrap();
        });
    }

    #[test]
    fn state_totals_add_up_over_families_and_interfaces() {
        let table =
            crate::iface::InterfaceTableBuilder::default().address("192.0.2.1".parse().unwrap(), "eth0").build();
        let mut c = StateCounts::new(&table);
        c.add(Family::Ipv4, IfaceId::LOOPBACK, TcpState::Established);
        c.add(Family::Ipv6, IfaceId(3), TcpState::Established);
        c.add(Family::Ipv6, IfaceId::ANY, TcpState::Listen);
        assert_eq!(c.total(TcpState::Established), 2);
        assert_eq!(c.total(TcpState::Listen), 1);
        c.clear();
        assert_eq!(c.total(TcpState::Established), 0);
    }
}
