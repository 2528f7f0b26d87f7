//! Source selection: which source a read uses (netlink or the procfs files), the fallback
//! from one to the other, and the read of interfaces and sockets into a [`Snapshot`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sock_diag::SockDiag;
use super::socket_table::{SocketTable, TableChoice, TableRead};
use super::{interfaces, procfs, sysctl, SourceError};
use crate::classify::PortRange;
use crate::iface::InterfaceTable;
use crate::logging::RateLimit;
use crate::model::{Connection, Family, TcpState};
use crate::netns::{NamespaceMode, Namespaces};
use crate::owners::{OwnerId, Owners};
use crate::snapshot::{ListenerRecord, NsLabels, SeriesKey, Snapshot, Space, StateCounts};

/// Where sockets are read from (`--collector.connections.source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// Netlink when `--path.procfs` shows this process's own network namespace and the
    /// kernel allows it; the procfs files otherwise, and whenever a netlink read fails.
    Auto,
    /// Always the NETLINK_SOCK_DIAG dump of the exporter's network namespace.
    Netlink,
    /// Always `<procfs>/net/tcp{,6}`.
    Procfs,
}

/// Kinds of warnings a read can raise; each is logged at most once a minute.
#[derive(Clone, Copy)]
enum Warning {
    Interfaces = 0,
    Sockets = 1,
    Malformed = 2,
    Netlink = 3,
    Namespaces = 4,
    PortRange = 5,
    Table = 6,
}

/// Reads snapshots from the chosen source, and keeps what persists between reads: the
/// fallback decision, parse error counts, the last socket count.
pub struct Reader {
    procfs: PathBuf,
    choice: SourceChoice,
    /// `procfs` is this process's own network namespace.
    own_namespace: bool,
    /// Netlink was refused (at open or later): auto mode reads the files from now on.
    netlink_refused: AtomicBool,
    parse_errors: [AtomicU64; 2],
    last_socket_count: AtomicUsize,
    /// One limiter per kind of warning, so that a steady one cannot hide a new one.
    warn_limits: [RateLimit; 7],
    /// Every network namespace's threads, in `--collector.namespaces=all` mode (shared
    /// with the lifecycle collector).
    namespaces: Option<Arc<Namespaces>>,
    /// The socket owner walk, with `--collector.connections.owner` (shared with the
    /// lifecycle collector).
    owners: Option<Arc<Owners>>,
    /// The eBPF walk of the host's TCP table, in `all` mode where it loaded.
    table: Option<SocketTable>,
    /// Why `all` mode reads with dumps, when it does from the start.
    table_note: Option<String>,
    /// The last `all`-mode read came from the walk (true before the first).
    table_in_use: AtomicBool,
    /// Reads that fell back to the dumps, by [`FALLBACK_REASONS`].
    table_fallbacks: [AtomicU64; 2],
}

/// Reasons of `conn_exporter_socket_table_fallbacks_total`, in the order of
/// [`Reader::table_fallbacks`].
pub const FALLBACK_REASONS: [&str; 2] = ["chain", "error"];

/// What a namespace's thread reads beside its sockets when they come from the table.
struct Facts {
    table: InterfaceTable,
    port_range: PortRange,
    shares_host_tcp_table: Option<bool>,
}

/// Reads the namespace the calling thread is in: its interfaces and local port range.
fn namespace_facts(procfs: &Path) -> Result<Facts, SourceError> {
    Ok(Facts {
        table: interfaces::read_live()?,
        port_range: sysctl::port_range(procfs)?,
        shares_host_tcp_table: sysctl::shares_host_tcp_table(procfs),
    })
}

/// A namespace's part from the sockets the table gave for it.
fn space_from_table(
    facts: Facts,
    sockets: Vec<Connection>,
    want_keys: bool,
    sort: bool,
    owners: bool,
) -> (Space, Option<Inodes>) {
    let mut fill = Fill::new(&facts.table, owners, want_keys);
    if want_keys {
        fill.keys.reserve(sockets.len());
    }
    for c in sockets {
        fill.add(c);
    }
    let (counts, keys, listeners, inodes) = fill.finish(sort);
    let labels = NsLabels { netns: String::new(), container_id: String::new(), pod_uid: String::new() };
    (
        Space {
            labels,
            table: facts.table,
            keys,
            listeners,
            counts,
            queue_limits: true,
            port_range: facts.port_range,
            netns: 0,
            shares_host_tcp_table: facts.shares_host_tcp_table,
        },
        inodes,
    )
}

