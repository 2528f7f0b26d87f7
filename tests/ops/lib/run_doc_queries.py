#!/usr/bin/env python3
"""Runs every ```promql block of a Markdown file against a real Prometheus.

    run_doc_queries.py --prom http://127.0.0.1:9090 docs/promql-queries.md

One query per block; '#' lines are comments. A block with a '# may be empty'
comment must evaluate without error; every other block must also return data.

With --exporter URL (an exporter's /metrics), a block that uses a lifecycle family
(families.LIFECYCLE) or a quality family (families.QUALITY) which that exporter does not
serve must still evaluate without
error, but its data check is skipped (reported as SKIP); without --exporter, or when
the exporter serves the family, the block is checked as any other.

A block whose query needs what a default exporter lacks (families.NEEDS: the labels of
--collector.namespaces=all or --collector.connections.owner, kube_pod_info) must
evaluate, and must return data only when --have names all it needs; --only-needing
runs only such blocks (a test that provides them and nothing else).
"""

import argparse
import json
import re
import sys
import urllib.parse
import urllib.request

from families import lacking, needs, parse_have, served


def blocks(text):
    for m in re.finditer(r"^```promql[ \t]*\n(.*?)^```", text, re.S | re.M):
        lines = m.group(1).splitlines()
        may_be_empty = any(line.strip().startswith("# may be empty") for line in lines)
        query = "\n".join(line for line in lines if not line.strip().startswith("#")).strip()
        line_no = text.count("\n", 0, m.start()) + 1
        yield line_no, query, may_be_empty


def query(base, q):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prom", required=True)
    ap.add_argument("--exporter", help="an exporter's /metrics URL: skip lifecycle queries it cannot answer")
    ap.add_argument("--dropped", action="append",
                    help="a series-name regex the scrape job drops (metric_relabel_configs): as not served")
    ap.add_argument("--have", help="comma-separated families.NEEDS the scraped setup provides")
    ap.add_argument("--only-needing", action="store_true", help="run only blocks that need something")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    have = parse_have(args.have)
    families = served(args.exporter, args.dropped or []) if args.exporter else None
    errors = total = skipped = 0
    for path in args.files:
        with open(path) as f:
            text = f.read()
        for line_no, q, may_be_empty in blocks(text):
            needed = needs(q)
            if args.only_needing and not needed:
                continue
            total += 1
            where = f"{path}:{line_no}"
            one_line = " ".join(q.split())
            missing = lacking(q, families) if families is not None else []
            res = query(args.prom, q)
            if res.get("status") != "success":
                errors += 1
                print(f"ERROR {where}: {one_line}\n      {res.get('errorType')}: {res.get('error')}")
                continue
            n = len(res["data"]["result"]) if isinstance(res["data"]["result"], list) else 1
            if missing:
                skipped += 1
                print(f"SKIP  {where}: evaluates; data not required, the exporter serves no "
                      f"{', '.join(missing)}: {one_line[:80]}")
            elif needed - have:
                skipped += 1
                print(f"SKIP  {where}: evaluates; data not required without "
                      f"{', '.join(sorted(needed - have))}: {one_line[:80]}")
            elif n == 0 and not may_be_empty:
                errors += 1
                print(f"ERROR {where}: returned no data: {one_line}")
            else:
                print(f"ok    {where}: {n} result(s){' (may be empty)' if may_be_empty else ''}: {one_line[:110]}")
    if total == 0:
        print("no ```promql blocks found")
        return 1
    print(f"{total} queries, {errors} error(s), {skipped} without data check (lifecycle families not served, "
          f"or needs not provided)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
