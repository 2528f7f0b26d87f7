#!/usr/bin/env bash
# Helpers shared by the ops tests. Source it; do not run it.
# shellcheck disable=SC2034 # variables are used by the sourcing scripts

OPS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$OPS_DIR/../.." && pwd)
BIN=${CONN_EXPORTER_BIN:-$REPO/target/release/conn-exporter}
case $BIN in /*) ;; *) BIN=$REPO/$BIN ;; esac

log() { printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "${TEST_NAME:-ops}" "$*"; }
fail() {
    printf '[%s %s] FAIL: %s\n' "$(date +%H:%M:%S)" "${TEST_NAME:-ops}" "$*" >&2
    exit 1
}
ok() { log "ok: $*"; }

require_root() { [[ $(id -u) -eq 0 ]] || fail "must run as root (namespaces, mounts, systemd-nspawn)"; }

require_bin() {
    [[ -x $BIN ]] || fail "exporter binary $BIN missing: run 'cargo build --release' or set CONN_EXPORTER_BIN"
}

# Fails unless every command exists (run-all.sh installs deps.txt first).
require_cmds() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || fail "required command '$c' not found (see tests/ops/deps.txt)"
    done
}

# wait_until SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.5s.
wait_until() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${secs}s waiting for: $what"
        sleep 0.5
    done
}

# assert_contains HAYSTACK NEEDLE DESCRIPTION
assert_contains() {
    grep -qF -- "$2" <<<"$1" || fail "$3: expected to find '$2'"
}
assert_not_contains() {
    if grep -qF -- "$2" <<<"$1"; then fail "$3: did not expect '$2'"; fi
}
