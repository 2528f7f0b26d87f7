//! The quality collector against the kernel: in a namespace of its own, sockets the test
//! opens are read by `ss -tin` and by the exporter, and each label set (one socket each)
//! must show what `ss` shows: the RTT observations, retransmits and lost segments,
//! window stalls and queues; closes add one RTT observation each; scrapers do not
//! change counts; `all` mode labels another namespace's connections.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ns::Netns;
use crate::util::{repo, samples, serial, wait_for, Labels};

/// One socket as `ss -tinH` prints it.
#[derive(Debug, Clone, Default)]
pub struct SsSocket {
    pub recv_q: u64,
    pub send_q: u64,
    pub local: String,
    pub remote: String,
    pub rtt_us: u64,
    pub retrans_total: u64,
    pub dsack_dups: u64,
    pub rwnd_limited_ms: u64,
    pub notsent: u64,
    pub data_segs_out: u64,
}

/// `ss -tinH` of a namespace, established sockets only: a header line per socket then a
/// line of its tcp_info.
pub fn ss_info(ns: &Netns) -> Vec<SsSocket> {
    parse_ss_info(&ns.exec(&["ss", "-tinH", "state", "established"]))
}

/// Parses `ss -tinH` output.
pub fn parse_ss_info(out: &str) -> Vec<SsSocket> {
    let mut sockets: Vec<SsSocket> = Vec::new();
    for line in out.lines() {
        if !line.starts_with(char::is_whitespace) {
            let f: Vec<&str> = line.split_whitespace().collect();
            sockets.push(SsSocket {
                recv_q: f[0].parse().unwrap(),
                send_q: f[1].parse().unwrap(),
                local: f[2].to_owned(),
                remote: f[3].to_owned(),
                ..SsSocket::default()
            });
            continue;
        }
        let s = sockets.last_mut().expect("an info line follows its socket");
        for field in line.split_whitespace() {
            let Some((key, value)) = field.split_once(':') else { continue };
            let ms = |v: &str| -> f64 { v.split('(').next().unwrap().trim_end_matches("ms").parse().unwrap() };
            match key {
                // rtt:<srtt ms>/<rttvar ms>, printed with microsecond precision.
                "rtt" => s.rtt_us = (ms(value.split('/').next().unwrap()) * 1000.0).round() as u64,
                // retrans:<in flight>/<total>
                "retrans" => s.retrans_total = value.split('/').nth(1).unwrap().parse().unwrap(),
                "dsack_dups" => s.dsack_dups = value.parse().unwrap(),
                "rwnd_limited" => s.rwnd_limited_ms = ms(value) as u64,
                "notsent" => s.notsent = value.parse().unwrap(),
                "data_segs_out" => s.data_segs_out = value.parse().unwrap(),
                _ => {}
            }
        }
    }
    sockets
}

fn addr(endpoint: &str) -> (&str, u16) {
    let (a, p) = endpoint.rsplit_once(':').unwrap();
    (a, p.parse().unwrap())
}

/// The labels of the label set a socket counts in: inbound on the service's port, or
/// outbound to it.
pub fn labels_of(s: &SsSocket, service_port: u16) -> Labels {
    let (local, lport) = addr(&s.local);
    let (remote, _) = addr(&s.remote);
    let mut l = Labels::new();
    l.insert("interface".into(), "lo".into());
    l.insert("source_address".into(), local.into());
    l.insert("destination_address".into(), remote.into());
    if lport == service_port {
        l.insert("direction".into(), "inbound".into());
        l.insert("source_port".into(), service_port.to_string());
    } else {
        l.insert("direction".into(), "outbound".into());
        l.insert("destination_port".into(), service_port.to_string());
    }
    l
}

fn value(text: &str, name: &str, want: &Labels) -> f64 {
    let found: Vec<f64> = samples(text, name).into_iter().filter(|(l, _)| l == want).map(|(_, v)| v).collect();
    assert_eq!(found.len(), 1, "{name}{want:?} once in:\n{}", grep(text, name));
    found[0]
}

/// A lifecycle counter's value: its label sets appear once a connection closed or
/// retransmitted, so an absent one has counted 0.
fn lifecycle_value(text: &str, name: &str, want: &Labels) -> f64 {
    let found: Vec<f64> = samples(text, name).into_iter().filter(|(l, _)| l == want).map(|(_, v)| v).collect();
    assert!(found.len() <= 1, "{name}{want:?} twice");
    found.first().copied().unwrap_or(0.0)
}

