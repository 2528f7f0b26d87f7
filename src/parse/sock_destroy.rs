//! Socket-destroy notifications (`SKNLGRP_INET_TCP_DESTROY`, `SKNLGRP_INET6_TCP_DESTROY`):
//! decoding one message into a [`DestroyedSocket`] with its final `tcp_info`, and what a
//! lifecycle counter makes of it ([`DestroyedSocket::outcome`], the payload bytes).
//!
//! A message is an `nlmsghdr` of type `SOCK_DIAG_BY_FAMILY`, the 72-byte `inet_diag_msg`
//! a dump also sends, then attributes; the kernel (`inet_diag_handler_get_info`) adds
//! `INET_DIAG_PROTOCOL` and `INET_DIAG_INFO` (`struct tcp_info`). Offsets in `tcp_info`
//! are those of the UAPI `linux/tcp.h`; an older kernel's shorter struct leaves the later
//! fields `None`.

use std::net::IpAddr;

use crate::model::{Endpoint, TcpState};
use crate::parse::sock_diag::{decode_socket, socket_cookie, DecodeError, SOCK_DIAG_BY_FAMILY};
use crate::parse::tcp_info::{self, TcpInfo};

const NLMSG_HDRLEN: usize = 16;
const MSG_LEN: usize = 72;
/// `INET_DIAG_INFO` in `enum` of `linux/inet_diag.h`.
const INET_DIAG_INFO: u16 = 2;

/// One destroyed TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestroyedSocket {
    /// Local endpoint as the kernel last had it (0.0.0.0 or `::` after a failed connect
    /// or an abort, unless the socket was bound to an address).
    pub local: Endpoint,
    /// Remote endpoint; port 0 after a failed connect or an abort.
    pub remote: Endpoint,
    /// `idiag_state` (CLOSE for every socket seen on Linux 6.18).
    pub state: TcpState,
    /// Interface index the socket was bound to, 0 for none.
    pub if_index: u32,
    /// The final `tcp_info`, when the message carried `INET_DIAG_INFO`.
    pub info: Option<TcpInfo>,
    /// The socket's cookie (`idiag_cookie`): the kernel's id of it, which dumps report
    /// too.
    pub cookie: u64,
}

/// What became of a destroyed socket, for the lifecycle counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A connection that was established.
    Closed,
    /// A connect that never reached ESTABLISHED.
    Failed,
    /// No connection at all: a listener, or a socket never connected.
    NotAConnection,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes one netlink message (header included) of the destroy groups. `Ok(None)` for a
/// message of another type (the kernel sends none, but a netlink socket may see `NOOP`s).
pub fn decode_message(buf: &[u8]) -> Result<Option<DestroyedSocket>, DecodeError> {
    if buf.len() < NLMSG_HDRLEN {
        return Err(DecodeError::Truncated { offset: 0 });
    }
    let len = u32_at(buf, 0).unwrap_or(0) as usize;
    if len < NLMSG_HDRLEN || len > buf.len() {
        return Err(DecodeError::Truncated { offset: 0 });
    }
    if u16_at(buf, 4) != SOCK_DIAG_BY_FAMILY {
        return Ok(None);
    }
    let payload = &buf[NLMSG_HDRLEN..len];
    let c = decode_socket(payload).map_err(|e| match e {
        DecodeError::Truncated { .. } => DecodeError::Truncated { offset: NLMSG_HDRLEN },
        other => other,
    })?;
    let mut info = None;
    let mut attrs = &payload[MSG_LEN..];
    while attrs.len() >= 4 {
        let alen = usize::from(u16_at(attrs, 0));
        if alen < 4 || alen > attrs.len() {
            return Err(DecodeError::Truncated { offset: len - attrs.len() });
        }
        if u16_at(attrs, 2) == INET_DIAG_INFO {
            info = tcp_info::decode(&attrs[4..alen]);
        }
        attrs = attrs.get((alen + 3) & !3..).unwrap_or(&[]);
    }
    let cookie = socket_cookie(payload);
    Ok(Some(DestroyedSocket { local: c.local, remote: c.remote, state: c.state, if_index: c.if_index, info, cookie }))
}

impl DestroyedSocket {
    /// Whether the socket had been connected or tried to: a remote address is set. A
    /// listener or a socket that was only bound has none.
    fn had_peer(&self) -> bool {
        !self.remote.ip.is_unspecified() && !is_mapped_unspecified(self.remote.ip)
    }

