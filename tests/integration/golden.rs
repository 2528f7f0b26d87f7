//! The real binary against `tests/fixtures/proc`, diffed with `tests/golden/`.
//! `UPDATE_GOLDEN=1` (or `scripts/update-golden.sh`) rewrites the golden files. The
//! protobuf golden is the body's bytes (`metrics.protobuf`) and, for review, its
//! families and samples as text lines (`metrics.protobuf.txt`), decoded by prost.

use std::collections::BTreeMap;
use std::process::Command;

use crate::metrics_proto::{decode_stream, join_chunks, text_samples};
use crate::util::{
    fixture_facts, fixtures, http_get, parse_sample, repo, require_tool, run, samples, Exporter, Labels,
};

const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
/// What Prometheus 2.42 sends with `--enable-feature=native-histograms`.
pub const PROMETHEUS_NATIVE_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// A protobuf scrape for people: each message's family, then its samples as text lines.
fn protobuf_as_text(body: &[u8]) -> String {
    let mut out = String::new();
    for family in decode_stream(body) {
        out.push_str(&format!("# MetricFamily {} {} {:?}\n", family.name, family.type_name(), family.help));
        for (name, labels, value) in text_samples(&family) {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            out.push_str(&format!("{name}{{{}}} {value}\n", labels.join(",")));
        }
    }
    out
}

fn check_golden_bytes(name: &str, actual: &[u8]) {
    let path = repo().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{name} differs from the scrape ({} vs {} bytes); the readable form's diff says where; run scripts/update-golden.sh if the change is meant",
        expected.len(),
        actual.len()
    );
}

