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

/// A server (comm `cx-psrv`) and two clients (`cx-pcli-a` with 3 connections, `cx-pcli-b`
/// with 2) holding connections to it; on `go`, a third client (`cx-pcli-c`) makes
/// SHORT connections that the server closes after reading to the end.
const SERVER_AND_CLIENTS: &str = r#"
import ctypes, json, os, signal, socket, sys, threading

def comm(name):
    with open("/proc/self/comm", "w") as f:
        f.write(name)

comm("cx-psrv")
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
port = srv.getsockname()[1]
held = []

def serve():
    while True:
        s, _ = srv.accept()
        if s.recv(1) == b"h":
            held.append(s)
            continue
        while s.recv(4096):
            pass
        s.close()

threading.Thread(target=serve, daemon=True).start()

def client(name, n, short, done):
    pid = os.fork()
    if pid:
        return pid
    comm(name)
    # PR_SET_PDEATHSIG: go with the server, however it ends.
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    # Not the server's: a client killed with it must not keep its listener open.
    srv.close()
    for s in held:
        s.close()
    conns = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        if short:
            c.sendall(b"s")
            c.shutdown(socket.SHUT_WR)
            while c.recv(4096):
                pass
            c.close()
        else:
            c.sendall(b"h")
            conns.append(c)
    os.write(done, b"x")
    # Standard input is the server's: a client holds its connections until killed.
    while not short:
        signal.pause()
    os._exit(0)

r, w = os.pipe()
kids = [client("cx-pcli-a", 3, False, w), client("cx-pcli-b", 2, False, w)]
os.read(r, 1); os.read(r, 1)
while len(held) < 5:
    threading.Event().wait(0.01)
print(json.dumps({"port": port}), flush=True)
if not sys.stdin.readline():
    for k in kids:
        os.kill(k, 15)
    sys.exit(0)
short = int(sys.argv[1])
pid = client("cx-pcli-c", short, True, w)
os.read(r, 1)
os.waitpid(pid, 0)
print(json.dumps({"short": short}), flush=True)
sys.stdin.read()
for k in kids:
    os.kill(k, 15)
"#;

/// (direction, local address, service port, remote address, state, process) -> sockets.
type PeerCounts = BTreeMap<(String, String, String, String, String, String), u64>;

#[test]
fn peers_split_by_the_process_ss_names_and_inbound_closes_take_the_listeners_owner() {
    let ns = Netns::new("cxown-peers");
    let e = ns.exporter(&["--collector.connections.owner"]);
    let port = e.addr.port();
    let mut script = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut script, SERVER_AND_CLIENTS.as_bytes()).unwrap();
    let short = 40u64;
    let (mut held, facts) = ns.hold(script.path().to_str().unwrap(), &[&short.to_string()]);
    let facts: serde_json::Value = serde_json::from_str(&facts).unwrap();
    let service = facts["port"].to_string();

    // The peers ss -tanp implies: direction from its listeners, process its lowest pid.
    let users = ss_users(&ns, port);
    let split = |ep: &str| {
        let (a, p) = ep.rsplit_once(':').unwrap();
        (a.to_owned(), p.to_owned())
    };
    let listening: Vec<(String, String)> = users.keys().filter(|k| k.0 == "LISTEN").map(|k| split(&k.1)).collect();
    let mut want = PeerCounts::new();
    for ((state, local, remote), u) in &users {
        if state == "LISTEN" {
            continue;
        }
        let ((la, lp), (ra, rp)) = (split(local), split(remote));
        let inbound = listening.iter().any(|(a, p)| *p == lp && (*a == la || a == "0.0.0.0"));
        let (dir, service_port) = if inbound { ("inbound", lp) } else { ("outbound", rp) };
        let process = u.first().map_or(String::new(), |u| u.1.clone());
        *want.entry((dir.to_owned(), la, service_port, ra, state.clone(), process)).or_insert(0) += 1;
    }
    let text = ns.scrape(&e, "");
    assert_eq!(users, ss_users(&ns, port), "the test's sockets are stable");
    let mut got = PeerCounts::new();
    for (l, v) in samples(&text, "network_connection_peers") {
        let service_port = l.get("source_port").or(l.get("destination_port")).cloned().unwrap_or_default();
        if service_port == port.to_string() {
            continue;
        }
        assert!(l.contains_key("systemd_unit"), "{l:?}");
        let key = (
            l["direction"].clone(),
            l["source_address"].clone(),
            service_port,
            l["destination_address"].clone(),
            l["state"].clone(),
            l["process"].clone(),
        );
        *got.entry(key).or_insert(0) += v as u64;
    }
    assert_eq!(got, want, "network_connection_peers by process against ss -tanp\n{text}");
    // The split the scenario made is there: one peer, three processes.
    let of = |dir: &str, process: &str| {
        got.iter().filter(|(k, _)| k.0 == dir && k.2 == service && k.5 == process).map(|(_, n)| *n).sum::<u64>()
    };
    assert_eq!((of("outbound", "cx-pcli-a"), of("outbound", "cx-pcli-b")), (3, 2), "{got:?}");
    assert_eq!(of("inbound", "cx-psrv"), 5, "{got:?}");

    // Short connections: inbound closes take the listener's owner (the one ss names),
    // outbound ones have no owner left to name.
    let listener = &users[&("LISTEN".to_owned(), format!("127.0.0.1:{service}"), "0.0.0.0:0".to_owned())];
    assert_eq!(listener.first().map(|u| u.1.as_str()), Some("cx-psrv"), "{listener:?}");
    let before = ns.scrape(&e, "");
    let done: serde_json::Value = serde_json::from_str(&held.say("go")).unwrap();
    assert_eq!(done["short"], short);
    let closed = |t: &str, dir: &str, process: &str| {
        let label = if dir == "inbound" { "source_port" } else { "destination_port" };
        samples(t, "network_connections_closed_total")
            .iter()
            .filter(|(l, _)| l["direction"] == dir && l.get(label) == Some(&service) && l["process"] == process)
            .map(|(_, v)| *v as u64)
            .sum::<u64>()
    };
    let after = crate::util::wait_for(std::time::Duration::from_secs(20), "the short connections' closes", || {
        let t = ns.scrape(&e, "");
        (closed(&t, "inbound", "cx-psrv") >= short && closed(&t, "outbound", "") >= short).then_some(t)
    });
    assert_eq!(closed(&after, "inbound", "cx-psrv") - closed(&before, "inbound", "cx-psrv"), short, "{after}");
    assert_eq!(closed(&after, "outbound", "") - closed(&before, "outbound", ""), short, "{after}");
    let all = |t: &str| {
        samples(t, "network_connections_closed_total")
            .iter()
            .filter(|(l, _)| l.get("source_port") == Some(&service) || l.get("destination_port") == Some(&service))
            .map(|(_, v)| *v as u64)
            .sum::<u64>()
    };
    assert_eq!(all(&after) - all(&before), 2 * short, "no close counted under another process\n{after}");
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

/// Every process is re-read at least once every 16 scrapes (docs/namespaces-and-owners.md,
/// "Owners"); a socket that moved between two living processes is seen within two such
/// cycles.
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