/// The socket inodes of one part of a read (the own namespace, or another one), kept
/// with `--collector.connections.owner` to look their owners up once the read is done.
#[derive(Default)]
struct Inodes {
    /// Every socket's, in read order: with keys wanted, key `i` is socket `i`.
    all: Vec<u32>,
    /// Each listener's place in `all`.
    listeners: Vec<u32>,
}

impl Inodes {
    /// Gives the part its owners (`ids` in the order of `all`), then sorts it as
    /// [`Fill::finish`] would have.
    fn apply(&self, ids: &[OwnerId], keys: &mut [SeriesKey], listeners: &mut [ListenerRecord], sort: bool) {
        for (k, id) in keys.iter_mut().zip(ids) {
            k.owner = *id;
        }
        for (l, &at) in listeners.iter_mut().zip(&self.listeners) {
            l.owner = ids.get(at as usize).copied().unwrap_or_default();
        }
        if sort {
            keys.sort_unstable();
        }
        listeners.sort_unstable();
    }
}

/// What a read fills in, so that a fallback can start it over.
struct Fill<'a> {
    table: &'a InterfaceTable,
    counts: StateCounts,
    keys: Vec<SeriesKey>,
    listeners: Vec<ListenerRecord>,
    want_keys: bool,
    /// With owners: the inodes, the keys and listeners then left unsorted until the
    /// owners are known.
    inodes: Option<Inodes>,
}

