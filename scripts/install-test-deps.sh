#!/usr/bin/env bash
# Installs what the tests need on a bare Debian machine: Debian packages (Prometheus and
# promtool, iproute2's ss and ip, node_exporter for the benchmark, ...), Python packages and
# cargo tools. Lists come from this script and tests/ops/deps.txt. Safe to re-run: only
# what is missing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=(prometheus prometheus-node-exporter iproute2 curl python3 python3-pip python3-seccomp procps util-linux openssl apache2-utils)
# The eBPF object's rebuild check (scripts/build-bpf.sh --check) and `bpftool prog show`.
# iptables: the eBPF retransmit test drops packets in its own namespace.
apt_pkgs+=(clang llvm libbpf-dev bpftool iptables)
# conntrack: bench/nat.py counts the entries it puts in its own namespace's table.
apt_pkgs+=(conntrack)
pip_pkgs=(prometheus_client)
cargo_tools=()

if [[ -f tests/ops/deps.txt ]]; then
  while read -r kind name; do
    case "$kind" in
      apt) apt_pkgs+=("$name") ;;
      pip) pip_pkgs+=("$name") ;;
      cargo) cargo_tools+=("$name") ;;
    esac
  done < <(grep -Ev '^\s*(#|$)' tests/ops/deps.txt)
fi

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-test-deps: apt-get install ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian's prometheus unit may start a server on 9090 during install; the tests start their own.
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
  systemctl stop prometheus prometheus-node-exporter 2>/dev/null || true
fi

py_missing=()
for p in "${pip_pkgs[@]}"; do
  python3 -m pip show -q "$p" >/dev/null 2>&1 || py_missing+=("$p")
done
if ((${#py_missing[@]})); then
  echo "install-test-deps: pip install ${py_missing[*]}"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${py_missing[@]}"
fi

for t in "${cargo_tools[@]}"; do
  if ! cargo install --list | grep -q "^$t "; then
    echo "install-test-deps: cargo install $t"
    cargo install --locked -q "$t"
  fi
done
