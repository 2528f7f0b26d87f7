//! `/proc/net/tcp{,6}` as a whole file: `parse_tcp` in both families and byte orders.
//!
//! Checks, besides never panicking: the streaming reader agrees with a plain model that
//! splits the input on newlines and hands each line to `parse_line`, whatever the reader's
//! buffer size; the report counts what was sunk; every parsed endpoint prints back, in the
//! kernel's own format, as the field it came from.

#![no_main]

use std::io::BufReader;

use conn_exporter::model::{Connection, Family};
use conn_exporter::parse::proc_net::{parse_line, parse_tcp, ByteOrder, LineError, ParseReport, MAX_LINE_BYTES};
use conn_exporter_fuzz::kernel_hex_endpoint;
use libfuzzer_sys::fuzz_target;

/// What `parse_tcp` should do, written as plainly as possible.
fn model(data: &[u8], family: Family, order: ByteOrder) -> (Vec<Connection>, ParseReport) {
    let mut conns = Vec::new();
    let mut report = ParseReport::default();
    for (i, line) in data.split_inclusive(|&b| b == b'\n').enumerate() {
        let number = i as u64 + 1;
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let result = if content.len() > MAX_LINE_BYTES {
            Err(LineError::TooLong)
        } else {
            let first = line.split(|b| b.is_ascii_whitespace()).find(|f| !f.is_empty());
            if (number == 1 && first == Some(&b"sl"[..])) || first.is_none() {
                continue;
            }
            let parsed = parse_line(line, family, order);
            if let Ok(conn) = &parsed {
                let fields: Vec<&[u8]> = line.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty()).collect();
                for (endpoint, field) in [(conn.local, fields[1]), (conn.remote, fields[2])] {
                    let printed = kernel_hex_endpoint(endpoint.ip, endpoint.port, order);
                    assert!(
                        printed.as_bytes().eq_ignore_ascii_case(field),
                        "{field:?} parsed as {endpoint:?}, which prints as {printed}"
                    );
                }
            }
            parsed
        };
        match result {
            Ok(conn) => {
                report.sockets += 1;
                conns.push(conn);
            }
            Err(e) => {
                report.errors += 1;
                report.first_error.get_or_insert((number, e));
            }
        }
    }
    (conns, report)
}

fuzz_target!(|data: &[u8]| {
    for family in Family::ALL {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let (expected_conns, expected_report) = model(data, family, order);
            // A slice, and a reader whose buffer is smaller than a line, split lines differently.
            for capacity in [None, Some(7)] {
                let mut conns = Vec::new();
                let report = match capacity {
                    None => parse_tcp(data, family, order, |c| conns.push(c)),
                    Some(n) => parse_tcp(BufReader::with_capacity(n, data), family, order, |c| conns.push(c)),
                }
                .expect("reading from memory never fails");
                assert_eq!(report.sockets, conns.len() as u64);
                assert_eq!(report.errors == 0, report.first_error.is_none());
                assert_eq!(report, expected_report, "{family:?} {order:?} buffer {capacity:?}");
                assert_eq!(conns, expected_conns, "{family:?} {order:?} buffer {capacity:?}");
                for c in &conns {
                    assert_eq!(c.local.ip.is_ipv4(), family == Family::Ipv4);
                    assert_eq!(c.remote.ip.is_ipv4(), family == Family::Ipv4);
                }
            }
        }
    }
});
