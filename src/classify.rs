//! Pure classification of sockets into peers: which side of a connection is the service
//! (direction), the folding of the ephemeral port, and the bounded merge of remote
//! addresses into `other`. No kernel access: listeners and sockets in, keys out.
//!
//! Direction is decided by [`DirectionRule`], in this order:
//! 1. a listener of the namespace, open now or seen within [`LISTENER_MEMORY`]
//!    ([`ListenerMemory`]), on the local end: inbound; on the remote end: outbound;
//! 2. else `net.ipv4.ip_local_port_range` ([`PortRange`]): the end whose port is inside
//!    it picked its port at `connect()`, so it is the client;
//! 3. else (both ports inside, or neither) the end that more of the sockets left
//!    undecided share is the service, and a tie is outbound.
//!
//! Why each step: the sockets a listener leaves behind when it closes (TIME_WAIT for a
//! minute, FIN_WAIT, LAST_ACK, connections a draining service still holds) would
//! otherwise look outbound, fold the service's port and keep the client's, one label set
//! per connection. Step 1 keeps the listener as long as they can last; step 2 catches
//! those of a listener the exporter never saw (it started later, or the listener lived
//! between two scrapes); step 3 settles a service on a port inside the range (many bind
//! port 0): its leftover sockets share its endpoint while each client's is its own, so
//! the count of label sets stays one per remote, not one per connection.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::iface::IfaceId;
use crate::model::{Endpoint, TcpState};
use crate::nat::Translation;
use crate::owners::OwnerId;

/// Which end of a connection is the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// The local endpoint belongs to a listener of this host: a client connected to us.
    Inbound,
    /// Anything else: we connected to the remote service.
    Outbound,
}

impl Direction {
    /// The `direction` label value.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The listening endpoints of a host (one network namespace), for [`ListenerSet::direction`].
#[derive(Debug, Clone, Default)]
pub struct ListenerSet {
    /// Listeners on one address, sorted.
    exact: Vec<Endpoint>,
    /// Ports with a listener on 0.0.0.0, sorted.
    any_v4: Vec<u16>,
    /// Ports with a listener on `::` (or `::ffff:0.0.0.0`), sorted.
    any_v6: Vec<u16>,
}

impl ListenerSet {
    /// The set of these listening endpoints.
    pub fn new(listeners: impl IntoIterator<Item = Endpoint>) -> ListenerSet {
        let mut set = ListenerSet::default();
        for l in listeners {
            match l.ip {
                IpAddr::V4(ip) if ip.is_unspecified() => set.any_v4.push(l.port),
                IpAddr::V6(ip) if ip.is_unspecified() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_unspecified()) => {
                    set.any_v6.push(l.port)
                }
                _ => set.exact.push(l),
            }
        }
        for v in [&mut set.any_v4, &mut set.any_v6] {
            v.sort_unstable();
            v.dedup();
        }
        set.exact.sort_unstable();
        set.exact.dedup();
        set
    }

    /// Whether no listener is known.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.any_v4.is_empty() && self.any_v6.is_empty()
    }

    /// Whether a listener has this port on this address or on a wildcard that accepts
    /// it. An `AF_INET` socket can only have come from an IPv4 listener (0.0.0.0); an
    /// `AF_INET6` one, IPv4-mapped ones included, only from an IPv6 listener (`::`,
    /// dual-stack for mapped addresses).
    pub fn accepts(&self, end: &Endpoint) -> bool {
        let wildcard = match end.ip {
            IpAddr::V4(_) => &self.any_v4,
            IpAddr::V6(_) => &self.any_v6,
        };
        wildcard.binary_search(&end.port).is_ok() || self.exact.binary_search(end).is_ok()
    }

    /// Inbound when a listener accepts the socket's local end, else outbound: the rule
    /// before the port range and the tally of [`DirectionRule`] were added, kept for
    /// the listener-only cases of the tests.
    pub fn direction(&self, local: &Endpoint) -> Direction {
        if self.accepts(local) {
            Direction::Inbound
        } else {
            Direction::Outbound
        }
    }
}

/// How long a listener that is gone still decides direction: twice TCP's TIME_WAIT
/// (60 s, fixed in Linux), so that every socket it leaves in TIME_WAIT, or in FIN_WAIT2
/// for `tcp_fin_timeout` (60 s by default), is still its listener's when a scrape every
/// minute sees it.
pub const LISTENER_MEMORY: Duration = Duration::from_secs(120);

