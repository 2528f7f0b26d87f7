#!/usr/bin/env python3
"""Write the two conn-exporter Grafana dashboards.

The JSON files beside this script are its output and are committed; edit this
script, run it, and commit both. tests/ops/test-static.sh fails when the
committed JSON differs from what this script writes.

    python3 deploy/grafana/generate-dashboards.py          # rewrite the JSON
    python3 deploy/grafana/generate-dashboards.py --check  # exit 1 if stale
"""

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}

# Label filters. Every query carries job and instance.
HOST = 'job="$job",instance=~"$instance"'
IFACE = HOST + ',interface=~"$interface"'
ALL = IFACE + ',state=~"$state"'


def variables(multi_host):
    def query_var(name, label, query, multi, include_all, all_value=None, current=None):
        var = {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": DS,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-var"},
            "refresh": 2,  # on time range change: hosts come and go
            "sort": 1,
            "multi": multi,
            "includeAll": include_all,
            "hide": 0,
            "regex": "",
        }
        if all_value is not None:
            var["allValue"] = all_value
        if current is not None:
            var["current"] = current
        return var

    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "refresh": 1,
            "hide": 0,
            "current": {"text": "default", "value": "default"},
        },
        query_var("job", "Job", "label_values(conn_exporter_build_info, job)", False, False,
                  current={"text": "conn-exporter", "value": "conn-exporter"}),
        # Multi-select on both dashboards; the multi-host one starts with all hosts.
        query_var("instance", "Host", 'label_values(conn_exporter_build_info{job="$job"}, instance)',
                  True, True,
                  current=({"text": ["All"], "value": ["$__all"]} if multi_host else None)),
        query_var("interface", "Interface",
                  f"label_values(network_connection_states{{{HOST}}}, interface)", True, True, ".*",
                  current={"text": ["All"], "value": ["$__all"]}),
        query_var("state", "State",
                  f"label_values(network_connection_states{{{HOST}}}, state)", True, True, ".*",
                  current={"text": ["All"], "value": ["$__all"]}),
    ]


class Layout:
    """Places panels left to right, wrapping at Grafana's 24 columns."""

    def __init__(self):
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1
        self.panels = []

    def row(self, title):
        self.newline()
        self.panels.append({"type": "row", "title": title, "id": self.take_id(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def newline(self):
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def take_id(self):
        self.next_id += 1
        return self.next_id - 1

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.newline()
        panel["id"] = self.take_id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)


def target(expr, legend="", instant=False, fmt="time_series", ref="A"):
    t = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant, "format": fmt}
    return t


def stat(title, description, expr, unit="short", mappings=None, thresholds=None):
    panel = {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, instant=False)],
        "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                                     "thresholds": thresholds or {"mode": "absolute", "steps": [
                                         {"color": "green", "value": None}]}},
                        "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "auto"},
    }
    return panel


def timeseries(title, description, targets, unit="short", stack=False):
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "custom": {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
            "stacking": {"mode": "normal" if stack else "none", "group": "A"}}},
            "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def table(title, description, expr, unit="short", hide=()):
    excluded = {name: True for name in ("Time", "__name__", "job") + tuple(hide)}
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, instant=True, fmt="table")],
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"filterable": True}}, "overrides": []},
        "options": {"showHeader": True, "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
        "transformations": [{"id": "organize", "options": {"excludeByName": excluded,
                                                           "renameByName": {"Value": "Sockets"}}}],
    }


def bars(title, description, expr, legend, unit="short"):
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, legend=legend, instant=True)],
        "fieldConfig": {"defaults": {"unit": unit, "min": 0}, "overrides": []},
        "options": {"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }


UP_MAPPINGS = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                             "1": {"text": "UP", "color": "green"}}}]
RED_ABOVE_0 = {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                             {"color": "red", "value": 1}]}


