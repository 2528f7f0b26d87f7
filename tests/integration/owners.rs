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
