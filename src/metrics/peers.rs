//! `network_connection_peers`: non-listening sockets counted by direction, local address,
//! service port, remote address, state and interface (and owning process with
//! `--collector.connections.owner`), the ephemeral port folded away and the label sets
//! bounded by merging the smallest remotes into `other`. Direction follows
//! [`DirectionRule`]: each namespace's listeners are remembered here for
//! [`LISTENER_MEMORY`](crate::classify::LISTENER_MEMORY) across scrapes.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::classify::{
    count_bounded, BoundedPeers, Direction, DirectionRule, Folding, ListenerMemory, PeerKey, Remote,
};
use crate::exposition::{Encoder, Kind, Number, Value};
use crate::iface::InterfaceTable;
use crate::model::TcpState;
use crate::nat::{Nat, Resolver, Translation};
use crate::snapshot::{NsLabels, Part, Snapshot};

/// The family and its settings.
pub struct Peers {
    max_series: usize,
    folding: Folding,
    merging: AtomicBool,
    /// Each namespace's listeners seen lately, by its `netns` label ("" in `host` mode).
    memory: Mutex<HashMap<String, ListenerMemory>>,
    /// NAT resolution (`--collector.nat`).
    nat: Option<Arc<Nat>>,
}

impl Peers {
    /// At most `max_series` label sets (0: no bound), remotes folded by `folding`.
    pub fn new(max_series: usize, folding: Folding) -> Peers {
        Peers { max_series, folding, merging: AtomicBool::new(false), memory: Mutex::new(HashMap::new()), nat: None }
    }

    /// Labels each peer with what NAT did to its connections (`--collector.nat`).
    pub fn with_nat(mut self, nat: Option<Arc<Nat>>) -> Peers {
        self.nat = nat;
        self
    }

    /// Whether the NAT labels are written.
    fn nat_labels(&self) -> bool {
        self.nat.as_ref().is_some_and(|n| n.labels())
    }

    /// The direction rule of one namespace at `now`: its listeners in this read and
    /// those remembered, and its port range.
    fn rule(&self, part: &Part<'_>, now: Instant) -> DirectionRule {
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        let key = part.ns.map_or("", |ns| ns.netns.as_str());
        let listeners = part.listeners.iter().map(|l| l.local);
        let set = match memory.get_mut(key) {
            Some(m) => {
                m.observe(now, listeners);
                m.set()
            }
            None => {
                let mut m = ListenerMemory::default();
                m.observe(now, listeners);
                let set = m.set();
                memory.insert(key.to_owned(), m);
                set
            }
        };
        DirectionRule::new(set, part.port_range)
    }

    /// Forgets what is past [`LISTENER_MEMORY`](crate::classify::LISTENER_MEMORY) in
    /// namespaces this read did not show (those it showed were refreshed), and the
    /// namespaces left with nothing: memory stays bounded by the listeners of the last
    /// two minutes.
    fn forget(&self, now: Instant) {
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory.retain(|_, m| {
            m.observe(now, []);
            !m.is_empty()
        });
    }

    /// The peers of one namespace's sockets: every socket but the listeners, classified
    /// by the namespace's [`DirectionRule`], at most `max_series` label sets.
    pub fn count(&self, part: &Part<'_>, max_series: usize) -> BoundedPeers {
        self.count_at(part, max_series, Instant::now())
    }

    /// [`count`](Self::count) as of `now`.
    pub fn count_at(&self, part: &Part<'_>, max_series: usize, now: Instant) -> BoundedPeers {
        let rule = self.rule(part, now);
        let sockets = || part.keys.iter().filter(|k| k.state != TcpState::Listen);
        let directions = rule.tally(sockets().map(|k| (&k.local, &k.remote)));
        let nat = self.nat.as_deref().filter(|n| n.labels()).map(Nat::reader);
        let peers = sockets().map(|k| {
            let direction = directions.of(&k.local, &k.remote);
            PeerKey {
                owner: k.owner,
                translation: nat
                    .as_ref()
                    .map_or(Translation::None, |t| t.translate(part.netns, direction, &k.local, &k.remote)),
                ..PeerKey::of(direction, &k.local, &k.remote, Some(k.state), k.iface, &self.folding)
            }
        });
        count_bounded(peers, max_series)
    }

    /// Writes the family and `conn_exporter_peers_merged_series`. In `all` mode every
    /// namespace gets an equal share of the bound (at least one label set).
    pub fn write<W: Write>(&self, enc: &mut Encoder<W>, snap: &Snapshot) -> io::Result<()> {
        let parts = snap.parts();
        let share = if self.max_series == 0 { 0 } else { (self.max_series / parts.len()).max(1) };
        let name = "network_connection_peers";
        enc.family(
            name,
            Kind::Gauge,
            "Non-listening TCP sockets by direction, local address, service port, remote address, state and interface; the ephemeral port is left out.",
        )?;
        let mut merged = 0;
        let nat = self.nat_labels();
        for part in &parts {
            let peers = self.count(part, share);
            merged += peers.merged;
            let owners = part.owners;
            write_samples(enc, name, &peers.series, part.table, |k| Extra {
                ns: part.ns,
                owner: owners.map(|o| (o.process(k.owner), o.unit(k.owner))),
                nat,
            })?;
        }
        self.forget(Instant::now());
        let peers = BoundedPeers { series: Vec::new(), merged };
        let was = self.merging.swap(peers.merged > 0, Ordering::Relaxed);
        if peers.merged > 0 && !was {
            log::warn!(
                "peer label sets past --collector.peers.max-series={}: {} merged into destination_address=\"other\" (counts kept)",
                self.max_series,
                peers.merged
            );
        } else if peers.merged == 0 && was {
            log::info!("peer label sets within --collector.peers.max-series={} again", self.max_series);
        }
        enc.family(
            "conn_exporter_peers_merged_series",
            Kind::Gauge,
            "Peer label sets merged into destination_address=\"other\" by --collector.peers.max-series in this scrape.",
        )?;
        enc.sample("conn_exporter_peers_merged_series", &[], Number::Int(peers.merged))
    }
}

