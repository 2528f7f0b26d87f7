//! Faults in the exporter's sources: netlink refused by seccomp, files that vanish or
//! cannot be read, interfaces that come and go during scrapes. The exporter keeps
//! serving, the good data stays right, and the success metric and the log say what
//! happened.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{
    assert_collectors, binary, fixture_copy, require_tool, run, samples, start_under_seccomp, wait_for, Exporter,
    REFUSE_NETLINK,
};

/// The exporter with AF_NETLINK refused.
fn without_netlink(args: &[&str]) -> Exporter {
    start_under_seccomp(REFUSE_NETLINK, args)
}

#[test]
fn netlink_refused_falls_back_to_procfs_in_auto_mode() {
    let e = without_netlink(&[]);
    let text = e.scrape();
    assert_collectors(&text, 4, 1.0);
    assert!(text.contains("network_connections_info{"), "sockets still come from /proc");
    let log = e.wait_log("netlink refused");
    assert!(log.contains("/proc/net/tcp"), "{log}");
    // Said once, not at every scrape.
    e.scrape();
    assert_eq!(e.log_text().matches("netlink refused").count(), 1);
}

#[test]
fn netlink_refused_with_the_netlink_source_fails_the_collectors_not_the_scrape() {
    let e = without_netlink(&["--collector.connections.source=netlink"]);
    let r = e.get("/metrics");
    assert_eq!(r.status, 200);
    let text = r.text();
    assert_collectors(&text, 4, 0.0);
    // The lifecycle collector's refusal names NETLINK_SOCK_DIAG too: wait for the scrape's.
    let log = e.wait_log("couldn't read sockets");
    assert!(log.lines().any(|l| l.contains("couldn't read sockets") && l.contains("NETLINK_SOCK_DIAG")), "{log}");
}

