//! A real Prometheus (Debian's package) scrapes the exporter; the specification's PromQL
//! examples answer what the test's own sockets imply.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::{http_get, require_tool, run, serial, wait_for, Exporter};

struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let bin = require_tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n  evaluation_interval: 2s\nscrape_configs:\n  - job_name: conn-exporter\n    static_configs:\n      - targets: ['{target}']\n        labels:\n          service: network-monitoring\n"
            ),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let prom = Prometheus { child, addr: port, _dir: dir };
        wait_for(Duration::from_secs(60), "Prometheus to be ready", || {
            crate::util::try_http(prom.addr, "GET", "/-/ready", &[]).filter(|r| r.status == 200)
        });
        prom
    }

    /// The result vector of an instant query at `time`.
    fn result(&self, expr: &str, time: f64) -> Vec<serde_json::Value> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .append_pair("time", &time.to_string())
            .finish();
        let r = http_get(self.addr, &format!("/api/v1/query?{q}"), &[]);
        let v: serde_json::Value =
            serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{expr}: {e}: {}", r.text()));
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().unwrap().clone()
    }

    fn query(&self, expr: &str, time: f64) -> Vec<(serde_json::Value, f64)> {
        self.result(expr, time)
            .iter()
            .map(|s| (s["metric"].clone(), s["value"][1].as_str().unwrap().parse().unwrap()))
            .collect()
    }

    /// A range selector's points per series: (labels, [(timestamp s, value)]).
    fn range(&self, expr: &str, time: f64) -> Vec<(serde_json::Value, Vec<(f64, f64)>)> {
        self.result(expr, time)
            .iter()
            .map(|s| {
                let points = s["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().parse().unwrap()))
                    .collect();
                (s["metric"].clone(), points)
            })
            .collect()
    }

    fn scalar(&self, expr: &str, time: f64) -> f64 {
        let r = self.query(expr, time);
        assert_eq!(r.len(), 1, "{expr}: {r:?}");
        r[0].1
    }
}

/// The host's TCP sockets counted by state, as `ss -tanH` saw them between two instants.
struct SsTable {
    start: f64,
    end: f64,
    by_state: BTreeMap<String, f64>,
}

fn ss_table() -> SsTable {
    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let start = now();
    let (code, out, err) = run(Command::new(require_tool("ss")).arg("-tanH"));
    assert_eq!(code, 0, "{err}");
    let mut by_state = BTreeMap::new();
    for line in out.lines() {
        let state = match line.split_whitespace().next().unwrap() {
            "ESTAB" => "ESTABLISHED".to_owned(),
            other => other.replace("FIN-WAIT-", "FIN_WAIT").replace('-', "_"),
        };
        *by_state.entry(state).or_default() += 1.0;
    }
    SsTable { start, end: now(), by_state }
}

/// The aggregate of one stored scrape, state by state, lies between the least and the
/// most that `ss` counted from just before the scrape started to just after it ended.
/// Slack above: the scrape's own connection and one of this test's API queries may be
/// open during the scrape and in no `ss` run (two sockets each, passing through FIN
/// states); never for LISTEN.
fn states_within_ss(prom: &Prometheus, t: f64, tables: &[SsTable]) {
    let stored = prom.range("network_connection_states[30s]", t);
    let durations = prom.range("scrape_duration_seconds{job=\"conn-exporter\"}[30s]", t);
    let duration: BTreeMap<u64, f64> = durations
        .iter()
        .flat_map(|(_, points)| points.iter().map(|(ts, v)| ((ts * 1000.0).round() as u64, *v)))
        .collect();
    // The latest scrape with an ss run before its start and one after its end.
    let (scrape, lo_idx, hi_idx) = duration
        .iter()
        .rev()
        .find_map(|(ms, d)| {
            // Prometheus may move a timestamp by up to 2 ms to align it with the interval.
            let (start, end) = (*ms as f64 / 1000.0 - 0.01, *ms as f64 / 1000.0 + d + 0.01);
            let lo = tables.iter().rposition(|s| s.end <= start)?;
            let hi = tables.iter().position(|s| s.start >= end)?;
            Some((*ms, lo, hi))
        })
        .unwrap_or_else(|| panic!("no stored scrape bracketed by ss runs: {duration:?}"));
    let mut by_state: BTreeMap<String, f64> = BTreeMap::new();
    for (labels, points) in &stored {
        let point = points.iter().find(|(ts, _)| (ts * 1000.0).round() as u64 == scrape);
        let value = point.unwrap_or_else(|| panic!("{labels}: no sample of the scrape at {scrape} ms")).1;
        *by_state.entry(labels["state"].as_str().unwrap().to_owned()).or_default() += value;
    }
    let window = &tables[lo_idx..=hi_idx];
    let states: BTreeSet<&String> = by_state.keys().chain(window.iter().flat_map(|s| s.by_state.keys())).collect();
    for state in states {
        let counts: Vec<f64> = window.iter().map(|s| s.by_state.get(state).copied().unwrap_or(0.0)).collect();
        let least = counts.iter().copied().fold(f64::INFINITY, f64::min);
        let most = counts.iter().copied().fold(0.0, f64::max);
        let slack = match state.as_str() {
            "LISTEN" => 0.0,
            "ESTABLISHED" => 4.0,
            _ => 2.0,
        };
        let got = by_state.get(state).copied().unwrap_or(0.0);
        assert!(
            least <= got && got <= most + slack,
            "sum(network_connection_states{{state={state:?}}}) = {got} in the scrape at {scrape} ms; ss counted {counts:?} around it"
        );
    }
    eprintln!("scrape at {scrape} ms: states {by_state:?} within {} ss runs", window.len());
}

