//! Text 0.0.4 and OpenMetrics 1.0.0: one line per sample, assembled in a reused buffer
//! and handed to the writer in one call. The two differ only where they must: a counter
//! family's name (OpenMetrics drops `_total` from `# HELP`/`# TYPE`) and the `# EOF` end.
//! Histograms are written as classic buckets (`_bucket{le}`, `_sum`, `_count`); native
//! buckets have no text form here.

use std::io::{self, Write};

use super::{float_text, push_raw_value, HistogramValue, Kind, Number, Value};

/// Writes the text formats; `openmetrics` picks the dialect.
pub(super) struct TextEncoder<W: Write> {
    out: W,
    openmetrics: bool,
    line: Vec<u8>,
}

impl<W: Write> TextEncoder<W> {
    pub(super) fn new(out: W, openmetrics: bool) -> Self {
        TextEncoder { out, openmetrics, line: Vec::with_capacity(512) }
    }

    pub(super) fn family(&mut self, name: &str, kind: Kind, help: &str) -> io::Result<()> {
        let family = match (self.openmetrics, kind) {
            (true, Kind::Counter) => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        };
        writeln!(self.out, "# HELP {family} {help}\n# TYPE {family} {kind}")
    }

    pub(super) fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, Value<'_>)],
        h: &HistogramValue<'_>,
    ) -> io::Result<()> {
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

    pub(super) fn sample(&mut self, name: &str, labels: &[(&str, Value<'_>)], value: Number) -> io::Result<()> {
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
                    // Addresses and integers hold nothing that needs escaping.
                    v => push_raw_value(line, v),
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

    pub(super) fn finish(mut self) -> io::Result<W> {
        if self.openmetrics {
            self.out.write_all(b"# EOF\n")?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
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
