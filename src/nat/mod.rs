//! NAT resolution (`--collector.nat`): every read namespace's conntrack translations,
//! kept current by the conntrack event groups, asked by the families that label peers
//! (peers, lifecycle, quality) what NAT did to a socket's connection.
//!
//! One thread (`nat`) owns the kernel side: per namespace a socket joined to the NEW and
//! DESTROY groups, then a dump of the table, then the events queued meanwhile (so an
//! entry destroyed during the dump is removed, and one created is added: the table is
//! exact whatever the order). A receive buffer overrun loses events: that namespace is
//! dumped again into a fresh table, which then replaces the old one. Events, not a dump
//! per sample: a dump walks every tracked entry (100k entries, tens of milliseconds of
//! kernel time) while events cost in proportion to connections opened and closed.
//!
//! A socket is looked up in its own namespace's table, then in the exporter's: a pod's
//! connection to a Service is rewritten by kube-proxy's rules in the node's namespace,
//! not the pod's. Memory is bounded by `--collector.nat.max-entries` translated keys,
//! all namespaces together; what does not fit is counted, not kept.
//!
//! Cilium's kube-proxy replacement translates Services in its own BPF maps, not in
//! conntrack: it is detected (its pinned maps) and said, and [`Resolver`] is where a
//! reader of its maps would plug in.

pub mod table;

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use thiserror::Error;

use crate::classify::Direction;
use crate::model::Endpoint;
use crate::netns::{Found, Namespaces};
use crate::parse::conntrack::{self, DecodeError, Event};
pub use table::Translation;
use table::{Budget, Table};

/// Where Cilium pins its maps; its load-balancer maps' names start with `cilium_lb`.
pub const CILIUM_MAPS: &str = "/sys/fs/bpf/tc/globals";
/// How often the namespaces are listed again (`all` mode).
const RESCAN: Duration = Duration::from_secs(2);
/// Pause between drains: events wait in the receive buffer meanwhile.
const PAUSE: Duration = Duration::from_millis(20);
/// Receive buffer of an event socket: at ~200 bytes an event, 40k events of a burst.
const EVENT_BUFFER: usize = 8 << 20;
const RECV_BYTES: usize = 64 * 1024;

/// Why a namespace's conntrack could not be read.
#[derive(Debug, Error)]
pub enum NatError {
    /// A socket call failed.
    #[error("{what}: {source}")]
    Kernel {
        /// What was being done.
        what: &'static str,
        /// The system's answer.
        source: io::Error,
    },
    /// The kernel's answer could not be decoded.
    #[error("decoding the conntrack dump: {0}")]
    Decode(#[from] DecodeError),
}

impl NatError {
    /// Whether the kernel refused for want of `CAP_NET_ADMIN`.
    pub fn is_permission(&self) -> bool {
        match self {
            NatError::Kernel { source, .. } => source.raw_os_error() == Some(nix::errno::Errno::EPERM as i32),
            NatError::Decode(DecodeError::Kernel { errno }) => *errno == nix::errno::Errno::EPERM as i32,
            NatError::Decode(_) => false,
        }
    }
}

/// How the collector is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not started yet (or off).
    Starting,
    /// The tables are kept.
    Reading,
    /// The own namespace's conntrack is refused: no translation is known.
    Refused,
}

/// What asks "what did NAT do to this socket": conntrack's tables today; a reader of
/// Cilium's load-balancer maps would be a second one.
pub trait Resolver {
    /// The translation of a socket of namespace `netns` (0: the exporter's own).
    fn translate(&self, netns: u64, direction: Direction, local: &Endpoint, remote: &Endpoint) -> Translation;
}

/// The collector's state, shared by its thread and the families.
pub struct Nat {
    tables: RwLock<HashMap<u64, Table>>,
    budget: std::sync::Mutex<Budget>,
    own: u64,
    status: AtomicU8,
    /// Whether the last pass had a namespace whose conntrack was refused or failed.
    partial: AtomicBool,
    /// Translated keys held (gauge).
    pub entries: AtomicU64,
    /// Translations not kept (counter).
    pub dropped: AtomicU64,
    /// Dumps made again after lost events.
    pub resyncs: AtomicU64,
    /// Namespaces whose conntrack is read.
    pub namespaces: AtomicU64,
    /// Whether Cilium's load-balancer maps were found.
    pub cilium: AtomicBool,
}

