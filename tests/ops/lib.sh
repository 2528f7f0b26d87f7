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

# --- booted Debian containers (test-booted.sh, test-booted-netns.sh) ------------------------
# debian_image: a minimal Debian bookworm root tree with systemd, built once with
# debootstrap and cached (flock-serialised) under $CONN_EXPORTER_TEST_CACHE; sets IMAGE.
# Boot copies of it, never it.
debian_image() {
    local cache=${CONN_EXPORTER_TEST_CACHE:-/var/cache/conn-exporter-test}
    local mirror=${DEBOOTSTRAP_MIRROR:-http://deb.debian.org/debian}
    local include=systemd,systemd-sysv,dbus,curl,iproute2,ca-certificates
    IMAGE=$cache/bookworm-minbase-$(printf '%s' "$include" | sha256sum | cut -c1-12)
    mkdir -p "$cache"
    (
        flock 9
        if [[ ! -e $IMAGE/.complete ]]; then
            log "debootstrap bookworm (minbase + $include) into $IMAGE"
            rm -rf "$IMAGE.tmp" "$IMAGE"
            debootstrap --variant=minbase --include="$include" bookworm "$IMAGE.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
                { tail -n 20 "$cache/debootstrap.log"; exit 1; }
            # A clean machine identity for each boot of a copy.
            : >"$IMAGE.tmp/etc/machine-id"
            rm -f "$IMAGE.tmp/var/lib/dbus/machine-id"
            echo conn-exporter-test >"$IMAGE.tmp/etc/hostname"
            touch "$IMAGE.tmp/.complete"
            mv "$IMAGE.tmp" "$IMAGE"
        fi
    ) 9>"$cache/.lock" || fail "debootstrap failed (see $cache/debootstrap.log)"
}

# nspawn_leader NSPAWN_PID: the container's init, a child of nspawn that is PID 1 in its
# own PID namespace and has exec'd systemd (nspawn's intermediate children are not).
nspawn_leader() {
    local pid
    for pid in $(ps -o pid= --ppid "$1"); do
        if grep -Eq '^NSpid:.*[[:space:]]1$' "/proc/$pid/status" 2>/dev/null &&
            [[ $(cat "/proc/$pid/comm" 2>/dev/null) == systemd ]]; then
            echo "$pid"
            return 0
        fi
    done
}

# nspawn_booted LEADER NSPAWN_PID: waits up to 120 s for the container's systemd and
# prints its state (running, degraded, ...). Until systemd has set up its bus,
# is-system-running says "offline" at once, even with --wait: ask again until it knows.
nspawn_booted() {
    local leader=$1 nspawn=$2 state deadline=$((SECONDS + 120))
    while :; do
        state=$(timeout 60 nsenter --target "$leader" --mount --uts --ipc --net --pid --root --wd \
            /usr/bin/env -i PATH=/usr/sbin:/usr/bin systemctl is-system-running --wait 2>&1) || true
        case $state in
            running | degraded | stopping | maintenance) break ;;
        esac
        ((SECONDS < deadline)) || break
        kill -0 "$nspawn" 2>/dev/null || break
        sleep 0.5
    done
    echo "$state"
}

# cgroup_dirs RELPATH: RELPATH (a/b/c) in each cgroup hierarchy systemd uses: the
# unified one, or on a hybrid host name=systemd and unified. Fails if there is none.
cgroup_dirs() {
    local d found=0
    if [[ -e /sys/fs/cgroup/cgroup.controllers ]]; then
        echo "/sys/fs/cgroup/$1"
        return 0
    fi
    for d in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
        [[ -e $d/cgroup.procs ]] && echo "$d/$1" && found=1
    done
    ((found)) || fail "no systemd or unified cgroup hierarchy under /sys/fs/cgroup"
}

# rm_cgroup_dirs DIR...: removes each directory tree the test made, deepest first (a
# cgroup directory goes once its processes have).
rm_cgroup_dirs() {
    local d
    for d in "$@"; do
        [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    return 0
}