#[test]
fn unreadable_vanishing_and_empty_files() {
    let tree = fixture_copy();
    let dir = tree.path().to_str().unwrap().to_owned();
    // As the unprivileged user the service runs as, so that file modes apply.
    let setpriv = require_tool("setpriv");
    let setpriv = setpriv.to_str().unwrap();
    let (code, _, err) = run(Command::new("chmod").args(["-R", "a+rX", &dir]));
    assert_eq!(code, 0, "{err}");
    let parent = tree.path().parent().unwrap().to_str().unwrap().to_owned();
    let _ = run(Command::new("chmod").args(["a+x", &parent]));
    let e = Exporter::start_with(
        &[setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", binary()],
        &["--path.procfs", &dir],
    );
    assert_collectors(&e.scrape(), 4, 1.0);

    // Permission denied on tcp6: IPv4 sockets still exported, the collectors report 0.
    let (code, _, err) = run(Command::new("chmod").args(["000", &format!("{dir}/net/tcp6")]));
    assert_eq!(code, 0, "{err}");
    let text = e.scrape();
    assert_collectors(&text, 4, 0.0);
    assert!(text.contains("source_address=\"192.0.2.2\""), "IPv4 sockets still there");
    let log = e.wait_log("permission denied");
    assert!(log.contains("tcp6"), "{log}");

    // tcp6 gone (IPv6 switched off between scrapes): normal again.
    std::fs::remove_file(format!("{dir}/net/tcp6")).unwrap();
    let text = e.scrape();
    assert_collectors(&text, 4, 1.0);
    assert!(!text.contains("family=\"ipv6\""));

    // Empty tcp: no sockets, no errors.
    std::fs::write(format!("{dir}/net/tcp"), "").unwrap();
    let text = e.scrape();
    assert!(samples(&text, "network_connections_info").is_empty());
    assert_collectors(&text, 4, 1.0);
}

#[test]
fn interfaces_coming_and_going_during_scrapes() {
    let ip = require_tool("ip");
    let ns = "connexp-test-flap";
    let _ = run(Command::new(&ip).args(["netns", "del", ns]));
    let (code, _, err) = run(Command::new(&ip).args(["netns", "add", ns]));
    assert_eq!(code, 0, "{err}");
    struct Cleanup(&'static str, Vec<Child>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for c in &mut self.1 {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = run(Command::new("ip").args(["netns", "del", self.0]));
        }
    }
    let mut cleanup = Cleanup(ns, Vec::new());
    let exec = |args: &[&str]| run(Command::new("ip").args(["netns", "exec", ns]).args(args));
    exec(&["ip", "link", "set", "lo", "up"]);
    // Listeners on the flapping interface's addresses, there whether or not the addresses
    // are (IP_FREEBIND, IPV6_FREEBIND): their label follows the interface.
    let mut listeners = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c"])
        .arg("import socket,time\nkeep=[]\nfor a,f,lvl,opt in (('10.77.0.1',socket.AF_INET,0,15),('fd77::1',socket.AF_INET6,41,78)):\n s=socket.socket(f); s.setsockopt(lvl,opt,1); s.bind((a,7788)); s.listen(); keep.append(s)\nprint('ok',flush=True); time.sleep(600)")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 2];
    listeners.stdout.as_mut().unwrap().read_exact(&mut ready).unwrap();
    cleanup.1.push(listeners);
    let e = Exporter::start_with(&["ip", "netns", "exec", ns, binary()], &[]);
    let url = format!("http://{}/metrics", e.addr);
    // One process flaps a veth pair with the addresses while scrapes run, holding each
    // state from a few to 290 ms so that some scrapes race a change and others do not.
    // It writes a
    // generation and what holds between two writes: `changing` while it changes the
    // link, `present` or `absent` after. The same stable line read before and after a
    // scrape means nothing changed during it.
    let dir = tempfile::tempdir().unwrap();
    let facts = dir.path().join("facts");
    let mut flapper = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c"])
        .arg(r#"g=0; f="$1"; say() { g=$((g+1)); echo "$g $1" > "$f.tmp"; mv "$f.tmp" "$f"; }
while :; do
  say changing
  if ip link add fl0 type veth peer name fl1 && ip addr add 10.77.0.1/24 dev fl0 && ip addr add fd77::1/64 dev fl0 nodad && ip link set fl0 up
  then say present; else say failed; fi
  sleep 0.$((g / 2 % 3))$((g % 10))
  say changing
  if ip link del fl0; then say absent; else say failed; fi
  sleep 0.$((g / 2 % 3))$((g % 9))
done 2>/dev/null"#)
        .arg("flapper")
        .arg(&facts)
        .spawn()
        .unwrap();
    let read_facts = || std::fs::read_to_string(&facts).unwrap_or_default();
    wait_for(Duration::from_secs(10), "the flapper to start", || (!read_facts().is_empty()).then_some(()));
    let (mut good, mut stable) = (0, [0, 0]);
    let mut failures = Vec::new();
    for i in 0..60 {
        let before = read_facts();
        let (code, out, err) = exec(&["curl", "-sf", &url]);
        let after = read_facts();
        if code != 0 {
            failures.push(format!("scrape {i}: curl exit {code}: {err}"));
            continue;
        }
        let success = samples(&out, "conn_exporter_scrape_collector_success");
        if success.len() != 6 || success.iter().any(|s| s.1 != 1.0) {
            failures.push(format!("scrape {i}: collector success {success:?}"));
            continue;
        }
        let mut labels: Vec<(String, String)> = samples(&out, "network_connections_info")
            .into_iter()
            .filter(|(l, _)| l["source_port"] == "7788")
            .map(|(l, _)| (l["source_address"].clone(), l["interface"].clone()))
            .collect();
        labels.sort();
        let addresses: Vec<&str> = labels.iter().map(|l| l.0.as_str()).collect();
        if addresses != ["10.77.0.1", "fd77::1"] {
            failures.push(format!("scrape {i}: the listeners are {labels:?}"));
            continue;
        }
        // While the addresses are on fl0 the label is fl0; while no interface holds them,
        // unknown. During a change either may be right.
        let expected = match (before == after, after.split_whitespace().nth(1)) {
            (true, Some("present")) => Some("fl0"),
            (true, Some("absent")) => Some("unknown"),
            _ => None,
        };
        match expected {
            Some(want) => {
                stable[usize::from(want == "unknown")] += 1;
                if labels.iter().any(|l| l.1 != want) {
                    failures.push(format!("scrape {i}: {labels:?} while {after:?} held throughout"));
                    continue;
                }
            }
            None if labels.iter().any(|l| l.1 != "fl0" && l.1 != "unknown") => {
                failures.push(format!("scrape {i}: {labels:?} during a change"));
                continue;
            }
            None => {}
        }
        good += 1;
    }
    let _ = flapper.kill();
    let _ = flapper.wait();
    assert!(failures.is_empty(), "{} of 60 scrapes wrong:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(good, 60);
    eprintln!("60 scrapes: {} while the addresses were on fl0, {} while they were gone", stable[0], stable[1]);
    assert!(stable[0] >= 5 && stable[1] >= 5, "too few scrapes with a stable interface to check the label: {stable:?}");
}
