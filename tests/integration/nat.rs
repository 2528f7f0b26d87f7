//! `--collector.nat` where the kernel refuses conntrack: without `CAP_NET_ADMIN` the
//! exporter says so at start, reports the collector failed, and serves the families
//! without the NAT labels (the DNAT truth test, with iptables, conntrack and backend
//! namespaces, is tests/ops/test-nat.sh).

use crate::util::{samples, Exporter};

#[test]
fn without_cap_net_admin_the_families_are_served_unlabelled_and_the_collector_failed() {
    let setpriv = crate::util::require_tool("setpriv");
    // Root keeps every capability of its bounding set across exec: drop NET_ADMIN there.
    let e = Exporter::start_with(
        &[setpriv.to_str().unwrap(), "--bounding-set=-net_admin", "--inh-caps=-net_admin", crate::util::binary()],
        &["--collector.nat", "--collector.lifecycle.source=netlink", "--no-collector.quality"],
    );
    let log = e.wait_log("nat collector");
    assert!(log.contains("CAP_NET_ADMIN"), "{log}");
    let text = e.scrape();
    let success: Vec<f64> = samples(&text, "conn_exporter_scrape_collector_success")
        .into_iter()
        .filter(|(l, _)| l.get("collector").map(String::as_str) == Some("nat"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(success, vec![0.0], "{text}");
    assert!(!samples(&text, "network_connection_peers").is_empty(), "the families are still served");
    assert!(!text.contains("destination_backend_address"), "no NAT labels without conntrack");
    // With the capability the same flags carry the labels (empty: nothing is translated
    // on the host's own loopback scrape).
    let e = Exporter::start(&["--collector.nat", "--collector.lifecycle.source=netlink", "--no-collector.quality"]);
    let text = e.scrape();
    assert!(text.contains("destination_backend_address=\"\""), "{text}");
    assert!(text.contains("conn_exporter_scrape_collector_success{collector=\"nat\"} 1"), "{text}");
}