    /// Closed or failed. `inbound` says whether the local endpoint belonged to a
    /// listener: an accepted socket was always established.
    ///
    /// An outbound socket was established when the peer acknowledged its SYN
    /// (`tcpi_bytes_acked` counts it) or it has an RTT sample (`tcpi_min_rtt`, which a
    /// SYN-ACK always gives and which the kernel keeps when an abortive close, SO_LINGER
    /// 0, clears the other counters and the ports). A failed connect has neither.
    pub fn outcome(&self, inbound: bool) -> Outcome {
        if !self.had_peer() {
            return Outcome::NotAConnection;
        }
        if inbound {
            return Outcome::Closed;
        }
        match self.info {
            Some(i) if i.bytes_acked > 0 || i.min_rtt_us.is_some() || i.rtt_us > 0 => Outcome::Closed,
            Some(_) => Outcome::Failed,
            // Without tcp_info only the port tells: a failed connect loses it.
            None if self.remote.port != 0 => Outcome::Closed,
            None => Outcome::Failed,
        }
    }

    /// Payload bytes the peer acknowledged: `tcpi_bytes_acked` less the SYN (outbound
    /// sockets, whose SYN the peer acked) and less the FIN when it was acked. The FIN is
    /// told by the payload ever sent (`tcpi_bytes_sent` less `tcpi_bytes_retrans`): the
    /// FIN follows all payload, so the acknowledged sequence space exceeds that only by
    /// the FIN. Kernels before 4.19 lack those fields: sequence space less the SYN.
    pub fn sent_payload(&self, inbound: bool) -> u64 {
        let Some(i) = self.info else { return 0 };
        let acked = if inbound { i.bytes_acked } else { i.bytes_acked.saturating_sub(1) };
        match (i.bytes_sent, i.bytes_retrans) {
            (Some(sent), Some(retrans)) => acked.min(sent.saturating_sub(retrans)),
            _ => acked,
        }
    }

    /// `tcpi_bytes_received`: payload received, plus one when the peer's FIN arrived
    /// before the socket was destroyed. The message cannot tell the FIN apart (the final
    /// state is CLOSE either way), so this is sequence space, as documented.
    pub fn received_bytes(&self) -> u64 {
        self.info.map_or(0, |i| i.bytes_received)
    }

    /// `tcpi_total_retrans`.
    pub fn retransmits(&self) -> u64 {
        self.info.map_or(0, |i| u64::from(i.total_retrans))
    }
}

