//! The socket walk's records (`struct record` of `bpf/sockets.bpf.c`): one socket of
//! any network namespace as a scrape's walk of the host's TCP hash table read it,
//! decoded into a [`Connection`] and the inode of its namespace.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{Connection, Endpoint, TcpState};

/// Size of a record.
pub const RECORD_LEN: usize = 64;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What kernel object a record was read from (`KIND_*` of the program).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A full socket (any state but TIME_WAIT and a request's).
    Full,
    /// A TIME_WAIT minisock (its substate may be FIN_WAIT2).
    TimeWait,
    /// A request sock of a listener (SYN_RECV).
    Request,
    /// A code this build does not know; kept as a full socket is.
    Other(u8),
}

impl Kind {
    /// The program's code of a kind.
    pub fn from_code(code: u8) -> Kind {
        match code {
            1 => Kind::Full,
            2 => Kind::TimeWait,
            3 => Kind::Request,
            c => Kind::Other(c),
        }
    }
}

/// A decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSocket {
    /// The socket's network namespace, its nsfs inode.
    pub netns: u32,
    /// What kind of kernel object it was read from.
    pub kind: Kind,
    /// The socket as a sock_diag dump of that namespace would give it.
    pub connection: Connection,
    /// The hash bucket it was read from.
    pub bucket: u32,
    /// How many times that bucket was read again before this record (the walk left its
    /// chain: a socket freed and reused while it was read).
    pub pass: u8,
}

/// Appends a record, first dropping those of its bucket from an earlier pass: when the
/// walk reads a bucket again, what it read before of that bucket is void. A bucket's
/// records are contiguous (one bucket is read at a time).
pub fn push_keeping_last_pass(records: &mut Vec<TableSocket>, s: TableSocket) {
    while records.last().is_some_and(|l| l.bucket == s.bucket && l.pass < s.pass) {
        records.pop();
    }
    records.push(s);
}

type Tuple = (u32, Endpoint, Endpoint);

fn tuple(s: &TableSocket) -> Tuple {
    (s.netns, s.connection.local, s.connection.remote)
}

/// Drops the records at the end that come from `bucket`: a run of the walk that stops
/// inside a bucket leaves it to the next run, which reads it whole again.
pub fn drop_bucket_tail(records: &mut Vec<TableSocket>, bucket: u64) {
    while records.last().is_some_and(|l| u64::from(l.bucket) == bucket) {
        records.pop();
    }
}

/// Leaves one record per connection that changed form while the walk read its chain.
///
/// The walk reads the kernel's chains without their locks. When a socket becomes a
/// TIME_WAIT minisock, the minisock is added at the head of the chain before the full
/// socket is taken out, under the chain's lock; a walk that starts on the chain between
/// the two reads both. So may a request sock and the full socket the handshake made of
/// it. A dump, which holds the lock, shows one. For a namespace and tuple that has
/// records of more than one kind, the newer form is kept: a TIME_WAIT minisock over a
/// full socket, a full socket over a request sock. Records of one kind are all kept:
/// listeners that share a port (SO_REUSEPORT) have the same tuple and are distinct
/// sockets. Cost: a lookup per full socket, and none when the read held no minisock and
/// no request.
pub fn settle(records: &mut Vec<TableSocket>) {
    let mut minis: HashMap<Tuple, Kind> = HashMap::new();
    for r in records.iter() {
        if matches!(r.kind, Kind::TimeWait | Kind::Request) {
            // A TIME_WAIT and a request with one tuple: a SYN that reused the tuple of
            // a TIME_WAIT: both are kept (no full socket stands between them).
            minis.entry(tuple(r)).or_insert(r.kind);
        }
    }
    if minis.is_empty() {
        return;
    }
    let mut replaced_requests: HashSet<Tuple> = HashSet::new();
    records.retain(|r| {
        if !matches!(r.kind, Kind::Full | Kind::Other(_)) {
            return true;
        }
        match minis.get(&tuple(r)) {
            Some(Kind::TimeWait) => false,
            Some(_) => {
                replaced_requests.insert(tuple(r));
                true
            }
            None => true,
        }
    });
    if !replaced_requests.is_empty() {
        records.retain(|r| r.kind != Kind::Request || !replaced_requests.contains(&tuple(r)));
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes one record; `None` for one of another size or family.
pub fn decode(b: &[u8]) -> Option<TableSocket> {
    if b.len() != RECORD_LEN {
        return None;
    }
    let addr = |raw: &[u8]| -> Option<IpAddr> {
        match b[56] {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw).ok()?))),
            _ => None,
        }
    };
    let local = Endpoint { ip: addr(&b[0..16])?, port: u16_at(b, 52) };
    let remote = Endpoint { ip: addr(&b[16..32])?, port: u16_at(b, 54) };
    Some(TableSocket {
        netns: u32_at(b, 32),
        kind: Kind::from_code(b[58]),
        connection: Connection {
            local,
            remote,
            state: TcpState::from_code(b[57]),
            if_index: u32_at(b, 36),
            inode: u32_at(b, 40),
            recv_queue: u32_at(b, 44),
            send_queue: u32_at(b, 48),
        },
        pass: b[59],
        bucket: u32_at(b, 60),
    })
}

