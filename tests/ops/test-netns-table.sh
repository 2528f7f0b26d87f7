#!/usr/bin/env bash
# --collector.namespaces=all against `ss` while sockets change (issue 22), read by the
# eBPF walk of the host's TCP hash table and by a dump per namespace: 10 network
# namespaces of the test's own (cxt-<pid>-<n>, loopback only), each holding IPv4, IPv6
# and dual-stack listeners, ESTABLISHED pairs, FIN_WAIT2/CLOSE_WAIT pairs and SYN_RECV
# request socks (a deferred accept; the last namespace has a TCP table
# of its own, net.ipv4.tcp_child_ehash_entries), and in 4 of them heavy churn:
# connections opened and closed continually, by the client first or by the server first
# (TIME_WAIT and FIN_WAIT2 minisocks on either side), some through a deferred accept
# (request sock -> full socket); in the 6 others the same churn, lighter (about 10
# connections a second). The exporter runs in the root namespace with
# --collector.namespaces=all and, for each of 8 scrapes, `ss -tanH` runs in every test
# namespace right before and right after it; tests/ops/lib/table_truth.py checks each
# socket of the test's namespaces (netns label): one in both ss reads is in the scrape
# exactly once, in its state or in a state between the two; one in one read only at most
# once; none twice, none that no ss read shows but churn; the churn's TIME_WAIT sockets
# are there; conn_exporter_socket_source_info and the conn_exporter_socket_table_*
# metrics say what was read. Modes:
#   ebpf      --collector.namespaces.source=ebpf, the walk (no read may fall back)
#   netlink   the dumps: the control, same checks
# Without --mode, both in turn (what run-all.sh runs). --break dup|drop|state
# corrupts the first scrape before the checks (see table_truth.py): the test must fail.
# Needs root, python3, ss, ip, curl, timeout and the exporter ($CONN_EXPORTER_BIN).
#   tests/ops/test-netns-table.sh [--mode ebpf|netlink] [--break dup|drop|state] [--scrapes N]
set -euo pipefail
TEST_NAME=netns-table
# shellcheck source=tests/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODES=(ebpf netlink)
BREAK=""
SCRAPES=8
while (($#)); do
    case $1 in
        --mode) MODES=("${2:?--mode needs a value}") && shift 2 ;;
        --mode=*) MODES=("${1#*=}") && shift ;;
        --break) BREAK=${2:?--break needs a value} && shift 2 ;;
        --break=*) BREAK=${1#*=} && shift ;;
        --scrapes) SCRAPES=${2:?--scrapes needs a value} && shift 2 ;;
        *) fail "unknown argument '$1' (--mode ebpf|netlink, --break dup|drop|state, --scrapes N)" ;;
    esac
done
for m in "${MODES[@]}"; do
    case $m in ebpf | netlink) ;; *) fail "unknown mode '$m'" ;; esac
done
case $BREAK in "" | dup | drop | state) ;; *) fail "unknown --break '$BREAK'" ;; esac

require_root
require_bin
require_cmds python3 ip ss curl timeout

NS_COUNT=10
CHURN_COUNT=4      # the first 4 namespaces churn hard
CHURN_CONNS=100    # churn connections open at any time in those (about 130 a second)
CHURN_LIGHT=8      # and in every other namespace (about 10 a second)
LIFETIME=300       # seconds any background process of the test may live
P=cxt-$$
WORK=$(mktemp -d /var/tmp/conn-exporter-ops-netns-table.XXXXXX)
NAMESPACES=()
CHURN_NS=()
HELPER_PIDS=()
EXP_PID=""

