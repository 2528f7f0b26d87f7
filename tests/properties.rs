//! Property tests of the pure parsers, the netlink decoder and the exposition writer.
//!
//! Two kinds of input: any bytes at all, and input built from the pieces of the real
//! formats (hex fields, `ADDR:PORT`, netlink headers with plausible lengths and types),
//! which reaches far deeper into a parser than noise does. The properties: every input
//! gives a value or an error, never a panic; what the kernel writes reads back as what it
//! meant; what the encoder writes reads back as what it was given. The fuzz targets in
//! `fuzz/` check the same and more, for longer; these run with every `cargo test`.

use std::io::BufReader;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use conn_exporter::exposition::{
    accepts_gzip, push_ipv6, Encoder, Format, HistogramValue, Kind, NativeBuckets, Number, Value,
};
use conn_exporter::model::Family;
use conn_exporter::parse::proc_net::{parse_endpoint, parse_line, parse_tcp, ByteOrder};
use conn_exporter::parse::route::{parse_if_inet6, parse_routes};
use conn_exporter::parse::sock_diag::{decode_batch, decode_socket, ends_dump, Batch, AF_INET, AF_INET6};
use proptest::prelude::*;
use proptest::test_runner::Config;

#[path = "support/metrics_proto.rs"]
mod metrics_proto;
use metrics_proto::{decode_stream, join_chunks, text_samples, TextSample};

/// Enough cases to find the shallow bugs on every run while the whole file stays near a
/// second; `PROPTEST_CASES=100000 cargo test --test properties` searches longer.
fn config() -> Config {
    // No regression files: failures print their minimal input, which belongs in a named
    // test (see the end of this file) rather than in a seed file.
    Config { cases: 256, failure_persistence: None, ..Config::default() }
}

const ORDERS: [ByteOrder; 2] = [ByteOrder::Little, ByteOrder::Big];

/// Struct `inet_diag_msg`, the payload of one socket in a sock_diag reply.
const INET_DIAG_MSG_LEN: usize = 72;
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;

// ---------------------------------------------------------------------------------------
// The kernel's side of the formats, written here from its documentation, not from src/.

/// `/proc/net/tcp{,6}`: each 32-bit word of the address as held in memory, `%08X`, then
/// `:%04X` of the port.
fn kernel_hex_endpoint(ip: IpAddr, port: u16, order: ByteOrder) -> String {
    let octets = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let mut out = String::new();
    for w in octets.chunks_exact(4) {
        let word = [w[0], w[1], w[2], w[3]];
        let word = match order {
            ByteOrder::Little => u32::from_le_bytes(word),
            ByteOrder::Big => u32::from_be_bytes(word),
        };
        out.push_str(&format!("{word:08X}"));
    }
    out + &format!(":{port:04X}")
}

/// One netlink message: header (with the given length field) and payload, padded to 4.
fn netlink_message(len_field: u32, kind: u16, payload: &[u8], pad: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + payload.len() + 3);
    m.extend_from_slice(&len_field.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    while pad && m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

/// Reads one label value written by the encoder, from after its opening quote: the value
/// and the bytes used, closing quote included.
fn unescape_label_value(escaped: &str) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut chars = escaped.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, i + 1)),
            '\\' => value.push(match chars.next()?.1 {
                '\\' => '\\',
                '"' => '"',
                'n' => '\n',
                _ => return None,
            }),
            c => value.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Strategies: input made of the formats' own pieces.

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))), ipv6_address().prop_map(IpAddr::V6)]
}

/// IPv6 addresses where zero groups are common (so `::` has choices to make), plus
/// IPv4-mapped and fully random ones.
fn ipv6_address() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(Ipv6Addr::from),
        prop::array::uniform8(prop_oneof![3 => Just(0u16), 1 => any::<u16>()]).prop_map(Ipv6Addr::from),
        any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_ipv6_mapped()),
    ]
}

/// One whitespace-separated field of `/proc/net/tcp{,6}` or of a route file.
fn proc_token() -> impl Strategy<Value = String> {
    prop_oneof![
        (address(), any::<u16>(), prop::sample::select(&ORDERS[..]))
            .prop_map(|(ip, port, order)| kernel_hex_endpoint(ip, port, order)),
        "[0-9]{1,4}:",
        "[0-9A-Fa-f]{1,9}",
        "[0-9A-F]{8}:[0-9A-F]{1,9}",
        "[0-9a-f]{32}",
        Just("sl".to_owned()),
        Just("Iface".to_owned()),
        "[a-z]{1,4}[0-9]?",
        "\\PC{0,6}",
        "[\\x00-\\x20:]{1,3}",
    ]
}

