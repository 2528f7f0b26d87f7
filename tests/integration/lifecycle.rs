//! The lifecycle counters against connections the test makes in a namespace of its own:
//! exact closed and failed counts and byte figures between two scrapes, over IPv4 and
//! IPv6, from both sources (socket-destroy notifications and the eBPF program); the
//! service user of the shipped unit receiving the notifications; a refused subscription
//! failing the collector only; the eBPF program refused without its capabilities (auto
//! falls back, ebpf fails the collector), granted to an unprivileged user with exactly
//! CAP_BPF and CAP_PERFMON (auto picks it), connections older than it counted as
//! untracked only, retransmits counted while connections are open (against the
//! namespace's RetransSegs), and gone from the kernel once the exporter stops. In `all`
//! mode, from both sources: each namespace's closes counted in it only, labelled with its
//! own interfaces, and gone with it (with eBPF, from the kernel's map too); `auto` takes
//! eBPF there unless owners are asked for.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use crate::ns::Netns;
use crate::util::{binary, repo, require_tool, run, samples, start_under_seccomp, wait_for, Exporter, REFUSE_NETLINK};

type Labels = BTreeMap<String, String>;

fn sum(text: &str, name: &str, keep: impl Fn(&Labels) -> bool) -> u64 {
    samples(text, name).iter().filter(|(l, _)| keep(l)).map(|(_, v)| *v as u64).sum()
}

fn value(text: &str, name: &str) -> u64 {
    sum(text, name, |_| true)
}