/// The listeners of one namespace seen within [`LISTENER_MEMORY`], open or not: the
/// listeners that direction is decided by. Its size is the number of listening
/// endpoints seen in that time.
#[derive(Debug, Clone, Default)]
pub struct ListenerMemory {
    last_seen: HashMap<Endpoint, Instant>,
}

impl ListenerMemory {
    /// Notes the listeners seen at `now` and forgets those last seen longer ago than
    /// [`LISTENER_MEMORY`].
    pub fn observe(&mut self, now: Instant, seen: impl IntoIterator<Item = Endpoint>) {
        for e in seen {
            let t = self.last_seen.entry(e).or_insert(now);
            // Concurrent scrapes may note an older snapshot after a newer one.
            *t = (*t).max(now);
        }
        self.last_seen.retain(|_, t| now.saturating_duration_since(*t) < LISTENER_MEMORY);
    }

    /// The listeners remembered.
    pub fn set(&self) -> ListenerSet {
        ListenerSet::new(self.last_seen.keys().copied())
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.last_seen.is_empty()
    }
}

/// `net.ipv4.ip_local_port_range` of a namespace: the ports the kernel picks a
/// connecting socket's local port from (both ends included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// Lowest port.
    pub low: u16,
    /// Highest port.
    pub high: u16,
}

impl PortRange {
    /// Linux's default, used where a namespace's range cannot be read.
    pub const LINUX_DEFAULT: PortRange = PortRange { low: 32768, high: 60999 };

    /// Whether `port` is one `connect()` can pick.
    pub fn contains(self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange::LINUX_DEFAULT
    }
}

/// What decides direction in one namespace: its listeners (with [`ListenerMemory`]'s,
/// the recent ones) and its port range. See the module's note for the rule.
#[derive(Debug, Clone, Default)]
pub struct DirectionRule {
    listeners: ListenerSet,
    range: PortRange,
}

impl DirectionRule {
    /// The rule of a namespace with these listeners and this port range.
    pub fn new(listeners: ListenerSet, range: PortRange) -> DirectionRule {
        DirectionRule { listeners, range }
    }

    /// Steps 1 and 2 of the rule; `None` where they leave the socket undecided.
    pub fn decided(&self, local: &Endpoint, remote: &Endpoint) -> Option<Direction> {
        if self.listeners.accepts(local) {
            return Some(Direction::Inbound);
        }
        if self.listeners.accepts(remote) {
            return Some(Direction::Outbound);
        }
        match (self.range.contains(local.port), self.range.contains(remote.port)) {
            (true, false) => Some(Direction::Outbound),
            (false, true) => Some(Direction::Inbound),
            _ => None,
        }
    }

    /// The rule applied to `sockets` seen together (one namespace's sockets of a read,
    /// one batch of closes): the undecided among them are tallied for step 3.
    pub fn tally<'a>(&'a self, sockets: impl IntoIterator<Item = (&'a Endpoint, &'a Endpoint)>) -> Directions<'a> {
        let mut tally: HashMap<(Endpoint, End), u32> = HashMap::new();
        for (local, remote) in sockets {
            if self.decided(local, remote).is_none() {
                *tally.entry((*local, End::Local)).or_insert(0) += 1;
                *tally.entry((*remote, End::Remote)).or_insert(0) += 1;
            }
        }
        Directions { rule: self, tally }
    }
}

/// Which end of the undecided sockets an endpoint was counted at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum End {
    Local,
    Remote,
}

/// [`DirectionRule`] with the tally of a population of sockets.
#[derive(Debug)]
pub struct Directions<'a> {
    rule: &'a DirectionRule,
    tally: HashMap<(Endpoint, End), u32>,
}

impl Directions<'_> {
    /// The direction of a socket of the population: a service's endpoint is shared by
    /// its connections, a client's is its own, so where the rule's first steps leave it
    /// undecided the end more of the undecided sockets share is the service (a tie,
    /// which a lone socket always is, stays outbound, as a socket that matches no
    /// listener always was).
    pub fn of(&self, local: &Endpoint, remote: &Endpoint) -> Direction {
        if let Some(d) = self.rule.decided(local, remote) {
            return d;
        }
        let n = |e: &Endpoint, end| self.tally.get(&(*e, end)).copied().unwrap_or(0);
        if n(local, End::Local) > n(remote, End::Remote) {
            Direction::Inbound
        } else {
            Direction::Outbound
        }
    }
}

