//! The real binary against `tests/fixtures/proc`, diffed with `tests/golden/`.
//! `UPDATE_GOLDEN=1` (or `scripts/update-golden.sh`) rewrites the golden files.

use std::collections::BTreeMap;
use std::process::Command;

use crate::util::{fixture_facts, fixtures, http_get, repo, require_tool, run, samples, Exporter, Labels};

const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

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
