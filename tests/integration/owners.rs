//! `--collector.connections.owner` against `ss -tanp`: every socket's `process` label is
//! the command of the lowest pid `ss` names as its user, a socket shared by a parent and
//! its forked child included; sockets no process holds (TIME_WAIT) have `process=""`.

use std::collections::BTreeMap;

use crate::ns::Netns;
use crate::util::{repo, samples};

/// (state, local, remote) -> the users `ss -tanpH` names, as (pid, comm), sorted by pid.
type Users = BTreeMap<(String, String, String), Vec<(u32, String)>>;

fn ss_users(ns: &Netns, skip_port: u16) -> Users {
    let mut out = Users::new();
    for line in ns.exec(&["ss", "-tanpH"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let port = |ep: &str| ep.rsplit(':').next().unwrap_or("").to_owned();
        // The scrape's own connection comes and goes; the exporter's listener stays.
        if f[0] != "LISTEN" && (port(f[3]) == skip_port.to_string() || port(f[4]) == skip_port.to_string()) {
            continue;
        }
        let remote = f[4].replace('*', "0");
        let state = match f[0] {
            "ESTAB" => "ESTABLISHED".to_owned(),
            s => s.replace('-', "_").replace("FIN_WAIT_", "FIN_WAIT"),
        };
        let mut users = Vec::new();
        // users:(("cx-parent",pid=10,fd=3),("cx-child",pid=11,fd=3))
        for u in line.split("((").nth(1).unwrap_or("").split("),(") {
            let name = u.split('"').nth(1);
            let pid = u.split("pid=").nth(1).and_then(|p| p.split(',').next()).and_then(|p| p.parse().ok());
            if let (Some(name), Some(pid)) = (name, pid) {
                users.push((pid, name.to_owned()));
            }
        }
        users.sort();
        out.insert((state, f[3].to_owned(), remote), users);
    }
    out
}

#[test]
fn process_labels_equal_the_lowest_pid_user_that_ss_names() {
    let ns = Netns::new("cxown");
    let (_held, facts) = ns.hold(repo().join("tests/scenarios/owners.py").to_str().unwrap(), &[]);
    let facts: serde_json::Value = serde_json::from_str(&facts).unwrap();
    let e = ns.exporter(&["--collector.connections.owner"]);
    let port = e.addr.port();
    let before = ss_users(&ns, port);
    let text = ns.scrape(&e, "");
    assert_eq!(before, ss_users(&ns, port), "the test's sockets are stable");

    let mut got = BTreeMap::new();
    for (l, _) in samples(&text, "network_connections_info") {
        let ep = |a: &str, p: &str| format!("{a}:{}", if p == "0" { "0" } else { p });
        let local = ep(&l["source_address"], &l["source_port"]);
        if l["state"] != "LISTEN" && (l["source_port"] == port.to_string() || l["destination_port"] == port.to_string())
        {
            continue;
        }
        let remote = ep(&l["destination_address"], &l["destination_port"]);
        assert!(l.contains_key("systemd_unit"), "{l:?}");
        got.insert((l["state"].clone(), local, remote), l["process"].clone());
    }
    let want: BTreeMap<_, _> =
        before.iter().map(|(k, users)| (k.clone(), users.first().map_or(String::new(), |u| u.1.clone()))).collect();
    assert_eq!(got, want, "process labels against ss -tanp\n{text}");

    // The cases the scenario made are all there.
    let parent = facts["parent"].as_u64().unwrap() as u32;
    let child = facts["child"].as_u64().unwrap() as u32;
    let shared = &before[&("LISTEN".to_owned(), "127.0.0.1:7070".to_owned(), "0.0.0.0:0".to_owned())];
    assert_eq!(
        shared.iter().map(|u| u.0).collect::<Vec<_>>(),
        vec![parent, child],
        "the listener is shared: {shared:?}"
    );
    assert_eq!(got[&("LISTEN".to_owned(), "127.0.0.1:7070".to_owned(), "0.0.0.0:0".to_owned())], "cx-parent");
    assert!(got.values().any(|p| p == "cx-child"), "the child's own connection: {got:?}");
    assert!(got.iter().any(|(k, p)| k.0 == "TIME_WAIT" && p.is_empty()), "a TIME_WAIT socket has no owner: {got:?}");
    assert_eq!(got[&("LISTEN".to_owned(), format!("127.0.0.1:{port}"), "0.0.0.0:0".to_owned())], "conn-exporter");
    // The listener families carry the owner too.
    let l = samples(&text, "network_listen_queue_length");
    assert!(l.iter().any(|(l, _)| l["source_port"] == "7070" && l["process"] == "cx-parent"), "{l:?}");
}

/// (state, local, remote) -> `process`, of the sockets in a scrape (the scrape's own
/// connection left out, as in [`ss_users`]).
fn scraped_owners(text: &str, port: u16) -> BTreeMap<(String, String, String), String> {
    let mut got = BTreeMap::new();
    for (l, _) in samples(text, "network_connections_info") {
        if l["state"] != "LISTEN" && (l["source_port"] == port.to_string() || l["destination_port"] == port.to_string())
        {
            continue;
        }
        let local = format!("{}:{}", l["source_address"], l["source_port"]);
        let remote = format!("{}:{}", l["destination_address"], l["destination_port"]);
        got.insert((l["state"].clone(), local, remote), l["process"].clone());
    }
    got
}

/// Every process is re-read at least once every 16 scrapes (README, "Every namespace,
/// every owner"); a socket that moved between two living processes is seen within two
/// such cycles.
const BOUND: usize = 2 * 16;

#[test]
fn owners_follow_processes_that_exit_and_sockets_that_move_within_the_bound() {
    let ns = Netns::new("cxmove");
    let (mut held, facts) = ns.hold(repo().join("tests/scenarios/owners_moves.py").to_str().unwrap(), &[]);
    let facts: serde_json::Value = serde_json::from_str(&facts).unwrap();
    let e = ns.exporter(&["--collector.connections.owner"]);
    let port = e.addr.port();
    let lowest = |users: Users| -> BTreeMap<_, _> {
        users.into_iter().map(|(k, u)| (k, u.first().map_or(String::new(), |u| u.1.clone()))).collect()
    };
    let listener = ("LISTEN".to_owned(), "127.0.0.1:7071".to_owned(), "0.0.0.0:0".to_owned());
    let want = lowest(ss_users(&ns, port));
    let mut before = scraped_owners(&ns.scrape(&e, ""), port);
    assert_eq!(before, want, "the first scrape");
    assert_eq!(before[&listener], "cx-parent", "parent pid {} < child pid {}", facts["parent"], facts["child"]);

    for cmd in ["exit", "pass"] {
        held.command(cmd);
        let want = lowest(ss_users(&ns, port));
        let mut scrapes = 0;
        let got = loop {
            scrapes += 1;
            let got = scraped_owners(&ns.scrape(&e, ""), port);
            assert_eq!(lowest(ss_users(&ns, port)), want, "{cmd}: the test's sockets are stable");
            // Until corrected, a socket shows its old owner or none, never another.
            for (k, p) in &got {
                let ok = p.is_empty() || Some(p) == want.get(k) || Some(p) == before.get(k);
                assert!(
                    ok,
                    "{cmd}, scrape {scrapes}: {k:?} has process {p:?}; ss: {:?}, before: {:?}",
                    want.get(k),
                    before.get(k)
                );
            }
            if got == want || scrapes == BOUND {
                break got;
            }
        };
        assert_eq!(got, want, "{cmd}: still wrong after {scrapes} scrapes");
        eprintln!("{cmd}: owners equal ss -tanp after {scrapes} scrape(s)");
        before = got;
    }
    assert_eq!(before[&listener], "cx-child");
    assert!(
        before.iter().any(|(k, p)| k.0 == "ESTABLISHED" && k.1 == "127.0.0.1:7071" && p == "cx-top"),
        "the passed socket is cx-top's: {before:?}"
    );
}
