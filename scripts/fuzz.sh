#!/usr/bin/env bash
# Fuzzes conn-exporter's parsers, netlink decoder, header negotiation and encoder with the
# cargo-fuzz targets in fuzz/ (a crate of its own, outside the main build).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   fuzz each target for SECONDS (default 30)
#   scripts/fuzz.sh --replay [TARGET...]    only run the seed corpora once (fast, for CI)
#
# Runs on stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags. New inputs go
# to fuzz/target/corpus/<target>, never into the committed seeds in fuzz/corpus/<target>;
# `fuzz/target/none/x86_64-unknown-linux-gnu/release/<target> -merge=1 fuzz/corpus/<target>
# fuzz/target/corpus/<target>` adds those that reach new code to the seeds.
# Crashes are written to fuzz/artifacts/<target>/ and replayed with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none --target-dir fuzz/target/none <target> <file>`.
#
# FUZZ_SANITIZER (default none): the exporter forbids unsafe code, and without a
# sanitizer the targets run several times faster. The one unsafe dependency they reach is
# webconfig's YAML parser (C translated to Rust): `FUZZ_SANITIZER=address scripts/fuzz.sh
# 600 webconfig` checks it under AddressSanitizer, at about 1/8 of the speed.
# FUZZ_NICE (default 10) is the niceness of builds and runs.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,19s/^# \{0,1\}//p' "$0"; exit "${1:-0}"; }

seconds=30
replay=0
targets=()
for arg in "$@"; do
  case "$arg" in
    --replay) replay=1 ;;
    -h | --help) usage ;;
    '' | *[!0-9]*) targets+=("$arg") ;;
    *) seconds=$arg ;;
  esac
done
sanitizer=${FUZZ_SANITIZER:-none}
niceness=${FUZZ_NICE:-10}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

all=$(cargo fuzz list)
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets <<<"$all"
fi
for t in "${targets[@]}"; do
  grep -qx -- "$t" <<<"$all" || { echo "unknown fuzz target: $t (have: ${all//$'\n'/ })" >&2; usage 2; }
done

logs=fuzz/target/logs
mkdir -p "$logs"
# Each sanitizer builds in its own target directory, so switching never rebuilds the other.
# `cargo fuzz build` builds one target or all of them; `run` then finds them built.
echo "==> building the fuzz targets (sanitizer: $sanitizer)"
if ! nice -n "$niceness" cargo fuzz build -s "$sanitizer" --target-dir "fuzz/target/$sanitizer" \
  >"$logs/build-$sanitizer.log" 2>&1; then
  tail -n 40 "$logs/build-$sanitizer.log"
  echo "fuzz build failed (see $logs/build-$sanitizer.log)" >&2
  exit 1
fi
summary=()
failed=0
for t in "${targets[@]}"; do
  seeds=fuzz/corpus/$t
  mkdir -p "$seeds"
  if [[ $replay -eq 1 ]]; then
    echo "==> $t: replaying $(find "$seeds" -type f | wc -l) seeds"
    dirs=("$seeds")
    flags=(-runs=0)
  else
    echo "==> $t: fuzzing for ${seconds}s"
    mkdir -p "fuzz/target/corpus/$t"
    dirs=("fuzz/target/corpus/$t" "$seeds")
    flags=(-max_total_time="$seconds" -timeout=10)
  fi
  start=$(date +%s)
  if nice -n "$niceness" cargo fuzz run -s "$sanitizer" --target-dir "fuzz/target/$sanitizer" "$t" "${dirs[@]}" -- \
    "${flags[@]}" -print_final_stats=1 >"$logs/$t.log" 2>&1; then
    result=ok
  else
    result="FAILED (see $logs/$t.log)"
    failed=1
    grep -m1 -A3 "panicked at" "$logs/$t.log" || tail -n 20 "$logs/$t.log"
    grep -m1 "Test unit written to" "$logs/$t.log" || true
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -n 1)
  summary+=("$(printf '%-20s %14s executions %6ss  %s' "$t" "${runs:-?}" "$(($(date +%s) - start))" "$result")")
done

echo
echo "==> executions per target"
printf '%s\n' "${summary[@]}"
exit "$failed"
