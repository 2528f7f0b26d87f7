#!/usr/bin/env bash
# A booted container's sockets in `--collector.namespaces=all` (issue 11): a Debian
# bookworm (test-booted.sh's cached debootstrap tree) booted with systemd-nspawn -b in
# its own network namespace, in a machine cgroup (machine.slice/machine-NAME.scope, as
# systemd-machined makes one), with a veth to a namespace the test made. In the
# container, systemd's own units hold connections: cx-echo.socket listens (Accept=yes,
# one cx-echo@.service `cat` per connection) and cx-client.service (bash) connects to it
# over loopback and over the veth, and to a listener in the peer namespace. The exporter
# runs on the host (in a namespace of the test) with --collector.namespaces=all and
# --collector.connections.owner, and its scrape must hold:
#  - every socket `ss -tan` shows inside the container, with netns="<machine name>"
#    (from the cgroup), empty container_id and pod_uid, and the interface that holds
#    its address in the container (`ip -o addr` there; `any` for a wildcard), and
#    nothing else under that label; the same for the peer namespace (its `ip netns`
#    name); the test's addresses appear under no other namespace;
#  - network_connection_peers of the container summing to its non-listening sockets,
#    network_listen_queue_length listing its listeners with the same owners;
#  - on every container socket, `process` equal to what `ss -tanp` inside the
#    container names, the holder with the lowest pid on the host where several hold it
#    (systemd keeps each connection it accepted for a cx-echo@ instance), and
#    `systemd_unit` the container's unit (cx-client.service, cx-activate.service,
#    init.scope for systemd's sockets).
# Runs outside `ip netns exec`: nspawn needs the real /sys.
set -euo pipefail
TEST_NAME=booted-netns
# shellcheck source=tests/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
require_bin
require_cmds debootstrap systemd-nspawn nsenter python3 ss ip timeout flock curl
cd "$REPO"

MACHINE=cxt-netns-$$
P=cxbn$$
NS_EXP=$P-exp
NS_PEER=$P-peer
# 10.214.<octet>.0/24: the container and the peer namespace only.
NET=10.214.$((RANDOM % 250))
C_IP=$NET.1
PEER_IP=$NET.2
WORK=$(mktemp -d /var/tmp/conn-exporter-ops-booted-netns.XXXXXX)
NSPAWN_PID=""
PEER_PID=""
EXP_PID=""
LEADER=""
MOUNTED_NSPAWN_RUN=0
CGROUP_DIRS=()

