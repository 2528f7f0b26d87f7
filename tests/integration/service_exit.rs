//! A service that restarts on another port and exits, in a namespace of the test's own
//! (tests/scenarios/service_exit.py): the sockets it leaves behind (TIME_WAIT, and
//! connections it closes seconds after its listener went) keep their direction,
//! so `network_connection_peers` stays at a few label sets over the whole run instead of
//! one per connection, and the lifecycle counters of both sources count every close on
//! the service's port, inbound and outbound, against what the scenario made. An exporter
//! started after the service exited (it never saw the listener) is held to the same.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::ns::Netns;
use crate::util::{repo, samples, Exporter};

type Labels = BTreeMap<String, String>;

/// The goal of the issue: label sets of the peers family over a whole run.
const MAX_PEER_SETS: usize = 30;

/// The port labels of a series, if any.
fn ports(l: &Labels) -> impl Iterator<Item = u16> + '_ {
    ["source_port", "destination_port"].into_iter().filter_map(|k| l.get(k)?.parse().ok())
}

/// Non-listening sockets whose local port is `port`, as `ss -tanH` lists them.
fn ss_local(ns: &Netns, port: u16) -> u64 {
    ns.exec(&["ss", "-tanH"])
        .lines()
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() >= 5 && f[0] != "LISTEN" && f[3].rsplit(':').next() == Some(&port.to_string())
        })
        .count() as u64
}

/// Whether `ss` still shows a socket on one of `ports`.
fn ss_any(ns: &Netns, ports: &[u16]) -> bool {
    ns.exec(&["ss", "-tanH"]).lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() >= 5
            && [f[3], f[4]]
                .iter()
                .any(|ep| ep.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).is_some_and(|p| ports.contains(&p)))
    })
}

fn sum(text: &str, name: &str, keep: impl Fn(&Labels) -> bool) -> u64 {
    samples(text, name).iter().filter(|(l, _)| keep(l)).map(|(_, v)| *v as u64).sum()
}

/// One exporter of the run and what its scrapes showed.
struct Watched {
    name: &'static str,
    exporter: Exporter,
    peer_sets: BTreeSet<Labels>,
}

impl Watched {
    fn new(name: &'static str, exporter: Exporter) -> Watched {
        Watched { name, exporter, peer_sets: BTreeSet::new() }
    }

    /// Scrapes and notes the peer label sets, leaving out the scrapes' own connections.
    fn scrape(&mut self, ns: &Netns, own: &[u16]) -> String {
        let text = ns.scrape(&self.exporter, "");
        for (l, _) in samples(&text, "network_connection_peers") {
            if !ports(&l).any(|p| own.contains(&p)) {
                self.peer_sets.insert(l);
            }
        }
        text
    }
}

/// The service's leftover sockets on `port`, after its exit, are all inbound peers of
/// that port, as many as `ss` shows (retried while TIME_WAIT sockets expire between
/// the two reads).
fn assert_leftovers_inbound(ns: &Netns, w: &mut Watched, own: &[u16], port: u16, when: &str) {
    for attempt in 0.. {
        let before = ss_local(ns, port);
        let text = w.scrape(ns, own);
        let after = ss_local(ns, port);
        if before != after && attempt < 5 {
            continue;
        }
        assert!(before > 0, "{}: the scenario left no socket on {port} {when}", w.name);
        let inbound = sum(&text, "network_connection_peers", |l| {
            l["direction"] == "inbound" && l.get("source_port") == Some(&port.to_string())
        });
        assert_eq!(inbound, before, "{}: leftovers of :{port} {when}, against ss\n{text}", w.name);
        return;
    }
}

