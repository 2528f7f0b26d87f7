//! The eBPF socket table of `--collector.namespaces=all` (`bpf/sockets.bpf.c`): loads and
//! attaches it, seeds each namespace's older sockets once, and reads every namespace's
//! sockets in one walk of one map, where the dumps walk the shared TCP hash table once
//! per namespace.
//!
//! Membership comes from the kernel's events; what each socket is comes from a walk run
//! at read time (`BPF_PROG_TEST_RUN`), which writes one record per socket to a ring
//! buffer drained here. A read is refused, and the caller falls back to the dumps,
//! whenever the table may be short: an insert was refused by the full map since the
//! namespaces were last seeded. Seeding again, once the table has room, makes it whole.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use aya::maps::{Array, MapData, MapError, RingBuf};
use aya::programs::{Iter, ProgramError, RawTracePoint, RawTracePointRunOptions, TestRun};
use aya::{Btf, Ebpf, EbpfError, EbpfLoader};

use crate::model::Connection;
use crate::netns::{Found, Namespaces};
use crate::parse::ebpf_socket;

/// The object `scripts/build-bpf.sh` compiles from `bpf/sockets.bpf.c`.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/sockets.bpf.o");

/// The event programs and the raw tracepoints they attach to. `on_state_nested` catches
/// the state changes the kernel skips `on_state` for (raised while it runs on that CPU).
const PROGRAMS: [(&str, &str); 5] = [
    ("on_state", "inet_sock_set_state"),
    ("on_state_nested", "inet_sock_set_state"),
    ("on_timer_start", "timer_start"),
    ("on_timer_cancel", "timer_cancel"),
    ("on_timer_expire", "timer_expire_entry"),
];

/// Indexes of the program's `stats` map.
const STAT_INSERTS_FAILED: u32 = 0;
const STAT_STALE: u32 = 1;
const STAT_NESTED: u32 = 2;

/// The walk's ring buffer: 58,000 records of 72 bytes (with the ring's header) a run; a
/// larger table takes more runs of the walk, each skipping what the last ones wrote.
const RECORDS_BYTES: u32 = 4 << 20;
/// Runs of the walk one read may take: 64 x 58,000 records is past any bound it allows.
const MAX_RUNS: usize = 64;
/// Room, in parts of a thousand of the bound, the table must have before a full one is
/// seeded again (seeding a still full table would only fail again).
const RESEED_BELOW: u64 = 900;

/// The kernel functions whose timers mark TIME_WAIT minisocks and request sockets.
const TIMEWAIT_HANDLER: &str = "tw_timer_handler";
const REQUEST_HANDLER: &str = "reqsk_timer_handler";

/// `--collector.namespaces.source`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TableChoice {
    /// The table when the kernel lets this process load it, the dumps otherwise.
    #[default]
    Auto,
    /// The table; when it cannot be loaded, an error is logged and the dumps are used.
    Ebpf,
    /// A sock_diag dump per namespace.
    Netlink,
}

/// Why the table could not be loaded; the reads then use the dumps.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// kallsyms could not be read, or hides addresses.
    #[error("kallsyms: {0}")]
    Kallsyms(String),
    /// The kernel refused the object.
    #[error("loading the eBPF object: {0}")]
    Object(Box<EbpfError>),
    /// A program could not be loaded or attached.
    #[error("{what} {program}: {source}")]
    Program {
        /// Loading or attaching.
        what: &'static str,
        /// The program's name.
        program: &'static str,
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
    /// The object lacks a program or map.
    #[error("the embedded object has no {0}")]
    Missing(&'static str),
    /// The kernel's BTF (for the iterator) could not be read.
    #[error("reading the kernel's BTF: {0}")]
    Btf(String),
    /// The exporter's own namespace could not be seeded.
    #[error("seeding the exporter's namespace: {0}")]
    Seed(String),
}

/// What the table holds and has done, for its self-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableState {
    /// Its bound (`--collector.namespaces.max-sockets`).
    pub capacity: u32,
    /// Entries at the last read.
    pub entries: usize,
    /// Entries walks found gone and deleted.
    pub stale: u64,
    /// State changes the kernel skipped `on_state` for, kept by `on_state_nested`.
    pub nested: u64,
}

/// Why a read did not come from the table; the caller reads with the dumps.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Inserts were refused (by the full map, or rarely a contended bucket lock):
    /// sockets may be missing.
    #[error("the socket table refused {failed} insert(s) since it was last whole (full at --collector.namespaces.max-sockets={capacity}, or a contended bucket lock)")]
    Full {
        /// The map's bound.
        capacity: u32,
        /// Inserts refused since the table was last whole.
        failed: u64,
    },
    /// The walk failed.
    #[error("walking the socket table: {0}")]
    Walk(String),
}