impl<'a> Fill<'a> {
    fn new(table: &'a InterfaceTable, owners: bool, want_keys: bool) -> Fill<'a> {
        Fill {
            table,
            counts: StateCounts::new(table),
            keys: Vec::new(),
            listeners: Vec::new(),
            want_keys,
            inodes: owners.then(Inodes::default),
        }
    }

    /// The counts, keys (sorted when `sort`) and sorted listeners; with owners, the
    /// inodes, and keys and listeners unsorted ([`Inodes::apply`] sorts them).
    fn finish(self, sort: bool) -> (StateCounts, Vec<SeriesKey>, Vec<ListenerRecord>, Option<Inodes>) {
        let Fill { counts, mut keys, mut listeners, inodes, .. } = self;
        if inodes.is_none() {
            if sort {
                keys.sort_unstable();
            }
            listeners.sort_unstable();
        }
        (counts, keys, listeners, inodes)
    }

    fn add(&mut self, c: Connection) {
        let iface = self.table.resolve(&c.local, c.if_index);
        // Set once the read is done, from the inodes.
        let owner = OwnerId::default();
        if let Some(inodes) = &mut self.inodes {
            if c.state == TcpState::Listen {
                inodes.listeners.push(inodes.all.len() as u32);
            }
            inodes.all.push(c.inode);
        }
        self.counts.add(c.family(), iface, c.state);
        if c.state == TcpState::Listen {
            self.listeners.push(ListenerRecord {
                local: c.local,
                iface,
                owner,
                queue_length: c.recv_queue,
                queue_limit: c.send_queue,
            });
        }
        if self.want_keys {
            self.keys.push(SeriesKey { local: c.local, remote: c.remote, state: c.state, iface, owner });
        }
    }

    fn clear(&mut self) {
        self.counts.clear();
        self.keys.clear();
        self.listeners.clear();
        if let Some(inodes) = &mut self.inodes {
            *inodes = Inodes::default();
        }
    }
}

/// Reads the namespace the calling thread is in, over netlink only (a namespace's
/// thread has no procfs of its own to fall back to). The labels are the caller's.
fn dump_namespace(
    procfs: &Path,
    want_keys: bool,
    sort: bool,
    owners: bool,
) -> Result<(Space, Option<Inodes>), SourceError> {
    let table = interfaces::read_live()?;
    let port_range = sysctl::port_range(procfs)?;
    let mut fill = Fill::new(&table, owners, want_keys);
    let diag = SockDiag::open()?;
    for result in diag.dump_all(&mut |c| fill.add(c)) {
        result?;
    }
    let (counts, keys, listeners, inodes) = fill.finish(sort);
    let labels = NsLabels { netns: String::new(), container_id: String::new(), pod_uid: String::new() };
    let shares_host_tcp_table = sysctl::shares_host_tcp_table(procfs);
    Ok((
        Space {
            labels,
            table,
            keys,
            listeners,
            counts,
            queue_limits: true,
            port_range,
            netns: 0,
            shares_host_tcp_table,
        },
        inodes,
    ))
}

/// Errors that mean the kernel or a sandbox will not serve netlink to this process, as
/// opposed to a dump that failed once.
fn is_refusal(e: &SourceError) -> bool {
    let SourceError::Kernel { source, .. } = e else { return false };
    matches!(
        source.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(
            nix::errno::Errno::EPERM
                | nix::errno::Errno::EACCES
                | nix::errno::Errno::EAFNOSUPPORT
                | nix::errno::Errno::EPROTONOSUPPORT
                | nix::errno::Errno::ENOSYS
        )
    )
}

/// An `all`-mode snapshot: the namespaces' parts, nothing at its own level.
fn all_snapshot(spaces: Vec<Space>, ok: bool, start: Instant) -> Snapshot {
    Snapshot {
        table: InterfaceTable::default(),
        keys: Vec::new(),
        listeners: Vec::new(),
        counts: StateCounts::new(&InterfaceTable::default()),
        queue_limits: false,
        port_range: PortRange::default(),
        ok,
        read_time: start.elapsed(),
        spaces,
        owners: None,
    }
}

impl Reader {
    /// A reader of `procfs` with the chosen source.
    pub fn new(procfs: PathBuf, choice: SourceChoice) -> Reader {
        let own_namespace = super::is_own_namespace(&procfs);
        Reader {
            procfs,
            choice,
            own_namespace,
            netlink_refused: AtomicBool::new(false),
            parse_errors: [AtomicU64::new(0), AtomicU64::new(0)],
            last_socket_count: AtomicUsize::new(0),
            warn_limits: std::array::from_fn(|_| RateLimit::new(Duration::from_secs(60))),
            namespaces: None,
            owners: None,
            table: None,
            table_note: None,
            table_in_use: AtomicBool::new(false),
            table_fallbacks: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// In `all` mode, reads every namespace with the eBPF walk of the host's TCP table
    /// (`choice` ebpf or auto) where it loads.
    pub fn with_socket_table(mut self, choice: TableChoice) -> Reader {
        if self.namespaces.is_none() {
            return self;
        }
        if choice == TableChoice::Netlink {
            self.table_note = Some("--collector.namespaces.source=netlink".to_owned());
            return self;
        }
        match SocketTable::load() {
            Ok(t) => {
                self.table = Some(t);
                self.table_in_use.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                if choice == TableChoice::Ebpf {
                    log::error!("--collector.namespaces.source=ebpf: the eBPF socket walk could not be loaded, reading with a dump per namespace: {e}");
                }
                self.table_note = Some(format!("the eBPF socket walk could not be loaded: {e}"));
            }
        }
        self
    }

    /// How `all` mode reads sockets, for the start-up log: the table, or the dumps and why.
    pub fn all_mode_reads(&self) -> String {
        match (&self.table, &self.table_note) {
            (Some(_), _) => "by an eBPF walk of the host's TCP hash table: one pass for every namespace that shares it, a dump for each namespace with a table of its own".to_owned(),
            (None, note) => format!(
                "with a sock_diag dump per namespace ({}); one that shares the host's TCP table walks every socket of the machine (conn_exporter_namespaces_sharing_tcp_table counts them; net.ipv4.tcp_child_ehash_entries gives new namespaces their own)",
                note.as_deref().unwrap_or("")
            ),
        }
    }

    /// What the eBPF walk found last and has done, when it is loaded.
    pub fn table_state(&self) -> Option<crate::source::socket_table::TableState> {
        self.table.as_ref().map(|t| t.state())
    }

    /// Reads that fell back from the table to the dumps, by reason ([`FALLBACK_REASONS`]).
    pub fn table_fallbacks(&self) -> [u64; 2] {
        [self.table_fallbacks[0].load(Ordering::Relaxed), self.table_fallbacks[1].load(Ordering::Relaxed)]
    }

    /// Labels sockets with their owning process (`--collector.connections.owner`), the
    /// descriptor walk of one read bounded by `budget`.
    pub fn with_owners(mut self, on: bool, budget: Duration) -> Reader {
        if on {
            let missing = crate::owners::missing_capabilities(&self.procfs);
            if !missing.is_empty() {
                log::warn!(
                    "--collector.connections.owner: missing {}; sockets of other users' processes get process=\"\"",
                    missing.join(" and ")
                );
            }
        }
        self.owners = on.then(|| Arc::new(Owners::new(self.procfs.clone(), budget)));
        self
    }

    /// Reads every network namespace (`all`) or the own one only (`host`). In `all` mode
    /// a missing capability is said once here; the reads then serve the namespaces they
    /// can enter and report failure.
    pub fn with_namespaces(mut self, mode: NamespaceMode) -> Reader {
        if mode == NamespaceMode::All {
            let missing = crate::netns::missing_capabilities(&self.procfs);
            if !missing.is_empty() {
                log::error!(
                    "--collector.namespaces=all: missing {} (setns needs CAP_SYS_ADMIN; other users' /proc/<pid>/ns needs CAP_SYS_PTRACE); namespaces that cannot be entered are left out and the collectors report success 0",
                    missing.join(" and ")
                );
            }
            self.namespaces = Some(Arc::new(Namespaces::new(self.procfs.clone(), PathBuf::from("/run/netns"))));
        }
        self
    }

    /// The namespaces' threads (`all` mode), for the lifecycle collector.
    pub fn namespaces(&self) -> Option<Arc<Namespaces>> {
        self.namespaces.clone()
    }

    /// The owner walk (`--collector.connections.owner`), for the lifecycle collector.
    pub fn owners(&self) -> Option<Arc<Owners>> {
        self.owners.clone()
    }

    /// The source the next read will use: `ebpf` (the eBPF walk, `all` mode, as the last
    /// read did), `netlink` or `procfs`.
    pub fn source_name(&self) -> &'static str {
        if self.table.is_some() && self.table_in_use.load(Ordering::Relaxed) {
            "ebpf"
        } else if self.uses_netlink() {
            "netlink"
        } else {
            "procfs"
        }
    }

    /// Malformed lines skipped so far in a family's file.
    pub fn parse_errors(&self, family: Family) -> u64 {
        self.parse_errors[family.index()].load(Ordering::Relaxed)
    }

    fn uses_netlink(&self) -> bool {
        match self.choice {
            SourceChoice::Netlink => true,
            SourceChoice::Procfs => false,
            SourceChoice::Auto => self.own_namespace && !self.netlink_refused.load(Ordering::Relaxed),
        }
    }

    fn warn(&self, kind: Warning, message: std::fmt::Arguments<'_>) {
        if self.warn_limits[kind as usize].allow() {
            log::warn!("{message}");
        }
    }

    fn read_interfaces(&self) -> (InterfaceTable, bool) {
        let live = self.own_namespace && !self.netlink_refused.load(Ordering::Relaxed);
        let result = match interfaces::read(&self.procfs, live) {
            Err(e) if live => {
                // getifaddrs asks over netlink too: where netlink is refused, the files
                // still name every interface.
                self.warn(
                    Warning::Interfaces,
                    format_args!(
                        "couldn't list interfaces ({e}); reading {}/net/route and if_inet6",
                        self.procfs.display()
                    ),
                );
                interfaces::read_files(&self.procfs)
            }
            other => other,
        };
        match result {
            Ok(t) => (t, true),
            Err(e) => {
                self.warn(
                    Warning::Interfaces,
                    format_args!("couldn't read interfaces, labelling by address class only: {e}"),
                );
                (InterfaceTable::default(), false)
            }
        }
    }

    /// Reads interfaces and sockets: of the own namespace, or in `all` mode of every
    /// namespace, each on its own thread while the own one is read here.
    pub fn read(&self, want_keys: bool) -> Snapshot {
        self.read_with(want_keys, true)
    }

    /// [`read`](Self::read), sorting the keys only when `sort` (the per-connection family
    /// merges equal keys by sorting; the peers family counts them in a map and needs no
    /// order, which saves a sort of every socket on a peers-only scrape).
    pub fn read_with(&self, want_keys: bool, sort: bool) -> Snapshot {
        let start = Instant::now();
        let owners = self.owners.is_some();
        let (mut snap, inodes) = match &self.namespaces {
            None => {
                let (snap, inodes) = self.read_own(want_keys, sort, owners);
                (snap, vec![inodes])
            }
            Some(namespaces) => self.read_all(namespaces, want_keys, sort, owners),
        };
        if let Some(o) = &self.owners {
            // One lookup for the sockets of every namespace: inodes are the host's.
            let inodes: Vec<Inodes> = inodes.into_iter().map(Option::unwrap_or_default).collect();
            let all: Vec<u32> = inodes.iter().flat_map(|i| i.all.iter().copied()).collect();
            let (table, ids) = o.resolve(&all);
            if snap.spaces.is_empty() {
                if let Some(i) = inodes.first() {
                    i.apply(&ids, &mut snap.keys, &mut snap.listeners, sort);
                }
            } else {
                let mut at = 0;
                for (space, i) in snap.spaces.iter_mut().zip(&inodes) {
                    i.apply(&ids[at..at + i.all.len()], &mut space.keys, &mut space.listeners, sort);
                    at += i.all.len();
                }
            }
            snap.owners = Some(Arc::new(table));
        }
        snap.read_time = start.elapsed();
        snap
    }

    /// Every namespace's part, and with owners the inodes of each (in the order of the
    /// snapshot's spaces).
    fn read_all(
        &self,
        namespaces: &Namespaces,
        want_keys: bool,
        sort: bool,
        owners: bool,
    ) -> (Snapshot, Vec<Option<Inodes>>) {
        let start = Instant::now();
        let found = namespaces.discover();
        if let Some(table) = &self.table {
            match table.read() {
                Ok(read) => {
                    self.table_in_use.store(true, Ordering::Relaxed);
                    return self.read_all_from_table(namespaces, &found, read, start, (want_keys, sort, owners));
                }
                Err(e) => {
                    let at = usize::from(e.reason() != FALLBACK_REASONS[0]);
                    self.table_fallbacks[at].fetch_add(1, Ordering::Relaxed);
                    self.table_in_use.store(false, Ordering::Relaxed);
                    self.warn(Warning::Table, format_args!("{e}; this scrape reads with a dump per namespace"));
                }
            }
        }
        let pending: Vec<_> = found
            .iter()
            .filter(|f| !f.own)
            .map(|f| {
                let procfs = self.procfs.clone();
                (f, namespaces.run(f, move || dump_namespace(&procfs, want_keys, sort, owners)))
            })
            .collect();
        let (own, own_inodes) = self.read_own(want_keys, sort, owners);
        let mut all_inodes = vec![own_inodes];
        let mut ok = own.ok;
        let mut spaces = Vec::with_capacity(found.len().max(1));
        spaces.push(Space {
            labels: NsLabels { netns: "host".to_owned(), container_id: String::new(), pod_uid: String::new() },
            table: own.table,
            keys: own.keys,
            listeners: own.listeners,
            counts: own.counts,
            queue_limits: own.queue_limits,
            port_range: own.port_range,
            netns: 0,
            shares_host_tcp_table: None,
        });
        for (f, job) in pending {
            let result =
                job.map_err(|e| (e.missing_capability().is_some() || !e.is_gone(), e.to_string())).and_then(|rx| {
                    rx.recv()
                        .map_err(|_| (true, format!("the thread of network namespace {} stopped", f.name)))
                        .and_then(|r| r.map_err(|e| (true, e.to_string())))
                });
            ok &= self.add_space(f, result, &mut spaces, &mut all_inodes);
        }
        (all_snapshot(spaces, ok, start), all_inodes)
    }

    /// Adds a namespace's read to an `all`-mode snapshot's parts; false when it failed
    /// (logged). A namespace that went between listing and entering is no failure.
    fn add_space(
        &self,
        f: &crate::netns::Found,
        result: Result<(Space, Option<Inodes>), (bool, String)>,
        spaces: &mut Vec<Space>,
        all_inodes: &mut Vec<Option<Inodes>>,
    ) -> bool {
        match result {
            Ok((space, inodes)) => {
                let labels = NsLabels {
                    netns: f.name.clone(),
                    container_id: f.container_id.clone(),
                    pod_uid: f.pod_uid.clone(),
                };
                spaces.push(Space { labels, netns: f.inode, ..space });
                all_inodes.push(inodes);
                true
            }
            Err((failed, e)) => {
                if failed {
                    self.warn(Warning::Namespaces, format_args!("couldn't read network namespace {}: {e}", f.name));
                }
                !failed
            }
        }
    }

    /// [`read_all`](Self::read_all) from a read of the eBPF walk: each namespace's thread
    /// reads its interfaces, port range and whether it shares the host's TCP table; one
    /// with a table of its own, out of the walk's reach, is then read with its dump.
    fn read_all_from_table(
        &self,
        namespaces: &Namespaces,
        found: &[crate::netns::Found],
        mut read: TableRead,
        start: Instant,
        (want_keys, sort, owners): (bool, bool, bool),
    ) -> (Snapshot, Vec<Option<Inodes>>) {
        let pending: Vec<_> = found
            .iter()
            .filter(|f| !f.own)
            .map(|f| {
                let procfs = self.procfs.clone();
                (f, namespaces.run(f, move || namespace_facts(&procfs)))
            })
            .collect();
        // The own namespace, here.
        let (table, table_ok) = self.read_interfaces();
        let port_range = sysctl::port_range_or_default(&self.procfs, |e| {
            self.warn(
                Warning::PortRange,
                format_args!("couldn't read the local port range, deciding direction with Linux's default: {e}"),
            )
        });
        let own_inode = found.iter().find(|f| f.own).map(|f| f.inode);
        let own_sockets = own_inode.and_then(|i| read.sockets.remove(&i)).unwrap_or_default();
        let facts = Facts { table, port_range, shares_host_tcp_table: None };
        let (own, own_inodes) = space_from_table(facts, own_sockets, want_keys, sort, owners);
        let mut ok = table_ok;
        let mut spaces = Vec::with_capacity(found.len().max(1));
        let mut all_inodes = vec![own_inodes];
        spaces.push(Space {
            labels: NsLabels { netns: "host".to_owned(), container_id: String::new(), pod_uid: String::new() },
            shares_host_tcp_table: None,
            ..own
        });
        for (f, job) in pending {
            let stopped = || (true, format!("the thread of network namespace {} stopped", f.name));
            let entered =
                |e: crate::netns::NetnsError| (e.missing_capability().is_some() || !e.is_gone(), e.to_string());
            let result = job
                .map_err(entered)
                .and_then(|rx| rx.recv().map_err(|_| stopped()).and_then(|r| r.map_err(|e| (true, e.to_string()))));
            let result = match result {
                // Its own table: only its listeners were in the walk (the listening hash
                // is shared); its dump walks its own table only.
                Ok(facts) if facts.shares_host_tcp_table == Some(false) => {
                    read.sockets.remove(&f.inode);
                    let procfs = self.procfs.clone();
                    namespaces
                        .run(f, move || dump_namespace(&procfs, want_keys, sort, owners))
                        .map_err(entered)
                        .and_then(|rx| {
                            rx.recv()
                                .map_err(|_| stopped())
                                .and_then(|r| r.map_err(|e| (true, e.to_string())))
                                .map(|(space, inodes)| (Space { shares_host_tcp_table: Some(false), ..space }, inodes))
                        })
                }
                Ok(facts) => {
                    let sockets = read.sockets.remove(&f.inode).unwrap_or_default();
                    Ok(space_from_table(facts, sockets, want_keys, sort, owners))
                }
                Err(e) => Err(e),
            };
            ok &= self.add_space(f, result, &mut spaces, &mut all_inodes);
        }
        (all_snapshot(spaces, ok, start), all_inodes)
    }

    /// Reads interfaces and sockets. Per socket: resolve the interface, count, keep
    /// listeners, and (when `want_keys`) a 44-byte key; nothing else is allocated.
    fn read_own(&self, want_keys: bool, sort: bool, owners: bool) -> (Snapshot, Option<Inodes>) {
        let start = Instant::now();
        let (table, table_ok) = self.read_interfaces();
        let mut fill = Fill::new(&table, owners, want_keys);
        if want_keys {
            fill.keys.reserve(self.last_socket_count.load(Ordering::Relaxed) + 64);
        }
        if let Some(inodes) = &mut fill.inodes {
            inodes.all.reserve(self.last_socket_count.load(Ordering::Relaxed) + 64);
        }
        let (sockets_ok, queue_limits) = self.read_sockets(&mut fill);
        let port_range = sysctl::port_range_or_default(&self.procfs, |e| {
            self.warn(
                Warning::PortRange,
                format_args!("couldn't read the local port range, deciding direction with Linux's default: {e}"),
            )
        });
        let (counts, keys, listeners, inodes) = fill.finish(sort);
        if want_keys {
            self.last_socket_count.store(keys.len(), Ordering::Relaxed);
        }
        let snap = Snapshot {
            table,
            keys,
            listeners,
            counts,
            queue_limits,
            port_range,
            ok: table_ok && sockets_ok,
            read_time: start.elapsed(),
            spaces: Vec::new(),
            owners: None,
        };
        (snap, inodes)
    }

    /// Fills from the chosen source; returns whether every read succeeded and whether
    /// listeners' backlog limits are known.
    fn read_sockets(&self, fill: &mut Fill<'_>) -> (bool, bool) {
        if !self.uses_netlink() {
            return (self.read_procfs(fill), false);
        }
        let failure = match SockDiag::open() {
            Ok(diag) => match self.read_netlink(diag, fill) {
                None => return (true, true),
                Some(e) => e,
            },
            Err(e) => e,
        };
        if self.choice != SourceChoice::Auto {
            self.warn(Warning::Netlink, format_args!("couldn't read sockets: {failure}"));
            return (false, true);
        }
        // Auto mode: what the dump delivered before it failed is not the whole table;
        // start over from the files, which hold the same sockets.
        fill.clear();
        if is_refusal(&failure) {
            if !self.netlink_refused.swap(true, Ordering::Relaxed) {
                log::warn!("netlink refused, reading {}/net/tcp{{,6}} from now on: {failure}", self.procfs.display());
            }
        } else {
            self.warn(
                Warning::Netlink,
                format_args!(
                    "netlink dump failed, this scrape reads {}/net/tcp{{,6}}: {failure}",
                    self.procfs.display()
                ),
            );
        }
        (self.read_procfs(fill), false)
    }

    /// The netlink dump of both families; the first failure, if any.
    fn read_netlink(&self, diag: SockDiag, fill: &mut Fill<'_>) -> Option<SourceError> {
        let mut failure = None;
        for (family, result) in Family::ALL.into_iter().zip(diag.dump_all(&mut |c| fill.add(c))) {
            if let Err(e) = result {
                log::debug!("couldn't read {} sockets over netlink: {e}", family.label());
                failure.get_or_insert(e);
            }
        }
        failure
    }

    fn read_procfs(&self, fill: &mut Fill<'_>) -> bool {
        let mut ok = true;
        for family in Family::ALL {
            match procfs::read_tcp(&self.procfs, family, |c| fill.add(c)) {
                Ok(Some(report)) => {
                    if report.errors > 0 {
                        self.parse_errors[family.index()].fetch_add(report.errors, Ordering::Relaxed);
                        if let Some((line, e)) = report.first_error {
                            self.warn(
                                Warning::Malformed,
                                format_args!(
                                    "skipped {} malformed line(s) in {}/net/{}, first at line {line}: {e}",
                                    report.errors,
                                    self.procfs.display(),
                                    procfs::file_name(family)
                                ),
                            );
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    ok = false;
                    self.warn(Warning::Sockets, format_args!("couldn't read sockets: {e}"));
                }
            }
        }
        ok
    }
}
