//! ctnetlink (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_CTNETLINK`) messages: the dump
//! request, and the decoding of conntrack entries (dump replies and NEW/DESTROY events)
//! into the two tuples the NAT resolution needs.
//!
//! Layouts are the kernel's UAPI (`linux/netfilter/nfnetlink.h`,
//! `linux/netfilter/nfnetlink_conntrack.h`), stable ABI. Only TCP entries are returned:
//! the families that use them count TCP sockets. Every length is checked before it is
//! read; a malformed message is an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use crate::model::Endpoint;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x100 | 0x200;
/// `struct nfgenmsg`.
const NFGENMSG_LEN: usize = 4;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// Length of the dump request this module builds.
pub const REQUEST_LEN: usize = NLMSG_HDRLEN + NFGENMSG_LEN;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`: flags, not part of the type.
const NLA_TYPE_MASK: u16 = 0x3fff;
const IPPROTO_TCP: u8 = 6;

/// The `NFNLGRP_CONNTRACK_NEW` and `NFNLGRP_CONNTRACK_DESTROY` multicast groups.
pub const GROUP_NEW: u32 = 1;
/// See [`GROUP_NEW`].
pub const GROUP_DESTROY: u32 = 3;

/// Why a message could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A header, message or attribute runs past the end of what was received.
    #[error("truncated ctnetlink message at byte {offset}")]
    Truncated {
        /// Where in the buffer.
        offset: usize,
    },
    /// The kernel answered with an error (a negative errno).
    #[error("kernel error {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The errno, positive.
        errno: i32,
    },
    /// A tuple without both addresses or both ports.
    #[error("conntrack tuple without {0}")]
    Incomplete(&'static str),
}

/// One direction of a conntrack entry: the packets' source and destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Source address and port.
    pub src: Endpoint,
    /// Destination address and port.
    pub dst: Endpoint,
}

/// A TCP conntrack entry: the tuple of the packets as the initiator sent them, and the
/// tuple the answers carry (where NAT rewrote something, the two are not each other's
/// mirror).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// `CTA_TUPLE_ORIG`.
    pub original: Tuple,
    /// `CTA_TUPLE_REPLY`.
    pub reply: Tuple,
    /// `CTA_ID`, which tells apart two entries that had the same tuples one after the
    /// other (0 when the kernel did not say).
    pub id: u32,
}

impl Flow {
    /// Whether NAT rewrote an address or port: the reply is not the original's mirror.
    pub fn translated(&self) -> bool {
        self.reply.src != self.original.dst || self.reply.dst != self.original.src
    }
}

/// What a message says of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An entry exists: a dump reply, or a NEW event.
    Exists(Flow),
    /// An entry was destroyed (a DESTROY event).
    Destroyed(Flow),
}

/// What a received buffer held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Batch {
    /// The dump ended in this buffer.
    pub done: bool,
    /// Entries of other protocols, or messages of other types, passed over.
    pub skipped: u64,
}

/// Builds a request to dump every conntrack entry of the socket's namespace, both
/// families (`AF_UNSPEC`).
pub fn dump_request(seq: u32) -> [u8; REQUEST_LEN] {
    let mut req = [0u8; REQUEST_LEN];
    req[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nfgenmsg: family AF_UNSPEC, version NFNETLINK_V0, res_id 0.
    req
}

/// Decodes every message in `buf` (one `recv`), handing each TCP entry to `sink`.
/// A message that cannot be decoded ends the batch with an error: what was handed on
/// before it stands.
pub fn decode_batch(buf: &[u8], mut sink: impl FnMut(Event)) -> Result<Batch, DecodeError> {
    let mut batch = Batch::default();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(word(buf, at)) as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(DecodeError::Truncated { offset: at });
        }
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        let msg = &buf[at + NLMSG_HDRLEN..at + len];
        match kind {
            NLMSG_DONE => {
                batch.done = true;
                return Ok(batch);
            }
            NLMSG_ERROR => {
                if msg.len() < 4 {
                    return Err(DecodeError::Truncated { offset: at });
                }
                let errno = i32::from_ne_bytes(word(msg, 0));
                if errno != 0 {
                    return Err(DecodeError::Kernel { errno: errno.saturating_neg() });
                }
            }
            _ if kind >> 8 == NFNL_SUBSYS_CTNETLINK => {
                let flow = decode_entry(msg).map_err(|e| match e {
                    DecodeError::Truncated { offset } => DecodeError::Truncated { offset: at + NLMSG_HDRLEN + offset },
                    e => e,
                })?;
                match (flow, kind & 0xff) {
                    (Some(f), IPCTNL_MSG_CT_DELETE) => sink(Event::Destroyed(f)),
                    (Some(f), IPCTNL_MSG_CT_NEW) => sink(Event::Exists(f)),
                    _ => batch.skipped += 1,
                }
            }
            _ => batch.skipped += 1,
        }
        at += align(len);
    }
    Ok(batch)
}

/// One entry's message body (after the netlink header): `None` for a protocol other
/// than TCP.
fn decode_entry(msg: &[u8]) -> Result<Option<Flow>, DecodeError> {
    if msg.len() < NFGENMSG_LEN {
        return Err(DecodeError::Truncated { offset: 0 });
    }
    let (mut original, mut reply, mut id) = (None, None, 0);
    for attr in Attributes::new(msg, NFGENMSG_LEN) {
        let (kind, body, _) = attr?;
        match kind {
            CTA_TUPLE_ORIG => original = decode_tuple(body)?,
            CTA_TUPLE_REPLY => reply = decode_tuple(body)?,
            CTA_ID if body.len() >= 4 => id = u32::from_be_bytes(word(body, 0)),
            _ => {}
        }
    }
    match (original, reply) {
        (Some(original), Some(reply)) => Ok(Some(Flow { original, reply, id })),
        _ => Ok(None),
    }
}

/// A `CTA_TUPLE_*` nest: `None` unless TCP.
fn decode_tuple(nest: &[u8]) -> Result<Option<Tuple>, DecodeError> {
    let (mut src, mut dst) = (None, None);
    let (mut proto, mut sport, mut dport) = (None, None, None);
    for attr in Attributes::new(nest, 0) {
        let (kind, body, _) = attr?;
        match kind {
            CTA_TUPLE_IP => {
                for a in Attributes::new(body, 0) {
                    let (k, b, _) = a?;
                    match (k, b.len()) {
                        (CTA_IP_V4_SRC, 4) => src = Some(IpAddr::V4(Ipv4Addr::from(word(b, 0)))),
                        (CTA_IP_V4_DST, 4) => dst = Some(IpAddr::V4(Ipv4Addr::from(word(b, 0)))),
                        (CTA_IP_V6_SRC, 16) => src = Some(IpAddr::V6(Ipv6Addr::from(sixteen(b)))),
                        (CTA_IP_V6_DST, 16) => dst = Some(IpAddr::V6(Ipv6Addr::from(sixteen(b)))),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in Attributes::new(body, 0) {
                    let (k, b, _) = a?;
                    match (k, b.len()) {
                        (CTA_PROTO_NUM, 1..) => proto = Some(b[0]),
                        (CTA_PROTO_SRC_PORT, 2..) => sport = Some(u16::from_be_bytes([b[0], b[1]])),
                        (CTA_PROTO_DST_PORT, 2..) => dport = Some(u16::from_be_bytes([b[0], b[1]])),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if proto != Some(IPPROTO_TCP) {
        return Ok(None);
    }
    let (src, dst) = match (src, dst) {
        (Some(s), Some(d)) => (s, d),
        _ => return Err(DecodeError::Incomplete("both addresses")),
    };
    let (sport, dport) = match (sport, dport) {
        (Some(s), Some(d)) => (s, d),
        _ => return Err(DecodeError::Incomplete("both ports")),
    };
    Ok(Some(Tuple { src: Endpoint::new(src, sport), dst: Endpoint::new(dst, dport) }))
}

/// The netlink attributes of `buf` from `start`: `(type, payload, offset)`, flags masked
/// off the type.
struct Attributes<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Attributes<'a> {
    fn new(buf: &'a [u8], start: usize) -> Attributes<'a> {
        Attributes { buf, at: start }
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<(u16, &'a [u8], usize), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at + 4 > self.buf.len() {
            return None;
        }
        let at = self.at;
        let len = usize::from(u16::from_ne_bytes([self.buf[at], self.buf[at + 1]]));
        let kind = u16::from_ne_bytes([self.buf[at + 2], self.buf[at + 3]]) & NLA_TYPE_MASK;
        if len < 4 || at + len > self.buf.len() {
            self.at = self.buf.len();
            return Some(Err(DecodeError::Truncated { offset: at }));
        }
        self.at = at + align(len);
        Some(Ok((kind, &self.buf[at + 4..at + len], at)))
    }
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Four bytes at `at`; callers have checked the length.
fn word(buf: &[u8], at: usize) -> [u8; 4] {
    [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
}

fn sixteen(b: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&b[..16]);
    out
}

/// Builds a ctnetlink message as the kernel sends one (tests and fuzzing seeds):
/// `destroy` for a DESTROY event, a NEW event or dump reply otherwise.
pub fn entry_message(destroy: bool, proto: u8, original: Tuple, reply: Tuple, id: u32) -> Vec<u8> {
    fn attr(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
        out.extend_from_slice(&((4 + body.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(body);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    fn tuple(proto: u8, t: &Tuple) -> Vec<u8> {
        let mut ip = Vec::new();
        for (ep, v4, v6) in [(t.src, CTA_IP_V4_SRC, CTA_IP_V6_SRC), (t.dst, CTA_IP_V4_DST, CTA_IP_V6_DST)] {
            match ep.ip {
                IpAddr::V4(a) => attr(&mut ip, v4, &a.octets()),
                IpAddr::V6(a) => attr(&mut ip, v6, &a.octets()),
            }
        }
        let mut p = Vec::new();
        attr(&mut p, CTA_PROTO_NUM, &[proto]);
        attr(&mut p, CTA_PROTO_SRC_PORT, &t.src.port.to_be_bytes());
        attr(&mut p, CTA_PROTO_DST_PORT, &t.dst.port.to_be_bytes());
        let mut out = Vec::new();
        attr(&mut out, CTA_TUPLE_IP | 0x8000, &ip);
        attr(&mut out, CTA_TUPLE_PROTO | 0x8000, &p);
        out
    }
    let mut body = vec![0u8; NFGENMSG_LEN];
    attr(&mut body, CTA_TUPLE_ORIG | 0x8000, &tuple(proto, &original));
    attr(&mut body, CTA_TUPLE_REPLY | 0x8000, &tuple(proto, &reply));
    attr(&mut body, CTA_ID | 0x4000, &id.to_be_bytes());
    let kind = (NFNL_SUBSYS_CTNETLINK << 8) | if destroy { IPCTNL_MSG_CT_DELETE } else { IPCTNL_MSG_CT_NEW };
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&[0u8; 10]);
    msg.extend_from_slice(&body);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        let a: std::net::SocketAddr = s.parse().unwrap();
        Endpoint::new(a.ip(), a.port())
    }

    fn dnat() -> (Tuple, Tuple) {
        (
            Tuple { src: ep("10.0.0.5:40000"), dst: ep("10.96.0.10:80") },
            Tuple { src: ep("10.244.1.2:8080"), dst: ep("10.0.0.5:40000") },
        )
    }

    fn decode(buf: &[u8]) -> (Vec<Event>, Result<Batch, DecodeError>) {
        let mut out = Vec::new();
        let r = decode_batch(buf, |e| out.push(e));
        (out, r)
    }

    #[test]
    fn new_and_destroy_entries_of_both_families() {
        let (o, r) = dnat();
        let o6 = Tuple { src: ep("[fd00::5]:40001"), dst: ep("[fd00:96::a]:443") };
        let r6 = Tuple { src: ep("[fd00:244::2]:8443"), dst: ep("[fd00::5]:40001") };
        let mut buf = entry_message(false, IPPROTO_TCP, o, r, 7);
        buf.extend(entry_message(true, IPPROTO_TCP, o6, r6, 9));
        let (events, batch) = decode(&buf);
        assert_eq!(batch, Ok(Batch { done: false, skipped: 0 }));
        assert_eq!(
            events,
            vec![
                Event::Exists(Flow { original: o, reply: r, id: 7 }),
                Event::Destroyed(Flow { original: o6, reply: r6, id: 9 })
            ]
        );
    }

    #[test]
    fn other_protocols_are_passed_over_and_done_ends() {
        let (o, r) = dnat();
        let mut buf = entry_message(false, 17, o, r, 1);
        buf.extend_from_slice(&20u32.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        buf.extend_from_slice(&[0u8; 14]);
        let (events, batch) = decode(&buf);
        assert!(events.is_empty());
        assert_eq!(batch, Ok(Batch { done: true, skipped: 1 }));
    }

    #[test]
    fn kernel_errors_say_which() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&36u32.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&[0u8; 10]);
        buf.extend_from_slice(&(-1i32).to_ne_bytes());
        buf.extend_from_slice(&[0u8; 16]);
        assert_eq!(decode(&buf).1, Err(DecodeError::Kernel { errno: 1 }));
    }

    #[test]
    fn every_truncation_is_an_error_or_a_shorter_batch_never_a_panic() {
        let (o, r) = dnat();
        let msg = entry_message(false, IPPROTO_TCP, o, r, 3);
        for cut in 0..msg.len() {
            let mut short = msg[..cut].to_vec();
            if cut >= 4 {
                // A header that claims only what is there: the attributes are cut.
                short[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            let (events, _) = decode(&short);
            // Cut before its id, an entry is whole but for the id.
            assert!(
                events.iter().all(|e| matches!(e, Event::Exists(f) if f.original == o && f.reply == r)),
                "cut {cut}: {events:?}"
            );
        }
        // A tuple nest with addresses but no ports is incomplete, not a guess.
        let mut broken = msg.clone();
        let at = broken.windows(2).position(|w| w == CTA_PROTO_SRC_PORT.to_ne_bytes()).unwrap();
        broken[at] = 0x3f;
        assert!(matches!(decode(&broken).1, Err(DecodeError::Incomplete(_)) | Ok(_)));
    }

    #[test]
    fn the_request_dumps_both_families() {
        let req = dump_request(5);
        assert_eq!(u32::from_ne_bytes(word(&req, 0)) as usize, req.len());
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), 0x101);
        assert_eq!(req[16], 0, "AF_UNSPEC");
    }
}
