//! A scrape: which collectors a request gets, the shared read of the socket tables, and
//! the writing of each wanted family from it, then the exporter's own metrics.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::classify::Folding;
use crate::exposition::Encoder;
use crate::lifecycle::Lifecycle;
use crate::metrics::connections::Connections;
use crate::metrics::peers::Peers;
use crate::metrics::{lifecycle, listeners, nat, quality, self_metrics, states, CollectorName, CollectorSet};
use crate::nat::Nat;
use crate::netns::NamespaceMode;
use crate::quality::Quality;
use crate::snapshot::{SharedReads, Snapshot};
use crate::source::reader::{Reader, SourceChoice};
use crate::webconfig::ReloadStatus;

pub use crate::metrics::self_metrics::{REVISION, VERSION};

/// What a scrape needs to know; derived from the flags by `config`.
#[derive(Clone, Debug)]
pub struct ExporterConfig {
    /// Root of the procfs tree (`--path.procfs`).
    pub procfs: PathBuf,
    /// Collectors switched on by flags.
    pub collectors: CollectorSet,
    /// Most per-connection series in one scrape; 0 for no limit.
    pub max_series: usize,
    /// Most peer label sets in one scrape; 0 for no limit.
    pub peers_max_series: usize,
    /// How peers' remote addresses are aggregated (the lifecycle counters' too).
    pub peers_folding: Folding,
    /// Most label sets of each lifecycle counter; 0 for no limit.
    pub lifecycle_max_series: usize,
    /// Most label sets of the quality families; 0 for no limit.
    pub quality_max_series: usize,
    /// How often the quality collector samples open connections.
    pub quality_interval: Duration,
    /// Translated conntrack keys kept by `--collector.nat`.
    pub nat_max_entries: usize,
    /// Whether to add build, scrape and process metrics.
    pub exporter_metrics: bool,
    /// Where sockets come from.
    pub source: SourceChoice,
    /// Which network namespaces are read.
    pub namespaces: NamespaceMode,
    /// How `all` mode reads them: the eBPF walk or a dump per namespace.
    pub namespaces_source: crate::source::socket_table::TableChoice,
    /// Whether sockets are labelled with their owning process.
    pub owners: bool,
}

/// Why a `collect[]` filter was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// No collector has this name.
    #[error("unknown collector {0:?} (known: {known})", known = CollectorName::ALL.map(CollectorName::as_str).join(", "))]
    Unknown(String),
    /// The collector exists but a flag switched it off.
    #[error("collector {0:?} is disabled by --no-collector.{0}")]
    Disabled(String),
}

/// How long a scrape waits for a read another scrape is making before it reports its
/// collectors failed; longer than any read of a real host takes.
const SHARED_READ_WAIT: Duration = Duration::from_secs(60);

/// Most time one scrape spends walking processes' descriptors for socket owners; the
/// sockets not found in time have no owner until a later scrape finds them.
const OWNER_WALK_BUDGET: Duration = Duration::from_secs(2);

/// The exporter: configuration plus what persists between scrapes.
pub struct Exporter {
    config: ExporterConfig,
    reader: Reader,
    reads: SharedReads,
    connections: Connections,
    peers: Peers,
    lifecycle: Arc<Lifecycle>,
    quality: Arc<Quality>,
    nat: Option<Arc<Nat>>,
    web_config: Option<Arc<ReloadStatus>>,
}

impl Exporter {
    /// An exporter for a configuration.
    pub fn new(config: ExporterConfig) -> Exporter {
        let reader = Reader::new(config.procfs.clone(), config.source)
            .with_namespaces(config.namespaces)
            .with_socket_table(config.namespaces_source)
            .with_owners(config.owners, OWNER_WALK_BUDGET);
        let quality = Arc::new(Quality::new(
            config.quality_max_series,
            config.peers_folding,
            config.quality_interval,
            reader.namespaces().is_some(),
        ));
        let nat = config.collectors.contains(CollectorName::Nat).then(|| Arc::new(Nat::new(config.nat_max_entries)));
        let lifecycle = Lifecycle::new(config.lifecycle_max_series, config.peers_folding)
            .with_nat(nat.clone())
            .with_sources(reader.namespaces(), reader.owners())
            // Only netlink carries tcp_info: with the procfs source the collector is off.
            .with_quality(
                (config.collectors.contains(CollectorName::Quality) && config.source != SourceChoice::Procfs)
                    .then(|| Arc::clone(&quality)),
            );
        Exporter {
            reader,
            reads: SharedReads::new(SHARED_READ_WAIT),
            connections: Connections::new(config.max_series),
            peers: Peers::new(config.peers_max_series, config.peers_folding).with_nat(nat.clone()),
            lifecycle: Arc::new(lifecycle),
            quality,
            nat,
            web_config: None,
            config,
        }
    }

