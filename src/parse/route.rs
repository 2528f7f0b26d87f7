//! `/proc/net/route` and `/proc/net/if_inet6`: which interface holds which address.

use std::io::{self, BufRead};
use std::net::{Ipv4Addr, Ipv6Addr};

use super::hex;
use super::proc_net::ByteOrder;

/// A connected IPv4 route (no gateway): the subnet an interface is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedRoute {
    /// Interface name.
    pub interface: String,
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length, from the mask.
    pub prefix_len: u8,
    /// Route metric; the lowest wins among equal prefixes.
    pub metric: u32,
}

/// An IPv6 address held by an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress6 {
    /// Interface name.
    pub interface: String,
    /// Interface index.
    pub index: u32,
    /// The address.
    pub address: Ipv6Addr,
}

fn ipv4_field(field: &str, order: ByteOrder) -> Option<Ipv4Addr> {
    if field.len() != 8 {
        return None;
    }
    let word = hex::parse_u32(field.as_bytes())?;
    Some(Ipv4Addr::from(match order {
        ByteOrder::Little => word.to_le_bytes(),
        ByteOrder::Big => word.to_be_bytes(),
    }))
}

/// Parses `/proc/net/route`, keeping connected routes; returns them and the count of bad lines.
pub fn parse_routes<R: BufRead>(reader: R, order: ByteOrder) -> io::Result<(Vec<ConnectedRoute>, u64)> {
    let mut routes = Vec::new();
    let mut bad = 0;
    for (i, line) in reader.split(b'\n').enumerate() {
        // A line that is not UTF-8 (an odd interface name) costs itself, not the file.
        let Ok(line) = String::from_utf8(line?) else {
            bad += 1;
            continue;
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        if i == 0 && f.first() == Some(&"Iface") || f.is_empty() {
            continue;
        }
        let parsed = (|| {
            let [iface, dest, gateway, _flags, _refcnt, _use, metric, mask, ..] = f.as_slice() else {
                return None;
            };
            let mask = ipv4_field(mask, order)?;
            let prefix_len = u32::from(mask).leading_ones() as u8;
            if u32::from(mask).count_ones() != u32::from(prefix_len) {
                return None;
            }
            Some((
                ipv4_field(gateway, order)?.is_unspecified(),
                ConnectedRoute {
                    interface: (*iface).to_owned(),
                    network: ipv4_field(dest, order)?,
                    prefix_len,
                    metric: metric.parse().ok()?,
                },
            ))
        })();
        match parsed {
            Some((true, route)) => routes.push(route),
            Some((false, _)) => {}
            None => bad += 1,
        }
    }
    Ok((routes, bad))
}

/// Parses `/proc/net/if_inet6`; returns the addresses and the count of bad lines.
pub fn parse_if_inet6<R: BufRead>(reader: R) -> io::Result<(Vec<InterfaceAddress6>, u64)> {
    let mut out = Vec::new();
    let mut bad = 0;
    for line in reader.split(b'\n') {
        let Ok(line) = String::from_utf8(line?) else {
            bad += 1;
            continue;
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        let parsed = (|| {
            let [addr, index, _plen, _scope, _flags, name] = f.as_slice() else {
                return None;
            };
            if addr.len() != 32 {
                return None;
            }
            // Unlike tcp6, if_inet6 prints the address byte by byte, in network order.
            let mut octets = [0u8; 16];
            for (i, pair) in addr.as_bytes().chunks_exact(2).enumerate() {
                octets[i] = hex::parse_u32(pair)? as u8;
            }
            Some(InterfaceAddress6 {
                interface: (*name).to_owned(),
                index: hex::parse_u32(index.as_bytes())?,
                address: Ipv6Addr::from(octets),
            })
        })();
        match parsed {
            Some(a) => out.push(a),
            None => bad += 1,
        }
    }
    Ok((out, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured on the build machine (Linux 6.18.44, x86_64).
    const ROUTE_LINUX_6_18: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    const IF_INET6_LINUX_6_18: &str = "\
fd000000000000000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
";

    #[test]
    fn route_linux_6_18_keeps_connected_routes_only() {
        let (routes, bad) = parse_routes(ROUTE_LINUX_6_18.as_bytes(), ByteOrder::Little).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(
            routes,
            vec![ConnectedRoute {
                interface: "eth0".into(),
                network: Ipv4Addr::new(192, 0, 2, 0),
                prefix_len: 24,
                metric: 0
            }]
        );
    }

    #[test]
    fn if_inet6_linux_6_18() {
        let (addrs, bad) = parse_if_inet6(IF_INET6_LINUX_6_18.as_bytes()).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(addrs.len(), 3);
        assert_eq!(addrs[0].address, "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(addrs[1].address, "fe80::fc:ff:fe00:1".parse::<Ipv6Addr>().unwrap());
        assert_eq!((addrs[1].index, addrs[1].interface.as_str()), (4, "eth0"));
        assert_eq!(addrs[2].address, std::net::Ipv6Addr::LOCALHOST);
    }

    #[test]
    fn bad_lines_are_counted() {
        let (routes, bad) =
            parse_routes("eth0 zz\neth1\t000200C0\t00000000\t1\t0\t0\t0\t00FF00FF\n".as_bytes(), ByteOrder::Little)
                .unwrap();
        assert!(routes.is_empty());
        assert_eq!(bad, 2);
        let (addrs, bad) = parse_if_inet6("fe80 02 40 20 80 eth0\n".as_bytes()).unwrap();
        assert!(addrs.is_empty());
        assert_eq!(bad, 1);
        let odd =
            b"fd000000000000000000000000000005 03 40 00 80 e\xffx\n00000000000000000000000000000001 01 80 10 80 lo\n";
        let (addrs, bad) = parse_if_inet6(&odd[..]).unwrap();
        assert_eq!((addrs.len(), bad), (1, 1), "a non-UTF-8 name costs one line");
    }
}