def overview(lay, multi_host):
    lay.row("Overview")
    lay.add(stat("TCP sockets", "All TCP sockets of the selected hosts, interfaces and states "
                 "(exact totals from network_connection_states, never truncated).",
                 f"sum(network_connection_states{{{ALL}}})"), 4, 4)
    lay.add(stat("Established", "Sockets in ESTABLISHED state.",
                 f'sum(network_connection_states{{{IFACE},state="ESTABLISHED"}})'), 4, 4)
    lay.add(stat("Listening", "Listening sockets (LISTEN state).",
                 f'sum(network_connection_states{{{IFACE},state="LISTEN"}})'), 4, 4)
    lay.add(stat("TIME_WAIT", "Sockets in TIME_WAIT: closed locally, waiting out late packets. "
                 "Many of them mean short-lived connections.",
                 f'sum(network_connection_states{{{IFACE},state="TIME_WAIT"}}) or vector(0)'), 4, 4)
    lay.add(stat("CLOSE_WAIT", "Sockets in CLOSE_WAIT: the peer closed, the local application has "
                 "not. A growing number is a socket leak.",
                 f'sum(network_connection_states{{{IFACE},state="CLOSE_WAIT"}}) or vector(0)',
                 thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                           {"color": "orange", "value": 100},
                                                           {"color": "red", "value": 200}]}), 4, 4)
    if multi_host:
        lay.add(stat("Hosts up", "Hosts whose exporter answered the last scrape, out of those selected.",
                     f"sum(up{{{HOST}}})", unit="none"), 4, 4)
    else:
        lay.add(stat("Exporter", "Whether Prometheus could scrape the exporter (up).",
                     f"min(up{{{HOST}}})", unit="none", mappings=UP_MAPPINGS,
                     thresholds={"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                               {"color": "green", "value": 1}]}), 4, 4)


def trends(lay, multi_host):
    lay.row("Connections over time")
    lay.add(timeseries("Sockets by state", "TCP sockets per state (exact totals).",
                       [target(f"sum by (state) (network_connection_states{{{ALL}}})", "{{state}}")],
                       stack=True), 12, 8)
    lay.add(timeseries("Sockets by interface", "TCP sockets per interface holding the local address "
                       "(any = wildcard bind, lo = loopback).",
                       [target(f"sum by (interface) (network_connection_states{{{ALL}}})",
                               "{{interface}}")]), 12, 8)
    if multi_host:
        lay.add(timeseries("Sockets by host", "TCP sockets per host (exact totals).",
                           [target(f"sum by (instance) (network_connection_states{{{ALL}}})",
                                   "{{instance}}")]), 12, 8)
        lay.add(timeseries("Established by host", "ESTABLISHED sockets per host.",
                           [target(f'sum by (instance) (network_connection_states{{{IFACE},state="ESTABLISHED"}})',
                                   "{{instance}}")]), 12, 8)
    lay.add(timeseries("Connection churn", "How fast the number of sockets per state changes "
                       "(per-second slope over $__rate_interval); spikes show bursts of "
                       "connections opening or closing.",
                       [target(f"sum by ({'instance, ' if multi_host else ''}state) "
                               f"(deriv(network_connection_states{{{ALL}}}[$__rate_interval]))",
                               "{{instance}} {{state}}" if multi_host else "{{state}}")],
                       unit="cps"), 24, 8)


def detail(lay, multi_host):
    lay.row("Who talks to whom")
    by = "instance, " if multi_host else ""
    lay.add(bars("Top destination ports", "The 10 remote ports with most connections "
                 "(listening sockets left out). From the per-connection series, which the "
                 "cardinality guard may truncate on busy hosts.",
                 f'topk(10, sum by (destination_port) (network_connections_info{{{ALL},state!="LISTEN"}}))',
                 "port {{destination_port}}"), 8, 9)
    lay.add(bars("Top local ports", "The 10 local ports with most sockets (services receiving connections).",
                 f'topk(10, sum by (source_port) (network_connections_info{{{ALL}}}))',
                 "port {{source_port}}"), 8, 9)
    lay.add(bars("Top remote addresses", "The 10 remote addresses with most connections "
                 "(wildcard peers of listening sockets left out).",
                 f'topk(10, sum by (destination_address) (network_connections_info{{{ALL},'
                 f'state!="LISTEN",destination_address!~"0\\\\.0\\\\.0\\\\.0|::"}}))',
                 "{{destination_address}}"), 8, 9)
    lay.add(table("Listening sockets", "Every listening socket: address, port and interface.",
                  f'sum by ({by}source_address, source_port, interface) '
                  f'(network_connections_info{{{IFACE},state="LISTEN"}})'), 12, 9)
    if multi_host:
        lay.add(table("Hosts", "One row per host: its sockets (exact total).",
                      f"sum by (instance) (network_connection_states{{{ALL}}})"), 12, 9)
    else:
        lay.add(table("Sockets per state and family", "Exact counts per address family, interface and state.",
                      f"sum by (family, interface, state) (network_connection_states{{{ALL}}})"), 12, 9)
    lay.add(table("Connections", "Every connection of the selected hosts (per-connection series; "
                  "see 'Dropped series' for truncation).",
                  f"network_connections_info{{{ALL}}}"), 24, 12)


def health(lay, multi_host):
    lay.row("Exporter health")
    lay.add(stat("Dropped series", "Per-connection series left out by the cardinality guard "
                 "(--collector.connections.max-series). Totals stay exact.",
                 f"sum(conn_exporter_connections_dropped_series{{{HOST}}})",
                 thresholds=RED_ABOVE_0), 6, 6)
    lay.add(stat("Failing collectors", "Collectors whose last run failed (0 is healthy).",
                 f"count(conn_exporter_scrape_collector_success{{{HOST}}} == 0) or vector(0)",
                 unit="none", thresholds=RED_ABOVE_0), 6, 6)
    lay.add(stat("Parse errors", "Lines of /proc/net/* the exporter could not parse, "
                 "per second over $__rate_interval.",
                 f"sum(rate(conn_exporter_parse_errors_total{{{HOST}}}[$__rate_interval])) or vector(0)",
                 unit="cps", thresholds=RED_ABOVE_0), 6, 6)
    lay.add(stat("Exporter version", "Version of the exporter (build info).",
                 f"count by (version) (conn_exporter_build_info{{{HOST}}})", unit="none"), 6, 6)
    lay.panels[-1]["options"]["textMode"] = "name"
    lay.panels[-1]["targets"][0]["legendFormat"] = "{{version}}"
    lay.add(timeseries("Collector duration", "Time each collector took in the last scrape.",
                       [target(f"max by ({'instance, ' if multi_host else ''}collector) "
                               f"(conn_exporter_scrape_collector_duration_seconds{{{HOST}}})",
                               "{{instance}} {{collector}}" if multi_host else "{{collector}}")],
                       unit="s"), 8, 8)
    lay.add(timeseries("Scrape", "Whole scrape duration as Prometheus measured it, and samples per scrape.",
                       [target(f"scrape_duration_seconds{{{HOST}}}", "{{instance}} duration"),
                        target(f"scrape_samples_scraped{{{HOST}}}", "{{instance}} samples", ref="B")],
                       unit="s"), 8, 8)
    lay.panels[-1]["fieldConfig"]["overrides"] = [{
        "matcher": {"id": "byFrameRefID", "options": "B"},
        "properties": [{"id": "unit", "value": "short"}, {"id": "custom.axisPlacement", "value": "right"}]}]
    lay.add(timeseries("Exporter resources", "CPU (share of one core, rate over $__rate_interval) "
                       "and resident memory of the exporter process.",
                       [target(f"rate(process_cpu_seconds_total{{{HOST}}}[$__rate_interval])", "{{instance}} cpu"),
                        target(f"process_resident_memory_bytes{{{HOST}}}", "{{instance}} memory", ref="B")],
                       unit="percentunit"), 8, 8)
    lay.panels[-1]["fieldConfig"]["overrides"] = [{
        "matcher": {"id": "byFrameRefID", "options": "B"},
        "properties": [{"id": "unit", "value": "bytes"}, {"id": "custom.axisPlacement", "value": "right"}]}]


def dashboard(multi_host):
    lay = Layout()
    overview(lay, multi_host)
    trends(lay, multi_host)
    detail(lay, multi_host)
    health(lay, multi_host)
    kind = "multi-host" if multi_host else "single-host"
    return {
        "title": "conn-exporter: " + ("all hosts" if multi_host else "host detail"),
        "uid": "conn-exporter-" + kind,
        "description": ("TCP connections across hosts scraped from conn-exporter"
                        if multi_host else "TCP connections of one host, scraped from conn-exporter"),
        "tags": ["conn-exporter", "network", kind],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": variables(multi_host)},
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard"}]},
        "links": [],
        "panels": lay.panels,
    }


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for multi_host, name in ((False, "conn-exporter-single-host.json"),
                             (True, "conn-exporter-multi-host.json")):
        text = json.dumps(dashboard(multi_host), indent=2) + "\n"
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale dashboards (run deploy/grafana/generate-dashboards.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
