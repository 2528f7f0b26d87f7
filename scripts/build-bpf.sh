#!/usr/bin/env bash
# Rebuilds the eBPF objects the binary embeds, bpf/NAME.bpf.o from bpf/NAME.bpf.c
# (lifecycle: the lifecycle collector's source; sockets: the all-namespaces socket
# table), with Debian's clang (packages clang, llvm, libbpf-dev).
# Deterministic: run from the repository root with relative paths, DWARF stripped (it
# holds the build directory); the BTF and its line info, which name only the relative
# source path, stay for CO-RE. scripts/test.sh runs `--check`: exit 1 when a committed
# object differs byte for byte from a fresh compile.
set -euo pipefail
cd "$(dirname "$0")/.."

objects=(lifecycle sockets)
multiarch=$(gcc -print-multiarch 2>/dev/null || dpkg-architecture -qDEB_HOST_MULTIARCH)

compile() {
  # The prefix map keeps the checkout's absolute path out of the BTF line info.
  clang -O2 -g -target bpf -Wall -Werror -fdebug-prefix-map="$PWD"=. -I"/usr/include/$multiarch" -c "$1" -o "$2"
  llvm-strip -g "$2"
}

if [[ "${1:-}" == "--check" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  status=0
  for name in "${objects[@]}"; do
    # The same relative paths as a real build: compile in place, then compare.
    compile "bpf/$name.bpf.c" "$tmp/$name.o"
    if ! cmp "bpf/$name.bpf.o" "$tmp/$name.o"; then
      echo "build-bpf: bpf/$name.bpf.o is not what bpf/$name.bpf.c compiles to with $(clang --version | head -1); run scripts/build-bpf.sh and commit it" >&2
      status=1
    else
      echo "build-bpf: bpf/$name.bpf.o matches a fresh compile of bpf/$name.bpf.c byte for byte"
    fi
  done
  exit "$status"
fi
for name in "${objects[@]}"; do
  compile "bpf/$name.bpf.c" "bpf/$name.bpf.o"
  echo "build-bpf: wrote bpf/$name.bpf.o ($(stat -c %s "bpf/$name.bpf.o") bytes)"
done
