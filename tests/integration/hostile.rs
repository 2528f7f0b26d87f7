//! Clients that misbehave: never finish a request, send huge heads or bodies, or crowd
//! the scrape limit. The exporter keeps answering real scrapes and bounds its memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::{fixture_copy, http_get, http_request, Exporter};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_thousand_stalled_clients_do_not_stop_a_scrape_and_are_dropped() {
    let e = Exporter::start(&["--no-collector.connections"]);
    let before = rss_kib(e.child.id());
    let mut stalled = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(e.addr).unwrap();
        if i % 2 == 0 {
            // Half a request head, never finished.
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        }
        stalled.push(s);
    }
    let start = Instant::now();
    let r = e.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("network_connection_states{"));
    eprintln!("scrape with 1000 stalled clients took {:?}", start.elapsed());
    let during = rss_kib(e.child.id());
    assert!(during < before + 64 * 1024, "RSS grew from {before} KiB to {during} KiB");

    // Past the 10 s head timeout every stalled connection is closed by the server.
    std::thread::sleep(Duration::from_secs(12));
    let mut open = 0;
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut answer = Vec::new();
        // Ok: the server closed it (after a 408 answer, or without one).
        if s.read_to_end(&mut answer).is_err() {
            open += 1;
        }
    }
    assert_eq!(open, 0, "{open} stalled connections still open after the timeout");
    assert_eq!(e.get("/metrics").status, 200);
    let log = e.log_text();
    assert!(log.lines().count() < 10, "stalled clients must not flood the log:\n{log}");
}

#[test]
fn oversized_heads_and_bodies_are_refused() {
    let e = Exporter::start(&["--no-collector.connections"]);
    let huge = "x".repeat(64 * 1024);
    let r = http_request(e.addr, "GET", "/metrics", &[("X-Huge", &huge)]);
    assert_eq!(r.status, 431);
    let r = http_request(e.addr, "GET", "/metrics", &[("Content-Length", "10000000")]);
    assert_eq!(r.status, 413);
    let r = http_request(e.addr, "GET", &format!("/{}", "a".repeat(20000)), &[]);
    assert!(r.status == 414 || r.status == 431 || r.status == 404, "{}", r.status);
    assert_eq!(http_get(e.addr, "/metrics", &[]).status, 200);
}

#[test]
fn scrapes_past_max_requests_get_503() {
    // A tree large enough that an unread response fills every buffer and holds its slot.
    let tree = fixture_copy();
    let mut tcp = String::from(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
    );
    for i in 0..60000u32 {
        tcp.push_str(&format!(
            "{i:4}: 0100007F:{:04X} 0200007F:{:04X} 01 00000000:00000000 00:00000000 00000000     0        0 {i} 1 0000000000000000 20 4 30 10 -1\n",
            i % 60000 + 1,
            i / 60000 + 1
        ));
    }
    std::fs::write(tree.path().join("net/tcp"), tcp).unwrap();
    let e = Exporter::start(&[
        "--path.procfs",
        tree.path().to_str().unwrap(),
        "--web.max-requests=1",
        "--collector.connections.max-series=0",
    ]);
    let mut hog = TcpStream::connect(e.addr).unwrap();
    hog.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let r = e.get("/metrics");
    assert_eq!(r.status, 503, "{}", r.text());
    drop(hog);
    let ok = crate::util::wait_for(Duration::from_secs(10), "the slot to free", || {
        let r = e.get("/metrics?collect[]=states");
        (r.status == 200).then_some(r)
    });
    assert!(ok.text().contains("network_connection_states{"));
}