/// A file of lines made of those fields, sometimes with an overlong line.
fn proc_file() -> impl Strategy<Value = Vec<u8>> {
    let line = prop::collection::vec((proc_token(), prop::sample::select(vec![" ", "\t", "   ", ""])), 0..16)
        .prop_map(|fields| fields.into_iter().flat_map(|(f, sep)| [f, sep.to_owned()]).collect::<String>());
    let long_line = (1000usize..1100, "[0-9A-F: ]").prop_map(|(n, s)| s.repeat(n));
    let lines = prop::collection::vec(prop_oneof![9 => line, 1 => long_line], 0..12);
    (lines, any::<bool>()).prop_map(|(lines, trailing)| {
        let mut text = lines.join("\n");
        if trailing {
            text.push('\n');
        }
        text.into_bytes()
    })
}

/// One `inet_diag_msg` as the kernel lays it out, with any family byte sometimes.
fn inet_diag_msg() -> impl Strategy<Value = Vec<u8>> {
    let family = prop_oneof![4 => prop::sample::select(vec![AF_INET, AF_INET6]), 1 => any::<u8>()];
    (family, any::<u8>(), any::<[u8; 48]>(), prop::collection::vec(any::<u8>(), 0..24)).prop_map(
        |(family, state, id, rest)| {
            let mut m = vec![family, state, 0, 0];
            m.extend_from_slice(&id);
            m.resize(INET_DIAG_MSG_LEN, 0);
            m.extend(rest); // attributes after the core, as extensions add
            m
        },
    )
}

/// A receive buffer: netlink messages of the types a dump brings, mostly well formed.
fn netlink_buffer() -> impl Strategy<Value = Vec<u8>> {
    let kind = prop_oneof![
        6 => Just(SOCK_DIAG_BY_FAMILY),
        1 => Just(NLMSG_DONE),
        1 => Just(NLMSG_ERROR),
        1 => any::<u16>(),
    ];
    let payload = prop_oneof![
        4 => inet_diag_msg(),
        1 => prop::collection::vec(any::<u8>(), 0..80),
        // NLMSG_ERROR: a negative errno and the request's header.
        1 => (-200i32..=0).prop_map(|errno| {
            let mut p = errno.to_ne_bytes().to_vec();
            p.extend_from_slice(&[0; NLMSG_HDRLEN]);
            p
        }),
    ];
    let length_error = prop_oneof![8 => Just(0i64), 1 => -20i64..20, 1 => Just(i64::from(u32::MAX))];
    let message = (kind, payload, length_error, any::<bool>()).prop_map(|(kind, payload, error, pad)| {
        let len = (NLMSG_HDRLEN + payload.len()) as i64;
        let len_field = u32::try_from(len + error).unwrap_or(u32::MAX);
        netlink_message(len_field, kind, &payload, pad || error == 0)
    });
    (prop::collection::vec(message, 0..6), prop::collection::vec(any::<u8>(), 0..3))
        .prop_map(|(messages, tail)| messages.concat().into_iter().chain(tail).collect())
}

/// An `Accept` or `Accept-Encoding` header made of media ranges, codings and parameters.
fn header() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("application/openmetrics-text"),
        Just("application/vnd.google.protobuf"),
        Just("proto=io.prometheus.client.MetricFamily"),
        Just("encoding=delimited"),
        Just("encoding=text"),
        Just("text/plain"),
        Just("*/*"),
        Just("text/*"),
        Just("gzip"),
        Just("GZIP"),
        Just("identity"),
        Just("*"),
        Just("version=1.0.0"),
        Just("version=\"1.0.0\""),
        Just("version=0.0.4"),
        Just("version=0.0.1"),
        Just("escaping=allow-utf-8"),
        Just("q=0"),
        Just("q=0.5"),
        Just("q=1"),
        Just("q=1.5"),
        Just("q=nan"),
        Just("q=-0"),
        Just(";"),
        Just(","),
        Just(" "),
        Just("="),
    ];
    prop_oneof![prop::collection::vec(piece, 0..24).prop_map(|p| p.concat()), any::<String>()]
}

// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn proc_net_tcp_any_input_is_sockets_or_counted_errors(
        data in prop_oneof![proc_file(), prop::collection::vec(any::<u8>(), 0..2048)],
    ) {
        let lines = data.split(|&b| b == b'\n').count() as u64;
        for family in Family::ALL {
            for order in ORDERS {
                let mut sunk = Vec::new();
                let report = parse_tcp(&data[..], family, order, |c| sunk.push(c)).unwrap();
                prop_assert_eq!(report.sockets, sunk.len() as u64);
                prop_assert_eq!(report.errors == 0, report.first_error.is_none());
                prop_assert!(report.sockets + report.errors <= lines);
                // A reader whose buffer is smaller than a line sees the same file.
                let mut small = Vec::new();
                let again = parse_tcp(BufReader::with_capacity(5, &data[..]), family, order, |c| small.push(c)).unwrap();
                prop_assert_eq!(&again, &report);
                prop_assert_eq!(&small, &sunk);
                for line in data.split(|&b| b == b'\n') {
                    let _ = parse_line(line, family, order);
                }
            }
        }
    }

    #[test]
    fn route_files_any_input_is_a_value_or_an_error(
        data in prop_oneof![proc_file(), prop::collection::vec(any::<u8>(), 0..1024)],
    ) {
        let lines = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count() as u64;
        // Reading memory never fails, and a line that is not UTF-8 costs only itself.
        for order in ORDERS {
            let (routes, bad) = parse_routes(&data[..], order).unwrap();
            prop_assert!(routes.len() as u64 + bad <= lines);
            prop_assert!(routes.iter().all(|r| r.prefix_len <= 32));
        }
        let (addrs, bad) = parse_if_inet6(&data[..]).unwrap();
        prop_assert!(addrs.len() as u64 + bad <= lines);
    }

    #[test]
    fn netlink_any_buffer_is_a_batch_or_an_error(
        data in prop_oneof![netlink_buffer(), prop::collection::vec(any::<u8>(), 0..512)],
    ) {
        let mut sockets = 0usize;
        let decoded = decode_batch(&data, |_| sockets += 1);
        let _ = ends_dump(&data);
        prop_assert!(sockets <= data.len() / (NLMSG_HDRLEN + INET_DIAG_MSG_LEN));
        if decoded == Ok(Batch::Done) {
            prop_assert!(ends_dump(&data), "a buffer holding NLMSG_DONE ends the dump");
        }
        let _ = decode_socket(&data);
    }

    #[test]
    fn inet_diag_msg_decodes_to_the_socket_it_describes(msg in inet_diag_msg()) {
        match decode_socket(&msg) {
            Ok(conn) => {
                prop_assert_eq!(conn.local.port, u16::from_be_bytes([msg[4], msg[5]]));
                prop_assert_eq!(conn.remote.port, u16::from_be_bytes([msg[6], msg[7]]));
                let (local, remote) = if msg[0] == AF_INET {
                    (IpAddr::from([msg[8], msg[9], msg[10], msg[11]]), IpAddr::from([msg[24], msg[25], msg[26], msg[27]]))
                } else {
                    (
                        IpAddr::from(<[u8; 16]>::try_from(&msg[8..24]).unwrap()),
                        IpAddr::from(<[u8; 16]>::try_from(&msg[24..40]).unwrap()),
                    )
                };
                prop_assert_eq!((conn.local.ip, conn.remote.ip), (local, remote));
                prop_assert_eq!(conn.if_index, u32::from_ne_bytes([msg[40], msg[41], msg[42], msg[43]]));
            }
            Err(_) => prop_assert!(!matches!(msg[0], AF_INET | AF_INET6)),
        }
    }

    #[test]
    fn negotiation_any_header_is_a_format(header in header()) {
        let format = Format::negotiate(Some(&header));
        let lower = header.to_ascii_lowercase();
        if format == Format::OpenMetrics {
            prop_assert!(lower.contains("application/openmetrics-text"));
        }
        let names_protobuf = lower.contains("application/vnd.google.protobuf");
        if format == Format::Protobuf {
            prop_assert!(names_protobuf && header.contains("io.prometheus.client.MetricFamily") && lower.contains("delimited"));
        }
        // Each media range counts alone: a full-weight OpenMetrics range always wins,
        // unless protobuf is named as high (ties go to protobuf); a full-weight protobuf
        // range always wins.
        let om = Format::negotiate(Some(&format!("{header},application/openmetrics-text;version=1.0.0")));
        if names_protobuf {
            prop_assert!(om == Format::OpenMetrics || om == Format::Protobuf);
        } else {
            prop_assert_eq!(om, Format::OpenMetrics);
        }
        prop_assert_eq!(Format::negotiate(Some(&format!("{header},{PROTOBUF_RANGE}"))), Format::Protobuf);
        // A protobuf range of weight zero changes nothing.
        prop_assert_eq!(Format::negotiate(Some(&format!("{header},{PROTOBUF_RANGE};q=0"))), format);
        let gzip = accepts_gzip(Some(&header));
        if gzip {
            prop_assert!(header.to_ascii_lowercase().contains("gzip") || header.contains('*'));
        }
        // A refusal by name never turns gzip on, and beats a wildcard when gzip is not
        // named otherwise.
        let refused = accepts_gzip(Some(&format!("{header},gzip;q=0")));
        prop_assert!(!refused || gzip);
        if !header.to_ascii_lowercase().contains("gzip") {
            prop_assert!(!refused);
        }
        let with_gzip = format!("{header},gzip");
        prop_assert!(accepts_gzip(Some(&with_gzip)), "{:?}", with_gzip);
    }

    #[test]
    fn kernel_hex_endpoints_round_trip(ip in address(), port in any::<u16>()) {
        let family = if ip.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 };
        for order in ORDERS {
            let field = kernel_hex_endpoint(ip, port, order);
            let parsed = parse_endpoint(field.as_bytes(), family, order).map(|e| e.0);
            prop_assert_eq!(parsed.map(|e| (e.ip, e.port)), Some((ip, port)), "{} {:?}", field, order);
            // Lower-case hex is the same field.
            let lower = parse_endpoint(field.to_ascii_lowercase().as_bytes(), family, order).map(|e| e.0);
            prop_assert_eq!(lower, parsed);
            // And the other family's width is no address at all.
            let other = if family == Family::Ipv4 { Family::Ipv6 } else { Family::Ipv4 };
            prop_assert_eq!(parse_endpoint(field.as_bytes(), other, order), None);
        }
    }

    #[test]
    fn ipv6_text_is_the_standard_librarys_and_parses_back(ip in ipv6_address()) {
        let mut text = Vec::new();
        push_ipv6(&mut text, ip);
        let text = String::from_utf8(text).unwrap();
        prop_assert_eq!(&text, &ip.to_string());
        prop_assert_eq!(text.parse::<Ipv6Addr>().unwrap(), ip);
    }

    #[test]
    fn sample_lines_are_one_line_and_unescape_to_their_values(
        values in prop::collection::vec(prop_oneof![any::<String>(), "[\\\\\"\n\ra-z{}=,]{0,12}"], 0..5),
        openmetrics in any::<bool>(),
        value in any::<u64>(),
    ) {
        const NAMES: [&str; 5] = ["a", "interface", "l2", "remote_address", "state"];
        let format = if openmetrics { Format::OpenMetrics } else { Format::Text };
        let labels: Vec<(&str, Value<'_>)> = NAMES.iter().zip(&values).map(|(n, v)| (*n, Value::Str(v))).collect();
        let mut encoder = Encoder::new(Vec::new(), format);
        encoder.sample("conn_exporter_test", &labels, Number::Int(value)).unwrap();
        let out = String::from_utf8(encoder.finish().unwrap()).unwrap();
        let line = out.strip_suffix("# EOF\n").unwrap_or(&out);
        let line = line.strip_suffix('\n').expect("a sample ends its line");
        prop_assert!(!line.contains('\n'), "{:?}", line);

        let mut rest = line.strip_prefix("conn_exporter_test").unwrap();
        if !values.is_empty() {
            rest = rest.strip_prefix('{').unwrap();
            for (i, (name, expected)) in NAMES.iter().zip(&values).enumerate() {
                if i > 0 {
                    rest = rest.strip_prefix(',').unwrap();
                }
                rest = rest.strip_prefix(name).and_then(|r| r.strip_prefix("=\"")).unwrap();
                let (got, used) = unescape_label_value(rest).expect("an escaped, closed value");
                prop_assert_eq!(&got, expected);
                rest = &rest[used..];
            }
            rest = rest.strip_prefix('}').unwrap();
        }
        prop_assert_eq!(rest, format!(" {value}"));
    }

    #[test]
    fn protobuf_decodes_to_the_text_formats_families_and_samples(families in prop::collection::vec(family(), 0..6)) {
        let text = String::from_utf8(encode(&families, Format::Text)).unwrap();
        let proto = encode(&families, Format::Protobuf);
        let decoded = join_chunks(decode_stream(&proto));
        let parsed = parse_text(&text);
        prop_assert_eq!(decoded.len(), parsed.len(), "families: {:?}", decoded.iter().map(|f| &f.name).collect::<Vec<_>>());
        for (pb, (name, help, kind, samples)) in decoded.iter().zip(&parsed) {
            prop_assert_eq!(&pb.name, name);
            prop_assert_eq!(&pb.help, help);
            prop_assert_eq!(pb.type_name(), kind.as_str());
            let from_pb = text_samples(pb);
            prop_assert_eq!(from_pb.len(), samples.len(), "{}", name);
            for (a, b) in from_pb.iter().zip(samples) {
                prop_assert_eq!(&a.0, &b.0);
                prop_assert_eq!(&a.1, &b.1);
                prop_assert!(a.2 == b.2 || (a.2.is_nan() && b.2.is_nan()), "{}{:?}: {} vs {}", a.0, a.1, a.2, b.2);
            }
        }
        // The native buckets, which text does not carry, read back as they went in.
        let written = families.iter().filter(|f| f.kind == Kind::Histogram).flat_map(|f| &f.histograms);
        let read = decoded.iter().filter(|f| f.r#type == 4).flat_map(|f| &f.metric);
        let mut n = 0;
        for ((_, w), r) in written.zip(read) {
            let h = r.histogram.as_ref().expect("a histogram");
            prop_assert_eq!(h.schema, Some(i32::from(w.schema)));
            prop_assert_eq!(h.zero_threshold.to_bits(), w.zero_threshold.to_bits());
            prop_assert_eq!(h.zero_count, w.zero_count);
            prop_assert_eq!(h.positive_buckets(), w.positive.clone());
            prop_assert!(!h.positive_span.is_empty() || h.zero_count > 0 || h.zero_threshold > 0.0, "native and recognisable");
            n += 1;
        }
        prop_assert_eq!(n, families.iter().filter(|f| f.kind == Kind::Histogram).map(|f| f.histograms.len()).sum::<usize>());
    }
}

// ---------------------------------------------------------------------------------------
// Inputs the fuzz targets found, one test each, named after what they pin.

/// An NLMSG_ERROR whose errno field is `0x80000000`: `-(errno as i32)` overflows. The
/// kernel never sends it; a corrupt buffer may, and it must be an error, not a panic.
#[test]
fn netlink_error_with_errno_i32_min_is_an_error() {
    let mut payload = 0x8000_0000u32.to_ne_bytes().to_vec();
    payload.extend_from_slice(&[0; NLMSG_HDRLEN]);
    let buf = netlink_message((NLMSG_HDRLEN + payload.len()) as u32, NLMSG_ERROR, &payload, true);
    assert!(decode_batch(&buf, |_| {}).is_err());
    assert!(ends_dump(&buf));
}

/// A socket message that `decode_batch` refuses (an unknown family, a payload shorter than
/// `inet_diag_msg`) must end the dump for `ends_dump` too, or the receiving thread keeps
/// receiving a dump whose decoder has already given up.
#[test]
fn a_buffer_decode_batch_refuses_ends_the_dump() {
    let mut bad_family = vec![99u8; 1];
    bad_family.resize(INET_DIAG_MSG_LEN, 0);
    let short = vec![AF_INET; 10];
    for payload in [bad_family, short] {
        let buf = netlink_message((NLMSG_HDRLEN + payload.len()) as u32, SOCK_DIAG_BY_FAMILY, &payload, true);
        assert!(decode_batch(&buf, |_| {}).is_err());
        assert!(ends_dump(&buf), "decode_batch refused {buf:?}, ends_dump let it pass");
    }
}

/// `/proc/net/if_inet6` and `route` of a network namespace holding an interface named
/// `e\xffx` (Linux allows any bytes but `/`, `:` and whitespace), captured on Linux 6.18:
/// the other lines must still count, as a malformed `tcp` line costs only itself.
#[test]
fn a_non_utf8_interface_name_costs_one_line_not_the_file() {
    let if_inet6 = b"fd000000000000000000000000000005 03 40 00 80     e\xffx\n\
00000000000000000000000000000001 01 80 10 80       lo\n";
    let (addrs, _) = parse_if_inet6(&if_inet6[..]).expect("one odd name is no I/O error");
    assert!(addrs.iter().any(|a| a.interface == "lo"));
    let route = b"Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
e\xffx\t006433C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
    let (routes, _) = parse_routes(&route[..], ByteOrder::Little).expect("one odd name is no I/O error");
    assert!(routes.iter().any(|r| r.interface == "eth0"));
}

/// RFC 9110 12.5.3: a coding named with q=0 is refused even where `*` would accept it.
#[test]
fn gzip_refused_by_name_stays_refused_under_a_wildcard() {
    assert!(!accepts_gzip(Some("*;q=1, gzip;q=0")));
    assert!(!accepts_gzip(Some("gzip;q=0, *")));
}

/// RFC 9110 12.4.2: the weight's name is case-insensitive, as `Format::negotiate` already
/// treats it in `Accept`.
#[test]
fn gzip_weight_name_is_case_insensitive() {
    assert!(!accepts_gzip(Some("gzip;Q=0")));
    assert!(!accepts_gzip(Some("gzip; Q=0, *;q=1")));
}

// ---------------------------------------------------------------------------------------
// Families for the protobuf/text comparison: owned inputs of `Encoder` calls.

const PROTOBUF_RANGE: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

#[derive(Clone, Debug)]
enum LabelValue {
    Str(String),
    Ip(IpAddr),
    Int(u64),
}

impl LabelValue {
    fn value(&self) -> Value<'_> {
        match self {
            LabelValue::Str(s) => Value::Str(s),
            LabelValue::Ip(ip) => Value::Ip(*ip),
            LabelValue::Int(n) => Value::Int(*n),
        }
    }
}

