//! `conn_exporter_nat_*`: how NAT resolution (`--collector.nat`) keeps its tables, written
//! from [`Nat`]'s counters. The translations themselves are labels of the peer-keyed
//! families.

use std::io::{self, Write};
use std::sync::atomic::Ordering;

use crate::exposition::{Encoder, Kind, Number};
use crate::nat::{Nat, Status};

/// Writes the self-metrics; returns the collector's success: every read namespace's
/// conntrack kept.
pub fn write<W: Write>(enc: &mut Encoder<W>, state: &Nat) -> io::Result<bool> {
    let gauges = [
        (
            "conn_exporter_nat_entries",
            "Translated conntrack entries held (keys: a DNAT and an SNAT of one entry are two), every namespace together; at most --collector.nat.max-entries.",
            state.entries.load(Ordering::Relaxed),
        ),
        (
            "conn_exporter_nat_namespaces",
            "Network namespaces whose conntrack table is kept, the exporter's own included.",
            if state.status() == Status::Reading { state.namespaces.load(Ordering::Relaxed) } else { 0 },
        ),
        (
            "conn_exporter_nat_cilium_detected",
            "1 when Cilium's load-balancer maps are pinned (its kube-proxy replacement translates Services outside conntrack: their backends are not resolved).",
            u64::from(state.cilium.load(Ordering::Relaxed)),
        ),
    ];
    for (name, help, n) in gauges {
        enc.family(name, Kind::Gauge, help)?;
        enc.sample(name, &[], Number::Int(n))?;
    }
    let counters = [
        (
            "conn_exporter_nat_entries_dropped_total",
            "Translations not kept because --collector.nat.max-entries was reached: those connections carry no NAT labels.",
            state.dropped.load(Ordering::Relaxed),
        ),
        (
            "conn_exporter_nat_resyncs_total",
            "Conntrack tables dumped again because the kernel dropped events (receive buffer overrun).",
            state.resyncs.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, n) in counters {
        enc.family(name, Kind::Counter, help)?;
        enc.sample(name, &[], Number::Int(n))?;
    }
    Ok(state.success())
}
