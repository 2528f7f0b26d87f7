#!/usr/bin/env bash
# Dashboards and PromQL by namespace, container, pod and process (issue 11), against a
# real Prometheus (Debian's package). An exporter in --collector.namespaces=all with
# --collector.connections.owner reads namespaces the test made: one whose sockets a
# python3 holds, one whose holder runs in a cgroup shaped as a Kubernetes pod's
# container under containerd (kubepods.slice/.../kubepods-besteffort-pod<uid>.slice/
# cri-containerd-<id>.scope, made by the test), so that the exporter derives
# container_id and pod_uid from it. Prometheus scrapes the exporter and a static target
# standing in for kube-state-metrics, which serves kube_pod_info with that uid. Then:
#  - the pod's series carry the cgroup's pod_uid and container_id, and the documented
#    join names the pod (namespace shop, pod web-0) with the socket count `ss` gives in
#    its namespace; the top-processes query gives python3 the ESTABLISHED count of `ss`;
#  - every docs/promql-queries.md block that needs these labels or kube_pod_info, and
#    every such dashboard variable and panel query (tests/ops/lib/families.py NEEDS),
#    evaluates and returns data.
# Runs outside `ip netns exec` (which remounts /sys without the cgroup hierarchies the
# test writes); everything it starts runs in namespaces of its own.
set -euo pipefail
TEST_NAME=netns-dashboards
# shellcheck source=tests/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
require_bin
require_cmds ip ss prometheus promtool curl python3
cd "$REPO"