/// The remote side of a peer as labelled: an address, a prefix of addresses, or the
/// merge bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Remote {
    /// One address.
    Address(IpAddr),
    /// Every address in a prefix (`--collector.peers.remote-prefix-length`).
    Prefix(IpAddr, u8),
    /// Addresses merged by the series bound.
    Other,
}

/// How remote addresses are aggregated before counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Folding {
    /// Prefix length for IPv4 remotes (IPv4-mapped ones included); 32 keeps addresses.
    pub ipv4_prefix: u8,
    /// Prefix length for IPv6 remotes; 128 keeps addresses.
    pub ipv6_prefix: u8,
}

impl Default for Folding {
    fn default() -> Self {
        Folding { ipv4_prefix: 32, ipv6_prefix: 128 }
    }
}

impl Folding {
    /// The remote label for an address.
    pub fn remote(&self, ip: IpAddr) -> Remote {
        let v4 = |ip: Ipv4Addr, mapped: bool| {
            let len = self.ipv4_prefix.min(32);
            if len == 32 {
                return Remote::Address(if mapped { IpAddr::V6(ip.to_ipv6_mapped()) } else { IpAddr::V4(ip) });
            }
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            let net = Ipv4Addr::from(u32::from(ip) & mask);
            // A mapped remote aggregates with plain IPv4 ones: the prefix is one network.
            Remote::Prefix(IpAddr::V4(net), len)
        };
        match ip {
            IpAddr::V4(a) => v4(a, false),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(m) => v4(m, true),
                None => {
                    let len = self.ipv6_prefix.min(128);
                    if len == 128 {
                        return Remote::Address(ip);
                    }
                    let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
                    Remote::Prefix(IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)), len)
                }
            },
        }
    }
}

/// A peer: a socket with the ephemeral side's port folded away. `service_port` is the
/// local port for inbound peers and the remote port for outbound ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    /// Which side is the service.
    pub direction: Direction,
    /// Local address; `None` once merged past the bound with local addresses folded too.
    pub local: Option<IpAddr>,
    /// The service's port; `None` once merged past the bound with ports folded too.
    pub service_port: Option<u16>,
    /// Remote address, prefix or `other`.
    pub remote: Remote,
    /// TCP state (`None` for lifecycle counters, which have no state).
    pub state: Option<TcpState>,
    /// Interface of the local address.
    pub iface: IfaceId,
    /// Owning process (`--collector.connections.owner`): an id into the read's
    /// [`OwnerTable`](crate::owners::OwnerTable) for the peers gauge, into the lifecycle
    /// counters' own names for those; 0 (`process=""`) without owners and once merged
    /// past the bound with local addresses folded.
    pub owner: OwnerId,
    /// The network namespace, by nsfs inode, for the lifecycle counters in
    /// `--collector.namespaces=all` mode: 0 is the exporter's own, [`NETNS_OTHER`] the
    /// fully folded series of every other one. Always 0 for the peers gauge, which is
    /// written one namespace at a time.
    pub netns: u64,
    /// What NAT did to the connection (`--collector.nat`): the backend behind a Service
    /// address, or the client's address before SNAT. Dropped when merged into `other`.
    pub translation: Translation,
}

/// [`PeerKey::netns`] of the series every namespace but the exporter's own folds into
/// past the lifecycle bound (`netns="other"`).
pub const NETNS_OTHER: u64 = u64::MAX;

impl PeerKey {
    /// The peer of a non-listening socket.
    pub fn of(
        direction: Direction,
        local: &Endpoint,
        remote: &Endpoint,
        state: Option<TcpState>,
        iface: IfaceId,
        folding: &Folding,
    ) -> PeerKey {
        let service_port = match direction {
            Direction::Inbound => local.port,
            Direction::Outbound => remote.port,
        };
        PeerKey {
            direction,
            local: Some(local.ip),
            service_port: Some(service_port),
            remote: folding.remote(remote.ip),
            state,
            iface,
            owner: OwnerId::default(),
            netns: 0,
            translation: Translation::None,
        }
    }
}

