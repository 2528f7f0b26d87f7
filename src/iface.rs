//! Which interface holds a socket's local address: the `interface` label.
//!
//! The table is built by `source::interfaces` at each scrape (addresses change at run
//! time) and answers with a small integer id, so that the per-socket path neither hashes
//! strings nor allocates; names are looked up once per series.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::Endpoint;

/// An interface as a small integer; see [`InterfaceTable::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceId(pub u16);

impl IfaceId {
    /// Wildcard binds (0.0.0.0, ::): a listener on every interface.
    pub const ANY: IfaceId = IfaceId(0);
    /// 127.0.0.0/8 and ::1.
    pub const LOOPBACK: IfaceId = IfaceId(1);
    /// An address no interface holds.
    pub const UNKNOWN: IfaceId = IfaceId(2);
}

/// Labels of the reserved ids, in id order.
const RESERVED: [&str; 3] = ["any", "lo", "unknown"];

/// Addresses, connected routes and indexes of the host's interfaces.
#[derive(Debug, Clone)]
pub struct InterfaceTable {
    names: Vec<String>,
    v4: Vec<(Ipv4Addr, IfaceId)>,
    v6: Vec<(Ipv6Addr, IfaceId)>,
    /// (network, prefix length, metric, id), longest prefix first, then lowest metric.
    v4_routes: Vec<(u32, u8, u32, IfaceId)>,
    by_index: Vec<(u32, IfaceId)>,
}

impl Default for InterfaceTable {
    fn default() -> Self {
        InterfaceTableBuilder::default().build()
    }
}

impl InterfaceTable {
    /// Resolves a local endpoint; `if_index` is the kernel's interface index, 0 when unknown.
    pub fn resolve(&self, local: &Endpoint, if_index: u32) -> IfaceId {
        if if_index != 0 {
            if let Ok(i) = self.by_index.binary_search_by_key(&if_index, |e| e.0) {
                return self.by_index[i].1;
            }
        }
        match local.ip {
            IpAddr::V4(ip) => self.resolve_v4(ip),
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => self.resolve_v4(v4),
                None if ip.is_unspecified() => IfaceId::ANY,
                None if ip.is_loopback() => IfaceId::LOOPBACK,
                None => lookup(&self.v6, &ip).unwrap_or(IfaceId::UNKNOWN),
            },
        }
    }

    fn resolve_v4(&self, ip: Ipv4Addr) -> IfaceId {
        if ip.is_unspecified() {
            return IfaceId::ANY;
        }
        if ip.is_loopback() {
            return IfaceId::LOOPBACK;
        }
        if let Some(id) = lookup(&self.v4, &ip) {
            return id;
        }
        let bits = u32::from(ip);
        self.v4_routes
            .iter()
            .find(|&&(net, len, _, _)| len > 0 && prefix(bits, len) == net)
            .map_or(IfaceId::UNKNOWN, |r| r.3)
    }

    /// The label of an id returned by [`resolve`](Self::resolve).
    pub fn name(&self, id: IfaceId) -> &str {
        self.names.get(usize::from(id.0)).map_or("unknown", String::as_str)
    }

    /// Number of ids, reserved ones included: ids are `0..len()`.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when no real interface is known (only the reserved ids).
    pub fn is_empty(&self) -> bool {
        self.names.len() == RESERVED.len()
    }
}

/// The kernel's interface for an IPv4 address label (`ip addr add … label eth0:1`).
///
/// getifaddrs names IPv4 addresses by their label, which iproute2 requires to start with
/// the interface's name and which ends in `:…` by convention; `links` are the real
/// interface names. The longest name the label starts with wins; a label that matches
/// none is kept as it is.
pub fn interface_of_label<'a, 'b: 'a>(label: &'a str, links: impl IntoIterator<Item = &'b str>) -> &'a str {
    let mut best: Option<&str> = None;
    for link in links {
        if link == label {
            return label;
        }
        if label.starts_with(link) && best.is_none_or(|b| link.len() > b.len()) {
            best = Some(link);
        }
    }
    best.map_or(label, |b| &label[..b.len()])
}

