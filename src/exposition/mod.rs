//! Exposition: the one place that knows the formats. Families write through
//! [`Encoder`] and never learn which format a client asked for.
//!
//! # Design
//!
//! - **A façade and one file per format** (the shape of client_rust's `encoding`):
//!   this module holds what every format shares: [`Format`] and the `Accept`
//!   negotiation, the [`Encoder`] façade, the values families hand it ([`Kind`],
//!   [`Value`], [`Number`], [`HistogramValue`], [`NativeBuckets`]) and the rendering of
//!   addresses. `text.rs` writes text 0.0.4 and OpenMetrics 1.0.0 (one writer, two
//!   dialects); `protobuf.rs` writes length-delimited `io.prometheus.client.MetricFamily`
//!   messages. The façade dispatches on an enum, not a trait object: a sample is one
//!   `match` and a direct call.
//! - **One call sequence for all formats:** `family`, then `sample`s (or `histogram`s),
//!   then the next `family`, and `finish`. Text writes each line as it comes; protobuf
//!   gathers a family's metrics and writes them as a `MetricFamily` when the next family
//!   starts, at `finish`, or every 64 KiB of metrics (a huge family becomes several
//!   consecutive messages of the same name, which Prometheus reads as one family), so
//!   memory stays bounded whatever the family's size.
//! - **Names:** a counter's family name carries `_total` in text and in protobuf (as
//!   client_golang names it: Prometheus stores a protobuf counter under the
//!   `MetricFamily` name, so the series are the same as from text); OpenMetrics drops it
//!   from `# HELP`/`# TYPE` only.
//! - **Histograms:** text and OpenMetrics write the classic buckets; protobuf writes one
//!   `Histogram` per label set with the classic buckets (`cumulative_count`,
//!   `upper_bound`; `+Inf` implied by `sample_count`) *and* the native ones (schema,
//!   zero threshold and count, positive spans and delta-encoded counts), plus
//!   `sample_count` and `sample_sum`. Prometheus with native histograms on stores the
//!   native form; without, or with `scrape_classic_histograms`, the classic one.
//! - **No protobuf crate:** the exporter writes nine small messages and reads none.
//!   Writing their fields with a varint writer (`protobuf.rs`, about 150 lines) streams
//!   a metric at a time from reused buffers, with label values rendered straight into
//!   the message as text does. prost would want an owned `Metric` (a `String` per label)
//!   built for every sample and a whole `MetricFamily` in memory before
//!   `encode_length_delimited`, plus a build script or generated code to keep in step.
//!   The tests decode the output with prost (hand-declared messages), a decoder that
//!   shares nothing with this writer.

use std::io::{self, Write};
use std::net::IpAddr;

mod protobuf;
mod text;

/// `Content-Type` of the text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the protobuf format (client_golang's spelling).
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// The formats served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
    /// Length-delimited `io.prometheus.client.MetricFamily` protobuf messages, the only
    /// format that carries native histograms.
    Protobuf,
}

impl Format {
    /// The exact `Content-Type` header value.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Protobuf => PROTOBUF_CONTENT_TYPE,
        }
    }

    /// Picks the format for an `Accept` header: protobuf when it is acceptable and
    /// weighted at least as high as the others; otherwise OpenMetrics when it is
    /// acceptable and weighted at least as high as the text format; text otherwise (and
    /// when absent).
    ///
    /// Protobuf is acceptable only as `application/vnd.google.protobuf` with
    /// `proto=io.prometheus.client.MetricFamily` and `encoding=delimited`, the range
    /// Prometheus sends first when native histograms are on:
    /// `application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,...`.
    /// A header that does not name it gets what it got before protobuf existed.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Text };
        let (mut proto, mut om, mut text) = (0.0f32, 0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version, mut message, mut encoding) = (1.0f32, None, None, None);
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    let (v, unquoted) = (v.trim(), v.trim().trim_matches('"'));
                    match k.trim().to_ascii_lowercase().as_str() {
                        "q" => q = v.parse().ok().filter(|q: &f32| (0.0..=1.0).contains(q)).unwrap_or(0.0),
                        "version" => version = Some(unquoted.to_owned()),
                        "proto" => message = Some(unquoted.to_owned()),
                        "encoding" => encoding = Some(unquoted.to_ascii_lowercase()),
                        _ => {}
                    }
                }
            }
            match media.as_str() {
                "application/openmetrics-text" if version.as_deref().is_none_or(|v| v == "1.0.0") => om = om.max(q),
                "text/plain" if version.as_deref().is_none_or(|v| v == "0.0.4") => text = text.max(q),
                "*/*" | "text/*" => text = text.max(q),
                "application/vnd.google.protobuf"
                    if message.as_deref() == Some("io.prometheus.client.MetricFamily")
                        && encoding.as_deref() == Some("delimited") =>
                {
                    proto = proto.max(q)
                }
                _ => {}
            }
        }
        if proto > 0.0 && proto >= om && proto >= text {
            Format::Protobuf
        } else if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// True when an `Accept-Encoding` header accepts gzip.
