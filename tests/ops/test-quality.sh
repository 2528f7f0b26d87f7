#!/usr/bin/env bash
# The quality collector on real paths, read by a real Prometheus (issue 19's truth tests,
# tests/ops/lib/quality_paths.py): behind the delay-and-loss line (20 ms each way, every
# 20th client->server data segment dropped) the RTT histogram, the lost, retransmitted
# and sent segment counters, the stall counter and the backlog gauges equal what ss,
# nstat and the line itself count; Prometheus's p99 recording rule lands in the RTT's
# bucket and PeerRetransmitRatioHigh fires for the lossy peer only. The exporter runs
# inside the client namespace (netlink lifecycle source) and then in the test's own
# namespace with --collector.namespaces=all and the eBPF lifecycle source. Runs in a
# private mount and network namespace (its own /run/netns). Needs root, /dev/net/tun,
# prometheus and the exporter binary ($CONN_EXPORTER_BIN).
#   tests/ops/test-quality.sh [--mode host|all] [--break CHECK]   # see quality_paths.py
set -euo pipefail
TEST_NAME=quality
# shellcheck source=tests/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
require_bin
require_cmds python3 ip ss nstat unshare prometheus promtool
[[ -c /dev/net/tun ]] || fail "/dev/net/tun missing"
# shellcheck disable=SC2016 # expanded by the inner shell
CONN_EXPORTER_BIN=$BIN unshare --mount --net --propagation private bash -c \
    'mkdir -p /run/netns && mount -t tmpfs none /run/netns && ip link set lo up && exec "$@"' \
    quality python3 "$OPS_DIR/lib/quality_paths.py" "$@" || fail "quality on the delay line (see the FAIL lines above)"
ok "quality: RTT buckets and p99 rule, lost/retransmitted/sent segments = line = nstat = ss, alert on the lossy peer only, stall counters and gauges = ss"
