//! The eBPF program's close records (`struct close_record` of `bpf/lifecycle.bpf.c`):
//! one established connection's close (or, for NAT resolution, a failed connect), with
//! the `tcp_info` fields the quality and lifecycle counters count, decoded into a
//! [`DestroyedSocket`] like a socket-destroy notification's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::classify::Direction;
use crate::model::{Endpoint, TcpState};
use crate::parse::sock_destroy::DestroyedSocket;
use crate::parse::tcp_info::TcpInfo;

/// Size of a record.
pub const RECORD_LEN: usize = 104;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EbpfClose {
    /// The socket's network namespace, its nsfs inode.
    pub netns: u32,
    /// Known from its handshake.
    pub direction: Direction,
    /// The socket, its `tcp_info` holding what the record carries.
    pub socket: DestroyedSocket,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes one record; `None` for one of another size, family or direction.
pub fn decode(b: &[u8]) -> Option<EbpfClose> {
    if b.len() != RECORD_LEN {
        return None;
    }
    let cookie = u64::from_ne_bytes(b[0..8].try_into().ok()?);
    let addr = |raw: &[u8]| -> Option<IpAddr> {
        match b[52] {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw).ok()?))),
            _ => None,
        }
    };
    let direction = match b[53] {
        0 => Direction::Inbound,
        1 => Direction::Outbound,
        _ => return None,
    };
    let rtt_us = u32_at(b, 56);
    let failed = b[54] == 1;
    let u64_at = |at: usize| {
        u64::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5], b[at + 6], b[at + 7]])
    };
    let socket = DestroyedSocket {
        local: Endpoint::new(addr(&b[8..24])?, u16_at(b, 48)),
        remote: Endpoint::new(addr(&b[24..40])?, u16_at(b, 50)),
        state: TcpState::Close,
        if_index: u32_at(b, 44),
        info: Some(TcpInfo {
            state: 7,
            min_rtt_us: (rtt_us > 0 && !failed).then_some(rtt_us),
            rtt_us: if failed { 0 } else { rtt_us },
            total_retrans: u32_at(b, 60),
            dsack_dups: Some(u32_at(b, 64)),
            data_segs_out: Some(u32_at(b, 68)),
            // What tells a failed connect from an established one (no byte acked, no RTT).
            bytes_acked: if failed { 0 } else { u64_at(72) },
            bytes_sent: Some(u64_at(80)),
            bytes_retrans: Some(u64_at(88)),
            bytes_received: u64_at(96),
            ..TcpInfo::default()
        }),
        cookie,
    };
    Some(EbpfClose { netns: u32_at(b, 40), direction, socket })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record laid out as the program writes it.
    fn record(family: u8, local: &[u8], remote: &[u8], direction: u8) -> Vec<u8> {
        let mut b = vec![0u8; RECORD_LEN];
        b[0..8].copy_from_slice(&0x1234_5678_9abc_def0u64.to_ne_bytes());
        b[8..8 + local.len()].copy_from_slice(local);
        b[24..24 + remote.len()].copy_from_slice(remote);
        b[40..44].copy_from_slice(&4026531840u32.to_ne_bytes());
        b[44..48].copy_from_slice(&3u32.to_ne_bytes());
        b[48..50].copy_from_slice(&5432u16.to_ne_bytes());
        b[50..52].copy_from_slice(&40000u16.to_ne_bytes());
        b[52] = family;
        b[53] = direction;
        for (at, v) in [(56, 40_123u32), (60, 9), (64, 2), (68, 700)] {
            b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }

    #[test]
    fn every_field_is_read_from_its_offset() {
        let r = decode(&record(AF_INET, &[10, 0, 0, 1], &[10, 0, 0, 2], 0)).unwrap();
        assert_eq!((r.netns, r.direction), (4026531840, Direction::Inbound));
        let s = r.socket;
        assert_eq!(s.local, Endpoint::new("10.0.0.1".parse().unwrap(), 5432));
        assert_eq!(s.remote, Endpoint::new("10.0.0.2".parse().unwrap(), 40000));
        assert_eq!((s.if_index, s.cookie), (3, 0x1234_5678_9abc_def0));
        let i = s.info.unwrap();
        assert_eq!((i.rtt_us, i.total_retrans, i.dsack_dups, i.data_segs_out), (40_123, 9, Some(2), Some(700)));
        assert_eq!(i.lost_segments(), 7);
        assert_eq!(s.outcome(true), crate::parse::sock_destroy::Outcome::Closed);
        let v6 = decode(&record(AF_INET6, &[0xfd; 16], &[0xfe; 16], 1)).unwrap();
        assert_eq!(v6.direction, Direction::Outbound);
        assert_eq!(v6.socket.remote.ip, "fefe:fefe:fefe:fefe:fefe:fefe:fefe:fefe".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn other_sizes_families_and_directions_are_refused() {
        let good = record(AF_INET, &[10, 0, 0, 1], &[10, 0, 0, 2], 1);
        assert!(decode(&good[..RECORD_LEN - 1]).is_none());
        assert!(decode(&[good.clone(), vec![0]].concat()).is_none());
        assert!(decode(&record(7, &[1], &[2], 1)).is_none());
        assert!(decode(&record(AF_INET, &[1], &[2], 2)).is_none());
        assert!(decode(&[]).is_none());
    }
}
