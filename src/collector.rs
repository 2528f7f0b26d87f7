//! A scrape: sockets and interfaces in, metric families out, with the cardinality guard
//! and the exporter's own metrics.
//!
//! Both collectors rest on one read of the socket tables per scrape, shared with any
//! concurrent scrape that wants the same collectors. Per socket the path is: resolve the
//! interface to a small id, count it, and (for the per-connection series) keep a 44-byte
//! key; keys are sorted so that duplicates are adjacent and merge into one series whose
//! value is their number.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::exposition::{Encoder, Kind, Number, Value};
use crate::iface::{IfaceId, InterfaceTable};
use crate::logging::RateLimit;
use crate::model::{Connection, Endpoint, Family, TcpState};
use crate::source::sock_diag::SockDiag;
use crate::source::{self, interfaces, process, procfs};
use crate::webconfig::ReloadStatus;

/// The collectors, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectorName {
    /// `network_connections_info`, one series per socket.
    Connections,
    /// `network_connection_states`, exact counts.
    States,
}

impl CollectorName {
    /// Every collector.
    pub const ALL: [CollectorName; 2] = [CollectorName::Connections, CollectorName::States];

    /// The name used in flags, `collect[]` and the `collector` label.
    pub fn as_str(self) -> &'static str {
        match self {
            CollectorName::Connections => "connections",
            CollectorName::States => "states",
        }
    }

    /// The collector of a name.
    pub fn parse(name: &str) -> Option<CollectorName> {
        CollectorName::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// Which collectors are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollectorSet {
    /// Per-connection series.
    pub connections: bool,
    /// Aggregate counts.
    pub states: bool,
}

impl CollectorSet {
    /// Both on.
    pub const ALL: CollectorSet = CollectorSet { connections: true, states: true };
    /// Both off.
    pub const NONE: CollectorSet = CollectorSet { connections: false, states: false };

    /// Whether a collector is on.
    pub fn contains(self, c: CollectorName) -> bool {
        match c {
            CollectorName::Connections => self.connections,
            CollectorName::States => self.states,
        }
    }

    /// Switches a collector.
    pub fn set(&mut self, c: CollectorName, on: bool) {
        match c {
            CollectorName::Connections => self.connections = on,
            CollectorName::States => self.states = on,
        }
    }

    /// The names of the collectors that are on.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        CollectorName::ALL.into_iter().filter(move |c| self.contains(*c)).map(CollectorName::as_str)
    }
}

/// What a scrape needs to know; derived from the flags by `config`.
#[derive(Clone, Debug)]
pub struct ExporterConfig {
    /// Root of the procfs tree (`--path.procfs`).
    pub procfs: PathBuf,
    /// Collectors switched on by flags.
    pub collectors: CollectorSet,
    /// Most per-connection series in one scrape; 0 for no limit.
    pub max_series: usize,
    /// Whether to add build, scrape and process metrics.
    pub exporter_metrics: bool,
    /// Where sockets come from.
    pub source: SourceChoice,
}

/// Version and revision for `conn_exporter_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git revision the binary was built from, or `unknown`.
pub const REVISION: &str = env!("CONN_EXPORTER_REVISION");

/// Why a `collect[]` filter was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// No collector has this name.
    #[error("unknown collector {0:?} (known: connections, states)")]
    Unknown(String),
    /// The collector exists but a flag switched it off.
    #[error("collector {0:?} is disabled by --no-collector.{0}")]
    Disabled(String),
}

/// Where sockets are read from (`--collector.connections.source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// Netlink when `--path.procfs` shows this process's own network namespace and the
    /// kernel allows it; the procfs files otherwise.
    Auto,
    /// Always the NETLINK_SOCK_DIAG dump of the exporter's network namespace.
    Netlink,
    /// Always `<procfs>/net/tcp{,6}`.
    Procfs,
}

/// The exporter: configuration plus what persists between scrapes.
pub struct Exporter {
    config: ExporterConfig,
    live: bool,
    netlink_refused: AtomicBool,
    parse_errors: [AtomicU64; 2],
    truncating: AtomicBool,
    last_socket_count: AtomicUsize,
    /// One limiter per kind of warning, so that a steady one cannot hide a new one.
    warn_limits: [RateLimit; 4],
    /// Reads in progress, by wanted collector set: concurrent scrapes asking for the same
    /// collectors wait for one read of the kernel instead of each making their own.
    flights: Mutex<[Option<Arc<Flight>>; 4]>,
    web_config: Option<Arc<ReloadStatus>>,
}

