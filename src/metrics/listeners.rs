//! `network_listen_queue_length` and `network_listen_queue_limit`: for each listening
//! socket, the connections waiting to be accepted and its backlog limit (`ss -lnt`'s
//! Recv-Q and Send-Q).

use std::io::{self, Write};

use crate::exposition::{Encoder, Kind, Number, Value};
use crate::snapshot::{ListenerRecord, Snapshot};

/// Which queue figure a family reports.
type QueueField = fn(&ListenerRecord) -> u32;

/// Writes both families. Listeners sharing an address and port (`SO_REUSEPORT`) are one
/// series: their queues and limits add up, as the capacity of that endpoint does. The
/// limit is written only where the source tells it (netlink; not `/proc/net/tcp`).
pub fn write<W: Write>(enc: &mut Encoder<W>, snap: &Snapshot) -> io::Result<()> {
    let parts = snap.parts();
    let merged: Vec<Vec<ListenerRecord>> = parts.iter().map(|p| merge(p.listeners)).collect();
    let families: [(&str, &str, QueueField); 2] = [
        (
            "network_listen_queue_length",
            "Connections waiting to be accepted by a listening socket (ss -lnt Recv-Q), summed over sockets sharing the endpoint.",
            |l| l.queue_length,
        ),
        (
            "network_listen_queue_limit",
            "Backlog limit of a listening socket (ss -lnt Send-Q), summed over sockets sharing the endpoint.",
            |l| l.queue_limit,
        ),
    ];
    for (i, (name, help, value)) in families.into_iter().enumerate() {
        if i == 1 && !parts.iter().any(|p| p.queue_limits) {
            continue;
        }
        enc.family(name, Kind::Gauge, help)?;
        for (part, merged) in parts.iter().zip(&merged) {
            if i == 1 && !part.queue_limits {
                continue;
            }
            for l in merged {
                let labels = vec![
                    ("interface", Value::Str(part.table.name(l.iface))),
                    ("source_address", Value::Ip(l.local.ip)),
                    ("source_port", Value::Int(u64::from(l.local.port))),
                ];
                enc.sample(name, &part.labels(labels, l.owner), Number::Int(u64::from(value(l))))?;
            }
        }
    }
    Ok(())
}

/// Sorted listeners with equal endpoint and interface summed into one.
fn merge(sorted: &[ListenerRecord]) -> Vec<ListenerRecord> {
    let mut out: Vec<ListenerRecord> = Vec::with_capacity(sorted.len());
    for l in sorted {
        match out.last_mut() {
            Some(last) if last.local == l.local && last.iface == l.iface && last.owner == l.owner => {
                last.queue_length = last.queue_length.saturating_add(l.queue_length);
                last.queue_limit = last.queue_limit.saturating_add(l.queue_limit);
            }
            _ => out.push(*l),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iface::IfaceId;
    use crate::model::Endpoint;

    #[test]
    fn reuseport_listeners_are_one_series_with_their_queues_added() {
        let l = |port, q, lim| ListenerRecord {
            local: Endpoint::new("127.0.0.1".parse().unwrap(), port),
            iface: IfaceId::LOOPBACK,
            owner: crate::owners::OwnerId::default(),
            queue_length: q,
            queue_limit: lim,
        };
        let merged = merge(&[l(80, 1, 8), l(80, 2, 8), l(81, 0, 4096)]);
        assert_eq!(merged, vec![l(80, 3, 16), l(81, 0, 4096)]);
    }
}
