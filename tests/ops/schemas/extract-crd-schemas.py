#!/usr/bin/env python3
"""Turns the Prometheus Operator's CRD manifests into the JSON schemas kept here.

    extract-crd-schemas.py OPERATOR_CHECKOUT OUT_DIR

Reads example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,
podmonitors,prometheusrules}.yaml of a prometheus-operator checkout and writes
<kind>-<version>.json: the served version's openAPIV3Schema as a JSON Schema
(draft 7), made strict the way kubeconform's -strict is: an object that lists
its properties admits no others unless the CRD says it preserves unknown
fields, case-insensitive patterns are spelt out for ECMAScript regexes,
and apiVersion and kind must be the CRD's own. The operator's version
and commit are recorded in the schema's description.
"""

import json
import pathlib
import subprocess
import sys

import yaml

KINDS = ("servicemonitors", "podmonitors", "prometheusrules")


def strict(node):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("^(?i)"):
            # Go's RE2 takes a flag group anywhere; JSON Schema's ECMAScript regexes
            # have none: spell case-insensitivity out ([aA]) for letters.
            node["pattern"] = "^" + "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in pattern[5:])
        if node.get("nullable"):
            t = node.get("type")
            if isinstance(t, str):
                node["type"] = [t, "null"]
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
    return node


def main():
    repo, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    version = (repo / "VERSION").read_text().strip() if (repo / "VERSION").exists() else "unknown"
    for kind in KINDS:
        crd = yaml.safe_load((repo / f"example/prometheus-operator-crd/monitoring.coreos.com_{kind}.yaml").read_text())
        group = crd["spec"]["group"]
        name = crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            if not v.get("served"):
                continue
            schema = strict(v["schema"]["openAPIV3Schema"])
            schema["properties"]["apiVersion"] = {"enum": [f"{group}/{v['name']}"]}
            schema["properties"]["kind"] = {"enum": [name]}
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
            # metadata is Kubernetes' ObjectMeta, which the CRD leaves open.
            schema["properties"]["metadata"] = {"type": "object"}
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            schema["description"] = (f"{name} {group}/{v['name']} from prometheus-operator {version} "
                                     f"(commit {rev}), {crd['metadata']['annotations'].get('controller-gen.kubebuilder.io/version', '')}. "
                                     + schema.get("description", ""))
            path = out / f"{name.lower()}-{v['name']}.json"
            path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            print(path)


if __name__ == "__main__":
    main()
