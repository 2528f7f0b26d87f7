//! The exporter's own metrics: build info, per-collector duration and success, parse
//! errors, web-config reloads and the process_* metrics.

use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::CollectorName;
use crate::exposition::{Encoder, Kind, Number, Value};
use crate::model::Family;
use crate::snapshot::Snapshot;
use crate::source::{process, procfs};
use crate::webconfig::ReloadStatus;

/// Version for `conn_exporter_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git revision the binary was built from, or `unknown`.
pub const REVISION: &str = env!("CONN_EXPORTER_REVISION");

/// `conn_exporter_parse_errors_total{file}`; always written, whatever the flags.
pub fn write_parse_errors<W: Write>(enc: &mut Encoder<W>, errors: impl Fn(Family) -> u64) -> io::Result<()> {
    enc.family(
        "conn_exporter_parse_errors_total",
        Kind::Counter,
        "Malformed lines skipped in the socket tables, by file.",
    )?;
    for family in Family::ALL {
        enc.sample(
            "conn_exporter_parse_errors_total",
            &[("file", Value::Str(procfs::file_name(family)))],
            Number::Int(errors(family)),
        )?;
    }
    Ok(())
}

/// Writes `conn_exporter_namespaces_sharing_tcp_table` from an `all`-mode read.
pub fn write_shared_tables<W: Write>(enc: &mut Encoder<W>, snap: &Snapshot) -> io::Result<()> {
    if snap.spaces.is_empty() {
        return Ok(());
    }
    let name = "conn_exporter_namespaces_sharing_tcp_table";
    enc.family(
        name,
        Kind::Gauge,
        "Network namespaces read in this scrape, the exporter's own aside, that share the host's TCP established-socket hash table (net.ipv4.tcp_ehash_entries negative): each of their dumps walks every socket of the machine. net.ipv4.tcp_child_ehash_entries gives namespaces made afterwards their own.",
    )?;
    let n = snap.spaces.iter().filter(|s| s.shares_host_tcp_table == Some(true)).count();
    enc.sample(name, &[], Number::Int(n as u64))
}

/// The eBPF walk of `all` mode: what it found, its buckets read again, and the reads
/// that fell back to the dumps.
pub fn write_socket_table<W: Write>(
    enc: &mut Encoder<W>,
    state: &crate::source::socket_table::TableState,
    fallbacks: [u64; 2],
) -> io::Result<()> {
    let name = "conn_exporter_socket_table_entries";
    enc.family(
        name,
        Kind::Gauge,
        "Sockets the eBPF walk of the host's TCP hash table found at the last read, every network namespace that shares it together (TIME_WAIT and SYN_RECV included).",
    )?;
    enc.sample(name, &[], Number::Int(state.entries as u64))?;
    let name = "conn_exporter_socket_table_rereads_total";
    enc.family(
        name,
        Kind::Counter,
        "Buckets of the host's TCP hash table the eBPF walk read again because it left their chain (a socket freed and reused while it was read).",
    )?;
    enc.sample(name, &[], Number::Int(state.rereads))?;
    let name = "conn_exporter_socket_table_fallbacks_total";
    enc.family(
        name,
        Kind::Counter,
        "Reads of --collector.namespaces=all that used a sock_diag dump per namespace instead of the eBPF walk: chain (a bucket held a longer chain than the walk follows, or kept changing) or error (the walk failed).",
    )?;
    for (reason, n) in crate::source::reader::FALLBACK_REASONS.iter().zip(fallbacks) {
        enc.sample(name, &[("reason", Value::Str(reason))], Number::Int(n))?;
    }
    Ok(())
}

/// Build info, collector durations and success, web-config reloads, process metrics.
pub fn write<W: Write>(
    enc: &mut Encoder<W>,
    durations: &[(CollectorName, Duration, bool)],
    web_config: Option<&ReloadStatus>,
    socket_source: &str,
) -> io::Result<()> {
    let name = "conn_exporter_socket_source_info";
    enc.family(
        name,
        Kind::Gauge,
        "Where the next read of the socket tables comes from: ebpf (the eBPF walk of the host's TCP hash table in --collector.namespaces=all, as the last read did), netlink (sock_diag dumps, one per network namespace in --collector.namespaces=all) or procfs (/proc/net/tcp); always 1.",
    )?;
    enc.sample(name, &[("source", Value::Str(socket_source))], Number::Int(1))?;
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
    if let Some(status) = web_config {
        enc.family(
            "conn_exporter_web_config_last_reload_successful",
            Kind::Gauge,
            "1 when the last read of --web.config.file succeeded; 0 when a change was refused and the last good configuration is in force.",
        )?;
        enc.sample(
            "conn_exporter_web_config_last_reload_successful",
            &[],
            Number::Int(u64::from(status.last_ok.load(Ordering::Relaxed))),
        )?;
        enc.family(
            "conn_exporter_web_config_reload_failures_total",
            Kind::Counter,
            "Changes to --web.config.file refused as invalid.",
        )?;
        enc.sample(
            "conn_exporter_web_config_reload_failures_total",
            &[],
            Number::Int(status.failures.load(Ordering::Relaxed)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Space;

    #[test]
    fn only_namespaces_known_to_share_the_hosts_table_are_counted() {
        let space = |shares| Space {
            labels: crate::snapshot::NsLabels {
                netns: String::new(),
                container_id: String::new(),
                pod_uid: String::new(),
            },
            table: crate::iface::InterfaceTable::default(),
            keys: Vec::new(),
            listeners: Vec::new(),
            counts: crate::snapshot::StateCounts::new(&crate::iface::InterfaceTable::default()),
            queue_limits: true,
            port_range: crate::classify::PortRange::default(),
            netns: 0,
            shares_host_tcp_table: shares,
        };
        let mut snap = Snapshot::failed();
        let written = |snap: &Snapshot| {
            let mut out = Vec::new();
            let mut enc = Encoder::new(&mut out, crate::exposition::Format::Text);
            write_shared_tables(&mut enc, snap).unwrap();
            drop(enc);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(written(&snap), "", "host mode: not written");
        snap.spaces = vec![space(None), space(Some(true)), space(Some(false)), space(Some(true))];
        assert!(written(&snap).contains("\nconn_exporter_namespaces_sharing_tcp_table 2\n"), "{}", written(&snap));
    }
}
