//! Truth tests on the live kernel: sockets the test opens, compared with `ss -tanH` taken
//! around the scrape; interface labels for addresses that appear after start-up.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::ns::Netns;
use crate::util::{binary, require_tool, run, samples, serial, Exporter};

type Tuple = (String, SocketAddr, SocketAddr);

fn ss_state(s: &str) -> String {
    match s {
        "ESTAB" => "ESTABLISHED".into(),
        "UNCONN" => "CLOSE".into(),
        other => other.replace("FIN-WAIT-", "FIN_WAIT").replace('-', "_"),
    }
}

/// `127.0.0.1:22`, `[::1]:22`, `[fe80::1]%eth0:22`, `0.0.0.0:*`, `[::]:*`, and `*:22`,
/// which is how ss writes the wildcard of a dual-stack (not V6ONLY) IPv6 socket.
fn ss_addr(s: &str) -> SocketAddr {
    let (host, port) = s.rsplit_once(':').unwrap();
    let host = host.split('%').next().unwrap().trim_start_matches('[').trim_end_matches(']');
    let host = if host == "*" { "::" } else { host };
    let port = if port == "*" { 0 } else { port.parse().unwrap() };
    SocketAddr::new(host.parse().unwrap(), port)
}

fn ss() -> Vec<Tuple> {
    let ss = require_tool("ss");
    let (code, out, err) = run(Command::new(ss).arg("-tanH"));
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (ss_state(f[0]), ss_addr(f[3]), ss_addr(f[4]))
        })
        .collect()
}

fn scraped(text: &str) -> BTreeMap<Tuple, (f64, String)> {
    samples(text, "network_connections_info")
        .into_iter()
        .map(|(l, v)| {
            let addr = |a: &str, p: &str| SocketAddr::new(l[a].parse::<IpAddr>().unwrap(), l[p].parse().unwrap());
            (
                (
                    l["state"].clone(),
                    addr("source_address", "source_port"),
                    addr("destination_address", "destination_port"),
                ),
                (v, l["interface"].clone()),
            )
        })
        .collect()
}

fn reuseport_listener(addr: SocketAddr) -> Socket {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(16).unwrap();
    s
}

fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

fn wildcard(like: SocketAddr) -> SocketAddr {
    match like {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        SocketAddr::V6(_) => "[::]:0".parse().unwrap(),
    }
}

fn mapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

#[test]
fn every_socket_matches_ss_and_the_opened_ones_are_labelled_right() {
    let _serial = serial();
    for source in ["netlink", "procfs"] {
        truth_test(source);
    }
}

