//! The socket walk of `--collector.namespaces=all` (`bpf/sockets.bpf.c`): loads it and
//! reads every namespace's sockets in one pass over the host's TCP hash table, where the
//! dumps walk that table once per namespace and family.
//!
//! The walk runs at read time (`BPF_PROG_TEST_RUN`) and writes one record per socket to a
//! ring buffer drained here; a full ring ends a run, and the next run goes on from the
//! bucket it reached. Nothing is kept between reads: a socket is read where the kernel
//! keeps it, as a dump reads it. Namespaces with a TCP table of their own are not in
//! that table: the caller reads them with their (cheap) dumps.

use std::collections::HashMap;
use std::sync::Mutex;

use aya::maps::{Array, MapData, MapError, RingBuf};
use aya::programs::{ProgramError, RawTracePoint, RawTracePointRunOptions, TestRun};
use aya::{Ebpf, EbpfError, EbpfLoader};

use crate::model::Connection;
use crate::parse::ebpf_socket;

/// The object `scripts/build-bpf.sh` compiles from `bpf/sockets.bpf.c`.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/sockets.bpf.o");

/// Indexes of the program's `out` map.
const OUT_NEXT: u32 = 0;
const OUT_TOTAL: u32 = 1;
const OUT_PASSES: u32 = 3;
const OUT_ERROR: u32 = 4;

/// Values of `OUT_ERROR`.
const ERROR_PERNET: u64 = 1;
const ERROR_CHAIN: u64 = 2;
const ERROR_PASSES: u64 = 3;

/// The walk's ring buffer: 14,500 records of 72 bytes (with the ring's header) a run; a
/// larger machine takes more runs, each going on from the bucket the last one reached
/// (a run costs one syscall; the ring's pages stay resident once written).
const RECORDS_BYTES: u32 = 1 << 20;
/// Runs of the walk one read may take: 65,536 x 14,500 records is past any machine.
const MAX_RUNS: usize = 65_536;

/// `--collector.namespaces.source`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TableChoice {
    /// The walk when the kernel lets this process load it, the dumps otherwise.
    #[default]
    Auto,
    /// The walk; when it cannot be loaded, an error is logged and the dumps are used.
    Ebpf,
    /// A sock_diag dump per namespace.
    Netlink,
}

/// Why the walk could not be loaded; the reads then use the dumps.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel refused the object.
    #[error("loading the eBPF object: {0}")]
    Object(Box<EbpfError>),
    /// The program could not be loaded.
    #[error("loading the walk program: {0}")]
    Program(Box<ProgramError>),
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
    /// The first walk failed.
    #[error("a first walk: {0}")]
    Walk(ReadError),
}

/// What the walk has done, for its self-metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableState {
    /// Sockets the last read found (every namespace sharing the host's table).
    pub entries: usize,
    /// Buckets read again because the walk left their chain (a socket freed and reused
    /// while it was read), since start.
    pub rereads: u64,
}

/// Why a read did not come from the walk; the caller reads with the dumps.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The exporter's namespace has a TCP table of its own: the host's is out of reach.
    #[error("the exporter's network namespace has a TCP hash table of its own (net.ipv4.tcp_child_ehash_entries was set when it was made): the host's table, which the other namespaces share, is out of the walk's reach")]
    OwnTable,
    /// A bucket's chain was longer than the walk follows, or kept moving.
    #[error("bucket {bucket} of the TCP hash table {why}")]
    Chain {
        /// The bucket.
        bucket: u64,
        /// What it did.
        why: &'static str,
    },
    /// The walk failed.
    #[error("walking the TCP hash table: {0}")]
    Walk(String),
}

impl ReadError {
    /// The `reason` label of `conn_exporter_socket_table_fallbacks_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Chain { .. } => "chain",
            ReadError::OwnTable | ReadError::Walk(_) => "error",
        }
    }
}

/// Every namespace's sockets, by the inode of the namespace.
pub struct TableRead {
    /// The sockets of each namespace that shares the host's table (and the listeners of
    /// every namespace: the listening hash is always shared).
    pub sockets: HashMap<u64, Vec<Connection>>,
    /// Sockets the walk found (all namespaces of the machine).
    pub entries: usize,
}