/// Runs the scenario and returns its facts.
fn make_connections(ns: &Netns, family: &str, n: u32, request: u32, response: u32, refused: u32) -> serde_json::Value {
    let script = repo().join("tests/scenarios/lifecycle.py");
    let out = ns.exec(&[
        "python3",
        script.to_str().unwrap(),
        family,
        &n.to_string(),
        &request.to_string(),
        &response.to_string(),
        &refused.to_string(),
    ]);
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
fn closed_and_failed_connections_and_bytes_are_counted_exactly_from_notifications() {
    exact_counts("netlink", "subscribed to TCP socket-destroy notifications");
}

#[test]
fn closed_and_failed_connections_and_bytes_are_counted_exactly_from_ebpf() {
    exact_counts("ebpf", "source ebpf (--collector.lifecycle.source=ebpf)");
}

/// The exact-count test with `--collector.lifecycle.source=SOURCE`, once its start is logged.
fn exact_counts(source: &str, started: &str) {
    let ns = Netns::new(&format!("connexp-lifecycle-{source}"));
    let e = ns.exporter(&[&format!("--collector.lifecycle.source={source}")]);
    e.wait_log(started);
    let promtool = require_tool("promtool");
    for family in ["4", "6"] {
        let (n, request, response, refused) = (2000u64, 1000u64, 300u64, 100u64);
        let before = ns.scrape(&e, "");
        let facts = make_connections(&ns, family, n as u32, request as u32, response as u32, refused as u32);
        assert_eq!(facts["refused"], refused, "every connect to the closed port was refused");
        let (addr, port) = (facts["address"].as_str().unwrap().to_owned(), facts["port"].to_string());
        let inbound = |l: &Labels| l.get("source_port") == Some(&port) && l["direction"] == "inbound";
        let outbound = |l: &Labels| l.get("destination_port") == Some(&port) && l["direction"] == "outbound";
        let failed_to = |l: &Labels| l["destination_address"] == addr && l["direction"] == "outbound";
        // Notifications come from a kernel work queue: wait until the counts arrive (or
        // stop arriving), then check them exactly.
        let started = std::time::Instant::now();
        let after = loop {
            let t = ns.scrape(&e, "");
            let now = (
                sum(&t, "network_connections_closed_total", inbound),
                sum(&t, "network_connections_closed_total", outbound),
                sum(&t, "network_connections_failed_total", failed_to)
                    - sum(&before, "network_connections_failed_total", failed_to),
            );
            if (now.0 >= n && now.1 >= n && now.2 >= refused) || started.elapsed() > Duration::from_secs(30) {
                break t;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let delta = |name: &str, keep: &dyn Fn(&Labels) -> bool| sum(&after, name, keep) - sum(&before, name, keep);
        assert_eq!(delta("network_connections_closed_total", &inbound), n, "IPv{family} inbound\n{after}");
        assert_eq!(delta("network_connections_closed_total", &outbound), n, "IPv{family} outbound");
        assert_eq!(delta("network_connections_failed_total", &failed_to), refused, "IPv{family} failed");
        // Host mode: no namespace or owner label.
        for (l, _) in samples(&after, "network_connections_closed_total") {
            assert!(
                !["netns", "container_id", "pod_uid", "process", "systemd_unit"].iter().any(|k| l.contains_key(*k)),
                "{l:?}"
            );
        }
        assert!(!after.contains("conn_exporter_lifecycle_namespaces"), "a gauge of all mode only");
        let closed_port = facts["closed_port"].to_string();
        let to_closed_port = |l: &Labels| failed_to(l) && l.get("destination_port") == Some(&closed_port);
        if source == "ebpf" {
            // The program reads the socket before the kernel forgets its remote port.
            assert_eq!(
                delta("network_connections_failed_total", &to_closed_port),
                refused,
                "IPv{family}: refused connects by port {closed_port}\n{after}"
            );
        } else {
            // No failed series carries a port: the notification comes after the kernel
            // forgot it.
            assert!(samples(&after, "network_connections_failed_total")
                .iter()
                .all(|(l, _)| !l.contains_key("destination_port")));
        }
        let info = samples(&after, "conn_exporter_lifecycle_source_info");
        assert_eq!(info.len(), 1, "{info:?}");
        assert_eq!((info[0].0["source"].as_str(), info[0].1), (source, 1.0));
        // The documented figures: payload sent; received is payload plus the peer's FIN.
        assert_eq!(delta("network_connection_sent_bytes_total", &inbound), n * response, "IPv{family}");
        assert_eq!(delta("network_connection_sent_bytes_total", &outbound), n * request, "IPv{family}");
        assert_eq!(delta("network_connection_received_bytes_total", &inbound), n * (request + 1), "IPv{family}");
        assert_eq!(delta("network_connection_received_bytes_total", &outbound), n * (response + 1), "IPv{family}");
        assert_eq!(delta("network_connection_retransmits_total", &inbound), 0, "loopback loses nothing");
        assert_eq!(value(&after, "conn_exporter_lifecycle_overruns_total"), 0);
        assert_eq!(value(&after, "conn_exporter_lifecycle_merged_total"), 0);
        let success = samples(&after, "conn_exporter_scrape_collector_success");
        assert!(success.iter().any(|(l, v)| l["collector"] == "lifecycle" && *v == 1.0), "{after}");
        let mut lint = tempfile::NamedTempFile::new().unwrap();
        lint.write_all(ns.scrape(&e, "?collect[]=lifecycle").as_bytes()).unwrap();
        let (code, out, err) =
            run(Command::new(&promtool).args(["check", "metrics"]).stdin(std::fs::File::open(lint.path()).unwrap()));
        assert_eq!(code, 0, "promtool check metrics: {out}{err}");
    }
}

#[test]
fn the_unprivileged_service_user_receives_the_notifications() {
    // The shipped unit runs as a dynamic user with no capabilities: uid 65534 here.
    let ns = Netns::new("connexp-lifecycle-uid");
    let e = exporter_under_setpriv(&ns, &["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"], &[]);
    let log = e.wait_log("subscribed to TCP socket-destroy notifications");
    assert!(log.contains("SO_RCVBUF, capped by net.core.rmem_max"), "no CAP_NET_ADMIN, no SO_RCVBUFFORCE: {log}");
    let facts = make_connections(&ns, "4", 50, 10, 10, 0);
    let port = facts["port"].to_string();
    wait_for(Duration::from_secs(20), "50 inbound and 50 outbound", || {
        let t = ns.scrape(&e, "");
        let closed = |dir: &str| {
            sum(&t, "network_connections_closed_total", |l| {
                l["direction"] == dir
                    && (l.get("source_port") == Some(&port) || l.get("destination_port") == Some(&port))
            })
        };
        (closed("inbound") == 50 && closed("outbound") == 50).then_some(())
    });
}

#[test]
fn a_refused_subscription_fails_the_collector_not_the_exporter() {
    let e = start_under_seccomp(REFUSE_NETLINK, &["--collector.lifecycle.source=netlink"]);
    let log = e.wait_log("refused the socket-destroy subscription");
    assert!(log.contains("closed and failed connection counters are unavailable"), "{log}");
    let text = e.scrape();
    let success = samples(&text, "conn_exporter_scrape_collector_success");
    assert!(success.iter().any(|(l, v)| l["collector"] == "lifecycle" && *v == 0.0), "{text}");
    assert!(success.iter().any(|(l, v)| l["collector"] == "states" && *v == 1.0), "procfs still serves the rest");
    assert!(!text.contains("network_connections_closed_total"), "no counters that cannot count");
}

/// `ss -tanH state time-wait` rows of a namespace whose remote port is `port`: the
/// clients of lifecycle.py (which send the first FIN) leave one each.
fn time_wait_to(ns: &Netns, port: &str) -> usize {
    ns.exec(&["ss", "-tanH", "state", "time-wait"])
        .lines()
        .filter(|l| l.split_whitespace().nth(3).and_then(|r| r.rsplit(':').next()) == Some(port))
        .count()
}

#[test]
fn in_all_mode_each_namespace_counts_its_own_closed_connections_only_from_notifications() {
    in_all_mode_each_namespace_counts_its_own_closed_connections_only("netlink");
}

#[test]
fn in_all_mode_each_namespace_counts_its_own_closed_connections_only_from_ebpf() {
    in_all_mode_each_namespace_counts_its_own_closed_connections_only("ebpf");
}

/// With `--collector.lifecycle.source=SOURCE`: namespaces of their own per source, as
/// the two run at once.
fn in_all_mode_each_namespace_counts_its_own_closed_connections_only(source: &str) {
    let prefix = if source == "ebpf" { "cxle" } else { "cxlc" };
    let root = Netns::new(&format!("{prefix}-root"));
    let quiet = Netns::new(&format!("{prefix}-quiet"));
    let busy = Netns::new(&format!("{prefix}-busy"));
    let other = Netns::new(&format!("{prefix}-other"));
    let other_name = other.0.clone();
    // An address on an interface that only `busy` has (a veth pair kept inside): its
    // interface indexes and names are its own, so closes there must be labelled from
    // `busy`'s interface table.
    busy.exec(&["ip", "link", "add", "cxd0", "type", "veth", "peer", "name", "cxd1"]);
    busy.exec(&["ip", "addr", "add", &format!("{VETH_ADDRESS}/32"), "dev", "cxd0"]);
    busy.exec(&["ip", "link", "set", "cxd0", "up"]);
    busy.exec(&["ip", "link", "set", "cxd1", "up"]);
    let e = root.exporter(&[
        "--collector.namespaces=all",
        &format!("--collector.lifecycle.source={source}"),
        "--log.level=debug",
    ]);
    if source == "ebpf" {
        // The program counts every namespace from the moment it is attached; the
        // namespaces are named at scrape time.
        e.wait_log("source ebpf (--collector.lifecycle.source=ebpf)");
    } else {
        for ns in [&quiet, &busy, &other] {
            wait_for(Duration::from_secs(20), &format!("the subscription in {}", ns.0), || {
                e.log_text().contains(&format!("subscribed in network namespace {}\"", ns.0)).then_some(())
            });
        }
    }
    let before = root.scrape(&e, "");
    // Known counts, different in each busy namespace, none in `quiet`.
    let (n_busy, n_other, refused) = (300u64, 120u64, 20u64);
    let busy_facts = make_connections(&busy, "4", n_busy as u32, 100, 10, refused as u32);
    let other_facts = make_connections(&other, "6", n_other as u32, 10, 100, 0);
    let port_of = |f: &serde_json::Value| f["port"].to_string();
    let (busy_port, other_port) = (port_of(&busy_facts), port_of(&other_facts));
    // The kernel's own word that the connections happened where the test made them.
    assert_eq!(time_wait_to(&busy, &busy_port) as u64, n_busy, "ss in {}", busy.0);
    assert_eq!(time_wait_to(&other, &other_port) as u64, n_other, "ss in {}", other.0);
    assert_eq!(time_wait_to(&quiet, &busy_port) + time_wait_to(&root, &busy_port), 0);

    let closed = |t: &str, netns: &str, dir: &str, port: &str| {
        sum(t, "network_connections_closed_total", |l| {
            l["netns"] == netns
                && l["direction"] == dir
                && l.get(if dir == "inbound" { "source_port" } else { "destination_port" }).map(String::as_str)
                    == Some(port)
        })
    };
    let after = wait_for(Duration::from_secs(30), "the closed connections of both namespaces", || {
        let t = root.scrape(&e, "");
        (closed(&t, &busy.0, "outbound", &busy_port) >= n_busy
            && closed(&t, &other.0, "outbound", &other_port) >= n_other)
            .then_some(t)
    });
    for (ns, port, n) in [(&busy.0, &busy_port, n_busy), (&other.0, &other_port, n_other)] {
        for dir in ["inbound", "outbound"] {
            let delta = closed(&after, ns, dir, port) - closed(&before, ns, dir, port);
            assert_eq!(delta, n, "{ns} {dir}\n{after}");
            // Nowhere else: every namespace's counts on that port add up to this one's.
            let everywhere = |t: &str| {
                sum(t, "network_connections_closed_total", |l| {
                    l["direction"] == dir
                        && l.get(if dir == "inbound" { "source_port" } else { "destination_port" }) == Some(port)
                })
            };
            assert_eq!(
                everywhere(&after) - everywhere(&before),
                n,
                "{ns} {dir}: counted in another namespace\n{after}"
            );
        }
    }
    let failed = |t: &str, netns: &str| sum(t, "network_connections_failed_total", |l| l["netns"] == netns);
    assert_eq!(failed(&after, &busy.0) - failed(&before, &busy.0), refused, "refused connects of {}", busy.0);
    assert_eq!(failed(&after, &other.0), 0);
    // The quiet namespace has no lifecycle series at all; each series carries the three
    // namespace labels.
    for name in ["network_connections_closed_total", "network_connection_sent_bytes_total"] {
        for (l, _) in samples(&after, name) {
            assert_ne!(l["netns"], quiet.0, "{l:?}");
            assert!(l.contains_key("container_id") && l.contains_key("pod_uid"), "{l:?}");
        }
    }
    let sent = |netns: &str, dir: &str, port: &str| {
        sum(&after, "network_connection_sent_bytes_total", |l| {
            l["netns"] == netns
                && l["direction"] == dir
                && (l.get("source_port").map(String::as_str) == Some(port)
                    || l.get("destination_port").map(String::as_str) == Some(port))
        })
    };
    assert_eq!(sent(&busy.0, "outbound", &busy_port), n_busy * 100, "request bytes of {}", busy.0);
    assert_eq!(sent(&other.0, "inbound", &other_port), n_other * 100, "response bytes of {}", other.0);
    assert!(value(&after, "conn_exporter_lifecycle_namespaces") >= 4, "{after}");
    let success = samples(&after, "conn_exporter_scrape_collector_success");
    assert!(success.iter().any(|(l, v)| l["collector"] == "lifecycle" && *v == 1.0), "{after}");

    // The interface of the veth's address, as `ip` inside `busy` names it.
    let held_by = busy.exec(&["ip", "-o", "-4", "addr", "show", "to", VETH_ADDRESS]);
    let iface = held_by.split_whitespace().nth(1).expect("ip names the address's interface").to_owned();
    let on_iface =
        |t: &str| sum(t, "network_connections_closed_total", |l| l["netns"] == busy.0 && l["interface"] == iface);
    let k = 4u64;
    let mut script = tempfile::NamedTempFile::new().unwrap();
    script.write_all(ONE_ADDRESS.as_bytes()).unwrap();
    busy.exec(&["python3", script.path().to_str().unwrap(), VETH_ADDRESS, &k.to_string()]);
    let on_veth = wait_for(Duration::from_secs(30), "the closes on the veth interface", || {
        let t = root.scrape(&e, "");
        (on_iface(&t) - on_iface(&after) >= 2 * k).then_some(t)
    });
    assert_eq!(on_iface(&on_veth) - on_iface(&after), 2 * k, "closes of {busy:?} on {iface}\n{on_veth}", busy = busy.0);

    // A namespace that goes takes its series with it; with eBPF its keys also leave the
    // kernel's map (as bpftool reads it), which would otherwise fill with dead namespaces.
    let other_inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{other_name}")).unwrap().ino()
    };
    // The kernel reuses a freed namespace's inode number for the next one (another test's,
    // perhaps): its keys are told apart by the port too.
    let other_port: u64 = other_port.parse().unwrap();
    let keys_of_other =
        || peer_key_namespaces(e.child.id()).iter().filter(|&&(n, p)| n == other_inode && p == other_port).count();
    if source == "ebpf" {
        assert!(keys_of_other() > 0, "the kernel's map keys {other_name} by its inode {other_inode}");
    }
    drop(other);
    wait_for(Duration::from_secs(20), "the series of the deleted namespace to go", || {
        let t = root.scrape(&e, "");
        (!samples(&t, "network_connections_closed_total").iter().any(|(l, _)| l["netns"] == other_name)).then_some(())
    });
    if source == "ebpf" {
        assert_eq!(keys_of_other(), 0, "keys of the deleted {other_name} left in the kernel's map");
    }
}

/// The `netns` and `port` fields of every key of the `peers` map the process holds, as
/// bpftool formats them from the map's BTF.
fn peer_key_namespaces(pid: u32) -> Vec<(u64, u64)> {
    let bpftool = require_tool("bpftool");
    let mut out = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(info) = std::fs::read_to_string(fd.unwrap().path()) else { continue };
        let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")).map(str::trim) else { continue };
        let (code, shown, err) = run(Command::new(&bpftool).args(["map", "show", "id", id, "--json"]));
        assert_eq!(code, 0, "bpftool map show: {err}");
        if serde_json::from_str::<serde_json::Value>(&shown).unwrap()["name"] != "peers" {
            continue;
        }
        let (code, dumped, err) = run(Command::new(&bpftool).args(["map", "dump", "id", id, "--json"]));
        assert_eq!(code, 0, "bpftool map dump: {err}");
        let entries: Vec<serde_json::Value> = serde_json::from_str(&dumped).unwrap();
        out.extend(entries.iter().map(|e| {
            let key = &e["formatted"]["key"];
            (key["netns"].as_u64().unwrap(), key["port"].as_u64().unwrap())
        }));
    }
    out
}

#[test]
fn in_all_mode_auto_takes_ebpf_unless_owners_are_asked_for() {
    let ns = Netns::new("cxla-auto");
    let e = ns.exporter(&["--collector.namespaces=all"]);
    e.wait_log("source ebpf (--collector.lifecycle.source=auto)");
    assert!(e.log_text().contains("every network namespace counted"), "{}", e.log_text());
    drop(e);
    let e = ns.exporter(&["--collector.namespaces=all", "--collector.connections.owner"]);
    e.wait_log("source netlink (--collector.lifecycle.source=auto): socket owners");
}

#[test]
fn with_ebpf_a_namespace_gone_before_any_scrape_leaves_nothing_in_the_kernels_map() {
    let root = Netns::new("cxle-gone-root");
    let e = root.exporter(&["--collector.namespaces=all", "--collector.lifecycle.source=ebpf"]);
    e.wait_log("source ebpf (--collector.lifecycle.source=ebpf)");
    // A namespace that lives only as long as one connection: nothing holds it after.
    let mut script = tempfile::NamedTempFile::new().unwrap();
    script.write_all(ONE_ADDRESS.as_bytes()).unwrap();
    let made = root.exec(&[
        "unshare",
        "--net",
        "sh",
        "-ec",
        &format!(
            "ip link set lo up; stat -L -c %i /proc/self/ns/net; /usr/bin/python3 {} 127.0.0.1 1",
            script.path().display()
        ),
    ]);
    let (inode, port) = {
        let mut lines = made.lines().map(|l| l.trim().parse::<u64>().unwrap());
        (lines.next().unwrap(), lines.next().unwrap())
    };
    // The kernel may give the inode number to another test's namespace once this one is
    // freed: keys are told apart by the port too.
    let keys = || peer_key_namespaces(e.child.id()).iter().filter(|&&k| k == (inode, port)).count();
    assert_eq!(keys(), 2, "its inbound and outbound keys, before a scrape");
    root.scrape(&e, "");
    assert_eq!(keys(), 0, "keys of namespace {inode}, gone before any scrape, left in the kernel's map");
}

/// The address of the test's veth interface in one namespace.
const VETH_ADDRESS: &str = "10.231.0.1";

/// `n` connections from and to one address, each closed by both sides; prints the port.
const ONE_ADDRESS: &str = r#"
import socket, sys
addr, n = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.bind((addr, 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
for _ in range(n):
    c = socket.create_connection(srv.getsockname(), source_address=(addr, 0))
    s, _ = srv.accept()
    c.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    c.recv(1)
    c.close()
srv.close()
"#;

/// Connections from `n` distinct client addresses (127.0.0.2 and up) to a server on
/// 127.0.0.1, each closed by both sides; prints how many.
const DISTINCT_CLIENTS: &str = r#"
import socket, sys
n = int(sys.argv[1])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
for i in range(n):
    c = socket.socket()
    c.bind(("127.0.0.%d" % (2 + i), 0))
    c.connect(srv.getsockname())
    s, _ = srv.accept()
    c.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    c.recv(1)
    c.close()
srv.close()
print(n, flush=True)
"#;

#[test]
fn in_all_mode_with_owners_one_series_bound_holds_across_namespaces() {
    let root = Netns::new("cxlcb-root");
    let spaces = [Netns::new("cxlcb-a"), Netns::new("cxlcb-b")];
    let max = 12;
    let e = root.exporter(&[
        "--collector.namespaces=all",
        "--collector.connections.owner",
        &format!("--collector.lifecycle.max-series={max}"),
        "--log.level=debug",
    ]);
    for ns in &spaces {
        wait_for(Duration::from_secs(20), &format!("the subscription in {}", ns.0), || {
            e.log_text().contains(&format!("subscribed in network namespace {}\"", ns.0)).then_some(())
        });
    }
    let mut script = tempfile::NamedTempFile::new().unwrap();
    script.write_all(DISTINCT_CLIENTS.as_bytes()).unwrap();
    let n = 30u64;
    for ns in &spaces {
        ns.exec(&["python3", script.path().to_str().unwrap(), &n.to_string()]);
    }
    // Each connection is an inbound and an outbound close, every one a new label set.
    let closed_in = |t: &str| {
        sum(t, "network_connections_closed_total", |l| {
            spaces.iter().any(|ns| l["netns"] == ns.0) || l["netns"] == "other"
        })
    };
    let text = wait_for(Duration::from_secs(30), "the closes of both namespaces", || {
        let t = root.scrape(&e, "");
        (closed_in(&t) >= 2 * n * spaces.len() as u64).then_some(t)
    });
    let mut label_sets = std::collections::BTreeSet::new();
    for name in ["network_connections_closed_total", "network_connections_failed_total"] {
        for (mut l, _) in samples(&text, name) {
            assert!(l.contains_key("process") && l.contains_key("netns"), "{l:?}");
            l.remove("state");
            label_sets.insert(l);
        }
    }
    assert!(label_sets.len() <= max, "{} label sets past the bound of {max}:\n{text}", label_sets.len());
    assert!(value(&text, "conn_exporter_lifecycle_merged_total") > 0, "the bound was reached\n{text}");
    assert!(
        samples(&text, "network_connections_closed_total")
            .iter()
            .any(|(l, _)| l["netns"] == "other" && l["source_address"] == "other" && l["process"].is_empty()),
        "the namespaces' fully folded series\n{text}"
    );
}

/// The exporter in `ns` as root without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (dropped
/// from the bounding set, so the exec'd binary does not get them back).
fn exporter_without_bpf_capabilities(ns: &Netns, source: &str) -> Exporter {
    exporter_under_setpriv(
        ns,
        &["--bounding-set=-bpf,-perfmon,-sys_admin", "--inh-caps=-bpf,-perfmon,-sys_admin"],
        &[&format!("--collector.lifecycle.source={source}")],
    )
}

/// The exporter in `ns`, started by `setpriv` with `setpriv_args` (another user, fewer
/// capabilities), with `flags`.
fn exporter_under_setpriv(ns: &Netns, setpriv_args: &[&str], flags: &[&str]) -> Exporter {
    let setpriv = require_tool("setpriv");
    let mut argv = vec!["ip", "netns", "exec", &ns.0, setpriv.to_str().unwrap()];
    argv.extend_from_slice(setpriv_args);
    argv.push(binary());
    Exporter::start_with(&argv, flags)
}

#[test]
fn without_bpf_capabilities_auto_falls_back_to_notifications() {
    let ns = Netns::new("connexp-lifecycle-nobpf");
    let e = exporter_without_bpf_capabilities(&ns, "auto");
    let log = e.wait_log("subscribed to TCP socket-destroy notifications");
    assert!(
        log.contains("source netlink (--collector.lifecycle.source=auto): the kernel refused the eBPF program"),
        "{log}"
    );
    assert!(!log.contains("source ebpf"), "{log}");
    let text = ns.scrape(&e, "");
    let info = samples(&text, "conn_exporter_lifecycle_source_info");
    assert_eq!(info.iter().map(|(l, _)| l["source"].as_str()).collect::<Vec<_>>(), ["netlink"], "{text}");
    let facts = make_connections(&ns, "4", 20, 10, 10, 0);
    let port = facts["port"].to_string();
    wait_for(Duration::from_secs(20), "20 inbound closes from the notifications", || {
        let t = ns.scrape(&e, "");
        (sum(&t, "network_connections_closed_total", |l| l.get("source_port") == Some(&port)) == 20).then_some(())
    });
}

#[test]
fn without_bpf_capabilities_the_ebpf_source_fails_the_collector_only() {
    let ns = Netns::new("connexp-lifecycle-nobpf-ebpf");
    let e = exporter_without_bpf_capabilities(&ns, "ebpf");
    let log = e.wait_log("the kernel refused the eBPF program");
    assert!(log.contains("needs CAP_BPF and CAP_PERFMON (--collector.lifecycle.source=ebpf, no fallback)"), "{log}");
    assert!(!log.contains("lifecycle collector: subscribed to TCP socket-destroy notifications"), "no fallback: {log}");
    let text = ns.scrape(&e, "");
    let success = samples(&text, "conn_exporter_scrape_collector_success");
    assert!(success.iter().any(|(l, v)| l["collector"] == "lifecycle" && *v == 0.0), "{text}");
    assert!(success.iter().any(|(l, v)| l["collector"] == "states" && *v == 1.0), "the rest still serves");
    assert!(!text.contains("network_connections_closed_total"), "no counters that cannot count");
    assert!(!text.contains("conn_exporter_lifecycle_source_info"), "{text}");
}

/// The BPF program and link ids a process holds, from its descriptors' fdinfo.
fn bpf_objects(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let (mut progs, mut links) = (Vec::new(), Vec::new());
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(info) = std::fs::read_to_string(fd.unwrap().path()) else { continue };
        for line in info.lines() {
            let id = |prefix: &str| line.strip_prefix(prefix).map(|v| v.trim().parse::<u32>().unwrap());
            if let Some(id) = id("link_id:") {
                links.push(id);
            } else if let Some(id) = id("prog_id:") {
                progs.push(id);
            }
        }
    }
    progs.sort_unstable();
    progs.dedup();
    links.sort_unstable();
    (progs, links)
}

/// Ids that `bpftool OBJECT show` lists (`prog` or `link`).
fn bpftool_ids(bpftool: &std::path::Path, object: &str) -> Vec<u32> {
    let (code, out, err) = run(Command::new(bpftool).args([object, "show", "--json"]));
    assert_eq!(code, 0, "bpftool {object} show: {err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    listed.iter().map(|p| p["id"].as_u64().unwrap() as u32).collect()
}

#[test]
fn no_bpf_program_or_link_is_left_after_the_exporter_stops() {
    let bpftool = require_tool("bpftool");
    let ns = Netns::new("connexp-lifecycle-bpftool");
    let mut e = ns.exporter(&["--collector.lifecycle.source=ebpf"]);
    e.wait_log("source ebpf");
    let pid = e.child.id();
    let (progs, links) = bpf_objects(pid);
    assert_eq!((progs.len(), links.len()), (2, 2), "two raw tracepoint programs, two links");
    let listed = bpftool_ids(&bpftool, "prog");
    assert!(progs.iter().all(|p| listed.contains(p)), "bpftool lists the running exporter's {progs:?}");
    let (code, _, _) = run(Command::new("kill").args(["-TERM", &pid.to_string()]));
    assert_eq!(code, 0);
    let status = e.child.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", e.log_text());
    // The kernel frees a program once its last reference goes, after an RCU grace period.
    wait_for(Duration::from_secs(10), "the exporter's programs and links gone", || {
        let (p, l) = (bpftool_ids(&bpftool, "prog"), bpftool_ids(&bpftool, "link"));
        (!progs.iter().any(|id| p.contains(id)) && !links.iter().any(|id| l.contains(id))).then_some(())
    });
}

#[test]
fn an_unprivileged_user_with_exactly_cap_bpf_and_cap_perfmon_gets_the_ebpf_source() {
    // What a privileged drop-in grants: uid 65534, CAP_BPF and CAP_PERFMON only.
    let ns = Netns::new("connexp-lifecycle-capbpf");
    let caps = "-all,+bpf,+perfmon";
    let (inh, ambient, bounding) =
        (format!("--inh-caps={caps}"), format!("--ambient-caps={caps}"), format!("--bounding-set={caps}"));
    let e = exporter_under_setpriv(
        &ns,
        &["--reuid=65534", "--regid=65534", "--clear-groups", &inh, &ambient, &bounding],
        &[],
    );
    let log = e.wait_log("lifecycle collector: source");
    assert!(log.contains("source ebpf (--collector.lifecycle.source=auto)"), "{log}");
    let facts = make_connections(&ns, "4", 20, 10, 10, 5);
    let (port, closed_port) = (facts["port"].to_string(), facts["closed_port"].to_string());
    wait_for(Duration::from_secs(20), "20 inbound closes and 5 failed connects by port", || {
        let t = ns.scrape(&e, "");
        let inbound = sum(&t, "network_connections_closed_total", |l| l.get("source_port") == Some(&port));
        let failed = sum(&t, "network_connections_failed_total", |l| l.get("destination_port") == Some(&closed_port));
        (inbound == 20 && failed == 5).then_some(())
    });
}

#[test]
fn connections_established_before_the_program_count_as_untracked_not_by_peer() {
    let ns = Netns::new("connexp-lifecycle-untracked");
    let script = repo().join("tests/scenarios/hold_established.py");
    let (held, line) = ns.hold(script.to_str().unwrap(), &["30"]);
    let facts: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let port = facts["port"].to_string();
    let e = ns.exporter(&["--collector.lifecycle.source=ebpf"]);
    e.wait_log("source ebpf");
    let untracked = "conn_exporter_lifecycle_untracked_total";
    assert_eq!(value(&ns.scrape(&e, ""), untracked), 0);
    drop(held);
    // Both ends of each of the 30 connections close with no direction known.
    let after = wait_for(Duration::from_secs(20), "60 untracked closes", || {
        let t = ns.scrape(&e, "");
        (value(&t, untracked) >= 60).then_some(t)
    });
    assert_eq!(value(&after, untracked), 60, "{after}");
    let of_port = |l: &Labels| l.get("source_port") == Some(&port) || l.get("destination_port") == Some(&port);
    assert_eq!(sum(&after, "network_connections_closed_total", of_port), 0, "not counted by peer");
}

/// `RetransSegs` of the namespace's TCP MIB (`/proc/net/snmp`).
fn retrans_segs(ns: &Netns) -> u64 {
    let snmp = ns.exec(&["cat", "/proc/net/snmp"]);
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let at = names.split_whitespace().position(|n| n == "RetransSegs").unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

#[test]
fn with_ebpf_retransmits_count_while_the_connection_is_open() {
    let ns = Netns::new("connexp-lifecycle-retrans");
    let port = "7000";
    // Connects whose SYN is lost: the clients retransmit it.
    ns.exec(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "--dport",
        port,
        // Every second SYN: a packet dropped in OUTPUT is a local send error, which TCP
        // sends again as new data, not as a retransmission; a connect's SYN is only ever
        // sent again by the retransmit timer. Deterministic, so the kernel's count is
        // known to be above 0 and equal to what the program counts.
        "--syn",
        "-m",
        "statistic",
        "--mode",
        "nth",
        "--every",
        "2",
        "--packet",
        "1",
        "-j",
        "DROP",
    ]);
    let e = ns.exporter(&["--collector.lifecycle.source=ebpf"]);
    e.wait_log("source ebpf");
    let before = retrans_segs(&ns);
    let script = repo().join("tests/scenarios/retransmits.py");
    let (_held, _) = ns.hold(script.to_str().unwrap(), &[port, "10", "200000"]);
    let text = ns.scrape(&e, "");
    let kernel = retrans_segs(&ns) - before;
    let of_port = |l: &Labels| {
        l.get("source_port").map(String::as_str) == Some(port)
            || l.get("destination_port").map(String::as_str) == Some(port)
    };
    let counted = sum(&text, "network_connection_retransmits_total", of_port);
    eprintln!("retransmits: counted {counted} by the program, RetransSegs {kernel}");
    assert!(kernel >= 5, "every second SYN was dropped: RetransSegs {kernel}");
    assert_eq!(counted, kernel, "counted by the program, the kernel's RetransSegs\n{text}");
    assert_eq!(sum(&text, "network_connections_closed_total", of_port), 0, "all still open");
}