impl ReadError {
    /// The `reason` label of `conn_exporter_socket_table_fallbacks_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Full { .. } => "full",
            ReadError::Walk(_) => "error",
        }
    }
}

/// A namespace that could not be seeded: its inode, name and why.
pub type SeedFailure = (u64, String, String);

/// Every namespace's sockets, by the inode of the namespace.
pub struct TableRead {
    /// The sockets of each namespace.
    pub sockets: HashMap<u64, Vec<Connection>>,
    /// Sockets the table held (all namespaces of the machine).
    pub entries: usize,
}

struct Inner {
    bpf: Ebpf,
    records: RingBuf<MapData>,
    stats: Array<MapData, u64>,
    /// The generation of the last read (never 0, the value of entries not yet written).
    gen: u32,
    /// `STAT_INSERTS_FAILED` when the table was last whole.
    failed_when_whole: u64,
    /// Whether every insert since the last seeding of every namespace succeeded.
    whole: bool,
    /// Namespaces seeded (by inode); cleared to seed them all again.
    seeded: HashSet<u64>,
    /// Records written by the last walk.
    last_entries: usize,
}

/// The loaded table.
pub struct SocketTable {
    inner: Mutex<Inner>,
    capacity: u32,
    own_netns: u64,
}

/// The address of each named function in kallsyms' text (pure).
pub fn parse_kallsyms(text: &str, names: &[&str]) -> Vec<Option<u64>> {
    let mut found = vec![None; names.len()];
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else { continue };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        if let Some(i) = names.iter().position(|n| *n == name) {
            if found[i].is_none() {
                found[i] = u64::from_str_radix(addr, 16).ok().filter(|a| *a != 0);
            }
        }
    }
    found
}

fn program_error(what: &'static str, program: &'static str) -> impl Fn(ProgramError) -> LoadError {
    move |e| LoadError::Program { what, program, source: Box::new(e) }
}

/// Runs the seeding iterator in the namespace of the calling thread.
fn run_seed(link: aya::programs::iter::IterLink) -> Result<(), String> {
    let mut file = link.into_file().map_err(|e| format!("creating the iterator: {e}"))?;
    let mut sink = Vec::new();
    file.read_to_end(&mut sink).map_err(|e| format!("reading the iterator: {e}"))?;
    Ok(())
}

impl SocketTable {
    /// Loads and attaches the programs with room for `capacity` sockets, then seeds the
    /// exporter's own namespace. The timer handlers' addresses come from `kallsyms` under
    /// `procfs` (the running kernel's, as BTF is).
    pub fn load(procfs: &std::path::Path, capacity: u32) -> Result<SocketTable, LoadError> {
        let path = procfs.join("kallsyms");
        let text =
            std::fs::read_to_string(&path).map_err(|e| LoadError::Kallsyms(format!("{}: {e}", path.display())))?;
        let addrs = parse_kallsyms(&text, &[TIMEWAIT_HANDLER, REQUEST_HANDLER]);
        let (Some(tw), Some(req)) = (addrs[0], addrs[1]) else {
            return Err(LoadError::Kallsyms(format!(
                "no address for {TIMEWAIT_HANDLER} and {REQUEST_HANDLER} (addresses are hidden without CAP_SYSLOG unless kernel.kptr_restrict=0 and kernel.perf_event_paranoid<=1)"
            )));
        };
        let own_netns = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0);
        let btf = Btf::from_sys_fs().map_err(|e| LoadError::Btf(e.to_string()))?;
        let mut bpf = EbpfLoader::new()
            .override_global("tw_handler", &tw, true)
            .override_global("req_handler", &req, true)
            .map_max_entries("sockets", capacity.max(1))
            .map_max_entries("records", RECORDS_BYTES)
            .load(OBJECT)
            .map_err(|e| LoadError::Object(Box::new(e)))?;
        let walk: &mut RawTracePoint = bpf
            .program_mut("walk")
            .ok_or(LoadError::Missing("walk"))?
            .try_into()
            .map_err(program_error("a raw tracepoint", "walk"))?;
        walk.load().map_err(program_error("loading", "walk"))?;
        let seed: &mut Iter = bpf
            .program_mut("seed")
            .ok_or(LoadError::Missing("seed"))?
            .try_into()
            .map_err(program_error("an iterator", "seed"))?;
        seed.load("tcp", &btf).map_err(program_error("loading", "seed"))?;
        // The events first: a socket made while the namespaces are seeded is then met by
        // one or the other (an insert never overwrites).
        for (program, tracepoint) in PROGRAMS {
            let p: &mut RawTracePoint = bpf
                .program_mut(program)
                .ok_or(LoadError::Missing(program))?
                .try_into()
                .map_err(program_error("a raw tracepoint", program))?;
            p.load().map_err(program_error("loading", program))?;
            p.attach(tracepoint).map_err(program_error("attaching", program))?;
        }
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
            bpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, LoadError> {
            let map = bpf.take_map(name).ok_or(LoadError::Missing(name))?;
            T::try_from(map).map_err(|source| LoadError::Map { name, source })
        }
        let records = take(&mut bpf, "records")?;
        let stats = take(&mut bpf, "stats")?;
        let table = SocketTable {
            inner: Mutex::new(Inner {
                bpf,
                records,
                stats,
                gen: 0,
                failed_when_whole: 0,
                whole: true,
                seeded: HashSet::new(),
                last_entries: 0,
            }),
            capacity,
            own_netns,
        };
        {
            let mut inner = table.lock();
            let link = inner.seed_link().map_err(LoadError::Seed)?;
            run_seed(link).map_err(LoadError::Seed)?;
            inner.seeded.insert(own_netns);
            inner.failed_when_whole = inner.stat(STAT_INSERTS_FAILED);
        }
        Ok(table)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table's bound.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Its bound, entries and counters, in one lock.
    pub fn state(&self) -> TableState {
        let inner = self.lock();
        TableState {
            capacity: self.capacity,
            entries: inner.last_entries,
            stale: inner.stat(STAT_STALE),
            nested: inner.stat(STAT_NESTED),
        }
    }

