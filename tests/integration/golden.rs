//! The real binary against `tests/fixtures/proc`, diffed with `tests/golden/`.
//! `UPDATE_GOLDEN=1` (or `scripts/update-golden.sh`) rewrites the golden files.

use std::process::Command;

use crate::util::{fixtures, http_get, repo, require_tool, run, Exporter};

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
fn golden_file_says_what_the_fixture_holds() {
    // Guards the golden file itself: facts about the fixture, written by hand.
    let text = std::fs::read_to_string(repo().join("tests/golden/metrics.txt")).unwrap();
    for line in [
        // sshd on every interface: `any`, not the specification's `lo`.
        r#"network_connections_info{destination_address="0.0.0.0",destination_port="0",interface="any",source_address="0.0.0.0",source_port="22",state="LISTEN"} 1"#,
        // Two SO_REUSEPORT listeners share one label set: one series, value 2.
        r#"network_connections_info{destination_address="0.0.0.0",destination_port="0",interface="lo",source_address="127.0.0.1",source_port="9100",state="LISTEN"} 2"#,
        // eth0 by its connected route 192.0.2.0/24.
        r#"network_connections_info{destination_address="198.51.100.7",destination_port="51000",interface="eth0",source_address="192.0.2.2",source_port="22",state="ESTABLISHED"} 1"#,
        r#"network_connections_info{destination_address="10.9.9.1",destination_port="50505",interface="unknown",source_address="10.9.9.9",source_port="8080",state="ESTABLISHED"} 1"#,
        r#"network_connections_info{destination_address="198.51.100.8",destination_port="51001",interface="eth0",source_address="192.0.2.2",source_port="22",state="UNKNOWN"} 1"#,
        r#"network_connections_info{destination_address="2001:db8::123:4567:89ab:cdef",destination_port="60000",interface="eth0",source_address="fd00::2",source_port="443",state="ESTABLISHED"} 1"#,
        r#"network_connections_info{destination_address="fe80::1",destination_port="7946",interface="eth0",source_address="fe80::fc:ff:fe00:1",source_port="7946",state="ESTABLISHED"} 1"#,
        r#"network_connections_info{destination_address="::ffff:127.0.0.1",destination_port="50000",interface="lo",source_address="::ffff:127.0.0.1",source_port="8080",state="ESTABLISHED"} 1"#,
        r#"network_connections_info{destination_address="::ffff:198.51.100.9",destination_port="50001",interface="eth0",source_address="::ffff:192.0.2.2",source_port="8080",state="LAST_ACK"} 1"#,
        r#"network_connections_info{destination_address="2a00:1450:4001:814::200e",destination_port="80",interface="eth0",source_address="2001:db8::5",source_port="80",state="FIN_WAIT1"} 1"#,
        r#"network_connection_states{family="ipv4",interface="lo",state="LISTEN"} 2"#,
        r#"network_connection_states{family="ipv6",interface="any",state="LISTEN"} 1"#,
        r#"conn_exporter_parse_errors_total{file="tcp"} 3"#,
        r#"conn_exporter_parse_errors_total{file="tcp6"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "golden file lacks:\n{line}");
    }
}
