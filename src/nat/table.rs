//! One network namespace's NAT translations, kept from its conntrack entries (pure: fed
//! decoded events, asked about sockets).
//!
//! Only entries where NAT rewrote something are kept, each under the key a socket of
//! one end can be found by:
//! - the client's socket (outbound) has the original tuple: its local end is the
//!   original source, its remote end the original destination (a Service address);
//!   when the reply's source differs from that destination, it was DNATed to the
//!   reply's source, the backend;
//! - the server's socket (inbound) has the reply tuple, mirrored: its local end is the
//!   reply's source, its remote end the reply's destination; when that destination
//!   differs from the original source, the client was SNATed (masquerade) and the
//!   original source is the client's real address.
//!
//! The outbound key leaves out the destination port: a failed connect's socket-destroy
//! notification has lost its remote port, and (local address, local port, remote
//! address) names one connection all the same; two entries that share it with different
//! ports make that key ambiguous, and then it answers nothing rather than a guess.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::classify::Direction;
use crate::model::Endpoint;
use crate::parse::conntrack::{Event, Flow};

/// How long a destroyed entry still answers: a socket is often counted after its
/// conntrack entry went (an unanswered SYN's entry times out at 120 s, the socket gives
/// up at about 127 s; the lifecycle thread holds outbound closes half a second).
pub const GRACE: Duration = Duration::from_secs(10);

/// What NAT did to a socket's connection, as its labels say it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Translation {
    /// Nothing translated, or nothing known.
    #[default]
    None,
    /// Outbound: the destination was rewritten to this backend.
    Backend(Endpoint),
    /// Inbound: the client's address before SNAT or masquerade.
    OriginalSource(IpAddr),
}

/// A translated destination, under its original source and destination address.
#[derive(Clone, Copy, Debug)]
struct Dnat {
    /// The original destination port; `None` once two entries shared the key.
    port: Option<u16>,
    backend: Endpoint,
    id: u32,
}

#[derive(Clone, Copy, Debug)]
struct Snat {
    original: IpAddr,
    id: u32,
}

/// How many translations all namespaces may keep together, and what did not fit.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// The bound (`--collector.nat.max-entries`).
    pub max: usize,
    /// Keys kept now, every namespace's.
    pub held: usize,
    /// Translations not kept because the bound was reached.
    pub dropped: u64,
}

impl Budget {
    /// A budget of `max` keys.
    pub fn new(max: usize) -> Budget {
        Budget { max, held: 0, dropped: 0 }
    }

    fn take(&mut self) -> bool {
        if self.held >= self.max {
            self.dropped += 1;
            return false;
        }
        self.held += 1;
        true
    }
}

/// A namespace's translations.
#[derive(Debug, Default)]
pub struct Table {
    dnat: HashMap<(Endpoint, IpAddr), Dnat>,
    snat: HashMap<(Endpoint, Endpoint), Snat>,
    /// Destroyed entries' keys, oldest first, with when they stop answering.
    dying: VecDeque<(Instant, Key, u32)>,
}

#[derive(Clone, Copy, Debug)]
enum Key {
    Dnat(Endpoint, IpAddr),
    Snat(Endpoint, Endpoint),
}

/// IPv4-mapped IPv6 addresses as conntrack sees them: IPv4.
fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn plain_end(e: &Endpoint) -> Endpoint {
    Endpoint::new(plain(e.ip), e.port)
}

