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
        Prometheus::start_with(target, &[])
    }

    /// A Prometheus with extra flags (`--enable-feature=native-histograms`).
    fn start_with(target: std::net::SocketAddr, flags: &[&str]) -> Prometheus {
        Prometheus::start_with_rules(target, flags, None)
    }

    /// [`start_with`](Self::start_with), loading a rule file.
    fn start_with_rules(target: std::net::SocketAddr, flags: &[&str], rules: Option<&std::path::Path>) -> Prometheus {
        let bin = require_tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n  evaluation_interval: 2s\n{}scrape_configs:\n  - job_name: conn-exporter\n    static_configs:\n      - targets: ['{target}']\n        labels:\n          service: network-monitoring\n",
                rules.map_or(String::new(), |r| format!("rule_files:\n  - {}\n", r.display()))
            ),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={port}"))
            .args(flags)
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

/// A TCP relay in front of the exporter that keeps the head of the first request and of
/// the first response of each connection (Prometheus keeps its connection open), so the
/// test sees what Prometheus asked for and what it got.
struct Relay {
    addr: std::net::SocketAddr,
    requests: Heads,
    responses: Heads,
}

type Heads = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

impl Relay {
    fn start(upstream: std::net::SocketAddr) -> Relay {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests, responses): (Heads, Heads) = Default::default();
        let (req_seen, resp_seen) = (requests.clone(), responses.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                let pipe = |mut from: TcpStream, mut to: TcpStream, seen: Heads| {
                    move || {
                        let mut head = Vec::new();
                        let mut kept = false;
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            if !kept {
                                head.extend_from_slice(&buf[..n]);
                                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                                    seen.lock().unwrap().push(String::from_utf8_lossy(&head[..end]).into_owned());
                                    kept = true;
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    }
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(pipe(c2, s2, req_seen.clone()));
                std::thread::spawn(pipe(server, client, resp_seen.clone()));
            }
        });
        Relay { addr, requests, responses }
    }

    /// One header of each kept head.
    fn header(heads: &Heads, name: &str) -> Vec<String> {
        heads
            .lock()
            .unwrap()
            .iter()
            .map(|head| {
                head.lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)))
                    .map(|(_, v)| v.trim().to_owned())
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// Every series (name and labels) Prometheus stored for the job, with its latest value;
/// `instance` left out (each Prometheus scrapes through a relay of its own).
fn stored_series(prom: &Prometheus, t: f64) -> BTreeMap<String, f64> {
    prom.query("{job=\"conn-exporter\"}", t)
        .into_iter()
        .map(|(mut labels, value)| {
            labels.as_object_mut().unwrap().remove("instance");
            (serde_json::to_string(&labels).unwrap(), value)
        })
        .collect()
}

