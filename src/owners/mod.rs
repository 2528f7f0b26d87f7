//! Which process owns a socket (`--collector.connections.owner`): socket inodes mapped
//! to the command name (`comm`) and systemd unit of a process holding them, found by
//! walking `<procfs>/<pid>/fd`.
//!
//! A socket held by several processes (a pre-fork server's listener, a descriptor
//! inherited over fork) takes the one with the lowest pid, usually the parent that made
//! it. A socket whose holder cannot be seen (permissions, a race with exit, TIME_WAIT
//! with no holder) has no owner and is still counted, as `process=""`.
//!
//! The walk is incremental: a process's name and unit are read once per process (kept
//! while its pid and start time stay), and its descriptors every scrape until a time
//! budget is spent; processes not reached in time keep the sockets they had last time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An owner as a small integer into [`OwnerTable`]; 0 is "no owner seen".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub u32);

/// Owners of the sockets of one read.
#[derive(Debug, Default)]
pub struct OwnerTable {
    /// (process, systemd_unit) per id; id 0 is ("", "").
    names: Vec<(String, String)>,
    by_inode: HashMap<u64, OwnerId>,
}

impl OwnerTable {
    /// The owner of a socket inode (0 and unknown inodes have none).
    pub fn owner(&self, inode: u64) -> OwnerId {
        if inode == 0 {
            return OwnerId::default();
        }
        self.by_inode.get(&inode).copied().unwrap_or_default()
    }

    /// `process` label.
    pub fn process(&self, id: OwnerId) -> &str {
        self.names.get(id.0 as usize).map_or("", |n| n.0.as_str())
    }

    /// `systemd_unit` label.
    pub fn unit(&self, id: OwnerId) -> &str {
        self.names.get(id.0 as usize).map_or("", |n| n.1.as_str())
    }

    /// How many socket inodes have an owner.
    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    /// Whether no socket has an owner.
    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
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

/// What is kept of a process between scrapes.
struct Known {
    start: u64,
    comm: String,
    unit: String,
    sockets: Vec<u64>,
}

/// The walker and its cache.
pub struct Owners {
    procfs: PathBuf,
    budget: Duration,
    cache: Mutex<HashMap<u32, Known>>,
}

fn start_time(procfs: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(procfs.join(pid.to_string()).join("stat")).ok()?;
    crate::parse::process::parse_stat(&stat).map(|s| s.starttime)
}

impl Owners {
    /// Owners from the processes under `procfs`, the descriptor walk of one scrape
    /// bounded by `budget`.
    pub fn new(procfs: PathBuf, budget: Duration) -> Owners {
        Owners { procfs, budget, cache: Mutex::new(HashMap::new()) }
    }

    /// Walks the processes and returns the owners of every socket seen.
    pub fn table(&self) -> OwnerTable {
        let deadline = Instant::now() + self.budget;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut pids: Vec<u32> = std::fs::read_dir(&self.procfs)
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        pids.sort_unstable();
        cache.retain(|pid, _| pids.binary_search(pid).is_ok());
        let mut link = PathBuf::new();
        for &pid in &pids {
            let dir = self.procfs.join(pid.to_string());
            let Some(start) = start_time(&self.procfs, pid) else {
                cache.remove(&pid);
                continue;
            };
            let fresh = cache.get(&pid).is_none_or(|k| k.start != start);
            if fresh {
                let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim_end().to_owned();
                let unit = std::fs::read_to_string(dir.join("cgroup")).map(|t| unit_of(&t)).unwrap_or_default();
                cache.insert(pid, Known { start, comm, unit, sockets: Vec::new() });
            } else if Instant::now() >= deadline {
                // Past the budget: this process keeps last scrape's sockets.
                continue;
            }
            let Ok(fds) = std::fs::read_dir(dir.join("fd")) else { continue };
            let mut sockets = Vec::new();
            for fd in fds.flatten() {
                link.clone_from(&fd.path());
                if let Some(inode) =
                    std::fs::read_link(&link).ok().as_deref().and_then(Path::to_str).and_then(socket_inode)
                {
                    sockets.push(inode);
                }
            }
            if let Some(k) = cache.get_mut(&pid) {
                k.sockets = sockets;
            }
        }
        let mut table = OwnerTable { names: vec![(String::new(), String::new())], by_inode: HashMap::new() };
        let mut ids: HashMap<(&str, &str), OwnerId> = HashMap::new();
        // Lowest pid first, so that it wins a shared socket.
        for pid in pids {
            let Some(k) = cache.get(&pid) else { continue };
            if k.sockets.is_empty() {
                continue;
            }
            let id = *ids.entry((k.comm.as_str(), k.unit.as_str())).or_insert_with(|| {
                table.names.push((k.comm.clone(), k.unit.clone()));
                OwnerId(table.names.len() as u32 - 1)
            });
            for &inode in &k.sockets {
                table.by_inode.entry(inode).or_insert(id);
            }
        }
        table
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
        let t = owners.table();
        let id = t.owner(inode);
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(t.process(id), comm.trim_end());
        assert_eq!(t.owner(0), OwnerId::default());
    }
}
