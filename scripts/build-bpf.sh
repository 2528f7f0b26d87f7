#!/usr/bin/env bash
# Rebuilds bpf/lifecycle.bpf.o, the eBPF object the binary embeds, from
# bpf/lifecycle.bpf.c with Debian's clang (packages clang, llvm, libbpf-dev).
# Deterministic: run from the repository root with relative paths, DWARF stripped (it
# holds the build directory); the BTF and its line info, which name only the relative
# source path, stay for CO-RE. scripts/test.sh runs `--check`: exit 1 when the committed
# object differs byte for byte from a fresh compile.
set -euo pipefail
cd "$(dirname "$0")/.."

src=bpf/lifecycle.bpf.c
obj=bpf/lifecycle.bpf.o
multiarch=$(gcc -print-multiarch 2>/dev/null || dpkg-architecture -qDEB_HOST_MULTIARCH)

compile() {
  # The prefix map keeps the checkout's absolute path out of the BTF line info.
  clang -O2 -g -target bpf -Wall -Werror -fdebug-prefix-map="$PWD"=. -I"/usr/include/$multiarch" -c "$src" -o "$1"
  llvm-strip -g "$1"
}

if [[ "${1:-}" == "--check" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # The same relative paths as a real build: compile in place, then compare.
  compile "$tmp/fresh.o"
  if ! cmp "$obj" "$tmp/fresh.o"; then
    echo "build-bpf: $obj is not what $src compiles to with $(clang --version | head -1); run scripts/build-bpf.sh and commit it" >&2
    exit 1
  fi
  echo "build-bpf: $obj matches a fresh compile of $src byte for byte"
  exit 0
fi
compile "$obj"
echo "build-bpf: wrote $obj ($(stat -c %s "$obj") bytes)"