P=cxnd$$
NS_EXP=$P-exp
NS_APP=$P-app
NS_POD=$P-pod
WORK=$(mktemp -d /tmp/conn-exporter-ops-netns-dash.XXXXXX)
POD_UID=$(python3 -c 'import uuid; print(uuid.uuid4())')
CONTAINER_ID=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
# The systemd cgroup driver writes the pod's uid with underscores.
POD_CGROUP=kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${POD_UID//-/_}.slice/cri-containerd-$CONTAINER_ID.scope
PROM=http://127.0.0.1:19092
PIDS=()
CGROUP_DIRS=()

cleanup() {
    local rc=$? pid
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    if ((rc != 0)); then
        tail -n 20 "$WORK/prometheus.log" "$WORK/exporter.log" 2>/dev/null
    fi
    for ns in "$NS_EXP" "$NS_APP" "$NS_POD"; do ip netns del "$ns" 2>/dev/null; done
    rm_cgroup_dirs "${CGROUP_DIRS[@]}"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for ns in "$NS_EXP" "$NS_APP" "$NS_POD"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done

# --- the pod's cgroup, and a process in it holding sockets in the pod's namespace ---------
mapfile -t pod_dirs < <(cgroup_dirs "$POD_CGROUP")
((${#pod_dirs[@]})) || fail "no cgroup hierarchy for the pod"
for d in "${pod_dirs[@]}"; do
    top=${d%%/kubepods.slice/*}/kubepods.slice
    [[ -d $top ]] || CGROUP_DIRS+=("$top")
    mkdir -p "$d"
    CGROUP_DIRS+=("$d")
done
# The holder enters the cgroup, then the namespace (ip netns exec execs python3: one pid).
# shellcheck disable=SC2016 # expanded by the inner bash
bash -c 'for d in "${@:2}"; do echo $$ >"$d/cgroup.procs"; done; exec ip netns exec "$1" python3 "$0" \
    --listen 127.0.0.1:8080 --connect 127.0.0.1:8080 --connect 127.0.0.1:8080' \
    "$OPS_DIR/lib/tcp_fixture.py" "$NS_POD" "${pod_dirs[@]}" >"$WORK/pod.log" 2>&1 &
PIDS+=("$!")
ip netns exec "$NS_APP" python3 "$OPS_DIR/lib/tcp_fixture.py" --listen 127.0.0.1:8081 \
    --connect 127.0.0.1:8081 --connect 127.0.0.1:8081 --connect 127.0.0.1:8081 >"$WORK/app.log" 2>&1 &
PIDS+=("$!")
est() { ip netns exec "$1" ss -Htan state established | wc -l; }
settled() { [[ $(est "$NS_POD") == 4 && $(est "$NS_APP") == 6 ]]; }
wait_until 20 "the holders' connections" settled
grep -q "kubepods-besteffort-pod${POD_UID//-/_}.slice/cri-containerd-$CONTAINER_ID.scope" "/proc/${PIDS[0]}/cgroup" ||
    fail "the pod's holder is not in its cgroup: $(cat "/proc/${PIDS[0]}/cgroup")"
ok "namespaces $NS_APP (python3, 6 established) and $NS_POD (in pod $POD_UID's container cgroup, 4 established)"

# --- kube-state-metrics stand-in: kube_pod_info for the pod, and one for another pod ------
cat >"$WORK/ksm.py" <<EOF
import http.server
BODY = b'''# HELP kube_pod_info Information about pod.
# TYPE kube_pod_info gauge
kube_pod_info{namespace="shop",pod="web-0",uid="$POD_UID",node="node-1",created_by_kind="StatefulSet",created_by_name="web",host_network="false",priority_class=""} 1
kube_pod_info{namespace="kube-system",pod="coredns-0",uid="00000000-0000-4000-8000-000000000000",node="node-1",created_by_kind="ReplicaSet",created_by_name="coredns",host_network="false",priority_class=""} 1
'''
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", 9200), H).serve_forever()
EOF
ip netns exec "$NS_EXP" python3 "$WORK/ksm.py" >"$WORK/ksm.log" 2>&1 &
PIDS+=("$!")

# --- the exporter and Prometheus ---------------------------------------------------------
ip netns exec "$NS_EXP" "$BIN" --web.listen-address=127.0.0.1:9100 --collector.namespaces=all \
    --collector.connections.owner >"$WORK/exporter.log" 2>&1 &
PIDS+=("$!")
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  evaluation_interval: 2s
scrape_configs:
  - job_name: conn-exporter
    static_configs: [{ targets: ["127.0.0.1:9100"] }]
  - job_name: kube-state-metrics
    static_configs: [{ targets: ["127.0.0.1:9200"] }]
EOF
promtool check config "$WORK/prometheus.yml" >/dev/null || fail "Prometheus config invalid"
ip netns exec "$NS_EXP" prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/data" \
    --web.listen-address=127.0.0.1:19092 >"$WORK/prometheus.log" 2>&1 &
PIDS+=("$!")
PROM_START=$(date +%s)
promq() { ip netns exec "$NS_EXP" curl -fsS --max-time 10 -G "$PROM/api/v1/query" --data-urlencode "query=$1"; }
# value QUERY: the single result's value, or "none".
value() {
    promq "$1" | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if len(r) == 1 else "none" if not r else "many")'
}
# The exporter reads every namespace on the machine: a scrape takes a while on a busy one.
scraped() { [[ $(value "count(network_connection_states{netns=\"$NS_POD\"}) > 0 and on () count(kube_pod_info) == 2") =~ ^[0-9] ]]; }
wait_until 60 "Prometheus has the pod's namespace and kube_pod_info" scraped

# --- known facts: the pod's labels from its cgroup, the join, the processes ----------------
labels=$(promq "group by (netns, container_id, pod_uid) (network_connection_states{netns=\"$NS_POD\"})")
python3 - "$labels" "$POD_UID" "$CONTAINER_ID" <<'PY' || fail "the pod namespace's labels"
import json, sys
res = json.loads(sys.argv[1])["data"]["result"]
got = [(r["metric"].get("pod_uid"), r["metric"].get("container_id")) for r in res]
assert got == [(sys.argv[2], sys.argv[3])], f"pod_uid, container_id: {got}, want {[(sys.argv[2], sys.argv[3])]}"
PY
pod_sockets=$(ip netns exec "$NS_POD" ss -Htan | wc -l)
# The join as docs/promql-queries.md writes it (its block starting "sum by (namespace, pod)").
join=$(cd "$OPS_DIR/lib" && python3 -c '
import sys
from run_doc_queries import blocks
qs = [q for _, q, _ in blocks(open(sys.argv[1]).read()) if q.startswith("sum by (namespace, pod) (")]
assert len(qs) == 1, qs
print(qs[0])' "$REPO/docs/promql-queries.md") || fail "the pod join is not in docs/promql-queries.md"
joined=$(promq "$join")
python3 - "$joined" "$pod_sockets" <<'PY' || fail "the kube_pod_info join"
import json, sys
res = json.loads(sys.argv[1])["data"]["result"]
got = sorted((r["metric"].get("namespace"), r["metric"].get("pod"), r["value"][1]) for r in res)
assert got == [("shop", "web-0", sys.argv[2])], f"joined {got}, want shop/web-0 with {sys.argv[2]} sockets (ss)"
PY
app_est=$(est "$NS_APP")
top=$(value "sum by (process) (network_connections_info{netns=\"$NS_APP\",state=\"ESTABLISHED\",process=\"python3\"})")
[[ $top == "$app_est" ]] || fail "python3's ESTABLISHED sockets in $NS_APP: Prometheus $top, ss $app_est"
ok "pod $POD_UID: container_id from the cgroup; join names shop/web-0 with $pod_sockets sockets (= ss); python3 holds $app_est established in $NS_APP (= ss)"

# --- every query that needs these labels or kube_pod_info: documented and dashboards --------
# Range panels want a few scrapes inside their window.
elapsed=$(($(date +%s) - PROM_START))
((elapsed >= 12)) || sleep $((12 - elapsed))
HAVE=namespaces,owners,kube_pod_info
# --exporter: only a family this exporter does not serve (yet: families.py QUALITY) may
# go without data; every other SKIP fails below.
ip netns exec "$NS_EXP" python3 "$OPS_DIR/lib/run_doc_queries.py" --prom "$PROM" --have "$HAVE" --only-needing \
    --exporter http://127.0.0.1:9100/metrics docs/promql-queries.md >"$WORK/doc-queries.txt" 2>&1 || { cat "$WORK/doc-queries.txt"; fail "docs/promql-queries.md queries"; }
sed 's/^/    /' "$WORK/doc-queries.txt"
# The NAT query ("Backends of a Service") is required to return data by test-nat.sh,
# which makes translated connections; here it must evaluate.
grep '^SKIP' "$WORK/doc-queries.txt" | grep -v 'data not required without nat:' | grep -qv 'the exporter serves no' &&
    fail "a documented query was not required to return data"
now=$(date +%s)
ip netns exec "$NS_EXP" python3 "$OPS_DIR/lib/check_dashboards.py" queries --prom "$PROM" --job conn-exporter \
    --instances 127.0.0.1:9100 --rate-interval 10s --start "$((now - 10))" --end "$now" --have "$HAVE" --only-needing \
    --exporter http://127.0.0.1:9100/metrics \
    deploy/grafana/conn-exporter-single-host.json deploy/grafana/conn-exporter-multi-host.json \
    >"$WORK/dash-queries.txt" 2>&1 || { cat "$WORK/dash-queries.txt"; fail "dashboard queries"; }
sed 's/^/    /' "$WORK/dash-queries.txt"
# The NAT panels (families.py NEEDS nat) need connections that conntrack translated,
# which this test does not make: they must evaluate, and may be empty here.
grep 'SKIP' "$WORK/dash-queries.txt" | grep -v 'needs nat$' | grep -qv 'the exporter serves no' &&
    fail "a dashboard query was not required to return data"
ok "docs: $(tail -n1 "$WORK/doc-queries.txt"); dashboards: $(grep -c '^  ok ' "$WORK/dash-queries.txt") panel queries return data"
log "all namespace dashboard checks passed"