#[test]
fn a_service_that_restarts_and_exits_keeps_peers_bounded_and_its_closes_inbound() {
    let ns = Netns::new("connexp-exit");
    let mut watched = vec![
        Watched::new("notifications", ns.exporter(&["--collector.lifecycle.source=netlink"])),
        Watched::new("ebpf", ns.exporter(&["--collector.lifecycle.source=ebpf"])),
    ];
    let mut own: Vec<u16> = watched.iter().map(|w| w.exporter.addr.port()).collect();

    let script = repo().join("tests/scenarios/service_exit.py");
    let mut child: Child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", script.to_str().unwrap(), "50", "6", "5", "8"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let stdout = child.stdout.take().unwrap();
    let (tx, events) = mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).expect("a JSON event"));
        }
    });

    let mut accepted: BTreeMap<u16, u64> = BTreeMap::new();
    let mut done = false;
    let mut late: Option<Watched> = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(Instant::now() < deadline, "the run did not end");
        while let Ok(e) = events.try_recv() {
            match e["event"].as_str().unwrap() {
                "exited" => {
                    let port = e["port"].as_u64().unwrap() as u16;
                    accepted.insert(port, e["accepted"].as_u64().unwrap());
                    let when = format!("after run {} exited", e["run"]);
                    for w in &mut watched {
                        assert_leftovers_inbound(&ns, w, &own, port, &when);
                    }
                    if e["run"] == "b" {
                        // An exporter that never saw either listener: the port range and
                        // the shared endpoint decide.
                        let mut w = Watched::new("started after the exit", ns.exporter(&[]));
                        own.push(w.exporter.addr.port());
                        for &p in accepted.keys() {
                            assert_leftovers_inbound(&ns, &mut w, &own, p, "(never seen listening)");
                        }
                        late = Some(w);
                    }
                }
                "done" => done = true,
                _ => {}
            }
        }
        for w in watched.iter_mut().chain(late.as_mut()) {
            w.scrape(&ns, &own);
        }
        let service: Vec<u16> = accepted.keys().copied().collect();
        if done && !ss_any(&ns, &service) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(child.stdin.take());
    let _ = child.wait();
    assert_eq!(accepted.len(), 2, "both runs exited");

    for w in watched.iter_mut().chain(late.as_mut()) {
        assert!(
            w.peer_sets.len() <= MAX_PEER_SETS,
            "{}: {} network_connection_peers label sets over the run (at most {MAX_PEER_SETS}): {:#?}",
            w.name,
            w.peer_sets.len(),
            w.peer_sets
        );
        eprintln!("{}: {} peer label sets over the run", w.name, w.peer_sets.len());
    }
    // Every close of the service's connections: inbound on its port from its side,
    // outbound to its port from its clients', none labelled with a client's port, the
    // held ones (closed after their listener had gone) included.
    for w in &mut watched {
        let text = w.scrape(&ns, &own);
        let closed = "network_connections_closed_total";
        for (&port, &n) in &accepted {
            let p = port.to_string();
            let inbound = sum(&text, closed, |l| l["direction"] == "inbound" && l.get("source_port") == Some(&p));
            let outbound =
                sum(&text, closed, |l| l["direction"] == "outbound" && l.get("destination_port") == Some(&p));
            assert_eq!((inbound, outbound), (n, n), "{}: closes on :{port}\n{text}", w.name);
        }
        let strays: Vec<Labels> = samples(&text, closed)
            .into_iter()
            .map(|(l, _)| l)
            .filter(|l| ports(l).any(|p| !accepted.contains_key(&p) && !own.contains(&p)))
            .collect();
        assert!(strays.is_empty(), "{}: closes labelled with a client's port: {strays:#?}", w.name);
    }
}

/// The namespace's own `ip_local_port_range` decides, read in that namespace: one
/// connection whose listener went before the exporter started, the server on 45000
/// (inside Linux's default range, outside this namespace's 20000-20100) and its client on
/// a port of 20000-20100. With Linux's default both ports would be inside and the lone
/// socket a tie (outbound); with the namespace's range the server's socket is inbound.
/// Read from inside the namespace (`host` mode) and from another one (`all` mode, on the
/// namespace's thread).
#[test]
fn the_namespaces_own_port_range_decides_where_no_listener_does() {
    let root = Netns::new("connexp-range-root");
    let ns = Netns::new("connexp-range");
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 20100"]);
    let script = repo().join("tests/scenarios/listener_gone.py");
    let (_held, facts) = ns.hold(script.to_str().unwrap(), &["45000"]);
    let facts: serde_json::Value = serde_json::from_str(&facts).unwrap();
    let client = facts["client_port"].as_u64().unwrap();
    assert!((20000..=20100).contains(&client), "the client's port {client} is from the namespace's range");

    let inside = ns.exporter(&[]);
    let all = root.exporter(&["--collector.namespaces=all", "--collector.lifecycle.source=netlink"]);
    for (what, text) in [("host mode", ns.scrape(&inside, "")), ("all mode", root.scrape(&all, ""))] {
        let peers: Vec<Labels> = samples(&text, "network_connection_peers")
            .into_iter()
            .map(|(l, _)| l)
            .filter(|l| l.get("netns").is_none_or(|n| n == "connexp-range"))
            .filter(|l| ports(l).any(|p| p == 45000))
            .collect();
        let get = |d: &str, k: &str| {
            peers.iter().filter(|l| l["direction"] == d && l.get(k).map(String::as_str) == Some("45000")).count()
        };
        assert_eq!(
            (get("inbound", "source_port"), get("outbound", "destination_port")),
            (1, 1),
            "{what}: {peers:#?}\n{text}"
        );
    }
}
