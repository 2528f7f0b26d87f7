//! The protobuf exposition: length-delimited `io.prometheus.client.MetricFamily`
//! messages of Prometheus's `metrics.proto`, written field by field with a varint writer.
//!
//! The fields written, by message (wire type in brackets: 0 varint, 1 fixed64, 2
//! length-delimited):
//! - `MetricFamily`: `name` 1 [2], `help` 2 [2], `type` 3 [0], `metric` 4 [2];
//! - `Metric`: `label` 1 [2], `gauge` 2 [2], `counter` 3 [2], `untyped` 5 [2],
//!   `histogram` 7 [2]; `LabelPair`: `name` 1 [2], `value` 2 [2];
//! - `Gauge`, `Counter`, `Untyped`: `value` 1 [1];
//! - `Histogram`: `sample_count` 1 [0], `sample_sum` 2 [1], `bucket` 3 [2], `schema` 5
//!   [0, zigzag], `zero_threshold` 6 [1], `zero_count` 7 [0], `positive_span` 12 [2],
//!   `positive_delta` 13 [2, packed zigzag]; `Bucket`: `cumulative_count` 1 [0],
//!   `upper_bound` 2 [1]; `BucketSpan`: `offset` 1 [0, zigzag], `length` 2 [0].
//!
//! Every field is written even when it holds its default, so that proto2 readers
//! (client_model) and proto3 readers (Prometheus's own copy) see the same values.
//!
//! Memory: a message's length comes before it, so a message is assembled before it is
//! written. A family's metrics are collected until they pass [`CHUNK_BYTES`]; then a
//! `MetricFamily` with those metrics is written and the next metrics go into another
//! message with the same name, help and type. Prometheus reads each delimited message on
//! its own (model/textparse/protobufparse.go decodes one `MetricFamily` at a time and
//! keeps nothing from the one before), so consecutive messages of one family are the
//! same family to it; a million series cost one chunk of memory, not a million.

use std::io::{self, Write};

use super::{push_raw_value, HistogramValue, Kind, NativeBuckets, Number, Value};

/// Encoded metrics gathered into one `MetricFamily` message before it is written.
pub(super) const CHUNK_BYTES: usize = 64 * 1024;

/// `io.prometheus.client.MetricType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MetricType {
    Counter = 0,
    Gauge = 1,
    Untyped = 3,
    Histogram = 4,
}

impl From<Kind> for MetricType {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Gauge => MetricType::Gauge,
            Kind::Counter => MetricType::Counter,
            Kind::Histogram => MetricType::Histogram,
        }
    }
}

/// Field keys: `(field number << 3) | wire type`.
mod key {
    pub const FAMILY_NAME: u8 = 1 << 3 | 2;
    pub const FAMILY_HELP: u8 = 2 << 3 | 2;
    pub const FAMILY_TYPE: u8 = 3 << 3;
    pub const FAMILY_METRIC: u8 = 4 << 3 | 2;
    pub const METRIC_LABEL: u8 = 1 << 3 | 2;
    pub const METRIC_GAUGE: u8 = 2 << 3 | 2;
    pub const METRIC_COUNTER: u8 = 3 << 3 | 2;
    pub const METRIC_UNTYPED: u8 = 5 << 3 | 2;
    pub const METRIC_HISTOGRAM: u8 = 7 << 3 | 2;
    pub const LABEL_NAME: u8 = 1 << 3 | 2;
    pub const LABEL_VALUE: u8 = 2 << 3 | 2;
    /// `Gauge.value`, `Counter.value`, `Untyped.value`.
    pub const VALUE: u8 = 1 << 3 | 1;
    pub const SAMPLE_COUNT: u8 = 1 << 3;
    pub const SAMPLE_SUM: u8 = 2 << 3 | 1;
    pub const BUCKET: u8 = 3 << 3 | 2;
    pub const SCHEMA: u8 = 5 << 3;
    pub const ZERO_THRESHOLD: u8 = 6 << 3 | 1;
    pub const ZERO_COUNT: u8 = 7 << 3;
    pub const POSITIVE_SPAN: u8 = 12 << 3 | 2;
    pub const POSITIVE_DELTA: u8 = 13 << 3 | 2;
    pub const CUMULATIVE_COUNT: u8 = 1 << 3;
    pub const UPPER_BOUND: u8 = 2 << 3 | 1;
    pub const SPAN_OFFSET: u8 = 1 << 3;
    pub const SPAN_LENGTH: u8 = 2 << 3;
}