fn grep(text: &str, name: &str) -> String {
    text.lines().filter(|l| l.starts_with(name)).collect::<Vec<_>>().join("\n")
}

fn with(l: &Labels, k: &str, v: &str) -> Labels {
    let mut l = l.clone();
    l.insert(k.into(), v.into());
    l
}

/// The classic buckets of one label set: le -> cumulative count.
fn buckets(text: &str, want: &Labels) -> BTreeMap<String, f64> {
    samples(text, "network_connection_rtt_seconds_bucket")
        .into_iter()
        .filter_map(|(mut l, v)| {
            let le = l.remove("le")?;
            (l == *want).then_some((le, v))
        })
        .collect()
}

fn samples_taken(text: &str) -> f64 {
    samples(text, "conn_exporter_quality_samples_total").first().map_or(0.0, |s| s.1)
}

#[test]
fn each_socket_shows_what_ss_shows() {
    each_socket_shows_what_ss_shows_with("netlink");
}

/// With the eBPF lifecycle source the program counts retransmits; the quality
/// collector's samples and closes come from a notifications thread of its own.
#[test]
fn each_socket_shows_what_ss_shows_with_the_ebpf_source() {
    each_socket_shows_what_ss_shows_with("ebpf");
}

fn each_socket_shows_what_ss_shows_with(source: &str) {
    let _serial = serial();
    let ns = Netns::new(&format!("cx-quality-{source}"));
    let e = ns.exporter(&["--collector.quality.interval=1s", &format!("--collector.lifecycle.source={source}")]);
    assert!(ns.scrape(&e, "").contains(&format!("conn_exporter_lifecycle_source_info{{source=\"{source}\"}} 1")));
    wait_for(Duration::from_secs(10), "a first sample", || (samples_taken(&ns.scrape(&e, "")) >= 1.0).then_some(()));
    let script = repo().join("tests/scenarios/quality.py");
    let port = 7101;
    let (_held, made) = ns.hold(script.to_str().unwrap(), &[&port.to_string(), "3", "200000"]);
    assert!(made.contains("stalled_written"), "{made}");
    // Two samples after everything settled: the RTT observations between them are of
    // idle connections, whose smoothed RTT no longer moves.
    let settled = samples_taken(&ns.scrape(&e, ""));
    wait_for(Duration::from_secs(10), "a sample", || {
        (samples_taken(&ns.scrape(&e, "")) >= settled + 1.0).then_some(())
    });
    let before = ns.scrape(&e, "");
    let n0 = samples_taken(&before);
    wait_for(Duration::from_secs(10), "two samples", || (samples_taken(&ns.scrape(&e, "")) >= n0 + 2.0).then_some(()));
    let ss_before = ss_info(&ns);
    let after = ns.scrape(&e, "");
    let ss_after = ss_info(&ns);
    assert_eq!(ss_before.len(), 8, "4 connections, both ends: {ss_before:?}");
    let mut checked = 0;
    for s in &ss_before {
        let l = labels_of(s, port);
        let later = ss_after.iter().find(|x| x.local == s.local && x.remote == s.remote).expect("still open");
        let stalled = s.local.starts_with("127.0.0.9:") || s.remote.starts_with("127.0.0.9:");
        // RTT: what was observed between the two scrapes is this socket's srtt, in the
        // bucket that holds it (idle sockets only: the stalled one probes a zero window).
        let dn = value(&after, "network_connection_rtt_seconds_count", &l)
            - value(&before, "network_connection_rtt_seconds_count", &l);
        assert!(dn >= 1.0, "{l:?}: no observation between two samples");
        if !stalled {
            assert_eq!(s.rtt_us, later.rtt_us, "{l:?}: an idle socket's srtt moved");
            let dsum = value(&after, "network_connection_rtt_seconds_sum", &l)
                - value(&before, "network_connection_rtt_seconds_sum", &l);
            let mean_us = dsum / dn * 1e6;
            assert!((mean_us - s.rtt_us as f64).abs() < 0.5, "{l:?}: observed {mean_us} µs, ss says {} µs", s.rtt_us);
            let (b0, b1) = (buckets(&before, &l), buckets(&after, &l));
            for (le, n) in &b1 {
                let grew = n - b0.get(le).copied().unwrap_or(0.0);
                let holds = le == "+Inf" || le.parse::<f64>().unwrap() * 1e6 >= s.rtt_us as f64;
                assert_eq!(grew, if holds { dn } else { 0.0 }, "{l:?} le={le}: srtt {} µs", s.rtt_us);
            }
        }
        // Counters: the connections were opened after the first sample, so the counts
        // are their whole life: what ss says, at the same moment (nothing moves here but
        // the stalled sender's window time).
        let sent = value(&after, "network_connection_sent_segments_total", &l);
        if stalled {
            let floor = if s.data_segs_out > 0 { 1.0 } else { 0.0 };
            assert!(
                sent <= later.data_segs_out as f64 && sent >= floor,
                "{l:?}: {sent} segments, ss {}..{}",
                s.data_segs_out,
                later.data_segs_out
            );
        } else {
            assert_eq!(sent, s.data_segs_out as f64, "{l:?}: data segments sent");
        }
        let lost = value(&after, "network_connection_lost_segments_total", &l);
        let retrans = lifecycle_value(&after, "network_connection_retransmits_total", &l);
        if stalled {
            // Zero-window probes may retransmit while the test reads: never ahead of ss.
            assert!(retrans <= later.retrans_total as f64, "{l:?}: {retrans} retransmits, ss {}", later.retrans_total);
        } else {
            assert_eq!(lost, s.retrans_total.saturating_sub(s.dsack_dups) as f64, "{l:?} lost segments");
            assert_eq!(retrans, s.retrans_total as f64, "{l:?} retransmits");
        }
        let rwnd = value(&after, "network_connection_receive_window_limited_seconds_total", &l) * 1000.0;
        if stalled && s.send_q > 0 {
            // Up to one interval old at the scrape, never ahead of the kernel.
            assert!(
                rwnd > 0.0 && rwnd <= later.rwnd_limited_ms as f64 + 1.0 && rwnd + 1100.0 >= s.rwnd_limited_ms as f64,
                "{l:?}: window-limited {rwnd} ms, ss {}..{} ms",
                s.rwnd_limited_ms,
                later.rwnd_limited_ms
            );
        } else {
            assert!((rwnd - s.rwnd_limited_ms as f64).abs() <= 1.0, "{l:?}: {rwnd} ms, ss {} ms", s.rwnd_limited_ms);
        }
        // Queues: full and still on the stalled connection, empty on the others.
        assert_eq!(s.recv_q, later.recv_q, "{l:?}: the receive queue moved");
        assert_eq!(value(&after, "network_connection_queued_bytes", &with(&l, "queue", "receive")), s.recv_q as f64);
        assert_eq!(value(&after, "network_connection_queued_bytes", &with(&l, "queue", "send")), s.send_q as f64);
        assert_eq!(value(&after, "network_connection_unsent_bytes", &l), s.notsent as f64, "{l:?} unsent");
        if stalled {
            assert!(s.recv_q > 0 || s.send_q > 0, "the stalled connection queues: {s:?}");
        }
        checked += 1;
    }
    assert_eq!(checked, 8);
}

