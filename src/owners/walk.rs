//! The incremental owner walk: which process holds each socket inode of a read, kept
//! between reads so that a steady host costs almost no descriptor reads.
//!
//! Kept: inode → owning pid for the sockets of the last read, and per process its
//! `/proc` directory's inode, start time, name, unit and the sockets it owned when its
//! descriptors were last read. Each read:
//! - drops the inodes that left the read and the processes that left `<procfs>` (a pid
//!   whose directory inode changed and whose start time differs is a reused pid: dropped
//!   too); their sockets that are still open become unknown;
//! - searches for unknown inodes only: first in processes not seen before (ascending
//!   pid; one that had new sockets has its parent read too, as a parent that forked
//!   with a socket usually keeps it and has the lower pid), then in the children of
//!   processes that went (which often hold what their parent held), then in processes
//!   whose sockets changed in the last [`HOT`] reads (fewest sockets first), stopping as
//!   soon as none is unknown;
//! - always re-reads the descriptors of a round-robin slice of 1/[`CYCLE`] of the
//!   processes (ascending pid, wrapping), so that every process is read at least once
//!   every [`CYCLE`] reads: a socket that moved between live processes, a lower pid that
//!   came to share a socket, a name changed by exec are corrected there;
//! - stops any visit once the time budget is spent: sockets still unknown have no owner
//!   (`process=""`) until a later read finds them.
//!
//! Every visit applies the lowest-pid rule: a socket found in a process with a lower pid
//! than its cached owner moves to it. As the search stops once every socket is found, a
//! lower pid can be missed for a while: one that comes to hold a cached socket (passed
//! to it), or a holder of a new socket, other than the new process's parent, not
//! reached before another holder was. Each is corrected when that process is re-read,
//! within [`CYCLE`] reads. A socket whose owner let go of it (passed over a unix
//! socket) is unknown from the owner's re-read (≤ [`CYCLE`] reads) until the new
//! holder's (at once when it is new or busy, else ≤ [`CYCLE`] more).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

use nix::dir::Dir;
use nix::fcntl::{readlinkat, OFlag};
use nix::sys::stat::Mode;

use super::{socket_inode, unit_of, OwnerId, OwnerTable};

/// Reads in which every process's descriptors are re-read at least once.
pub const CYCLE: usize = 16;

/// A process whose owned sockets changed within this many reads is searched before
/// the round-robin others (a server that accepted or closed connections).
pub const HOT: u64 = 4;

/// A hasher for the integer keys here (inodes, pids): the kernel hands them out, nobody
/// can pick them to collide, so SipHash's protection buys nothing and its cost is a
/// fair part of a read with 100,000 sockets. Multiply-and-rotate, as rustc's FxHash.
#[derive(Default, Clone, Copy)]
struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;
type IntSet<K> = HashSet<K, BuildHasherDefault<IntHasher>>;

/// What is kept of a process whose descriptors were read.
#[derive(Debug)]
struct Proc {
    /// Inode of `<procfs>/<pid>` as listed: the kernel gives a new one when the pid
    /// comes back for another process (and, rarely, for the same one after it dropped
    /// the directory's cache entry: the start time then tells).
    dir_ino: u64,
    start: u64,
    parent: u32,
    comm: String,
    unit: String,
    /// The sockets it owned at its last visit, sorted.
    owned: Vec<u64>,
    /// The read in which its owned sockets last changed (0: never since its first visit).
    active: u64,
}

/// A socket inode's owner, and the read that last saw the inode.
#[derive(Debug, Clone, Copy)]
struct Holder {
    pid: u32,
    seen: u64,
}

/// The cache of [`super::Owners`].
#[derive(Debug, Default)]
pub struct State {
    /// Reads so far.
    generation: u64,
    procs: IntMap<u32, Proc>,
    holders: IntMap<u64, Holder>,
    /// The round-robin slice starts at the first listed pid at or above this one.
    cursor: u32,
    /// Counters of the last update, for tests and debug logs.
    pub(super) last: Visits,
}

/// What one update did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Visits {
    /// Processes whose descriptors were read.
    pub processes: usize,
    /// Descriptor links read.
    pub links: usize,
    /// Sockets left without an owner.
    pub unknown: usize,
}

