//! The metric families, one module each, and the collectors that switch them: names,
//! what each needs from the read, and which are wanted by a scrape.
//!
//! Adding a family: a module here that writes from a [`Snapshot`](crate::snapshot::Snapshot),
//! a variant of [`CollectorName`], and its arm in `Exporter::write_family`.

pub mod connections;
pub mod lifecycle;
pub mod listeners;
pub mod nat;
pub mod peers;
pub mod quality;
pub mod self_metrics;
pub mod states;

/// The collectors, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectorName {
    /// `network_connections_info`, one series per socket.
    Connections,
    /// `network_connection_states`, exact counts.
    States,
    /// `network_connection_peers`, counts by service and remote peer.
    Peers,
    /// `network_listen_queue_length` and `_limit`, per listening socket.
    Listeners,
    /// `network_connections_closed_total` and the other counters of destroyed sockets.
    Lifecycle,
    /// `network_connection_rtt_seconds` and the other families of `tcp_info` samples.
    Quality,
    /// NAT resolution through conntrack: labels on the peer-keyed families, and
    /// `conn_exporter_nat_*`.
    Nat,
}

impl CollectorName {
    /// Every collector, in the order their families are written.
    pub const ALL: [CollectorName; 7] = [
        CollectorName::Connections,
        CollectorName::States,
        CollectorName::Peers,
        CollectorName::Listeners,
        CollectorName::Lifecycle,
        CollectorName::Quality,
        CollectorName::Nat,
    ];

    /// The name used in flags, `collect[]` and the `collector` label.
    pub fn as_str(self) -> &'static str {
        match self {
            CollectorName::Connections => "connections",
            CollectorName::States => "states",
            CollectorName::Peers => "peers",
            CollectorName::Listeners => "listeners",
            CollectorName::Lifecycle => "lifecycle",
            CollectorName::Quality => "quality",
            CollectorName::Nat => "nat",
        }
    }

    /// The collector of a name.
    pub fn parse(name: &str) -> Option<CollectorName> {
        CollectorName::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Whether the family is written from counters kept between scrapes, with no read of
    /// the socket tables.
    pub fn kept(self) -> bool {
        matches!(self, CollectorName::Lifecycle | CollectorName::Quality | CollectorName::Nat)
    }

    /// Whether the family needs every socket kept (not only counted) by the read.
    pub fn needs_sockets(self) -> bool {
        matches!(self, CollectorName::Connections | CollectorName::Peers)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Which collectors are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollectorSet(u8);

impl CollectorSet {
    /// Every collector.
    pub const ALL: CollectorSet = CollectorSet((1 << CollectorName::ALL.len()) - 1);
    /// None.
    pub const NONE: CollectorSet = CollectorSet(0);

    /// A set of these collectors.
    pub fn of(names: impl IntoIterator<Item = CollectorName>) -> CollectorSet {
        let mut set = CollectorSet::NONE;
        for n in names {
            set.set(n, true);
        }
        set
    }

    /// Whether a collector is on.
    pub fn contains(self, c: CollectorName) -> bool {
        self.0 & c.bit() != 0
    }

    /// Switches a collector.
    pub fn set(&mut self, c: CollectorName, on: bool) {
        if on {
            self.0 |= c.bit();
        } else {
            self.0 &= !c.bit();
        }
    }

    /// Whether no collector is on.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The collectors that are on, in [`CollectorName::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = CollectorName> {
        CollectorName::ALL.into_iter().filter(move |c| self.contains(*c))
    }

    /// The names of the collectors that are on.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        self.iter().map(CollectorName::as_str)
    }

    /// Whether a read for these collectors must keep every socket.
    pub fn needs_sockets(self) -> bool {
        self.iter().any(CollectorName::needs_sockets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sets_hold_what_was_put_in() {
        for c in CollectorName::ALL {
            assert_eq!(CollectorName::parse(c.as_str()), Some(c));
            let only = CollectorSet::of([c]);
            assert_eq!(only.iter().collect::<Vec<_>>(), vec![c]);
            let mut all_but = CollectorSet::ALL;
            all_but.set(c, false);
            assert!(!all_but.contains(c));
            assert_eq!(all_but.iter().count(), CollectorName::ALL.len() - 1);
        }
        assert_eq!(CollectorName::parse("nope"), None);
        assert!(CollectorSet::of([CollectorName::Peers]).needs_sockets());
        assert!(!CollectorSet::of([CollectorName::States, CollectorName::Listeners]).needs_sockets());
    }
}
