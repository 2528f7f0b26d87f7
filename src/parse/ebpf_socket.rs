//! The socket table's records (`struct record` of `bpf/sockets.bpf.c`): one socket of
//! any network namespace as a scrape's walk of the table read it, decoded into a
//! [`Connection`] and the inode of its namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{Connection, Endpoint, TcpState};

/// Size of a record.
pub const RECORD_LEN: usize = 64;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSocket {
    /// The socket's network namespace, its nsfs inode.
    pub netns: u32,
    /// The socket as a sock_diag dump of that namespace would give it.
    pub connection: Connection,
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
        connection: Connection {
            local,
            remote,
            state: TcpState::from_code(b[57]),
            if_index: u32_at(b, 36),
            inode: u32_at(b, 40),
            recv_queue: u32_at(b, 44),
            send_queue: u32_at(b, 48),
        },
    })
}

/// A record as the program writes it, for tests and the fuzz target's seeds.
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