cleanup() {
    local rc=$? i
    set +e
    if ((rc != 0)) && [[ -n $LEADER ]]; then
        echo "--- in the container: ss -tanp, the test's units"
        cexec ss -tanp
        cexec systemctl --no-pager status 'cx-*' 2>&1 | tail -n 30
    fi
    [[ -n $EXP_PID ]] && kill "$EXP_PID" 2>/dev/null && wait "$EXP_PID" 2>/dev/null
    [[ -n $PEER_PID ]] && kill "$PEER_PID" 2>/dev/null && wait "$PEER_PID" 2>/dev/null
    if [[ -n $NSPAWN_PID ]] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill "$NSPAWN_PID" # nspawn asks the container's systemd to power off
        for ((i = 0; i < 150; i++)); do
            kill -0 "$NSPAWN_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$NSPAWN_PID" 2>/dev/null
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    if ((rc != 0)); then
        echo "--- nspawn log (tail)"
        tail -n 30 "$WORK/nspawn.log" 2>/dev/null
        echo "--- exporter log (tail)"
        tail -n 10 "$WORK/exporter.log" 2>/dev/null
    fi
    ip netns del "$NS_EXP" 2>/dev/null
    ip netns del "$NS_PEER" 2>/dev/null
    rm_cgroup_dirs "${CGROUP_DIRS[@]}"
    ((MOUNTED_NSPAWN_RUN)) && umount /run/systemd/nspawn && rmdir /run/systemd/nspawn 2>/dev/null
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$SECONDS
debian_image
ok "root tree ready ($IMAGE, $((SECONDS - start))s)"

# --- the container's units, written into its copy of the tree before it boots -------------
mkdir -p "$WORK/root"
cp -a --reflink=auto "$IMAGE/." "$WORK/root/"
units=$WORK/root/etc/systemd/system
cat >"$units/cx-echo.socket" <<EOF
[Socket]
ListenStream=0.0.0.0:7000
Accept=yes
EOF
cat >"$units/cx-echo@.service" <<EOF
[Service]
ExecStart=/bin/cat
StandardInput=socket
StandardOutput=socket
EOF
# A server that hands each connection to a child and keeps none itself.
cat >"$units/cx-activate.service" <<EOF
[Service]
ExecStart=/usr/bin/systemd-socket-activate --listen=127.0.0.1:7001 --accept --inetd /bin/cat
EOF
# bash holds four connections (read blocks on the first: nothing is ever sent).
cat >"$units/cx-client.service" <<EOF
[Service]
ExecStart=/bin/bash -c 'exec 3<>/dev/tcp/127.0.0.1/7000 4<>/dev/tcp/$C_IP/7000 5<>/dev/tcp/$PEER_IP/7100 6<>/dev/tcp/127.0.0.1/7001; read -r -u 3'
EOF

# --- boot, in a machine cgroup as systemd-machined would make -----------------------------
# nspawn --keep-unit keeps the cgroup it is started in: the test makes
# machine.slice/machine-NAME.scope in each hierarchy systemd uses (the unified one,
# or name=systemd and unified on a hybrid host) and starts nspawn from inside it.
mapfile -t scopes < <(cgroup_dirs "machine.slice/machine-$MACHINE.scope")
((${#scopes[@]})) || fail "no cgroup hierarchy for the machine scope"
for d in "${scopes[@]}"; do
    [[ -d ${d%/*} ]] || { mkdir "${d%/*}" && CGROUP_DIRS+=("${d%/*}"); }
    mkdir "$d"
    CGROUP_DIRS+=("$d")
done
if [[ $(stat -f -c %T /run 2>/dev/null) != tmpfs ]] && ! mountpoint -q /run/systemd/nspawn; then
    mkdir -p /run/systemd/nspawn
    mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
    MOUNTED_NSPAWN_RUN=1
fi
start=$SECONDS
# shellcheck disable=SC2016 # expanded by the inner bash
bash -c 'for d in "${@:3}"; do echo $$ >"$d/cgroup.procs"; done; exec systemd-nspawn --boot --directory="$1" \
    --machine="$2" --register=no --keep-unit --private-network --console=passive' \
    nspawn "$WORK/root" "$MACHINE" "${scopes[@]}" >"$WORK/nspawn.log" 2>&1 &
NSPAWN_PID=$!
has_leader() { [[ -n $(nspawn_leader "$NSPAWN_PID") ]]; }
wait_until 30 "the container's init" has_leader
LEADER=$(nspawn_leader "$NSPAWN_PID")
cexec() {
    nsenter --target "$LEADER" --mount --uts --ipc --net --pid --root --wd \
        /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}
state=$(nspawn_booted "$LEADER" "$NSPAWN_PID")
case $state in
    running | degraded) ;;
    *) fail "container did not boot: '$state'" ;;
esac
grep -q "machine-$MACHINE.scope" "/proc/$LEADER/cgroup" || fail "the container's init is not in its machine cgroup: $(cat "/proc/$LEADER/cgroup")"
ok "booted $MACHINE ($((SECONDS - start))s, $state), init pid $LEADER in machine-$MACHINE.scope"

# --- a veth between the container and a namespace of the test -----------------------------
ip netns add "$NS_PEER"
ip netns add "$NS_EXP"
ip -n "$NS_PEER" link set lo up
ip -n "$NS_EXP" link set lo up
ip -n "$NS_PEER" link add cxpeer0 type veth peer name host0 netns "$LEADER"
ip -n "$NS_PEER" addr add "$PEER_IP/24" dev cxpeer0
ip -n "$NS_PEER" link set cxpeer0 up
cexec ip addr add "$C_IP/24" dev host0
cexec ip link set host0 up
# The peer listens on 7100 and connects to the container's socket-activated service.
ip netns exec "$NS_PEER" python3 "$OPS_DIR/lib/tcp_fixture.py" --listen "$PEER_IP:7100" --connect "$C_IP:7000" \
    >"$WORK/peer.log" 2>&1 &
PEER_PID=$!
wait_until 10 "the peer's listener" grep -q ready "$WORK/peer.log"
cexec systemctl start cx-echo.socket cx-activate.service
activate_listens() { cexec ss -Htln 'sport = :7001' | grep -q .; }
wait_until 10 "cx-activate.service listening" activate_listens
cexec systemctl start cx-client.service
# bash's four connections (one to the peer) and the peer's one: 8 sockets; 3 cx-echo@ instances.
established() { [[ $(cexec ss -HtanO state established | wc -l) -ge 8 && $(cexec systemctl list-units --no-legend --plain 'cx-echo@*' | grep -c running) == 3 ]]; }
wait_until 20 "the container's services connected" established
[[ $(cexec systemctl is-active cx-client.service) == active ]] || fail "cx-client.service is not active"
ok "container $C_IP (host0) <-> $NS_PEER $PEER_IP: $(cexec ss -Htan | wc -l) sockets in the container"

# --- the exporter on the host, in all mode with owners ---------------------------------------
ip netns exec "$NS_EXP" "$BIN" --web.listen-address=127.0.0.1:9100 --collector.namespaces=all \
    --collector.connections.owner --collector.connections.max-series=0 >"$WORK/exporter.log" 2>&1 &
EXP_PID=$!
wait_until 20 "the exporter" ip netns exec "$NS_EXP" curl -fsS -o /dev/null http://127.0.0.1:9100/-/ready
scrape() { ip netns exec "$NS_EXP" curl -fsS --max-time 30 http://127.0.0.1:9100/metrics; }

# One comparison: ss in the container and in the peer namespace, then the scrape, then ss
# again; the sockets are the test's own and stable, so both ss reads must agree.
compare() {
    cexec ss -HtanpO >"$WORK/ss-container.1"
    ip netns exec "$NS_PEER" ss -Htan >"$WORK/ss-peer.1"
    cexec ip -o -4 addr show >"$WORK/addr-container"
    scrape >"$WORK/scrape" || return 1
    cexec ss -HtanpO >"$WORK/ss-container.2"
    ip netns exec "$NS_PEER" ss -Htan >"$WORK/ss-peer.2"
    cexec systemctl list-units --no-legend --plain 'cx-echo@*' >"$WORK/echo-units"
    python3 "$OPS_DIR/lib/netns_truth.py" --machine "$MACHINE" --peer "$NS_PEER" --work "$WORK" \
        --ours "$C_IP,$PEER_IP" --leader "$LEADER"
}
deadline=$((SECONDS + 30))
until compare >"$WORK/compare.out" 2>&1; do
    if ((SECONDS >= deadline)); then
        cat "$WORK/compare.out"
        fail "the scrape does not match ss in the container and the peer namespace"
    fi
    sleep 1
done
cat "$WORK/compare.out"
ok "all mode: every socket of the booted container and of $NS_PEER in the scrape with its netns, interface and owner"
