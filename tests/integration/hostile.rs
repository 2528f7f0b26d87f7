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

/// Whether the server has closed `s` (end of stream or reset, after any answer such as a
/// 408); the socket must be non-blocking.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
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

    // Past the 10 s head timeout the server closes every stalled connection: wait for
    // exactly that, and fail if it has not happened well after the timeout.
    for s in &stalled {
        s.set_nonblocking(true).unwrap();
    }
    let mut open: Vec<usize> = (0..stalled.len()).collect();
    let limit = Duration::from_secs(20);
    let deadline = Instant::now() + limit;
    while !open.is_empty() && Instant::now() < deadline {
        open.retain(|&i| !closed_by_server(&mut stalled[i]));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(open.is_empty(), "{} stalled connections still open {limit:?} after the scrape", open.len());
    eprintln!("every stalled connection closed {:?} after the scrape started", start.elapsed());
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
    // A small receive buffer that is never drained past the response head.
    let hog = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    hog.set_recv_buffer_size(4096).unwrap();
    hog.connect(&e.addr.into()).unwrap();
    let mut hog: TcpStream = hog.into();
    hog.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // The response has begun, so the scrape holds its slot until its body is read.
    hog.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut first = [0u8; 12];
    hog.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "the hog's own scrape");
    let r = e.get("/metrics");
    assert_eq!(r.status, 503, "{}", r.text());
    drop(hog);
    let ok = crate::util::wait_for(Duration::from_secs(10), "the slot to free", || {
        let r = e.get("/metrics?collect[]=states");
        (r.status == 200).then_some(r)
    });
    assert!(ok.text().contains("network_connection_states{"));
}