/// A record of a full socket as the program writes it, for tests and the fuzz
/// target's seeds (byte 58 holds the kind).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    netns: u32,
    family: u8,
    state: u8,
    local: (&[u8], u16),
    remote: (&[u8], u16),
    ifindex: u32,
    inode: u32,
    queues: (u32, u32),
) -> [u8; RECORD_LEN] {
    let mut b = [0u8; RECORD_LEN];
    b[..local.0.len().min(16)].copy_from_slice(&local.0[..local.0.len().min(16)]);
    b[16..16 + remote.0.len().min(16)].copy_from_slice(&remote.0[..remote.0.len().min(16)]);
    b[32..36].copy_from_slice(&netns.to_ne_bytes());
    b[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    b[40..44].copy_from_slice(&inode.to_ne_bytes());
    b[44..48].copy_from_slice(&queues.0.to_ne_bytes());
    b[48..52].copy_from_slice(&queues.1.to_ne_bytes());
    b[52..54].copy_from_slice(&local.1.to_ne_bytes());
    b[54..56].copy_from_slice(&remote.1.to_ne_bytes());
    b[56] = family;
    b[57] = state;
    b[58] = 1;
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_listener_keeps_its_queue_and_namespace() {
        let b = encode(4026532000, AF_INET, 10, (&[127, 0, 0, 1], 8080), (&[0; 4], 0), 0, 777, (3, 128));
        let s = decode(&b).unwrap();
        assert_eq!(s.netns, 4026532000);
        assert_eq!(s.connection.state, TcpState::Listen);
        assert_eq!(s.connection.local, Endpoint { ip: IpAddr::V4(Ipv4Addr::LOCALHOST), port: 8080 });
        assert_eq!(s.connection.remote.port, 0);
        assert_eq!((s.connection.recv_queue, s.connection.send_queue, s.connection.inode), (3, 128, 777));
    }

    #[test]
    fn an_ipv6_time_wait_reads_its_whole_addresses() {
        let mut local = [0u8; 16];
        local[15] = 1;
        let mut remote = [0u8; 16];
        remote[0] = 0xfd;
        remote[15] = 2;
        let b = encode(9, AF_INET6, 6, (&local, 40000), (&remote, 443), 3, 0, (0, 0));
        let s = decode(&b).unwrap();
        assert_eq!(s.connection.state, TcpState::TimeWait);
        assert_eq!(s.connection.local.ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(s.connection.remote, Endpoint { ip: "fd00::2".parse().unwrap(), port: 443 });
        assert_eq!(s.connection.if_index, 3);
    }

    fn record(netns: u32, kind: u8, state: u8, local_port: u16, remote_port: u16, inode: u32) -> TableSocket {
        let mut b = encode(
            netns,
            AF_INET,
            state,
            (&[127, 0, 0, 1], local_port),
            (&[127, 0, 0, 2], remote_port),
            0,
            inode,
            (0, 0),
        );
        b[58] = kind;
        decode(&b).unwrap()
    }

    fn states(records: &[TableSocket]) -> Vec<(u32, u16, TcpState)> {
        let mut v: Vec<_> = records.iter().map(|r| (r.netns, r.connection.local.port, r.connection.state)).collect();
        v.sort();
        v
    }

    #[test]
    fn a_socket_read_before_and_after_it_became_time_wait_is_kept_once_as_time_wait() {
        // FULL=1, TIMEWAIT=2, REQUEST=3; states: ESTABLISHED=1, FIN_WAIT2=5, TIME_WAIT=6.
        let mut r = vec![
            record(7, 1, 1, 40000, 80, 55), // read while ESTABLISHED ...
            record(7, 2, 6, 40000, 80, 0),  // ... and as its minisock
            record(7, 1, 5, 40001, 80, 56), // FIN_WAIT2 full socket ...
            record(7, 2, 5, 40001, 80, 0),  // ... and its minisock, still FIN_WAIT2
            record(8, 1, 1, 40000, 80, 57), // the same tuple in another namespace
            record(7, 2, 6, 40002, 80, 0),  // a TIME_WAIT alone
        ];
        settle(&mut r);
        assert_eq!(
            states(&r),
            vec![
                (7, 40000, TcpState::TimeWait),
                (7, 40001, TcpState::FinWait2),
                (7, 40002, TcpState::TimeWait),
                (8, 40000, TcpState::Established)
            ]
        );
        assert!(r.iter().filter(|s| s.netns == 7).all(|s| s.kind == Kind::TimeWait));
    }

    #[test]
    fn a_handshake_read_as_request_and_as_its_child_is_kept_once_as_the_child() {
        let mut r = vec![record(7, 3, 3, 80, 40000, 0), record(7, 1, 1, 80, 40000, 0), record(7, 3, 3, 80, 40001, 0)];
        settle(&mut r);
        assert_eq!(states(&r), vec![(7, 80, TcpState::Established), (7, 80, TcpState::SynRecv)]);
        assert_eq!(r.iter().find(|s| s.connection.remote.port == 40001).unwrap().kind, Kind::Request);
    }

    #[test]
    fn listeners_sharing_a_port_and_unknown_kinds_are_all_kept() {
        let mut r = vec![record(7, 1, 10, 80, 0, 1), record(7, 1, 10, 80, 0, 2), record(7, 9, 1, 81, 1, 3)];
        settle(&mut r);
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].kind, Kind::Other(9));
    }

    fn in_bucket(bucket: u32, pass: u8, local_port: u16) -> TableSocket {
        let mut b = encode(7, AF_INET, 1, (&[127, 0, 0, 1], local_port), (&[127, 0, 0, 2], 80), 0, 0, (0, 0));
        b[59] = pass;
        b[60..64].copy_from_slice(&bucket.to_ne_bytes());
        decode(&b).unwrap()
    }

    #[test]
    fn a_bucket_read_again_keeps_only_its_last_pass() {
        let mut r = Vec::new();
        for s in [
            in_bucket(4, 0, 1),
            in_bucket(5, 0, 2), // bucket 5, first pass: void once it is read again
            in_bucket(5, 0, 3),
            in_bucket(5, 1, 2), // bucket 5 again
            in_bucket(5, 2, 2), // and again: only this pass stays
            in_bucket(5, 2, 3),
            in_bucket(6, 0, 4),
        ] {
            push_keeping_last_pass(&mut r, s);
        }
        let got: Vec<_> = r.iter().map(|s| (s.bucket, s.pass, s.connection.local.port)).collect();
        assert_eq!(got, vec![(4, 0, 1), (5, 2, 2), (5, 2, 3), (6, 0, 4)]);
        // A run that stopped inside bucket 6 leaves it to the next run.
        drop_bucket_tail(&mut r, 6);
        assert_eq!(r.len(), 3);
        drop_bucket_tail(&mut r, 9);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn other_sizes_and_families_are_refused() {
        let b = encode(1, AF_INET, 1, (&[10, 0, 0, 1], 1), (&[10, 0, 0, 2], 2), 0, 0, (0, 0));
        assert!(decode(&b[..63]).is_none());
        let mut bad = b;
        bad[56] = 1;
        assert!(decode(&bad).is_none());
        let mut unknown = b;
        unknown[57] = 12;
        assert_eq!(decode(&unknown).unwrap().connection.state, TcpState::Unknown);
    }
}
