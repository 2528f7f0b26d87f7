//! The typed model of a socket: endpoints, TCP state and address family; no label strings.

use std::fmt;
use std::net::IpAddr;

/// Address family of a socket, as the kernel files it (`tcp` or `tcp6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// AF_INET.
    Ipv4,
    /// AF_INET6, IPv4-mapped addresses included.
    Ipv6,
}

impl Family {
    /// Both families, in label order.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// The `family` label value.
    pub fn label(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    /// Index into per-family arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// TCP state as numbered by the kernel (`include/net/tcp_states.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    /// A code outside 1..=11 (NEW_SYN_RECV and any future state).
    Unknown = 0,
    /// 01
    Established = 1,
    /// 02
    SynSent = 2,
    /// 03
    SynRecv = 3,
    /// 04
    FinWait1 = 4,
    /// 05
    FinWait2 = 5,
    /// 06
    TimeWait = 6,
    /// 07
    Close = 7,
    /// 08
    CloseWait = 8,
    /// 09
    LastAck = 9,
    /// 0A
    Listen = 10,
    /// 0B
    Closing = 11,
}

impl TcpState {
    /// Every state, `Unknown` first, the rest in kernel order; `ALL[s as usize] == s`.
    pub const ALL: [TcpState; 12] = [
        TcpState::Unknown,
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
    ];

    /// The state for a kernel state code; codes the kernel may add later map to `Unknown`.
    pub fn from_code(code: u8) -> TcpState {
        match code {
            1..=11 => TcpState::ALL[code as usize],
            _ => TcpState::Unknown,
        }
    }

    /// The `state` label value, as the specification and `ss` spell it.
    pub fn label(self) -> &'static str {
        match self {
            TcpState::Unknown => "UNKNOWN",
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
        }
    }

    /// Which series the cardinality guard keeps first: listeners, then established, then the rest.
    pub fn keep_priority(self) -> u8 {
        match self {
            TcpState::Listen => 0,
            TcpState::Established => 1,
            _ => 2,
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One end of a socket. `IpAddr` plus port keeps a `Connection` at 48 bytes with no heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Address as the kernel reports it (IPv4-mapped IPv6 addresses stay IPv6).
    pub ip: IpAddr,
    /// Port in host order.
    pub port: u16,
}

impl Endpoint {
    /// An endpoint from its parts.
    pub fn new(ip: IpAddr, port: u16) -> Endpoint {
        Endpoint { ip, port }
    }
}

/// A TCP socket as one source reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Connection {
    /// Local (source) end.
    pub local: Endpoint,
    /// Remote (destination) end; the unspecified address and port 0 for listeners.
    pub remote: Endpoint,
    /// TCP state.
    pub state: TcpState,
    /// Interface index when the kernel tells it (netlink `idiag_if`), 0 otherwise.
    pub if_index: u32,
    /// Receive queue: for a listener, the connections waiting to be accepted; otherwise
    /// bytes not yet read by the application.
    pub recv_queue: u32,
    /// Send queue: for a listener, its backlog limit where the source tells it (netlink;
    /// `/proc/net/tcp` prints 0); otherwise bytes not yet acknowledged.
    pub send_queue: u32,
    /// The socket's inode (0 for TIME_WAIT and request sockets), to find its owner.
    pub inode: u32,
}

impl Connection {
    /// The family, from the local address: `tcp6` sockets are IPv6 even when IPv4-mapped.
    pub fn family(&self) -> Family {
        match self.local.ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_codes_round_trip_and_unknown_codes_map_to_unknown() {
        for code in 1..=11u8 {
            assert_eq!(TcpState::from_code(code) as u8, code);
        }
        assert_eq!(TcpState::from_code(0), TcpState::Unknown);
        assert_eq!(TcpState::from_code(12), TcpState::Unknown); // TCP_NEW_SYN_RECV
        assert_eq!(TcpState::from_code(0xff), TcpState::Unknown);
        assert_eq!(TcpState::from_code(0x0a).label(), "LISTEN");
    }

    #[test]
    fn connection_stays_small() {
        // Sockets stream through the scrape one at a time, but the record is copied per
        // socket from the decoder: keep it within one cache line.
        assert!(std::mem::size_of::<Connection>() <= 64);
    }
}