/// A multiply-rotate hasher for peer keys: the counting map is fed one key per socket
/// (hundreds of thousands per scrape), where SipHash's resistance to chosen keys buys
/// nothing (keys come from the kernel's socket table, and a collision costs time, not
/// correctness) and costs about twice the whole map.
#[derive(Default, Clone, Copy)]
pub struct PeerHasher(u64);

impl Hasher for PeerHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by peers, hashed with [`PeerHasher`].
pub type PeerMap<V> = HashMap<PeerKey, V, BuildHasherDefault<PeerHasher>>;

/// Peers counted, and bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoundedPeers {
    /// Each label set with its count, sorted by key.
    pub series: Vec<(PeerKey, u64)>,
    /// Label sets merged into `other` by the bound.
    pub merged: u64,
}

/// Counts `peers` and, past `max_series` label sets (0: no bound), merges the remote
/// addresses with the fewest sockets into [`Remote::Other`]. Counts are never dropped:
/// the sum over the result equals the number of peers given.
///
/// The largest remotes are kept whole, in order of their sockets, each one that still
/// fits; the rest share the
/// `other` bucket, keyed by everything but the remote address. Should that bucket alone
/// need more than half the bound (a host talking to thousands of remote ports), its
/// service port is folded too, then its local address, interface and owner (the last
/// fold has `process=""`, so that the bound holds whatever the number of processes).
pub fn count_bounded(peers: impl IntoIterator<Item = PeerKey>, max_series: usize) -> BoundedPeers {
    let mut counts: PeerMap<u64> = PeerMap::default();
    for p in peers {
        *counts.entry(p).or_insert(0) += 1;
    }
    bound(counts, max_series)
}