fn lookup<A: Ord>(table: &[(A, IfaceId)], ip: &A) -> Option<IfaceId> {
    table.binary_search_by(|e| e.0.cmp(ip)).ok().map(|i| table[i].1)
}

fn prefix(bits: u32, len: u8) -> u32 {
    match len {
        0 => 0,
        len => bits & (u32::MAX << (32 - u32::from(len.min(32)))),
    }
}

/// Collects interface facts from whichever source is read, then freezes them.
#[derive(Debug)]
pub struct InterfaceTableBuilder {
    ids: HashMap<String, IfaceId>,
    names: Vec<String>,
    v4: Vec<(Ipv4Addr, IfaceId)>,
    v6: Vec<(Ipv6Addr, IfaceId)>,
    v4_routes: Vec<(u32, u8, u32, IfaceId)>,
    by_index: Vec<(u32, IfaceId)>,
}

impl Default for InterfaceTableBuilder {
    fn default() -> Self {
        let names: Vec<String> = RESERVED.iter().map(|s| (*s).to_owned()).collect();
        // The reserved labels are ids too, so that a real interface of the same name (the
        // loopback `lo`, an address added to it) shares their id: one label, one series.
        let ids = names.iter().enumerate().map(|(i, n)| (n.clone(), IfaceId(i as u16))).collect();
        InterfaceTableBuilder {
            ids,
            names,
            v4: Vec::new(),
            v6: Vec::new(),
            v4_routes: Vec::new(),
            by_index: Vec::new(),
        }
    }
}

