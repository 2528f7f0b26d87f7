//! Faults in the exporter's sources: netlink refused by seccomp, files that vanish or
//! cannot be read, interfaces that come and go during scrapes. The exporter keeps
//! serving, the good data stays right, and the success metric and the log say what
//! happened.

use std::process::Command;

use crate::util::{assert_collectors, binary, fixture_copy, require_tool, run, samples, Exporter};

/// Runs the exporter under a seccomp filter that refuses AF_NETLINK sockets, as systemd's
/// `RestrictAddressFamilies=~AF_NETLINK` would (Debian's python3-seccomp, libseccomp).
fn without_netlink(args: &[&str]) -> Exporter {
    let python = "/usr/bin/python3";
    let script = "import os, sys, errno, socket, seccomp\n\
f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)\n\
f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), 'socket', seccomp.Arg(0, seccomp.EQ, socket.AF_NETLINK))\n\
f.load()\n\
os.execv(sys.argv[1], sys.argv[1:])\n";
    let (code, _, err) = run(Command::new(python).args(["-c", "import seccomp"]));
    assert_eq!(code, 0, "Debian's python3-seccomp is needed (scripts/test.sh installs it): {err}");
    Exporter::start_with(&[python, "-c", script, binary()], args)
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
    let log = e.wait_log("NETLINK_SOCK_DIAG");
    assert!(log.contains("couldn't read sockets"), "{log}");
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
    struct Cleanup(&'static str);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = run(Command::new("ip").args(["netns", "del", self.0]));
        }
    }
    let _cleanup = Cleanup(ns);
    let exec = |args: &[&str]| run(Command::new("ip").args(["netns", "exec", ns]).args(args));
    exec(&["ip", "link", "set", "lo", "up"]);
    let e = Exporter::start_with(&["ip", "netns", "exec", ns, binary()], &[]);
    let url = format!("http://{}/metrics", e.addr);
    // One process flaps a veth pair with addresses as fast as it can while scrapes run.
    let mut flapper = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c"])
        .arg("while :; do ip link add fl0 type veth peer name fl1 && ip addr add 10.77.0.1/24 dev fl0 && ip addr add fd77::1/64 dev fl0 nodad && ip link set fl0 up; ip link del fl0; done 2>/dev/null")
        .spawn()
        .unwrap();
    let mut scrapes = 0;
    for _ in 0..60 {
        let (code, out, err) = exec(&["curl", "-sf", &url]);
        assert_eq!(code, 0, "{err}");
        assert_collectors(&out, 4, 1.0);
        scrapes += 1;
    }
    let _ = flapper.kill();
    let _ = flapper.wait();
    assert_eq!(scrapes, 60);
}
