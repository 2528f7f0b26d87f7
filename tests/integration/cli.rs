//! The binary's contract: flags, exit codes, endpoints, negotiation, faults in its sources.

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use crate::util::{
    assert_collectors, binary, fixture_copy, fixture_facts, fixtures, http_get, http_request, run, samples, wait_for,
    Exporter,
};

fn fixture_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--path.procfs", fixtures_str()];
    v.extend_from_slice(extra);
    v
}

fn fixtures_str() -> &'static str {
    Box::leak(fixtures().to_string_lossy().into_owned().into_boxed_str())
}

#[test]
fn bad_flags_and_values_exit_2_naming_the_flag() {
    for (args, needle) in [
        (vec!["--no-such-flag"], "--no-such-flag"),
        (vec!["--collector.connections.max-series", "lots"], "max-series"),
        (vec!["--log.format", "xml"], "log.format"),
        (vec!["--web.listen-address", "nowhere"], "listen-address"),
        (vec!["--web.telemetry-path", "metrics"], "telemetry-path"),
        (
            vec![
                "--no-collector.connections",
                "--no-collector.states",
                "--no-collector.peers",
                "--no-collector.listeners",
                "--no-collector.lifecycle",
                "--no-collector.quality",
            ],
            "every collector is disabled",
        ),
    ] {
        let (code, out, err) = run(Command::new(binary()).args(&args));
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(needle), "{args:?}: stderr lacks {needle:?}: {err}");
    }
}

