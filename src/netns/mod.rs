//! The host's network namespaces (`--collector.namespaces=all`): finding them, naming
//! them, and one dedicated OS thread per namespace that entered it once (`setns`) and
//! runs the reads of that namespace, kept while the namespace lives and ended when it
//! goes.
//!
//! A socket opened by a thread belongs to that thread's network namespace, and so does
//! getifaddrs' netlink socket: a job run on a namespace's thread reads that namespace.
//! The threads are never pooled async workers, which would carry the namespace into
//! unrelated work.

pub mod cgroup;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;

use nix::sched::{setns, CloneFlags};
use thiserror::Error;

/// Which namespaces are read (`--collector.namespaces`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NamespaceMode {
    /// The exporter's own network namespace only, without namespace labels.
    #[default]
    Host,
    /// Every network namespace on the host, with `netns`, `container_id` and `pod_uid`.
    All,
}

/// Why a namespace could not be read.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// Its namespace file could not be opened (another user's process needs
    /// CAP_SYS_PTRACE).
    #[error("opening {path}: {source}{hint}", hint = if source.kind() == io::ErrorKind::PermissionDenied { " (needs CAP_SYS_PTRACE)" } else { "" })]
    Open {
        /// The namespace file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The kernel refused to enter it (needs CAP_SYS_ADMIN).
    #[error("entering the network namespace of {path}: {source}{hint}", hint = if *source == nix::errno::Errno::EPERM { " (needs CAP_SYS_ADMIN)" } else { "" })]
    Enter {
        /// The namespace file.
        path: PathBuf,
        /// The error.
        source: nix::errno::Errno,
    },
    /// No thread could be started for it.
    #[error("starting the thread of network namespace {name}: {source}")]
    Thread {
        /// The namespace's label.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// Its thread stopped (the job panicked); the next read starts a new one.
    #[error("the thread of network namespace {0} stopped")]
    Stopped(String),
}

impl NetnsError {
    /// The capability whose absence this error shows, if it is one.
    pub fn missing_capability(&self) -> Option<&'static str> {
        match self {
            NetnsError::Open { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                Some("CAP_SYS_PTRACE")
            }
            NetnsError::Enter { source: nix::errno::Errno::EPERM, .. } => Some("CAP_SYS_ADMIN"),
            _ => None,
        }
    }

    /// Whether the namespace went away before it could be entered (its process exited).
    pub fn is_gone(&self) -> bool {
        matches!(self, NetnsError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(nix::errno::Errno::ESRCH as i32))
            || matches!(self, NetnsError::Enter { source: nix::errno::Errno::EINVAL, .. })
    }
}

/// Capabilities that `all` mode needs and this process lacks, from the effective set in
/// `<procfs>/self/status` (CAP_SYS_PTRACE is bit 19, CAP_SYS_ADMIN bit 21).
pub fn missing_capabilities(procfs: &Path) -> Vec<&'static str> {
    let status = std::fs::read_to_string(procfs.join("self/status")).unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    missing_from(effective)
}

/// The capabilities `all` mode needs that an effective set lacks.
pub fn missing_from(effective: u64) -> Vec<&'static str> {
    [(21, "CAP_SYS_ADMIN"), (19, "CAP_SYS_PTRACE")]
        .into_iter()
        .filter(|(bit, _)| effective & (1u64 << bit) == 0)
        .map(|(_, name)| name)
        .collect()
}

/// A namespace found on the host, with its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The nsfs inode: the namespace's identity.
    pub inode: u64,
    /// `netns` label: `host`, the `ip netns` name, the container, or `netns-<inode>`.
    pub name: String,
    /// `container_id` label.
    pub container_id: String,
    /// `pod_uid` label.
    pub pod_uid: String,
    /// A file that refers to it (`/proc/<pid>/ns/net` or `/run/netns/<name>`).
    pub path: PathBuf,
    /// Whether it is the exporter's own.
    pub own: bool,
}