/// Kinds of warnings a scrape can raise; each is logged at most once a minute.
#[derive(Clone, Copy)]
enum Warning {
    Interfaces = 0,
    Sockets = 1,
    Malformed = 2,
    Netlink = 3,
}

/// The key a per-connection series is merged and sorted by: 44 bytes, no heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    local: Endpoint,
    remote: Endpoint,
    state: TcpState,
    iface: IfaceId,
}

/// One read of the kernel, ready to encode: what concurrent scrapes share.
struct Snapshot {
    table: InterfaceTable,
    /// Sorted, so equal keys are adjacent; empty unless the connections collector ran.
    keys: Vec<SeriesKey>,
    counts: StateCounts,
    ok: bool,
    read_time: Duration,
}

/// A read in progress and the scrapes waiting for it.
#[derive(Default)]
struct Flight {
    result: Mutex<Option<Arc<Snapshot>>>,
    done: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing holding these locks can leave the data half-written, so a poisoned lock is
    // still good to use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Exporter {
    /// An exporter for a configuration.
    pub fn new(config: ExporterConfig) -> Exporter {
        let live = source::is_own_namespace(&config.procfs);
        Exporter {
            config,
            live,
            netlink_refused: AtomicBool::new(false),
            parse_errors: [AtomicU64::new(0), AtomicU64::new(0)],
            truncating: AtomicBool::new(false),
            last_socket_count: AtomicUsize::new(0),
            warn_limits: std::array::from_fn(|_| RateLimit::new(Duration::from_secs(60))),
            flights: Mutex::new(Default::default()),
            web_config: None,
        }
    }

    /// Adds the web configuration's reload metrics to the exporter's own.
    pub fn set_web_config_status(&mut self, status: Arc<ReloadStatus>) {
        self.web_config = Some(status);
    }

    /// The configuration.
    pub fn config(&self) -> &ExporterConfig {
        &self.config
    }