/// A process's start time and parent pid, from its `stat`.
fn start_and_parent(dir: &Path) -> Option<(u64, u32)> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let start = crate::parse::process::parse_stat(&stat)?.starttime;
    // Field 4 of proc(5), the second after the command name.
    let ppid = stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()?;
    Some((start, ppid))
}

/// Pids under `procfs` with their directories' inodes, ascending.
fn list(procfs: &Path) -> Vec<(u32, u64)> {
    use std::os::unix::fs::DirEntryExt;
    let mut pids: Vec<(u32, u64)> = std::fs::read_dir(procfs)
        .map(|d| d.flatten().filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.ino()))).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

impl State {
    /// Brings the cache up to date with the sockets of a read (`inodes`, 0 for none),
    /// visiting processes until `deadline`.
    pub fn update(&mut self, procfs: &Path, inodes: &[u32], deadline: Instant) {
        self.generation += 1;
        let generation = self.generation;
        let mut unknown = IntSet::default();
        for &inode in inodes {
            if inode == 0 {
                continue;
            }
            match self.holders.get_mut(&u64::from(inode)) {
                Some(h) => h.seen = generation,
                None => {
                    unknown.insert(u64::from(inode));
                }
            }
        }
        let procs = &mut self.procs;
        self.holders.retain(|_, h| {
            if h.seen == generation {
                return true;
            }
            // A process that closed sockets probably opens others: search it early.
            if let Some(p) = procs.get_mut(&h.pid) {
                p.active = generation;
            }
            false
        });

        let listed = list(procfs);
        let mut fresh = Vec::new();
        let mut gone: Vec<u32> =
            self.procs.keys().filter(|pid| listed.binary_search_by_key(*pid, |l| l.0).is_err()).copied().collect();
        for &(pid, ino) in &listed {
            match self.procs.get_mut(&pid) {
                None => fresh.push((pid, ino)),
                Some(p) if p.dir_ino != ino => {
                    if start_and_parent(&procfs.join(pid.to_string())).map(|s| s.0) == Some(p.start) {
                        p.dir_ino = ino;
                    } else {
                        gone.push(pid);
                        fresh.push((pid, ino));
                    }
                }
                Some(_) => {}
            }
        }
        // The children of a process that went often hold what it held (inherited over
        // fork): they are searched before the others.
        let mut orphans: Vec<(u32, u64)> = Vec::new();
        if !gone.is_empty() {
            let gone: IntSet<u32> = gone.iter().copied().collect();
            orphans = self
                .procs
                .iter()
                .filter(|(pid, p)| gone.contains(&p.parent) && !gone.contains(*pid))
                .map(|(&pid, p)| (pid, p.dir_ino))
                .collect();
            orphans.sort_unstable();
        }
        for pid in gone {
            self.forget(pid, &mut unknown);
        }

        let mut walk =
            Walk { procfs, deadline, generation, unknown, visited: IntSet::default(), visits: Visits::default() };
        for &(pid, ino) in &fresh {
            if walk.unknown.is_empty() || walk.over() {
                break;
            }
            if self.visit(&mut walk, pid, ino) == 0 {
                continue;
            }
            // A new process with new sockets was often forked by a holder of them that
            // stays (systemd's Accept=yes, a server forking per connection): the lower
            // pid owns them, read it now rather than at its turn.
            let parent = self.procs.get(&pid).map(|p| p.parent).filter(|pp| *pp < pid && !walk.visited.contains(pp));
            if let Some((pp, pino)) = parent.and_then(|pp| Some((pp, self.procs.get(&pp)?.dir_ino))) {
                self.visit(&mut walk, pp, pino);
            }
        }
        for (pid, ino) in orphans {
            if walk.unknown.is_empty() || walk.over() {
                break;
            }
            if !walk.visited.contains(&pid) {
                self.visit(&mut walk, pid, ino);
            }
        }
        if !walk.unknown.is_empty() {
            // Fewest sockets first: the search stops once nothing is unknown, and the
            // few new sockets of a quiet host (this exporter's own scrape connection)
            // are more often in small processes than in the busiest.
            let mut hot: Vec<(usize, u32, u64)> = self
                .procs
                .iter()
                .filter(|(pid, p)| p.active > 0 && generation - p.active < HOT && !walk.visited.contains(*pid))
                .map(|(&pid, p)| (p.owned.len(), pid, p.dir_ino))
                .collect();
            hot.sort_unstable();
            for (_, pid, ino) in hot {
                if walk.unknown.is_empty() || walk.over() {
                    break;
                }
                self.visit(&mut walk, pid, ino);
            }
        }
        // The round-robin slice, whatever is still unknown.
        if !listed.is_empty() {
            let slice = listed.len().div_ceil(CYCLE);
            let first = listed.partition_point(|l| l.0 < self.cursor);
            for i in 0..slice {
                if walk.over() {
                    break;
                }
                let (pid, ino) = listed[(first + i) % listed.len()];
                self.cursor = pid.wrapping_add(1);
                if !walk.visited.contains(&pid) {
                    self.visit(&mut walk, pid, ino);
                }
            }
        }
        walk.visits.unknown = walk.unknown.len();
        self.last = walk.visits;
        log::debug!(
            "owners: {} processes listed, {} cached, {} new, read the descriptors of {} ({} links), {} of {} sockets unknown",
            listed.len(),
            self.procs.len(),
            fresh.len(),
            walk.visits.processes,
            walk.visits.links,
            walk.visits.unknown,
            self.holders.len() + walk.visits.unknown
        );
    }