#[derive(Clone, Debug)]
struct Histogram {
    count: u64,
    sum: f64,
    buckets: Vec<(f64, u64)>,
    schema: i8,
    zero_threshold: f64,
    zero_count: u64,
    positive: Vec<(i32, u64)>,
}

#[derive(Clone, Debug)]
struct TestFamily {
    kind: Kind,
    help: String,
    samples: Vec<(Vec<LabelValue>, Number)>,
    histograms: Vec<(Vec<LabelValue>, Histogram)>,
}

const LABEL_NAMES: [&str; 5] = ["destination_address", "direction", "l2", "state", "source_port"];

fn label_values() -> impl Strategy<Value = Vec<LabelValue>> {
    let value = prop_oneof![
        any::<String>().prop_map(LabelValue::Str),
        "[\\\\\"\n a-z{}=,]{0,12}".prop_map(LabelValue::Str),
        address().prop_map(LabelValue::Ip),
        any::<u64>().prop_map(LabelValue::Int),
    ];
    prop::collection::vec(value, 0..=LABEL_NAMES.len())
}

fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<u64>().prop_map(Number::Int),
        any::<f64>().prop_map(Number::Float),
        prop::sample::select(vec![0.0, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.1, 1e300, 5e-324])
            .prop_map(Number::Float),
    ]
}