impl Table {
    /// Keys held.
    pub fn len(&self) -> usize {
        self.dnat.len() + self.snat.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one entry's news at `now`.
    pub fn apply(&mut self, event: Event, now: Instant, budget: &mut Budget) {
        match event {
            Event::Exists(f) => self.insert(&f, budget),
            Event::Destroyed(f) => self.destroyed(&f, now),
        }
    }

    fn insert(&mut self, f: &Flow, budget: &mut Budget) {
        let (o, r) = (&f.original, &f.reply);
        if r.src != o.dst {
            let key = (o.src, o.dst.ip);
            let new = Dnat { port: Some(o.dst.port), backend: r.src, id: f.id };
            match self.dnat.get_mut(&key) {
                Some(d) if d.port == Some(o.dst.port) || d.id == f.id => *d = new,
                Some(d) => d.port = None,
                None => {
                    if budget.take() {
                        self.dnat.insert(key, new);
                    }
                }
            }
        }
        if r.dst != o.src {
            let key = (r.src, r.dst);
            let new = Snat { original: o.src.ip, id: f.id };
            match self.snat.get_mut(&key) {
                Some(s) => *s = new,
                None => {
                    if budget.take() {
                        self.snat.insert(key, new);
                    }
                }
            }
        }
    }

    fn destroyed(&mut self, f: &Flow, now: Instant) {
        let (o, r) = (&f.original, &f.reply);
        let until = now + GRACE;
        if r.src != o.dst && self.dnat.contains_key(&(o.src, o.dst.ip)) {
            self.dying.push_back((until, Key::Dnat(o.src, o.dst.ip), f.id));
        }
        if r.dst != o.src && self.snat.contains_key(&(r.src, r.dst)) {
            self.dying.push_back((until, Key::Snat(r.src, r.dst), f.id));
        }
    }

    /// Forgets the destroyed entries whose grace ended by `now` (unless the key was
    /// taken by a new entry since).
    pub fn expire(&mut self, now: Instant, budget: &mut Budget) {
        while let Some(&(until, key, id)) = self.dying.front() {
            if until > now {
                break;
            }
            self.dying.pop_front();
            let removed = match key {
                Key::Dnat(s, d) => {
                    self.dnat.get(&(s, d)).is_some_and(|e| e.id == id) && self.dnat.remove(&(s, d)).is_some()
                }
                Key::Snat(s, d) => {
                    self.snat.get(&(s, d)).is_some_and(|e| e.id == id) && self.snat.remove(&(s, d)).is_some()
                }
            };
            if removed {
                budget.held = budget.held.saturating_sub(1);
            }
        }
    }

    /// What NAT did to the connection of a socket with these ends.
    pub fn translate(&self, direction: Direction, local: &Endpoint, remote: &Endpoint) -> Translation {
        let (local, remote) = (plain_end(local), plain_end(remote));
        match direction {
            Direction::Outbound => match self.dnat.get(&(local, remote.ip)) {
                Some(d) if d.port == Some(remote.port) || (remote.port == 0 && d.port.is_some()) => {
                    Translation::Backend(d.backend)
                }
                _ => Translation::None,
            },
            Direction::Inbound => match self.snat.get(&(local, remote)) {
                Some(s) => Translation::OriginalSource(s.original),
                None => Translation::None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::conntrack::Tuple;

    fn ep(s: &str) -> Endpoint {
        let a: std::net::SocketAddr = s.parse().unwrap();
        Endpoint::new(a.ip(), a.port())
    }

    fn flow(o: (&str, &str), r: (&str, &str), id: u32) -> Flow {
        Flow { original: Tuple { src: ep(o.0), dst: ep(o.1) }, reply: Tuple { src: ep(r.0), dst: ep(r.1) }, id }
    }

    /// A pod's connection to a Service, DNATed to a backend.
    fn service(id: u32, port: u16, backend: &str) -> Flow {
        let client = format!("10.0.0.5:{port}");
        flow((&client, "10.96.0.10:80"), (backend, &client), id)
    }

    #[test]
    fn the_client_sees_its_backend_and_the_untranslated_see_nothing() {
        let (mut t, mut b, now) = (Table::default(), Budget::new(10), Instant::now());
        t.apply(Event::Exists(service(1, 40000, "10.244.1.2:8080")), now, &mut b);
        t.apply(
            Event::Exists(flow(("10.0.0.5:40001", "10.0.0.9:22"), ("10.0.0.9:22", "10.0.0.5:40001"), 2)),
            now,
            &mut b,
        );
        assert_eq!(b.held, 1, "only the translated entry is kept");
        let out = |l: &str, r: &str| t.translate(Direction::Outbound, &ep(l), &ep(r));
        assert_eq!(out("10.0.0.5:40000", "10.96.0.10:80"), Translation::Backend(ep("10.244.1.2:8080")));
        assert_eq!(out("10.0.0.5:40000", "10.96.0.10:443"), Translation::None, "another port is another connection");
        assert_eq!(
            out("10.0.0.5:40000", "10.96.0.10:0"),
            Translation::Backend(ep("10.244.1.2:8080")),
            "a failed connect lost its port"
        );
        assert_eq!(
            out("[::ffff:10.0.0.5]:40000", "[::ffff:10.96.0.10]:80"),
            Translation::Backend(ep("10.244.1.2:8080"))
        );
        assert_eq!(out("10.0.0.5:40001", "10.0.0.9:22"), Translation::None);
        assert_eq!(t.translate(Direction::Inbound, &ep("10.0.0.5:40000"), &ep("10.96.0.10:80")), Translation::None);
    }

    #[test]
    fn the_server_sees_the_client_before_masquerade() {
        let (mut t, mut b, now) = (Table::default(), Budget::new(10), Instant::now());
        // Published port: 10.0.0.2 -> 10.0.0.1:8080, DNAT to 172.17.0.2:80 and masqueraded.
        let f = flow(("10.0.0.2:50000", "10.0.0.1:8080"), ("172.17.0.2:80", "172.17.0.1:61000"), 4);
        t.apply(Event::Exists(f), now, &mut b);
        let inbound = t.translate(Direction::Inbound, &ep("172.17.0.2:80"), &ep("172.17.0.1:61000"));
        assert_eq!(inbound, Translation::OriginalSource("10.0.0.2".parse().unwrap()));
        assert_eq!(b.held, 2, "DNAT and SNAT: two keys");
        // DNAT alone leaves the client's address as it was: nothing to say inbound.
        let mut plain = Table::default();
        plain.apply(
            Event::Exists(flow(("10.0.0.2:50000", "10.0.0.1:8080"), ("172.17.0.2:80", "10.0.0.2:50000"), 5)),
            now,
            &mut b,
        );
        assert_eq!(plain.translate(Direction::Inbound, &ep("172.17.0.2:80"), &ep("10.0.0.2:50000")), Translation::None);
    }

    #[test]
    fn destroyed_entries_answer_for_the_grace_then_go_unless_reused() {
        let (mut t, mut b, now) = (Table::default(), Budget::new(10), Instant::now());
        let a = service(1, 40000, "10.244.1.2:8080");
        t.apply(Event::Exists(a), now, &mut b);
        t.apply(Event::Destroyed(a), now, &mut b);
        let out = || t.translate(Direction::Outbound, &ep("10.0.0.5:40000"), &ep("10.96.0.10:80"));
        assert_eq!(out(), Translation::Backend(ep("10.244.1.2:8080")));
        let mut t2 = Table::default();
        std::mem::swap(&mut t, &mut t2);
        t2.expire(now + GRACE - Duration::from_millis(1), &mut b);
        assert_eq!(t2.len(), 1);
        t2.expire(now + GRACE, &mut b);
        assert!(t2.is_empty());
        assert_eq!(b.held, 0);
        // The same tuple reused by a new entry before the grace ends stays.
        let again = service(2, 40000, "10.244.3.2:8080");
        t2.apply(Event::Exists(a), now, &mut b);
        t2.apply(Event::Destroyed(a), now, &mut b);
        t2.apply(Event::Exists(again), now, &mut b);
        t2.expire(now + GRACE, &mut b);
        assert_eq!(
            t2.translate(Direction::Outbound, &ep("10.0.0.5:40000"), &ep("10.96.0.10:80")),
            Translation::Backend(ep("10.244.3.2:8080"))
        );
        assert_eq!(b.held, 1);
    }

    #[test]
    fn two_ports_make_the_portless_key_exact_only_and_the_budget_counts_what_did_not_fit() {
        let (mut t, mut b, now) = (Table::default(), Budget::new(1), Instant::now());
        t.apply(Event::Exists(service(1, 40000, "10.244.1.2:8080")), now, &mut b);
        let other = flow(("10.0.0.5:40000", "10.96.0.10:443"), ("10.244.2.2:8443", "10.0.0.5:40000"), 2);
        t.apply(Event::Exists(other), now, &mut b);
        assert_eq!(t.translate(Direction::Outbound, &ep("10.0.0.5:40000"), &ep("10.96.0.10:0")), Translation::None);
        t.apply(Event::Exists(service(3, 40001, "10.244.1.2:8080")), now, &mut b);
        assert_eq!((b.held, b.dropped), (1, 1));
        assert_eq!(t.translate(Direction::Outbound, &ep("10.0.0.5:40001"), &ep("10.96.0.10:80")), Translation::None);
    }
}
