//! Request headers: `Format::negotiate` on `Accept`, `accepts_gzip` on `Accept-Encoding`.
//!
//! Checks, besides never panicking: OpenMetrics is chosen only when the header names it,
//! gzip only when the header names it or `*`; one appended range or coding with full
//! weight always wins; one with weight zero never turns anything on, and a refusal of gzip
//! by name beats `*`.

#![no_main]

use conn_exporter::exposition::{accepts_gzip, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = String::from_utf8_lossy(data);
    let lower = header.to_ascii_lowercase();

    let format = Format::negotiate(Some(&header));
    if format == Format::OpenMetrics {
        assert!(lower.contains("application/openmetrics-text"), "{header:?} chose OpenMetrics");
    }
    assert_eq!(Format::negotiate(Some(&format!("{header},application/openmetrics-text;q=0"))), format);
    assert_eq!(
        Format::negotiate(Some(&format!("{header},application/openmetrics-text;version=1.0.0"))),
        Format::OpenMetrics,
        "{header:?}"
    );

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
