#!/usr/bin/env bash
# The container image (deploy/container/): built with buildah from the release
# binary, its file tree checked (the binary, its libraries, nobody's passwd line;
# no shell, no package manager), then run with podman the way the DaemonSet runs
# it: in the "node's" network namespace (one this test creates), the host's PID
# namespace, the host's /proc mounted read-only at /host/proc, non-root, read-only
# root, no capabilities. Its scrape is compared with ss in that namespace.
#
# Run it as root outside `ip netns exec` (it makes its own network namespace):
# `ip netns exec` remounts /sys, which hides the cgroup hierarchy podman needs.
# crun (podman's default runtime in Debian 12) refuses hybrid cgroup hosts
# ("cgroups in hybrid mode not supported"), so the test uses runc.
set -euo pipefail
TEST_NAME=container
# shellcheck source=tests/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
require_bin
require_cmds buildah podman runc ip ss curl python3
cd "$REPO"

WORK=$(mktemp -d /tmp/conn-exporter-ops-container.XXXXXX)
NS=ce-ctr-$$
CTR=conn-exporter-test-$$
STORE=(--root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
PODMAN=(podman "${STORE[@]}" --runtime runc --cgroup-manager cgroupfs --events-backend file)
FIXTURE_PID=
cleanup() {
    "${PODMAN[@]}" rm -f "$CTR" >/dev/null 2>&1 || true
    [[ -n $FIXTURE_PID ]] && kill "$FIXTURE_PID" 2>/dev/null
    buildah "${STORE[@]}" umount --all >/dev/null 2>&1 || true
    ip netns del "$NS" 2>/dev/null || true
    # vfs layers hold files owned by other ids; podman's own reset is not needed for a throwaway root.
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -n $(ip netns identify $$ 2>/dev/null) ]]; then
    fail "run this test outside 'ip netns exec' (it creates its own namespace; podman needs the host's /sys)"
fi

# --- build -----------------------------------------------------------------------------------
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
tag=$(deploy/container/build-image.sh --binary "$BIN" -- "${STORE[@]}" 2>"$WORK/build.log") ||
    { cat "$WORK/build.log"; fail "build-image.sh"; }
[[ $tag == "conn-exporter:$version" ]] || fail "image tagged '$tag', want conn-exporter:$version"
grep -q "image: $tag\$" deploy/kubernetes/daemonset.yaml || fail "deploy/kubernetes/daemonset.yaml does not name $tag"
ok "built $tag"

# --- the image's configuration and file tree ------------------------------------------------------
buildah "${STORE[@]}" inspect --type image "$tag" >"$WORK/inspect.json"
python3 - "$WORK/inspect.json" <<'PY' || fail "image configuration"
import json, sys
cfg = json.load(open(sys.argv[1]))["OCIv1"]["config"]
want = {"User": "65534:65534", "Entrypoint": ["/usr/bin/conn-exporter"]}
bad = [f"{k}={cfg.get(k)!r}, want {v!r}" for k, v in want.items() if cfg.get(k) != v]
if "9100/tcp" not in cfg.get("ExposedPorts", {}):
    bad.append("port 9100 not exposed")
print("image config: " + ("; ".join(bad) if bad else "user 65534:65534, entrypoint /usr/bin/conn-exporter, port 9100"))
sys.exit(1 if bad else 0)
PY
wc=$(buildah "${STORE[@]}" from --pull-never "$tag")
mnt=$(buildah "${STORE[@]}" mount "$wc")
(cd "$mnt" && find . -not -type d | sort) >"$WORK/tree.txt"
cat "$WORK/tree.txt"
expected=(./etc/group ./etc/passwd ./usr/bin/conn-exporter)
while read -r lib; do expected+=(".$lib"); done < <(ldd "$BIN" | grep -oE '(^\s*|=> )/[^ ]+' | sed -E 's/^(\s*|=> )//')
diff <(printf '%s\n' "${expected[@]}" | sort) "$WORK/tree.txt" || fail "the image holds other files than the binary, its libraries and passwd/group"
for f in bin/sh usr/bin/sh bin/bash usr/bin/apt usr/bin/dpkg sbin/apk; do
    [[ ! -e $mnt/$f ]] || fail "the image has $f"
done
cmp -s "$BIN" "$mnt/usr/bin/conn-exporter" || fail "the image's binary is not $BIN"
# The tree alone runs the binary (no container runtime involved).
out=$(chroot --userspec=65534:65534 "$mnt" /usr/bin/conn-exporter --version)
assert_contains "$out" "conn-exporter $version" "chroot into the image tree: --version"
buildah "${STORE[@]}" umount "$wc" >/dev/null
buildah "${STORE[@]}" rm "$wc" >/dev/null
ok "image tree: binary + $(( ${#expected[@]} - 3 )) libraries + passwd/group, no shell or package manager; runs chrooted as 65534: $out"