/// Issue 20: Prometheus 2.42 with `--enable-feature=native-histograms` asks for protobuf,
/// gets it, and stores every family with the same series and values as a Prometheus
/// without the flag that scrapes text. The exporter reads the fixture procfs, so that
/// both see the same sockets at every scrape.
#[test]
fn prometheus_with_native_histograms_scrapes_protobuf_and_stores_what_text_gives() {
    let fixture = crate::util::fixtures();
    let exporter = Exporter::start(&["--path.procfs", fixture.to_str().unwrap()]);
    let (native_relay, classic_relay) = (Relay::start(exporter.addr), Relay::start(exporter.addr));
    let native = Prometheus::start_with(native_relay.addr, &["--enable-feature=native-histograms"]);
    let classic = Prometheus::start(classic_relay.addr);
    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    wait_for(Duration::from_secs(60), "three scrapes by each Prometheus", || {
        let t = now();
        let three = |p: &Prometheus| {
            p.query("count_over_time(up{job=\"conn-exporter\"}[1m])", t).first().is_some_and(|s| s.1 >= 3.0)
        };
        (three(&native) && three(&classic)).then_some(())
    });
    let t = now();

    // What each asked for and got.
    let (asked, got) =
        (Relay::header(&native_relay.requests, "accept"), Relay::header(&native_relay.responses, "content-type"));
    assert!(!asked.is_empty() && !got.is_empty(), "the native Prometheus's scrapes went through its relay");
    assert!(asked.iter().all(|a| a == crate::golden::PROMETHEUS_NATIVE_ACCEPT), "{asked:?}");
    let protobuf = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";
    assert!(got.iter().all(|c| c == protobuf), "{got:?}");
    let got = Relay::header(&classic_relay.responses, "content-type");
    assert!(
        !got.is_empty() && got.iter().all(|c| c == "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{got:?}"
    );
    for p in [&native, &classic] {
        let targets = http_get(p.addr, "/api/v1/targets", &[]).text();
        assert!(targets.contains("\"lastError\":\"\""), "{targets}");
    }

    // The same series, name and labels, in both.
    let (from_protobuf, from_text) = (stored_series(&native, t), stored_series(&classic, t));
    let only_protobuf: Vec<&String> = from_protobuf.keys().filter(|k| !from_text.contains_key(*k)).collect();
    let only_text: Vec<&String> = from_text.keys().filter(|k| !from_protobuf.contains_key(*k)).collect();
    assert!(
        only_protobuf.is_empty() && only_text.is_empty(),
        "only from protobuf: {only_protobuf:?}\nonly from text: {only_text:?}"
    );
    let names: BTreeSet<String> = from_text
        .keys()
        .map(|k| serde_json::from_str::<serde_json::Value>(k).unwrap()["__name__"].as_str().unwrap().to_owned())
        .collect();
    for family in &[
        "network_connections_info",
        "network_connection_states",
        "network_connection_peers",
        "conn_exporter_parse_errors_total",
        "conn_exporter_build_info",
        "process_cpu_seconds_total",
        "scrape_samples_scraped",
    ] {
        assert!(names.contains(*family), "{family} stored: {names:?}");
    }
    // The same values, but for what changes from scrape to scrape (the exporter's own
    // process and timing, the parse-error counter that counts each scrape's read).
    let volatile = |name: &str| {
        name.starts_with("process_")
            || name.starts_with("conn_exporter_scrape_")
            || name == "scrape_duration_seconds"
            || name == "conn_exporter_parse_errors_total"
    };
    let mut compared = 0;
    for (series, value) in &from_text {
        let name = serde_json::from_str::<serde_json::Value>(series).unwrap()["__name__"].as_str().unwrap().to_owned();
        if !volatile(&name) {
            assert_eq!(from_protobuf[series], *value, "{series}");
            compared += 1;
        }
    }
    eprintln!("{} series in both, {compared} values compared, families {names:?}", from_text.len());
}

/// Issue 20 with issue 19's histogram: while connections of known RTT stay open, a
/// Prometheus 2.42 with native histograms stores `network_connection_rtt_seconds` as one
/// native series per label set, counts the observations made, and puts the median in
/// the native bucket that holds the RTT `ss -tin` shows; a Prometheus without the flag
/// stores the classic buckets from the text format, and the same quantile query form
/// over `_bucket` lands in the classic bucket that holds it.
#[test]
fn native_histograms_hold_the_rtt_family_in_one_series_per_peer() {
    let _serial = crate::util::serial();
    let exporter = Exporter::start(&["--collector.quality.interval=1s", "--no-collector.connections"]);
    // Both with the shipped recording rules: the p99 rule's native branch and its classic one.
    let rules = crate::util::repo().join("deploy/prometheus/recording-rules.yml");
    let (native, classic) = (
        Prometheus::start_with_rules(exporter.addr, &["--enable-feature=native-histograms"], Some(&rules)),
        Prometheus::start_with_rules(exporter.addr, &[], Some(&rules)),
    );
    let port = 7191u16;
    let script = crate::util::repo().join("tests/scenarios/quality.py");
    let mut held = Command::new("python3")
        .args([script.to_str().unwrap(), &port.to_string(), "3", "100000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(held.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert!(line.contains("stalled_written"), "{line}");
    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    // Settled: from here every observation is of an idle connection.
    std::thread::sleep(Duration::from_secs(2));
    let t0 = now();
    std::thread::sleep(Duration::from_secs(20));
    let t = now();
    let window = format!("{}s", (t - t0).floor() as u64);
    let (code, out, err) = run(Command::new("ss").args([
        "-tinH",
        "state",
        "established",
        &format!("( sport = :{port} or dport = :{port} )"),
    ]));
    assert_eq!(code, 0, "{err}");
    let sockets: Vec<crate::quality::SsSocket> = crate::quality::parse_ss_info(&out)
        .into_iter()
        .filter(|s| !s.local.starts_with("127.0.0.9:") && !s.remote.starts_with("127.0.0.9:"))
        .collect();
    assert_eq!(sockets.len(), 6, "{out}");
    let selector =
        |l: &crate::util::Labels| l.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect::<Vec<_>>().join(",");
    for s in &sockets {
        let sel = selector(&crate::quality::labels_of(s, port));
        let rtt = s.rtt_us as f64 / 1e6;
        // Counts: one observation per sample, each sample seen in the same scrapes.
        let counted =
            native.scalar(&format!("histogram_count(rate(network_connection_rtt_seconds{{{sel}}}[{window}]))"), t);
        let samples = native.scalar(&format!("rate(conn_exporter_quality_samples_total[{window}])"), t);
        assert!(
            counted > 0.0 && (counted - samples).abs() < 1e-9 * samples.max(1.0),
            "{sel}: {counted} observations/s, {samples} samples/s"
        );
        // The median falls in the native bucket that holds the RTT: (2^((i-1)/8), 2^(i/8)].
        let median = native
            .scalar(&format!("histogram_quantile(0.5, rate(network_connection_rtt_seconds{{{sel}}}[{window}]))"), t);
        let i = (rtt.log2() * 8.0).ceil();
        let (lower, upper) = (((i - 1.0) / 8.0).exp2(), (i / 8.0).exp2());
        assert!(
            lower <= median && median <= upper,
            "{sel}: median {median} s outside ({lower}, {upper}] of srtt {rtt} s"
        );
        // The classic Prometheus: the same query form over _bucket, in the classic bucket.
        let median = classic.scalar(
            &format!(
                "histogram_quantile(0.5, sum by (le) (rate(network_connection_rtt_seconds_bucket{{{sel}}}[{window}])))"
            ),
            t,
        );
        let bounds = [0.0, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01];
        let b = bounds.iter().position(|&le| le >= rtt).unwrap();
        assert!(bounds[b - 1] <= median && median <= bounds[b], "{sel}: classic median {median} s, srtt {rtt} s");
    }
    // The shipped p99 recording rule answers in both: from the native histogram in one,
    // from the classic buckets in the other; a loopback service is under a millisecond.
    for p in [&native, &classic] {
        let p99 = p.scalar(
            &format!(
                "instance_service:network_connection_rtt_seconds:p99_rate5m{{direction=\"inbound\",source_address=\"127.0.0.1\",source_port=\"{port}\"}}"
            ),
            t,
        );
        assert!(p99 > 0.0 && p99 <= 0.001, "p99 of a loopback service: {p99} s");
    }
    // Series for the same peers: one per label set native, 19 classic.
    let peers = native.scalar("count(network_connection_rtt_seconds)", t);
    let native_series = native.scalar("count({__name__=~\"network_connection_rtt_seconds.*\"})", t);
    let classic_series = classic.scalar("count({__name__=~\"network_connection_rtt_seconds.*\"})", t);
    let classic_peers = classic.scalar("count(network_connection_rtt_seconds_count)", t);
    eprintln!("network_connection_rtt_seconds: {peers} label sets; series native {native_series}, classic {classic_series} for {classic_peers} label sets");
    assert_eq!(native_series, peers, "one native series per label set, no _bucket/_sum/_count");
    assert!(
        classic_peers >= peers - 2.0 && classic_series == 19.0 * classic_peers,
        "{classic_series} for {classic_peers}"
    );
    let _ = held.kill();
    let _ = held.wait();
}
