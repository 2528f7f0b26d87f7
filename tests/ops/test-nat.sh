#!/usr/bin/env bash
# NAT resolution through conntrack on real DNAT and SNAT paths (issue 21's truth test,
# tests/ops/lib/nat_truth.py): a namespace plays a Kubernetes node whose iptables send
# the ClusterIP 10.96.0.10:80 round-robin to three backend namespaces; 300 connections
# to it are counted per backend exactly as `conntrack -L` and the backends themselves
# count them, the open ones as `ss` shows them, a refusing backend's failed connects as
# the client's ECONNREFUSED; a published port's masqueraded connections carry the real
# client in destination_original_address on the container's side; the documented
# kube_service_info join names the Service's backends in a real Prometheus. The
# exporter runs in host and all mode, with the netlink and the eBPF lifecycle source,
# and once without --collector.nat (no NAT label anywhere). Runs in a private mount,
# network and PID namespace (its own /run/netns and /proc): it never touches the
# machine's network, and the exporter in all mode finds only the test's namespaces, not
# those of whatever else runs on the machine (whose conntrack churn would otherwise be
# the exporter's to read too).
# Needs root, iptables (nft), conntrack, prometheus and the exporter ($CONN_EXPORTER_BIN).
#   tests/ops/test-nat.sh [--run RUN] [--break CHECK]   # see nat_truth.py
set -euo pipefail
TEST_NAME=nat
# shellcheck source=tests/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
require_bin
require_cmds python3 ip ss unshare iptables conntrack prometheus promtool
# shellcheck disable=SC2016 # expanded by the inner shell
CONN_EXPORTER_BIN=$BIN unshare --mount --net --pid --fork --mount-proc --propagation private bash -c \
    'mkdir -p /run/netns && mount -t tmpfs none /run/netns && ip link set lo up && exec "$@"' \
    nat python3 "$OPS_DIR/lib/nat_truth.py" "$@" || fail "NAT resolution (see the FAIL lines above)"
ok "nat: closed/failed/peers per backend = conntrack = backends' counts and ss, published port's original client, kube_service_info join, host and all mode, netlink and eBPF, none without --collector.nat"