    /// Drops a process; its sockets that are still open become unknown.
    fn forget(&mut self, pid: u32, unknown: &mut IntSet<u64>) {
        let Some(p) = self.procs.remove(&pid) else { return };
        for inode in p.owned {
            if self.holders.get(&inode).is_some_and(|h| h.pid == pid) {
                self.holders.remove(&inode);
                unknown.insert(inode);
            }
        }
    }

    /// Reads a process's name, unit and descriptors and applies them: its sockets of
    /// the read become its own unless a lower pid holds them, sockets it owned and let
    /// go of become unknown.
    fn visit(&mut self, walk: &mut Walk<'_>, pid: u32, dir_ino: u64) -> usize {
        walk.visited.insert(pid);
        let dir = walk.procfs.join(pid.to_string());
        let first = !self.procs.contains_key(&pid);
        if first {
            let Some((start, parent)) = start_and_parent(&dir) else { return 0 };
            let p =
                Proc { dir_ino, start, parent, comm: String::new(), unit: String::new(), owned: Vec::new(), active: 0 };
            self.procs.insert(pid, p);
        }
        // Read at every visit: exec and prctl change the name, a process may move to
        // another cgroup.
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim_end().to_owned();
        let unit = std::fs::read_to_string(dir.join("cgroup")).map(|t| unit_of(&t)).unwrap_or_default();
        let Ok(mut fds) = Dir::open(&dir.join("fd"), OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()) else {
            // Not allowed, or it exited: what was known stays until it leaves the list.
            return 0;
        };
        walk.visits.processes += 1;
        let at = fds.as_raw_fd();
        let mut held = Vec::new();
        for entry in fds.iter().flatten() {
            let name = entry.file_name();
            if name.to_bytes().starts_with(b".") {
                continue;
            }
            walk.visits.links += 1;
            // Relative to the open directory: the kernel walks one name, not the
            // whole `/proc/<pid>/fd/<n>` path, for each of what may be thousands.
            if let Some(inode) =
                readlinkat(Some(at), name).ok().as_deref().and_then(|l| l.to_str()).and_then(socket_inode)
            {
                held.push(inode);
            }
        }
        held.sort_unstable();
        held.dedup();
        let mut owned = Vec::with_capacity(held.len());
        let mut claimed = 0;
        for &inode in &held {
            match self.holders.get_mut(&inode) {
                Some(h) if h.pid < pid => {}
                Some(h) => {
                    h.pid = pid;
                    owned.push(inode);
                }
                // Not a socket of the read (another protocol, another namespace).
                None if !walk.unknown.remove(&inode) => {}
                None => {
                    self.holders.insert(inode, Holder { pid, seen: walk.generation });
                    owned.push(inode);
                    claimed += 1;
                }
            }
        }
        let Some(p) = self.procs.get_mut(&pid) else { return claimed };
        for &inode in &p.owned {
            if held.binary_search(&inode).is_err() && self.holders.get(&inode).is_some_and(|h| h.pid == pid) {
                self.holders.remove(&inode);
                walk.unknown.insert(inode);
            }
        }
        // What a process holds when first seen is no sign of activity.
        if owned != p.owned && !first {
            p.active = walk.generation;
        }
        p.owned = owned;
        p.comm = comm;
        p.unit = unit;
        claimed
    }

