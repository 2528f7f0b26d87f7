//! `/proc/net/route` and `/proc/net/if_inet6`: `parse_routes` in both byte orders and
//! `parse_if_inet6`, on the same bytes.
//!
//! Checks, besides never panicking: reading memory is never an I/O error, whatever the
//! bytes (a line that is not UTF-8 is one bad line); every line is at most one route or
//! address or one bad line; a route's prefix comes from a contiguous mask and its network
//! prints back as a field of the input; an address prints back, byte by byte as if_inet6
//! writes it, as a field of the input.

#![no_main]

use std::net::IpAddr;

use conn_exporter::parse::proc_net::ByteOrder;
use conn_exporter::parse::route::{parse_if_inet6, parse_routes};
use conn_exporter_fuzz::kernel_hex_endpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Invalid bytes become U+FFFD, which is no whitespace: fields of valid lines stay whole.
    let text = String::from_utf8_lossy(data);
    let lines = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count() as u64;
    let has_field = |field: &str| text.split_whitespace().any(|f| f.eq_ignore_ascii_case(field));

    for order in [ByteOrder::Little, ByteOrder::Big] {
        let (routes, bad) = parse_routes(data, order).expect("reading memory is no I/O error");
        assert!(routes.len() as u64 + bad <= lines);
        for r in routes {
            assert!(r.prefix_len <= 32);
            assert!(!r.interface.is_empty() && !r.interface.contains(char::is_whitespace));
            // The destination field, as the kernel wrote it (same word format as tcp).
            let dest = &kernel_hex_endpoint(IpAddr::V4(r.network), 0, order)[..8];
            assert!(has_field(dest), "route to {} from no field {dest}", r.network);
        }
    }

    let (addrs, bad) = parse_if_inet6(data).expect("reading memory is no I/O error");
    assert!(addrs.len() as u64 + bad <= lines);
    for a in addrs {
        assert!(!a.interface.is_empty() && !a.interface.contains(char::is_whitespace));
        let field: String = a.address.octets().iter().map(|b| format!("{b:02x}")).collect();
        assert!(has_field(&field), "address {} from no field {field}", a.address);
    }
});
