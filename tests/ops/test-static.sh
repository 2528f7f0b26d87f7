#!/usr/bin/env bash
# Static checks of the operations kit with the real tools: shellcheck, the
# monitoring mixin rendered again with jsonnet (and compared with what is
# committed), promtool (config, rules, rule unit tests), kubernetes-validate,
# check-jsonschema (Prometheus Operator objects), systemd-analyze
# (security exposure and verify), the Grafana dashboards' structure, and the
# installer's refusals (not root, no systemd, bad options) on this host.
set -euo pipefail
TEST_NAME=static
# shellcheck source=tests/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
require_cmds shellcheck promtool kubernetes-validate check-jsonschema jsonnet systemd-analyze python3 setpriv unshare
cd "$REPO"

WORK=$(mktemp -d /tmp/conn-exporter-ops-static.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# --- shellcheck: every shell script of the kit ---------------------------------
mapfile -t scripts < <(
    {
        ls install-conn-exporter.sh deploy-to-multiple-hosts.sh
        find deploy tests/ops -name '*.sh'
        find deploy/debian -type f \( -name postinst -o -name prerm -o -name postrm -o -name preinst \)
    } | sort -u
)
((${#scripts[@]} >= 8)) || fail "found only ${#scripts[@]} scripts to check"
shellcheck -x "${scripts[@]}" || fail "shellcheck reported problems"
ok "shellcheck: ${#scripts[@]} scripts clean"

# --- the monitoring mixin renders exactly the committed files -------------------
# deploy/mixin/render.jsonnet names its outputs relative to deploy/.
mkdir -p "$WORK/render/prometheus" "$WORK/render/grafana" "$WORK/render/kubernetes/prometheus-operator"
jsonnet -S -m "$WORK/render" deploy/mixin/render.jsonnet >"$WORK/rendered" || fail "jsonnet could not render deploy/mixin"
n=0
while read -r f; do
    rel=${f#"$WORK/render/"}
    diff -u "deploy/$rel" "$f" || fail "deploy/$rel differs from the mixin's output: run jsonnet -S -m deploy deploy/mixin/render.jsonnet"
    n=$((n + 1))
done <"$WORK/rendered"
((n == 5)) || fail "the mixin rendered $n files, want 5 (alerts, recording rules, PrometheusRule, two dashboards)"
ok "mixin: deploy/mixin renders the $n committed files byte for byte"

# --- Prometheus: configs, rules, rule unit tests -------------------------------
for cfg in deploy/prometheus/prometheus-scrape-config.yml deploy/prometheus/prometheus-multi-host-config.yml; do
    promtool check config "$cfg" >"$WORK/out" 2>&1 || { cat "$WORK/out"; fail "promtool check config $cfg"; }
done
ok "promtool check config: both configs valid"
# Copied as shipped, the multi-host config must scrape no address the user never wrote.
python3 - deploy/prometheus/prometheus-multi-host-config.yml <<'PY2' || fail "the multi-host config scrapes example hosts as shipped"
import glob, os, sys, yaml
path = sys.argv[1]
cfg = yaml.safe_load(open(path))
bad = []
for job in cfg["scrape_configs"]:
    if job.get("static_configs"):
        bad.append(f"{job['job_name']}: static_configs {job['static_configs']}")
    for sd in job.get("file_sd_configs", []):
        for pattern in sd["files"]:
            hits = glob.glob(os.path.join(os.path.dirname(path), pattern))
            if hits:
                bad.append(f"{job['job_name']}: {pattern} loads {hits}")
print("\n".join(bad) if bad else "multi-host config: no target as shipped")
sys.exit(1 if bad else 0)
PY2
ok "multi-host config as shipped: no static targets, its file_sd glob loads no shipped file"
promtool check rules deploy/prometheus/alerts.yml deploy/prometheus/recording-rules.yml >"$WORK/out" 2>&1 ||
    { cat "$WORK/out"; fail "promtool check rules"; }
ok "promtool check rules: $(grep -o '[0-9]* rules found' "$WORK/out" | sed 's/ rules found//' | paste -sd+ -) rules (alerts + recording rules)"
promtool test rules deploy/prometheus/alerts_test.yml >"$WORK/out" 2>&1 || { cat "$WORK/out"; fail "promtool test rules"; }
ok "promtool test rules: alerts_test.yml passes"

# Every alert has a firing and a not-firing case in the unit tests.
python3 - deploy/prometheus/alerts.yml deploy/prometheus/alerts_test.yml deploy/prometheus/recording-rules.yml <<'PY' || fail "alert and recording rule test coverage"
import sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
tests = yaml.safe_load(open(sys.argv[2]))
alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
fires, silent = set(), set()
for t in tests["tests"]:
    for a in t.get("alert_rule_test", []):
        (fires if a.get("exp_alerts") else silent).add(a["alertname"])
required = {"TooManyConnections", "NoListeningSSH", "ConnExporterDown", "ConnExporterSeriesTruncated",
            "ConnExporterCollectorFailing", "CloseWaitPileUp", "TimeWaitPileUp", "ListenQueueFilling",
            "ConnectFailures", "PeerRetransmitRatioHigh"}
bad = []
if required - alerts:
    bad.append(f"missing alerts: {sorted(required - alerts)}")
for a in sorted(alerts):
    if a not in fires or a not in silent:
        bad.append(f"{a}: firing case {a in fires}, silent case {a in silent}")
expr = {r["alert"]: r["expr"].strip() for g in rules["groups"] for r in g["rules"] if "alert" in r}
if expr.get("TooManyConnections") != 'sum by (instance) (network_connection_states{job="conn-exporter"}) > 10000':
    bad.append("TooManyConnections must use the exact aggregate of its job: " + expr.get("TooManyConnections", ""))
for a, e in expr.items():
    if "job=" not in e:
        bad.append(f"{a} selects no job")
# Every recording rule's output is tested (a promql_expr_test reads it).
records = {r["record"] for g in yaml.safe_load(open(sys.argv[3]))["groups"] for r in g["rules"]}
tested = {e["expr"].strip() for t in tests["tests"] for e in t.get("promql_expr_test", [])}
for r in sorted(records):
    if not any(r in e for e in tested):
        bad.append(f"recording rule {r}: no promql_expr_test reads it")
print("\n".join(bad) if bad else f"{len(alerts)} alerts, each tested firing and silent, each selecting its job; "
      f"{len(records)} recording rules, each tested")
sys.exit(1 if bad else 0)
PY
# Bounded mode: no alert or recording rule reads the per-connection series (the fleet
# configuration does not scrape them), and the rule unit tests feed none.
python3 - deploy/prometheus/alerts.yml deploy/prometheus/recording-rules.yml deploy/prometheus/alerts_test.yml <<'PY' || fail "a rule reads the per-connection series"
import re, sys, yaml
per_connection = re.compile(r"\bnetwork_connections_info\b")
bad = []
for path in sys.argv[1:3]:
    for g in yaml.safe_load(open(path))["groups"]:
        for r in g["rules"]:
            if per_connection.search(r["expr"]):
                bad.append(f"{path}: {r.get('alert') or r.get('record')} reads network_connections_info")
for t in yaml.safe_load(open(sys.argv[3]))["tests"]:
    for s in t.get("input_series", []):
        if per_connection.search(s["series"]):
            bad.append(f"{sys.argv[3]}: an input series is per-connection: {s['series']}")
print("\n".join(bad) if bad else "alerts, recording rules and their tests: bounded families only")
sys.exit(1 if bad else 0)
PY
ok "alerts and recording rules read bounded families only (and their unit tests feed no per-connection series)"
# The unit tests can fail: a wrong expectation must be reported.
sed 's/instance: busy$/instance: calm/' deploy/prometheus/alerts_test.yml >"$WORK/alerts_test_broken.yml"
cp deploy/prometheus/alerts.yml deploy/prometheus/recording-rules.yml "$WORK/"
if promtool test rules "$WORK/alerts_test_broken.yml" >/dev/null 2>&1; then
    fail "promtool test rules passed with a wrong expectation"
fi
ok "promtool test rules fails on a wrong expectation"

# --- Bounded scrapes: every scrape the docs call bounded sets collect[] ----------------
# The fleet configuration's main job, the guide's TLS job, the ServiceMonitor and the
# PodMonitor scrape the bounded families only; the opt-in drill-down job and monitor
# the per-connection ones only. A scrape without collect[] gets every family.
guide_tls_job=$(python3 "$OPS_DIR/lib/doc_blocks.py" docs/multi-host-deployment-guide.md prometheus-tls-job) ||
    fail "no prometheus-tls-job block in the guide"
python3 - deploy/prometheus/prometheus-multi-host-config.yml deploy/kubernetes/prometheus-operator \
    "$guide_tls_job" <<'PY' || fail "a scrape the docs call bounded does not set collect[]"
import sys, yaml
fleet, op, guide_tls_job = sys.argv[1:]
BOUNDED = {"states", "peers", "listeners", "lifecycle", "quality"}
bad, seen = [], []
def check(where, params, want):
    got = (params or {}).get("collect[]")
    seen.append(where)
    if not got:
        bad.append(f"{where}: no collect[]: it scrapes every family, per-connection series included")
    elif want == "bounded" and (set(got) != BOUNDED):
        bad.append(f"{where}: collect[] {got}, want the bounded families {sorted(BOUNDED)}")
    elif want == "connections" and got != ["connections"]:
        bad.append(f"{where}: collect[] {got}, want [connections] (the drill-down job)")
jobs = {j["job_name"]: j for j in yaml.safe_load(open(fleet))["scrape_configs"]}
if set(jobs) != {"conn-exporter", "conn-exporter-connections"}:
    bad.append(f"{fleet}: jobs {sorted(jobs)}, want conn-exporter and conn-exporter-connections")
check(f"{fleet} job conn-exporter", jobs.get("conn-exporter", {}).get("params"), "bounded")
check(f"{fleet} job conn-exporter-connections", jobs.get("conn-exporter-connections", {}).get("params"), "connections")
for job in yaml.safe_load(guide_tls_job):
    check(f"guide's {job['job_name']} job", job.get("params"), "bounded")
for name, key, want in (("servicemonitor", "endpoints", "bounded"), ("podmonitor", "podMetricsEndpoints", "bounded"),
                        ("servicemonitor-connections", "endpoints", "connections")):
    for i, ep in enumerate(yaml.safe_load(open(f"{op}/{name}.yaml"))["spec"][key]):
        check(f"{op}/{name}.yaml {key}[{i}]", ep.get("params"), want)
print("\n".join(bad) if bad else "collect[] set on: " + "; ".join(seen))
sys.exit(1 if bad else 0)
PY
ok "every scrape the docs call bounded sets the bounded collect[]; the drill-down job and monitor collect[]=connections"
# Recording rules are loaded wherever alerts are: both shipped configs, and the guide's set-up.
python3 - deploy/prometheus/prometheus-scrape-config.yml deploy/prometheus/prometheus-multi-host-config.yml <<'PY' || fail "a shipped config loads the alerts without the recording rules"
import sys, yaml
bad = [p for p in sys.argv[1:] if yaml.safe_load(open(p)).get("rule_files") != ["alerts.yml", "recording-rules.yml"]]
print("\n".join(f"{p}: rule_files must be alerts.yml and recording-rules.yml" for p in bad) or "both configs load both rule files")
sys.exit(1 if bad else 0)
PY
setup=$(python3 "$OPS_DIR/lib/doc_blocks.py" docs/multi-host-deployment-guide.md prometheus-setup) || fail "no prometheus-setup block"
for f in alerts.yml recording-rules.yml; do
    grep -q "deploy/prometheus/$f " <<<"$setup" || fail "the guide's prometheus-setup block does not install $f"
done
ok "recording rules loaded wherever the alerts are (both configs, the guide's set-up)"

# --- Kubernetes ---------------------------------------------------------------------
kubernetes-validate --strict deploy/kubernetes/*.yaml >"$WORK/out" 2>&1 || { cat "$WORK/out"; fail "kubernetes-validate"; }
if ! grep -q 'daemonset/conn-exporter' "$WORK/out" || ! grep -q 'service/conn-exporter' "$WORK/out"; then
    cat "$WORK/out"
    fail "kubernetes-validate did not validate the DaemonSet and the Service"
fi
python3 - deploy/kubernetes/daemonset.yaml <<'PY' || fail "DaemonSet settings"
import sys, yaml
ds = yaml.safe_load(open(sys.argv[1]))
spec = ds["spec"]["template"]["spec"]
c = spec["containers"][0]
mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
vols = {v["name"]: v for v in spec.get("volumes", [])}
checks = {
    "hostNetwork": spec.get("hostNetwork") is True,
    "runAsUser 65534": c["securityContext"].get("runAsUser") == 65534 and spec["securityContext"].get("runAsUser") == 65534,
    "runAsNonRoot": c["securityContext"].get("runAsNonRoot") is True,
    "readOnlyRootFilesystem": c["securityContext"].get("readOnlyRootFilesystem") is True,
    "no privilege escalation": c["securityContext"].get("allowPrivilegeEscalation") is False,
    "capabilities dropped": c["securityContext"].get("capabilities", {}).get("drop") == ["ALL"],
    "resource limits": {"cpu", "memory"} <= set(c.get("resources", {}).get("limits", {})),
    "resource requests": {"cpu", "memory"} <= set(c.get("resources", {}).get("requests", {})),
    "--path.procfs=/host/proc": "--path.procfs=/host/proc" in c.get("args", []),
    "/host/proc read-only": mounts.get("/host/proc", {}).get("readOnly") is True,
    "/host/proc is the host's /proc": vols.get(mounts.get("/host/proc", {}).get("name"), {}).get("hostPath", {}).get("path") == "/proc",
}
bad = [k for k, v in checks.items() if not v]
print("DaemonSet: " + ("missing " + ", ".join(bad) if bad else "all required settings present"))
sys.exit(1 if bad else 0)
PY
ok "kubernetes-validate --strict: DaemonSet and Service valid"
# The opt-in variants (every namespace; the eBPF lifecycle source): valid, and each adds
# exactly the capabilities its header and docs/ name, nothing else.
kubernetes-validate --strict deploy/kubernetes/all-namespaces/daemonset.yaml deploy/kubernetes/ebpf/daemonset.yaml \
    deploy/kubernetes/nat/daemonset.yaml >"$WORK/out" 2>&1 || { cat "$WORK/out"; fail "kubernetes-validate of the DaemonSet variants"; }
grep -q 'nat/daemonset.yaml passed' "$WORK/out" || { cat "$WORK/out"; fail "kubernetes-validate did not validate nat/daemonset.yaml"; }
python3 - deploy/kubernetes/all-namespaces/daemonset.yaml deploy/kubernetes/ebpf/daemonset.yaml \
    deploy/kubernetes/nat/daemonset.yaml <<'PY' || fail "DaemonSet variants' capabilities"
import sys, yaml
want = {"all-namespaces": ({"SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"}, True),
        "ebpf": ({"BPF", "PERFMON"}, False),
        "nat": ({"SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH", "NET_ADMIN"}, True)}
bad = []
for path in sys.argv[1:]:
    name = path.split("/")[-2]
    caps, host_pid = want[name]
    spec = yaml.safe_load(open(path))["spec"]["template"]["spec"]
    sc = spec["containers"][0]["securityContext"]
    got = set(sc.get("capabilities", {}).get("add", []))
    if sc.get("capabilities", {}).get("drop") != ["ALL"] or got != caps:
        bad.append(f"{name}: capabilities add {sorted(got)}, want {sorted(caps)} after dropping ALL")
    if bool(spec.get("hostPID")) != host_pid:
        bad.append(f"{name}: hostPID {spec.get('hostPID')}, want {host_pid}")
    if sc.get("privileged") or sc.get("allowPrivilegeEscalation") is not False:
        bad.append(f"{name}: privileged or privilege escalation allowed")
    text = open(path).read()
    for c in caps:
        if c not in text.split("apiVersion:")[0]:
            bad.append(f"{name}: the header does not explain {c}")
    args = spec["containers"][0].get("args", [])
    if ("--collector.nat" in args) != (name == "nat"):
        bad.append(f"{name}: --collector.nat in args: {'--collector.nat' in args}, want {name == 'nat'}")
# The NAT variant is the all-namespaces one plus NAT (a pod's sockets are in its namespace,
# kube-proxy's rewrite in the node's): the same args and host paths, and then some.
if len(sys.argv) > 3:
    ns, nat = (yaml.safe_load(open(p))["spec"]["template"]["spec"] for p in (sys.argv[1], sys.argv[3]))
    if [a for a in nat["containers"][0]["args"] if a != "--collector.nat"] != ns["containers"][0]["args"]:
        bad.append("nat: its args are not all-namespaces' plus --collector.nat")
    vols = {v["name"]: v.get("hostPath", {}).get("path") for v in nat["volumes"]}
    if not {v["name"]: v.get("hostPath", {}).get("path") for v in ns["volumes"]}.items() <= vols.items():
        bad.append("nat: lacks a host path of all-namespaces")
    mounts = {m["mountPath"]: m for m in nat["containers"][0]["volumeMounts"]}
    bpffs = mounts.get("/sys/fs/bpf", {})
    if vols.get(bpffs.get("name")) != "/sys/fs/bpf" or bpffs.get("readOnly") is not True:
        bad.append("nat: the node's /sys/fs/bpf is not mounted read-only at /sys/fs/bpf (Cilium detection)")
print("\n".join(bad) if bad else "DaemonSet variants: exactly their stated capabilities")
sys.exit(1 if bad else 0)
PY
# The own-TCP-tables variant is the all-namespaces one plus one privileged init container
# that writes net.ipv4.tcp_child_ehash_entries in the node's network namespace (pods made
# afterwards get a TCP hash table of their own): nothing else may differ, and its header
# states the memory that size costs each namespace.
own_tables=deploy/kubernetes/all-namespaces/own-tcp-tables.yaml
kubernetes-validate --strict "$own_tables" >"$WORK/out" 2>&1 || { cat "$WORK/out"; fail "kubernetes-validate of $own_tables"; }
grep -q 'own-tcp-tables.yaml passed' "$WORK/out" || { cat "$WORK/out"; fail "kubernetes-validate did not validate $own_tables"; }
own_tables_check() { # MANIFEST -> 0 when it is all-namespaces/daemonset.yaml plus the init container
    python3 - deploy/kubernetes/all-namespaces/daemonset.yaml "$1" <<'PY'
import re, sys, yaml
ns, own = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
header = open(sys.argv[2]).read().split("apiVersion:")[0]
spec = own["spec"]["template"]["spec"]
inits = spec.pop("initContainers", [])
bad = []
if own != ns:
    bad.append("it differs from all-namespaces/daemonset.yaml beyond spec.template.spec.initContainers")
if spec.get("hostNetwork") is not True:
    bad.append("no hostNetwork: the sysctl would be written in the pod's namespace, not the node's")
if len(inits) != 1:
    bad.append(f"{len(inits)} init containers, want 1")
else:
    c = inits[0]
    m = re.search(r"\bsysctl -w net\.ipv4\.tcp_child_ehash_entries=(\d+)\b", " ".join(c.get("command", []) + c.get("args", [])))
    if not m:
        bad.append("the init container does not run sysctl -w net.ipv4.tcp_child_ehash_entries=N")
    else:
        n = int(m[1])
        if n <= 0 or n & (n - 1):
            bad.append(f"tcp_child_ehash_entries={n} is not a power of two (the kernel rounds it up)")
        if not re.search(rf"# Memory: {n} entries cost each namespace made afterwards \d+ KiB", header):
            bad.append(f"the header does not state what {n} entries cost each namespace ('# Memory: {n} entries cost ... KiB')")
    if c.get("securityContext", {}).get("privileged") is not True:
        bad.append("the init container is not privileged (/proc/sys is read-only otherwise)")
for cap in ("SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"):
    if cap not in header:
        bad.append(f"the header does not explain {cap}")
print("\n".join(bad) if bad else "own-tcp-tables: all-namespaces plus the init container")
sys.exit(1 if bad else 0)
PY
}
own_tables_check "$own_tables" || fail "$own_tables is not all-namespaces/daemonset.yaml plus the sysctl's init container"
# The check catches a variant that drifts: an exporter flag of its own, an unprivileged init container.
sed 's/^            - --log.format=json$/&\n            - --collector.connections.max-series=1000/' "$own_tables" >"$WORK/own-args.yaml"
sed '/^      initContainers:/,/^      containers:/s/privileged: true/privileged: false/' "$own_tables" >"$WORK/own-unprivileged.yaml"
for broken in own-args own-unprivileged; do
    cmp -s "$WORK/$broken.yaml" "$own_tables" && fail "broken copy $broken is unchanged: fix the sed"
    own_tables_check "$WORK/$broken.yaml" >/dev/null && fail "the own-tcp-tables check accepted a broken copy ($broken)"
done
# NET_ADMIN (conntrack) is granted by the NAT variant alone.
mapfile -t net_admin < <(grep -rl 'NET_ADMIN' deploy/kubernetes)
[[ ${net_admin[*]} == deploy/kubernetes/nat/daemonset.yaml ]] ||
    fail "NET_ADMIN must appear in deploy/kubernetes/nat/daemonset.yaml only, found in: ${net_admin[*]}"
ok "DaemonSet variants (all-namespaces, ebpf, nat, all-namespaces/own-tcp-tables) valid, each with exactly its capabilities; nat = all-namespaces + NAT, own-tcp-tables = all-namespaces + the sysctl's init container, NET_ADMIN in nat only"

# --- Prometheus Operator objects against the Operator's CRD schemas ------------------------
# tests/ops/schemas/*.json come from the Operator's CRDs (extract-crd-schemas.py says how).
op=deploy/kubernetes/prometheus-operator
for kind in servicemonitor podmonitor prometheusrule servicemonitor-connections; do
    check-jsonschema --schemafile "$OPS_DIR/schemas/${kind%-connections}-v1.json" "$op/$kind.yaml" >"$WORK/out" 2>&1 ||
        { cat "$WORK/out"; fail "$op/$kind.yaml does not validate against the ${kind%-connections} CRD schema"; }
done
# The schemas catch mistakes: a misspelt field, a bad duration, a wrong kind.
sed 's/^  endpoints:/  endpoint:/' "$op/servicemonitor.yaml" >"$WORK/sm-typo.yaml"
sed '0,/interval: 30s/s//interval: 30 seconds/' "$op/podmonitor.yaml" >"$WORK/pm-duration.yaml"
sed 's/^kind: "PrometheusRule"/kind: "PrometheusRules"/' "$op/prometheusrule.yaml" >"$WORK/pr-kind.yaml"
for pair in servicemonitor:sm-typo podmonitor:pm-duration prometheusrule:pr-kind; do
    cmp -s "$WORK/${pair#*:}.yaml" "$op/${pair%%:*}.yaml" && fail "broken copy ${pair#*:} is unchanged: fix the sed"
    if check-jsonschema --schemafile "$OPS_DIR/schemas/${pair%%:*}-v1.json" "$WORK/${pair#*:}.yaml" >/dev/null 2>&1; then
        fail "the ${pair%%:*} schema accepted a broken object (${pair#*:})"
    fi
done
# The monitors select what the plain manifests create, and keep job="conn-exporter".
python3 - deploy/kubernetes "$op" <<'PY' || fail "Prometheus Operator objects do not match the manifests"
import sys, yaml
k8s, op = sys.argv[1:]
load = lambda p: yaml.safe_load(open(p))
ds, svc = load(f"{k8s}/daemonset.yaml"), load(f"{k8s}/service.yaml")
sm, pm, pr = load(f"{op}/servicemonitor.yaml"), load(f"{op}/podmonitor.yaml"), load(f"{op}/prometheusrule.yaml")
pod = ds["spec"]["template"]
bad = []
def selects(sel, labels):
    return all(labels.get(k) == v for k, v in sel["matchLabels"].items())
if not selects(sm["spec"]["selector"], svc["metadata"]["labels"]):
    bad.append("ServiceMonitor selector does not match the Service's labels")
if not selects(pm["spec"]["selector"], pod["metadata"]["labels"]):
    bad.append("PodMonitor selector does not match the DaemonSet's pod labels")
if not {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}:
    bad.append("ServiceMonitor endpoint port not in the Service")
if not {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= {p["name"] for p in pod["spec"]["containers"][0]["ports"]}:
    bad.append("PodMonitor port not in the pod")
if svc["metadata"]["labels"].get(sm["spec"]["jobLabel"]) != "conn-exporter":
    bad.append("ServiceMonitor jobLabel does not give job=conn-exporter")
if pod["metadata"]["labels"].get(pm["spec"]["jobLabel"]) != "conn-exporter":
    bad.append("PodMonitor jobLabel does not give job=conn-exporter")
for m in (sm, pm, pr):
    if m["metadata"]["namespace"] != ds["metadata"]["namespace"]:
        bad.append(f"{m['kind']} is not in the DaemonSet's namespace")
rules = load("deploy/prometheus/alerts.yml")["groups"] + load("deploy/prometheus/recording-rules.yml")["groups"]
if pr["spec"]["groups"] != rules:
    bad.append("PrometheusRule groups differ from alerts.yml + recording-rules.yml")
print("\n".join(bad) if bad else "ServiceMonitor, PodMonitor and PrometheusRule match the manifests and the rules")
sys.exit(1 if bad else 0)
PY
ok "Prometheus Operator: ServiceMonitor, PodMonitor, PrometheusRule valid against the CRD schemas (and broken copies refused)"

# --- systemd unit --------------------------------------------------------------------
unit=deploy/systemd/conn-exporter.service
# The default unit alone: a copy away from deploy/systemd/conn-exporter.service.d/, whose
# opt-in drop-in (every namespace, owners) systemd-analyze would otherwise apply too.
mkdir -p "$WORK/unit-default" "$WORK/unit-all/conn-exporter.service.d"
cp "$unit" "$WORK/unit-default/"
cp "$unit" "$WORK/unit-all/"
cp deploy/systemd/conn-exporter.service.d/namespaces.conf "$WORK/unit-all/conn-exporter.service.d/"
systemd-analyze security --offline=true "$WORK/unit-all/conn-exporter.service" >"$WORK/security-all.txt" 2>&1 || true
score_all=$(grep -o 'Overall exposure level for conn-exporter.service: [0-9.]*' "$WORK/security-all.txt" | awk '{print $NF}')
grep -q "| $score_all OK (default unit" docs/namespaces-and-owners.md ||
    { cat "$WORK/security-all.txt"; fail "docs/namespaces-and-owners.md does not state the drop-in's exposure $score_all"; }
ok "systemd-analyze security with the namespaces drop-in: exposure $score_all, as docs/namespaces-and-owners.md states"
mkdir -p "$WORK/unit-ebpf/conn-exporter.service.d"
cp deploy/systemd/conn-exporter.service "$WORK/unit-ebpf/"
cp deploy/systemd/conn-exporter.service.d/ebpf.conf "$WORK/unit-ebpf/conn-exporter.service.d/"
systemd-analyze security --offline=true "$WORK/unit-ebpf/conn-exporter.service" >"$WORK/security-ebpf.txt" 2>&1 || true
score_ebpf=$(grep -o 'Overall exposure level for conn-exporter.service: [0-9.]*' "$WORK/security-ebpf.txt" | awk '{print $NF}')
[[ -n $score_ebpf ]] || { cat "$WORK/security-ebpf.txt"; fail "no exposure for the eBPF drop-in"; }
grep -q "| $score_ebpf OK (default unit" docs/lifecycle.md ||
    { cat "$WORK/security-ebpf.txt"; fail "docs/lifecycle.md does not state the eBPF drop-in's exposure $score_ebpf"; }
grep -q '^CapabilityBoundingSet=CAP_BPF CAP_PERFMON$' deploy/systemd/conn-exporter.service.d/ebpf.conf ||
    fail "the eBPF drop-in must bound the capabilities to CAP_BPF CAP_PERFMON"
ok "systemd-analyze security with the eBPF drop-in: exposure $score_ebpf, as docs/lifecycle.md states"
# The NAT drop-in (--collector.nat: conntrack needs CAP_NET_ADMIN), alone and with the
# namespaces drop-in: exposures as docs/nat.md states them, and the capability sets of the
# two drop-ins add up (systemd merges CapabilityBoundingSet= lines) rather than replace.
nat_conf=deploy/systemd/conn-exporter.service.d/nat.conf
security_with() { # name drop-in... -> prints the exposure; the analysis in $WORK/security-NAME.txt
    local name=$1 d
    shift
    mkdir -p "$WORK/unit-$name/conn-exporter.service.d"
    cp deploy/systemd/conn-exporter.service "$WORK/unit-$name/"
    for d in "$@"; do cp "deploy/systemd/conn-exporter.service.d/$d" "$WORK/unit-$name/conn-exporter.service.d/"; done
    systemd-analyze security --offline=true "$WORK/unit-$name/conn-exporter.service" >"$WORK/security-$name.txt" 2>&1 || true
    grep -o 'Overall exposure level for conn-exporter.service: [0-9.]*' "$WORK/security-$name.txt" | awk '{print $NF}' || true
}
score_nat=$(security_with nat nat.conf)
[[ -n $score_nat ]] || { cat "$WORK/security-nat.txt"; fail "no exposure for the NAT drop-in"; }
grep -q "| $score_nat OK (default unit" docs/nat.md ||
    { cat "$WORK/security-nat.txt"; fail "docs/nat.md does not state the NAT drop-in's exposure $score_nat"; }
score_natns=$(security_with natns nat.conf namespaces.conf)
[[ -n $score_natns ]] || { cat "$WORK/security-natns.txt"; fail "no exposure for the NAT and namespaces drop-ins"; }
grep -q "| $score_natns OK (namespaces.conf alone: $score_all)" docs/nat.md ||
    { cat "$WORK/security-natns.txt"; fail "docs/nat.md does not state the exposure $score_natns of nat.conf with namespaces.conf (alone: $score_all)"; }
security_with plain >/dev/null
grep -q '✓ CapabilityBoundingSet=~CAP_NET_ADMIN' "$WORK/security-plain.txt" || fail "the default unit grants CAP_NET_ADMIN"
grep -q '✗ CapabilityBoundingSet=~CAP_NET_ADMIN' "$WORK/security-nat.txt" || fail "nat.conf does not grant CAP_NET_ADMIN"
for cap in CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_PTRACE; do
    grep -q "✗ CapabilityBoundingSet=~$cap " "$WORK/security-natns.txt" ||
        fail "nat.conf with namespaces.conf: $cap not granted (the drop-ins' capability sets must add up)"
done
# CAP_NET_ADMIN in nat.conf alone, as exactly its two capability lines.
mapfile -t net_admin < <(grep -rl 'NET_ADMIN' deploy/systemd)
[[ ${net_admin[*]} == "$nat_conf" ]] || fail "CAP_NET_ADMIN must appear in $nat_conf only, found in: ${net_admin[*]}"
[[ $(grep '^[A-Za-z]*Capabilit[a-zA-Z]*=' "$nat_conf") == $'CapabilityBoundingSet=CAP_NET_ADMIN\nAmbientCapabilities=CAP_NET_ADMIN' ]] ||
    fail "$nat_conf must grant exactly CAP_NET_ADMIN (bounding and ambient)"
# It turns the collector on: the unit's command replaced (ExecStart= emptied first), with
# --collector.nat and the defaults file's flags; the only drop-in that sets ExecStart.
[[ $(grep '^ExecStart=' "$nat_conf") == $'ExecStart=\nExecStart=conn-exporter --collector.nat $CONN_EXPORTER_ARGS' ]] ||
    fail "$nat_conf: ExecStart= must be emptied, then 'conn-exporter --collector.nat \$CONN_EXPORTER_ARGS'"
mapfile -t exec_dropins < <(grep -l '^ExecStart=' deploy/systemd/conn-exporter.service.d/*.conf)
[[ ${exec_dropins[*]} == "$nat_conf" ]] || fail "only nat.conf may set ExecStart (found: ${exec_dropins[*]}): two would override each other"
# systemd-analyze verify with the drop-in, in both layouts: the installer's (unit in
# /etc/systemd/system, binary in /usr/local/bin) and the .deb's (/lib/systemd/system,
# /usr/bin). The drop-in names the command without a directory: systemd must find it in
# either, and must refuse when there is none (so the command checked is the drop-in's).
[[ -x $BIN ]] || fail "binary $BIN missing: systemd-analyze verify needs it"
verify_nat() { # layout unit-dir bin-dir [no-binary] -> systemd-analyze verify's output in $WORK/verify-nat-LAYOUT.txt
    local layout=$1 unit_dir=$2 bin_dir=$3 root=$WORK/root-nat-$1
    mkdir -p "$root$unit_dir" "$root/etc/systemd/system/conn-exporter.service.d" "$root$bin_dir" "$root/usr/lib/systemd/system"
    sed "s#^ExecStart=/usr/bin/conn-exporter#ExecStart=$bin_dir/conn-exporter#" deploy/systemd/conn-exporter.service \
        >"$root$unit_dir/conn-exporter.service"
    cp "$nat_conf" "$root/etc/systemd/system/conn-exporter.service.d/"
    cp /usr/lib/systemd/system/*.target "$root/usr/lib/systemd/system/" # the unit's default dependencies
    [[ ${4:-} == no-binary ]] || cp "$BIN" "$root$bin_dir/conn-exporter"
    systemd-analyze verify --root="$root" conn-exporter.service >"$WORK/verify-nat-$layout.txt" 2>&1
}
for layout in installer:/etc/systemd/system:/usr/local/bin deb:/lib/systemd/system:/usr/bin; do
    IFS=: read -r name unit_dir bin_dir <<<"$layout"
    verify_nat "$name" "$unit_dir" "$bin_dir" || { cat "$WORK/verify-nat-$name.txt"; fail "systemd-analyze verify with nat.conf ($name layout)"; }
    if grep -q 'conn-exporter' "$WORK/verify-nat-$name.txt"; then
        cat "$WORK/verify-nat-$name.txt"
        fail "systemd-analyze verify reported problems with nat.conf ($name layout)"
    fi
done
verify_nat none /etc/systemd/system /usr/local/bin no-binary &&
    { cat "$WORK/verify-nat-none.txt"; fail "systemd-analyze verify passed nat.conf without a binary: it checks nothing"; }
grep -q 'Command conn-exporter is not executable' "$WORK/verify-nat-none.txt" ||
    { cat "$WORK/verify-nat-none.txt"; fail "without a binary, verify did not name nat.conf's command"; }
ok "nat.conf: exposure $score_nat alone, $score_natns with namespaces.conf (capabilities added up), as docs/nat.md states; CAP_NET_ADMIN there only; ExecStart with --collector.nat verifies in the installer's and the .deb's layouts"
unit=$WORK/unit-default/conn-exporter.service
systemd-analyze security --offline=true "$unit" >"$WORK/security.txt" 2>&1 || true
score=$(grep -o 'Overall exposure level for conn-exporter.service: [0-9.]*' "$WORK/security.txt" | awk '{print $NF}')
[[ -n $score ]] || { cat "$WORK/security.txt"; fail "no exposure score from systemd-analyze security"; }
awk -v s="$score" 'BEGIN { exit !(s <= 1.2) }' || { grep '✗' "$WORK/security.txt"; fail "exposure $score > 1.2"; }
ok "systemd-analyze security --offline=true: exposure $score (target <= 1.2)"
grep -q '^PrivateNetwork=' "$unit" && fail "the unit must not use PrivateNetwork= (socket tables are per namespace)"
families=$(grep '^RestrictAddressFamilies=' "$unit")
for fam in AF_NETLINK AF_INET AF_INET6 AF_UNIX; do
    grep -qw "$fam" <<<"$families" || fail "RestrictAddressFamilies lacks $fam"
done
grep -Eq '^(DynamicUser=yes|User=)' "$unit" || fail "the unit does not drop root"
# verify needs the ExecStart binary: check the unit as the installer writes it.
mkdir -p "$WORK/unit"
sed "s#^ExecStart=/usr/bin/conn-exporter#ExecStart=$BIN#" "$unit" >"$WORK/unit/conn-exporter.service"
if [[ -x $BIN ]]; then
    systemd-analyze verify "$WORK/unit/conn-exporter.service" >"$WORK/out" 2>&1 ||
        { cat "$WORK/out"; fail "systemd-analyze verify"; }
    if grep -v 'Failed to .*bus\|System has not been booted\|not booted with systemd' "$WORK/out" | grep -q 'conn-exporter'; then
        cat "$WORK/out"
        fail "systemd-analyze verify reported problems with the unit"
    fi
    ok "systemd-analyze verify: unit clean"
else
    fail "binary $BIN missing: systemd-analyze verify needs it"
fi

# --- Grafana dashboards (structure; queries run in test-multihost.sh) ------------------
python3 "$OPS_DIR/lib/check_dashboards.py" structure deploy/grafana/conn-exporter-single-host.json \
    deploy/grafana/conn-exporter-multi-host.json >"$WORK/out" || { cat "$WORK/out"; fail "dashboard structure"; }
for f in deploy/grafana/provisioning/dashboards/*.yml deploy/grafana/provisioning/datasources/*.yml; do
    python3 -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); assert d["apiVersion"] == 1' "$f" ||
        fail "bad provisioning file $f"
done
ok "Grafana dashboards: structure (address regexes IPv4-mapped-aware) and provisioning files"

# --- docs ----------------------------------------------------------------------------
n=$(grep -c '^```promql' docs/promql-queries.md)
((n >= 20)) || fail "docs/promql-queries.md has only $n promql blocks"
guide=docs/multi-host-deployment-guide.md
for topic in node_exporter 9100 --listen-address 'Permission' 'firewall' 'cardinality' 'max-series' \
    'tls_server_config' 'basic_auth_users' 'file_sd' 'deploy-to-multiple-hosts.sh'; do
    grep -qi -- "$topic" "$guide" || fail "$guide does not cover '$topic'"
done
ok "docs: $n PromQL blocks; deployment guide covers the troubleshooting topics"

# --- installer refusals ----------------------------------------------------------------
set +e
out=$(setpriv --reuid=nobody --regid=nogroup --clear-groups bash install-conn-exporter.sh --binary /bin/true 2>&1)
rc=$?
set -e
((rc == 1)) || fail "installer as non-root: exit $rc, want 1"
assert_contains "$out" "must run as root" "installer as non-root"
ok "installer refuses non-root: $out"

# No systemd: hide /run/systemd in a private mount namespace (works whether or
# not this machine runs systemd).
set +e
out=$(unshare -m bash -c 'mount -t tmpfs none /run 2>/dev/null || exit 99; bash install-conn-exporter.sh --binary /bin/true' 2>&1)
rc=$?
set -e
((rc == 1)) || fail "installer without systemd: exit $rc, want 1 ($out)"
assert_contains "$out" "systemd is not running" "installer without systemd"
assert_contains "$out" "--init none" "installer without systemd names the alternative"
ok "installer refuses without systemd"

set +e
out=$(bash install-conn-exporter.sh --no-such-option 2>&1)
rc=$?
set -e
((rc == 2)) || fail "installer with a bad option: exit $rc, want 2"
out=$(bash deploy-to-multiple-hosts.sh 2>&1) && fail "deploy without hosts succeeded"
assert_contains "$out" "no hosts given" "deploy without hosts"
ok "bad options and missing hosts are refused"

# The installer's dry run needs no root and changes nothing.
# (In an empty network namespace of its own, so that no port of this machine is in the way.)
out=$(unshare -n setpriv --reuid=nobody --regid=nogroup --clear-groups bash install-conn-exporter.sh --init none \
    --prefix "$WORK/dry" --binary "$BIN" --dry-run 2>&1) || { echo "$out"; fail "installer --dry-run failed"; }
assert_contains "$out" "dry run: nothing is changed" "installer dry run"
[[ ! -e $WORK/dry ]] || fail "installer --dry-run created $WORK/dry"
ok "installer --dry-run runs without root and changes nothing"

# Dry run: lists each host with its command, connects to none (the hosts do not exist).
printf 'alpha.invalid\nbeta.invalid --listen-address :9101  # clash there\n# comment\n\n' >"$WORK/hosts"
touch "$WORK/fake-bin" && chmod +x "$WORK/fake-bin"
out=$(bash deploy-to-multiple-hosts.sh --dry-run --binary "$WORK/fake-bin" --hosts-file "$WORK/hosts" gamma.invalid)
for h in alpha.invalid beta.invalid gamma.invalid; do assert_contains "$out" "[$h]" "dry run"; done
assert_contains "$out" "--listen-address :9101" "dry run per-host options"
assert_contains "$out" "3 host(s) would be installed" "dry run count"
assert_not_contains "$out" "\\" "dry run prints no stray escapes"
out=$(bash deploy-to-multiple-hosts.sh --dry-run --binary "$WORK/fake-bin" a.invalid a.invalid 2>&1) &&
    fail "deploy accepted a duplicate host"
ok "deploy --dry-run lists hosts and per-host options; duplicates refused"
log "all static checks passed"
