//! Which process owns a socket (`--collector.connections.owner`): socket inodes mapped
//! to the command name (`comm`) and systemd unit of a process holding them, found by
//! walking `<procfs>/<pid>/fd` incrementally (`walk.rs`).
//!
//! A socket held by several processes (a pre-fork server's listener, a descriptor
//! inherited over fork) takes the one with the lowest pid, usually the parent that made
//! it. A socket whose holder cannot be seen (permissions, a race with exit, TIME_WAIT
//! with no holder) has no owner and is still counted, as `process=""`.

mod walk;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An owner as a small integer into [`OwnerTable`]; 0 is "no owner seen".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub u32);

/// The owners' names of one read; sockets refer to them by [`OwnerId`].
#[derive(Debug)]
pub struct OwnerTable {
    /// (process, systemd_unit) per id, each pair once; id 0 is ("", "").
    names: Vec<(String, String)>,
}

impl Default for OwnerTable {
    fn default() -> OwnerTable {
        OwnerTable { names: vec![(String::new(), String::new())] }
    }
}

impl OwnerTable {
    /// `process` label.
    pub fn process(&self, id: OwnerId) -> &str {
        self.names.get(id.0 as usize).map_or("", |n| n.0.as_str())
    }

    /// `systemd_unit` label.
    pub fn unit(&self, id: OwnerId) -> &str {
        self.names.get(id.0 as usize).map_or("", |n| n.1.as_str())
    }

    /// How many distinct owners (pairs of process and unit) the read has.
    pub fn len(&self) -> usize {
        self.names.len() - 1
    }

    /// Whether no socket of the read has an owner.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The systemd unit a cgroup path runs in: its innermost `.service` or `.scope`
/// component (a container's payload unit beats the container's scope); empty when
/// there is none.
pub fn unit_of(cgroup_text: &str) -> String {
    let path = cgroup_text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| cgroup_text.lines().find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p)))
        .unwrap_or("");
    path.split('/').rfind(|c| c.ends_with(".service") || c.ends_with(".scope")).unwrap_or("").to_owned()
}

/// Capabilities the owner walk needs for other users' processes and this process
/// lacks: CAP_DAC_READ_SEARCH (bit 2) to list their `fd` directories, CAP_SYS_PTRACE
/// (bit 19) to read the links in them. Root owns most processes and needs neither for
/// its own.
pub fn missing_capabilities(procfs: &Path) -> Vec<&'static str> {
    let status = std::fs::read_to_string(procfs.join("self/status")).unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    [(2, "CAP_DAC_READ_SEARCH"), (19, "CAP_SYS_PTRACE")]
        .into_iter()
        .filter(|(bit, _)| effective & (1u64 << bit) == 0)
        .map(|(_, name)| name)
        .collect()
}

/// The inode in a descriptor link's text, `socket:[12345]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    crate::parse::process::link_inode(link, "socket")
}

pub use walk::CYCLE;

/// The owner walk and the cache it keeps between reads.
pub struct Owners {
    procfs: PathBuf,
    budget: Duration,
    state: Mutex<walk::State>,
}

impl Owners {
    /// Owners from the processes under `procfs`, the descriptor walk of one read
    /// bounded by `budget`.
    pub fn new(procfs: PathBuf, budget: Duration) -> Owners {
        Owners { procfs, budget, state: Mutex::new(walk::State::default()) }
    }

    /// The owners of the sockets of one read, given as their inodes (0 for a socket
    /// with none): the table of names and each socket's owner, in the order given.
    /// Inodes cached from earlier reads keep their owner without a visit to any
    /// process; only the others are searched for (see `walk.rs`).
    pub fn resolve(&self, inodes: &[u32]) -> (OwnerTable, Vec<OwnerId>) {
        let deadline = Instant::now() + self.budget;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.update(&self.procfs, inodes, deadline);
        state.table(inodes)
    }

    /// The owners the reads so far found for `inodes`, without a walk: for the lifecycle
    /// thread, which needs its listeners' owners between scrapes. A walk for so few
    /// inodes would drop every other socket from the cache; the scrapes' reads, which see
    /// the listeners too, keep it current.
    pub fn known(&self, inodes: &[u32]) -> (OwnerTable, Vec<OwnerId>) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.table(inodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_the_innermost_service_or_scope() {
        assert_eq!(unit_of("0::/system.slice/ssh.service\n"), "ssh.service");
        assert_eq!(unit_of("0::/user.slice/user-0.slice/session-4.scope\n"), "session-4.scope");
        assert_eq!(
            unit_of("0::/machine.slice/machine-web.scope/payload/system.slice/nginx.service\n"),
            "nginx.service"
        );
        assert_eq!(unit_of("12:name=systemd:/system.slice/cron.service\n0::/\n"), "");
        assert_eq!(unit_of("12:name=systemd:/system.slice/cron.service\n"), "cron.service");
        assert_eq!(unit_of("0::/\n"), "");
        assert_eq!(unit_of(""), "");
    }

    #[test]
    fn socket_links_parse_and_others_do_not() {
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn the_walk_finds_this_process_s_own_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = {
            use std::os::fd::AsRawFd;
            let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
            socket_inode(link.to_str().unwrap()).unwrap()
        };
        let owners = Owners::new(PathBuf::from("/proc"), Duration::from_secs(30));
        let (t, ids) = owners.resolve(&[0, inode as u32]);
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(t.process(ids[1]), comm.trim_end());
        assert_eq!(ids[0], OwnerId::default());
    }
}
