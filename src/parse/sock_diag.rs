//! NETLINK_SOCK_DIAG messages for TCP: the dump request, and the decoding of replies into
//! `Connection`s straight from the receive buffer.
//!
//! Layouts are the kernel's UAPI (`linux/netlink.h`, `linux/inet_diag.h`), which is
//! stable ABI. They are decoded here by hand rather than through a netlink message crate
//! because those build a `Vec` of attributes per socket, and the scrape path must not
//! allocate per socket; the few fixed offsets below are all a TCP dump needs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use crate::model::{Connection, Endpoint, TcpState};
use crate::parse::tcp_info::{self, TcpInfo};

/// `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `SOCK_DIAG_BY_FAMILY`: request and reply type.
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x100 | 0x200;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;
/// Length of the request this module builds.
pub const REQUEST_LEN: usize = NLMSG_HDRLEN + REQ_LEN;
const IPPROTO_TCP: u8 = 6;
/// `AF_INET`.
pub const AF_INET: u8 = 2;
/// `AF_INET6`.
pub const AF_INET6: u8 = 10;
/// Every TCP state the kernel knows (bits 1..=12, `TCP_NEW_SYN_RECV` included, which it
/// reports as SYN_RECV).
pub const ALL_STATES: u32 = 0x1ffe;

/// Why a reply could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A header or message runs past the end of what was received.
    #[error("truncated netlink message at byte {offset}")]
    Truncated {
        /// Where in the buffer.
        offset: usize,
    },
    /// The kernel answered the dump with an error (a negative errno).
    #[error("kernel error {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The errno, positive.
        errno: i32,
    },
    /// An inet_diag reply whose family is neither AF_INET nor AF_INET6.
    #[error("unexpected address family {0}")]
    Family(u8),
}

/// Builds a dump request for TCP sockets of one family in the given states, with no
/// extensions: the kernel then sends the 72-byte core of each socket and nothing else.
pub fn dump_request(family: u8, states: u32, seq: u32) -> [u8; REQUEST_LEN] {
    let mut req = [0u8; REQUEST_LEN];
    req[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // pid 0: the kernel.
    let body = &mut req[NLMSG_HDRLEN..];
    body[0] = family;
    body[1] = IPPROTO_TCP;
    body[2] = 0; // idiag_ext: none
    body[4..8].copy_from_slice(&states.to_ne_bytes());
    // The socket id stays zero: a dump matches every socket.
    req
}

/// `INET_DIAG_INFO` in `enum` of `linux/inet_diag.h`: the `tcp_info` attribute.
const INET_DIAG_INFO: u16 = 2;

/// [`dump_request`] asking for each socket's `tcp_info` too (`idiag_ext` bit
/// `INET_DIAG_INFO - 1`). The kernel then fills it for every full socket it sends; a
/// TIME_WAIT or request socket has none.
pub fn info_dump_request(family: u8, states: u32, seq: u32) -> [u8; REQUEST_LEN] {
    let mut req = dump_request(family, states, seq);
    req[NLMSG_HDRLEN + 2] = 1 << (INET_DIAG_INFO - 1);
    req
}

/// The socket's cookie (`idiag_cookie`, two host-order `__u32`s, low word first) of an
/// `inet_diag_msg` long enough to be decoded; 0 otherwise.
pub fn socket_cookie(msg: &[u8]) -> u64 {
    match msg.get(44..52) {
        Some(c) => u64::from(u32_at(c, 0)) | u64::from(u32_at(c, 4)) << 32,
        None => 0,
    }
}

/// One socket of an [`info_dump_request`] dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoSocket {
    /// What every dump gives.
    pub connection: Connection,
    /// Its cookie.
    pub cookie: u64,
    /// Its `tcp_info`, absent for sockets that have none.
    pub info: Option<TcpInfo>,
}

