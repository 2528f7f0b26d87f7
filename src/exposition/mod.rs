//! Exposition formats: text 0.0.4 and OpenMetrics 1.0.0, content negotiation, and a
//! writer that puts label values straight into the output without building strings.

use std::io::{self, Write};
use std::net::IpAddr;

/// `Content-Type` of the text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The two formats served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The exact `Content-Type` header value.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }

    /// Picks the format for an `Accept` header: OpenMetrics when it is acceptable and
    /// weighted at least as high as the text format, text otherwise (and when absent).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Text };
        let (mut om, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version) = (1.0f32, None);
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "q" => q = v.trim().parse().ok().filter(|q: &f32| (0.0..=1.0).contains(q)).unwrap_or(0.0),
                        "version" => version = Some(v.trim().trim_matches('"').to_owned()),
                        _ => {}
                    }
                }
            }
            match media.as_str() {
                "application/openmetrics-text" if version.as_deref().is_none_or(|v| v == "1.0.0") => om = om.max(q),
                "text/plain" if version.as_deref().is_none_or(|v| v == "0.0.4") => text = text.max(q),
                "*/*" | "text/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= text {
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

/// Writes families and samples in one format.
///
/// Each sample line is assembled in a reused buffer and handed to the writer in one
/// call: at hundreds of thousands of series, per-fragment `write_all` calls and the
/// formatting machinery cost more than the kernel's dump itself.
pub struct Encoder<W: Write> {
    out: W,
    format: Format,
    line: Vec<u8>,
}

impl<W: Write> Encoder<W> {
    /// An encoder writing to `out`.
    pub fn new(out: W, format: Format) -> Self {
        Encoder { out, format, line: Vec::with_capacity(512) }
    }

    /// The format being written.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Writes `# HELP` and `# TYPE` for a family. `name` is the sample name, with
    /// `_total` for counters.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> io::Result<()> {
        let family = match (self.format, kind) {
            (Format::OpenMetrics, Kind::Counter) => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        };
        writeln!(self.out, "# HELP {family} {help}\n# TYPE {family} {kind}")
    }

    /// Writes one histogram of a family declared [`Kind::Histogram`]: its classic
    /// buckets, `_sum` and `_count` (`le` after the other labels).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, Value<'_>)], h: &HistogramValue<'_>) -> io::Result<()> {
        let bucket = format!("{name}_bucket");
        let bounds: Vec<String> = h.buckets.iter().map(|&(le, _)| float_text(le)).collect();
        let mut with_le: Vec<(&str, Value<'_>)> = Vec::with_capacity(labels.len() + 1);
        for (bound, &(_, n)) in bounds.iter().zip(h.buckets) {
            with_le.clear();
            with_le.extend_from_slice(labels);
            with_le.push(("le", Value::Str(bound)));
            self.sample(&bucket, &with_le, Number::Int(n))?;
        }
        with_le.clear();
        with_le.extend_from_slice(labels);
        with_le.push(("le", Value::Str("+Inf")));
        self.sample(&bucket, &with_le, Number::Int(h.count))?;
        self.sample(&format!("{name}_sum"), labels, Number::Float(h.sum))?;
        self.sample(&format!("{name}_count"), labels, Number::Int(h.count))
    }

    /// Writes one sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, Value<'_>)], value: Number) -> io::Result<()> {
        let line = &mut self.line;
        line.clear();
        line.extend_from_slice(name.as_bytes());
        if !labels.is_empty() {
            let mut sep = b'{';
            for (label, v) in labels {
                line.push(sep);
                sep = b',';
                line.extend_from_slice(label.as_bytes());
                line.extend_from_slice(b"=\"");
                match *v {
                    Value::Str(s) => push_escaped(line, s),
                    Value::Ip(IpAddr::V4(ip)) => push_ipv4(line, ip.octets()),
                    Value::Ip(IpAddr::V6(ip)) => push_ipv6(line, ip),
                    Value::Int(n) => line.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
                }
                line.push(b'"');
            }
            line.push(b'}');
        }
        line.push(b' ');
        match value {
            Number::Int(n) => line.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            Number::Float(f) if f.is_finite() => {
                // Display never uses exponents, so this is a valid Prometheus float.
                write!(line, "{f}")?;
            }
            Number::Float(f) if f.is_nan() => line.extend_from_slice(b"NaN"),
            Number::Float(f) => line.extend_from_slice(if f > 0.0 { b"+Inf" } else { b"-Inf" }),
        }
        line.push(b'\n');
        self.out.write_all(line)
    }

    /// Ends the exposition (`# EOF` in OpenMetrics) and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if self.format == Format::OpenMetrics {
            self.out.write_all(b"# EOF\n")?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A bucket bound as text: Rust's shortest round-trip form, which never uses an
/// exponent (`0.00005`, `1`, `2.5`).
pub fn float_text(f: f64) -> String {
    format!("{f}")
}

fn push_escaped(line: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => line.extend_from_slice(b"\\\\"),
            b'"' => line.extend_from_slice(b"\\\""),
            b'\n' => line.extend_from_slice(b"\\n"),
            b => line.push(b),
        }
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
