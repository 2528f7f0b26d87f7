#!/usr/bin/env bash
# Builds the conn-exporter container image from the release binary with buildah
# and tags it conn-exporter:<version> (the version in Cargo.toml).
#
#   deploy/container/build-image.sh [--binary PATH] [--tag NAME:TAG] [-- BUILDAH-GLOBAL-OPTIONS...]
#
# The build context is staged in a temporary directory: rootfs/usr/bin/conn-exporter,
# the shared libraries ldd lists for it (at the paths the loader looks them up),
# /etc/passwd and /etc/group naming nobody/nogroup, and the Containerfile.
# Options after -- go to buildah before 'bud' (e.g. --root DIR --storage-driver vfs).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$REPO/target/release/conn-exporter
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/Cargo.toml" | head -n 1)
tag=conn-exporter:$version
while (($#)); do
    case $1 in
        --binary) bin=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "build-image.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -x $bin ]] || { echo "build-image.sh: no binary at $bin (cargo build --release)" >&2; exit 1; }
command -v buildah >/dev/null || { echo "build-image.sh: buildah not found (apt-get install buildah)" >&2; exit 1; }

ctx=$(mktemp -d /tmp/conn-exporter-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
install -D -m 0755 "$bin" "$ctx/rootfs/usr/bin/conn-exporter"
# Each library at the path ldd resolved it to, the loader at its absolute path.
while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$ctx/rootfs$lib"
done < <(ldd "$bin" | grep -oE '(^\s*|=> )/[^ ]+' | sed -E 's/^(\s*|=> )//')
[[ -e $ctx/rootfs/lib64/ld-linux-x86-64.so.2 || -e $ctx/rootfs/lib/ld-linux-aarch64.so.1 ]] ||
    { echo "build-image.sh: ldd listed no loader for $bin" >&2; exit 1; }
install -d -m 0755 "$ctx/rootfs/etc"
printf 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
printf 'nogroup:x:65534:\n' >"$ctx/rootfs/etc/group"
cp "$REPO/deploy/container/Containerfile" "$ctx/"
buildah "$@" bud --isolation chroot --layers=false -f "$ctx/Containerfile" -t "$tag" "$ctx" >&2
echo "$tag"
