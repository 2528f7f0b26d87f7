#!/usr/bin/env python3
"""Prints the fenced code blocks a Markdown file marks for tests/ops/test-docs.sh.

    doc_blocks.py FILE NAME          # the one block marked <!-- doc-test: NAME -->
    doc_blocks.py --all FILE NAME    # every such block, as a JSON list of strings

A marker is a line of its own, `<!-- doc-test: NAME -->`; the block is the
fenced block that starts on the next non-empty line. The block is printed as
written: nothing is substituted. Exit 1 when the marker is missing, when it is
not followed by a fenced block, or (without --all) when it appears twice.
"""

import json
import re
import sys


def blocks(text, name):
    lines = text.splitlines()
    found = []
    marker = re.compile(r"^<!--\s*doc-test:\s*(\S+)\s*-->\s*$")
    for i, line in enumerate(lines):
        m = marker.match(line.strip())
        if not m or m.group(1) != name:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        fence = re.match(r"^(\s*)(```+)", lines[j]) if j < len(lines) else None
        if not fence:
            raise SystemExit(f"line {i + 1}: doc-test marker '{name}' is not followed by a fenced block")
        indent, ticks = fence.group(1), fence.group(2)
        body = []
        k = j + 1
        while k < len(lines) and not lines[k].strip().startswith(ticks):
            body.append(lines[k][len(indent):] if lines[k].startswith(indent) else lines[k])
            k += 1
        if k == len(lines):
            raise SystemExit(f"line {j + 1}: fenced block of '{name}' is not closed")
        found.append("\n".join(body) + "\n")
    return found


def main():
    args = sys.argv[1:]
    many = args[:1] == ["--all"]
    if many:
        args = args[1:]
    if len(args) != 2:
        raise SystemExit(__doc__)
    path, name = args
    with open(path, encoding="utf-8") as f:
        found = blocks(f.read(), name)
    if not found:
        raise SystemExit(f"{path}: no block marked <!-- doc-test: {name} -->")
    if many:
        print(json.dumps(found))
    elif len(found) > 1:
        raise SystemExit(f"{path}: {len(found)} blocks marked <!-- doc-test: {name} -->, expected one")
    else:
        sys.stdout.write(found[0])


if __name__ == "__main__":
    main()