impl Nat {
    /// A collector keeping at most `max_entries` translated keys.
    pub fn new(max_entries: usize) -> Nat {
        let own = std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
        Nat {
            tables: RwLock::new(HashMap::new()),
            budget: std::sync::Mutex::new(Budget::new(max_entries)),
            own,
            status: AtomicU8::new(0),
            partial: AtomicBool::new(false),
            entries: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            namespaces: AtomicU64::new(0),
            cilium: AtomicBool::new(false),
        }
    }

    /// The collector's status.
    pub fn status(&self) -> Status {
        match self.status.load(Ordering::Relaxed) {
            1 => Status::Reading,
            2 => Status::Refused,
            _ => Status::Starting,
        }
    }

    fn set_status(&self, s: Status) {
        self.status.store(
            match s {
                Status::Starting => 0,
                Status::Reading => 1,
                Status::Refused => 2,
            },
            Ordering::Relaxed,
        );
    }

    /// Whether the families carry the NAT labels: the own namespace's table is kept.
    pub fn labels(&self) -> bool {
        self.status() == Status::Reading
    }

    /// The collector's success: every namespace's table kept.
    pub fn success(&self) -> bool {
        self.labels() && !self.partial.load(Ordering::Relaxed)
    }

    /// A reader of the tables, held while a family looks up its sockets (the thread
    /// waits meanwhile: lookups are a hash probe each).
    pub fn reader(&self) -> Tables<'_> {
        Tables { tables: self.tables.read().unwrap_or_else(|e| e.into_inner()), own: self.own }
    }

    /// Installs `events` (from one drain) into namespace `netns`'s table.
    fn apply(&self, netns: u64, events: &[Event], now: Instant) {
        if events.is_empty() {
            return;
        }
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let table = tables.entry(netns).or_default();
        for e in events {
            table.apply(*e, now, &mut budget);
        }
    }

    /// Replaces namespace `netns`'s table with one built from a dump (`over`: translated
    /// entries the dump left out for want of room).
    fn replace(&self, netns: u64, events: &[Event], over: u64, now: Instant) {
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        budget.dropped += over;
        if let Some(old) = tables.remove(&netns) {
            budget.held = budget.held.saturating_sub(old.len());
        }
        let mut table = Table::default();
        for e in events {
            table.apply(*e, now, &mut budget);
        }
        tables.insert(netns, table);
    }

    fn forget(&self, netns: u64) {
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = tables.remove(&netns) {
            let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
            budget.held = budget.held.saturating_sub(old.len());
        }
    }

    fn expire(&self, now: Instant) {
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        for t in tables.values_mut() {
            t.expire(now, &mut budget);
        }
        self.entries.store(budget.held as u64, Ordering::Relaxed);
        self.dropped.store(budget.dropped, Ordering::Relaxed);
    }
}

/// The tables, read-locked.
pub struct Tables<'a> {
    tables: RwLockReadGuard<'a, HashMap<u64, Table>>,
    own: u64,
}

impl Resolver for Tables<'_> {
    fn translate(&self, netns: u64, direction: Direction, local: &Endpoint, remote: &Endpoint) -> Translation {
        let netns = if netns == 0 { self.own } else { netns };
        let found = self.tables.get(&netns).map(|t| t.translate(direction, local, remote)).unwrap_or_default();
        if found != Translation::None || netns == self.own {
            return found;
        }
        self.tables.get(&self.own).map(|t| t.translate(direction, local, remote)).unwrap_or_default()
    }
}

/// A namespace's sockets: events, and dumps.
struct Watch {
    netns: u64,
    name: String,
    events: Socket,
    dumps: Socket,
    seq: u32,
}