impl InterfaceTableBuilder {
    fn id(&mut self, name: &str) -> IfaceId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        // u16 ids: a host with more than 65k interfaces labels the rest `unknown`.
        let Ok(n) = u16::try_from(self.names.len()) else {
            return IfaceId::UNKNOWN;
        };
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), IfaceId(n));
        IfaceId(n)
    }

    /// An address held by an interface.
    pub fn address(&mut self, ip: IpAddr, interface: &str) -> &mut Self {
        let id = self.id(interface);
        match ip {
            IpAddr::V4(v4) => self.v4.push((v4, id)),
            IpAddr::V6(v6) => self.v6.push((v6, id)),
        }
        self
    }

    /// A connected IPv4 route: addresses inside it that no interface lists go to this one.
    pub fn connected_route(&mut self, network: Ipv4Addr, prefix_len: u8, metric: u32, interface: &str) -> &mut Self {
        let id = self.id(interface);
        let len = prefix_len.min(32);
        self.v4_routes.push((prefix(u32::from(network), len), len, metric, id));
        self
    }

    /// The kernel's index of an interface.
    pub fn index(&mut self, index: u32, interface: &str) -> &mut Self {
        let id = self.id(interface);
        self.by_index.push((index, id));
        self
    }

    /// The table. Where one address is listed twice, the first interface added keeps it.
    pub fn build(&mut self) -> InterfaceTable {
        fn freeze<A: Ord + Copy>(v: &mut Vec<(A, IfaceId)>) -> Vec<(A, IfaceId)> {
            let mut v = std::mem::take(v);
            v.sort_by_key(|e| e.0); // stable: first added wins below
            v.dedup_by(|b, a| a.0 == b.0);
            v
        }
        let mut routes = std::mem::take(&mut self.v4_routes);
        routes.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        InterfaceTable {
            names: std::mem::take(&mut self.names),
            v4: freeze(&mut self.v4),
            v6: freeze(&mut self.v6),
            v4_routes: routes,
            by_index: freeze(&mut self.by_index),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        Endpoint::new(s.parse().unwrap(), 1)
    }

    fn table() -> InterfaceTable {
        InterfaceTableBuilder::default()
            .address("192.0.2.2".parse().unwrap(), "eth0")
            .address("fd00::2".parse().unwrap(), "eth0")
            .address("fe80::1".parse().unwrap(), "eth1")
            .address("fe80::1".parse().unwrap(), "eth0")
            .connected_route("10.1.0.0".parse().unwrap(), 16, 100, "wlan0")
            .connected_route("10.1.2.0".parse().unwrap(), 24, 100, "br0")
            .index(7, "vrf-blue")
            .build()
    }

    #[test]
    fn special_addresses() {
        let t = table();
        for (addr, want) in [
            ("0.0.0.0", "any"),
            ("::", "any"),
            ("127.0.0.1", "lo"),
            ("127.5.6.7", "lo"),
            ("::1", "lo"),
            ("::ffff:127.0.0.1", "lo"),
            ("::ffff:0.0.0.0", "any"),
            ("203.0.113.9", "unknown"),
            ("2001:db8::9", "unknown"),
        ] {
            assert_eq!(t.name(t.resolve(&ep(addr), 0)), want, "{addr}");
        }
    }

    #[test]
    fn held_addresses_mapped_addresses_and_routes() {
        let t = table();
        assert_eq!(t.name(t.resolve(&ep("192.0.2.2"), 0)), "eth0");
        assert_eq!(t.name(t.resolve(&ep("::ffff:192.0.2.2"), 0)), "eth0");
        assert_eq!(t.name(t.resolve(&ep("fd00::2"), 0)), "eth0");
        assert_eq!(t.name(t.resolve(&ep("fe80::1"), 0)), "eth1", "first listed keeps a shared link-local");
        assert_eq!(t.name(t.resolve(&ep("10.1.2.3"), 0)), "br0", "longest prefix");
        assert_eq!(t.name(t.resolve(&ep("10.1.9.3"), 0)), "wlan0");
    }

    #[test]
    fn the_kernels_interface_index_wins() {
        let t = table();
        assert_eq!(t.name(t.resolve(&ep("fe80::1"), 7)), "vrf-blue");
        assert_eq!(t.name(t.resolve(&ep("192.0.2.2"), 99)), "eth0", "an unknown index falls back to the address");
    }

    #[test]
    fn a_real_lo_shares_the_reserved_id() {
        // Regression: 192.0.2.99/32 on lo gave a second `interface="lo"` series.
        let t = InterfaceTableBuilder::default()
            .address("192.0.2.99".parse().unwrap(), "lo")
            .address("::1".parse().unwrap(), "lo")
            .index(1, "lo")
            .address("192.0.2.1".parse().unwrap(), "eth0")
            .build();
        let lo = t.resolve(&ep("192.0.2.99"), 0);
        assert_eq!(lo, IfaceId::LOOPBACK);
        assert_eq!(t.resolve(&ep("127.0.0.1"), 0), lo);
        assert_eq!(t.resolve(&ep("10.0.0.1"), 1), lo, "by index too");
        let names: Vec<&str> = (0..t.len()).map(|i| t.name(IfaceId(i as u16))).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "every id has its own name: {names:?}");
    }

    #[test]
    fn address_labels_name_their_interface() {
        let links = ["eth0", "eth0.100", "lo", "veth-a"];
        assert_eq!(interface_of_label("eth0:1", links), "eth0");
        assert_eq!(interface_of_label("eth0.100:web", links), "eth0.100");
        assert_eq!(interface_of_label("eth0.100", links), "eth0.100");
        assert_eq!(interface_of_label("veth-a", links), "veth-a");
        assert_eq!(interface_of_label("wg0:x", links), "wg0:x", "no such interface: kept");
    }

    #[test]
    fn an_address_added_later_is_seen_by_a_new_table() {
        let before = InterfaceTable::default();
        assert_eq!(before.name(before.resolve(&ep("198.51.100.7"), 0)), "unknown");
        let after = InterfaceTableBuilder::default().address("198.51.100.7".parse().unwrap(), "dummy0").build();
        assert_eq!(after.name(after.resolve(&ep("198.51.100.7"), 0)), "dummy0");
    }
}