///
/// An explicit `gzip` entry decides; `*` counts only when gzip is not named (RFC 9110
/// 12.5.3: `gzip;q=0, *` refuses gzip).
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let Some(header) = accept_encoding else { return false };
    let (mut gzip, mut any) = (None::<f32>, None::<f32>);
    for coding in header.split(',') {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        let q = parts
            .find_map(|p| p.split_once('=').filter(|(k, _)| k.trim().eq_ignore_ascii_case("q")).map(|(_, v)| v))
            .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
        let q = if (0.0..=1.0).contains(&q) { q } else { 0.0 };
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(gzip.map_or(q, |g| g.max(q)));
        } else if name == "*" {
            any = Some(any.map_or(q, |a| a.max(q)));
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

/// Metric types used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A gauge.
    Gauge,
    /// A counter: samples carry `_total`; OpenMetrics names the family without it.
    Counter,
    /// A histogram, written with [`Encoder::histogram`].
    Histogram,
}

/// One histogram of a family: its classic buckets and, where the format carries them
/// (protobuf), its native buckets too.
///
/// The classic buckets are what text and OpenMetrics write (`_bucket{le}`, `_sum`,
/// `_count`). The native buckets are counted from the same observations, not derived
/// from the classic ones, so each view is exact at its own resolution.
#[derive(Clone, Copy, Debug)]
pub struct HistogramValue<'a> {
    /// Observations.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Upper bounds, ascending, with the cumulative count of each; `+Inf` is left out
    /// (it is `count`).
    pub buckets: &'a [(f64, u64)],
    /// The native buckets.
    pub native: Option<NativeBuckets<'a>>,
}

/// Sparse exponential buckets of a native histogram, as Prometheus defines them: with
/// schema `s`, bucket `i` holds the observations in `(2^((i-1)/2^s), 2^(i/2^s)]`.
#[derive(Clone, Copy, Debug)]
pub struct NativeBuckets<'a> {
    /// Resolution: each bucket is `2^(2^-schema)` times the one before.
    pub schema: i8,
    /// Observations at most this (in absolute value) are counted in the zero bucket.
    ///
    /// Keep it above zero: Prometheus before 2.49 (Debian's 2.42 among them) takes a
    /// histogram for native only when it has a populated bucket, a zero count or a
    /// positive zero threshold, judging by the first histogram of each message; an empty
    /// one with a zero threshold of 0 would make it read the whole message as classic.
    /// client_golang's default is 2^-128.
    pub zero_threshold: f64,
    /// Observations in the zero bucket.
    pub zero_count: u64,
    /// The populated positive buckets, `(index, count)` (not cumulative), by index.
    pub positive: &'a [(i32, u64)],
}

/// A label value; addresses and ports are formatted on the way out.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    /// Text, escaped as it is written.
    Str(&'a str),
    /// An address, written in its canonical form.
    Ip(IpAddr),
    /// A port or other integer.
    Int(u64),
}