    /// The names of the owners of `inodes` and each one's owner, in order.
    pub fn table(&self, inodes: &[u32]) -> (OwnerTable, Vec<OwnerId>) {
        let mut table = OwnerTable::default();
        let mut by_pid: IntMap<u32, OwnerId> = IntMap::default();
        let mut by_name: HashMap<(&str, &str), OwnerId> = HashMap::new();
        let ids = inodes
            .iter()
            .map(|&inode| {
                let Some(h) = self.holders.get(&u64::from(inode)).filter(|_| inode != 0) else {
                    return OwnerId::default();
                };
                *by_pid.entry(h.pid).or_insert_with(|| {
                    let Some(p) = self.procs.get(&h.pid) else { return OwnerId::default() };
                    *by_name.entry((p.comm.as_str(), p.unit.as_str())).or_insert_with(|| {
                        table.names.push((p.comm.clone(), p.unit.clone()));
                        OwnerId(table.names.len() as u32 - 1)
                    })
                })
            })
            .collect();
        (table, ids)
    }
}

/// One update's walk in progress.
struct Walk<'a> {
    procfs: &'a Path,
    deadline: Instant,
    generation: u64,
    /// Sockets of the read with no owner yet.
    unknown: IntSet<u64>,
    /// Processes visited in this update.
    visited: IntSet<u32>,
    visits: Visits,
}