/// The inode in an nsfs link's text, `net:[4026531840]`.
pub fn parse_ns_link(text: &str) -> Option<u64> {
    crate::parse::process::link_inode(text, "net")
}

fn link_inode(path: &Path) -> Option<u64> {
    parse_ns_link(std::fs::read_link(path).ok()?.to_str()?)
}

/// Labels a namespace: its `ip netns` name first, then its container (an nspawn
/// machine's name, or the first 12 digits of a container id, as `docker ps` shows
/// them), else `netns-<inode>`.
pub fn name_of(inode: u64, own: bool, bind_name: Option<&str>, owner: &cgroup::CgroupOwner) -> String {
    if own {
        return "host".to_owned();
    }
    if let Some(n) = bind_name {
        return n.to_owned();
    }
    if let Some(m) = &owner.machine {
        return m.clone();
    }
    if !owner.container_id.is_empty() {
        return owner.container_id.chars().take(12).collect();
    }
    format!("netns-{inode}")
}

/// A namespace's thread: jobs go in, the thread runs them inside the namespace.
struct Worker {
    jobs: Sender<Box<dyn FnOnce() + Send>>,
}

/// Where a namespace was seen: its lowest pid, and its `ip netns` name and file.
type Sighting = (Option<u32>, Option<String>, Option<PathBuf>);

/// The namespaces of a host and their threads.
pub struct Namespaces {
    procfs: PathBuf,
    run_netns: PathBuf,
    own: Option<u64>,
    workers: Mutex<HashMap<u64, Worker>>,
}

impl Namespaces {
    /// Namespaces of the processes under `procfs` and of the bind mounts under `run_netns`.
    pub fn new(procfs: PathBuf, run_netns: PathBuf) -> Namespaces {
        let own = link_inode(Path::new("/proc/self/ns/net"));
        Namespaces { procfs, run_netns, own, workers: Mutex::new(HashMap::new()) }
    }

