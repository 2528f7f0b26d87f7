#!/usr/bin/env bash
# Every test of conn-exporter, from a bare Debian machine: installs what the tests need,
# then formatting, lints, unit and integration tests (real sockets, ss, promtool, a real
# Prometheus), the operations kit's tests, the fuzz corpora replay, and the benchmark's,
# load test's, series churn, series budget, owner cost, NAT cost, namespace churn,
# all-namespaces cost (eBPF walk and dumps against host mode) and eBPF walk
# cost (connection rate, memory) benchmarks' quick runs. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "eBPF object is what its source compiles to (byte for byte)"
scripts/build-bpf.sh --check

step "cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test (unit, doc, integration)"
# --nocapture shows the figures tests print (the truth test's match count).
cargo test --locked -- --nocapture

step "cargo doc (broken links denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet

step "release build"
cargo build --release --locked
export CONN_EXPORTER_BIN="$PWD/target/release/conn-exporter"

step "operations kit (tests/ops/run-all.sh)"
tests/ops/run-all.sh

step "fuzz corpora replay"
scripts/fuzz.sh --replay

step "benchmark smoke run"
python3 bench/run.py --smoke --exporter "$CONN_EXPORTER_BIN"

step "protobuf against text scrape, quick run (a well-formed MetricFamily stream with every series)"
python3 bench/formats.py --quick --exporter "$CONN_EXPORTER_BIN"

step "series churn, quick run (network_connection_peers creates at most 30 series)"
python3 bench/churn.py --quick --exporter "$CONN_EXPORTER_BIN"

step "series budget, quick run (fleet config: <= 500 series idle, <= 1,500 under churn; every shipped config measured)"
python3 bench/series_budget.py --quick --exporter "$CONN_EXPORTER_BIN"

step "load test, quick run"
python3 bench/load.py --quick --exporter "$CONN_EXPORTER_BIN"

step "lifecycle benchmark, quick run"
python3 bench/lifecycle.py --quick --exporter "$CONN_EXPORTER_BIN"

step "lifecycle benchmark with the quality collector on, quick run (closes counted exactly)"
python3 bench/lifecycle.py --quick --modes netlink+quality,ebpf+quality --exporter "$CONN_EXPORTER_BIN"

step "quality collector cost, quick run (dump with and without tcp_info, CPU per sample, scrape CPU)"
python3 bench/quality.py --quick --exporter "$CONN_EXPORTER_BIN"

step "NAT collector cost, quick run (5,000 DNAT conntrack entries in a namespace of its own: all held, the collector succeeds)"
python3 bench/nat.py --quick --exporter "$CONN_EXPORTER_BIN"

step "owner cost benchmark, quick run (owners named on 99% of the held sockets)"
python3 bench/owners.py --quick --exporter "$CONN_EXPORTER_BIN"

step "namespace churn, quick run (descriptors, threads and RSS stay within bounds)"
python3 bench/netns_churn.py --quick --exporter "$CONN_EXPORTER_BIN"

step "lifecycle maps bounded, quick run (ever new remote addresses, both sources)"
python3 bench/lifecycle.py --quick --memory --exporter "$CONN_EXPORTER_BIN"

step "all-namespaces cost, quick run (10x1000+10000: every socket counted with each source; eBPF walk CPU per socket <= 2.0x host mode)"
python3 bench/namespaces.py cost --quick --exporter "$CONN_EXPORTER_BIN"

step "eBPF walk's cost to connections, quick run (loopback connect/close at max rate: median slowdown with the walk loaded <= 25%)"
python3 bench/table_cost.py rate --quick --exporter "$CONN_EXPORTER_BIN"

step "eBPF walk's memory, quick run (maps' memlock and RSS; the walk finds every held socket, no fallback)"
python3 bench/table_cost.py memory --quick --exporter "$CONN_EXPORTER_BIN"

step "all tests passed"
