//! Request headers: `Format::negotiate` on `Accept`, `accepts_gzip` on `Accept-Encoding`.
//!
//! Checks, besides never panicking: OpenMetrics is chosen only when the header names it,
//! protobuf only when the header names `application/vnd.google.protobuf` with
//! `proto=io.prometheus.client.MetricFamily` and `encoding=delimited`, gzip only when the
//! header names it or `*`; one appended range or coding with full weight always wins
//! (OpenMetrics ties with a full-weight protobuf range, and protobuf wins ties); one with
//! weight zero never turns anything on, and a refusal of gzip by name beats `*`.

#![no_main]

use conn_exporter::exposition::{accepts_gzip, Format};
use libfuzzer_sys::fuzz_target;

const PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

fuzz_target!(|data: &[u8]| {
    let header = String::from_utf8_lossy(data);
    let lower = header.to_ascii_lowercase();

    let format = Format::negotiate(Some(&header));
    if format == Format::OpenMetrics {
        assert!(lower.contains("application/openmetrics-text"), "{header:?} chose OpenMetrics");
    }
    let names_protobuf = lower.contains("application/vnd.google.protobuf");
    if format == Format::Protobuf {
        assert!(
            names_protobuf && header.contains("io.prometheus.client.MetricFamily") && lower.contains("delimited"),
            "{header:?} chose protobuf"
        );
    }
    assert_eq!(Format::negotiate(Some(&format!("{header},application/openmetrics-text;q=0"))), format);
    let om = Format::negotiate(Some(&format!("{header},application/openmetrics-text;version=1.0.0")));
    if names_protobuf {
        assert!(matches!(om, Format::OpenMetrics | Format::Protobuf), "{header:?}");
    } else {
        assert_eq!(om, Format::OpenMetrics, "{header:?}");
    }
    assert_eq!(Format::negotiate(Some(&format!("{header},{PROTOBUF}"))), Format::Protobuf, "{header:?}");
    assert_eq!(Format::negotiate(Some(&format!("{header},{PROTOBUF};q=0"))), format, "{header:?}");

    let gzip = accepts_gzip(Some(&header));
    if gzip {
        assert!(lower.contains("gzip") || header.contains('*'), "{header:?} accepted gzip");
    }
    // A refusal by name never turns gzip on, and beats `*` unless gzip is named otherwise.
    let refused = accepts_gzip(Some(&format!("{header},gzip;q=0")));
    assert!(!refused || gzip, "{header:?}");
    if !lower.contains("gzip") {
        assert!(!refused, "{header:?}");
    }
    assert!(accepts_gzip(Some(&format!("{header},gzip"))), "{header:?}");
});