#[test]
fn closes_observe_once_and_scrapers_change_nothing() {
    closes_observe_once_with("netlink");
}

#[test]
fn closes_observe_once_with_the_ebpf_source() {
    closes_observe_once_with("ebpf");
}

fn closes_observe_once_with(source: &str) {
    let _serial = serial();
    let ns = Netns::new(&format!("cx-quality-close-{source}"));
    // One sample, at start: every observation after it is a close.
    let e = ns.exporter(&["--collector.quality.interval=1h", &format!("--collector.lifecycle.source={source}")]);
    // With the eBPF source the closes come from the program's records: no socket of the
    // exporter joins the destroy groups (which would make the kernel build a message per
    // close); with netlink one does.
    let subscribed = ns
        .exec(&["cat", "/proc/net/netlink"])
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"4") && f.get(3).is_some_and(|g| u32::from_str_radix(g, 16).unwrap_or(0) != 0)
        })
        .count();
    assert_eq!(subscribed, usize::from(source == "netlink"), "sock_diag sockets joined to groups");
    wait_for(Duration::from_secs(10), "the first sample", || (samples_taken(&ns.scrape(&e, "")) >= 1.0).then_some(()));
    let script = repo().join("tests/scenarios/quality.py");
    let port = 7102;
    let (mut held, _) = ns.hold(script.to_str().unwrap(), &[&port.to_string(), "4", "50000"]);
    let open = ss_info(&ns);
    assert_eq!(held.command("close"), "closed\n");
    let want: Vec<(Labels, u64)> = open
        .iter()
        .filter(|s| !s.local.starts_with("127.0.0.9:") && !s.remote.starts_with("127.0.0.9:"))
        .map(|s| (labels_of(s, port), s.retrans_total))
        .collect();
    assert_eq!(want.len(), 8);
    let text = wait_for(Duration::from_secs(10), "the closes counted", || {
        let t = ns.scrape(&e, "");
        want.iter()
            .all(|(l, _)| samples(&t, "network_connection_rtt_seconds_count").iter().any(|(x, _)| x == l))
            .then_some(t)
    });
    for (l, retrans) in &want {
        assert_eq!(value(&text, "network_connection_rtt_seconds_count", l), 1.0, "{l:?}: one observation per close");
        assert_eq!(value(&text, "network_connection_retransmits_total", l), *retrans as f64, "{l:?}");
        let sum = value(&text, "network_connection_rtt_seconds_sum", l);
        assert!(sum > 0.0 && sum < 0.001, "{l:?}: loopback srtt {sum} s is under a millisecond");
    }
    // Two servers scraping in turn see the same counts: no scrape samples.
    let again = ns.scrape(&e, "");
    for (l, _) in &want {
        assert_eq!(value(&again, "network_connection_rtt_seconds_count", l), 1.0);
    }
    assert_eq!(samples_taken(&again), 1.0, "scrapes take no samples");
}

