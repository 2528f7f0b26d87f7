#!/usr/bin/env bash
# Booted-system proof: a minimal Debian bookworm (debootstrap, cached) booted
# with systemd-nspawn -b in its own network namespace. Inside it, with the
# container's own systemd:
#  - install-conn-exporter.sh refuses a port held by another program, then
#    installs (with --listen-address), upgrades, and the service is active,
#    enabled, runs as a dynamic non-root user without capabilities, and its
#    /metrics shows the container's sockets (the same listeners as `ss`), not
#    the host's;
#  - a web config whose key only root can read is refused before the running
#    service is touched; with --web-config-dir the key is root:conn-exporter-keys
#    0640, a SupplementaryGroups= drop-in lets the dynamic user read it, and the
#    service serves TLS (SECURITY.md, "Key ownership");
#  - --uninstall, with no other option, leaves no unit, binary, defaults file,
#    web config or drop-in;
#  - the .deb from `cargo deb` installs the same unit with dpkg -i, starts it,
#    and dpkg --purge removes it.
set -euo pipefail
TEST_NAME=booted
# shellcheck source=tests/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
require_bin
require_cmds debootstrap systemd-nspawn nsenter cargo cargo-deb python3 ss timeout flock openssl bpftool
cd "$REPO"

MACHINE=cxt-booted-$$
WORK=$(mktemp -d /var/tmp/conn-exporter-ops-booted.XXXXXX)
NSPAWN_PID=""
MARKER_PID=""
LOADGEN_PID=""
MOUNTED_NSPAWN_RUN=0