/// [`decode_batch`] for a dump with `tcp_info`: each socket with its cookie and info.
pub fn decode_info_batch(buf: &[u8], mut sink: impl FnMut(InfoSocket)) -> Result<Batch, DecodeError> {
    walk_batch(buf, |payload| {
        let connection = decode_socket(payload)?;
        let mut info = None;
        let mut attrs = &payload[MSG_LEN..];
        while attrs.len() >= 4 {
            let alen = usize::from(u16_at(attrs, 0));
            if alen < 4 || alen > attrs.len() {
                return Err(DecodeError::Truncated { offset: 0 });
            }
            if u16_at(attrs, 2) == INET_DIAG_INFO {
                info = tcp_info::decode(&attrs[4..alen]);
            }
            attrs = attrs.get((alen + 3) & !3..).unwrap_or(&[]);
        }
        sink(InfoSocket { connection, cookie: socket_cookie(payload), info });
        Ok(())
    })
}

/// What a receive buffer held besides sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// The dump goes on: receive again.
    More,
    /// `NLMSG_DONE`: the dump is complete.
    Done,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes one `inet_diag_msg` (the payload of a `SOCK_DIAG_BY_FAMILY` reply).
pub fn decode_socket(msg: &[u8]) -> Result<Connection, DecodeError> {
    if msg.len() < MSG_LEN {
        return Err(DecodeError::Truncated { offset: msg.len() });
    }
    let family = msg[0];
    let state = TcpState::from_code(msg[1]);
    // inet_diag_sockid at offset 4: sport, dport (network order), src[16], dst[16], if.
    let id = &msg[4..52];
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let addr = |raw: &[u8]| -> Result<IpAddr, DecodeError> {
        match family {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            AF_INET6 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&raw[..16]);
                Ok(IpAddr::V6(Ipv6Addr::from(o)))
            }
            other => Err(DecodeError::Family(other)),
        }
    };
    Ok(Connection {
        local: Endpoint::new(addr(&id[4..20])?, sport),
        remote: Endpoint::new(addr(&id[20..36])?, dport),
        state,
        if_index: u32_at(id, 36),
        // After the id: expires, rqueue, wqueue, uid, inode. For a listener the kernel
        // puts its accept queue in rqueue and its backlog limit in wqueue.
        recv_queue: u32_at(msg, 56),
        send_queue: u32_at(msg, 60),
        inode: u32_at(msg, 68),
    })
}

/// Whether a receive buffer ends the dump (`NLMSG_DONE`, an error, or garbage), reading
/// only message headers: the receiving thread's check, cheaper than a decode.
pub fn ends_dump(mut buf: &[u8]) -> bool {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return true;
        }
        match u16_at(buf, 4) {
            NLMSG_DONE => return true,
            // An ACK (errno 0) is no error to the decoder either.
            NLMSG_ERROR if len >= NLMSG_HDRLEN + 4 && u32_at(buf, NLMSG_HDRLEN) == 0 => {
                buf = buf.get((len + 3) & !3..).unwrap_or(&[])
            }
            NLMSG_ERROR => return true,
            // A reply the decoder would refuse ends the dump here too, so that both
            // threads stop at the same place.
            SOCK_DIAG_BY_FAMILY if len < NLMSG_HDRLEN + MSG_LEN || !matches!(buf[NLMSG_HDRLEN], AF_INET | AF_INET6) => {
                return true
            }
            _ => buf = buf.get((len + 3) & !3..).unwrap_or(&[]),
        }
    }
    !buf.is_empty()
}

/// Decodes every message in one receive buffer, passing sockets to `sink`.
///
/// Messages of other types (none are expected) are skipped; an `NLMSG_ERROR` ends the
/// dump with its errno.
pub fn decode_batch(buf: &[u8], mut sink: impl FnMut(Connection)) -> Result<Batch, DecodeError> {
    walk_batch(buf, |payload| {
        sink(decode_socket(payload)?);
        Ok(())
    })
}