    /// Seeds the namespaces of `found` not seeded yet, each on its thread, then reads
    /// every namespace's sockets, or says why the table cannot tell them all. Failures
    /// to seed a namespace are returned beside (it is tried again next time).
    pub fn read(&self, namespaces: &Namespaces, found: &[Found]) -> (Result<TableRead, ReadError>, Vec<SeedFailure>) {
        let mut inner = self.lock();
        let mut failures = inner.seed(namespaces, found, self.own_netns);
        let failed = inner.stat(STAT_INSERTS_FAILED);
        if failed != inner.failed_when_whole {
            inner.whole = false;
        }
        if !inner.whole {
            // The walk keeps the count of entries current, which says when there is room.
            let _ = inner.walk();
            if (inner.last_entries as u64) * 1000 < u64::from(self.capacity) * RESEED_BELOW {
                // Sockets refused while it was full are in no event to come: seed every
                // namespace again. Whole if no insert is refused meanwhile.
                inner.failed_when_whole = failed;
                inner.seeded.clear();
                failures = inner.seed(namespaces, found, self.own_netns);
                inner.whole = inner.stat(STAT_INSERTS_FAILED) == failed;
            }
            if !inner.whole {
                let since = inner.stat(STAT_INSERTS_FAILED).saturating_sub(inner.failed_when_whole).max(1);
                return (Err(ReadError::Full { capacity: self.capacity, failed: since }), failures);
            }
        }
        (inner.walk().map_err(ReadError::Walk), failures)
    }
}

impl Inner {
    fn stat(&self, i: u32) -> u64 {
        self.stats.get(&i, 0).unwrap_or(0)
    }

    /// Seeds the namespaces of `found` not seeded yet, each on its thread (the own one
    /// here); returns those that could not be.
    fn seed(&mut self, namespaces: &Namespaces, found: &[Found], own_netns: u64) -> Vec<SeedFailure> {
        let mut failures = Vec::new();
        let mut pending = Vec::new();
        for f in found {
            if self.seeded.contains(&f.inode) {
                continue;
            }
            let link = match self.seed_link() {
                Ok(l) => l,
                Err(e) => {
                    failures.push((f.inode, f.name.clone(), e));
                    continue;
                }
            };
            if f.own || f.inode == own_netns {
                match run_seed(link) {
                    Ok(()) => {
                        self.seeded.insert(f.inode);
                    }
                    Err(e) => failures.push((f.inode, f.name.clone(), e)),
                }
                continue;
            }
            match namespaces.run(f, move || run_seed(link)) {
                Ok(rx) => pending.push((f, rx)),
                // Gone between listing and entering: nothing to seed, nothing to read.
                Err(e) if e.is_gone() && e.missing_capability().is_none() => {}
                Err(e) => failures.push((f.inode, f.name.clone(), e.to_string())),
            }
        }
        for (f, rx) in pending {
            match rx.recv() {
                Ok(Ok(())) => {
                    self.seeded.insert(f.inode);
                }
                Ok(Err(e)) => failures.push((f.inode, f.name.clone(), e)),
                Err(_) => failures.push((f.inode, f.name.clone(), "its thread stopped".to_owned())),
            }
        }
        // Forget namespaces that are gone, so that the set stays as large as the host's.
        if self.seeded.len() > found.len() * 2 + 16 {
            let live: HashSet<u64> = found.iter().map(|f| f.inode).collect();
            self.seeded.retain(|i| live.contains(i));
        }
        failures
    }

