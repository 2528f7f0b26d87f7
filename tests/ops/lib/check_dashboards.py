#!/usr/bin/env python3
"""Checks the Grafana dashboards: their structure, and their queries against a real Prometheus.

    check_dashboards.py structure DASHBOARD.json...
    check_dashboards.py queries --prom http://127.0.0.1:9090 --job conn-exporter \
        --instances host1,host2,host3 [--rate-interval 30s] [--drill-down-off]
        [--no-exporter-metrics] DASHBOARD.json...

Grafana is not installable here, so `queries` does what Grafana would: it
substitutes the template variables (every selected host, all interfaces and
states) and runs each variable query and each panel query through the
Prometheus HTTP API. Each must parse and return data. With --exporter URL (an
exporter's /metrics), a panel query that uses a lifecycle family (families.LIFECYCLE)
(or a quality family, families.QUALITY) which that exporter does not serve must still
evaluate, but need not return data
(reported as SKIP data check). A variable or panel query that needs what a default
exporter lacks (families.NEEDS) must evaluate, and return data only when --have names
all it needs; --only-needing checks only such queries.

Every row but the drill-down row (its title starts with "Drill-down") reads bounded
families only; `structure` fails a panel outside it that reads the per-connection series,
and a drill-down panel that does not select the drill-down job. With --drill-down-off (the
selected hosts' per-connection series are not scraped) the drill-down row's queries must
evaluate but need not return data; with --no-exporter-metrics (exporters started with
--web.disable-exporter-metrics) neither need the queries of the exporter's own metrics
(EXPORTER_METRICS). Each such query is reported as SKIP.
"""

import argparse
import json
import re
import sys
import urllib.parse
import urllib.request

from families import lacking, needs, parse_have, served

RATE_FUNCS = re.compile(r"\b(rate|irate|increase|deriv|delta|idelta|changes|resets|[a-z]+_over_time)\(")
RANGE = re.compile(r"\[([^\]]+)\]")
REQUIRED_VARS = {"datasource", "job", "instance", "interface", "state", "netns"}
REQUIRED_TOPICS = {
    "overview stats": lambda p: p["type"] == "stat",
    "connection table": lambda p: p["type"] == "table" and "network_connections_info{" in exprs(p)[0],
    "time series by state": lambda p: p["type"] == "timeseries" and any("by (state)" in e for e in exprs(p)),
    "top destination ports": lambda p: any("by (destination_port)" in e for e in exprs(p)),
    "top remote addresses": lambda p: any("by (destination_address)" in e for e in exprs(p)),
    "listening sockets": lambda p: any("network_listen_queue_length{" in e for e in exprs(p)) and p["type"] == "table",
    "exporter health": lambda p: any("conn_exporter_scrape_collector" in e for e in exprs(p)),
    "peers by service port": lambda p: any("network_connection_peers{" in e and 'direction="inbound"' in e
                                           and "source_port)" in e for e in exprs(p)),
    "peers by remote address": lambda p: any("network_connection_peers{" in e and
                                             re.search(r"by \((instance, )?destination_address\)", e)
                                             for e in exprs(p)),
    "listen queue vs limit": lambda p: any("network_listen_queue_length{" in e for e in exprs(p))
    and any("network_listen_queue_limit{" in e for e in exprs(p)),
    "connection rate by service": lambda p: any("rate(network_connections_closed_total{" in e
                                                and "source_port)" in e for e in exprs(p)),
    "connection rate by remote peer": lambda p: any("rate(network_connections_closed_total{" in e
                                                    and "destination_address, destination_port)" in e
                                                    for e in exprs(p)),
    "failure rate by remote peer": lambda p: any("rate(network_connections_failed_total{" in e
                                                 and "destination_address)" in e for e in exprs(p)),
    "sockets by namespace": lambda p: any(re.search(r"by \((instance, )?netns\)", e) for e in exprs(p)),
    "by container and pod": lambda p: any("netns, container_id, pod_uid)" in e for e in exprs(p)),
    "pods from kube_pod_info": lambda p: any("on (pod_uid) group_left (namespace, pod)" in e
                                             and "kube_pod_info" in e for e in exprs(p)),
    "top processes": lambda p: any(e.startswith("topk(") and "process)" in e for e in exprs(p)),
    "peers by process": lambda p: any("process, destination_address)" in e for e in exprs(p)),
    "listeners by process": lambda p: any("process, systemd_unit" in e and "network_listen_queue_length{" in e
                                          for e in exprs(p)),
    "rtt p50 and p99 by peer": lambda p: p["type"] == "timeseries"
    and any("histogram_quantile(0.5, " in e and "rate(network_connection_rtt_seconds_bucket{" in e for e in exprs(p))
    and any("histogram_quantile(0.99, " in e and "rate(network_connection_rtt_seconds_bucket{" in e for e in exprs(p)),
    "retransmit ratio by peer": lambda p: any("rate(network_connection_retransmits_total{" in e
                                              and "rate(network_connection_sent_segments_total{" in e
                                              and "destination_address)" in e for e in exprs(p)),
    "bytes by peer": lambda p: any("network_connection_sent_bytes_total{" in e for e in exprs(p))
    and any("network_connection_received_bytes_total{" in e for e in exprs(p)),
    "backends of a service": lambda p: all(
        any(f"rate({m}{{" in e and 'direction="outbound"' in e and 'destination_backend_address!=""' in e
            and "destination_address, destination_port, destination_backend_address, destination_backend_port)" in e
            and e.startswith("topk(") for e in exprs(p))
        for m in ("network_connections_closed_total", "network_connections_failed_total")),
    "clients before snat": lambda p: any('direction="inbound"' in e and "destination_original_address)" in e
                                         for e in exprs(p)),
}

