//! One sample line of the text formats: `Encoder::sample` with arbitrary label values.
//!
//! Checks: the sample is exactly one line in both formats; read back with the formats'
//! escaping rules, each label value is the string, address or number that went in; the
//! sample value reads back as the number that went in.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use conn_exporter::exposition::{Encoder, Format, Number, Value};
use conn_exporter_fuzz::unescape_label_value;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Label {
    Str(String),
    V4([u8; 4]),
    V6([u8; 16]),
    Int(u64),
}

#[derive(Arbitrary, Debug)]
enum Sample {
    Int(u64),
    Float(f64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    openmetrics: bool,
    labels: Vec<Label>,
    value: Sample,
}

const NAMES: [&str; 8] = ["a", "local_address", "l2", "state", "interface", "l5", "remote_port", "l7"];

fuzz_target!(|input: Input| {
    let format = if input.openmetrics { Format::OpenMetrics } else { Format::Text };
    let labels: Vec<(&str, Value<'_>, String)> = input
        .labels
        .iter()
        .take(NAMES.len())
        .zip(NAMES)
        .map(|(label, name)| match label {
            Label::Str(s) => (name, Value::Str(s), s.clone()),
            Label::V4(o) => (name, Value::Ip(IpAddr::V4(Ipv4Addr::from(*o))), Ipv4Addr::from(*o).to_string()),
            Label::V6(o) => (name, Value::Ip(IpAddr::V6(Ipv6Addr::from(*o))), Ipv6Addr::from(*o).to_string()),
            Label::Int(n) => (name, Value::Int(*n), n.to_string()),
        })
        .collect();
    let pairs: Vec<(&str, Value<'_>)> = labels.iter().map(|(n, v, _)| (*n, *v)).collect();
    let number = match input.value {
        Sample::Int(n) => Number::Int(n),
        Sample::Float(f) => Number::Float(f),
    };

    let mut encoder = Encoder::new(Vec::new(), format);
    encoder.sample("conn_exporter_fuzz", &pairs, number).expect("writing to a Vec never fails");
    let out = encoder.finish().expect("writing to a Vec never fails");
    let eof: &[u8] = if format == Format::OpenMetrics { b"# EOF\n" } else { b"" };
    let line = out.strip_suffix(eof).expect("the exposition ends as its format says");
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "{:?}", String::from_utf8_lossy(line));
    let line = line.strip_suffix(b"\n").expect("the line ends with a newline");

    let mut rest = line.strip_prefix(b"conn_exporter_fuzz".as_slice()).expect("the line starts with the name");
    if !labels.is_empty() {
        rest = rest.strip_prefix(b"{".as_slice()).expect("labels open with a brace");
        for (i, (name, _, expected)) in labels.iter().enumerate() {
            if i > 0 {
                rest = rest.strip_prefix(b",".as_slice()).expect("labels are separated by commas");
            }
            rest = rest.strip_prefix(name.as_bytes()).expect("the label name");
            rest = rest.strip_prefix(b"=\"".as_slice()).expect("the value opens with a quote");
            let (value, used) = unescape_label_value(rest).expect("the value is escaped and closed");
            assert_eq!(&value, expected);
            rest = &rest[used..];
        }
        rest = rest.strip_prefix(b"}".as_slice()).expect("labels close with a brace");
    }
    let text = std::str::from_utf8(rest.strip_prefix(b" ".as_slice()).expect("a space before the value"))
        .expect("the value is text");
    match number {
        Number::Int(n) => assert_eq!(text.parse::<u64>().ok(), Some(n), "{text:?}"),
        Number::Float(f) if f.is_nan() => assert_eq!(text, "NaN"),
        Number::Float(f) if f.is_infinite() => assert_eq!(text, if f > 0.0 { "+Inf" } else { "-Inf" }),
        Number::Float(f) => {
            assert!(!text.contains(['e', 'E']), "{text:?} has an exponent");
            assert_eq!(text.parse::<f64>().ok(), Some(f), "{text:?}");
        }
    }
});