fn is_mapped_unspecified(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_unspecified()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages captured on Linux 6.18 by `tests/fixtures/make_destroy_fixtures.py`: a
    /// client sends 1,000 bytes and shuts down, the server reads to EOF, answers 500 bytes
    /// and closes, the client reads to EOF and closes. Sent in the order server, client,
    /// listener.
    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/sock_destroy/{name}.bin", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap()
    }

    fn decode(name: &str) -> DestroyedSocket {
        decode_message(&fixture(name)).unwrap().unwrap()
    }

    fn ep(s: &str) -> Endpoint {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        Endpoint::new(sa.ip(), sa.port())
    }

    /// The server, client and listener of one exchange, in their family's spelling of
    /// loopback; the facts are the exchange's (1,000 bytes up, 500 down, both FINs).
    fn check_exchange(case: &str, server_addr: &str, client_addr: &str) {
        let server = decode(&format!("{case}-0"));
        let client = decode(&format!("{case}-1"));
        let listener = decode(&format!("{case}-2"));
        assert_eq!(server.local.port, client.remote.port, "{case}: the client connected to the server");
        assert_eq!(server.remote.port, client.local.port, "{case}");
        assert_eq!(server.local.ip, server_addr.parse::<IpAddr>().unwrap(), "{case}");
        assert_eq!(client.local.ip, client_addr.parse::<IpAddr>().unwrap(), "{case}");
        assert_eq!(server.state, TcpState::Close);
        for s in [server, client, listener] {
            let i = s.info.expect("every captured message carries INET_DIAG_INFO");
            assert_eq!(i.state, 7, "{case}: tcpi_state CLOSE");
        }
        // The kernel's sequence-space figures, then the payload made of them.
        let (si, ci) = (server.info.unwrap(), client.info.unwrap());
        assert_eq!((si.bytes_acked, si.bytes_received), (501, 1001), "{case}: 500 + FIN acked, 1000 + FIN in");
        assert_eq!((ci.bytes_acked, ci.bytes_received), (1002, 501), "{case}: SYN + 1000 + FIN acked");
        assert_eq!((ci.bytes_sent, ci.bytes_retrans), (Some(1000), Some(0)));
        assert!(si.rtt_us > 0 && ci.rtt_us > 0 && ci.min_rtt_us.is_some());
        assert_eq!(si.total_retrans + ci.total_retrans, 0);
        assert_eq!((server.sent_payload(true), server.received_bytes()), (500, 1001));
        assert_eq!((client.sent_payload(false), client.received_bytes()), (1000, 501));
        assert_eq!(server.outcome(true), Outcome::Closed);
        assert_eq!(client.outcome(false), Outcome::Closed);
        assert_eq!(listener.outcome(false), Outcome::NotAConnection, "{case}: the listener is no connection");
        assert_eq!(listener.remote.port, 0);
        assert_eq!(listener.local.port, server.local.port);
    }

    #[test]
    fn ipv4_linux_6_18_exchange() {
        check_exchange("ipv4", "127.0.0.1", "127.0.0.1");
    }

    #[test]
    fn ipv6_linux_6_18_exchange() {
        check_exchange("ipv6", "::1", "::1");
    }

    #[test]
    fn v4_mapped_linux_6_18_exchange() {
        // A dual-stack listener on `::` reached at ::ffff:127.0.0.1: both ends AF_INET6.
        check_exchange("mapped", "::ffff:127.0.0.1", "::ffff:127.0.0.1");
        assert_eq!(decode("mapped-2").local.ip, "::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn refused_connects_lose_the_port_and_the_source_address() {
        for (case, dst) in [("refused4-0", "127.0.0.1:0"), ("refused6-0", "[::1]:0")] {
            let s = decode(case);
            assert_eq!(s.remote, ep(dst), "{case}");
            assert!(s.local.ip.is_unspecified() && s.local.port != 0, "{case}");
            let i = s.info.unwrap();
            assert_eq!((i.rtt_us, i.min_rtt_us, i.bytes_acked), (0, None, 0), "{case}");
            assert_eq!(s.outcome(false), Outcome::Failed, "{case}");
            assert_eq!((s.sent_payload(false), s.received_bytes()), (0, 0));
        }
    }

    #[test]
    fn an_aborted_client_is_closed_though_the_kernel_cleared_its_counters() {
        // SO_LINGER 0: the client's tcp_disconnect clears ports, counters and RTT, but
        // not the minimum RTT, which tells it from a failed connect.
        let client = decode("abort-0");
        assert_eq!(client.remote.port, 0);
        assert_eq!(client.info.unwrap().bytes_acked, 0);
        assert_eq!(client.outcome(false), Outcome::Closed);
        let server = decode("abort-1");
        assert_eq!((server.sent_payload(true), server.received_bytes()), (500, 1000), "RST: no FIN either way");
    }

    #[test]
    fn without_inet_diag_info_the_socket_still_decodes() {
        // The captured IPv4 client cut after the inet_diag_msg: no attributes at all.
        let mut m = fixture("ipv4-1");
        m.truncate(NLMSG_HDRLEN + MSG_LEN);
        m[0..4].copy_from_slice(&((NLMSG_HDRLEN + MSG_LEN) as u32).to_ne_bytes());
        let s = decode_message(&m).unwrap().unwrap();
        assert_eq!(s.info, None);
        assert_eq!(s, DestroyedSocket { info: None, ..decode("ipv4-1") });
        assert_eq!(s.outcome(false), Outcome::Closed, "the port says it was connected");
        assert_eq!((s.sent_payload(false), s.received_bytes(), s.retransmits()), (0, 0, 0));
        // A tcp_info cut before tcpi_bytes_received is no tcp_info.
        let full = fixture("ipv4-1");
        assert!(tcp_info::decode(&full[NLMSG_HDRLEN + MSG_LEN + 12..][..128 + 7]).is_none());
        // Before tcpi_bytes_sent (Linux < 4.19): sequence space less the SYN.
        let old = tcp_info::decode(&full[NLMSG_HDRLEN + MSG_LEN + 12..][..200]).unwrap();
        assert_eq!(old.bytes_sent, None);
        assert_eq!(DestroyedSocket { info: Some(old), ..s }.sent_payload(false), 1001);
    }

    #[test]
    fn truncated_and_hostile_messages_are_errors_not_panics() {
        let full = fixture("ipv6-1");
        for cut in [0, 3, 15, 16, 40, 87] {
            let mut m = full[..cut].to_vec();
            if m.len() >= 4 {
                m[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            assert!(decode_message(&m).is_err(), "cut at {cut}");
        }
        // A length beyond the buffer, an attribute longer than the message.
        let mut m = full.clone();
        m[0..4].copy_from_slice(&(full.len() as u32 + 4).to_ne_bytes());
        assert!(decode_message(&m).is_err());
        let mut m = full.clone();
        m[NLMSG_HDRLEN + MSG_LEN..][..2].copy_from_slice(&60_000u16.to_ne_bytes());
        assert!(decode_message(&m).is_err());
        // Another message type is skipped.
        let mut m = full;
        m[4..6].copy_from_slice(&1u16.to_ne_bytes());
        assert_eq!(decode_message(&m), Ok(None));
    }
}