/// Walks the messages of one receive buffer, handing each `SOCK_DIAG_BY_FAMILY`
/// payload to `socket`; an error it returns is reported at that message's offset.
fn walk_batch(mut buf: &[u8], mut socket: impl FnMut(&[u8]) -> Result<(), DecodeError>) -> Result<Batch, DecodeError> {
    let total = buf.len();
    while !buf.is_empty() {
        let offset = total - buf.len();
        if buf.len() < NLMSG_HDRLEN {
            return Err(DecodeError::Truncated { offset });
        }
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(DecodeError::Truncated { offset });
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        match u16_at(buf, 4) {
            NLMSG_DONE => {
                // A failure in the middle of a dump is reported here, not as NLMSG_ERROR
                // (`ss` checks it too): what came before it is not the whole table.
                if payload.len() >= 4 {
                    let errno = (u32_at(payload, 0) as i32).saturating_neg();
                    if errno > 0 {
                        return Err(DecodeError::Kernel { errno });
                    }
                }
                return Ok(Batch::Done);
            }
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(DecodeError::Truncated { offset });
                }
                // The kernel sends a negative errno; a corrupt i32::MIN must not overflow.
                let errno = (u32_at(payload, 0) as i32).saturating_neg();
                if errno != 0 {
                    return Err(DecodeError::Kernel { errno });
                }
            }
            SOCK_DIAG_BY_FAMILY => socket(payload).map_err(|e| match e {
                DecodeError::Truncated { .. } => DecodeError::Truncated { offset },
                other => other,
            })?,
            _ => {}
        }
        // Messages are padded to 4 bytes.
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or(&[]);
    }
    Ok(Batch::More)
}