stop_all() {
    local pid
    if [[ -n $EXP_PID ]]; then
        kill "$EXP_PID" 2>/dev/null
        wait "$EXP_PID" 2>/dev/null
        EXP_PID=""
    fi
    for pid in "${HELPER_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${HELPER_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    HELPER_PIDS=()
    local ns
    for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
    NAMESPACES=()
    CHURN_NS=()
    return 0
}
cleanup() {
    local rc=$?
    set +e
    if ((rc != 0)) && [[ -f $WORK/exporter.log ]]; then
        echo "--- exporter log (tail)"
        tail -n 10 "$WORK/exporter.log"
    fi
    stop_all
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Namespaces and their sockets. tcp_tw_reuse 0, kernel-chosen ports below the churn's
# (table_truth.py binds churn clients to 30000-65000 in turn): a tuple is not reused while
# a TIME_WAIT of it lives, so a tuple is one connection in the test.
setup_namespaces() {
    local i ns churn
    for ((i = 0; i < NS_COUNT; i++)); do
        ns=$P-$i
        if ((i == NS_COUNT - 1)); then
            # The last one gets a TCP table of its own, out of the walk's reach: read by
            # its dump.
            local old
            old=$(sysctl -n net.ipv4.tcp_child_ehash_entries)
            sysctl -qw net.ipv4.tcp_child_ehash_entries=1024
            ip netns add "$ns"
            sysctl -qw net.ipv4.tcp_child_ehash_entries="$old"
            (($(ip netns exec "$ns" cat /proc/sys/net/ipv4/tcp_ehash_entries) > 0)) ||
                fail "$ns: no TCP table of its own (tcp_ehash_entries $(ip netns exec "$ns" cat /proc/sys/net/ipv4/tcp_ehash_entries))"
        else
            ip netns add "$ns"
        fi
        NAMESPACES+=("$ns")
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=0 "net.ipv4.ip_local_port_range=10000 29999"
        churn=$CHURN_LIGHT
        ((i < CHURN_COUNT)) && churn=$CHURN_CONNS
        CHURN_NS+=("$ns")
        timeout "$LIFETIME" ip netns exec "$ns" python3 "$OPS_DIR/lib/table_truth.py" sockets --churn "$churn" \
            >"$WORK/helper-$ns.log" 2>&1 &
        HELPER_PIDS+=($!)
    done
    for ns in "${NAMESPACES[@]}"; do
        wait_until 20 "the sockets of $ns" grep -q ready "$WORK/helper-$ns.log"
    done
}

scrape() { curl -fsS --max-time 30 "http://$LISTEN/metrics"; }

# ss in every namespace at once (into DIR/NS), so that the reads are close to the scrape.
ss_all() {
    local dir=$1 ns pids=()
    mkdir -p "$dir"
    for ns in "${NAMESPACES[@]}"; do
        ip netns exec "$ns" ss -tanH >"$dir/$ns" &
        pids+=($!)
    done
    wait "${pids[@]}"
}

all_namespaces_scraped() {
    local out ns
    out=$(scrape) || return 1
    for ns in "${NAMESPACES[@]}"; do
        grep -q "^network_connections_info{.*netns=\"$ns\"" <<<"$out" || return 1
    done
}

run_mode() {
    local mode=$1 port i dir start=$SECONDS
    rm -rf "$WORK"/scrape-* "$WORK"/helper-*.log
    setup_namespaces
    ok "$mode: $NS_COUNT namespaces ($P-*), churn in ${CHURN_NS[*]}"
    for ((i = 0; i < 50; i++)); do
        port=$((19200 + RANDOM % 700))
        [[ -z $(ss -Htln "sport = :$port") ]] && break
    done
    LISTEN=127.0.0.1:$port
    timeout "$LIFETIME" "$BIN" --web.listen-address="$LISTEN" --collector.namespaces=all \
        --collector.namespaces.source="$mode" --collector.connections.max-series=0 \
        >"$WORK/exporter.log" 2>&1 &
    EXP_PID=$!
    wait_until 20 "the exporter" curl -fsS -o /dev/null "http://$LISTEN/-/ready"
    # Namespaces are listed every 2 s.
    wait_until 20 "every test namespace in the scrape" all_namespaces_scraped
    scrape >/dev/null
    sleep 1
    for ((i = 1; i <= SCRAPES; i++)); do
        dir=$WORK/scrape-$i
        mkdir -p "$dir"
        ss_all "$dir/ss-before"
        scrape >"$dir/metrics" || fail "$mode: scrape $i failed"
        ss_all "$dir/ss-after"
        sleep 0.3
    done
    local rc=0 churn_list names_list
    names_list=$(IFS=,; echo "${NAMESPACES[*]}")
    churn_list=$(IFS=,; echo "${CHURN_NS[*]}")
    python3 "$OPS_DIR/lib/table_truth.py" check --work "$WORK" --mode "$mode" --namespaces "$names_list" \
        --churn "$churn_list" ${BREAK:+--break "$BREAK"} || rc=1
    if ((rc)) && grep -q 'level=\(warn\|error\)' "$WORK/exporter.log"; then
        echo "--- exporter warnings"
        grep 'level=\(warn\|error\)' "$WORK/exporter.log" | tail -n 5
    fi
    stop_all
    local verdict=PASS
    ((rc == 0)) || verdict=FAIL
    RESULTS+=("$mode: $verdict ($((SECONDS - start))s)")
    return "$rc"
}

RESULTS=()
failed=0
for mode in "${MODES[@]}"; do
    run_mode "$mode" || failed=1
done
printf '%s\n' "${RESULTS[@]/#/[netns-table] }"
((failed == 0)) || fail "the scrape does not match ss in the test's namespaces (see the FAIL lines above)${BREAK:+; --break $BREAK was given}"
ok "${MODES[*]}: every socket of $NS_COUNT namespaces (all churning, 4 hard) once, in its state, in $SCRAPES scrapes"
