//! `/proc/net/tcp` and `/proc/net/tcp6`: lines in, `Connection`s out.
//!
//! The kernel prints each address as 32-bit words with `%08X` straight from memory, so
//! the byte order of the machine that wrote the file decides how to read them back. It
//! is a parameter here so that files from either kind of machine decode anywhere.

use std::io::{self, BufRead};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use super::hex;
use crate::model::{Connection, Endpoint, Family, TcpState};

/// Lines longer than this are not the kernel's and are skipped without being buffered whole.
pub const MAX_LINE_BYTES: usize = 1024;

/// Byte order of the machine whose kernel wrote the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOrder {
    /// x86, arm64 and most others.
    Little,
    /// s390x, some ppc64 and mips.
    Big,
}

impl ByteOrder {
    /// The order of the machine this code runs on, which is the one that wrote its /proc.
    pub const NATIVE: ByteOrder = if cfg!(target_endian = "little") { ByteOrder::Little } else { ByteOrder::Big };

    fn word_bytes(self, word: u32) -> [u8; 4] {
        match self {
            ByteOrder::Little => word.to_le_bytes(),
            ByteOrder::Big => word.to_be_bytes(),
        }
    }
}

/// Why one address or line could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LineError {
    /// Fewer fields than the kernel writes: the line was cut.
    #[error("truncated line: {fields} fields, expected at least {expected}")]
    Truncated {
        /// Fields found.
        fields: usize,
        /// Fields required.
        expected: usize,
    },
    /// The slot field is not `N:`.
    #[error("bad slot field")]
    BadSlot,
    /// An address field that is not `HEX:HEX` of the family's width.
    #[error("bad {which} address {field:?}")]
    BadAddress {
        /// `local` or `remote`.
        which: &'static str,
        /// The field, lossily decoded, at most 64 bytes of it.
        field: String,
    },
    /// A state field that is not one or two hex digits.
    #[error("bad state {0:?}")]
    BadState(String),
    /// Longer than [`MAX_LINE_BYTES`].
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
}

/// What one pass over a file found besides its sockets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParseReport {
    /// Sockets passed to the sink.
    pub sockets: u64,
    /// Lines skipped as malformed.
    pub errors: u64,
    /// The first malformed line (1-based line number and reason), for the log.
    pub first_error: Option<(u64, LineError)>,
}

/// Decodes an `ADDR:PORT` field of the given family.
///
/// ```
/// use conn_exporter::parse::proc_net::{parse_endpoint, ByteOrder};
/// use conn_exporter::model::Family;
/// let e = parse_endpoint(b"0100007F:1234", Family::Ipv4, ByteOrder::Little).unwrap();
/// assert_eq!(e.to_string(), "127.0.0.1:4660");
/// ```
pub fn parse_endpoint(field: &[u8], family: Family, order: ByteOrder) -> Option<SocketEndpoint> {
    let colon = field.iter().position(|&b| b == b':')?;
    let (addr, port) = (&field[..colon], &field[colon + 1..]);
    if port.len() != 4 {
        return None;
    }
    let port = u16::try_from(hex::parse_u32(port)?).ok()?;
    let ip = match family {
        Family::Ipv4 => {
            if addr.len() != 8 {
                return None;
            }
            IpAddr::V4(Ipv4Addr::from(order.word_bytes(hex::parse_u32(addr)?)))
        }
        Family::Ipv6 => {
            if addr.len() != 32 {
                return None;
            }
            let mut octets = [0u8; 16];
            for (i, chunk) in addr.chunks_exact(8).enumerate() {
                let word = hex::parse_u32(chunk)?;
                octets[i * 4..i * 4 + 4].copy_from_slice(&order.word_bytes(word));
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    };
    Some(SocketEndpoint(Endpoint::new(ip, port)))
}

/// An [`Endpoint`] that prints as `ss` does (`[v6]:port`), for doc tests and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEndpoint(pub Endpoint);

impl std::fmt::Display for SocketEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.0.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.0.port),
        }
    }
}

/// The kernel writes slot, local, remote, state, tx:rx, tr:when, retrnsmt, uid, timeout, inode.
const MIN_FIELDS: usize = 10;