# The per-connection families: read only in the drill-down row.
PER_CONNECTION = re.compile(r"\b(network_connections_info|conn_exporter_connections_dropped_series)\b")
# The drill-down row's job filter: the bounded job itself (single-host configuration) or
# the fleet configuration's opt-in "<job>-connections" job.
DRILL_DOWN_JOB = 'job=~"$job(-connections)?"'
# What --web.disable-exporter-metrics leaves out.
EXPORTER_METRICS = re.compile(r"\b(conn_exporter_build_info|conn_exporter_scrape_collector_\w+|process_\w+|"
                              r"conn_exporter_web_config_\w+)\b")

errors = []


def err(msg):
    errors.append(msg)
    print("  ERROR: " + msg)


def exprs(panel):
    return [t.get("expr", "") for t in panel.get("targets", [])]


def panels(dash):
    for _, p in panels_in_rows(dash):
        yield p


def panels_in_rows(dash):
    """(title of the row the panel is under, panel), in dashboard order."""
    row = ""
    for p in dash["panels"]:
        if p["type"] == "row":
            row = p.get("title", "")
            for inner in p.get("panels", []):  # a collapsed row holds its panels
                yield row, inner
        else:
            yield row, p


def in_drill_down(row):
    return row.startswith("Drill-down")


def check_structure(path):
    print(f"structure: {path}")
    with open(path) as f:
        dash = json.load(f)
    for key in ("title", "uid", "schemaVersion", "panels", "templating"):
        if key not in dash:
            err(f"{path}: missing top-level '{key}'")
    if "__inputs" in dash:
        err(f"{path}: uses __inputs, which file provisioning does not resolve")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    missing = REQUIRED_VARS - variables.keys()
    if missing:
        err(f"{path}: missing template variables {sorted(missing)}")
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        err(f"{path}: variable 'datasource' must be type datasource with query prometheus")
    inst = variables.get("instance", {})
    if not inst.get("multi"):
        err(f"{path}: host variable 'instance' must allow multi-select")
    for name in ("interface", "state"):
        if variables.get(name, {}).get("type") != "query":
            err(f"{path}: filter variable '{name}' must be a query variable")
    ids = set()
    all_panels = list(panels(dash))
    drill_panels = 0
    for row, p in panels_in_rows(dash):
        where = f"{path}: panel {p.get('id')} '{p.get('title', '')}'"
        drill = in_drill_down(row)
        drill_panels += drill
        reads_per_connection = any(PER_CONNECTION.search(e) for e in exprs(p))
        if drill and not reads_per_connection:
            err(f"{where}: in the drill-down row but reads no per-connection family")
        if not drill and reads_per_connection:
            err(f"{where}: reads a per-connection family outside the drill-down row (row '{row}')")
        if p.get("id") in ids:
            err(f"{where}: duplicate id")
        ids.add(p.get("id"))
        if not p.get("title"):
            err(f"{where}: no title")
        if not p.get("description"):
            err(f"{where}: no description")
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            err(f"{where}: no unit")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            err(f"{where}: datasource is not the ${{datasource}} variable")
        if not p.get("targets"):
            err(f"{where}: no queries")
        gp = p.get("gridPos", {})
        if not all(k in gp for k in ("x", "y", "w", "h")) or gp.get("x", 0) + gp.get("w", 0) > 24:
            err(f"{where}: bad gridPos {gp}")
        for t in p.get("targets", []):
            e = t.get("expr", "")
            if t.get("datasource", {}).get("uid") != "${datasource}":
                err(f"{where}: target {t.get('refId')} datasource is not ${{datasource}}")
            # Every selector must carry the job and instance filters.
            job = DRILL_DOWN_JOB if drill else 'job="$job"'
            for sel in re.findall(r"[a-z_:]+\{[^}]*\}", e):
                if job not in sel or 'instance=~"$instance"' not in sel:
                    err(f"{where}: selector without the {job} and instance filters: {sel}")
            if not re.search(r"\{", e):
                err(f"{where}: query has no label filter: {e}")
            check_address_regexes(where, e)
            if RATE_FUNCS.search(e):
                for rng in RANGE.findall(e):
                    if rng != "$__rate_interval":
                        err(f"{where}: range [{rng}] should be [$__rate_interval]")
    if not drill_panels:
        err(f"{path}: no drill-down row (a row titled 'Drill-down...' with the per-connection panels)")
    for topic, pred in REQUIRED_TOPICS.items():
        if not any(pred(p) for p in all_panels):
            err(f"{path}: no panel for '{topic}'")
    print(f"  {len(all_panels)} panels, {sum(len(p.get('targets', [])) for p in all_panels)} queries")