# --- run it as the DaemonSet does, in a namespace of our own ---------------------------------------
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
in_ns() { ip netns exec "$NS" "$@"; }
in_ns python3 "$OPS_DIR/lib/tcp_fixture.py" --listen 127.0.0.1:21001 --listen '[::1]:21002' \
    --connect 127.0.0.1:21001 --connect '[::1]:21002' --connect 127.0.0.1:21001 >"$WORK/fixture.log" 2>&1 &
FIXTURE_PID=$!
fixture_ready() { [[ $(in_ns ss -Htn state established '( sport = :21001 or sport = :21002 )' | wc -l) -eq 3 ]]; }
wait_until 20 "fixture connections established" fixture_ready

# Non-default limits: runc may not raise what this host does not grant (no CAP_SYS_RESOURCE here).
"${PODMAN[@]}" run -d --name "$CTR" --network "ns:/run/netns/$NS" --pid host \
    --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096 \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    -v /proc:/host/proc:ro "$tag" --path.procfs=/host/proc --web.listen-address=127.0.0.1:19555 >"$WORK/run.log" 2>&1 ||
    { cat "$WORK/run.log"; fail "podman run"; }
healthy() { in_ns curl -fsS --max-time 2 http://127.0.0.1:19555/-/healthy; }
wait_until 20 "the container's exporter answering /-/healthy" healthy
pid=$("${PODMAN[@]}" inspect -f '{{.State.Pid}}' "$CTR")
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
[[ $uid == 65534 ]] || fail "the container's process runs as uid $uid, want 65534"
[[ $(readlink "/proc/$pid/ns/net") == "$(in_ns readlink /proc/self/ns/net)" ]] || fail "the container is not in the node's network namespace"
[[ $(readlink "/proc/$pid/ns/pid") == "$(readlink /proc/self/ns/pid)" ]] || fail "the container is not in the host's PID namespace"
ok "container runs as uid 65534 in the node's network and the host's PID namespace"

# --- scrape and compare with ss ------------------------------------------------------------
in_ns curl -fsS --max-time 10 http://127.0.0.1:19555/metrics >"$WORK/metrics.txt" || fail "scraping the container"
in_ns ss -Htan >"$WORK/ss.txt"
python3 - "$WORK/metrics.txt" "$WORK/ss.txt" <<'PY' || fail "the container's scrape disagrees with ss"
import re, sys
PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
PORTS = {"21001", "21002"}
STATES = {"ESTAB": "ESTABLISHED", "TIME-WAIT": "TIME_WAIT", "CLOSE-WAIT": "CLOSE_WAIT", "SYN-SENT": "SYN_SENT",
          "SYN-RECV": "SYN_RECV", "FIN-WAIT-1": "FIN_WAIT1", "FIN-WAIT-2": "FIN_WAIT2", "LAST-ACK": "LAST_ACK"}
exp = set()
for line in open(sys.argv[1]):
    if line.startswith("network_connections_info{"):
        l = dict(PAIR.findall(line))
        exp.add((l["state"], l["source_address"], l["source_port"], l["destination_address"], l["destination_port"]))
def split(ep):
    host, port = ep.rsplit(":", 1)
    return host.strip("[]").split("%")[0], "0" if port == "*" else port
ss = set()
for line in open(sys.argv[2]):
    f = line.split()
    state = STATES.get(f[0], f[0])
    (la, lp), (ra, rp) = split(f[3]), split(f[4])
    if ra == "*":
        ra = "::" if ":" in la else "0.0.0.0"
    ss.add((state, la, lp, ra, rp))
mine = lambda s: s[2] in PORTS or s[4] in PORTS
e, s = {x for x in exp if mine(x)}, {x for x in ss if mine(x)}
# 2 listeners + 3 connections seen from both ends.
if len(s) != 8:
    print(f"ss shows {len(s)} fixture sockets, want 8: {sorted(s)}"); sys.exit(1)
if e != s:
    print("only in the scrape:", sorted(e - s)); print("only in ss:", sorted(s - e)); sys.exit(1)
listen = {x for x in exp if x[0] == "LISTEN"}
if listen != {x for x in ss if x[0] == "LISTEN"}:
    print("LISTEN sockets differ:", sorted(listen ^ {x for x in ss if x[0] == "LISTEN"})); sys.exit(1)
print(f"{len(e)} fixture sockets and {len(listen)} listeners identical in the scrape and ss")
PY
ok "the container's scrape matches ss: $(tail -n1 <<<"$(python3 "$OPS_DIR/lib/metrics_grep.py" network_connections_info state=LISTEN source_port=19555 <"$WORK/metrics.txt")")"
log "all container checks passed"
