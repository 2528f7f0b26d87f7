//! An independent reader of the protobuf exposition: the messages of Prometheus's
//! `metrics.proto` (package `io.prometheus.client`, `tests/fixtures/metrics.proto`)
//! declared by hand for prost's derive, and the delimited stream split with prost's own
//! length-prefix decoding. Nothing here comes from `src/exposition`.

#![allow(dead_code)]

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Gauge {
    #[prost(double, tag = "1")]
    pub value: f64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Counter {
    #[prost(double, tag = "1")]
    pub value: f64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Untyped {
    #[prost(double, tag = "1")]
    pub value: f64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Bucket {
    #[prost(uint64, tag = "1")]
    pub cumulative_count: u64,
    #[prost(double, tag = "4")]
    pub cumulative_count_float: f64,
    #[prost(double, tag = "2")]
    pub upper_bound: f64,
}

#[derive(Clone, PartialEq, Message)]
pub struct BucketSpan {
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(uint64, tag = "1")]
    pub sample_count: u64,
    #[prost(double, tag = "4")]
    pub sample_count_float: f64,
    #[prost(double, tag = "2")]
    pub sample_sum: f64,
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    #[prost(sint32, optional, tag = "5")]
    pub schema: Option<i32>,
    #[prost(double, tag = "6")]
    pub zero_threshold: f64,
    #[prost(uint64, tag = "7")]
    pub zero_count: u64,
    #[prost(double, tag = "8")]
    pub zero_count_float: f64,
    #[prost(message, repeated, tag = "9")]
    pub negative_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "10")]
    pub negative_delta: Vec<i64>,
    #[prost(double, repeated, tag = "11")]
    pub negative_count: Vec<f64>,
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "13")]
    pub positive_delta: Vec<i64>,
    #[prost(double, repeated, tag = "14")]
    pub positive_count: Vec<f64>,
}

impl Histogram {
    /// The populated positive buckets as `(index, count)`, spans and deltas undone.
    pub fn positive_buckets(&self) -> Vec<(i32, u64)> {
        let mut out = Vec::new();
        let mut deltas = self.positive_delta.iter();
        let (mut index, mut count) = (0i32, 0i64);
        for (i, span) in self.positive_span.iter().enumerate() {
            index = if i == 0 { span.offset } else { index + span.offset };
            for _ in 0..span.length {
                count += deltas.next().expect("a delta for each bucket of the spans");
                out.push((index, u64::try_from(count).expect("a bucket count is not negative")));
                index += 1;
            }
        }
        assert!(deltas.next().is_none(), "deltas beyond the spans");
        out
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    #[prost(message, optional, tag = "5")]
    pub untyped: Option<Untyped>,
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
    #[prost(int64, tag = "6")]
    pub timestamp_ms: i64,
}

/// `MetricType`: 0 counter, 1 gauge, 2 summary, 3 untyped, 4 histogram, 5 gauge histogram.
#[derive(Clone, PartialEq, Message)]
pub struct MetricFamily {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub help: String,
    #[prost(int32, tag = "3")]
    pub r#type: i32,
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
}

impl MetricFamily {
    /// The type as the text format's `# TYPE` names it.
    pub fn type_name(&self) -> &'static str {
        match self.r#type {
            0 => "counter",
            1 => "gauge",
            2 => "summary",
            3 => "untyped",
            4 => "histogram",
            5 => "gaugehistogram",
            _ => "unknown",
        }
    }
}

/// Every message of a delimited stream, in order; panics on bytes that are not one.
pub fn decode_stream(mut bytes: &[u8]) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        out.push(MetricFamily::decode_length_delimited(&mut bytes).expect("a delimited MetricFamily"));
    }
    out
}

/// Consecutive messages of one family (a large family is split) joined into one.
pub fn join_chunks(messages: Vec<MetricFamily>) -> Vec<MetricFamily> {
    let mut out: Vec<MetricFamily> = Vec::new();
    for m in messages {
        match out.last_mut() {
            Some(last) if last.name == m.name && last.r#type == m.r#type && last.help == m.help => {
                last.metric.extend(m.metric)
            }
            _ => out.push(m),
        }
    }
    out
}

/// One sample as the text format would write it: name, labels in order, value.
pub type TextSample = (String, Vec<(String, String)>, f64);

/// The samples a family stands for in the text format: a histogram's classic buckets
/// (`+Inf` from `sample_count`), `_sum` and `_count`; any other metric's value.
pub fn text_samples(family: &MetricFamily) -> Vec<TextSample> {
    let mut out = Vec::new();
    for m in &family.metric {
        let labels: Vec<(String, String)> = m.label.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
        let name = family.name.clone();
        match (family.r#type, &m.histogram) {
            (4, Some(h)) => {
                let with_le = |le: String| {
                    let mut l = labels.clone();
                    l.push(("le".to_owned(), le));
                    l
                };
                for b in &h.bucket {
                    out.push((
                        format!("{name}_bucket"),
                        with_le(format!("{}", b.upper_bound)),
                        b.cumulative_count as f64,
                    ));
                }
                out.push((format!("{name}_bucket"), with_le("+Inf".to_owned()), h.sample_count as f64));
                out.push((format!("{name}_sum"), labels.clone(), h.sample_sum));
                out.push((format!("{name}_count"), labels, h.sample_count as f64));
            }
            (0, _) => out.push((name, labels, m.counter.as_ref().expect("a counter's value").value)),
            (1, _) => out.push((name, labels, m.gauge.as_ref().expect("a gauge's value").value)),
            (3, _) => out.push((name, labels, m.untyped.as_ref().expect("an untyped value").value)),
            (t, _) => panic!("{}: type {t} without its field", family.name),
        }
    }
    out
}