#[test]
fn procfs_source_reports_failure_and_invents_nothing() {
    let _serial = serial();
    let ns = Netns::new("cx-quality-procfs");
    let e = ns.exporter(&["--collector.connections.source=procfs"]);
    let text = ns.scrape(&e, "");
    let success: Vec<(Labels, f64)> = samples(&text, "conn_exporter_scrape_collector_success")
        .into_iter()
        .filter(|(l, _)| l.get("collector").map(String::as_str) == Some("quality"))
        .collect();
    assert_eq!(success.len(), 1, "{text}");
    assert_eq!(success[0].1, 0.0);
    assert!(samples(&text, "network_connection_rtt_seconds_count").is_empty());
    let log = e.wait_log("quality collector: off");
    assert!(log.contains("no tcp_info"), "{log}");
    assert_eq!(log.matches("quality collector: off").count(), 1, "said once: {log}");
}

#[test]
fn all_mode_labels_another_namespaces_connections() {
    all_mode_with("netlink");
}

#[test]
fn all_mode_labels_another_namespaces_connections_with_the_ebpf_source() {
    all_mode_with("ebpf");
}

fn all_mode_with(source: &str) {
    let _serial = serial();
    let host = Netns::new(&format!("cx-quality-host-{source}"));
    let other = Netns::new("cx-quality-pod");
    let e = host.exporter(&[
        "--collector.namespaces=all",
        "--collector.quality.interval=1s",
        &format!("--collector.lifecycle.source={source}"),
    ]);
    // The pod's namespace found (rescans every 2 s) and sampled once before its
    // connections open: a socket open before its namespace's first sample counts only
    // what it does afterwards, and this test compares whole lives.
    wait_for(Duration::from_secs(20), "samples", || (samples_taken(&host.scrape(&e, "")) >= 5.0).then_some(()));
    let script = repo().join("tests/scenarios/quality.py");
    let (_held, _) = other.hold(script.to_str().unwrap(), &["7103", "2", "10000"]);
    let open = ss_info(&other);
    let text = wait_for(Duration::from_secs(15), "the pod's connections sampled", || {
        let t = host.scrape(&e, "");
        samples(&t, "network_connection_rtt_seconds_count")
            .iter()
            .any(|(l, _)| l.get("netns").map(String::as_str) == Some("cx-quality-pod"))
            .then_some(t)
    });
    for s in &open {
        let l = with(&labels_of(s, 7103), "netns", "cx-quality-pod");
        let l = with(&with(&l, "container_id", ""), "pod_uid", "");
        let n = value(&text, "network_connection_rtt_seconds_count", &l);
        assert!(n >= 1.0, "{l:?}");
        let retrans = lifecycle_value(&text, "network_connection_retransmits_total", &l);
        assert_eq!(retrans, s.retrans_total as f64, "{l:?}");
    }
}