fn histogram() -> impl Strategy<Value = Histogram> {
    let bounds = prop::collection::btree_set(1u32..1_000_000, 0..12);
    let native = prop::collection::btree_map(-300i32..300, 0u64..1000, 0..20);
    (
        bounds,
        prop::collection::vec(0u64..1000, 12),
        0u64..1000,
        any::<f64>(),
        -4i8..=8,
        prop::sample::select(vec![0.0, 2f64.powi(-128), 1e-9, 0.001]),
        0u64..100,
        native,
    )
        .prop_map(|(bounds, steps, above, sum, schema, zero_threshold, zero_count, positive)| {
            let mut cumulative = 0;
            let buckets: Vec<(f64, u64)> = bounds
                .iter()
                .zip(&steps)
                .map(|(b, step)| {
                    cumulative += step;
                    (f64::from(*b) / 1e6, cumulative)
                })
                .collect();
            Histogram {
                count: cumulative + above,
                sum,
                buckets,
                schema,
                zero_threshold,
                zero_count,
                positive: positive.into_iter().collect(),
            }
        })
}

fn family() -> impl Strategy<Value = TestFamily> {
    let kind = prop::sample::select(vec![Kind::Gauge, Kind::Counter, Kind::Histogram]);
    (
        kind,
        "[A-Za-z0-9 .,()]{0,30}",
        prop::collection::vec((label_values(), number()), 0..8),
        prop::collection::vec((label_values(), histogram()), 0..4),
    )
        .prop_map(|(kind, help, samples, histograms)| {
            let (samples, histograms) = if kind == Kind::Histogram { (vec![], histograms) } else { (samples, vec![]) };
            TestFamily { kind, help, samples, histograms }
        })
}