# A dual-stack (IPv6) socket reports an IPv4 peer as ::ffff:a.b.c.d: a regex that
# filters by address must treat both forms of the same IPv4 address alike.
ADDRESS_MATCHER = re.compile(r'([a-z_]*address)(=~|!~)"((?:[^"\\]|\\.)*)"')
IPV4_SAMPLES = ("0.0.0.0", "10.1.2.3", "127.0.0.1", "192.0.2.10")


def check_address_regexes(where, expr):
    for label, op, quoted in ADDRESS_MATCHER.findall(expr):
        if quoted.startswith("$"):
            continue  # a template variable: its values are the exporter's own
        pattern = re.compile(quoted.encode().decode("unicode_escape"))  # PromQL string -> regex
        for v4 in IPV4_SAMPLES:
            mapped = "::ffff:" + v4
            if bool(pattern.fullmatch(v4)) != bool(pattern.fullmatch(mapped)):
                err(f"{where}: {label}{op}\"{quoted}\" treats {v4} and {mapped} differently")


def prom_get(base, api, params):
    url = f"{base}/api/v1/{api}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def substitute(expr, values):
    # Longest names first: $instance before $in...
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def label_values(base, query):
    m = re.fullmatch(r"label_values\((?:(.+),\s*)?([a-zA-Z_]+)\)", query.strip())
    if not m:
        raise ValueError(f"unsupported variable query {query!r}")
    selector, label = m.groups()
    params = {"match[]": [selector]} if selector else {}
    return prom_get(base, f"label/{label}/values", params)


