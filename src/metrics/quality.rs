//! The quality families (`network_connection_rtt_seconds`, lost segments, window and
//! buffer stalls, queues) and their self-metrics, written from what the quality
//! collector's samples and the closes counted (see [`crate::quality`]).

use std::io::{self, Write};
use std::sync::atomic::Ordering;

use super::peers::{write_labelled, Extra};
use crate::classify::PeerKey;
use crate::exposition::{Encoder, HistogramValue, Kind, Number, Value};
use crate::lifecycle::fixed_namespaces;
use crate::quality::{Backlog, Quality, QualityTotals, Status};

/// The counters, each from one field of [`QualityTotals`]: `(name, help, value, scale)`,
/// the value divided by `scale` on the way out (microseconds to seconds).
type Counter = (&'static str, &'static str, fn(&QualityTotals) -> u64, Option<f64>);

const COUNTERS: [Counter; 4] = [
    (
        "network_connection_lost_segments_total",
        "Segments lost: retransmitted and not reported by the peer as received twice (tcpi_total_retrans less tcpi_dsack_dups), of open connections between samples and of closed ones up to their close.",
        |t| t.lost_segments,
        None,
    ),
    (
        "network_connection_sent_segments_total",
        "Data segments sent, retransmissions included (tcpi_data_segs_out), of open connections between samples and of closed ones up to their close: the denominator of the retransmit ratio.",
        |t| t.sent_segments,
        None,
    ),
    (
        "network_connection_receive_window_limited_seconds_total",
        "Time sending was limited by the peer's receive window (tcpi_rwnd_limited): a receiver that does not keep up.",
        |t| t.rwnd_limited_us,
        Some(1e6),
    ),
    (
        "network_connection_send_buffer_limited_seconds_total",
        "Time sending was limited by the local send buffer (tcpi_sndbuf_limited).",
        |t| t.sndbuf_limited_us,
        Some(1e6),
    ),
];

/// Writes the families when the collector samples (nothing otherwise: counters that
/// cannot count are no zeros). Returns the collector's success: sampling, and the last
/// sample of every namespace read whole.
/// `nat`: whether the NAT labels are written (`--collector.nat`).
pub fn write<W: Write>(enc: &mut Encoder<W>, state: &Quality, owners: bool, nat: bool) -> io::Result<bool> {
    if state.status() != Status::Sampling {
        return Ok(false);
    }
    let (series, merged, table, names, all) = {
        let mut c = state.lock();
        (c.series(), c.merged(), c.interfaces(), c.names(), c.all_namespaces())
    };
    let mut backlog: Vec<(PeerKey, Backlog)> = state.lock_backlog().iter().map(|(k, b)| (*k, *b)).collect();
    backlog.sort_unstable_by_key(|e| e.0);
    let fixed = fixed_namespaces();
    // A namespace that went between the copy and now has no labels: left out.
    let known = |k: &PeerKey| !all || names.namespace(k.netns, &fixed).is_some();
    let extra = |k: &PeerKey| Extra {
        ns: if all { names.namespace(k.netns, &fixed) } else { None },
        owner: owners.then(|| names.owner(k.owner)),
        nat,
    };

    let name = "network_connection_rtt_seconds";
    enc.family(
        name,
        Kind::Histogram,
        "Smoothed round-trip time (tcpi_rtt) of TCP connections: one observation per established connection at each --collector.quality.interval sample, and one at its close.",
    )?;
    let observed: Vec<(PeerKey, &QualityTotals)> =
        series.iter().filter(|(k, t)| t.rtt.count() > 0 && known(k)).map(|(k, t)| (*k, t)).collect();
    write_labelled(enc, &observed, &table, extra, |enc, labels, t| {
        let buckets = t.rtt.cumulative();
        let positive = t.rtt.native();
        let h = HistogramValue {
            count: t.rtt.count(),
            sum: t.rtt.sum_seconds(),
            buckets: &buckets,
            native: Some(t.rtt.native_buckets(&positive)),
        };
        enc.histogram(name, labels, &h)
    })?;

    for (name, help, pick, scale) in COUNTERS {
        enc.family(name, Kind::Counter, help)?;
        let picked: Vec<(PeerKey, u64)> = series
            .iter()
            .filter(|(k, t)| known(k) && (t.rtt.count() > 0 || pick(t) > 0))
            .map(|(k, t)| (*k, pick(t)))
            .collect();
        write_labelled(enc, &picked, &table, extra, |enc, labels, n| match scale {
            Some(s) => enc.sample(name, labels, Number::Float(*n as f64 / s)),
            None => enc.sample(name, labels, Number::Int(*n)),
        })?;
    }

    let backlog: Vec<(PeerKey, Backlog)> = backlog.into_iter().filter(|(k, _)| known(k)).collect();
    let name = "network_connection_queued_bytes";
    enc.family(
        name,
        Kind::Gauge,
        "Bytes queued on open connections at the last sample: queue=\"send\" not yet acknowledged by the peer, queue=\"receive\" not yet read by the application.",
    )?;
    write_labelled(enc, &backlog, &table, extra, |enc, labels, b| {
        for (queue, n) in [("receive", b.receive), ("send", b.send)] {
            let mut with_queue: Vec<(&str, Value<'_>)> = labels.to_vec();
            let at = with_queue.partition_point(|l| l.0 < "queue");
            with_queue.insert(at, ("queue", Value::Str(queue)));
            enc.sample(name, &with_queue, Number::Int(n))?;
        }
        Ok(())
    })?;
    let name = "network_connection_unsent_bytes";
    enc.family(
        name,
        Kind::Gauge,
        "Bytes written by applications on open connections and not yet sent (tcpi_notsent_bytes), at the last sample.",
    )?;
    write_labelled(enc, &backlog, &table, extra, |enc, labels, b| enc.sample(name, labels, Number::Int(b.unsent)))?;

    for (name, help, n) in [
        (
            "conn_exporter_quality_samples_total",
            "Samples of every namespace's open connections with tcp_info taken by the quality collector.",
            state.samples.load(Ordering::Relaxed),
        ),
        (
            "conn_exporter_quality_sample_failures_total",
            "Namespace samples the kernel refused or cut; their sockets are counted at the next sample.",
            state.failures.load(Ordering::Relaxed),
        ),
        (
            "conn_exporter_quality_untracked_sockets_total",
            "Sockets the quality collector could not follow (a namespace's table of last samples was full): their counters' growth is not counted.",
            state.untracked.load(Ordering::Relaxed),
        ),
        (
            "conn_exporter_quality_closes_lost_total",
            "Closes the quality collector did not see: with the ebpf source, records its ring buffer had no room for; with the notifications of its own (lifecycle off or ebpf refused), times the kernel dropped socket-destroy messages.",
            state.closes_lost.load(Ordering::Relaxed),
        ),
        (
            "conn_exporter_quality_merged_total",
            "Looks at sockets (a sample of one, or its close) counted in a destination_address=\"other\" series by --collector.quality.max-series.",
            merged,
        ),
    ] {
        enc.family(name, Kind::Counter, help)?;
        enc.sample(name, &[], Number::Int(n))?;
    }
    let name = "conn_exporter_quality_sample_duration_seconds";
    enc.family(name, Kind::Gauge, "Wall time the last sample of every namespace took.")?;
    enc.sample(name, &[], Number::Float(state.last_sample_us.load(Ordering::Relaxed) as f64 / 1e6))?;
    Ok(state.last_ok())
}
