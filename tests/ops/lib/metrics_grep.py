#!/usr/bin/env python3
"""Prints the samples of a Prometheus text exposition (stdin) that match.

    curl -s host:9100/metrics | metrics_grep.py network_connections_info state=LISTEN source_port=22

Each matching sample is printed as one JSON object of its labels plus
"__value__"; label order in the exposition does not matter. Exit 1 when
nothing matches (so `if metrics_grep.py ...` reads naturally).
Use label!=value for a negative match.

Whatever the query, the whole scrape is checked first: two samples with the same name
and label set (in any label order) are an error (exit 2, the lines on stderr), since
Prometheus refuses such a scrape.
"""
import json
import re
import sys

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def duplicates(lines):
    """Sample lines whose name and label set appeared on an earlier line."""
    seen, dups = set(), []
    for line in lines:
        m = LINE.match(line)
        if line.startswith("#") or not m:
            continue
        key = (m.group(1), frozenset(PAIR.findall(m.group(2) or "")))
        if key in seen:
            dups.append(line.rstrip("\n"))
        seen.add(key)
    return dups


def main():
    name, conds = sys.argv[1], sys.argv[2:]
    found = 0
    lines = sys.stdin.readlines()
    dups = duplicates(lines)
    if dups:
        print("metrics_grep: duplicate series in the scrape:", *dups, sep="\n", file=sys.stderr)
        return 2
    for line in lines:
        if line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m or m.group(1) != name:
            continue
        labels = dict(PAIR.findall(m.group(2) or ""))
        okay = True
        for c in conds:
            if "!=" in c:
                k, v = c.split("!=", 1)
                okay &= labels.get(k) != v
            else:
                k, v = c.split("=", 1)
                okay &= labels.get(k) == v
        if okay:
            labels["__value__"] = m.group(3)
            print(json.dumps(labels, sort_keys=True))
            found += 1
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())


def parse_series(lines):
    """(name, labels, value) of each sample line of a text exposition; comments skipped."""
    series = []
    for line in lines:
        m = LINE.match(line)
        if line.startswith("#") or not m:
            continue
        series.append((m.group(1), dict(PAIR.findall(m.group(2) or "")), float(m.group(3))))
    return series