fn family_name(i: usize, kind: Kind) -> String {
    match kind {
        Kind::Counter => format!("conn_exporter_test{i}_total"),
        _ => format!("conn_exporter_test{i}"),
    }
}

/// The same `Encoder` calls in any format.
fn encode(families: &[TestFamily], format: Format) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new(), format);
    for (i, f) in families.iter().enumerate() {
        let name = family_name(i, f.kind);
        e.family(&name, f.kind, &f.help).unwrap();
        for (values, n) in &f.samples {
            let labels: Vec<(&str, Value<'_>)> = LABEL_NAMES.iter().zip(values).map(|(k, v)| (*k, v.value())).collect();
            e.sample(&name, &labels, *n).unwrap();
        }
        for (values, h) in &f.histograms {
            let labels: Vec<(&str, Value<'_>)> = LABEL_NAMES.iter().zip(values).map(|(k, v)| (*k, v.value())).collect();
            let value = HistogramValue {
                count: h.count,
                sum: h.sum,
                buckets: &h.buckets,
                native: Some(NativeBuckets {
                    schema: h.schema,
                    zero_threshold: h.zero_threshold,
                    zero_count: h.zero_count,
                    positive: &h.positive,
                }),
            };
            e.histogram(&name, &labels, &value).unwrap();
        }
    }
    e.finish().unwrap()
}

/// Text 0.0.4 read back, family by family: name, help, type and samples. Written here
/// from the format's documentation (HELP/TYPE lines, `name{label="value",...} value`).
fn parse_text(text: &str) -> Vec<(String, String, String, Vec<TextSample>)> {
    let mut out: Vec<(String, String, String, Vec<TextSample>)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push((name.to_owned(), help.to_owned(), String::new(), Vec::new()));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("a type");
            let last = out.last_mut().expect("TYPE after HELP");
            assert_eq!(last.0, name);
            last.2 = kind.to_owned();
        } else {
            let name_end = line.find(['{', ' ']).expect("a sample line");
            let name = line[..name_end].to_owned();
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                rest = r;
                loop {
                    if let Some(r) = rest.strip_prefix('}') {
                        rest = r;
                        break;
                    }
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                    let (label, r) = rest.split_once("=\"").expect("label=\"");
                    let (value, used) = unescape_label_value(r).expect("an escaped, closed value");
                    labels.push((label.to_owned(), value));
                    rest = &r[used..];
                }
            }
            let value = match rest.strip_prefix(' ').expect("a space before the value") {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|e| panic!("{v:?}: {e}")),
            };
            out.last_mut().expect("a sample after its family").3.push((name, labels, value));
        }
    }
    out
}