struct Inner {
    bpf: Ebpf,
    records: RingBuf<MapData>,
    out: Array<MapData, u64>,
    /// Records written by the last read.
    last_entries: usize,
    rereads: u64,
}

/// The loaded walk.
pub struct SocketTable {
    inner: Mutex<Inner>,
}

impl SocketTable {
    /// Loads the walk and reads once, so that a kernel or namespace it cannot serve is
    /// known at start.
    pub fn load() -> Result<SocketTable, LoadError> {
        let mut bpf = EbpfLoader::new()
            .map_max_entries("records", RECORDS_BYTES)
            .load(OBJECT)
            .map_err(|e| LoadError::Object(Box::new(e)))?;
        let walk: &mut RawTracePoint = bpf
            .program_mut("walk")
            .ok_or(LoadError::Missing("walk"))?
            .try_into()
            .map_err(|e| LoadError::Program(Box::new(e)))?;
        walk.load().map_err(|e| LoadError::Program(Box::new(e)))?;
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
            bpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, LoadError> {
            let map = bpf.take_map(name).ok_or(LoadError::Missing(name))?;
            T::try_from(map).map_err(|source| LoadError::Map { name, source })
        }
        let records = take(&mut bpf, "records")?;
        let out = take(&mut bpf, "out")?;
        let table = SocketTable { inner: Mutex::new(Inner { bpf, records, out, last_entries: 0, rereads: 0 }) };
        table.lock().walk().map_err(LoadError::Walk)?;
        Ok(table)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the walk found last and has done.
    pub fn state(&self) -> TableState {
        let inner = self.lock();
        TableState { entries: inner.last_entries, rereads: inner.rereads }
    }

    /// Reads every namespace's sockets, or says why the walk cannot tell them.
    pub fn read(&self) -> Result<TableRead, ReadError> {
        self.lock().walk()
    }
}

impl Inner {
    fn out(&self, i: u32) -> u64 {
        self.out.get(&i, 0).unwrap_or(0)
    }

    /// One read: runs of the walk until every bucket is read, then its records settled
    /// and sorted by namespace.
    fn walk(&mut self) -> Result<TableRead, ReadError> {
        let mut records = Vec::with_capacity(self.last_entries + self.last_entries / 8);
        let walk: &RawTracePoint = self
            .bpf
            .program("walk")
            .ok_or_else(|| ReadError::Walk("no walk program".to_owned()))?
            .try_into()
            .map_err(|e: ProgramError| ReadError::Walk(e.to_string()))?;
        let mut start = 0u64;
        let mut done = false;
        for _ in 0..MAX_RUNS {
            let mut opts = RawTracePointRunOptions::new();
            opts.args[0] = start;
            walk.test_run(opts).map_err(|e| ReadError::Walk(e.to_string()))?;
            while let Some(item) = self.records.next() {
                if let Some(s) = ebpf_socket::decode(&item) {
                    ebpf_socket::push_keeping_last_pass(&mut records, s);
                }
            }
            self.rereads += self.out(OUT_PASSES);
            let next = self.out(OUT_NEXT);
            // A run that ended inside a bucket (no room for another reading of it): the
            // next run reads that bucket from the start.
            ebpf_socket::drop_bucket_tail(&mut records, next);
            match self.out(OUT_ERROR) {
                0 => {}
                ERROR_PERNET => return Err(ReadError::OwnTable),
                ERROR_CHAIN => {
                    return Err(ReadError::Chain { bucket: next, why: "held a longer chain than the walk follows" })
                }
                ERROR_PASSES => return Err(ReadError::Chain { bucket: next, why: "kept changing while it was read" }),
                e => return Err(ReadError::Walk(format!("error {e}"))),
            }
            if next >= self.out(OUT_TOTAL) {
                done = true;
                break;
            }
            if next <= start && start != 0 {
                return Err(ReadError::Walk(format!("the walk made no progress at bucket {start}")));
            }
            start = next;
        }
        if !done {
            return Err(ReadError::Walk(format!("the walk did not end in {MAX_RUNS} runs")));
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
    text.contains("Operation not permitted") || text.contains("Permission denied")
}