/// Opens a namespace's sockets in the calling thread's namespace and joins the groups.
fn open_here() -> Result<(Socket, Socket), NatError> {
    let kernel = |what| move |source| NatError::Kernel { what, source };
    let mut events = Socket::new(NETLINK_NETFILTER).map_err(kernel("opening a NETLINK_NETFILTER socket"))?;
    if setsockopt(&events.as_fd(), sockopt::RcvBufForce, &EVENT_BUFFER).is_err() {
        let _ = setsockopt(&events.as_fd(), sockopt::RcvBuf, &EVENT_BUFFER);
    }
    events.bind(&SocketAddr::new(0, 0)).map_err(kernel("binding the conntrack event socket"))?;
    for g in [conntrack::GROUP_NEW, conntrack::GROUP_DESTROY] {
        events.add_membership(g).map_err(kernel("joining the conntrack event groups"))?;
    }
    events.set_non_blocking(true).map_err(kernel("making the conntrack event socket non-blocking"))?;
    let mut dumps = Socket::new(NETLINK_NETFILTER).map_err(kernel("opening a NETLINK_NETFILTER socket"))?;
    dumps.bind_auto().map_err(kernel("binding the conntrack dump socket"))?;
    dumps.connect(&SocketAddr::new(0, 0)).map_err(kernel("connecting the conntrack dump socket"))?;
    Ok((events, dumps))
}

impl Watch {
    /// Dumps the namespace's table, keeping the translated entries only and at most
    /// `room` of them (the rest is counted in the second value): a dump of a million
    /// untranslated entries holds none of them.
    fn dump(&mut self, buf: &mut Vec<u8>, room: usize) -> Result<(Vec<Event>, u64), NatError> {
        self.seq = self.seq.wrapping_add(1);
        self.dumps
            .send(&conntrack::dump_request(self.seq), 0)
            .map_err(|source| NatError::Kernel { what: "requesting a conntrack dump", source })?;
        let (mut out, mut over) = (Vec::new(), 0u64);
        loop {
            buf.clear();
            self.dumps
                .recv(buf, 0)
                .map_err(|source| NatError::Kernel { what: "receiving the conntrack dump", source })?;
            let batch = conntrack::decode_batch(buf, |e| match e {
                Event::Exists(f) if f.translated() && out.len() < room => out.push(e),
                Event::Exists(f) if f.translated() => over += 1,
                _ => {}
            })?;
            if batch.done {
                return Ok((out, over));
            }
        }
    }

    /// Reads the queued events. `Err` when the kernel dropped some (a dump is due).
    fn drain(&mut self, buf: &mut Vec<u8>, out: &mut Vec<Event>) -> Result<(), ()> {
        loop {
            buf.clear();
            match self.events.recv(buf, 0) {
                Ok(_) => {
                    if let Err(e) = conntrack::decode_batch(buf, |e| out.push(e)) {
                        log::debug!("nat collector: undecodable conntrack event in {} ({e})", self.name);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => return Err(()),
                Err(e) => {
                    log::warn!("nat collector: receiving conntrack events in {} failed ({e})", self.name);
                    return Ok(());
                }
            }
        }
    }

    /// Seeds or re-seeds the namespace's table: the events queued before the dump are
    /// read and dropped (the dump has what they say), those after apply on top.
    fn seed(&mut self, state: &Nat, buf: &mut Vec<u8>) -> Result<(), NatError> {
        let mut stale = Vec::new();
        let _ = self.drain(buf, &mut stale);
        let room = state.budget.lock().unwrap_or_else(|e| e.into_inner()).max;
        let (entries, over) = self.dump(buf, room)?;
        state.replace(self.netns, &entries, over, Instant::now());
        Ok(())
    }
}

/// Whether Cilium's load-balancer maps are pinned under `dir`.
pub fn cilium_maps(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("cilium_lb"))))
        .unwrap_or(false)
}

/// Starts the `nat` thread. The own namespace's conntrack is opened and dumped first,
/// here: a refusal (no `CAP_NET_ADMIN`) is logged once and leaves the collector
/// failed, the families unlabelled.
pub fn start(state: Arc<Nat>, namespaces: Option<Arc<Namespaces>>) {
    if cilium_maps(Path::new(CILIUM_MAPS)) {
        state.cilium.store(true, Ordering::Relaxed);
        log::warn!(
            "nat collector: Cilium's load-balancer maps are pinned under {CILIUM_MAPS}: with Cilium's kube-proxy replacement, Services are translated in its BPF maps, not conntrack, and their backends are not resolved"
        );
    }
    let mut buf = Vec::with_capacity(RECV_BYTES);
    let own = match open_here() {
        Ok((events, dumps)) => {
            let mut w =
                Watch { netns: state.own, name: "the exporter's network namespace".into(), events, dumps, seq: 0 };
            w.seed(&state, &mut buf).map(|_| w)
        }
        Err(e) => Err(e),
    };
    let own = match own {
        Ok(w) => w,
        Err(e) => {
            state.set_status(Status::Refused);
            if e.is_permission() {
                log::error!("nat collector: conntrack refused ({e}): it needs CAP_NET_ADMIN; NAT is not resolved and the families are served without its labels");
            } else {
                log::error!("nat collector: cannot read conntrack ({e}); NAT is not resolved and the families are served without its labels");
            }
            return;
        }
    };
    state.set_status(Status::Reading);
    state.expire(Instant::now());
    let spawned = std::thread::Builder::new().name("nat".into()).spawn(move || run(&state, own, namespaces, buf));
    if let Err(e) = spawned {
        log::error!("nat collector: cannot start its thread ({e})");
    }
}

