//! The peers and listeners families against the facts of sockets the test opens in a
//! namespace of its own: direction in every classification case, totals equal to `ss`,
//! listener queues equal to `ss -lnt`.

use std::collections::BTreeMap;

use crate::ns::Netns;
use crate::util::{repo, samples};

/// Non-listening sockets by state label, as `ss -tanH` lists them, leaving out those on
/// `skip_port` (the scrape's own connection).
fn ss_states(ns: &Netns, skip_port: u16) -> BTreeMap<String, u64> {
    let mut by_state = BTreeMap::new();
    for line in ns.exec(&["ss", "-tanH"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[0] == "LISTEN" {
            continue;
        }
        let port = |ep: &str| ep.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        if port(f[3]) == Some(skip_port) || port(f[4]) == Some(skip_port) {
            continue;
        }
        let state = match f[0] {
            "ESTAB" => "ESTABLISHED",
            "TIME-WAIT" => "TIME_WAIT",
            "SYN-SENT" => "SYN_SENT",
            "SYN-RECV" => "SYN_RECV",
            "FIN-WAIT-1" => "FIN_WAIT1",
            "FIN-WAIT-2" => "FIN_WAIT2",
            "CLOSE-WAIT" => "CLOSE_WAIT",
            "LAST-ACK" => "LAST_ACK",
            other => other,
        };
        *by_state.entry(state.to_owned()).or_insert(0) += 1;
    }
    by_state
}

type Labels = BTreeMap<String, String>;

fn sum(series: &[(Labels, f64)], keep: impl Fn(&Labels) -> bool) -> u64 {
    series.iter().filter(|(l, _)| keep(l)).map(|(_, v)| *v as u64).sum()
}

#[test]
fn peers_and_listener_queues_match_the_sockets_opened_and_ss() {
    let ns = Netns::new("connexp-peers");
    let (_held, facts) = ns.hold(repo().join("tests/scenarios/peers.py").to_str().unwrap(), &[]);
    let facts: serde_json::Value = serde_json::from_str(&facts).unwrap();
    for source in ["netlink", "procfs"] {
        let e = ns.exporter(&[&format!("--collector.connections.source={source}")]);
        let port = e.addr.port();
        let before = ss_states(&ns, port);
        let text = ns.scrape(&e, "");
        let after = ss_states(&ns, port);
        assert_eq!(before, after, "the test's sockets are stable");

        let own = |l: &Labels| {
            l.get("source_port") == Some(&port.to_string()) || l.get("destination_port") == Some(&port.to_string())
        };
        let peers: Vec<(Labels, f64)> =
            samples(&text, "network_connection_peers").into_iter().filter(|(l, _)| !own(l)).collect();
        // Totals by state: exactly the non-listening sockets ss lists.
        let mut by_state = BTreeMap::new();
        for (l, v) in &peers {
            *by_state.entry(l["state"].clone()).or_insert(0u64) += *v as u64;
        }
        assert_eq!(by_state, before, "{source}: peers by state against ss -tan\n{text}");

        // Direction, per service port, against what the scenario made.
        for (direction, port_label) in [("inbound", "source_port"), ("outbound", "destination_port")] {
            for (service, n) in facts[direction].as_object().unwrap() {
                let got = sum(&peers, |l| {
                    l["direction"] == direction && l.get(port_label) == Some(service) && l["state"] != "TIME_WAIT"
                });
                assert_eq!(got, n.as_u64().unwrap(), "{source}: {direction} to port {service}\n{text}");
            }
        }
        // The ephemeral side is folded: no inbound series names the client's port, no
        // outbound one names the local port.
        for (l, _) in &peers {
            match l["direction"].as_str() {
                "inbound" => assert!(!l.contains_key("destination_port"), "{l:?}"),
                "outbound" => assert!(!l.contains_key("source_port"), "{l:?}"),
                d => panic!("direction {d:?}"),
            }
        }
        // Dual stack: the IPv4 clients of [::]:7003 are inbound with their mapped address.
        assert_eq!(
            sum(&peers, |l| l["direction"] == "inbound"
                && l["source_port"] == "7003"
                && l["source_address"] == "::ffff:127.0.0.1"),
            2,
            "{source}\n{text}"
        );
        // The client bound to 127.0.0.1:7006 (127.0.0.3:7006 listens) is no inbound peer.
        assert_eq!(sum(&peers, |l| l.get("source_port").map(String::as_str) == Some("7006")), 0, "{text}");
        // TIME_WAIT on both sides of port 7005.
        let tw = &facts["time_wait"];
        for direction in ["inbound", "outbound"] {
            let got = sum(&peers, |l| {
                l["state"] == "TIME_WAIT"
                    && l["direction"] == direction
                    && (l.get("source_port").or(l.get("destination_port")).map(String::as_str) == Some("7005"))
            });
            assert_eq!(got, tw[direction].as_u64().unwrap(), "{source}: TIME_WAIT {direction}\n{text}");
        }

        // Listener queues against the scenario and against ss -lnt.
        let q = &facts["queue"];
        let qport = q["port"].as_u64().unwrap().to_string();
        let ss_line = ns
            .exec(&["ss", "-ltnH"])
            .lines()
            .find(|l| l.split_whitespace().nth(3) == Some(&format!("127.0.0.1:{qport}")))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("ss -ltn shows no listener on {qport}"));
        let ss_fields: Vec<&str> = ss_line.split_whitespace().collect();
        let queue = |name: &str| {
            samples(&text, name)
                .into_iter()
                .find(|(l, _)| l["source_port"] == qport && l["source_address"] == "127.0.0.1")
                .map(|(_, v)| v as u64)
        };
        assert_eq!(queue("network_listen_queue_length"), q["length"].as_u64(), "{source}\n{text}");
        assert_eq!(ss_fields[1], q["length"].to_string(), "ss Recv-Q: {ss_line}");
        if source == "netlink" {
            assert_eq!(queue("network_listen_queue_limit"), q["limit"].as_u64(), "{text}");
            assert_eq!(ss_fields[2], q["limit"].to_string(), "ss Send-Q: {ss_line}");
        } else {
            // /proc/net/tcp does not carry the backlog limit: no series rather than a wrong one.
            assert!(samples(&text, "network_listen_queue_limit").is_empty(), "{text}");
        }

        // A peers-only scrape builds no per-connection series and gives the same peers.
        let only = ns.scrape(&e, "?collect[]=peers");
        assert!(samples(&only, "network_connections_info").is_empty());
        let again: Vec<(Labels, f64)> =
            samples(&only, "network_connection_peers").into_iter().filter(|(l, _)| !own(l)).collect();
        assert_eq!(again, peers, "{source}: a peers-only scrape counts the same");
    }
}