/// How a remote is labelled.
pub fn remote_label(remote: &Remote, buf: &mut String) -> Option<IpAddr> {
    buf.clear();
    match remote {
        Remote::Address(ip) => return Some(*ip),
        Remote::Prefix(ip, len) => {
            use std::fmt::Write as _;
            let _ = write!(buf, "{ip}/{len}");
        }
        Remote::Other => buf.push_str("other"),
    }
    None
}

/// Writes peer-keyed series (the peers gauge, the lifecycle counters): labels in name
/// order, the folded port left out.
pub fn write_series<W: Write>(
    enc: &mut Encoder<W>,
    name: &str,
    kind: Kind,
    help: &str,
    series: &[(PeerKey, u64)],
    table: &InterfaceTable,
) -> io::Result<()> {
    enc.family(name, kind, help)?;
    write_samples(enc, name, series, table, |_| Extra::default())
}

/// The labels a peer-keyed series gets beyond its own.
#[derive(Clone, Copy, Default)]
pub struct Extra<'a> {
    /// A namespace's (`--collector.namespaces=all`).
    pub ns: Option<&'a NsLabels>,
    /// `process` and `systemd_unit` (`--collector.connections.owner`).
    pub owner: Option<(&'a str, &'a str)>,
    /// `destination_backend_address`, `destination_backend_port` and
    /// `destination_original_address` (`--collector.nat`), empty where nothing was translated.
    pub nat: bool,
}

/// The samples of [`write_series`] without the family header, with the labels `extra`
/// gives each key.
pub fn write_samples<'a, W: Write>(
    enc: &mut Encoder<W>,
    name: &str,
    series: &[(PeerKey, u64)],
    table: &InterfaceTable,
    extra: impl Fn(&PeerKey) -> Extra<'a>,
) -> io::Result<()> {
    write_labelled(enc, series, table, extra, |enc, labels, n| enc.sample(name, labels, Number::Int(*n)))
}

/// Writes one peer-keyed value of any kind per key: `write` gets the key's labels, in
/// name order with the folded port left out (a label it adds goes where it sorts).
pub fn write_labelled<'a, W: Write, V>(
    enc: &mut Encoder<W>,
    series: &[(PeerKey, V)],
    table: &InterfaceTable,
    extra: impl Fn(&PeerKey) -> Extra<'a>,
    mut write: impl FnMut(&mut Encoder<W>, &[(&str, Value<'_>)], &V) -> io::Result<()>,
) -> io::Result<()> {
    let mut remote_text = String::new();
    for (k, v) in series {
        let remote = remote_label(&k.remote, &mut remote_text);
        let extra = extra(k);
        let mut labels: Vec<(&str, Value<'_>)> = Vec::with_capacity(15);
        labels.push(("destination_address", remote.map_or(Value::Str(&remote_text), Value::Ip)));
        if extra.nat {
            let (backend, port, original) = match k.translation {
                Translation::Backend(e) => (Value::Ip(e.ip), Value::Int(u64::from(e.port)), Value::Str("")),
                Translation::OriginalSource(ip) => (Value::Str(""), Value::Str(""), Value::Ip(ip)),
                Translation::None => (Value::Str(""), Value::Str(""), Value::Str("")),
            };
            labels.push(("destination_backend_address", backend));
            labels.push(("destination_backend_port", port));
            // The remote end is `destination_*` in both directions: inbound, the client.
            labels.push(("destination_original_address", original));
        }
        if let (Direction::Outbound, Some(port)) = (k.direction, k.service_port) {
            labels.push(("destination_port", Value::Int(u64::from(port))));
        }
        labels.push(("direction", Value::Str(k.direction.label())));
        labels.push(("interface", Value::Str(if k.local.is_some() { table.name(k.iface) } else { "other" })));
        labels.push(("source_address", k.local.map_or(Value::Str("other"), Value::Ip)));
        if let (Direction::Inbound, Some(port)) = (k.direction, k.service_port) {
            labels.push(("source_port", Value::Int(u64::from(port))));
        }
        if let Some(state) = k.state {
            labels.push(("state", Value::Str(state.label())));
        }
        if let Some((process, unit)) = extra.owner {
            labels.push(("process", Value::Str(process)));
            labels.push(("systemd_unit", Value::Str(unit)));
        }
        if let Some(ns) = extra.ns {
            // Sorts every label, the owner's included.
            ns.extend(&mut labels);
        } else if extra.owner.is_some() {
            labels.sort_by_key(|l| l.0);
        }
        write(enc, &labels, v)?;
    }
    Ok(())
}
