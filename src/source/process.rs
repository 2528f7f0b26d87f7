//! The exporter's own process figures, always from the real `/proc/self`: the exporter
//! runs here even when `--path.procfs` points at another tree.

use std::path::Path;

use nix::unistd::{sysconf, SysconfVar};

use crate::parse::process;

/// Values of the standard `process_*` metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessMetrics {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident memory, bytes.
    pub resident_bytes: u64,
    /// Virtual memory, bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Soft limit on file descriptors.
    pub max_fds: Option<u64>,
    /// Start time, seconds since the epoch.
    pub start_time_seconds: f64,
}

/// Reads them; `None` when `/proc/self` cannot be read (the metrics are then left out).
pub fn read() -> Option<ProcessMetrics> {
    let proc = Path::new("/proc");
    let stat = process::parse_stat(&std::fs::read_to_string(proc.join("self/stat")).ok()?)?;
    let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten().filter(|&t| t > 0).unwrap_or(100) as f64;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten().filter(|&p| p > 0).unwrap_or(4096) as u64;
    let boot = std::fs::read_to_string(proc.join("stat")).ok().and_then(|t| process::parse_boot_time(&t)).unwrap_or(0);
    let max_fds =
        std::fs::read_to_string(proc.join("self/limits")).ok().and_then(|t| process::parse_max_open_files(&t));
    let open_fds = std::fs::read_dir(proc.join("self/fd")).map(|d| d.count() as u64).unwrap_or(0);
    Some(ProcessMetrics {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss_pages * page,
        virtual_bytes: stat.vsize,
        open_fds,
        max_fds,
        start_time_seconds: boot as f64 + stat.starttime as f64 / ticks,
    })
}
