//! `network_connections_info`: one series per distinct socket label set, as the
//! specification defines it, with the cardinality guard that keeps LISTEN and ESTABLISHED
//! first.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::exposition::{Encoder, Kind, Number, Value};
use crate::snapshot::Snapshot;

/// The family and what its guard remembers between scrapes.
pub struct Connections {
    max_series: usize,
    truncating: AtomicBool,
}

impl Connections {
    /// At most `max_series` series per scrape; 0 for no limit.
    pub fn new(max_series: usize) -> Connections {
        Connections { max_series, truncating: AtomicBool::new(false) }
    }

    /// Writes the series and `conn_exporter_connections_dropped_series`.
    pub fn write<W: Write>(&self, enc: &mut Encoder<W>, snap: &Snapshot) -> io::Result<()> {
        let parts = snap.parts();
        // First pass: distinct series per keep class, to know how many of each fit.
        let mut distinct = [0usize; 3];
        for part in &parts {
            for run in part.keys.chunk_by(|a, b| a == b) {
                distinct[usize::from(run[0].state.keep_priority())] += 1;
            }
        }
        let total: usize = distinct.iter().sum();
        let mut budget = [usize::MAX; 3];
        if self.max_series > 0 {
            let mut left = self.max_series;
            for (b, d) in budget.iter_mut().zip(distinct) {
                *b = d.min(left);
                left -= *b;
            }
        }
        enc.family(
            "network_connections_info",
            Kind::Gauge,
            "TCP sockets by local and remote endpoint, state and interface; the value counts sockets sharing one label set.",
        )?;
        let mut kept = 0usize;
        for part in &parts {
            for run in part.keys.chunk_by(|a, b| a == b) {
                let k = run[0];
                let class = usize::from(k.state.keep_priority());
                if budget[class] == 0 {
                    continue;
                }
                budget[class] -= 1;
                kept += 1;
                let labels = [
                    ("destination_address", Value::Ip(k.remote.ip)),
                    ("destination_port", Value::Int(u64::from(k.remote.port))),
                    ("interface", Value::Str(part.table.name(k.iface))),
                    ("source_address", Value::Ip(k.local.ip)),
                    ("source_port", Value::Int(u64::from(k.local.port))),
                    ("state", Value::Str(k.state.label())),
                ];
                if part.extra_labels() {
                    enc.sample(
                        "network_connections_info",
                        &part.labels(labels.to_vec(), k.owner),
                        Number::Int(run.len() as u64),
                    )?
                } else {
                    enc.sample("network_connections_info", &labels, Number::Int(run.len() as u64))?
                }
            }
        }
        let dropped = total - kept;
        let was = self.truncating.swap(dropped > 0, Ordering::Relaxed);
        if dropped > 0 && !was {
            log::warn!(
                "per-connection series truncated: {total} distinct, limit {} (--collector.connections.max-series); {dropped} left out, LISTEN and ESTABLISHED kept first; network_connection_states and network_connection_peers still count every socket",
                self.max_series
            );
        } else if dropped == 0 && was {
            log::info!("per-connection series no longer truncated: {total} distinct, limit {}", self.max_series);
        }
        enc.family(
            "conn_exporter_connections_dropped_series",
            Kind::Gauge,
            "Per-connection series left out of this scrape by --collector.connections.max-series.",
        )?;
        enc.sample("conn_exporter_connections_dropped_series", &[], Number::Int(dropped as u64))
    }
}