/// A `SOCK_DIAG_BY_FAMILY` reply as the kernel lays it out: addresses in network order
/// (4 bytes for AF_INET, 16 for AF_INET6). For tests, benchmarks and fuzz seeds.
pub fn reply_message(family: u8, state: u8, src: &[u8], sport: u16, dst: &[u8], dport: u16, ifindex: u32) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDRLEN + MSG_LEN];
    m[0..4].copy_from_slice(&((NLMSG_HDRLEN + MSG_LEN) as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let p = &mut m[NLMSG_HDRLEN..];
    p[0] = family;
    p[1] = state;
    p[4..6].copy_from_slice(&sport.to_be_bytes());
    p[6..8].copy_from_slice(&dport.to_be_bytes());
    p[8..8 + src.len().min(16)].copy_from_slice(&src[..src.len().min(16)]);
    p[24..24 + dst.len().min(16)].copy_from_slice(&dst[..dst.len().min(16)]);
    p[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done_msg() -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDRLEN + 4];
        m[0..4].copy_from_slice(&20u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        m
    }

    fn error_msg(errno: i32) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDRLEN + 4 + NLMSG_HDRLEN];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[16..20].copy_from_slice(&(-errno).to_ne_bytes());
        m
    }

    #[test]
    fn request_layout() {
        let r = dump_request(AF_INET6, ALL_STATES, 7);
        assert_eq!(u32_at(&r, 0), 72);
        assert_eq!(u16_at(&r, 4), 20);
        assert_eq!(u16_at(&r, 6), 0x301);
        assert_eq!(u32_at(&r, 8), 7);
        assert_eq!(&r[16..20], &[AF_INET6, 6, 0, 0]);
        assert_eq!(u32_at(&r, 20), 0x1ffe);
        assert!(r[24..].iter().all(|&b| b == 0));
    }

    #[test]
    fn decodes_ipv4_ipv6_and_the_interface_index() {
        let mut buf = reply_message(AF_INET, 10, &[127, 0, 0, 1], 9100, &[0, 0, 0, 0], 0, 0);
        let v6: Ipv6Addr = "fe80::fc:ff:fe00:1".parse().unwrap();
        let peer: Ipv6Addr = "fe80::1".parse().unwrap();
        buf.extend(reply_message(AF_INET6, 1, &v6.octets(), 7946, &peer.octets(), 40000, 4));
        let mut got = Vec::new();
        assert_eq!(decode_batch(&buf, |c| got.push(c)), Ok(Batch::More));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].local, Endpoint::new("127.0.0.1".parse().unwrap(), 9100));
        assert_eq!(got[0].state, TcpState::Listen);
        assert_eq!(got[1].local, Endpoint::new(IpAddr::V6(v6), 7946));
        assert_eq!(got[1].remote, Endpoint::new(IpAddr::V6(peer), 40000));
        assert_eq!(got[1].if_index, 4);
    }

    #[test]
    fn done_ends_the_dump_and_errors_carry_the_errno() {
        let mut buf = reply_message(AF_INET, 6, &[10, 0, 0, 1], 1, &[10, 0, 0, 2], 2, 0);
        assert!(!ends_dump(&buf));
        buf.extend(done_msg());
        assert!(ends_dump(&buf));
        assert!(ends_dump(&error_msg(1)));
        assert!(ends_dump(&buf[..20]), "a cut header ends the dump");
        let mut bad_family = reply_message(AF_INET, 1, &[1, 2, 3, 4], 1, &[5, 6, 7, 8], 2, 0);
        bad_family[NLMSG_HDRLEN] = 99;
        assert!(ends_dump(&bad_family));
        let mut min = error_msg(0);
        min[16..20].copy_from_slice(&0x8000_0000u32.to_ne_bytes());
        assert_eq!(decode_batch(&min, |_| {}), Err(DecodeError::Kernel { errno: i32::MAX }));
        let mut n = 0;
        assert_eq!(decode_batch(&buf, |_| n += 1), Ok(Batch::Done));
        assert_eq!(n, 1);
        assert_eq!(decode_batch(&error_msg(1), |_| {}), Err(DecodeError::Kernel { errno: 1 }));
        assert_eq!(decode_batch(&error_msg(0), |_| {}), Ok(Batch::More), "an ACK is no error");
    }

    #[test]
    fn an_error_in_the_done_message_fails_the_dump() {
        // The kernel's netlink_dump() puts a mid-dump failure (-ENOBUFS, -EINTR, ...) in
        // the NLMSG_DONE payload.
        let mut buf = reply_message(AF_INET, 1, &[10, 0, 0, 1], 1, &[10, 0, 0, 2], 2, 0);
        let mut done = done_msg();
        done[16..20].copy_from_slice(&(-105i32).to_ne_bytes());
        buf.extend(done);
        assert!(ends_dump(&buf));
        assert_eq!(decode_batch(&buf, |_| {}), Err(DecodeError::Kernel { errno: 105 }));
    }

    #[test]
    fn a_listeners_queue_limit_and_inode_are_decoded() {
        let mut m = reply_message(AF_INET, 10, &[127, 0, 0, 1], 80, &[0; 4], 0, 0);
        m[NLMSG_HDRLEN + 56..NLMSG_HDRLEN + 60].copy_from_slice(&5u32.to_ne_bytes());
        m[NLMSG_HDRLEN + 60..NLMSG_HDRLEN + 64].copy_from_slice(&8u32.to_ne_bytes());
        m[NLMSG_HDRLEN + 68..NLMSG_HDRLEN + 72].copy_from_slice(&777u32.to_ne_bytes());
        let c = decode_socket(&m[NLMSG_HDRLEN..]).unwrap();
        assert_eq!((c.recv_queue, c.send_queue, c.inode), (5, 8, 777));
    }

    #[test]
    fn truncated_and_hostile_buffers_are_errors_not_panics() {
        let full = reply_message(AF_INET, 1, &[1, 2, 3, 4], 1, &[5, 6, 7, 8], 2, 0);
        for cut in [1, 15, 16, 40, full.len() - 1] {
            assert!(matches!(decode_batch(&full[..cut], |_| {}), Err(DecodeError::Truncated { .. })), "cut at {cut}");
        }
        let mut zero_len = full.clone();
        zero_len[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(decode_batch(&zero_len, |_| {}).is_err());
        let mut bad_family = full.clone();
        bad_family[16] = 99;
        assert_eq!(decode_batch(&bad_family, |_| {}), Err(DecodeError::Family(99)));
        let mut short_payload = full[..NLMSG_HDRLEN + 10].to_vec();
        short_payload[0..4].copy_from_slice(&((NLMSG_HDRLEN + 10) as u32).to_ne_bytes());
        assert!(decode_batch(&short_payload, |_| {}).is_err());
    }
}
