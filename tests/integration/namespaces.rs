//! `--collector.namespaces=all` against the kernel: 20 namespaces made here, each with
//! its own veth (named `eth0` in every one) and sockets in several states; every socket
//! that `ip netns exec NS ss -tan` lists is in the scrape with that namespace's `netns`
//! label and the right `interface`, and none is attributed to another namespace.

use std::collections::BTreeMap;

use crate::ns::Netns;
use std::time::Duration;

use crate::util::{repo, samples, wait_for};

const NAMESPACES: usize = 20;

type Labels = BTreeMap<String, String>;
/// (state, local address, local port, remote address, remote port) -> sockets.
type Sockets = BTreeMap<(String, String, String, String, String), u64>;

fn endpoint(ep: &str) -> (String, String) {
    let (ip, port) = ep.rsplit_once(':').unwrap();
    let ip = ip.trim_start_matches('[').trim_end_matches(']').trim_start_matches("::ffff:");
    let ip = if ip == "*" { "0.0.0.0" } else { ip };
    (ip.to_owned(), if port == "*" { "0".to_owned() } else { port.to_owned() })
}

/// The sockets `ss -tanH` lists in a namespace, leaving out those on `skip_port`.
fn ss_sockets(ns: &Netns, skip_port: Option<u16>) -> Sockets {
    let mut out = Sockets::new();
    for line in ns.exec(&["ss", "-tanH"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let (la, lp) = endpoint(f[3]);
        let (ra, rp) = endpoint(f[4]);
        if skip_port.is_some_and(|p| lp == p.to_string() || rp == p.to_string()) {
            continue;
        }
        let state = match f[0] {
            "ESTAB" => "ESTABLISHED",
            "UNCONN" => "CLOSE",
            other => other,
        }
        .replace('-', "_")
        .replace("FIN_WAIT_", "FIN_WAIT");
        *out.entry((state, la, lp, ra, rp)).or_insert(0) += 1;
    }
    out
}

fn scraped(series: &[(Labels, f64)], netns: &str, skip_port: Option<u16>) -> Sockets {
    let mut out = Sockets::new();
    for (l, v) in series.iter().filter(|(l, _)| l["netns"] == netns) {
        let key = (
            l["state"].clone(),
            l["source_address"].clone(),
            l["source_port"].clone(),
            l["destination_address"].clone(),
            l["destination_port"].clone(),
        );
        if skip_port.is_some_and(|p| key.2 == p.to_string() || key.4 == p.to_string()) {
            continue;
        }
        *out.entry(key).or_insert(0) += *v as u64;
    }
    out
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn all_mode_from_the_ebpf_walk_labels_every_socket_of_twenty_namespaces() {
    twenty_namespaces("ebpf");
}

#[test]
fn all_mode_with_a_dump_per_namespace_labels_every_socket_of_twenty_namespaces() {
    twenty_namespaces("netlink");
}

/// Every socket of twenty namespaces, made before the exporter starts, read with
/// `--collector.namespaces.source=SOURCE`.
fn twenty_namespaces(source: &str) {
    let tag = &source[..2];
    // Tests run at once: each source's namespaces get addresses of their own.
    let net = if source == "ebpf" { 211 } else { 213 };
    let root = Netns::new(&format!("cxns{tag}-root"));
    let script = repo().join("tests/scenarios/netns_states.py");
    let mut spaces = Vec::new();
    for i in 0..NAMESPACES {
        let name = format!("cxns{tag}-{i:02}");
        let ns = Netns::new(&name);
        let host_side = format!("cxv{tag}{i:02}");
        root.exec(&["ip", "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns", &name]);
        root.exec(&["ip", "addr", "add", &format!("10.{net}.{i}.1/24"), "dev", &host_side]);
        root.exec(&["ip", "link", "set", &host_side, "up"]);
        let (addr, silent) = (format!("10.{net}.{i}.2"), format!("10.{net}.{i}.3"));
        ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ns.exec(&["ip", "link", "set", "eth0", "up"]);
        ns.exec(&["ip", "neigh", "add", &silent, "lladdr", "02:00:00:00:00:01", "dev", "eth0", "nud", "permanent"]);
        let (held, _) = ns.hold(script.to_str().unwrap(), &[&addr, &silent]);
        spaces.push((ns, held, addr));
    }
    // One namespace with a TCP table of its own: made from inside cxns-root after its
    // net.ipv4.tcp_child_ehash_entries is set (the host's setting stays as it is).
    root.exec(&["sysctl", "-qw", "net.ipv4.tcp_child_ehash_entries=1024"]);
    let own_table = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &root.0,
            "unshare",
            "--net",
            "sh",
            "-c",
            "cat /proc/sys/net/ipv4/tcp_ehash_entries; exec sleep 600",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut own_table = KillOnDrop(own_table);
    let mut size = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(own_table.0.stdout.as_mut().unwrap()), &mut size).unwrap();
    assert_eq!(size.trim(), "1024", "the child namespace has its own table");
    // No series limit: the machine's other namespaces (other tests' load) count against it too.
    let source_flag = format!("--collector.namespaces.source={source}");
    let e = root.exporter(&["--collector.namespaces=all", "--collector.connections.max-series=0", &source_flag]);
    let port = e.addr.port();

    let before: Vec<Sockets> = spaces.iter().map(|(ns, _, _)| ss_sockets(ns, None)).collect();
    let root_before = ss_sockets(&root, Some(port));
    let text = root.scrape(&e, "");
    let after: Vec<Sockets> = spaces.iter().map(|(ns, _, _)| ss_sockets(ns, None)).collect();
    assert_eq!(before, after, "the test's sockets are stable");
    assert_eq!(root_before, ss_sockets(&root, Some(port)), "the root namespace's sockets are stable");

    let info = samples(&text, "conn_exporter_socket_source_info");
    assert_eq!(info.len(), 1, "one socket source: {info:?}");
    assert_eq!(info[0].0["source"], source, "the socket source in use");
    let conns = samples(&text, "network_connections_info");
    let states = samples(&text, "network_connection_states");
    let listeners = samples(&text, "network_listen_queue_length");
    let peers = samples(&text, "network_connection_peers");
    for s in samples(&text, "conn_exporter_scrape_collector_success") {
        assert_eq!(s.1, 1.0, "{s:?}\n{text}");
    }
    // Every namespace made here shares the host's table (its tcp_ehash_entries reads
    // negative); the one made with tcp_child_ehash_entries does not, nor does the host.
    for (ns, _, _) in &spaces {
        let size = ns.exec(&["cat", "/proc/sys/net/ipv4/tcp_ehash_entries"]);
        assert!(size.trim().starts_with('-'), "{}: {size}", ns.0);
    }
    // Other tests' namespaces come and go meanwhile: the 20 made here are a lower bound
    // (the exclusion of own tables is checked in self_metrics' unit test).
    let sharing = samples(&text, "conn_exporter_namespaces_sharing_tcp_table");
    assert_eq!(sharing.len(), 1, "{text}");
    let sharing = sharing[0].1 as usize;
    assert!(sharing >= NAMESPACES, "the {NAMESPACES} namespaces made here share: {sharing}");
    // The exporter's own namespace is `host`, with the veths' host sides and no socket of
    // the others.
    assert_eq!(scraped(&conns, "host", Some(port)), root_before, "host namespace\n{text}");
    for ((ns, _, addr), want) in spaces.iter().zip(&before) {
        let name = &ns.0;
        // Every state the script makes is there, so a lost state is seen.
        for state in ["LISTEN", "ESTABLISHED", "FIN_WAIT2", "CLOSE_WAIT", "TIME_WAIT", "SYN_SENT"] {
            assert!(want.keys().any(|k| k.0 == state), "{name}: ss shows no {state}: {want:?}");
        }
        assert_eq!(&scraped(&conns, name, None), want, "{name}: network_connections_info against ss -tan");
        for (l, _) in conns.iter().filter(|(l, _)| &l["netns"] == name) {
            let want_iface = match l["source_address"].as_str() {
                "0.0.0.0" => "any",
                "127.0.0.1" => "lo",
                a if a == addr => "eth0",
                other => panic!("{name}: a socket on {other}, not this namespace's address: {l:?}"),
            };
            assert_eq!(l["interface"], want_iface, "{name}: {l:?}");
            assert_eq!((l["container_id"].as_str(), l["pod_uid"].as_str()), ("", ""), "{name}: {l:?}");
        }
        // This namespace's address appears under no other namespace.
        for (l, _) in &conns {
            if l["source_address"] == *addr || l["destination_address"] == *addr {
                assert_eq!(&l["netns"], name, "socket of {name} attributed elsewhere: {l:?}");
            }
        }
        // Exact counts by state and interface, from the same namespace's table.
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        for (k, n) in want {
            *by_state.entry(k.0.clone()).or_insert(0) += n;
        }
        let mut got: BTreeMap<String, u64> = BTreeMap::new();
        for (l, v) in states.iter().filter(|(l, v)| &l["netns"] == name && *v > 0.0) {
            *got.entry(l["state"].clone()).or_insert(0) += *v as u64;
        }
        assert_eq!(got, by_state, "{name}: network_connection_states against ss");
        let eth0_estab: f64 = states
            .iter()
            .filter(|(l, _)| &l["netns"] == name && l["interface"] == "eth0" && l["state"] == "ESTABLISHED")
            .map(|(_, v)| v)
            .sum();
        let ss_eth0_estab: u64 =
            want.iter().filter(|(k, _)| k.0 == "ESTABLISHED" && k.1 == *addr).map(|(_, n)| n).sum();
        assert!(ss_eth0_estab > 0, "{name}: the script's ESTABLISHED pair is on eth0: {want:?}");
        assert_eq!(eth0_estab as u64, ss_eth0_estab, "{name}: ESTABLISHED on eth0 against ss");
        // Peers: this namespace's non-listening sockets, classified against its listeners.
        let peer_sum: f64 = peers.iter().filter(|(l, _)| &l["netns"] == name).map(|(_, v)| v).sum();
        let non_listening: u64 = want.iter().filter(|(k, _)| k.0 != "LISTEN").map(|(_, n)| n).sum();
        assert_eq!(peer_sum as u64, non_listening, "{name}: network_connection_peers against ss");
        assert!(
            peers.iter().any(|(l, _)| &l["netns"] == name
                && l["direction"] == "inbound"
                && l.get("source_port").map(String::as_str) == Some("8080")
                && l["interface"] == "eth0"),
            "{name}: the inbound peers of its own listener on eth0"
        );
        let listening: Vec<_> = listeners.iter().filter(|(l, _)| &l["netns"] == name).collect();
        assert_eq!(listening.len(), 2, "{name}: two listeners: {listening:?}");
    }
}

#[test]
fn without_the_capabilities_all_mode_says_which_is_missing_and_serves_its_own_namespace() {
    without_the_capabilities("netlink");
}

#[test]
fn without_the_capabilities_all_mode_with_ebpf_says_which_is_missing_and_fails_lifecycle() {
    without_the_capabilities("ebpf");
}

/// With `--collector.lifecycle.source=SOURCE`.
fn without_the_capabilities(source: &str) {
    let root = Netns::new(&format!("cxcap-{source}-root"));
    let other = Netns::new(&format!("cxcap-{source}-other"));
    let script = repo().join("tests/scenarios/netns_states.py");
    root.exec(&["ip", "addr", "add", "10.212.0.2/24", "dev", "lo"]);
    other.exec(&["ip", "addr", "add", "10.212.1.2/24", "dev", "lo"]);
    let (_held, _) = other.hold(script.to_str().unwrap(), &["10.212.1.2", "10.212.1.3"]);
    // Root without CAP_SYS_ADMIN and CAP_SYS_PTRACE (gone from the bounding set before
    // exec, so neither is permitted).
    let e = crate::util::Exporter::start_with(
        &[
            "ip",
            "netns",
            "exec",
            &root.0,
            "setpriv",
            "--bounding-set=-sys_admin,-sys_ptrace",
            "--inh-caps=-sys_admin,-sys_ptrace",
            crate::util::binary(),
        ],
        &["--collector.namespaces=all", &format!("--collector.lifecycle.source={source}")],
    );
    let said = e.wait_log("missing CAP_SYS_ADMIN and CAP_SYS_PTRACE");
    assert!(said.contains("--collector.namespaces=all"), "{said}");
    let text = root.scrape(&e, "");
    // Every collector fails, lifecycle too once it has tried to subscribe in the others.
    let success = samples(&text, "conn_exporter_scrape_collector_success");
    for name in ["connections", "states", "peers", "listeners"] {
        let got: Vec<f64> = success.iter().filter(|(l, _)| l["collector"] == name).map(|(_, v)| *v).collect();
        assert_eq!(got, vec![0.0], "{name}: a namespace could not be entered\n{text}");
    }
    let conns = samples(&text, "network_connections_info");
    let port = e.addr.port().to_string();
    assert!(
        conns.iter().any(|(l, _)| l["netns"] == "host" && l["source_port"] == port && l["state"] == "LISTEN"),
        "its own namespace is still served:\n{text}"
    );
    assert!(!conns.iter().any(|(l, _)| l["netns"] == other.0), "no namespace it could not enter:\n{text}");
    e.wait_log("needs CAP_SYS_ADMIN");
    // The eBPF program counts every namespace, but the interfaces of one it cannot enter
    // are unknown.
    let said = e.wait_log(if source == "ebpf" {
        "cannot read the interfaces of network namespace"
    } else {
        "cannot subscribe in network namespace"
    });
    assert!(said.contains("needs CAP_SYS_ADMIN"), "{said}");
    let text = wait_for(Duration::from_secs(10), "lifecycle success 0", || {
        let t = root.scrape(&e, "");
        samples(&t, "conn_exporter_scrape_collector_success")
            .iter()
            .any(|(l, v)| l["collector"] == "lifecycle" && *v == 0.0)
            .then_some(t)
    });
    // Its own namespace is still subscribed and counted.
    assert_eq!(samples(&text, "conn_exporter_lifecycle_namespaces"), vec![(Default::default(), 1.0)], "{text}");
}