impl Walk<'_> {
    fn over(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A procfs of made-up processes: `<pid>/stat`, `comm`, `cgroup` and `fd/<n>` links
    /// whose targets are `socket:[inode]`, as the kernel shows them.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture { dir: tempfile::tempdir().unwrap() }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn fill(dir: &Path, pid: u32, parent: u32, comm: &str, start: u64, sockets: &[u32]) {
            std::fs::create_dir_all(dir.join("fd")).unwrap();
            let stat = format!(
                "{pid} ({comm}) S {parent} {pid} {pid} 0 -1 4194560 0 0 0 0 1 1 0 0 20 0 1 0 {start} 1000 10 0"
            );
            std::fs::write(dir.join("stat"), stat).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(dir.join("cgroup"), format!("0::/system.slice/{comm}.service\n")).unwrap();
            std::os::unix::fs::symlink("/dev/null", dir.join("fd/0")).unwrap();
            std::os::unix::fs::symlink("pipe:[77]", dir.join("fd/1")).unwrap();
            for (n, inode) in sockets.iter().enumerate() {
                std::os::unix::fs::symlink(format!("socket:[{inode}]"), dir.join(format!("fd/{}", n + 3))).unwrap();
            }
        }

        fn process(&self, pid: u32, comm: &str, sockets: &[u32]) {
            self.child(pid, 1, comm, sockets);
        }

        fn child(&self, pid: u32, parent: u32, comm: &str, sockets: &[u32]) {
            Self::fill(&self.path().join(pid.to_string()), pid, parent, comm, 1000 + u64::from(pid), sockets);
        }

        /// Replaces a process's descriptors.
        fn hold(&self, pid: u32, sockets: &[u32]) {
            let fd = self.path().join(pid.to_string()).join("fd");
            std::fs::remove_dir_all(&fd).unwrap();
            std::fs::create_dir(&fd).unwrap();
            for (n, inode) in sockets.iter().enumerate() {
                std::os::unix::fs::symlink(format!("socket:[{inode}]"), fd.join(format!("{}", n + 3))).unwrap();
            }
        }

        fn exit(&self, pid: u32) {
            std::fs::remove_dir_all(self.path().join(pid.to_string())).unwrap();
        }

        /// Another process under a pid that was used before: a new directory (made
        /// before the old one goes, so that its inode differs) and a later start time.
        fn reuse(&self, pid: u32, comm: &str, sockets: &[u32]) {
            let next = self.path().join(format!("{pid}.next"));
            Self::fill(&next, pid, 1, comm, 90_000 + u64::from(pid), sockets);
            self.exit(pid);
            std::fs::rename(next, self.path().join(pid.to_string())).unwrap();
        }
    }

    /// One update and each socket's `process` label.
    fn read(state: &mut State, fx: &Fixture, inodes: &[u32]) -> Vec<String> {
        state.update(fx.path(), inodes, Instant::now() + Duration::from_secs(60));
        let (table, ids) = state.table(inodes);
        ids.iter().map(|&id| table.process(id).to_owned()).collect()
    }

    /// 40 processes `p100`..`p139` (pid 100 + i holds socket 1000 + i): a slice is 3.
    fn forty() -> Fixture {
        let fx = Fixture::new();
        for i in 0..40 {
            fx.process(100 + i, &format!("p{}", 100 + i), &[1000 + i]);
        }
        fx
    }

    fn forty_inodes() -> Vec<u32> {
        (0..40).map(|i| 1000 + i).collect()
    }

    #[test]
    fn the_first_read_finds_every_owner_and_later_reads_visit_a_slice() {
        let fx = forty();
        let mut state = State::default();
        let inodes = forty_inodes();
        let want: Vec<String> = (0..40).map(|i| format!("p{}", 100 + i)).collect();
        assert_eq!(read(&mut state, &fx, &inodes), want);
        assert_eq!(state.last.processes, 40);
        // Nothing changed: only the round-robin slice is read, owners stay.
        for _ in 0..3 {
            assert_eq!(read(&mut state, &fx, &inodes), want);
            assert_eq!(state.last.processes, 40usize.div_ceil(CYCLE));
            assert_eq!(state.last.unknown, 0);
        }
    }

    #[test]
    fn owners_with_the_same_name_and_unit_share_an_id() {
        let fx = forty();
        // Two more `p100` processes in `p100.service` (workers of one server), one in
        // another unit.
        fx.process(140, "p100", &[1040]);
        fx.process(141, "p100", &[1041]);
        fx.process(142, "p100", &[1042]);
        std::fs::write(fx.path().join("142/cgroup"), "0::/system.slice/other.service\n").unwrap();
        let mut state = State::default();
        let inodes = [1000, 0, 4242, 1040, 1001, 1041, 1042];
        read(&mut state, &fx, &inodes);
        let (table, ids) = state.table(&inodes);
        // No owner is id 0; one id per (process, unit), or one scrape would hold
        // duplicate series.
        assert_eq!(ids, [OwnerId(1), OwnerId(0), OwnerId(0), OwnerId(1), OwnerId(2), OwnerId(1), OwnerId(3)]);
        assert_eq!((table.process(ids[0]), table.unit(ids[0]), table.len()), ("p100", "p100.service", 3));
        assert_eq!((table.process(ids[6]), table.unit(ids[6])), ("p100", "other.service"));
    }

    #[test]
    fn a_new_socket_is_found_at_once_in_a_new_process_and_in_one_that_changed() {
        let fx = forty();
        let mut state = State::default();
        let mut inodes = forty_inodes();
        read(&mut state, &fx, &inodes);
        read(&mut state, &fx, &inodes);
        // A new process (pid below the others, out of the next slice) with a new socket.
        fx.process(50, "newcomer", &[5000]);
        inodes.push(5000);
        assert_eq!(read(&mut state, &fx, &inodes).last().unwrap(), "newcomer");
        // A server replaces a connection: it lost one, so it is searched first.
        fx.hold(120, &[5001]);
        inodes.retain(|&i| i != 1020);
        inodes.push(5001);
        assert_eq!(read(&mut state, &fx, &inodes).last().unwrap(), "p120");
        assert_eq!(state.last.unknown, 0);
    }

    #[test]
    fn gone_sockets_and_processes_are_dropped() {
        let fx = forty();
        let mut state = State::default();
        let inodes = forty_inodes();
        read(&mut state, &fx, &inodes);
        // Half the sockets close; process 139 exits.
        let fewer: Vec<u32> = inodes.iter().copied().filter(|i| i % 2 == 0).collect();
        fx.exit(139);
        read(&mut state, &fx, &fewer);
        assert_eq!(state.holders.len(), 20);
        assert!(state.holders.keys().all(|i| i % 2 == 0), "{:?}", state.holders.keys());
        assert_eq!(state.procs.len(), 39);
        assert!(!state.procs.contains_key(&139));
        // An inode number the read no longer had, back with no holder: no owner.
        fx.hold(101, &[]);
        let back = [1000, 1001];
        assert_eq!(read(&mut state, &fx, &back), ["p100", ""]);
    }

    #[test]
    fn a_reused_pid_is_another_process() {
        let fx = Fixture::new();
        fx.process(30, "old", &[300]);
        fx.process(31, "child", &[300]);
        fx.process(32, "other", &[320]);
        let mut state = State::default();
        assert_eq!(read(&mut state, &fx, &[300, 320]), ["old", "other"]);
        // 30 exits and its pid comes back for a process holding a new socket; the
        // child still holds the shared one.
        fx.reuse(30, "new", &[301]);
        assert_eq!(read(&mut state, &fx, &[300, 301, 320]), ["child", "new", "other"]);
    }

    #[test]
    fn the_lowest_pid_wins_a_shared_socket() {
        let fx = forty();
        fx.hold(105, &[1005, 7000]);
        fx.hold(103, &[1003, 7000]);
        fx.hold(130, &[1030, 7000]);
        let mut state = State::default();
        let mut inodes = forty_inodes();
        inodes.push(7000);
        assert_eq!(read(&mut state, &fx, &inodes).last().unwrap(), "p103");
        // The lowest holder exits: the next lowest, once its descriptors are read.
        fx.exit(103);
        inodes.retain(|&i| i != 1003);
        let mut seen = Vec::new();
        for _ in 0..CYCLE {
            seen.push(read(&mut state, &fx, &inodes).last().unwrap().clone());
        }
        assert_eq!(seen.last().unwrap(), "p105", "{seen:?}");
    }

    #[test]
    fn a_parent_that_forked_with_a_new_socket_owns_it_at_once() {
        let fx = forty();
        let mut state = State::default();
        let mut inodes = forty_inodes();
        read(&mut state, &fx, &inodes);
        // 110 accepts a connection and forks 150 to serve it, keeping its copy (as
        // systemd does for Accept=yes services).
        fx.hold(110, &[1010, 5000]);
        fx.child(150, 110, "worker", &[5000]);
        inodes.push(5000);
        assert_eq!(read(&mut state, &fx, &inodes).last().unwrap(), "p110");
    }

    #[test]
    fn the_children_of_an_owner_that_exits_are_searched_at_once() {
        let fx = forty();
        // 110 made a listener and forked two workers that inherited it.
        fx.hold(110, &[1010, 7000]);
        fx.child(150, 110, "worker", &[7000]);
        fx.child(151, 110, "worker", &[7000]);
        let mut state = State::default();
        let mut inodes = forty_inodes();
        inodes.push(7000);
        assert_eq!(read(&mut state, &fx, &inodes).last().unwrap(), "p110");
        // Until the round-robin slice has read the workers (no longer new processes).
        for _ in 0..CYCLE {
            if state.procs.contains_key(&150) && state.procs.contains_key(&151) {
                break;
            }
            read(&mut state, &fx, &inodes);
        }
        assert!(state.procs.contains_key(&150) && state.procs.contains_key(&151));
        fx.exit(110);
        inodes.retain(|&i| i != 1010);
        assert_eq!(read(&mut state, &fx, &inodes).last().unwrap(), "worker");
    }

    #[test]
    fn owner_changes_are_corrected_within_the_bound() {
        let fx = forty();
        let mut state = State::default();
        let inodes = forty_inodes();
        read(&mut state, &fx, &inodes);
        // A socket passed over a unix socket: 110 lets go of 1010, 125 holds it.
        fx.hold(110, &[]);
        fx.hold(125, &[1025, 1010]);
        // A lower pid comes to share a cached socket: 101 gains 1030.
        fx.hold(101, &[1001, 1030]);
        let mut passed = Vec::new();
        let mut shared = Vec::new();
        for _ in 0..2 * CYCLE {
            let got = read(&mut state, &fx, &inodes);
            passed.push(got[10].clone());
            shared.push(got[30].clone());
        }
        // Never another process than the old or the new owner, or none in between.
        assert!(passed.iter().all(|p| ["p110", "", "p125"].contains(&p.as_str())), "{passed:?}");
        assert_eq!(passed.last().unwrap(), "p125", "{passed:?}");
        // The lower pid is found within one cycle.
        assert_eq!(shared[CYCLE - 1], "p101", "{shared:?}");
    }
}