/// A family far larger than one protobuf message is written as several messages of the
/// same family, each bounded, that together hold every sample in order.
#[test]
fn a_huge_family_is_several_bounded_messages_with_every_sample() {
    let samples: Vec<(Vec<LabelValue>, Number)> = (0..5000u64)
        .map(|i| {
            let ip = IpAddr::V6(Ipv6Addr::from(u128::from(i) << 64 | 0xfe80));
            (vec![LabelValue::Ip(ip), LabelValue::Str("inbound".into()), LabelValue::Int(i)], Number::Int(i))
        })
        .collect();
    let family = TestFamily { kind: Kind::Gauge, help: "Many.".into(), samples, histograms: vec![] };
    let families = [family];
    let proto = encode(&families, Format::Protobuf);
    let messages = decode_stream(&proto);
    assert!(messages.len() > 3, "{} messages for {} bytes", messages.len(), proto.len());
    assert!(messages.iter().all(|m| m.name == "conn_exporter_test0" && m.help == "Many." && m.r#type == 1));
    assert!(messages.iter().all(|m| m.metric.len() < 2000), "each message bounded");
    let joined = join_chunks(messages);
    let text = parse_text(std::str::from_utf8(&encode(&families, Format::Text)).unwrap());
    assert_eq!(text_samples(&joined[0]), text[0].3);
}