#[test]
fn prometheus_scrapes_and_the_specifications_queries_answer() {
    let _serial = serial();
    // Three connections from 127.0.0.2 to a listener on 127.0.0.1: "external" by the
    // specification's regex, ESTABLISHED, and a destination port of their own.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut keep = Vec::new();
    for _ in 0..3 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&"127.0.0.2:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        s.connect(&listener.local_addr().unwrap().into()).unwrap();
        let client: TcpStream = s.into();
        keep.push((client, listener.accept().unwrap().0));
    }
    let exporter = Exporter::start(&["--collector.connections.max-series=0"]);
    let prom = Prometheus::start(exporter.addr);

    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    // `ss` runs all along, so that each scrape Prometheus stored can be bracketed by the
    // host's socket table just before it started and just after it ended.
    let mut tables: Vec<SsTable> = Vec::new();
    wait_for(Duration::from_secs(60), "two successful scrapes", || {
        tables.push(ss_table());
        let t = now();
        let up = prom.query("up{job=\"conn-exporter\"}", t);
        let n = prom.query("count_over_time(up{job=\"conn-exporter\"}[1m])", t);
        (up.first().is_some_and(|s| s.1 == 1.0) && n.first().is_some_and(|s| s.1 >= 2.0)).then_some(())
    });
    let t = now();
    tables.push(ss_table());
    let targets = http_get(prom.addr, "/api/v1/targets", &[]).text();
    assert!(targets.contains("\"lastError\":\"\""), "{targets}");
    states_within_ss(&prom, t, &tables);

    let total = prom.scalar("sum(network_connections_info)", t);

    let by_state = prom.query("sum(network_connections_info) by (state)", t);
    assert_eq!(by_state.iter().map(|s| s.1).sum::<f64>(), total);
    let established = prom.scalar("sum(network_connections_info{state=\"ESTABLISHED\"})", t);
    let from_by_state = by_state.iter().find(|s| s.0["state"] == "ESTABLISHED").unwrap().1;
    assert_eq!(established, from_by_state);
    assert!(established >= 6.0, "our three pairs: {established}");

    let by_iface = prom.query("sum(network_connections_info) by (interface)", t);
    assert!(by_iface.iter().find(|s| s.0["interface"] == "lo").unwrap().1 >= 7.0, "{by_iface:?}");
    assert_eq!(by_iface.iter().map(|s| s.1).sum::<f64>(), total);

    let external = prom.scalar(r#"sum(network_connections_info{source_address!~"127\\.0\\.0\\.1|0\\.0\\.0\\.0"})"#, t);
    let ours = prom.scalar(
        &format!("sum(network_connections_info{{source_address=\"127.0.0.2\",destination_port=\"{port}\"}})"),
        t,
    );
    assert_eq!(ours, 3.0);
    assert!(external >= ours, "external {external} counts our 127.0.0.2 clients");

    let top = prom.query("topk(10, sum(network_connections_info) by (destination_port))", t);
    assert!(!top.is_empty() && top.len() <= 10, "{top:?}");
    let ours_in_top = top.iter().find(|s| s.0["destination_port"] == port.to_string().as_str());
    let tenth = top.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    assert!(ours_in_top.is_some_and(|s| s.1 >= 3.0) || (top.len() == 10 && tenth >= 3.0), "{top:?}");

    let listening = prom.query(&format!("network_connections_info{{state=\"LISTEN\",source_port=\"{port}\"}}"), t);
    assert_eq!(listening.len(), 1);
    assert_eq!(listening[0].0["interface"], "lo");
    drop(keep);
}