    /// Adds the web configuration's reload metrics to the exporter's own.
    pub fn set_web_config_status(&mut self, status: Arc<ReloadStatus>) {
        self.web_config = Some(status);
    }

    /// The lifecycle counters, for the thread that feeds them (`lifecycle::subscription::start`).
    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        Arc::clone(&self.lifecycle)
    }

    /// The quality collector's state, for the thread that samples it.
    pub fn quality(&self) -> Arc<Quality> {
        Arc::clone(&self.quality)
    }

    /// NAT resolution's state (`--collector.nat`), for the thread that keeps it.
    pub fn nat(&self) -> Option<Arc<Nat>> {
        self.nat.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &ExporterConfig {
        &self.config
    }

    /// The source the next scrape will read sockets from: `netlink` or `procfs`.
    pub fn source_name(&self) -> &'static str {
        self.reader.source_name()
    }

    /// How `all` mode reads sockets, for the start-up log.
    pub fn all_mode_reads(&self) -> String {
        self.reader.all_mode_reads()
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

    /// The snapshot for `wanted`: a read of our own, or the one another scrape is making
    /// for the same kind of read. A read that was abandoned or took too long gives a
    /// failed, empty snapshot: those collectors report success 0, the scrape goes on.
    fn snapshot(&self, wanted: CollectorSet) -> Arc<Snapshot> {
        let keys = wanted.needs_sockets();
        let sorted = wanted.contains(CollectorName::Connections);
        let slot = usize::from(keys) + usize::from(sorted);
        match self.reads.get(slot, || self.reader.read_with(keys, sorted)) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("{e}");
                Arc::new(Snapshot::failed())
            }
        }
    }

    /// Runs the wanted collectors and writes their families, then the exporter's own.
    pub fn collect<W: Write>(&self, wanted: CollectorSet, enc: &mut Encoder<W>) -> io::Result<()> {
        let mut durations: Vec<(CollectorName, Duration, bool)> = Vec::with_capacity(CollectorName::ALL.len());
        let mut read = None;
        if !wanted.is_empty() {
            // The lifecycle and quality counters and NAT's state need no read of the tables.
            let mut reads = wanted;
            for c in CollectorName::ALL.into_iter().filter(|c| c.kept()) {
                reads.set(c, false);
            }
            let snap = if reads.is_empty() { Arc::new(Snapshot::failed()) } else { self.snapshot(reads) };
            for c in wanted.iter() {
                let t = Instant::now();
                if c.kept() {
                    let nat_labels = self.nat.as_ref().is_some_and(|n| n.labels());
                    let ok = match (c, &self.nat) {
                        (CollectorName::Lifecycle, _) => lifecycle::write(enc, &self.lifecycle)?,
                        (CollectorName::Nat, Some(n)) => nat::write(enc, n)?,
                        (CollectorName::Nat, None) => false,
                        _ => quality::write(enc, &self.quality, self.lifecycle.owners.is_some(), nat_labels)?,
                    };
                    durations.push((c, t.elapsed(), ok));
                    continue;
                }
                self.write_family(c, enc, &snap)?;
                durations.push((c, snap.read_time + t.elapsed(), snap.ok));
            }
            read = Some(snap);
        }
        self_metrics::write_parse_errors(enc, |f| self.reader.parse_errors(f))?;
        if self.config.exporter_metrics {
            self_metrics::write(enc, &durations, self.web_config.as_deref(), self.reader.source_name())?;
            if let Some(snap) = &read {
                self_metrics::write_shared_tables(enc, snap)?;
            }
            if let Some(state) = self.reader.table_state() {
                self_metrics::write_socket_table(enc, &state, self.reader.table_fallbacks())?;
            }
        }
        Ok(())
    }

    fn write_family<W: Write>(&self, c: CollectorName, enc: &mut Encoder<W>, snap: &Snapshot) -> io::Result<()> {
        match c {
            CollectorName::Connections => self.connections.write(enc, snap),
            CollectorName::States => states::write(enc, snap),
            CollectorName::Peers => self.peers.write(enc, snap),
            CollectorName::Listeners => listeners::write(enc, snap),
            // Written by `collect`, which reports their own success.
            CollectorName::Lifecycle | CollectorName::Quality | CollectorName::Nat => Ok(()),
        }
    }
}
