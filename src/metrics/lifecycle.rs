//! The lifecycle counters (`network_connections_closed_total`, `_failed_total`, the byte
//! and retransmit counters) and their self-metrics, written from the counters the
//! `lifecycle` thread keeps.

use std::io::{self, Write};
use std::sync::atomic::Ordering;

use super::peers::{write_samples, Extra};
use crate::classify::PeerKey;
use crate::exposition::{Encoder, Kind, Number, Value};
use crate::lifecycle::{fixed_namespaces, Lifecycle, Status, Totals};

/// Which value of [`Totals`] a family shows for a label set, if any.
type Pick = fn(&Totals) -> Option<u64>;

/// The families, each from one field of [`Totals`]; a label set appears in a family once
/// its count is above zero, and counts only grow.
const FAMILIES: [(&str, &str, Pick); 5] = [
    (
        "network_connections_closed_total",
        "TCP connections that were established and are now closed, by direction, local address, service port, remote address and interface.",
        |t| (t.closed > 0).then_some(t.closed),
    ),
    (
        "network_connections_failed_total",
        "Outbound TCP connects that never reached ESTABLISHED (refused, timed out, reset in the handshake), by remote address; with the ebpf source also by destination port (the notifications keep no port for them).",
        |t| (t.failed > 0).then_some(t.failed),
    ),
    (
        "network_connection_sent_bytes_total",
        "Payload bytes sent and acknowledged by the peer on closed connections (SYN and FIN not counted).",
        |t| (t.closed > 0).then_some(t.sent_bytes),
    ),
    (
        "network_connection_received_bytes_total",
        "Bytes received on closed connections: payload plus one for each FIN received (tcpi_bytes_received).",
        |t| (t.closed > 0).then_some(t.received_bytes),
    ),
    (
        "network_connection_retransmits_total",
        "Segments retransmitted: on closed connections (tcpi_total_retrans) with the netlink source, as they happen (tcp:tcp_retransmit_skb) with the ebpf source.",
        |t| (t.closed > 0 || t.retransmits > 0).then_some(t.retransmits),
    ),
];

/// Writes the families and `conn_exporter_lifecycle_*` when the subscription runs
/// (nothing otherwise: counters that cannot count are no zeros). Returns whether it
/// runs in every namespace, the collector's success.
pub fn write<W: Write>(enc: &mut Encoder<W>, state: &Lifecycle) -> io::Result<bool> {
    if state.status() != Status::Subscribed {
        return Ok(false);
    }
    state.refresh();
    let (series, merged, table, names, all) = {
        let mut c = state.lock();
        (c.series(), c.merged(), c.interfaces(), c.names(), c.all_namespaces())
    };
    let fixed = fixed_namespaces();
    let owners = state.owners.is_some();
    let nat = state.nat.as_ref().is_some_and(|n| n.labels());
    let mut picked: Vec<(PeerKey, u64)> = Vec::with_capacity(series.len());
    for (name, help, pick) in FAMILIES {
        picked.clear();
        picked.extend(
            series
                .iter()
                // A namespace that went between the copy and now has no labels: left out.
                .filter(|(k, _)| !all || names.namespace(k.netns, &fixed).is_some())
                .filter_map(|(k, t)| pick(t).map(|n| (*k, n))),
        );
        enc.family(name, Kind::Counter, help)?;
        write_samples(enc, name, &picked, &table, |k| Extra {
            ns: if all { names.namespace(k.netns, &fixed) } else { None },
            owner: owners.then(|| names.owner(k.owner)),
            nat,
        })?;
    }
    for (name, help, n) in [
        (
            "conn_exporter_lifecycle_overruns_total",
            "Times the kernel dropped socket-destroy messages because the receive buffer was full; above 0, the lifecycle counters are lower bounds.",
            state.overruns.load(Ordering::Relaxed),
        ),
        (
            "conn_exporter_lifecycle_events_total",
            "Socket-destroy messages received from the kernel, or with the ebpf source sockets seen entering CLOSE (listeners and unconnected sockets included).",
            state.events.load(Ordering::Relaxed),
        ),
        (
            "conn_exporter_lifecycle_merged_total",
            "Destroyed sockets counted in a destination_address=\"other\" series by --collector.lifecycle.max-series.",
            merged,
        ),
    ] {
        enc.family(name, Kind::Counter, help)?;
        enc.sample(name, &[], Number::Int(n))?;
    }
    if all {
        let name = "conn_exporter_lifecycle_namespaces";
        enc.family(
            name,
            Kind::Gauge,
            "Network namespaces whose socket-destroy notifications are received, or with the ebpf source the namespaces its counts are named from, the exporter's own included (--collector.namespaces=all).",
        )?;
        enc.sample(name, &[], Number::Int(state.subscribed.load(Ordering::Relaxed)))?;
    }
    if let Some(n) = state.untracked() {
        let name = "conn_exporter_lifecycle_untracked_total";
        enc.family(
            name,
            Kind::Counter,
            "Established connections the ebpf source saw close without knowing their direction (established before it was attached), not counted by peer.",
        )?;
        enc.sample(name, &[], Number::Int(n))?;
    }
    if let Some(source) = state.source().label() {
        let name = "conn_exporter_lifecycle_source_info";
        enc.family(name, Kind::Gauge, "The source of the lifecycle counters (netlink or ebpf); always 1.")?;
        enc.sample(name, &[("source", Value::Str(source))], Number::Int(1))?;
    }
    Ok(state.unsubscribed.load(Ordering::Relaxed) == 0)
}