    /// The source the next scrape will read sockets from: `netlink` or `procfs`.
    pub fn source_name(&self) -> &'static str {
        if self.uses_netlink() {
            "netlink"
        } else {
            "procfs"
        }
    }

    fn uses_netlink(&self) -> bool {
        match self.config.source {
            SourceChoice::Netlink => true,
            SourceChoice::Procfs => false,
            SourceChoice::Auto => self.live && !self.netlink_refused.load(Ordering::Relaxed),
        }
    }

    /// Which collectors a request gets: all enabled ones, or those its `collect[]` names.
    pub fn filter<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Result<CollectorSet, FilterError> {
        let mut wanted = CollectorSet::NONE;
        let mut any = false;
        for name in names {
            any = true;
            let c = CollectorName::parse(name).ok_or_else(|| FilterError::Unknown(name.to_owned()))?;
            if !self.config.collectors.contains(c) {
                return Err(FilterError::Disabled(name.to_owned()));
            }
            wanted.set(c, true);
        }
        Ok(if any { wanted } else { self.config.collectors })
    }

    fn warn(&self, kind: Warning, message: std::fmt::Arguments<'_>) {
        if self.warn_limits[kind as usize].allow() {
            log::warn!("{message}");
        }
    }

    fn read_interfaces(&self) -> (InterfaceTable, bool) {
        let live = self.live && !self.netlink_refused.load(Ordering::Relaxed);
        let result = match interfaces::read(&self.config.procfs, live) {
            Err(e) if live => {
                // getifaddrs asks over netlink too: where netlink is refused, the files
                // still name every interface.
                self.warn(
                    Warning::Interfaces,
                    format_args!(
                        "couldn't list interfaces ({e}); reading {}/net/route and if_inet6",
                        self.config.procfs.display()
                    ),
                );
                interfaces::read_files(&self.config.procfs)
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

    /// Reads both families into `sink` from the chosen source; returns whether every
    /// read succeeded. Failures are logged, parse errors counted.
    fn read_sockets(&self, mut sink: impl FnMut(Connection)) -> bool {
        if self.uses_netlink() {
            match SockDiag::open() {
                Ok(diag) => return self.read_netlink(diag, &mut sink),
                Err(e) if self.config.source == SourceChoice::Auto => {
                    self.netlink_refused.store(true, Ordering::Relaxed);
                    log::warn!(
                        "netlink refused, reading {}/net/tcp{{,6}} from now on: {e}",
                        self.config.procfs.display()
                    );
                }
                Err(e) => {
                    self.warn(Warning::Netlink, format_args!("couldn't read sockets: {e}"));
                    return false;
                }
            }
        }
        self.read_procfs(&mut sink)
    }

    fn read_netlink(&self, diag: SockDiag, sink: &mut impl FnMut(Connection)) -> bool {
        let mut ok = true;
        for (family, result) in Family::ALL.into_iter().zip(diag.dump_all(sink)) {
            if let Err(e) = result {
                ok = false;
                self.warn(Warning::Netlink, format_args!("couldn't read {} sockets: {e}", family.label()));
            }
        }
        ok
    }

    fn read_procfs(&self, sink: &mut impl FnMut(Connection)) -> bool {
        let mut ok = true;
        for family in Family::ALL {
            match procfs::read_tcp(&self.config.procfs, family, &mut *sink) {
                Ok(Some(report)) => {
                    if report.errors > 0 {
                        self.parse_errors[family.index()].fetch_add(report.errors, Ordering::Relaxed);
                        if let Some((line, e)) = report.first_error {
                            self.warn(
                                Warning::Malformed,
                                format_args!(
                                    "skipped {} malformed line(s) in {}/net/{}, first at line {line}: {e}",
                                    report.errors,
                                    self.config.procfs.display(),
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

    /// Reads the kernel for the wanted collectors. Per socket: resolve the interface,
    /// count, and (for the connections collector) keep a key; nothing else is allocated.
    fn read(&self, wanted: CollectorSet) -> Snapshot {
        let start = Instant::now();
        let (table, table_ok) = self.read_interfaces();
        let mut counts = StateCounts::new(&table);
        let mut keys = Vec::new();
        let sockets_ok = if wanted.connections {
            keys.reserve(self.last_socket_count.load(Ordering::Relaxed) + 64);
            let ok = self.read_sockets(|c| {
                let iface = table.resolve(&c.local, c.if_index);
                counts.add(c.family(), iface, c.state);
                keys.push(SeriesKey { local: c.local, remote: c.remote, state: c.state, iface });
            });
            self.last_socket_count.store(keys.len(), Ordering::Relaxed);
            keys.sort_unstable();
            ok
        } else {
            self.read_sockets(|c| counts.add(c.family(), table.resolve(&c.local, c.if_index), c.state))
        };
        Snapshot { table, keys, counts, ok: table_ok && sockets_ok, read_time: start.elapsed() }
    }

    /// The snapshot for `wanted`: a read of our own, or the one another scrape is making.
    fn snapshot(&self, wanted: CollectorSet) -> Arc<Snapshot> {
        let slot = usize::from(wanted.connections) * 2 + usize::from(wanted.states);
        let (flight, leader) = {
            let mut flights = lock(&self.flights);
            match &flights[slot] {
                Some(f) => (Arc::clone(f), false),
                None => {
                    let f = Arc::new(Flight::default());
                    flights[slot] = Some(Arc::clone(&f));
                    (f, true)
                }
            }
        };
        if leader {
            let snapshot = Arc::new(self.read(wanted));
            *lock(&flight.result) = Some(Arc::clone(&snapshot));
            lock(&self.flights)[slot] = None;
            flight.done.notify_all();
            return snapshot;
        }
        let mut result = lock(&flight.result);
        loop {
            if let Some(s) = result.as_ref() {
                return Arc::clone(s);
            }
            result = flight.done.wait(result).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Runs the wanted collectors and writes their families, then the exporter's own.
    pub fn collect<W: Write>(&self, wanted: CollectorSet, enc: &mut Encoder<W>) -> io::Result<()> {
        let mut durations: Vec<(CollectorName, Duration, bool)> = Vec::with_capacity(2);
        if wanted.connections || wanted.states {
            let snap = self.snapshot(wanted);
            if wanted.connections {
                let t = Instant::now();
                self.write_connections(enc, &snap.keys, &snap.table)?;
                durations.push((CollectorName::Connections, snap.read_time + t.elapsed(), snap.ok));
            }
            if wanted.states {
                let t = Instant::now();
                snap.counts.write(enc, &snap.table)?;
                durations.push((CollectorName::States, snap.read_time + t.elapsed(), snap.ok));
            }
        }
        self.write_parse_errors(enc)?;
        if self.config.exporter_metrics {
            self.write_exporter_metrics(enc, &durations)?;
        }
        Ok(())
    }

    fn write_connections<W: Write>(
        &self,
        enc: &mut Encoder<W>,
        keys: &[SeriesKey],
        table: &InterfaceTable,
    ) -> io::Result<()> {
        // First pass: distinct series per keep class, to know how many of each fit.
        let mut distinct = [0usize; 3];
        for run in keys.chunk_by(|a, b| a == b) {
            distinct[usize::from(run[0].state.keep_priority())] += 1;
        }
        let total: usize = distinct.iter().sum();
        let mut budget = [usize::MAX; 3];
        if self.config.max_series > 0 {
            let mut left = self.config.max_series;
            for (b, d) in budget.iter_mut().zip(distinct) {
                *b = d.min(left);
                left -= *b;
            }
        }
        enc.family(
            "network_connections_info",
            Kind::Gauge,
            "TCP sockets by local and remote endpoint, state and interface; the value counts sockets sharing one label set.",
        )?;
        let mut kept = 0usize;
        for run in keys.chunk_by(|a, b| a == b) {
            let k = run[0];
            let class = usize::from(k.state.keep_priority());
            if budget[class] == 0 {
                continue;
            }
            budget[class] -= 1;
            kept += 1;
            enc.sample(
                "network_connections_info",
                &[
                    ("destination_address", Value::Ip(k.remote.ip)),
                    ("destination_port", Value::Int(u64::from(k.remote.port))),
                    ("interface", Value::Str(table.name(k.iface))),
                    ("source_address", Value::Ip(k.local.ip)),
                    ("source_port", Value::Int(u64::from(k.local.port))),
                    ("state", Value::Str(k.state.label())),
                ],
                Number::Int(run.len() as u64),
            )?;
        }
        let dropped = total - kept;
        let was = self.truncating.swap(dropped > 0, Ordering::Relaxed);
        if dropped > 0 && !was {
            log::warn!(
                "per-connection series truncated: {total} distinct, limit {} (--collector.connections.max-series); {dropped} left out, LISTEN and ESTABLISHED kept first; network_connection_states stays exact",
                self.config.max_series
            );
        } else if dropped == 0 && was {
            log::info!("per-connection series no longer truncated: {total} distinct, limit {}", self.config.max_series);
        }
        enc.family(
            "conn_exporter_connections_dropped_series",
            Kind::Gauge,
            "Per-connection series left out of this scrape by --collector.connections.max-series.",
        )?;
        enc.sample("conn_exporter_connections_dropped_series", &[], Number::Int(dropped as u64))
    }

    fn write_parse_errors<W: Write>(&self, enc: &mut Encoder<W>) -> io::Result<()> {
        enc.family(
            "conn_exporter_parse_errors_total",
            Kind::Counter,
            "Malformed lines skipped in the socket tables, by file.",
        )?;
        for family in Family::ALL {
            let n = self.parse_errors[family.index()].load(Ordering::Relaxed);
            enc.sample(
                "conn_exporter_parse_errors_total",
                &[("file", Value::Str(procfs::file_name(family)))],
                Number::Int(n),
            )?;
        }
        Ok(())
    }

    fn write_exporter_metrics<W: Write>(
        &self,
        enc: &mut Encoder<W>,
        durations: &[(CollectorName, Duration, bool)],
    ) -> io::Result<()> {
        enc.family(
            "conn_exporter_build_info",
            Kind::Gauge,
            "Version and revision conn-exporter was built from; always 1.",
        )?;
        enc.sample(
            "conn_exporter_build_info",
            &[("revision", Value::Str(REVISION)), ("version", Value::Str(VERSION))],
            Number::Int(1),
        )?;
        enc.family(
            "conn_exporter_scrape_collector_duration_seconds",
            Kind::Gauge,
            "Time a collector took in this scrape, the shared read of the socket tables included.",
        )?;
        for (c, d, _) in durations {
            enc.sample(
                "conn_exporter_scrape_collector_duration_seconds",
                &[("collector", Value::Str(c.as_str()))],
                Number::Float(d.as_secs_f64()),
            )?;
        }
        enc.family(
            "conn_exporter_scrape_collector_success",
            Kind::Gauge,
            "1 when a collector read all its sources in this scrape, 0 when one failed (see the log).",
        )?;
        for (c, _, ok) in durations {
            enc.sample(
                "conn_exporter_scrape_collector_success",
                &[("collector", Value::Str(c.as_str()))],
                Number::Int(u64::from(*ok)),
            )?;
        }
        if let Some(status) = &self.web_config {
            enc.family(
                "conn_exporter_web_config_last_reload_successful",
                Kind::Gauge,
                "1 when the last read of --web.config.file succeeded; 0 when a change was refused and the last good configuration is in force.",
            )?;
            enc.sample(
                "conn_exporter_web_config_last_reload_successful",
                &[],
                Number::Int(u64::from(status.last_ok.load(Ordering::Relaxed))),
            )?;
            enc.family(
                "conn_exporter_web_config_reload_failures_total",
                Kind::Counter,
                "Changes to --web.config.file refused as invalid.",
            )?;
            enc.sample(
                "conn_exporter_web_config_reload_failures_total",
                &[],
                Number::Int(status.failures.load(Ordering::Relaxed)),
            )?;
        }
        let Some(p) = process::read() else { return Ok(()) };
        let gauges: [(&str, &str, Number); 4] = [
            ("process_resident_memory_bytes", "Resident memory size in bytes.", Number::Int(p.resident_bytes)),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", Number::Int(p.virtual_bytes)),
            ("process_open_fds", "Number of open file descriptors.", Number::Int(p.open_fds)),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                Number::Float(p.start_time_seconds),
            ),
        ];
        enc.family("process_cpu_seconds_total", Kind::Counter, "Total user and system CPU time spent in seconds.")?;
        enc.sample("process_cpu_seconds_total", &[], Number::Float(p.cpu_seconds))?;
        for (name, help, value) in gauges {
            enc.family(name, Kind::Gauge, help)?;
            enc.sample(name, &[], value)?;
        }
        if let Some(max) = p.max_fds {
            enc.family("process_max_fds", Kind::Gauge, "Maximum number of open file descriptors.")?;
            enc.sample("process_max_fds", &[], Number::Int(max))?;
        }
        Ok(())
    }
}

/// Exact socket counts by family, interface id and state.
struct StateCounts {
    interfaces: usize,
    counts: Vec<u64>,
}

impl StateCounts {
    fn new(table: &InterfaceTable) -> StateCounts {
        let interfaces = table.len();
        StateCounts { interfaces, counts: vec![0; Family::ALL.len() * interfaces * TcpState::ALL.len()] }
    }

    fn slot(&self, family: Family, iface: IfaceId) -> usize {
        (family.index() * self.interfaces + usize::from(iface.0)) * TcpState::ALL.len()
    }

    fn add(&mut self, family: Family, iface: IfaceId, state: TcpState) {
        let i = self.slot(family, iface) + state as usize;
        self.counts[i] += 1;
    }

    /// Every (family, interface) pair with a socket gets all eleven states, zeros
    /// included, so that a state appearing does not start a new series mid-graph.
    fn write<W: Write>(&self, enc: &mut Encoder<W>, table: &InterfaceTable) -> io::Result<()> {
        enc.family(
            "network_connection_states",
            Kind::Gauge,
            "Exact number of TCP sockets by family, interface and state; never truncated.",
        )?;
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
                    enc.sample(
                        "network_connection_states",
                        &[
                            ("family", Value::Str(family.label())),
                            ("interface", Value::Str(table.name(iface))),
                            ("state", Value::Str(state.label())),
                        ],
                        Number::Int(n),
                    )?;
                }
            }
        }
        Ok(())
    }
}
