//! One `ADDR:PORT` field of `/proc/net/tcp{,6}`: `parse_endpoint` in both families and orders.
//!
//! Whatever it accepts must be exactly one field in the kernel's format: printing the
//! endpoint back the kernel's way gives the input again (hex digits in either case), and
//! the `[v6]:port` text it displays is a socket address naming the same endpoint.

#![no_main]

use std::net::{IpAddr, SocketAddr};

use conn_exporter::model::Family;
use conn_exporter::parse::proc_net::{parse_endpoint, ByteOrder};
use conn_exporter_fuzz::kernel_hex_endpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for family in Family::ALL {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let Some(parsed) = parse_endpoint(data, family, order) else { continue };
            let endpoint = parsed.0;
            assert_eq!(matches!(endpoint.ip, IpAddr::V4(_)), family == Family::Ipv4);
            let printed = kernel_hex_endpoint(endpoint.ip, endpoint.port, order);
            assert!(
                printed.as_bytes().eq_ignore_ascii_case(data),
                "{data:?} parsed as {endpoint:?}, prints as {printed}"
            );
            let shown: SocketAddr = parsed.to_string().parse().expect("the displayed endpoint is a socket address");
            assert_eq!((shown.ip(), shown.port()), (endpoint.ip, endpoint.port));
        }
    }
});