#[test]
fn help_lists_every_flag_and_version_names_the_revision() {
    let (code, out, _) = run(Command::new(binary()).arg("--help"));
    assert_eq!(code, 0);
    for flag in [
        "--web.listen-address",
        "--web.telemetry-path",
        "--web.max-requests",
        "--web.disable-exporter-metrics",
        "--path.procfs",
        "--collector.connections",
        "--no-collector.connections",
        "--collector.states",
        "--no-collector.states",
        "--collector.connections.max-series",
        "--log.level",
        "--log.format",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
    let (code, out, _) = run(Command::new(binary()).arg("--version"));
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")) && out.contains("revision"), "{out}");
}

#[test]
fn a_taken_port_exits_1_naming_the_flag() {
    // Its listener must not show up in a truth test's comparison with ss.
    let _host_sockets = crate::util::shared();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(Command::new(binary()).arg(format!("--web.listen-address={addr}")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--web.listen-address") && err.contains("already in use"), "{err}");
}

#[test]
fn endpoints_and_methods() {
    let e = Exporter::start(&fixture_args(&[]));
    let landing = e.get("/");
    assert_eq!(landing.status, 200);
    let html = landing.text();
    assert!(html.contains("conn-exporter") && html.contains(env!("CARGO_PKG_VERSION")), "{html}");
    assert!(html.contains("href=\"/metrics\"") && html.contains("connections, states"), "{html}");
    assert_eq!(e.get("/-/healthy").status, 200);
    assert_eq!(e.get("/nope").status, 404);
    assert_eq!(e.get("/metrics/").status, 404);
    let post = http_request(e.addr, "POST", "/metrics", &[("Content-Length", "0")]);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = http_request(e.addr, "HEAD", "/metrics", &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(head.body.is_empty());
}

#[test]
fn text_openmetrics_and_gzip() {
    let e = Exporter::start(&fixture_args(&[]));
    let text = e.get("/metrics");
    assert_eq!(text.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(!text.text().contains("# EOF"));
    let om = http_get(e.addr, "/metrics", &[("Accept", "application/openmetrics-text; version=1.0.0")]);
    assert_eq!(om.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(om.text().ends_with("# EOF\n"));
    assert!(om.text().contains("# TYPE conn_exporter_parse_errors counter\n"));
    let gz = http_get(e.addr, "/metrics", &[("Accept-Encoding", "gzip")]);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&gz.body[..]).read_to_string(&mut plain).unwrap();
    assert_eq!(
        samples(&plain, "network_connections_info").len(),
        samples(&text.text(), "network_connections_info").len()
    );
    assert!(plain.contains("conn_exporter_build_info{"));
}

#[test]
fn collect_filter_and_disabled_collectors() {
    let e = Exporter::start(&fixture_args(&[]));
    let states = e.get("/metrics?collect[]=states").text();
    assert!(!states.contains("network_connections_info"));
    assert!(!samples(&states, "network_connection_states").is_empty());
    let success = samples(&states, "conn_exporter_scrape_collector_success");
    assert_eq!(success.len(), 1);
    assert_eq!(success[0].0["collector"], "states");
    let encoded = e.get("/metrics?collect%5B%5D=connections");
    assert!(encoded.text().contains("network_connections_info{"));
    assert!(!encoded.text().contains("network_connection_states{"));
    let bad = e.get("/metrics?collect[]=bogus");
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("bogus"));

    let only_states = Exporter::start(&fixture_args(&["--no-collector.connections"]));
    assert!(!only_states.scrape().contains("network_connections_info"));
    let refused = only_states.get("/metrics?collect[]=connections");
    assert_eq!(refused.status, 400);
    assert!(refused.text().contains("disabled"));
}

#[test]
fn cardinality_guard_keeps_listen_and_established_first_and_logs_once() {
    let e = Exporter::start(&fixture_args(&["--collector.connections.max-series=5"]));
    // What the fixture holds, from the script that wrote it (not from the exporter).
    let facts = fixture_facts();
    let all: Vec<(String, f64)> = facts["network_connections_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["labels"]["state"].as_str().unwrap().to_owned(), s["value"].as_f64().unwrap()))
        .collect();
    for _ in 0..3 {
        let text = e.scrape();
        let kept = samples(&text, "network_connections_info");
        assert_eq!(kept.len(), 5);
        let dropped = samples(&text, "conn_exporter_connections_dropped_series");
        assert_eq!(dropped[0].1 as usize, all.len() - 5);
        let listeners = all.iter().filter(|(state, _)| state == "LISTEN").count();
        assert_eq!(kept.iter().filter(|(l, _)| l["state"] == "LISTEN").count(), listeners);
        assert!(kept.iter().all(|(l, _)| l["state"] == "LISTEN" || l["state"] == "ESTABLISHED"));
        // The aggregate stays exact: every socket of the fixture.
        let total: f64 = samples(&text, "network_connection_states").iter().map(|s| s.1).sum();
        assert_eq!(total, all.iter().map(|s| s.1).sum::<f64>());
    }
    let log = e.log_text();
    assert_eq!(log.matches("per-connection series truncated").count(), 1, "{log}");
}

#[test]
fn a_missing_tcp6_is_normal_and_an_unreadable_tcp_fails_only_its_collectors() {
    let tree = fixture_copy();
    std::fs::remove_file(tree.path().join("net/tcp6")).unwrap();
    let e = Exporter::start(&["--path.procfs", tree.path().to_str().unwrap()]);
    let text = e.scrape();
    assert_collectors(&text, 4, 1.0);
    assert!(!text.contains("family=\"ipv6\""));

    // A directory where the file should be: the read fails the way an unreadable file does.
    std::fs::remove_file(tree.path().join("net/tcp")).unwrap();
    std::fs::create_dir(tree.path().join("net/tcp")).unwrap();
    std::fs::copy(crate::util::fixtures().join("net/tcp6"), tree.path().join("net/tcp6")).unwrap();
    let r = e.get("/metrics");
    assert_eq!(r.status, 200);
    let text = r.text();
    assert_collectors(&text, 4, 0.0);
    assert!(text.contains("source_address=\"::1\""), "IPv6 sockets are still exported");
    let log = e.wait_log("couldn't read sockets");
    assert!(log.contains("net/tcp"), "{log}");
}

#[test]
fn malformed_lines_are_counted_and_logged() {
    let e = Exporter::start(&fixture_args(&[]));
    let text = e.scrape();
    let errors = samples(&text, "conn_exporter_parse_errors_total");
    assert_eq!(errors.iter().find(|s| s.0["file"] == "tcp").unwrap().1, 3.0);
    let log = e.wait_log("malformed");
    assert!(log.contains("line 5"), "{log}");
    // Counted again on the next scrape; logged at most once a minute.
    let again = samples(&e.scrape(), "conn_exporter_parse_errors_total");
    assert_eq!(again.iter().find(|s| s.0["file"] == "tcp").unwrap().1, 6.0);
    assert_eq!(e.log_text().matches("malformed").count(), 1);
}

#[test]
fn json_logs_and_graceful_sigterm() {
    let mut e = Exporter::start(&fixture_args(&["--log.format=json"]));
    let first = e.log.lock().unwrap()[0].clone();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["level"], "info");
    let (code, _, _) = run(Command::new("kill").args(["-TERM", &e.child.id().to_string()]));
    assert_eq!(code, 0);
    let status = wait_for(Duration::from_secs(10), "exit", || e.child.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
}