def check_queries(path, args):
    print(f"queries: {path}")
    with open(path) as f:
        dash = json.load(f)
    instances = args.instances.split(",")
    values = {
        "job": args.job,
        # As Grafana writes a multi-value regex into a PromQL string: a regex escape's
        # backslash is itself escaped (127\\.0\\.0\\.1:9100).
        "instance": "(" + "|".join(re.escape(i).replace("\\", "\\\\") for i in instances) + ")",
        "interface": ".*",
        "state": ".*",
        "netns": ".*",
        "__rate_interval": args.rate_interval,
        "__interval": "15s",
    }
    have = parse_have(args.have)
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        q = substitute(var["query"]["query"], values)
        res = label_values(args.prom, q)
        if res.get("status") != "success":
            err(f"{path}: variable {var['name']}: {q}: {res.get('error')}")
        elif needs(var["name"] + " " + q) - have:
            print(f"  SKIP data check var {var['name']}: needs {', '.join(sorted(needs(var['name'] + ' ' + q) - have))}")
        elif not res["data"]:
            err(f"{path}: variable {var['name']}: {q}: no values")
        else:
            print(f"  var {var['name']}: {len(res['data'])} values, e.g. {res['data'][:4]}")
            if var["name"] == "instance" and not set(instances) <= set(res["data"]):
                err(f"{path}: variable instance lists {res['data']}, missing some of {instances}")
    families = served(args.exporter, args.dropped or []) if args.exporter else None
    count = skipped = 0
    for row, p in panels_in_rows(dash):
        for t in p.get("targets", []):
            q = substitute(t["expr"], values)
            needed = needs(t["expr"])
            why_no_data = ""
            if args.drill_down_off and in_drill_down(row):
                why_no_data = "the per-connection series of these hosts are not scraped (drill-down row)"
            elif args.no_exporter_metrics and EXPORTER_METRICS.search(t["expr"]):
                why_no_data = "the exporter's own metrics are off (--web.disable-exporter-metrics)"
            if args.only_needing and not needed:
                continue
            missing = lacking(q, families) if families is not None else []
            # $1 and the like are label_replace's references, not variables.
            if re.search(r"\$[A-Za-z_{]", q):
                err(f"{path}: '{p['title']}': unsubstituted variable in {q}")
                continue
            count += 1
            if t.get("instant"):
                res = prom_get(args.prom, "query", {"query": q})
            else:
                res = prom_get(args.prom, "query_range", {"query": q, "start": args.start,
                                                          "end": args.end, "step": "5"})
            if res.get("status") != "success":
                err(f"{path}: '{p['title']}' {t['refId']}: {q}: {res.get('errorType')}: {res.get('error')}")
            elif why_no_data:
                skipped += 1
                print(f"  SKIP data check {p['title']!r} {t['refId']}: evaluates; {why_no_data}")
            elif missing:
                skipped += 1
                print(f"  SKIP data check {p['title']!r} {t['refId']}: evaluates; the exporter serves no "
                      f"{', '.join(missing)}")
            elif needed - have:
                skipped += 1
                print(f"  SKIP data check {p['title']!r} {t['refId']}: evaluates; needs "
                      f"{', '.join(sorted(needed - have))}")
            elif not res["data"]["result"]:
                err(f"{path}: '{p['title']}' {t['refId']}: {q}: returned no data")
            else:
                print(f"  ok {p['title']!r} {t['refId']}: {len(res['data']['result'])} series")
    print(f"  {count} panel queries run, {skipped} without data check (drill-down off, exporter metrics off, "
          "lifecycle families not served, or needs not provided)")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("structure")
    s.add_argument("files", nargs="+")
    q = sub.add_parser("queries")
    q.add_argument("--prom", required=True)
    q.add_argument("--job", default="conn-exporter")
    q.add_argument("--instances", required=True)
    q.add_argument("--rate-interval", default="30s")
    q.add_argument("--start", type=float, required=True, help="range query start (unix time)")
    q.add_argument("--end", type=float, required=True)
    q.add_argument("--exporter", help="an exporter's /metrics URL: skip lifecycle queries it cannot answer")
    q.add_argument("--dropped", action="append",
                   help="a series-name regex the scrape job drops (metric_relabel_configs): as not served")
    q.add_argument("--have", help="comma-separated families.NEEDS the scraped setup provides")
    q.add_argument("--only-needing", action="store_true", help="check only queries that need something")
    q.add_argument("--drill-down-off", action="store_true",
                   help="the selected hosts' per-connection series are not scraped: the drill-down row may be empty")
    q.add_argument("--no-exporter-metrics", action="store_true",
                   help="the exporters run with --web.disable-exporter-metrics: their own metrics may be absent")
    q.add_argument("files", nargs="+")
    args = ap.parse_args()
    for path in args.files:
        if args.cmd == "structure":
            check_structure(path)
        else:
            check_queries(path, args)
    if errors:
        print(f"{len(errors)} error(s)")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