cleanup() {
    local rc=$? i
    set +e
    if [[ -n $NSPAWN_PID ]] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill "$NSPAWN_PID" # nspawn asks the container's systemd to power off
        for ((i = 0; i < 150; i++)); do
            kill -0 "$NSPAWN_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$NSPAWN_PID" 2>/dev/null
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    [[ -n $MARKER_PID ]] && kill "$MARKER_PID" 2>/dev/null
    [[ -n $LOADGEN_PID ]] && kill "$LOADGEN_PID" 2>/dev/null && wait "$LOADGEN_PID" 2>/dev/null
    if ((rc != 0)); then
        echo "--- nspawn log (tail)"
        tail -n 30 "$WORK/nspawn.log" 2>/dev/null
    fi
    ((MOUNTED_NSPAWN_RUN)) && umount /run/systemd/nspawn && rmdir /run/systemd/nspawn 2>/dev/null
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the root tree, cached between runs ----------------------------------------------
start=$SECONDS
debian_image
ok "root tree ready ($IMAGE, $((SECONDS - start))s)"

# --- the .deb --------------------------------------------------------------------------
start=$SECONDS
mkdir -p "$WORK/deb"
[[ $BIN -ef $REPO/target/release/conn-exporter ]] ||
    log "note: the .deb packages target/release/conn-exporter (cargo-deb's path), not $BIN"
# build-deb.sh writes the man pages and completions the package ships, then runs cargo deb.
deploy/debian/build-deb.sh --no-build -q -o "$WORK/deb/" >"$WORK/cargo-deb.log" 2>&1 || { cat "$WORK/cargo-deb.log"; fail "cargo deb failed"; }
DEB=$(ls "$WORK"/deb/*.deb)
ok "cargo deb built $(basename "$DEB") ($((SECONDS - start))s)"

# --- boot -------------------------------------------------------------------------------
start=$SECONDS
mkdir -p "$WORK/root"
cp -a --reflink=auto "$IMAGE/." "$WORK/root/"
mkdir -p "$WORK/bin" && cp "$BIN" "$WORK/bin/conn-exporter"
# nspawn keeps state in /run/systemd/nspawn, which must be on a tmpfs.
if [[ $(stat -f -c %T /run 2>/dev/null) != tmpfs ]] && ! mountpoint -q /run/systemd/nspawn; then
    mkdir -p /run/systemd/nspawn
    mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
    MOUNTED_NSPAWN_RUN=1
fi
# --register=no --keep-unit: this host may have no systemd/machined to talk to.
systemd-nspawn --boot --directory="$WORK/root" --machine="$MACHINE" --register=no --keep-unit \
    --private-network --console=passive \
    --capability=CAP_BPF,CAP_PERFMON --system-call-filter=bpf \
    --bind-ro="$REPO:/mnt/repo" --bind-ro="$WORK/bin:/mnt/bin" --bind-ro="$WORK/deb:/mnt/deb" \
    >"$WORK/nspawn.log" 2>&1 &
NSPAWN_PID=$!
has_leader() { [[ -n $(nspawn_leader "$NSPAWN_PID") ]]; }
wait_until 30 "the container's init" has_leader
LEADER=$(nspawn_leader "$NSPAWN_PID")
# Run a command inside the container, as its root, in all its namespaces.
cexec() {
    nsenter --target "$LEADER" --mount --uts --ipc --net --pid --root --wd \
        /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}
state=$(nspawn_booted "$LEADER" "$NSPAWN_PID")
case $state in
    running) ;;
    degraded) log "system is degraded: $(cexec systemctl --failed --no-legend --plain | tr '\n' ' ')" ;;
    *) fail "container did not boot: '$state'" ;;
esac
[[ $(cexec cat /proc/1/comm) == systemd ]] || fail "PID 1 in the container is not systemd"
[[ $(readlink "/proc/$LEADER/ns/net") != "$(readlink /proc/self/ns/net)" ]] || fail "container shares the host's network namespace"
ok "booted Debian $(cexec cat /etc/debian_version) with systemd $(cexec systemctl --version | awk 'NR==1{print $2}') ($((SECONDS - start))s): $state"

# A listener on the host side: it must not show up in the container's metrics.
MARKER_PORT=$((30000 + RANDOM % 20000))
python3 "$OPS_DIR/lib/tcp_fixture.py" --listen "127.0.0.1:$MARKER_PORT" >/dev/null 2>&1 &
MARKER_PID=$!

if [[ $BIN -ef $REPO/target/release/conn-exporter ]]; then
    BIN_ARGS=() # the installer's default: target/release/conn-exporter of the repository
else
    BIN_ARGS=(--binary /mnt/bin/conn-exporter)
fi
install_in() { cexec bash -c 'cd /mnt/repo && ./install-conn-exporter.sh "$@"' install "${BIN_ARGS[@]}" "$@"; }
# Callers read the body whole before grepping it: a grep -q that stops early leaves curl
# writing into a closed pipe (exit 23), a failure under pipefail.
scrape() { cexec curl -fsS --max-time 10 "http://127.0.0.1:${1:-9100}/metrics"; }
grep_metrics() { python3 "$OPS_DIR/lib/metrics_grep.py" "$@"; }

# --- port clash: "node_exporter" holds 9100 ------------------------------------------------
cexec cp /usr/bin/systemd-socket-activate /usr/local/bin/node_exporter
cexec systemd-run --quiet --unit=fake-node-exporter /usr/local/bin/node_exporter --listen=9100 /bin/cat
node_exporter_listens() { cexec ss -Htlnp 'sport = :9100' | grep -q node_exporter; }
wait_until 10 "stand-in node_exporter on 9100" node_exporter_listens
set +e
out=$(install_in 2>&1)
rc=$?
set -e
((rc == 1)) || fail "install with 9100 taken: exit $rc, want 1: $out"
assert_contains "$out" "port 9100 is already in use (node_exporter" "clash message"
assert_contains "$out" "--listen-address" "clash message names the flag"
cexec test ! -e /etc/systemd/system/conn-exporter.service || fail "clash: the unit was installed anyway"
cexec test ! -e /usr/local/bin/conn-exporter || fail "clash: the binary was installed anyway"
ok "install refused while node_exporter holds 9100: $(grep -m1 'already in use' <<<"$out")"

# --- install on another port, as the message suggests -----------------------------------------
start=$SECONDS
out=$(install_in --listen-address :9101 2>&1) || { echo "$out"; fail "install with --listen-address :9101"; }
[[ $(cexec systemctl is-active conn-exporter) == active ]] || fail "service not active after install"
[[ $(cexec systemctl is-enabled conn-exporter) == enabled ]] || fail "service not enabled after install"
body=$(scrape 9101) || fail "no answer on :9101"
grep -q '^conn_exporter_build_info' <<<"$body" || fail "no metrics on :9101"
ok "installed on :9101 beside node_exporter: active, enabled ($((SECONDS - start))s)"

# --- upgrade back to the default port once 9100 is free -----------------------------------------
cexec systemctl stop fake-node-exporter
pid_before=$(cexec systemctl show -p MainPID --value conn-exporter)
out=$(install_in 2>&1) || { echo "$out"; fail "re-running the installer (upgrade)"; }
pid=$(cexec systemctl show -p MainPID --value conn-exporter)
[[ $pid != "$pid_before" && $pid != 0 ]] || fail "upgrade did not restart the service"
[[ $(cexec systemctl is-active conn-exporter) == active ]] || fail "service not active after upgrade"
assert_contains "$(cexec cat /etc/default/conn-exporter)" "--web.listen-address=:9100" "defaults after upgrade"
ok "re-run upgraded in place: new pid $pid, listening on :9100"

# --- the service user ---------------------------------------------------------------------
status=$(cexec cat "/proc/$pid/status")
uid=$(awk '/^Uid:/{print $2}' <<<"$status")
((uid != 0)) || fail "the exporter runs as root"
grep -q '^CapEff:[[:space:]]*0000000000000000$' <<<"$status" || fail "the exporter has capabilities: $(grep CapEff <<<"$status")"
grep -q '^NoNewPrivs:[[:space:]]*1$' <<<"$status" || fail "NoNewPrivs is not set"
user=$(cexec getent passwd "$uid" | cut -d: -f1 || true)
ok "service runs as uid $uid (${user:-dynamic user}), no capabilities, no_new_privs"

# --- a scrape from inside shows the container's sockets ------------------------------------
PROBE_PORT=$((30000 + RANDOM % 20000))
((PROBE_PORT != MARKER_PORT)) || PROBE_PORT=$((PROBE_PORT + 1))
cexec systemd-run --quiet --unit=probe-listener /usr/bin/systemd-socket-activate --listen="127.0.0.1:$PROBE_PORT" /bin/cat
probe_listens() { cexec ss -Htln "sport = :$PROBE_PORT" | grep -q .; }
wait_until 10 "probe listener in the container" probe_listens
body=$(scrape)
grep_metrics network_connections_info state=LISTEN "source_port=$PROBE_PORT" source_address=127.0.0.1 interface=lo <<<"$body" >/dev/null ||
    fail "the container's listener :$PROBE_PORT is missing from /metrics"
if grep_metrics network_connections_info "source_port=$MARKER_PORT" <<<"$body" >/dev/null; then
    fail "the host's listener :$MARKER_PORT shows in the container's /metrics"
fi
ss_ports=$(cexec ss -Htln | awk '{print $4}' | sed 's/.*://' | sort -un | tr '\n' ' ')
metric_ports=$(grep_metrics network_connections_info state=LISTEN <<<"$body" |
    python3 -c 'import json,sys; print(" ".join(sorted({json.loads(l)["source_port"] for l in sys.stdin}, key=int)) + " ")')
[[ $ss_ports == "$metric_ports" ]] || fail "listening ports differ: ss '$ss_ports', metrics '$metric_ports'"
grep_metrics conn_exporter_scrape_collector_success collector=connections <<<"$body" | grep -q '"__value__": "1"' ||
    fail "connections collector failed under the hardened unit"
grep_metrics conn_exporter_scrape_collector_success collector=states <<<"$body" | grep -q '"__value__": "1"' ||
    fail "states collector failed under the hardened unit"
# The service user receives the kernel's socket-destroy notifications: the scrapes above
# were connections to :9100, closed since, so later scrapes count them (issue 10).
lifecycle_counts() {
    local b
    b=$(scrape)
    grep_metrics conn_exporter_scrape_collector_success collector=lifecycle <<<"$b" | grep -q '"__value__": "1"' &&
        grep_metrics network_connections_closed_total direction=inbound source_port=9100 <<<"$b" | grep -q '"__value__"'
}
wait_until 10 "lifecycle collector counting closed scrapes under the hardened unit" lifecycle_counts
score=$(cexec systemd-analyze security conn-exporter.service --no-pager 2>/dev/null | grep -o 'exposure level for conn-exporter.service: [0-9.]*' | awk '{print $NF}')
ok "scrape from inside: listening ports match ss ($metric_ports), probe :$PROBE_PORT present, host's :$MARKER_PORT absent; collectors succeed, closed connections counted; live exposure ${score:-?}"

# --- 40 concurrent gzip scrapes of 20k sockets stay within the unit's TasksMax ---------------
# 10k loopback connections (20k sockets) in the container's network namespace, made by the
# host's python3; the exporter reads them as the hardened service.
nsenter --target "$LEADER" --net python3 "$REPO/bench/loadgen.py" -n 10000 --force >"$WORK/loadgen.out" 2>"$WORK/loadgen.err" &
LOADGEN_PID=$!
loadgen_ready() { grep -q '^READY' "$WORK/loadgen.out"; }
wait_until 120 "10k connections in the container" loadgen_ready
established=$(cexec ss -Htan state established | wc -l)
((established >= 20000)) || fail "the container holds $established established sockets, want 20000"
pid=$(cexec systemctl show -p MainPID --value conn-exporter)
tasks_max=$(cexec systemctl show -p TasksMax --value conn-exporter)
idle_threads=$(cexec bash -c "ls /proc/$pid/task | wc -l")
[[ $tasks_max =~ ^[0-9]+$ ]] || fail "TasksMax of the unit: '$tasks_max'"
# Sample the exporter's thread count while the scrapes run; keep the peak.
cexec bash -c "peak=0; while [[ ! -e /run/cx-scrapes-done ]]; do n=\$(ls /proc/$pid/task | wc -l); ((n > peak)) && peak=\$n; sleep 0.02; done; echo \$peak" >"$WORK/peak" &
SAMPLER=$!
# shellcheck disable=SC2016 # expanded by the container's bash
codes=$(cexec bash -c 'for i in $(seq 40); do curl -s --compressed --max-time 60 -o /dev/null -w "%{http_code}\n" http://127.0.0.1:9100/metrics & done; wait')
cexec touch /run/cx-scrapes-done
wait "$SAMPLER"
peak=$(cat "$WORK/peak")
ok_count=$(grep -c '^200$' <<<"$codes" || true)
((ok_count == 40)) || fail "40 concurrent scrapes: $ok_count answered 200 ($(sort <<<"$codes" | uniq -c | tr '\n' ' '))"
[[ $(cexec systemctl is-active conn-exporter) == active ]] || fail "the service died under 40 concurrent scrapes"
# Each gzip scrape in flight holds two threads: more than four above idle means at least
# two ran at once (how many overlap depends on the host's speed).
((peak >= idle_threads + 4 && peak <= tasks_max)) ||
    fail "peak threads $peak (idle $idle_threads) against TasksMax $tasks_max"
kill "$LOADGEN_PID" && wait "$LOADGEN_PID" 2>/dev/null
LOADGEN_PID=""
ok "40 concurrent gzip scrapes of $established sockets: all 200, service active, peak $peak threads (idle $idle_threads) within TasksMax $tasks_max"

# --- the lifecycle source: notifications under the default unit, eBPF under its drop-in ---------
# The container may hold CAP_BPF and CAP_PERFMON (nspawn --capability); the default unit
# bounds them away, so auto must pick the notifications; deploy/systemd/'s ebpf.conf
# grants exactly those two, so auto must pick eBPF, and stopping it must leave no program.
lifecycle_source() { # prints the source the scrape names, or nothing
    local b
    b=$(scrape) || return 0
    grep_metrics conn_exporter_lifecycle_source_info <<<"$b" | python3 -c 'import json,sys; print(" ".join(json.loads(l)["source"] for l in sys.stdin))'
}
service_programs() { # ids of the BPF programs the container's exporter holds (its fds' fdinfo)
    python3 - "$LEADER" <<'PY'
import os, sys
mine = os.readlink(f"/proc/{sys.argv[1]}/ns/pid")
ids = set()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if os.readlink(f"/proc/{pid}/ns/pid") != mine or open(f"/proc/{pid}/comm").read().strip() != "conn-exporter":
            continue
        for fd in os.listdir(f"/proc/{pid}/fdinfo"):
            for line in open(f"/proc/{pid}/fdinfo/{fd}"):
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
    except OSError:
        continue
print(" ".join(map(str, sorted(ids))))
PY
}
loaded_programs() { bpftool -j prog show | python3 -c 'import json,sys; print(" ".join(str(p["id"]) for p in json.load(sys.stdin)))'; }
src=$(lifecycle_source)
[[ $src == netlink ]] || fail "default unit: lifecycle source '$src', want netlink"
cexec mkdir -p /etc/systemd/system/conn-exporter.service.d
cexec cp /mnt/repo/deploy/systemd/conn-exporter.service.d/ebpf.conf /etc/systemd/system/conn-exporter.service.d/ebpf.conf
cexec systemctl daemon-reload
cexec systemctl restart conn-exporter
source_is_ebpf() { [[ $(lifecycle_source) == ebpf ]]; }
deadline=$((SECONDS + 20))
until source_is_ebpf; do
    ((SECONDS < deadline)) ||
        fail "with ebpf.conf: lifecycle source '$(lifecycle_source)', want ebpf; the log: $(cexec journalctl -u conn-exporter -n 8 --no-pager)"
    sleep 0.5
done
ebpf_counts() {
    local b
    b=$(scrape) || return 1
    grep_metrics conn_exporter_scrape_collector_success collector=lifecycle <<<"$b" | grep -q '"__value__": "1"' &&
        grep_metrics network_connections_closed_total direction=inbound source_port=9100 <<<"$b" | grep -q '"__value__"'
}
wait_until 10 "the eBPF source counting closed scrapes under the drop-in" ebpf_counts
new_ids=$(service_programs)
[[ -n $new_ids ]] || fail "the eBPF source is in use but the exporter holds no BPF program"
loaded=$(loaded_programs)
for id in $new_ids; do
    [[ " $loaded " == *" $id "* ]] || fail "bpftool does not list program $id the exporter holds"
done
caps=$(cexec bash -c "grep CapEff /proc/\$(systemctl show -p MainPID --value conn-exporter)/status" | awk '{print $2}')
cexec rm /etc/systemd/system/conn-exporter.service.d/ebpf.conf
cexec rmdir --ignore-fail-on-non-empty /etc/systemd/system/conn-exporter.service.d
cexec systemctl daemon-reload
cexec systemctl restart conn-exporter
source_is_netlink() { [[ $(lifecycle_source) == netlink ]]; }
wait_until 20 "the notifications again without the drop-in" source_is_netlink
left=$(loaded_programs)
for id in $new_ids; do
    [[ " $left " != *" $id "* ]] || fail "BPF program $id of the stopped exporter is still loaded"
done
ok "lifecycle source: netlink under the default unit; eBPF under ebpf.conf (CapEff $caps, programs $new_ids, closed scrapes counted); none left after it stopped"

# --- all mode from the eBPF walk under namespaces.conf ------------------------------------------
# namespaces.conf grants what the eBPF walk of the host's TCP table needs beyond setns
# (CAP_SYS_ADMIN already covers CAP_BPF and CAP_PERFMON): bpf(). With
# --collector.namespaces=all, auto must read with the walk, and the scrape must hold the
# container's TCP sockets as its `ss -tan` lists them (taken before and after the scrape).
socket_source() {
    local b
    b=$(scrape) || return 0
    grep_metrics conn_exporter_socket_source_info <<<"$b" | python3 -c 'import json,sys; print(" ".join(json.loads(l)["source"] for l in sys.stdin))'
}
cexec cp /etc/default/conn-exporter /root/conn-exporter.default
cexec sed -i 's/^CONN_EXPORTER_ARGS="\(.*\)"$/CONN_EXPORTER_ARGS="\1 --collector.namespaces=all"/' /etc/default/conn-exporter
cexec grep -q -- '--collector.namespaces=all' /etc/default/conn-exporter || fail "could not add --collector.namespaces=all to /etc/default/conn-exporter: $(cexec cat /etc/default/conn-exporter)"
cexec mkdir -p /etc/systemd/system/conn-exporter.service.d
cexec cp /mnt/repo/deploy/systemd/conn-exporter.service.d/namespaces.conf /etc/systemd/system/conn-exporter.service.d/namespaces.conf
cexec systemctl daemon-reload
cexec systemctl restart conn-exporter
source_is_table() { [[ $(socket_source) == ebpf ]]; }
deadline=$((SECONDS + 20))
until source_is_table; do
    ((SECONDS < deadline)) ||
        fail "with namespaces.conf and all mode: socket source '$(socket_source)', want ebpf; the log: $(cexec journalctl -u conn-exporter -n 8 --no-pager)"
    sleep 0.5
done
logs_table() { cexec journalctl -u conn-exporter -n 50 --no-pager | grep -q "sockets are read by an eBPF walk of the host's TCP hash table"; }
wait_until 10 "the log saying all mode reads with the eBPF walk" logs_table
# Connections of the container's own, held while the scrape runs.
# (The image has no Python: systemd-socket-activate accepts, bash connects.)
cexec systemd-run --quiet --unit=cx-table-listen /usr/bin/systemd-socket-activate --listen=127.0.0.1:47123 -a --inetd /bin/cat
listening() { cexec ss -Htln 'sport = :47123' | grep -q .; }
wait_until 10 "the container's listener on 47123" listening
# shellcheck disable=SC2016 # expanded by the container's bash
cexec systemd-run --quiet --unit=cx-table-hold /bin/bash -c \
    'for fd in 3 4 5 6 7; do eval "exec $fd<>/dev/tcp/127.0.0.1/47123"; done; sleep 300'
held() { cexec ss -Htn state established '( sport = :47123 )' | grep -c . | grep -qx 5; }
wait_until 10 "the container's five held connections" held
table_matches_ss() {
    local before body after
    before=$(cexec ss -Htan)
    body=$(scrape) || return 1
    after=$(cexec ss -Htan)
    python3 - "$OPS_DIR/lib" <(printf '%s\n' "$before") <(printf '%s\n' "$after") <(grep_metrics network_connections_info netns=host <<<"$body") <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1])
from netns_truth import read_ss
# ss shows a dual-stack wildcard as *, which read_ss makes 0.0.0.0; the exporter says ::.
def norm(k):
    return tuple("0.0.0.0" if x == "::" else x for x in k)
before, after = ({norm(k) for k in read_ss(p)} for p in sys.argv[2:4])
got = set()
for line in open(sys.argv[4]):
    m = json.loads(line)
    if m["state"] != "CLOSE":  # UDP sockets; ss -t lists TCP only
        got.add(norm((m["state"], m["source_address"], m["source_port"], m["destination_address"], m["destination_port"])))
# A socket in both ss listings must be in the scrape; one the scrape holds must be in one.
# The scrape's own connection to :9100 exists only while it runs.
own = {k for k in got - before - after if k[0] == "ESTABLISHED" and "9100" in (k[2], k[4])}
bad = [f"missing {k}" for k in sorted((before & after) - got)] + [f"not in ss {k}" for k in sorted(got - before - after - own)]
print("\n".join(bad[:20]), file=sys.stderr)
print(len(before & after))
sys.exit(1 if bad else 0)
PY
}
matched=""
for _ in 1 2 3 4 5; do
    if matched=$(table_matches_ss 2>"$WORK/table-ss.txt"); then break; fi
    matched=""
    sleep 1
done
[[ -n $matched ]] || fail "the eBPF walk's scrape differs from the container's ss -tan: $(cat "$WORK/table-ss.txt")"
cexec systemctl stop cx-table-hold cx-table-listen
cexec rm /etc/systemd/system/conn-exporter.service.d/namespaces.conf
cexec rmdir --ignore-fail-on-non-empty /etc/systemd/system/conn-exporter.service.d
cexec cp /root/conn-exporter.default /etc/default/conn-exporter
cexec systemctl daemon-reload
cexec systemctl restart conn-exporter
source_is_netlink_sockets() { [[ $(socket_source) == netlink ]]; }
wait_until 20 "the default unit reading with netlink again" source_is_netlink_sockets
ok "all mode under namespaces.conf reads with the eBPF walk (log and conn_exporter_socket_source_info say so); its scrape holds the container's $matched TCP sockets as ss -tan lists them"

# --- TLS keys and the dynamic user ----------------------------------------------------------------
mkdir -p "$WORK/bin/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$WORK/bin/tls/server.key" -out "$WORK/bin/tls/server.crt" 2>/dev/null
printf 'tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n' >"$WORK/bin/tls/web-config.yml"
cexec install -d -m 0755 /etc/cx-root-only
cexec install -m 0644 /mnt/bin/tls/server.crt /mnt/bin/tls/web-config.yml /etc/cx-root-only/
cexec install -m 0600 /mnt/bin/tls/server.key /etc/cx-root-only/ # as root makes keys
pid_before=$(cexec systemctl show -p MainPID --value conn-exporter)
set +e
out=$(install_in --extra-args "--web.config.file=/etc/cx-root-only/web-config.yml" 2>&1)
rc=$?
set -e
printf '%s\n' "$out" | sed 's/^/    /'
((rc == 1)) || fail "install with a root-only key: exit $rc, want 1"
assert_contains "$out" "the new exporter cannot start" "root-only key refused"
assert_contains "$out" "server.key" "the exporter's message names the key"
[[ $(cexec systemctl show -p MainPID --value conn-exporter) == "$pid_before" ]] || fail "the refused install restarted the service"
[[ $(cexec systemctl is-active conn-exporter) == active ]] || fail "the service is not active after a refused install"
ok "a key only root can read is refused before the running service is touched"
out=$(install_in --web-config-dir /mnt/bin/tls 2>&1) || { echo "$out"; fail "install with --web-config-dir"; }
[[ $(cexec systemctl is-active conn-exporter) == active ]] || fail "service not active with the web config"
perms=$(cexec stat -c '%U:%G %a' /etc/conn-exporter/server.key)
[[ $perms == "root:conn-exporter-keys 640" ]] || fail "server.key is $perms, want root:conn-exporter-keys 640"
assert_contains "$(cexec systemctl show -p SupplementaryGroups --value conn-exporter)" conn-exporter-keys "drop-in"
pid=$(cexec systemctl show -p MainPID --value conn-exporter)
uid=$(awk '/^Uid:/{print $2}' <<<"$(cexec cat "/proc/$pid/status")")
((uid != 0)) || fail "the exporter runs as root with the web config"
code=$(cexec curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:9100/metrics)
[[ $code == 200 ]] || fail "https://127.0.0.1:9100/metrics answered $code, want 200"
ok "--web-config-dir: key root:conn-exporter-keys 0640, SupplementaryGroups drop-in, dynamic uid $uid serves TLS"

# --- uninstall ---------------------------------------------------------------------------------
out=$(install_in --uninstall 2>&1) || { echo "$out"; fail "uninstall"; }
for f in /etc/systemd/system/conn-exporter.service /usr/local/bin/conn-exporter /etc/default/conn-exporter \
    /var/lib/conn-exporter/install.state /etc/conn-exporter /etc/systemd/system/conn-exporter.service.d; do
    cexec test ! -e "$f" || fail "uninstall left $f"
done
if cexec systemctl cat conn-exporter >/dev/null 2>&1; then fail "systemd still knows conn-exporter.service"; fi
[[ $(cexec systemctl is-active conn-exporter || true) != active ]] || fail "service still active after uninstall"
if cexec ss -Htln 'sport = :9100' | grep -q .; then fail "something still listens on 9100 after uninstall"; fi
ok "uninstall (no other option) left no unit, binary, defaults file, record, web config or drop-in"

# --- the .deb -------------------------------------------------------------------------------------
start=$SECONDS
out=$(cexec dpkg -i "/mnt/deb/$(basename "$DEB")" 2>&1) || { echo "$out"; fail "dpkg -i"; }
running() { [[ $(cexec systemctl is-active conn-exporter) == active ]]; }
wait_until 20 "conn-exporter active after dpkg -i" running
[[ $(cexec systemctl is-enabled conn-exporter) == enabled ]] || fail "deb: service not enabled"
for f in /usr/share/man/man1/conn-exporter.1.gz /usr/share/bash-completion/completions/conn-exporter; do
    cexec test -s "$f" || fail "deb: $f not installed"
done
unit_path=$(cexec systemctl show -p FragmentPath --value conn-exporter)
cexec cmp "$unit_path" /mnt/repo/deploy/systemd/conn-exporter.service || fail "deb: $unit_path differs from deploy/systemd/conn-exporter.service"
# "active" comes at the fork, before systemd has dropped to the dynamic user and exec'd
# the exporter: its credentials are read once it listens.
deb_listens() { cexec ss -Htln 'sport = :9100' | grep -q .; }
wait_until 20 "the .deb's exporter listening on :9100" deb_listens
pid=$(cexec systemctl show -p MainPID --value conn-exporter)
uid=$(cexec cat "/proc/$pid/status" | awk '/^Uid:/{print $2}')
((uid != 0)) || fail "deb: the exporter (pid $pid, $(cexec cat "/proc/$pid/comm")) runs as root"
metrics_ok() {
    local body
    body=$(scrape) && grep -q '^network_connection_states' <<<"$body"
}
wait_until 10 "deb: /metrics answers" metrics_ok
# Reinstalling the same package restarts the service (upgrade path).
cexec dpkg -i "/mnt/deb/$(basename "$DEB")" >/dev/null 2>&1 || fail "dpkg -i (reinstall)"
wait_until 20 "active after reinstall" running
ok "dpkg -i: active, enabled, unit $unit_path identical to deploy/systemd/, uid $uid, /metrics answers ($((SECONDS - start))s)"

cexec dpkg --purge conn-exporter >/dev/null 2>&1 || fail "dpkg --purge"
for f in "$unit_path" /usr/bin/conn-exporter /etc/default/conn-exporter; do
    cexec test ! -e "$f" || fail "purge left $f"
done
[[ $(cexec systemctl is-active conn-exporter || true) != active ]] || fail "service still active after purge"
if cexec ss -Htln 'sport = :9100' | grep -q .; then fail "something still listens on 9100 after purge"; fi
ok "dpkg --purge removed the service, unit, binary and defaults"
log "all booted-system checks passed"