/// Parses one data line (not the header).
pub fn parse_line(line: &[u8], family: Family, order: ByteOrder) -> Result<Connection, LineError> {
    let mut fields = [&b""[..]; MIN_FIELDS];
    let mut found = 0;
    for field in line.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty()) {
        if found == MIN_FIELDS {
            break;
        }
        fields[found] = field;
        found += 1;
    }
    if found < MIN_FIELDS {
        return Err(LineError::Truncated { fields: found, expected: MIN_FIELDS });
    }
    let [slot, local, remote, state, queues, _, _, _, _, inode] = fields;
    if slot.len() < 2 || !slot.ends_with(b":") || !slot[..slot.len() - 1].iter().all(u8::is_ascii_hexdigit) {
        return Err(LineError::BadSlot);
    }
    let bad = |which, field: &[u8]| LineError::BadAddress {
        which,
        field: String::from_utf8_lossy(&field[..field.len().min(64)]).into_owned(),
    };
    let local = parse_endpoint(local, family, order).ok_or_else(|| bad("local", local))?.0;
    let remote = parse_endpoint(remote, family, order).ok_or_else(|| bad("remote", remote))?.0;
    let code = match state.len() {
        1 | 2 => hex::parse_u32(state),
        _ => None,
    }
    .ok_or_else(|| LineError::BadState(String::from_utf8_lossy(&state[..state.len().min(16)]).into_owned()))?;
    // The queues and the inode only add detail (listener queues, owners): a garbled one
    // reads as 0 rather than losing a socket that is otherwise well described.
    let (send_queue, recv_queue) = queues
        .iter()
        .position(|&b| b == b':')
        .and_then(|at| Some((hex::parse_u32(&queues[..at])?, hex::parse_u32(&queues[at + 1..])?)))
        .unwrap_or((0, 0));
    let inode = std::str::from_utf8(inode).ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    Ok(Connection { local, remote, state: TcpState::from_code(code as u8), if_index: 0, recv_queue, send_queue, inode })
}

fn is_header(line: &[u8]) -> bool {
    line.split(|b| b.is_ascii_whitespace()).find(|f| !f.is_empty()).is_some_and(|f| f == b"sl")
}