    /// Every namespace now, the exporter's own first, then by label; labels made unique
    /// (a clash gets `-<inode>` appended). Threads of namespaces that are gone end.
    pub fn discover(&self) -> Vec<Found> {
        // inode -> (lowest pid, bind mount name, bind mount path)
        let mut seen: BTreeMap<u64, Sighting> = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir(&self.procfs) {
            for entry in dir.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
                // A process that exited or that we may not look at is skipped.
                let Some(inode) = link_inode(&entry.path().join("ns/net")) else { continue };
                let slot = seen.entry(inode).or_default();
                if slot.0.is_none_or(|p| pid < p) {
                    slot.0 = Some(pid);
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir(&self.run_netns) {
            for entry in dir.flatten() {
                let path = entry.path();
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                // An unmounted placeholder file lives on the tmpfs, not nsfs: skip it.
                if !is_nsfs(&path) {
                    continue;
                }
                use std::os::unix::fs::MetadataExt;
                let slot = seen.entry(meta.ino()).or_default();
                if slot.1.is_none() {
                    slot.1 = entry.file_name().to_str().map(str::to_owned);
                    slot.2 = Some(path);
                }
            }
        }
        let mut found: Vec<Found> = Vec::with_capacity(seen.len());
        for (inode, (pid, bind_name, bind_path)) in seen {
            let own = Some(inode) == self.own;
            let owner = pid
                .and_then(|p| std::fs::read_to_string(self.procfs.join(p.to_string()).join("cgroup")).ok())
                .map(|t| cgroup::parse(&t))
                .unwrap_or_default();
            let path = match (bind_path, pid) {
                (Some(p), _) => p,
                (None, Some(pid)) => self.procfs.join(pid.to_string()).join("ns/net"),
                (None, None) => continue,
            };
            let name = name_of(inode, own, bind_name.as_deref(), &owner);
            let (container_id, pod_uid) =
                if own { (String::new(), String::new()) } else { (owner.container_id, owner.pod_uid) };
            found.push(Found { inode, name, container_id, pod_uid, path, own });
        }
        found.sort_by(|a, b| b.own.cmp(&a.own).then_with(|| a.name.cmp(&b.name)).then(a.inode.cmp(&b.inode)));
        let mut counts: HashMap<String, usize> = HashMap::new();
        for f in &found {
            *counts.entry(f.name.clone()).or_default() += 1;
        }
        for f in &mut found {
            if counts[&f.name] > 1 && !f.own {
                f.name = format!("{}-{}", f.name, f.inode);
            }
        }
        let live: std::collections::HashSet<u64> = found.iter().map(|f| f.inode).collect();
        // Dropping a worker's sender ends its thread, which releases the namespace.
        lock(&self.workers).retain(|inode, _| live.contains(inode));
        found
    }

    /// Runs `job` on the thread of namespace `ns` (started, and the namespace entered,
    /// on first use); the answer comes on the returned channel.
    pub fn run<T: Send + 'static>(
        &self,
        ns: &Found,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Receiver<T>, NetnsError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let mut job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = tx.send(job());
        });
        let mut workers = lock(&self.workers);
        for _ in 0..2 {
            let worker = match workers.entry(ns.inode) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(start(ns)?),
            };
            match worker.jobs.send(job) {
                Ok(()) => return Ok(rx),
                Err(mpsc::SendError(back)) => {
                    // The thread ended (a job panicked): start it over once.
                    workers.remove(&ns.inode);
                    job = back;
                }
            }
        }
        Err(NetnsError::Stopped(ns.name.clone()))
    }

    /// How many namespace threads are running.
    pub fn threads(&self) -> usize {
        lock(&self.workers).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map is never left half-changed by a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `path` is a namespace file (a bind mount of nsfs, on the same device as our
/// own namespace file), not a placeholder.
fn is_nsfs(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::metadata("/proc/self/ns/net")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// Starts a namespace's thread and waits until it has entered the namespace.
fn start(ns: &Found) -> Result<Worker, NetnsError> {
    let (jobs, queue) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), NetnsError>>(1);
    let path = ns.path.clone();
    let thread_name = format!("netns-{}", ns.inode);
    std::thread::Builder::new()
        .name(thread_name)
        .stack_size(256 * 1024)
        .spawn(move || {
            let entered = File::open(&path)
                .map_err(|source| NetnsError::Open { path: path.clone(), source })
                .and_then(|f| setns(&f, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter { path, source }));
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if !ok {
                return;
            }
            for job in queue {
                job();
            }
        })
        .map_err(|source| NetnsError::Thread { name: ns.name.clone(), source })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Worker { jobs }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(NetnsError::Stopped(ns.name.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_named_from_the_effective_set() {
        assert_eq!(missing_from(0), vec!["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]);
        assert_eq!(missing_from(1 << 21), vec!["CAP_SYS_PTRACE"]);
        assert_eq!(missing_from(0x1ff_ffff_ffff), Vec::<&str>::new());
    }

    #[test]
    fn namespace_links_parse_and_others_do_not() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link("net:[]"), None);
        assert_eq!(parse_ns_link("net:[12"), None);
    }

    #[test]
    fn names_prefer_ip_netns_then_the_container_then_the_inode() {
        let none = cgroup::CgroupOwner::default();
        let docker = cgroup::CgroupOwner { container_id: "0123456789abcdef0123".into(), ..Default::default() };
        let machine = cgroup::CgroupOwner { machine: Some("web".into()), ..Default::default() };
        assert_eq!(name_of(7, true, Some("x"), &docker), "host");
        assert_eq!(name_of(7, false, Some("blue"), &docker), "blue");
        assert_eq!(name_of(7, false, None, &docker), "0123456789ab");
        assert_eq!(name_of(7, false, None, &machine), "web");
        assert_eq!(name_of(7, false, None, &none), "netns-7");
    }
}