/// A sample value.
#[derive(Clone, Copy, Debug)]
pub enum Number {
    /// An integer.
    Int(u64),
    /// A float.
    Float(f64),
}

/// Writes families and samples in one format: the one interface every family writes
/// through, whatever the client asked for.
///
/// Call [`family`](Self::family) once per family, then its samples with
/// [`sample`](Self::sample) (whose name is the family's) or its histograms with
/// [`histogram`](Self::histogram), then [`finish`](Self::finish) once.
pub struct Encoder<W: Write> {
    format: Format,
    writer: Writer<W>,
}

/// The format's own writer; an enum rather than a trait object, so that each sample is a
/// direct call.
enum Writer<W: Write> {
    Text(text::TextEncoder<W>),
    Protobuf(protobuf::ProtobufEncoder<W>),
}

impl<W: Write> Encoder<W> {
    /// An encoder writing to `out`.
    pub fn new(out: W, format: Format) -> Self {
        let writer = match format {
            Format::Text => Writer::Text(text::TextEncoder::new(out, false)),
            Format::OpenMetrics => Writer::Text(text::TextEncoder::new(out, true)),
            Format::Protobuf => Writer::Protobuf(protobuf::ProtobufEncoder::new(out)),
        };
        Encoder { format, writer }
    }

    /// The format being written.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Starts a family: `# HELP` and `# TYPE` in text, a new `MetricFamily` in protobuf.
    /// `name` is the sample name, with `_total` for counters.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> io::Result<()> {
        match &mut self.writer {
            Writer::Text(w) => w.family(name, kind, help),
            Writer::Protobuf(w) => w.family(name, kind, help),
        }
    }

    /// Writes one histogram of a family declared [`Kind::Histogram`]: in text its classic
    /// buckets, `_sum` and `_count` (`le` after the other labels); in protobuf one
    /// `Histogram` with the classic and the native buckets.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, Value<'_>)], h: &HistogramValue<'_>) -> io::Result<()> {
        match &mut self.writer {
            Writer::Text(w) => w.histogram(name, labels, h),
            Writer::Protobuf(w) => w.histogram(name, labels, h),
        }
    }

    /// Writes one sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, Value<'_>)], value: Number) -> io::Result<()> {
        match &mut self.writer {
            Writer::Text(w) => w.sample(name, labels, value),
            Writer::Protobuf(w) => w.sample(name, labels, value),
        }
    }

    /// Ends the exposition (`# EOF` in OpenMetrics; the last message in protobuf) and
    /// returns the writer.
    pub fn finish(self) -> io::Result<W> {
        match self.writer {
            Writer::Text(w) => w.finish(),
            Writer::Protobuf(w) => w.finish(),
        }
    }
}

/// A bucket bound as text: Rust's shortest round-trip form, which never uses an
/// exponent (`0.00005`, `1`, `2.5`).
pub fn float_text(f: f64) -> String {
    format!("{f}")
}

/// A label value's text, unescaped: as protobuf carries it, and as text writes
/// addresses and integers (which hold nothing to escape).
fn push_raw_value(buf: &mut Vec<u8>, value: Value<'_>) {
    match value {
        Value::Str(s) => buf.extend_from_slice(s.as_bytes()),
        Value::Ip(IpAddr::V4(ip)) => push_ipv4(buf, ip.octets()),
        Value::Ip(IpAddr::V6(ip)) => push_ipv6(buf, ip),
        Value::Int(n) => buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
    }
}

fn push_ipv4(line: &mut Vec<u8>, [a, b, c, d]: [u8; 4]) {
    let mut buf = itoa::Buffer::new();
    line.extend_from_slice(buf.format(a).as_bytes());
    for octet in [b, c, d] {
        line.push(b'.');
        line.extend_from_slice(buf.format(octet).as_bytes());
    }
}

