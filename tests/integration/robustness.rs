//! Issue #8's reproductions: clients that never read, a netlink dump refused after
//! start-up, a real `lo` address next to the reserved label, IPv4 address labels.

use std::time::{Duration, Instant};

use crate::ns::Netns;
use crate::util::{assert_collectors, repo, samples, start_under_seccomp, wait_for, Exporter, REFUSE_SENDTO};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
}

#[test]
fn clients_that_never_read_lose_their_slot_after_the_write_timeout() {
    let ns = Netns::new("connexp-stall");
    // 10k connections (20k sockets, a 4 MB scrape). Send buffers capped at 64 KiB in this
    // namespace, so that, as with the 80k sockets on default buffers, a response
    // is far larger than what the kernel takes for a client that does not read.
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_wmem=4096 16384 65536"]);
    let loadgen = repo().join("bench/loadgen.py");
    let (_load, ready) = ns.hold(loadgen.to_str().unwrap(), &["-n", "10000", "--force"]);
    assert!(ready.starts_with("READY"), "{ready}");
    let e = ns.exporter(&["--collector.connections.max-series=0", "--web.write-timeout=3s", "--web.max-requests=40"]);
    let pid = e.child.id();
    ns.scrape(&e, "");
    let idle = rss_kib(pid);
    // 45 clients (more than --web.max-requests) that ask and never read, with small buffers.
    let stuck = format!(
        "import socket,sys\nheld=[]\nfor _ in range(45):\n s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n s.connect(('127.0.0.1',{}))\n s.sendall(b'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); held.append(s)\nprint('stuck', flush=True)\nsys.stdin.read()\n",
        e.addr.port()
    );
    let path = std::env::temp_dir().join("connexp-stuck.py");
    std::fs::write(&path, stuck).unwrap();
    let (_stuck, _) = ns.hold(path.to_str().unwrap(), &[]);
    let url = format!("http://{}/metrics", e.addr);
    let start = Instant::now();
    // While they hold every slot, scrapes are refused; after the timeout a scrape works.
    let status = |ns: &Netns| ns.exec(&["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url]);
    // The stuck clients' requests are taken within moments, not at once: a scrape that
    // comes before they fill every slot is answered, and proves nothing either way. So
    // the slots must be seen full (503) first, then freed by the timeout (200).
    let mut refused = 0;
    wait_for(
        Duration::from_secs(3 + 10),
        "a scrape refused while the stuck clients hold the slots, then one answered 200",
        || {
            let s = status(&ns);
            if s == "503" {
                refused += 1;
            }
            (s == "200" && refused > 0).then_some(())
        },
    );
    assert!(refused > 0, "the stuck clients held the slots at first (else this test proves nothing)");
    assert!(start.elapsed() >= Duration::from_secs(2), "slots freed by the timeout, not before");
    let log = e.wait_log("--web.write-timeout");
    assert_eq!(log.matches("aborting responses").count(), 1, "one log line for the burst:\n{log}");
    // The stuck responses' memory is given back.
    wait_for(Duration::from_secs(10), "RSS back near idle", || (rss_kib(pid) < idle + 20 * 1024).then_some(()));
}

#[test]
fn a_real_address_on_lo_is_one_lo_series() {
    let ns = Netns::new("connexp-lo");
    ns.exec(&["ip", "addr", "add", "192.0.2.99/32", "dev", "lo"]);
    let script = "import socket,sys\nheld=[]\nfor a,p in (('192.0.2.99',7200),('127.0.0.1',7201)):\n s=socket.socket(); s.bind((a,p)); s.listen(); held.append(s)\nprint('ok',flush=True)\nsys.stdin.read()\n";
    let path = std::env::temp_dir().join("connexp-lo.py");
    std::fs::write(&path, script).unwrap();
    let (_held, _) = ns.hold(path.to_str().unwrap(), &[]);
    for source in ["netlink", "procfs"] {
        let e = ns.exporter(&[&format!("--collector.connections.source={source}")]);
        let text = ns.scrape(&e, "");
        let lo_listen: Vec<f64> = samples(&text, "network_connection_states")
            .into_iter()
            .filter(|(l, _)| l["family"] == "ipv4" && l["interface"] == "lo" && l["state"] == "LISTEN")
            .map(|(_, v)| v)
            .collect();
        let ss_v4_listeners = ns.exec(&["ss", "-4ltnH"]).lines().count() as f64;
        assert_eq!(lo_listen, vec![ss_v4_listeners], "{source}: one series, every IPv4 listener of lo\n{text}");
        let on_99 = samples(&text, "network_connections_info")
            .into_iter()
            .find(|(l, _)| l["source_address"] == "192.0.2.99")
            .map(|(l, _)| l["interface"].clone());
        assert_eq!(on_99.as_deref(), Some("lo"), "{source}\n{text}");
    }
}

#[test]
fn an_ipv4_address_label_is_reported_as_its_interface() {
    let ns = Netns::new("connexp-label");
    ns.exec(&["ip", "link", "add", "vq0", "type", "veth", "peer", "name", "vq1"]);
    ns.exec(&["ip", "link", "set", "vq0", "up"]);
    ns.exec(&["ip", "link", "set", "vq1", "up"]);
    ns.exec(&["ip", "addr", "add", "10.201.0.1/24", "dev", "vq0", "label", "vq0:web"]);
    let shown = ns.exec(&["ip", "-4", "addr", "show", "dev", "vq0"]);
    assert!(shown.contains("vq0:web"), "the label is set: {shown}");
    let script = "import socket,sys\ns=socket.socket(); s.bind(('10.201.0.1',7300)); s.listen()\nprint('ok',flush=True)\nsys.stdin.read()\n";
    let path = std::env::temp_dir().join("connexp-label.py");
    std::fs::write(&path, script).unwrap();
    let (_held, _) = ns.hold(path.to_str().unwrap(), &[]);
    for source in ["netlink", "procfs"] {
        let e = ns.exporter(&[&format!("--collector.connections.source={source}")]);
        let text = ns.scrape(&e, "");
        let iface = samples(&text, "network_connections_info")
            .into_iter()
            .find(|(l, _)| l["source_address"] == "10.201.0.1")
            .map(|(l, _)| l["interface"].clone());
        assert_eq!(iface.as_deref(), Some("vq0"), "{source}\n{text}");
        assert!(!text.contains("vq0:web"), "{source}: the label is not an interface\n{text}");
    }
}

/// The exporter with every `sendto` refused: its netlink sockets open fine and the first
/// dump request fails.
fn with_dumps_refused(args: &[&str]) -> Exporter {
    start_under_seccomp(REFUSE_SENDTO, args)
}

#[test]
fn a_dump_refused_after_start_falls_back_to_procfs_in_auto_mode() {
    let e = with_dumps_refused(&[]);
    let text = e.scrape();
    assert_collectors(&text, 4, 1.0);
    let own = e.addr.port().to_string();
    assert!(
        samples(&text, "network_connections_info").iter().any(|(l, _)| l["source_port"] == own),
        "sockets come from /proc, the exporter's own listener among them\n{text}"
    );
    let log = e.wait_log("netlink refused");
    assert!(log.contains("/proc/net/tcp"), "{log}");
    e.scrape();
    assert_eq!(e.log_text().matches("netlink refused").count(), 1, "said once");
}

#[test]
fn a_dump_refused_with_the_netlink_source_fails_the_collectors_not_the_scrape() {
    let e = with_dumps_refused(&["--collector.connections.source=netlink"]);
    let text = e.scrape();
    assert_collectors(&text, 4, 0.0);
    e.wait_log("couldn't read sockets");
}