/// The family being written: its `name`, `help` and `type` fields, encoded once and
/// put at the head of each of its messages.
struct Family {
    name: String,
    kind: MetricType,
    head: Vec<u8>,
    /// Whether a message of this family has been written yet.
    written: bool,
}

/// Writes delimited `MetricFamily` messages.
pub(super) struct ProtobufEncoder<W: Write> {
    out: W,
    family: Option<Family>,
    /// The `metric` fields of the message being assembled.
    metrics: Vec<u8>,
    /// One `Metric` (or a nested message of it) being assembled.
    metric: Vec<u8>,
    /// A nested message inside `metric`.
    nested: Vec<u8>,
    /// A label value's text.
    value: Vec<u8>,
}

impl<W: Write> ProtobufEncoder<W> {
    pub(super) fn new(out: W) -> Self {
        ProtobufEncoder {
            out,
            family: None,
            metrics: Vec::with_capacity(CHUNK_BYTES + 1024),
            metric: Vec::with_capacity(512),
            nested: Vec::with_capacity(256),
            value: Vec::with_capacity(64),
        }
    }

    pub(super) fn family(&mut self, name: &str, kind: Kind, help: &str) -> io::Result<()> {
        self.begin(name, kind.into(), help)
    }

    /// Ends the family in progress and starts another.
    fn begin(&mut self, name: &str, kind: MetricType, help: &str) -> io::Result<()> {
        self.end_family()?;
        let mut head = Vec::with_capacity(name.len() + help.len() + 8);
        put_bytes(&mut head, key::FAMILY_NAME, name.as_bytes());
        put_bytes(&mut head, key::FAMILY_HELP, help.as_bytes());
        head.push(key::FAMILY_TYPE);
        put_varint(&mut head, kind as u64);
        self.family = Some(Family { name: name.to_owned(), kind, head, written: false });
        Ok(())
    }

    /// Writes what is left of the family in progress; a family without any sample is
    /// written too (name, help and type alone), as the text formats write its header.
    fn end_family(&mut self) -> io::Result<()> {
        if self.family.as_ref().is_some_and(|f| !f.written || !self.metrics.is_empty()) {
            self.write_message()?;
        }
        self.family = None;
        Ok(())
    }

    /// Writes one `MetricFamily`: the family's head and the metrics gathered so far.
    fn write_message(&mut self) -> io::Result<()> {
        let Some(family) = self.family.as_mut() else { return Ok(()) };
        let mut prefix = Vec::with_capacity(10);
        put_varint(&mut prefix, (family.head.len() + self.metrics.len()) as u64);
        self.out.write_all(&prefix)?;
        self.out.write_all(&family.head)?;
        self.out.write_all(&self.metrics)?;
        self.metrics.clear();
        family.written = true;
        Ok(())
    }

    /// Makes sure the family in progress is `name` of type `kind`; a sample outside a
    /// declared family of its name gets a family of its own, as a text line without
    /// `# TYPE` is untyped.
    fn enter(&mut self, name: &str, kind: MetricType) -> io::Result<()> {
        if self.family.as_ref().is_some_and(|f| f.name == name && f.kind == kind) {
            return Ok(());
        }
        self.begin(name, kind, "")
    }