/// RFC 5952 text, as `Ipv6Addr`'s `Display` writes it (IPv4-mapped as `::ffff:a.b.c.d`),
/// without the formatting machinery.
pub fn push_ipv6(line: &mut Vec<u8>, ip: std::net::Ipv6Addr) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if let Some(v4) = ip.to_ipv4_mapped() {
        line.extend_from_slice(b"::ffff:");
        return push_ipv4(line, v4.octets());
    }
    let groups = ip.segments();
    // The longest run of two or more zero groups, the first of equals, becomes "::".
    let (mut best, mut best_len, mut run, mut run_len) = (0, 0, 0, 0);
    for (i, &g) in groups.iter().enumerate() {
        if g == 0 {
            if run_len == 0 {
                run = i;
            }
            run_len += 1;
            if run_len > best_len {
                (best, best_len) = (run, run_len);
            }
        } else {
            run_len = 0;
        }
    }
    let push_group = |line: &mut Vec<u8>, g: u16| {
        let mut started = false;
        for shift in [12, 8, 4, 0] {
            let nibble = usize::from((g >> shift) & 0xf);
            if nibble != 0 || started || shift == 0 {
                line.push(HEX[nibble]);
                started = true;
            }
        }
    };
    let mut i = 0;
    while i < 8 {
        if best_len >= 2 && i == best {
            line.extend_from_slice(b"::");
            i += best_len;
            continue;
        }
        if i > 0 && !(best_len >= 2 && i == best + best_len) {
            line.push(b':');
        }
        push_group(line, groups[i]);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMETHEUS_2_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    /// scrape/scrape.go's `scrapeAcceptHeaderWithProtobuf` in Prometheus 2.42, sent with
    /// `--enable-feature=native-histograms`.
    const PROMETHEUS_2_NATIVE_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    const PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

    #[test]
    fn negotiation_of_protobuf() {
        assert_eq!(Format::negotiate(Some(PROMETHEUS_2_NATIVE_ACCEPT)), Format::Protobuf);
        assert_eq!(Format::negotiate(Some(PROTOBUF)), Format::Protobuf);
        assert_eq!(Format::negotiate(Some(PROTOBUF_CONTENT_TYPE)), Format::Protobuf, "with spaces");
        assert_eq!(
            Format::negotiate(Some(
                "Application/Vnd.Google.Protobuf; Proto=\"io.prometheus.client.MetricFamily\"; Encoding=Delimited"
            )),
            Format::Protobuf
        );
        assert_eq!(
            Format::negotiate(Some(&format!("{PROTOBUF},text/plain"))),
            Format::Protobuf,
            "a tie goes to protobuf"
        );
        assert_eq!(
            Format::negotiate(Some(&format!("application/openmetrics-text,{PROTOBUF}"))),
            Format::Protobuf,
            "a tie with OpenMetrics too"
        );
        assert_eq!(Format::negotiate(Some(&format!("{PROTOBUF};q=0.5,text/plain"))), Format::Text);
        assert_eq!(
            Format::negotiate(Some(&format!("{PROTOBUF};q=0.5,application/openmetrics-text"))),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some(&format!("{PROTOBUF};q=0"))), Format::Text);
        // Only the delimited MetricFamily stream is served.
        assert_eq!(Format::negotiate(Some("application/vnd.google.protobuf")), Format::Text);
        let text_encoding = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text";
        assert_eq!(Format::negotiate(Some(text_encoding)), Format::Text);
        let other = "application/vnd.google.protobuf;proto=io.prometheus.write.WriteRequest;encoding=delimited";
        assert_eq!(Format::negotiate(Some(other)), Format::Text);
        assert_eq!(Format::negotiate(Some("application/*")), Format::Text);
    }

    #[test]
    fn negotiation() {
        assert_eq!(Format::negotiate(Some(PROMETHEUS_2_ACCEPT)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text")), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0.2,text/plain;q=0.9")), Format::Text);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;version=0.0.1")), Format::Text);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0")), Format::Text);
        assert_eq!(Format::negotiate(Some(";;,=;q=x,\u{0},application/openmetrics-text;q=nan")), Format::Text);
    }

    #[test]
    fn gzip_acceptance() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, GZIP;q=0.5")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(None));
        assert!(accepts_gzip(Some("*")));
        assert!(!accepts_gzip(Some("gzip;q=0, *")), "an explicit refusal beats the wildcard");
        assert!(!accepts_gzip(Some("gzip;q=2")));
        assert!(!accepts_gzip(Some("gzip;Q=0")));
    }

    fn encode(format: Format) -> String {
        let mut e = Encoder::new(Vec::new(), format);
        e.family("x_total", Kind::Counter, "Things.").unwrap();
        e.sample(
            "x_total",
            &[
                ("a", Value::Str("q\"u\\o\nte")),
                ("ip", Value::Ip("::ffff:10.0.0.1".parse().unwrap())),
                ("ip4", Value::Ip("10.20.30.4".parse().unwrap())),
                ("port", Value::Int(443)),
            ],
            Number::Int(3),
        )
        .unwrap();
        e.sample("y", &[], Number::Float(0.25)).unwrap();
        String::from_utf8(e.finish().unwrap()).unwrap()
    }

    #[test]
    fn ipv6_text_matches_the_standard_library() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut cases: Vec<std::net::Ipv6Addr> = [
            "::",
            "::1",
            "1::",
            "fe80::1",
            "2001:db8::1:0:0:1",
            "2001:0:0:1::1",
            "::ffff:1.2.3.4",
            "1:0:0:2:0:0:0:3",
            "0:1:0:1:0:1:0:1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        for _ in 0..20000 {
            // Random addresses with many zero groups, where compression has choices.
            let mut g = [0u16; 8];
            for x in g.iter_mut() {
                let r = next();
                *x = if r % 3 == 0 { (r >> 8) as u16 } else { 0 };
            }
            cases.push(std::net::Ipv6Addr::from(g));
        }
        for ip in cases {
            let mut line = Vec::new();
            push_ipv6(&mut line, ip);
            assert_eq!(String::from_utf8(line).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn a_histogram_writes_cumulative_buckets_then_sum_and_count() {
        for format in [Format::Text, Format::OpenMetrics] {
            let mut e = Encoder::new(Vec::new(), format);
            e.family("rtt_seconds", Kind::Histogram, "Round trips.").unwrap();
            let h = HistogramValue {
                count: 5,
                sum: 0.0105,
                buckets: &[(0.00005, 1), (0.001, 3), (2.5, 4)],
                native: Some(NativeBuckets { schema: 3, zero_threshold: 0.0, zero_count: 0, positive: &[(-80, 5)] }),
            };
            e.histogram("rtt_seconds", &[("peer", Value::Str("a"))], &h).unwrap();
            let text = String::from_utf8(e.finish().unwrap()).unwrap();
            let want = "# HELP rtt_seconds Round trips.\n# TYPE rtt_seconds histogram\n\
                rtt_seconds_bucket{peer=\"a\",le=\"0.00005\"} 1\n\
                rtt_seconds_bucket{peer=\"a\",le=\"0.001\"} 3\n\
                rtt_seconds_bucket{peer=\"a\",le=\"2.5\"} 4\n\
                rtt_seconds_bucket{peer=\"a\",le=\"+Inf\"} 5\n\
                rtt_seconds_sum{peer=\"a\"} 0.0105\n\
                rtt_seconds_count{peer=\"a\"} 5\n";
            let eof = if format == Format::OpenMetrics { "# EOF\n" } else { "" };
            assert_eq!(text, format!("{want}{eof}"), "{format:?}");
        }
    }

    #[test]
    fn text_and_openmetrics_differ_only_where_they_must() {
        let sample =
            "x_total{a=\"q\\\"u\\\\o\\nte\",ip=\"::ffff:10.0.0.1\",ip4=\"10.20.30.4\",port=\"443\"} 3\ny 0.25\n";
        assert_eq!(encode(Format::Text), format!("# HELP x_total Things.\n# TYPE x_total counter\n{sample}"));
        assert_eq!(encode(Format::OpenMetrics), format!("# HELP x Things.\n# TYPE x counter\n{sample}# EOF\n"));
    }
}