/// Parses a whole `/proc/net/tcp{,6}` stream, passing each socket to `sink`.
///
/// Malformed lines are counted and skipped; the lines around them still count. Only an
/// I/O error of the reader ends the pass early, with what was read so far already sunk.
pub fn parse_tcp<R: BufRead>(
    mut reader: R,
    family: Family,
    order: ByteOrder,
    mut sink: impl FnMut(Connection),
) -> io::Result<ParseReport> {
    let mut report = ParseReport::default();
    let mut line = Vec::with_capacity(256);
    let mut number = 0u64;
    loop {
        line.clear();
        let read = io::Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        number += 1;
        let result = if line.len() > MAX_LINE_BYTES && line.last() != Some(&b'\n') {
            reader.skip_until(b'\n')?;
            Err(LineError::TooLong)
        } else if (number == 1 && is_header(&line)) || line.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            parse_line(&line, family, order)
        };
        match result {
            Ok(conn) => {
                report.sockets += 1;
                sink(conn);
            }
            Err(e) => {
                report.errors += 1;
                report.first_error.get_or_insert((number, e));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(field: &str, family: Family) -> Option<String> {
        parse_endpoint(field.as_bytes(), family, ByteOrder::Little).map(|e| e.to_string())
    }

    #[test]
    fn decodes_the_issue_vectors() {
        assert_eq!(ep("0100007F:1234", Family::Ipv4).unwrap(), "127.0.0.1:4660");
        assert_eq!(ep("5014002A14080140000000000E200000:0050", Family::Ipv6).unwrap(), "[2a00:1450:4001:814::200e]:80");
        assert_eq!(
            ep("B80D01200000000067452301EFCDAB89:0000", Family::Ipv6).unwrap(),
            "[2001:db8::123:4567:89ab:cdef]:0"
        );
        assert_eq!(ep("00000000000000000000000001000000:AD4D", Family::Ipv6).unwrap(), "[::1]:44365");
        assert_eq!(ep("0000000000000000FFFF00000100007F:1F90", Family::Ipv6).unwrap(), "[::ffff:127.0.0.1]:8080");
        assert_eq!(ep("1234:1234", Family::Ipv4), None);
        assert_eq!(ep("1234:1234", Family::Ipv6), None);
    }

    #[test]
    fn byte_order_is_a_parameter() {
        let be = parse_endpoint(b"7F000001:0016", Family::Ipv4, ByteOrder::Big).unwrap();
        assert_eq!(be.to_string(), "127.0.0.1:22");
        let be6 = parse_endpoint(b"20010DB8000000000000000000000001:0050", Family::Ipv6, ByteOrder::Big).unwrap();
        assert_eq!(be6.to_string(), "[2001:db8::1]:80");
    }

    #[test]
    fn rejects_malformed_endpoints() {
        for bad in
            ["", ":", "0100007F", "0100007F:", "0100007F:12345", "0100007G:0016", "100007F:0016", "0100007F:-001"]
        {
            assert_eq!(ep(bad, Family::Ipv4), None, "{bad:?}");
        }
        assert_eq!(ep("0100007F:0016", Family::Ipv6), None);
    }

    // Captured on this project's build machine (Linux 6.18.44, x86_64) from real sockets.
    const TCP_LINUX_6_18_LOOPBACK: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F4 01 00000000:00000000 00:00000000 00000000     0        0 31338 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D2F4 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
";

    #[test]
    fn tcp_linux_6_18_loopback() {
        let mut conns = Vec::new();
        let report =
            parse_tcp(TCP_LINUX_6_18_LOOPBACK.as_bytes(), Family::Ipv4, ByteOrder::Little, |c| conns.push(c)).unwrap();
        assert_eq!(report.errors, 0);
        assert_eq!(report.sockets, 3);
        assert_eq!(conns[0].state, TcpState::Listen);
        assert_eq!(conns[1].remote.port, 0xD2F4);
        assert_eq!(conns[2].state, TcpState::TimeWait);
        assert_eq!(conns[0].inode, 31337);
        assert_eq!(conns[2].inode, 0);
    }

    #[test]
    fn queues_and_inode_of_a_listener_with_waiting_connections() {
        // A listener with 5 connections not yet accepted, as the kernel prints it.
        let line = b"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000005 00:00000000 00000000     0        0 4242 1";
        let c = parse_line(line, Family::Ipv4, ByteOrder::Little).unwrap();
        assert_eq!((c.recv_queue, c.send_queue, c.inode), (5, 0, 4242));
        let garbled = b"   0: 0100007F:1F90 00000000:0000 0A zz:00000005 00:00000000 00000000     0        0 x 1";
        let c = parse_line(garbled, Family::Ipv4, ByteOrder::Little).unwrap();
        assert_eq!((c.recv_queue, c.send_queue, c.inode), (0, 0, 0), "detail lost, socket kept");
    }

    #[test]
    fn malformed_lines_are_counted_and_their_neighbours_kept() {
        let text = format!(
            "{}   3: 0100007F:1F90 0100007F:D2F4\n   4: ZZ00007F:1F90 00000000:0000 0A 0 0 0 0 0 1 1\n\u{0}\u{1}binary\n{}\n   5: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n",
            TCP_LINUX_6_18_LOOPBACK,
            "7".repeat(MAX_LINE_BYTES * 3)
        );
        let mut conns = Vec::new();
        let report = parse_tcp(text.as_bytes(), Family::Ipv4, ByteOrder::Little, |c| conns.push(c)).unwrap();
        assert_eq!(report.sockets, 4);
        assert_eq!(report.errors, 4);
        assert_eq!(conns.last().unwrap().local.port, 22);
        let (line, err) = report.first_error.unwrap();
        assert_eq!(line, 5);
        assert!(matches!(err, LineError::Truncated { fields: 3, .. }), "{err:?}");
    }

    #[test]
    fn state_codes_outside_the_table_are_unknown_not_errors() {
        let line = b"0: 0100007F:1F90 00000000:0000 0C 00000000:00000000 00:00000000 00000000 0 0 1";
        assert_eq!(parse_line(line, Family::Ipv4, ByteOrder::Little).unwrap().state, TcpState::Unknown);
        let bad = b"0: 0100007F:1F90 00000000:0000 ABC 00000000:00000000 00:00000000 00000000 0 0 1";
        assert!(matches!(parse_line(bad, Family::Ipv4, ByteOrder::Little), Err(LineError::BadState(_))));
    }

    #[test]
    fn empty_input_is_no_sockets_and_no_errors() {
        let report = parse_tcp(&b""[..], Family::Ipv6, ByteOrder::Little, |_| panic!("no socket")).unwrap();
        assert_eq!(report, ParseReport::default());
    }
}
