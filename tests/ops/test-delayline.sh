#!/usr/bin/env bash
# The delay-and-loss line (tests/ops/lib/delayline.py) does what the quality truth tests
# assume: TCP's RTT as `ss -tin` shows it is the delay set, each way; the segments it
# drops equal the sender's TcpRetransSegs minus TcpExtTCPDSACKRecvSegs (nstat) and the
# socket's total retrans minus dsack_dups; a receiver that never reads makes
# rwnd_limited grow. Runs in a private mount and network namespace (its own /run/netns),
# so its namespaces never meet another test's. Needs root, /dev/net/tun, no Rust build.
#   tests/ops/test-delayline.sh [--full]   # --full: more connections, larger transfers
set -euo pipefail
TEST_NAME=delayline
# shellcheck source=tests/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
require_cmds python3 ip ss nstat unshare
[[ -c /dev/net/tun ]] || fail "/dev/net/tun missing"
mode=--quick
[[ ${1:-} == --full ]] && mode=
# shellcheck disable=SC2016 # expanded by the inner shell
unshare --mount --net --propagation private bash -c \
    'mkdir -p /run/netns && mount -t tmpfs none /run/netns && ip link set lo up && exec "$@"' \
    delayline python3 "$OPS_DIR/lib/test_delayline.py" $mode || fail "delay line self-test"
ok "delay line: RTT as set, drops = retransmits - DSACKed, stalled receiver"
