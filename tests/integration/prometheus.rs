//! A real Prometheus (Debian's package) scrapes the exporter; the specification's PromQL
//! examples answer what the test's own sockets imply.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::{http_get, require_tool, serial, wait_for, Exporter};

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

    fn query(&self, expr: &str, time: f64) -> Vec<(serde_json::Value, f64)> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .append_pair("time", &time.to_string())
            .finish();
        let r = http_get(self.addr, &format!("/api/v1/query?{q}"), &[]);
        let v: serde_json::Value =
            serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{expr}: {e}: {}", r.text()));
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["metric"].clone(), s["value"][1].as_str().unwrap().parse().unwrap()))
            .collect()
    }

    fn scalar(&self, expr: &str, time: f64) -> f64 {
        let r = self.query(expr, time);
        assert_eq!(r.len(), 1, "{expr}: {r:?}");
        r[0].1
    }
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
    wait_for(Duration::from_secs(60), "two successful scrapes", || {
        let t = now();
        let up = prom.query("up{job=\"conn-exporter\"}", t);
        let n = prom.query("count_over_time(up{job=\"conn-exporter\"}[1m])", t);
        (up.first().is_some_and(|s| s.1 == 1.0) && n.first().is_some_and(|s| s.1 >= 2.0)).then_some(())
    });
    let t = now();
    let targets = http_get(prom.addr, "/api/v1/targets", &[]).text();
    assert!(targets.contains("\"lastError\":\"\""), "{targets}");

    let total = prom.scalar("sum(network_connections_info)", t);
    assert_eq!(total, prom.scalar("sum(network_connection_states)", t), "per-connection and aggregate agree");

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
