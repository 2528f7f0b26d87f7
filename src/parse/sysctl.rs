//! Values of `/proc/sys` files the exporter reads: `net.ipv4.ip_local_port_range`, and
//! `net.ipv4.tcp_ehash_entries`.

use thiserror::Error;

use crate::classify::PortRange;

/// Why a `ip_local_port_range` text is not a range.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PortRangeError {
    /// Not two whitespace-separated numbers.
    #[error("expected two port numbers, found {0:?}")]
    Shape(String),
    /// A number that is no port.
    #[error("{0:?} is not a port number")]
    Port(String),
    /// The low end above the high end.
    #[error("low end {low} above high end {high}")]
    Order {
        /// First number.
        low: u16,
        /// Second number.
        high: u16,
    },
}

/// Parses `net.ipv4.ip_local_port_range` ("32768\t60999\n"): the ports the kernel picks
/// a connecting socket's local port from.
pub fn parse_port_range(text: &str) -> Result<PortRange, PortRangeError> {
    let f: Vec<&str> = text.split_whitespace().collect();
    let [low, high] = f[..] else { return Err(PortRangeError::Shape(text.trim().to_owned())) };
    let port = |s: &str| s.parse::<u16>().map_err(|_| PortRangeError::Port(s.to_owned()));
    let (low, high) = (port(low)?, port(high)?);
    if low > high {
        return Err(PortRangeError::Order { low, high });
    }
    Ok(PortRange { low, high })
}

/// Parses `net.ipv4.tcp_ehash_entries` as read in a namespace: whether the namespace
/// shares the host's established-socket hash table (the kernel shows the host table's
/// size negated), `None` when the text is no number.
pub fn parse_shares_host_table(text: &str) -> Option<bool> {
    text.trim().parse::<i64>().ok().map(|n| n < 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_hash_size_is_the_hosts_table() {
        assert_eq!(parse_shares_host_table("-262144\n"), Some(true));
        assert_eq!(parse_shares_host_table("4096\n"), Some(false));
        assert_eq!(parse_shares_host_table("many"), None);
    }

    #[test]
    fn the_kernels_text_parses_and_bad_texts_say_why() {
        assert_eq!(parse_port_range("32768\t60999\n"), Ok(PortRange { low: 32768, high: 60999 }));
        assert_eq!(parse_port_range("1024 1024"), Ok(PortRange { low: 1024, high: 1024 }));
        assert_eq!(parse_port_range("32768"), Err(PortRangeError::Shape("32768".into())));
        assert_eq!(parse_port_range("1 2 3"), Err(PortRangeError::Shape("1 2 3".into())));
        assert_eq!(parse_port_range("1 70000"), Err(PortRangeError::Port("70000".into())));
        assert_eq!(parse_port_range("-1 2"), Err(PortRangeError::Port("-1".into())));
        assert_eq!(parse_port_range("60999 32768"), Err(PortRangeError::Order { low: 60999, high: 32768 }));
    }
}