    fn seed_link(&mut self) -> Result<aya::programs::iter::IterLink, String> {
        let seed: &mut Iter = self
            .bpf
            .program_mut("seed")
            .ok_or("no seed program")?
            .try_into()
            .map_err(|e: ProgramError| e.to_string())?;
        let id = seed.attach().map_err(|e| format!("attaching the iterator: {e}"))?;
        seed.take_link(id).map_err(|e| format!("taking the iterator's link: {e}"))
    }

    /// One read: two passes of the walk, each run until every entry is written, then
    /// its records settled and sorted by namespace.
    ///
    /// Why two: a walk is not atomic. A socket that turns into a TIME_WAIT minisock (or
    /// a request into a full socket) while it runs may have its old entry visited after
    /// the change (found gone, not written) and its new one inserted in a bucket the
    /// walk had passed: written by neither. The new entry is inserted before the old
    /// socket is closed, so it exists when the first pass finds the old one gone, and
    /// the second pass, which writes only entries the first did not, meets it. What a
    /// read may then hold twice, one connection in both forms, `settle` makes one.
    fn walk(&mut self) -> Result<TableRead, String> {
        self.gen = self.gen.wrapping_add(1).max(1);
        let mut records = Vec::with_capacity(self.last_entries + self.last_entries / 8);
        let walk: &RawTracePoint =
            self.bpf.program("walk").ok_or("no walk program")?.try_into().map_err(|e: ProgramError| e.to_string())?;
        for _pass in 0..2 {
            let mut done = false;
            for _ in 0..MAX_RUNS {
                let mut opts = RawTracePointRunOptions::new();
                opts.args[0] = u64::from(self.gen);
                let ret = walk.test_run(opts).map_err(|e| e.to_string())?.return_value;
                while let Some(item) = self.records.next() {
                    if let Some(s) = ebpf_socket::decode(&item) {
                        records.push(s);
                    }
                }
                if ret & 1 == 0 {
                    done = true;
                    break;
                }
            }
            if !done {
                return Err(format!("the walk did not end in {MAX_RUNS} runs"));
            }
        }
        ebpf_socket::settle(&mut records);
        let entries = records.len();
        let mut sockets: HashMap<u64, Vec<Connection>> = HashMap::new();
        for s in records {
            sockets.entry(u64::from(s.netns)).or_default().push(s.connection);
        }
        self.last_entries = entries;
        Ok(TableRead { sockets, entries })
    }
}

/// Whether an error means the kernel refuses eBPF to this process (as opposed to a
/// defect of the object).
pub fn is_refusal(e: &LoadError) -> bool {
    let text = e.to_string();
    text.contains("Operation not permitted")
        || text.contains("Permission denied")
        || matches!(e, LoadError::Kallsyms(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_gives_text_addresses_and_hidden_ones_are_none() {
        let text = "ffffffff820668f0 t tw_timer_handler\nffffffff82068e90 t reqsk_timer_handler\nffffffff81000000 d tw_timer_handler_data\n";
        assert_eq!(
            parse_kallsyms(text, &[TIMEWAIT_HANDLER, REQUEST_HANDLER]),
            vec![Some(0xffffffff820668f0), Some(0xffffffff82068e90)]
        );
        let hidden = "0000000000000000 t tw_timer_handler\n0000000000000000 t reqsk_timer_handler\n";
        assert_eq!(parse_kallsyms(hidden, &[TIMEWAIT_HANDLER, REQUEST_HANDLER]), vec![None, None]);
        assert_eq!(parse_kallsyms("garbage\n\nffff t\n", &[TIMEWAIT_HANDLER]), vec![None]);
    }
}