#[test]
fn the_peers_bound_merges_remotes_into_other_and_keeps_the_sum() {
    let ns = Netns::new("connexp-peers-bound");
    // 40 client addresses, one connection each, plus one client with 5: a bound of 10
    // keeps the biggest and merges the rest.
    let script = "import socket,sys,json\n\
held=[]\n\
l=socket.socket(); l.bind(('127.0.0.1',7100)); l.listen(256); held.append(l)\n\
def conn(src):\n    c=socket.socket(); c.bind((src,0)); c.connect(('127.0.0.1',7100)); held.append(c); held.append(l.accept()[0])\n\
for i in range(40): conn('127.0.1.%d' % (i+1))\n\
for _ in range(5): conn('127.0.2.1')\n\
print(json.dumps({'sockets': 90}), flush=True)\n\
sys.stdin.read()\n";
    let path = std::env::temp_dir().join("connexp-peers-bound.py");
    std::fs::write(&path, script).unwrap();
    let (_held, _) = ns.hold(path.to_str().unwrap(), &[]);
    let e = ns.exporter(&["--collector.peers.max-series=10"]);
    let port = e.addr.port().to_string();
    let text = ns.scrape(&e, "?collect[]=peers&collect[]=states");
    let peers: Vec<(Labels, f64)> = samples(&text, "network_connection_peers")
        .into_iter()
        .filter(|(l, _)| l.get("source_port") != Some(&port) && l.get("destination_port") != Some(&port))
        .collect();
    let all = samples(&text, "network_connection_peers");
    assert!(all.len() <= 10, "{} series past the bound\n{text}", all.len());
    // 90 sockets of the script and the scrape's own two (merged too, so not filtered).
    assert_eq!(sum(&all, |_| true), 92, "merged, not lost\n{text}");
    assert_eq!(
        sum(&peers, |l| l["destination_address"] == "127.0.2.1" && l["direction"] == "inbound"),
        5,
        "the biggest remote is kept\n{text}"
    );
    assert!(sum(&peers, |l| l["destination_address"] == "other") > 0, "{text}");
    let merged = samples(&text, "conn_exporter_peers_merged_series");
    assert!(merged.len() == 1 && merged[0].1 > 0.0, "{text}");
    // Against the states family of the same scrape (every non-listening socket).
    let states = samples(&text, "network_connection_states");
    let non_listening = sum(&states, |l| l["state"] != "LISTEN");
    assert_eq!(sum(&all, |_| true), non_listening, "{text}");
}
