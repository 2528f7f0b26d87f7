#!/usr/bin/env bash
# Runs every ops test (deploy/ and docs/ assets against real tools; test-docs.sh
# runs the documentation's marked commands as written) and prints
# one PASS/FAIL line per test. Exit status is non-zero when any test failed.
#
#   tests/ops/run-all.sh                 # all tests
#   tests/ops/run-all.sh static multihost  # some of them
#
# Needs root. CONN_EXPORTER_BIN names the binary (default target/release/conn-exporter).
# Missing tools from tests/ops/deps.txt are installed first; set
# OPS_NO_INSTALL=1 to fail instead.
set -euo pipefail

OPS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ALL_TESTS=(static delayline quality nat package container multihost docs booted booted-netns netns-dashboards netns-table)

install_deps() {
    local kind name apt_missing=() pip_missing=() cargo_missing=()
    while read -r kind name; do
        case $kind in
            apt) dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q 'install ok installed' || apt_missing+=("$name") ;;
            pip) python3 -m pip show -q "$name" >/dev/null 2>&1 || pip_missing+=("$name") ;;
            cargo) command -v "$name" >/dev/null 2>&1 || cargo_missing+=("$name") ;;
        esac
    done < <(grep -v '^[[:space:]]*\(#\|$\)' "$OPS_DIR/deps.txt")
    if ((${#apt_missing[@]} + ${#pip_missing[@]} + ${#cargo_missing[@]})) && [[ ${OPS_NO_INSTALL:-0} == 1 ]]; then
        echo "missing dependencies: ${apt_missing[*]} ${pip_missing[*]} ${cargo_missing[*]}" >&2
        return 1
    fi
    if ((${#apt_missing[@]})); then
        echo "installing apt packages: ${apt_missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
    fi
    if ((${#pip_missing[@]})); then
        echo "installing pip packages: ${pip_missing[*]}"
        python3 -m pip install -q "${pip_missing[@]}"
    fi
    local crate
    for crate in "${cargo_missing[@]}"; do
        echo "installing cargo crate: $crate"
        cargo install --locked -q "$crate"
    done
}

tests=("$@")
((${#tests[@]})) || tests=("${ALL_TESTS[@]}")

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/ops/run-all.sh must run as root" >&2
    exit 1
fi

install_deps

passed=0
failed=0
summary=()
# Each test's output is kept so that a failure's last lines are printed again after the
# summary: a CI log that shows only its end still says why a test failed.
LOG_DIR=$(mktemp -d /tmp/conn-exporter-ops-logs.XXXXXX)
failed_logs=()
for t in "${tests[@]}"; do
    script="$OPS_DIR/test-$t.sh"
    if [[ ! -f $script ]]; then
        summary+=("FAIL  $t (no such test: $script)")
        failed=$((failed + 1))
        continue
    fi
    echo "=== ops test: $t"
    start=$SECONDS
    if bash "$script" 2>&1 | tee "$LOG_DIR/$t.log"; (( PIPESTATUS[0] == 0 )); then
        line="PASS  $t ($((SECONDS - start))s)"
        passed=$((passed + 1))
    else
        line="FAIL  $t ($((SECONDS - start))s)"
        failed=$((failed + 1))
        failed_logs+=("$t")
    fi
    echo "$line"
    summary+=("$line")
done

echo
for t in "${failed_logs[@]}"; do
    echo "=== last 40 lines of the failed ops test $t (whole log: $LOG_DIR/$t.log)"
    tail -n 40 "$LOG_DIR/$t.log"
done
echo "=== ops tests summary"
printf '%s\n' "${summary[@]}"
echo "ops: $passed passed, $failed failed"
((failed == 0))
