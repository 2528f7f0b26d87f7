//! `/proc/sys` values: the namespace's `net.ipv4.ip_local_port_range`, which decides
//! direction where no listener does.
//!
//! `/proc/sys/net` shows the network namespace of the thread that reads it, whichever
//! procfs mount the path goes through: a namespace's thread (in `setns`) reads its own.

use std::path::Path;

use super::SourceError;
use crate::classify::PortRange;
use crate::parse::sysctl::{parse_port_range, parse_shares_host_table};

/// Reads `<procfs>/sys/net/ipv4/ip_local_port_range` in the calling thread's namespace.
pub fn port_range(procfs: &Path) -> Result<PortRange, SourceError> {
    let path = procfs.join("sys/net/ipv4/ip_local_port_range");
    let text = std::fs::read_to_string(&path).map_err(|e| SourceError::at(&path, e))?;
    parse_port_range(&text).map_err(|e| SourceError::Malformed { path, reason: e.to_string() })
}

/// Whether the calling thread's namespace shares the host's TCP established-socket
/// hash table (`net.ipv4.tcp_ehash_entries` negative; Linux 6.1+): then each of its
/// dumps walks every socket of the machine. `None` where the file is missing or odd.
pub fn shares_host_tcp_table(procfs: &Path) -> Option<bool> {
    std::fs::read_to_string(procfs.join("sys/net/ipv4/tcp_ehash_entries"))
        .ok()
        .and_then(|t| parse_shares_host_table(&t))
}

/// [`port_range`], or Linux's default where it cannot be read (logged by `warn`).
pub fn port_range_or_default(procfs: &Path, warn: impl FnOnce(&SourceError)) -> PortRange {
    port_range(procfs).unwrap_or_else(|e| {
        warn(&e);
        PortRange::LINUX_DEFAULT
    })
}