fn truth_test(source: &str) {
    let mut expect: Vec<(Tuple, &str)> = Vec::new();

    let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let a4 = l4.local_addr().unwrap();
    expect.push((("LISTEN".into(), a4, wildcard(a4)), "lo"));
    let (c4, s4) = pair(&l4);
    expect.push((("ESTABLISHED".into(), c4.local_addr().unwrap(), a4), "lo"));
    expect.push((("ESTABLISHED".into(), a4, c4.local_addr().unwrap()), "lo"));

    let l6 = TcpListener::bind("[::1]:0").unwrap();
    let a6 = l6.local_addr().unwrap();
    expect.push((("LISTEN".into(), a6, wildcard(a6)), "lo"));
    let (c6, s6) = pair(&l6);
    expect.push((("ESTABLISHED".into(), c6.local_addr().unwrap(), a6), "lo"));

    // An IPv4 client of a dual-stack listener: the server side is IPv4-mapped.
    let dual = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
    dual.set_only_v6(false).unwrap();
    dual.bind(&"[::]:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    dual.listen(16).unwrap();
    let dual_addr = dual.local_addr().unwrap().as_socket().unwrap();
    expect.push((("LISTEN".into(), dual_addr, wildcard(dual_addr)), "any"));
    let cd = TcpStream::connect(("127.0.0.1", dual_addr.port())).unwrap();
    let (sd, _) = dual.accept().unwrap();
    expect.push((
        ("ESTABLISHED".into(), mapped(sd.local_addr().unwrap().as_socket().unwrap()), mapped(cd.local_addr().unwrap())),
        "lo",
    ));

    // Two SO_REUSEPORT listeners: one label set, value 2.
    let r1 = reuseport_listener("127.0.0.1:0".parse().unwrap());
    let raddr = r1.local_addr().unwrap().as_socket().unwrap();
    let r2 = reuseport_listener(raddr);
    let reuse_key: Tuple = ("LISTEN".into(), raddr, wildcard(raddr));

    // Half-closed: the client sent FIN (FIN_WAIT2), the server has not (CLOSE_WAIT).
    let (hc, hs) = pair(&l4);
    hc.shutdown(Shutdown::Write).unwrap();
    expect.push((("FIN_WAIT2".into(), hc.local_addr().unwrap(), a4), "lo"));
    expect.push((("CLOSE_WAIT".into(), a4, hc.local_addr().unwrap()), "lo"));

    // TIME_WAIT: the client closes first, then the server.
    let (tc, mut ts) = pair(&l4);
    let tw_local = tc.local_addr().unwrap();
    drop(tc);
    let mut sink = Vec::new();
    ts.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ts.read_to_end(&mut sink).unwrap();
    drop(ts);
    expect.push((("TIME_WAIT".into(), tw_local, a4), "lo"));

    let exporter =
        Exporter::start(&["--collector.connections.max-series=0", &format!("--collector.connections.source={source}")]);
    assert!(exporter.log_text().contains(&format!("sockets from {source}")), "{}", exporter.log_text());
    // Let the handshakes and FINs settle before the comparison.
    let missing = || {
        let now: BTreeSet<Tuple> = ss().into_iter().collect();
        expect.iter().filter(|(t, _)| !now.contains(t)).map(|(t, _)| t.clone()).collect::<Vec<_>>()
    };
    let settled = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        missing().is_empty()
    });
    assert!(settled, "opened sockets not in ss: {:?}\n{:?}", missing(), ss());

    let before = ss();
    let text = exporter.scrape();
    let after = ss();
    let series = scraped(&text);

    for (tuple, iface) in &expect {
        let (_, got_iface) =
            series.get(tuple).unwrap_or_else(|| panic!("opened socket {tuple:?} missing from the scrape"));
        assert_eq!(got_iface, iface, "{tuple:?}");
    }
    let (value, iface) = &series[&reuse_key];
    assert_eq!((*value, iface.as_str()), (2.0, "lo"), "two SO_REUSEPORT listeners are one series of value 2");
    assert_eq!(before.iter().filter(|t| **t == reuse_key).count(), 2, "ss sees both listeners");

    // Every socket present in both ss runs is in the scrape, with its multiplicity.
    let count = |v: &[Tuple]| {
        let mut m: BTreeMap<Tuple, usize> = BTreeMap::new();
        for t in v {
            *m.entry(t.clone()).or_default() += 1;
        }
        m
    };
    let (b, a) = (count(&before), count(&after));
    let stable: Vec<(&Tuple, usize)> = b.iter().filter_map(|(t, n)| a.get(t).map(|m| (t, (*n).min(*m)))).collect();
    let mut matched = 0;
    for (t, n) in &stable {
        let got = series.get(*t).map_or(0.0, |s| s.0);
        assert!(got >= *n as f64, "{t:?}: ss shows {n} before and after the scrape, the scrape {got}");
        matched += 1;
    }
    // And the scrape holds nothing ss did not show on one side or the other, save the
    // scrape's own connection.
    let seen: BTreeSet<(SocketAddr, SocketAddr)> = before.iter().chain(&after).map(|t| (t.1, t.2)).collect();
    let port = exporter.addr.port();
    for t in series.keys() {
        if t.1.port() == port || t.2.port() == port {
            continue;
        }
        assert!(seen.contains(&(t.1, t.2)), "{t:?} is in the scrape but in neither ss run");
    }
    let total: f64 = series.values().map(|s| s.0).sum();
    // The aggregate, state by state, lies between what ss counted before and after the
    // scrape; the scrape's own connection (two ESTABLISHED sockets) is in neither run.
    let mut by_state: BTreeMap<String, f64> = BTreeMap::new();
    for (labels, value) in samples(&text, "network_connection_states") {
        *by_state.entry(labels["state"].clone()).or_default() += value;
    }
    let ss_count = |v: &[Tuple], state: &str| v.iter().filter(|t| t.0 == state).count() as f64;
    let states: BTreeSet<&String> = by_state.keys().chain(before.iter().chain(&after).map(|t| &t.0)).collect();
    for state in states {
        let (b, a) = (ss_count(&before, state), ss_count(&after, state));
        let own = if state == "ESTABLISHED" { 2.0 } else { 0.0 };
        let got = by_state.get(state).copied().unwrap_or(0.0);
        assert!(
            b.min(a) <= got && got <= b.max(a) + own,
            "network_connection_states{{state={state:?}}} sums to {got}; ss counted {b} before and {a} after"
        );
    }
    eprintln!(
        "truth test ({source}): {matched}/{} stable sockets matched, {} series, {total} sockets",
        stable.len(),
        series.len()
    );
    drop((c4, s4, c6, s6, cd, sd, dual, r1, r2, hc, hs));
}

