//! A scrape: sockets and interfaces in, metric families out, with the cardinality guard
//! and the exporter's own metrics.
//!
//! Both collectors rest on one read of the socket tables per scrape. Per socket the
//! path is: resolve the interface to a small id, count it, and (for the per-connection
//! series) keep a 44-byte key; keys are sorted so that duplicates are adjacent and merge
//! into one series whose value is their number.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::exposition::{Encoder, Kind, Number, Value};
use crate::iface::{IfaceId, InterfaceTable};
use crate::logging::RateLimit;
use crate::model::{Connection, Endpoint, Family, TcpState};
use crate::source::{self, interfaces, process, procfs};

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

/// The exporter: configuration plus what persists between scrapes.
pub struct Exporter {
    config: ExporterConfig,
    live: bool,
    parse_errors: [AtomicU64; 2],
    truncating: AtomicBool,
    last_socket_count: AtomicUsize,
    /// One limiter per kind of warning, so that a steady one cannot hide a new one.
    warn_limits: [RateLimit; 3],
}

/// Kinds of warnings a scrape can raise; each is logged at most once a minute.
#[derive(Clone, Copy)]
enum Warning {
    Interfaces = 0,
    Sockets = 1,
    Malformed = 2,
}

/// The key a per-connection series is merged and sorted by. Same size and alignment as
/// `Connection`, so that turning one vector into the other reuses its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(align(4))]
struct SeriesKey {
    local: Endpoint,
    remote: Endpoint,
    state: TcpState,
    iface: IfaceId,
}

/// The result of reading one source: whether it was complete.
struct Outcome {
    ok: bool,
    elapsed: Duration,
}

impl Exporter {
    /// An exporter for a configuration.
    pub fn new(config: ExporterConfig) -> Exporter {
        let live = source::is_own_namespace(&config.procfs);
        Exporter {
            config,
            live,
            parse_errors: [AtomicU64::new(0), AtomicU64::new(0)],
            truncating: AtomicBool::new(false),
            last_socket_count: AtomicUsize::new(0),
            warn_limits: std::array::from_fn(|_| RateLimit::new(Duration::from_secs(60))),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ExporterConfig {
        &self.config
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
        match interfaces::read(&self.config.procfs, self.live) {
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

    /// Reads both families into `sink`; parse errors are counted, failures logged.
    fn read_sockets(&self, mut sink: impl FnMut(Connection)) -> Outcome {
        let start = Instant::now();
        let mut ok = true;
        for family in Family::ALL {
            match procfs::read_tcp(&self.config.procfs, family, &mut sink) {
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
        Outcome { ok, elapsed: start.elapsed() }
    }

    /// Runs the wanted collectors and writes their families, then the exporter's own.
    pub fn collect<W: Write>(&self, wanted: CollectorSet, enc: &mut Encoder<W>) -> io::Result<()> {
        let mut durations: Vec<(CollectorName, Duration, bool)> = Vec::with_capacity(2);
        if wanted.connections || wanted.states {
            let start = Instant::now();
            let (table, table_ok) = self.read_interfaces();
            let mut counts = StateCounts::new(&table);
            if wanted.connections {
                let mut conns = Vec::with_capacity(self.last_socket_count.load(Ordering::Relaxed) + 64);
                let outcome = self.read_sockets(|c| conns.push(c));
                self.last_socket_count.store(conns.len(), Ordering::Relaxed);
                let read_time = start.elapsed();
                let keys: Vec<SeriesKey> = conns
                    .into_iter()
                    .map(|c| {
                        let iface = table.resolve(&c.local, c.if_index);
                        counts.add(c.family(), iface, c.state);
                        SeriesKey { local: c.local, remote: c.remote, state: c.state, iface }
                    })
                    .collect();
                let t = Instant::now();
                self.write_connections(enc, keys, &table)?;
                durations.push((CollectorName::Connections, read_time + t.elapsed(), outcome.ok && table_ok));
                if wanted.states {
                    let t = Instant::now();
                    counts.write(enc, &table)?;
                    durations.push((CollectorName::States, read_time + t.elapsed(), outcome.ok && table_ok));
                }
            } else {
                let outcome =
                    self.read_sockets(|c| counts.add(c.family(), table.resolve(&c.local, c.if_index), c.state));
                counts.write(enc, &table)?;
                durations.push((CollectorName::States, start.elapsed().max(outcome.elapsed), outcome.ok && table_ok));
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
        mut keys: Vec<SeriesKey>,
        table: &InterfaceTable,
    ) -> io::Result<()> {
        keys.sort_unstable();
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
