"""Which metric families an exporter serves, for queries that need families not yet built.

The lifecycle collector (issue 10) is built on its own branch; until it is merged the
exporter has none of its families, and the queries over them return nothing. The same
holds for the quality collector (issue 19, QUALITY), which an exporter may also run
with off. A query that names one of LIFECYCLE or QUALITY is skipped then, and only
then: the decision comes from the
exporter's own /metrics (its `# TYPE` lines), not from the query's result, so a family
the exporter serves but Prometheus lacks, or a misspelt name, still fails.
"""

import re
import urllib.request

LIFECYCLE = (
    "network_connections_closed_total",
    "network_connections_failed_total",
    "network_connection_sent_bytes_total",
    "network_connection_received_bytes_total",
    "network_connection_retransmits_total",
    "conn_exporter_lifecycle_overruns_total",
)

# The quality collector's families (issue 19). A histogram's series carry the
# suffixes _bucket, _sum and _count; served() adds them for a histogram family.
QUALITY = (
    "network_connection_rtt_seconds_bucket",
    "network_connection_rtt_seconds_sum",
    "network_connection_rtt_seconds_count",
    "network_connection_lost_segments_total",
    "network_connection_sent_segments_total",
    "network_connection_receive_window_limited_seconds_total",
    "network_connection_send_buffer_limited_seconds_total",
    "network_connection_queued_bytes",
    "network_connection_unsent_bytes",
)


def served(url, dropped=()):
    """The families named by `# TYPE` lines of the exporter's text exposition, less the
    series names a scrape job drops (`dropped`: the regexes of its metric_relabel_configs
    drop rules on __name__, such as the fleet job's classic RTT buckets)."""
    req = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode("utf-8", "replace")
    names = set()
    for m in re.finditer(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)", text, re.M):
        names.add(m.group(1))
        if m.group(2) == "counter" and not m.group(1).endswith("_total"):
            names.add(m.group(1) + "_total")  # OpenMetrics names counter families without it
        if m.group(2) == "histogram":
            names.update(m.group(1) + suffix for suffix in ("_bucket", "_sum", "_count"))
    if not names:
        raise RuntimeError(f"{url}: no # TYPE lines: not an exporter's /metrics?")
    return {n for n in names if not any(re.fullmatch(d, n) for d in dropped)}


def dropped_by(job):
    """The __name__ regexes a scrape job's metric_relabel_configs drop."""
    return [r["regex"] for r in job.get("metric_relabel_configs", [])
            if r.get("action") == "drop" and r.get("source_labels") == ["__name__"]]


def lacking(expr, families):
    """The lifecycle and quality families the expression uses that the exporter does not serve."""
    return sorted(n for n in LIFECYCLE + QUALITY if re.search(r"\b" + n + r"\b", expr) and n not in families)


# What a query needs beyond a default exporter: the labels of --collector.namespaces=all,
# those of --collector.connections.owner, kube-state-metrics' kube_pod_info, the labels
# and self-metrics of --collector.nat with connections that conntrack translated. A test
# that scrapes default exporters (test-multihost.sh) runs such a query and requires it to
# evaluate; a test that provides them (test-netns-dashboards.sh, --have) requires data.
NEEDS = {
    "namespaces": re.compile(r"\b(netns|container_id|pod_uid)\b"),
    "owners": re.compile(r"\b(process|systemd_unit)\b"),
    "kube_pod_info": re.compile(r"\bkube_pod_info\b"),
    "nat": re.compile(r"\b(destination_backend_address|destination_backend_port|destination_original_address|"
                      r"conn_exporter_nat_\w+)\b"),
}


def needs(expr):
    """The NEEDS keys an expression uses."""
    return {name for name, pattern in NEEDS.items() if pattern.search(expr)}


def parse_have(text):
    have = {h for h in (text or "").split(",") if h}
    unknown = have - NEEDS.keys()
    if unknown:
        raise SystemExit(f"--have: unknown {sorted(unknown)}; known: {sorted(NEEDS)}")
    return have