type Opening = (Found, Receiver<Result<(Socket, Socket), NatError>>);

fn run(state: &Nat, own: Watch, namespaces: Option<Arc<Namespaces>>, mut buf: Vec<u8>) {
    let mut watches = vec![own];
    let mut opening: Vec<Opening> = Vec::new();
    let mut refused: HashMap<u64, ()> = HashMap::new();
    let mut rescanned: Option<Instant> = None;
    let mut warned = false;
    let mut events = Vec::new();
    loop {
        if let Some(ns) = namespaces.as_deref() {
            if rescanned.is_none_or(|t| t.elapsed() >= RESCAN) {
                rescanned = Some(Instant::now());
                let found = ns.discover();
                let live: HashMap<u64, &Found> = found.iter().filter(|f| !f.own).map(|f| (f.inode, f)).collect();
                watches.retain(|w| {
                    let keep = w.netns == state.own || live.contains_key(&w.netns);
                    if !keep {
                        state.forget(w.netns);
                    }
                    keep
                });
                opening.retain(|(f, _)| live.contains_key(&f.inode));
                refused.retain(|n, _| live.contains_key(n));
                for f in live.values() {
                    if watches.iter().any(|w| w.netns == f.inode)
                        || opening.iter().any(|(o, _)| o.inode == f.inode)
                        || refused.contains_key(&f.inode)
                    {
                        continue;
                    }
                    match ns.run(f, open_here) {
                        Ok(rx) => opening.push(((*f).clone(), rx)),
                        Err(e) => {
                            if !e.is_gone() {
                                refused.insert(f.inode, ());
                            }
                        }
                    }
                }
            }
            let mut i = 0;
            while i < opening.len() {
                match opening[i].1.try_recv() {
                    Err(TryRecvError::Empty) => i += 1,
                    Ok(opened) => {
                        let (found, _) = opening.swap_remove(i);
                        let seeded = opened.and_then(|(events, dumps)| {
                            let mut w = Watch { netns: found.inode, name: found.name.clone(), events, dumps, seq: 0 };
                            w.seed(state, &mut buf).map(|_| w)
                        });
                        match seeded {
                            Ok(w) => watches.push(w),
                            Err(e) => {
                                refused.insert(found.inode, ());
                                if !warned {
                                    warned = true;
                                    log::warn!(
                                        "nat collector: cannot read conntrack in network namespace {} ({e}); its sockets are looked up in the exporter's namespace only",
                                        found.name
                                    );
                                }
                            }
                        }
                    }
                    Err(TryRecvError::Disconnected) => {
                        opening.swap_remove(i);
                    }
                }
            }
            state.partial.store(!refused.is_empty(), Ordering::Relaxed);
        }
        let now = Instant::now();
        for w in &mut watches {
            events.clear();
            let lost = w.drain(&mut buf, &mut events).is_err();
            state.apply(w.netns, &events, now);
            if lost {
                state.resyncs.fetch_add(1, Ordering::Relaxed);
                log::warn!("nat collector: the kernel dropped conntrack events in {} (receive buffer overrun); dumping its table again", w.name);
                if let Err(e) = w.seed(state, &mut buf) {
                    log::warn!("nat collector: dumping conntrack in {} again failed ({e})", w.name);
                }
            }
        }
        state.expire(now);
        state.namespaces.store(watches.len() as u64, Ordering::Relaxed);
        std::thread::sleep(PAUSE);
    }
}