    pub(super) fn sample(&mut self, name: &str, labels: &[(&str, Value<'_>)], value: Number) -> io::Result<()> {
        let declared = self.family.as_ref().filter(|f| f.name == name).map(|f| f.kind);
        let kind = match declared {
            Some(k @ (MetricType::Counter | MetricType::Gauge)) => k,
            _ => MetricType::Untyped,
        };
        self.enter(name, kind)?;
        self.metric.clear();
        self.put_labels(labels);
        let field = match kind {
            MetricType::Counter => key::METRIC_COUNTER,
            MetricType::Gauge => key::METRIC_GAUGE,
            _ => key::METRIC_UNTYPED,
        };
        let v = match value {
            Number::Int(n) => n as f64,
            Number::Float(f) => f,
        };
        // The nested message is `value` alone: a one-byte key and eight bytes.
        self.metric.extend_from_slice(&[field, 9, key::VALUE]);
        self.metric.extend_from_slice(&v.to_le_bytes());
        self.push_metric()
    }

    pub(super) fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, Value<'_>)],
        h: &HistogramValue<'_>,
    ) -> io::Result<()> {
        self.enter(name, MetricType::Histogram)?;
        self.metric.clear();
        self.put_labels(labels);
        let hist = &mut self.nested;
        hist.clear();
        hist.push(key::SAMPLE_COUNT);
        put_varint(hist, h.count);
        hist.push(key::SAMPLE_SUM);
        hist.extend_from_slice(&h.sum.to_le_bytes());
        // Classic buckets, cumulative; the `+Inf` bucket is left out (it is `sample_count`).
        for &(le, n) in h.buckets {
            let mut bucket = [0u8; 21];
            let mut b = Slice::new(&mut bucket);
            b.push(key::CUMULATIVE_COUNT);
            b.varint(n);
            b.push(key::UPPER_BOUND);
            b.extend(&le.to_le_bytes());
            put_bytes(hist, key::BUCKET, b.written());
        }
        if let Some(native) = &h.native {
            put_native(hist, native);
        }
        put_bytes(&mut self.metric, key::METRIC_HISTOGRAM, &self.nested);
        self.push_metric()
    }

    /// Appends the `label` fields of `metric`.
    fn put_labels(&mut self, labels: &[(&str, Value<'_>)]) {
        for (name, v) in labels {
            self.value.clear();
            push_raw_value(&mut self.value, *v);
            let len = 1 + varint_len(name.len() as u64) + name.len() + 1 + varint_len(self.value.len() as u64);
            self.metric.push(key::METRIC_LABEL);
            put_varint(&mut self.metric, (len + self.value.len()) as u64);
            put_bytes(&mut self.metric, key::LABEL_NAME, name.as_bytes());
            put_bytes(&mut self.metric, key::LABEL_VALUE, &self.value);
        }
    }

    /// Adds the finished `metric` to the message, writing the message when it is full.
    fn push_metric(&mut self) -> io::Result<()> {
        put_bytes(&mut self.metrics, key::FAMILY_METRIC, &self.metric);
        if self.metrics.len() >= CHUNK_BYTES {
            self.write_message()?;
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> io::Result<W> {
        self.end_family()?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The native part of a `Histogram`: schema, zero bucket, positive spans and the deltas
/// of their counts.
fn put_native(hist: &mut Vec<u8>, native: &NativeBuckets<'_>) {
    hist.push(key::SCHEMA);
    put_varint(hist, zigzag(i64::from(native.schema)));
    hist.push(key::ZERO_THRESHOLD);
    hist.extend_from_slice(&native.zero_threshold.to_le_bytes());
    hist.push(key::ZERO_COUNT);
    put_varint(hist, native.zero_count);
    // One span per run of consecutive indexes; the first span's offset is its first
    // index, each later one's the gap after the span before it.
    let mut spans: Vec<(i32, u32)> = Vec::new();
    let mut next: Option<i32> = None;
    for &(index, _) in native.positive {
        match (next, spans.last_mut()) {
            (Some(n), Some(last)) if index == n => last.1 += 1,
            (Some(n), _) => spans.push((index.wrapping_sub(n), 1)),
            (None, _) => spans.push((index, 1)),
        }
        next = Some(index.wrapping_add(1));
    }
    if spans.is_empty() && native.zero_count == 0 && native.zero_threshold <= 0.0 {
        // Nothing else would tell a reader this is a native histogram: Prometheus (since
        // 2.49) takes a span of length zero for that sign, as client_golang writes it.
        spans.push((0, 0));
    }
    for (offset, length) in spans {
        let mut span = [0u8; 12];
        let mut s = Slice::new(&mut span);
        s.push(key::SPAN_OFFSET);
        s.varint(zigzag(i64::from(offset)));
        s.push(key::SPAN_LENGTH);
        s.varint(u64::from(length));
        put_bytes(hist, key::POSITIVE_SPAN, s.written());
    }
    if !native.positive.is_empty() {
        let mut deltas = Vec::with_capacity(native.positive.len() * 2);
        let mut previous = 0i64;
        for &(_, count) in native.positive {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            put_varint(&mut deltas, zigzag(count.wrapping_sub(previous)));
            previous = count;
        }
        put_bytes(hist, key::POSITIVE_DELTA, &deltas);
    }
}

/// A small fixed buffer for the short nested messages (buckets, spans).
struct Slice<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Slice<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Slice { buf, len: 0 }
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.push(n as u8 | 0x80);
            n >>= 7;
        }
        self.push(n as u8);
    }

    fn written(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Appends `n` as a base-128 varint, low groups first.
fn put_varint(buf: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        buf.push(n as u8 | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

fn varint_len(n: u64) -> usize {
    // One byte per started group of seven bits; zero takes one byte.
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

/// `sint32`/`sint64` encoding: small magnitudes of either sign stay short.
fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

/// A length-delimited field: key, length, bytes.
fn put_bytes(buf: &mut Vec<u8>, key: u8, bytes: &[u8]) {
    buf.push(key);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_as_the_protobuf_documentation_gives_them() {
        let enc = |n| {
            let mut b = Vec::new();
            put_varint(&mut b, n);
            assert_eq!(b.len(), varint_len(n), "{n}");
            b
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(1), [1]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(150), [0x96, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
        assert_eq!(varint_len(1 << 63), 10);
        assert_eq!([0, -1, 1, -2, 2147483647, -2147483648].map(zigzag), [0, 1, 2, 3, 4294967294, 4294967295]);
    }

    #[test]
    fn a_gauge_family_is_the_bytes_metrics_proto_defines() {
        let mut e = ProtobufEncoder::new(Vec::new());
        e.family("g", Kind::Gauge, "H").unwrap();
        e.sample("g", &[("a", Value::Int(7))], Number::Int(2)).unwrap();
        let out = e.finish().unwrap();
        let two = 2f64.to_le_bytes();
        let mut want = vec![
            0x1d, // length of the family: 8 + 21
            0x0a, 1, b'g', 0x12, 1, b'H', 0x18, 1, // name, help, type GAUGE
            0x22, 19, // metric
            0x0a, 6, 0x0a, 1, b'a', 0x12, 1, b'7', // label a="7"
            0x12, 9, 0x09, // gauge { value }
        ];
        want.extend_from_slice(&two);
        assert_eq!(out, want);
    }

    #[test]
    fn spans_start_at_the_first_index_and_then_count_gaps() {
        let native =
            NativeBuckets { schema: -1, zero_threshold: 0.5, zero_count: 1, positive: &[(-3, 2), (-2, 5), (4, 1)] };
        let mut got = Vec::new();
        put_native(&mut got, &native);
        let mut want = vec![0x28, 1, 0x31];
        want.extend_from_slice(&0.5f64.to_le_bytes());
        want.extend_from_slice(&[0x38, 1]);
        want.extend_from_slice(&[0x62, 4, 0x08, 5, 0x10, 2]); // offset -3, length 2
        want.extend_from_slice(&[0x62, 4, 0x08, 10, 0x10, 1]); // gap 5, length 1
        want.extend_from_slice(&[0x6a, 3, 4, 6, 7]); // deltas 2, +3, -4
        assert_eq!(got, want);
    }

    #[test]
    fn a_native_histogram_without_observations_still_says_it_is_native() {
        let native = NativeBuckets { schema: 3, zero_threshold: 0.0, zero_count: 0, positive: &[] };
        let mut got = Vec::new();
        put_native(&mut got, &native);
        assert!(got.ends_with(&[0x62, 4, 0x08, 0, 0x10, 0]), "{got:x?}");
    }

    #[test]
    fn a_large_family_is_split_into_bounded_messages_of_the_same_family() {
        let mut e = ProtobufEncoder::new(Vec::new());
        e.family("many", Kind::Gauge, "Many.").unwrap();
        for i in 0..20_000u64 {
            e.sample("many", &[("i", Value::Int(i))], Number::Int(i)).unwrap();
        }
        let out = e.finish().unwrap();
        let mut rest = &out[..];
        let mut messages = 0;
        while !rest.is_empty() {
            let (mut len, mut shift, mut used) = (0usize, 0, 0);
            loop {
                let b = rest[used];
                used += 1;
                len |= usize::from(b & 0x7f) << shift;
                shift += 7;
                if b < 0x80 {
                    break;
                }
            }
            assert!(len < CHUNK_BYTES + 1024, "a message of {len} bytes");
            assert!(rest[used..].starts_with(&[0x0a, 4, b'm', b'a', b'n', b'y']), "each message names the family");
            rest = &rest[used + len..];
            messages += 1;
        }
        assert!(messages > 3, "{messages} messages");
    }
}
