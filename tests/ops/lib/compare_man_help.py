#!/usr/bin/env python3
"""Compares the flags a man page documents with the flags `--help` lists.

    compare_man_help.py MAN_TEXT HELP_TEXT

Both texts are rendered output (`man` with MANWIDTH wide enough not to wrap, and
the binary's `--help`). A definition line is a line indented less than 8 columns
that starts with '-': its flags (`-h`, `--web.listen-address`) are collected up to
the first value placeholder. The subcommands are the `Commands:` entries of
`--help` and the `SUBCOMMANDS` entries of the page. Exit 1 when the sets differ.
"""

import re
import sys

FLAG = re.compile(r"^--?[A-Za-z0-9][\w.-]*")


def flags(text):
    found = set()
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if len(line) - len(stripped) >= 8 or not stripped.startswith("-"):
            continue
        for token in re.split(r"[ ,|]+", stripped):
            if token.startswith(("<", "[")):
                break
            m = FLAG.match(token)
            if m:
                found.add(m.group(0))
    return found


def help_commands(text):
    names, inside = set(), False
    for line in text.splitlines():
        if line.rstrip() == "Commands:":
            inside = True
        elif inside and re.match(r"^  \S", line):
            names.add(line.split()[0])
        elif inside and line and not line.startswith(" "):
            inside = False
    return names - {"help"}


def man_commands(text):
    """Subcommand pages named in SUBCOMMANDS, as `<name>-<sub>(1)`, with the page's own
    name (from NAME) stripped: conn-exporter-hash-password(1) -> hash-password."""
    lines = text.splitlines()
    own = next((lines[i + 1].split()[0] for i, l in enumerate(lines[:-1]) if l.strip() == "NAME"), "")
    names, inside = set(), False
    for line in lines:
        if line.strip() == "SUBCOMMANDS":
            inside = True
        elif inside and line and not line.startswith(" "):
            inside = False
        elif inside and re.match(r"^ {1,7}\S", line):
            m = re.match(r"\s*([\w.-]+)\(1\)", line)
            if m and m.group(1).startswith(own + "-"):
                names.add(m.group(1)[len(own) + 1:])
    return names - {"help"}


def main():
    man_text = open(sys.argv[1], encoding="utf-8").read()
    help_text = open(sys.argv[2], encoding="utf-8").read()
    in_man, in_help = flags(man_text), flags(help_text)
    bad = []
    if not in_help:
        bad.append("no flags found in --help")
    if in_help - in_man:
        bad.append(f"in --help, not in the man page: {sorted(in_help - in_man)}")
    if in_man - in_help:
        bad.append(f"in the man page, not in --help: {sorted(in_man - in_help)}")
    cmd_help, cmd_man = help_commands(help_text), man_commands(man_text)
    if cmd_help != cmd_man:
        bad.append(f"subcommands: --help {sorted(cmd_help)}, man page {sorted(cmd_man)}")
    for b in bad:
        print("MISMATCH: " + b)
    if not bad:
        extra = f"; subcommands {sorted(cmd_help)}" if cmd_help else ""
        print(f"{len(in_help)} flags, the same in the man page and --help{extra}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