/// [`count_bounded`] for counts already made (the lifecycle counters fold their own).
pub fn bound<S: std::hash::BuildHasher>(counts: HashMap<PeerKey, u64, S>, max_series: usize) -> BoundedPeers {
    let mut series: Vec<(PeerKey, u64)> = counts.into_iter().collect();
    series.sort_unstable();
    if max_series == 0 || series.len() <= max_series {
        return BoundedPeers { series, merged: 0 };
    }
    // How the merge bucket would key a series; widened until it needs at most half.
    let other_of: [fn(&PeerKey) -> PeerKey; 3] = [
        |k| PeerKey { remote: Remote::Other, translation: Translation::None, ..*k },
        |k| PeerKey { remote: Remote::Other, service_port: None, translation: Translation::None, ..*k },
        |k| PeerKey {
            remote: Remote::Other,
            translation: Translation::None,
            service_port: None,
            local: None,
            iface: IfaceId::UNKNOWN,
            owner: OwnerId::default(),
            ..*k
        },
    ];
    let half = (max_series / 2).max(1);
    let (mut other, mut reserved) = (other_of[2], half);
    for (i, f) in other_of.into_iter().enumerate() {
        let mut keys: Vec<PeerKey> = series.iter().map(|(k, _)| f(k)).collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.len() <= half || i == other_of.len() - 1 {
            (other, reserved) = (f, keys.len());
            break;
        }
    }
    // Remotes by their sockets, most first; ties by address so the result is stable.
    let mut by_remote: HashMap<Remote, (u64, usize)> = HashMap::new();
    for (k, n) in &series {
        let e = by_remote.entry(k.remote).or_insert((0, 0));
        e.0 += n;
        e.1 += 1;
    }
    let mut remotes: Vec<(Remote, u64, usize)> = by_remote.into_iter().map(|(r, (n, s))| (r, n, s)).collect();
    remotes.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    // What the bucket can need at most is reserved; the rest goes to whole remotes.
    let budget = max_series.saturating_sub(reserved);
    let mut kept: HashMap<Remote, ()> = HashMap::new();
    let mut used = 0usize;
    for (remote, _, n_series) in remotes {
        // A big remote with too many label sets to fit is merged; smaller ones may still fit.
        if used + n_series > budget {
            continue;
        }
        used += n_series;
        kept.insert(remote, ());
    }
    let mut merged = 0u64;
    let mut out: PeerMap<u64> = PeerMap::default();
    out.reserve(used + reserved);
    for (k, n) in series {
        let key = if kept.contains_key(&k.remote) {
            k
        } else {
            merged += 1;
            other(&k)
        };
        *out.entry(key).or_insert(0) += n;
    }
    let mut series: Vec<(PeerKey, u64)> = out.into_iter().collect();
    series.sort_unstable();
    BoundedPeers { series, merged }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        Endpoint::new(sa.ip(), sa.port())
    }

    fn listeners() -> ListenerSet {
        ListenerSet::new(
            ["0.0.0.0:22", "127.0.0.2:40000", "[::]:443", "[::1]:8080", "192.0.2.1:80", "[::ffff:192.0.2.1]:81"]
                .map(ep),
        )
    }

    #[test]
    fn listeners_on_specific_and_wildcard_addresses() {
        let l = listeners();
        for (local, want) in [
            ("192.0.2.1:22", Direction::Inbound),      // 0.0.0.0:22 accepts any IPv4 address
            ("192.0.2.1:80", Direction::Inbound),      // exact
            ("192.0.2.7:80", Direction::Outbound),     // another address, same port
            ("[2001:db8::1]:443", Direction::Inbound), // :: accepts IPv6
            ("[::ffff:192.0.2.1]:443", Direction::Inbound), // and v4-mapped clients (dual stack)
            ("192.0.2.1:443", Direction::Outbound),    // but never an AF_INET socket
            ("[::1]:8080", Direction::Inbound),
            ("[::2]:8080", Direction::Outbound),
            ("[::ffff:192.0.2.1]:81", Direction::Inbound),
            ("[2001:db8::1]:22", Direction::Outbound), // 0.0.0.0 does not accept IPv6
        ] {
            assert_eq!(l.direction(&ep(local)), want, "{local}");
        }
    }

    #[test]
    fn an_ephemeral_port_equal_to_another_addresses_listener_is_outbound() {
        // A client on 127.0.0.1:40000 while 127.0.0.2:40000 listens.
        assert_eq!(listeners().direction(&ep("127.0.0.1:40000")), Direction::Outbound);
        assert_eq!(listeners().direction(&ep("127.0.0.2:40000")), Direction::Inbound);
    }

    #[test]
    fn a_local_client_and_server_are_one_inbound_and_one_outbound_peer() {
        let l = ListenerSet::new([ep("127.0.0.1:9000")]);
        let server_side = (ep("127.0.0.1:9000"), ep("127.0.0.1:51000"));
        let client_side = (ep("127.0.0.1:51000"), ep("127.0.0.1:9000"));
        let f = Folding::default();
        let s = PeerKey::of(
            l.direction(&server_side.0),
            &server_side.0,
            &server_side.1,
            Some(TcpState::TimeWait),
            IfaceId::LOOPBACK,
            &f,
        );
        let c = PeerKey::of(
            l.direction(&client_side.0),
            &client_side.0,
            &client_side.1,
            Some(TcpState::TimeWait),
            IfaceId::LOOPBACK,
            &f,
        );
        assert_eq!((s.direction, s.service_port), (Direction::Inbound, Some(9000)));
        assert_eq!((c.direction, c.service_port), (Direction::Outbound, Some(9000)));
        assert_eq!(s.remote, Remote::Address("127.0.0.1".parse().unwrap()));
    }

    /// The direction of each socket of a namespace, seen together.
    fn directions<S: AsRef<str>>(rule: &DirectionRule, sockets: &[(S, S)]) -> Vec<Direction> {
        let eps: Vec<(Endpoint, Endpoint)> = sockets.iter().map(|(l, r)| (ep(l.as_ref()), ep(r.as_ref()))).collect();
        let d = rule.tally(eps.iter().map(|(l, r)| (l, r)));
        eps.iter().map(|(l, r)| d.of(l, r)).collect()
    }

    fn rule(listeners: &[&str]) -> DirectionRule {
        DirectionRule::new(ListenerSet::new(listeners.iter().map(|l| ep(l))), PortRange::LINUX_DEFAULT)
    }

    #[test]
    fn a_listener_at_either_end_decides() {
        let r = rule(&["0.0.0.0:5000", "127.0.0.1:45000"]);
        // Local end on a listener: inbound, whatever the ports.
        assert_eq!(directions(&r, &[("10.0.0.1:5000", "10.0.0.2:40000")]), [Direction::Inbound]);
        // Remote end on a listener of this namespace (a local client): outbound, even
        // with both ports inside the range.
        assert_eq!(directions(&r, &[("127.0.0.1:50000", "127.0.0.1:45000")]), [Direction::Outbound]);
        // The local end wins when both are listeners' (a connection between two services).
        assert_eq!(directions(&r, &[("127.0.0.1:45000", "10.0.0.3:5000")]), [Direction::Inbound]);
    }

    #[test]
    fn without_a_listener_the_end_inside_the_port_range_is_the_client() {
        let r = rule(&[]);
        // A service on 8080 whose listener is gone, its client on an ephemeral port.
        assert_eq!(directions(&r, &[("10.0.0.1:8080", "10.0.0.2:40000")]), [Direction::Inbound]);
        // A client to a service on 443.
        assert_eq!(directions(&r, &[("10.0.0.1:40000", "10.0.0.2:443")]), [Direction::Outbound]);
        // The namespace's own range, not Linux's default: 40000 is outside 50000-50100.
        let narrow = DirectionRule::new(ListenerSet::default(), PortRange { low: 50000, high: 50100 });
        assert_eq!(directions(&narrow, &[("10.0.0.1:50050", "10.0.0.2:40000")]), [Direction::Outbound]);
        assert_eq!(directions(&narrow, &[("10.0.0.1:40000", "10.0.0.2:50050")]), [Direction::Inbound]);
    }

    #[test]
    fn with_both_ports_inside_the_range_the_shared_end_is_the_service() {
        let r = rule(&[]);
        // A server on an ephemeral port (bound to port 0) that exited: its leftover
        // sockets share 127.0.0.1:45000, each client's port is its own.
        let left: Vec<(String, String)> =
            (0..5).map(|i| ("127.0.0.1:45000".to_owned(), format!("127.0.0.1:{}", 50000 + i))).collect();
        assert_eq!(directions(&r, &left), vec![Direction::Inbound; 5]);
        // The clients' own sockets of the same connections, seen beside them: outbound.
        let both: Vec<(String, String)> = (0..5)
            .flat_map(|i| {
                let c = format!("127.0.0.1:{}", 50000 + i);
                [("127.0.0.1:45000".to_owned(), c.clone()), (c, "127.0.0.1:45000".to_owned())]
            })
            .collect();
        let got = directions(&r, &both);
        assert_eq!(got.iter().step_by(2).copied().collect::<Vec<_>>(), vec![Direction::Inbound; 5]);
        assert_eq!(got.iter().skip(1).step_by(2).copied().collect::<Vec<_>>(), vec![Direction::Outbound; 5]);
        // Many clients of a remote service on a port inside the range (gRPC's 50051):
        // the remote end is shared, so outbound.
        let grpc: Vec<(String, String)> =
            (0..4).map(|i| (format!("10.0.0.1:{}", 40000 + i), "10.0.0.9:50051".to_owned())).collect();
        assert_eq!(directions(&r, &grpc), vec![Direction::Outbound; 4]);
        // A lone socket is a tie: outbound, as a socket no listener matches always was.
        assert_eq!(directions(&r, &[("10.0.0.1:45000", "10.0.0.9:50051")]), [Direction::Outbound]);
    }

    #[test]
    fn with_neither_port_inside_the_range_the_shared_end_is_the_service() {
        let r = rule(&[]);
        // Clients whose own range is above Linux's (61000-65535 on other systems).
        let left: Vec<(String, String)> =
            (0..3).map(|i| ("192.0.2.1:8443".to_owned(), format!("198.51.100.{i}:{}", 62000 + i))).collect();
        assert_eq!(directions(&r, &left), vec![Direction::Inbound; 3]);
        // One connection between two well-known ports: a tie, outbound.
        assert_eq!(directions(&r, &[("[2001:db8::5]:80", "[2001:db8::9]:80")]), [Direction::Outbound]);
    }

    #[test]
    fn a_listener_is_remembered_for_two_minutes_after_it_was_last_seen() {
        let t0 = Instant::now();
        let mut m = ListenerMemory::default();
        m.observe(t0, [ep("127.0.0.1:45000")]);
        // It closed: later reads show no listener.
        m.observe(t0 + Duration::from_secs(60), []);
        assert!(m.set().accepts(&ep("127.0.0.1:45000")), "kept through TIME_WAIT");
        m.observe(t0 + LISTENER_MEMORY - Duration::from_millis(1), []);
        assert!(m.set().accepts(&ep("127.0.0.1:45000")));
        m.observe(t0 + LISTENER_MEMORY, []);
        assert!(!m.set().accepts(&ep("127.0.0.1:45000")), "forgotten");
        assert!(m.is_empty());
        // Seen again, it is kept from then; an older snapshot noted later does not
        // shorten it.
        m.observe(t0 + Duration::from_secs(200), [ep("[::]:22")]);
        m.observe(t0 + Duration::from_secs(150), [ep("[::]:22")]);
        m.observe(t0 + Duration::from_secs(319), []);
        assert!(m.set().accepts(&ep("[2001:db8::1]:22")));
    }

    #[test]
    fn a_service_that_exits_leaves_one_label_set_per_remote_not_per_connection() {
        // The reproduction, by the rule alone: a server on an ephemeral port
        // answers 50 clients a second and closes first; its TIME_WAIT sockets outlive it.
        // Whether the exporter saw the listener (memory) or not (range and tally), the
        // leftover sockets make one label set.
        let f = Folding::default();
        let server = ep("127.0.0.1:45000");
        let leftovers: Vec<(Endpoint, Endpoint)> =
            (0..3000u16).map(|i| (server, ep(&format!("127.0.0.1:{}", 33000 + i * 7)))).collect();
        let mut seen_listener = ListenerMemory::default();
        let t0 = Instant::now();
        seen_listener.observe(t0, [server]);
        seen_listener.observe(t0 + Duration::from_secs(30), []);
        for listeners in [seen_listener.set(), ListenerSet::default()] {
            let rule = DirectionRule::new(listeners, PortRange::LINUX_DEFAULT);
            let mut keys = std::collections::BTreeSet::new();
            // Scrapes every 5 s while the leftovers expire one by one.
            for scrape in 0..12 {
                let live = &leftovers[scrape * 250..];
                let d = rule.tally(live.iter().map(|(l, r)| (l, r)));
                for (l, r) in live {
                    keys.insert(PeerKey::of(d.of(l, r), l, r, Some(TcpState::TimeWait), IfaceId::LOOPBACK, &f));
                }
            }
            assert_eq!(keys.len(), 1, "{keys:?}");
            let k = keys.first().unwrap();
            assert_eq!((k.direction, k.service_port), (Direction::Inbound, Some(45000)));
        }
    }

    fn peer(remote: &str, port: u16) -> PeerKey {
        PeerKey {
            direction: Direction::Inbound,
            local: Some("192.0.2.1".parse().unwrap()),
            service_port: Some(port),
            remote: Remote::Address(remote.parse().unwrap()),
            state: Some(TcpState::Established),
            iface: IfaceId(3),
            owner: OwnerId::default(),
            netns: 0,
            translation: Translation::None,
        }
    }

    #[test]
    fn backends_are_label_sets_of_their_own_and_merge_into_other_without_one() {
        // One Service address with 50 backends, a client each: 50 label sets, not one.
        let backend = |i: u16| Translation::Backend(ep(&format!("10.244.{i}.2:8080")));
        let service =
            |i: u16| PeerKey { direction: Direction::Outbound, translation: backend(i), ..peer("10.96.0.10", 80) };
        let peers: Vec<PeerKey> = (0..50).map(service).collect();
        let b = count_bounded(peers.iter().copied(), 0);
        assert_eq!(b.series.len(), 50);
        // Bounded below that, the remote is merged and its backends with it: the label
        // sets fit and the count is kept.
        let mut many: Vec<PeerKey> = peers.clone();
        many.extend((0..20).map(|i| PeerKey {
            remote: Remote::Address(format!("198.51.100.{i}").parse().unwrap()),
            ..peer("1.1.1.1", 22)
        }));
        let b = count_bounded(many.iter().copied(), 30);
        assert!(b.series.len() <= 30, "{}", b.series.len());
        assert_eq!(b.series.iter().map(|s| s.1).sum::<u64>(), 70);
        assert!(b.series.iter().filter(|s| s.0.remote == Remote::Other).all(|s| s.0.translation == Translation::None));
    }

    #[test]
    fn within_the_bound_nothing_is_merged() {
        let b = count_bounded([peer("198.51.100.1", 443), peer("198.51.100.1", 443), peer("198.51.100.2", 443)], 2);
        assert_eq!(b.merged, 0);
        assert_eq!(b.series.len(), 2);
        assert_eq!(b.series.iter().map(|s| s.1).sum::<u64>(), 3);
    }

    #[test]
    fn a_public_server_with_many_clients_keeps_its_biggest_and_the_sum() {
        // 100k distinct clients once each, plus three heavy ones.
        let mut peers: Vec<PeerKey> = (0..100_000u32)
            .map(|i| {
                let a = Ipv4Addr::from(0x0a00_0000 + i);
                PeerKey { remote: Remote::Address(IpAddr::V4(a)), ..peer("0.0.0.0", 443) }
            })
            .collect();
        for (who, n) in [("203.0.113.1", 500), ("203.0.113.2", 300), ("203.0.113.3", 200)] {
            peers.extend(std::iter::repeat_n(peer(who, 443), n));
        }
        let total = peers.len() as u64;
        let b = count_bounded(peers, 5000);
        assert!(b.series.len() <= 5000, "{} series", b.series.len());
        assert_eq!(b.series.iter().map(|s| s.1).sum::<u64>(), total, "merged, not lost");
        let count_of = |r: Remote| b.series.iter().filter(|s| s.0.remote == r).map(|s| s.1).sum::<u64>();
        assert_eq!(count_of(Remote::Address("203.0.113.1".parse().unwrap())), 500);
        assert_eq!(count_of(Remote::Address("203.0.113.3".parse().unwrap())), 200);
        assert!(count_of(Remote::Other) > 90_000);
        assert!(b.merged > 90_000);
    }

    #[test]
    fn thousands_of_remote_ports_fold_the_port_of_the_bucket_too() {
        let peers: Vec<PeerKey> = (0..3000u32)
            .map(|i| PeerKey {
                direction: Direction::Outbound,
                remote: Remote::Address(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
                ..peer("0.0.0.0", 1000 + i as u16)
            })
            .collect();
        let b = count_bounded(peers, 100);
        assert!(b.series.len() <= 100, "{}", b.series.len());
        assert_eq!(b.series.iter().map(|s| s.1).sum::<u64>(), 3000);
    }

    #[test]
    fn owners_split_peers_and_the_last_fold_drops_them_so_the_bound_holds() {
        // One remote per socket, each socket of its own process: the bucket cannot keep
        // the owner and fit.
        let peers: Vec<PeerKey> = (0..3000u32)
            .map(|i| PeerKey {
                remote: Remote::Address(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
                local: Some(IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i % 50))),
                owner: OwnerId(1 + i % 500),
                ..peer("0.0.0.0", 443)
            })
            .collect();
        let b = count_bounded(peers, 100);
        assert!(b.series.len() <= 100, "{}", b.series.len());
        assert_eq!(b.series.iter().map(|s| s.1).sum::<u64>(), 3000);
        assert!(b.series.iter().filter(|s| s.0.remote == Remote::Other).all(|s| s.0.owner == OwnerId::default()));
        // Within the bound, one peer of two processes is two series.
        let two =
            count_bounded([peer("198.51.100.1", 443), PeerKey { owner: OwnerId(7), ..peer("198.51.100.1", 443) }], 10);
        assert_eq!(two.series.len(), 2);
        // A few processes past the bound keep their owner in the bucket.
        let few: Vec<PeerKey> = (0..300u32)
            .map(|i| PeerKey {
                remote: Remote::Address(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
                owner: OwnerId(1 + i % 3),
                ..peer("0.0.0.0", 443)
            })
            .collect();
        let b = count_bounded(few, 20);
        let owners: std::collections::BTreeSet<_> =
            b.series.iter().filter(|s| s.0.remote == Remote::Other).map(|s| s.0.owner).collect();
        assert_eq!(owners.len(), 3, "{:?}", b.series);
    }

    #[test]
    fn prefixes_aggregate_mapped_and_plain_ipv4_remotes() {
        let f = Folding { ipv4_prefix: 24, ipv6_prefix: 64 };
        let want = Remote::Prefix("198.51.100.0".parse().unwrap(), 24);
        assert_eq!(f.remote("198.51.100.7".parse().unwrap()), want);
        assert_eq!(f.remote("::ffff:198.51.100.9".parse().unwrap()), want);
        assert_eq!(
            f.remote("2001:db8:1:2:3::4".parse().unwrap()),
            Remote::Prefix("2001:db8:1:2::".parse().unwrap(), 64)
        );
        let keep = Folding::default();
        assert_eq!(
            keep.remote("::ffff:198.51.100.9".parse().unwrap()),
            Remote::Address("::ffff:198.51.100.9".parse().unwrap())
        );
    }
}