fn check_golden(name: &str, actual: &str) {
    let path = repo().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .take(5)
            .map(|(i, (e, a))| format!("line {}:\n  golden: {e}\n  actual: {a}", i + 1))
            .collect();
        panic!(
            "{name} differs from the scrape ({} vs {} lines); run scripts/update-golden.sh if the change is meant.\n{}",
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn fixture_scrape_matches_golden_and_passes_promtool() {
    let exporter = Exporter::start(&["--path.procfs", fixtures().to_str().unwrap(), "--web.disable-exporter-metrics"]);
    let text = exporter.scrape();
    check_golden("metrics.txt", &text);
    let om = http_get(exporter.addr, "/metrics", &[("Accept", OPENMETRICS)]);
    assert_eq!(om.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    // The parse-error counter has counted a second pass by now; the rest is the same.
    check_golden("metrics.openmetrics.txt", &om.text());

    // Protobuf, as Prometheus with native histograms asks for it: the readable form first
    // (its diff shows what changed), then the bytes themselves.
    let pb = http_get(exporter.addr, "/metrics", &[("Accept", PROMETHEUS_NATIVE_ACCEPT)]);
    assert_eq!(pb.header("content-type"), Some(PROTOBUF_CONTENT_TYPE));
    check_golden("metrics.protobuf.txt", &protobuf_as_text(&pb.body));
    check_golden_bytes("metrics.protobuf", &pb.body);
    protobuf_matches_text(&pb.body, &text, 3.0);

    let promtool = require_tool("promtool");
    let golden = repo().join("tests/golden/metrics.txt");
    let (code, out, err) =
        run(Command::new(promtool).args(["check", "metrics"]).stdin(std::fs::File::open(&golden).unwrap()));
    assert_eq!(code, 0, "promtool check metrics on the golden file: {out}{err}");
}

#[test]
fn the_fixture_scrape_holds_exactly_the_fixtures_sockets() {
    // The facts come from tests/fixtures/make_fixture.py, which wrote the fixture (and
    // checks here that the files are still what it writes), not from the exporter.
    let facts = fixture_facts();
    let exporter = Exporter::start(&["--path.procfs", fixtures().to_str().unwrap(), "--web.disable-exporter-metrics"]);
    let text = exporter.scrape();
    let om = http_get(exporter.addr, "/metrics", &[("Accept", OPENMETRICS)]).text();
    // The parse-error counter counts the malformed lines once per scrape.
    for (format, scrape, passes) in [("text", &text, 1.0), ("OpenMetrics", &om, 2.0)] {
        let expected = |name: &str| -> BTreeMap<Labels, f64> {
            let entries = facts[name].as_array().unwrap_or_else(|| panic!("facts lack {name}"));
            let mut map = BTreeMap::new();
            for e in entries {
                let labels: Labels = serde_json::from_value(e["labels"].clone()).unwrap();
                map.insert(labels, e["value"].as_f64().unwrap());
            }
            map
        };
        let got = |name: &str| -> BTreeMap<Labels, f64> { samples(scrape, name).into_iter().collect() };

        // Every socket of the fixture, with its multiplicity, and nothing else.
        let (series, want) = (got("network_connections_info"), expected("network_connections_info"));
        let wrong: Vec<_> = want.iter().filter(|(l, v)| series.get(*l) != Some(*v)).collect();
        let extra: Vec<_> = series.iter().filter(|(l, _)| !want.contains_key(*l)).collect();
        assert!(
            wrong.is_empty() && extra.is_empty(),
            "{format}: fixture sockets missing or with another value: {wrong:?}\nseries the fixture does not hold: {extra:?}"
        );
        // Every non-zero state count; any other state series is zero.
        let states = got("network_connection_states");
        for (labels, value) in expected("network_connection_states") {
            assert_eq!(states.get(&labels), Some(&value), "{format}: network_connection_states{labels:?}");
        }
        let extra: Vec<_> = states
            .iter()
            .filter(|(l, v)| **v != 0.0 && !expected("network_connection_states").contains_key(*l))
            .collect();
        assert!(extra.is_empty(), "{format}: state counts the fixture does not hold: {extra:?}");
        let errors: BTreeMap<Labels, f64> =
            expected("conn_exporter_parse_errors_total").into_iter().map(|(l, v)| (l, v * passes)).collect();
        assert_eq!(got("conn_exporter_parse_errors_total"), errors, "{format}: malformed lines");
        assert_eq!(samples(scrape, "conn_exporter_connections_dropped_series")[0].1, 0.0, "{format}");
    }
}

/// The protobuf scrape holds the text scrape's families (name, type, help) and samples,
/// in the same order; the parse-error counter has counted `passes` reads of the fixture
/// by the protobuf scrape against one by the text scrape.
fn protobuf_matches_text(body: &[u8], text: &str, passes: f64) {
    let families = join_chunks(decode_stream(body));
    let mut text_families: Vec<(String, String, String)> = Vec::new();
    let mut helps = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            helps.insert(name.to_owned(), help.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            text_families.push((name.to_owned(), kind.to_owned(), helps[name].clone()));
        }
    }
    let pb_families: Vec<(String, String, String)> =
        families.iter().map(|f| (f.name.clone(), f.type_name().to_owned(), f.help.clone())).collect();
    assert_eq!(pb_families, text_families);
    let pb_samples: Vec<(String, Labels, f64)> = families
        .iter()
        .flat_map(text_samples)
        .map(|(name, labels, value)| {
            let value = if name == "conn_exporter_parse_errors_total" { value / passes } else { value };
            (name, labels.into_iter().collect(), value)
        })
        .collect();
    let text_samples: Vec<(String, Labels, f64)> =
        text.lines().filter_map(parse_sample).map(|(n, l, v)| (n.to_owned(), l, v)).collect();
    assert_eq!(pb_samples.len(), text_samples.len());
    for (p, t) in pb_samples.iter().zip(&text_samples) {
        assert_eq!(p, t);
    }
}

/// Protobuf goes through the same response path as text: gzip when asked, `collect[]`,
/// the per-connection series limit, `HEAD`; each case is a fresh exporter whose one text
/// scrape and one protobuf scrape must hold the same families and samples.
#[test]
fn protobuf_follows_gzip_collect_and_series_limits_as_text_does() {
    let fixture = fixtures();
    let fixture = fixture.to_str().unwrap();
    let cases: [(&[&str], &str, bool); 4] = [
        (&[], "/metrics", true),
        (&[], "/metrics?collect[]=states", false),
        (&[], "/metrics?collect[]=connections&collect[]=peers", true),
        (&["--collector.connections.max-series=3"], "/metrics", false),
    ];
    for (flags, path, gzip) in cases {
        let mut args = vec!["--path.procfs", fixture, "--web.disable-exporter-metrics"];
        args.extend_from_slice(flags);
        let exporter = Exporter::start(&args);
        let text = http_get(exporter.addr, path, &[]).text();
        let mut headers = vec![("Accept", PROMETHEUS_NATIVE_ACCEPT)];
        if gzip {
            headers.push(("Accept-Encoding", "gzip"));
        }
        let r = http_get(exporter.addr, path, &headers);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(PROTOBUF_CONTENT_TYPE), "{path}");
        assert_eq!(r.header("vary"), Some("Accept, Accept-Encoding"));
        let body = if gzip {
            assert_eq!(r.header("content-encoding"), Some("gzip"), "{path}");
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut plain).unwrap();
            plain
        } else {
            assert_eq!(r.header("content-encoding"), None, "{path}");
            r.body
        };
        protobuf_matches_text(&body, &text, 2.0);

        let head = crate::util::http_request(exporter.addr, "HEAD", path, &[("Accept", PROMETHEUS_NATIVE_ACCEPT)]);
        assert_eq!(head.header("content-type"), Some(PROTOBUF_CONTENT_TYPE));
        assert!(head.body.is_empty());
    }
}