#[test]
fn netlink_and_procfs_give_the_same_series() {
    let _serial = serial();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let pairs: Vec<_> = (0..20).map(|_| pair(&listener)).collect();
    let l6 = TcpListener::bind("[::1]:0").unwrap();
    let pairs6: Vec<_> = (0..5).map(|_| pair(&l6)).collect();
    let netlink = Exporter::start(&["--collector.connections.max-series=0", "--collector.connections.source=netlink"]);
    let procfs = Exporter::start(&["--collector.connections.max-series=0", "--collector.connections.source=procfs"]);
    let ports = [netlink.addr.port(), procfs.addr.port()];
    let series = |e: &Exporter| -> BTreeMap<Tuple, (f64, String)> {
        scraped(&e.scrape())
            .into_iter()
            .filter(|(t, _)| !ports.contains(&t.1.port()) && !ports.contains(&t.2.port()))
            .collect()
    };
    let (n1, p, n2) = (series(&netlink), series(&procfs), series(&netlink));
    let stable: BTreeMap<&Tuple, &(f64, String)> = n1.iter().filter(|(t, v)| n2.get(*t) == Some(*v)).collect();
    for (t, v) in &stable {
        assert_eq!(p.get(*t), Some(*v), "{t:?}: netlink {v:?} twice, procfs {:?}", p.get(*t));
    }
    for t in p.keys() {
        assert!(n1.contains_key(t) || n2.contains_key(t), "{t:?} only in procfs");
    }
    assert!(stable.len() >= 2 * 25 + 2, "our sockets are in: {}", stable.len());
    drop((pairs, pairs6));
}

#[test]
fn an_address_added_after_start_is_labelled_with_its_interface() {
    let ns = Netns::new("connexp-test-iface");
    let bin = binary();
    let exporter = Exporter::start_with(&["ip", "netns", "exec", &ns.0, bin], &[]);
    ns.exec(&["ip", "link", "add", "vx7", "type", "veth", "peer", "name", "vx8"]);
    ns.exec(&["ip", "link", "set", "vx7", "up"]);
    ns.exec(&["ip", "link", "set", "vx8", "up"]);
    ns.exec(&["ip", "addr", "add", "10.200.0.1/24", "dev", "vx7"]);
    ns.exec(&["ip", "addr", "add", "fd42::1/64", "dev", "vx7", "nodad"]);
    let mut listener = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c"])
        .arg("import socket,time\nfor a,f in (('10.200.0.1',socket.AF_INET),('fd42::1',socket.AF_INET6)):\n s=socket.socket(f); s.bind((a,7777)); s.listen(); globals()[a]=s\nprint('ok',flush=True); time.sleep(60)")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 2];
    listener.stdout.as_mut().unwrap().read_exact(&mut ready).unwrap();
    let url = format!("http://{}/metrics", exporter.addr);
    let text = ns.exec(&["curl", "-sf", &url]);
    let _ = listener.kill();
    let _ = listener.wait();
    let labels: BTreeMap<String, String> = samples(&text, "network_connections_info")
        .into_iter()
        .filter(|(l, _)| l["source_port"] == "7777")
        .map(|(l, _)| (l["source_address"].clone(), l["interface"].clone()))
        .collect();
    assert_eq!(labels.get("10.200.0.1").map(String::as_str), Some("vx7"), "{text}");
    assert_eq!(labels.get("fd42::1").map(String::as_str), Some("vx7"), "{text}");
    // The namespace's own sockets only: the two listeners, the exporter's, and the scrape.
    let port = exporter.addr.port().to_string();
    for (l, _) in samples(&text, "network_connections_info") {
        assert!([&l["source_port"], &l["destination_port"]].iter().any(|p| **p == "7777" || **p == port), "{l:?}");
    }
}
