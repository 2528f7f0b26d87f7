#!/usr/bin/env bash
# Install, upgrade or remove conn-exporter on one host.
#
#   sudo ./install-conn-exporter.sh                          # install or upgrade
#   sudo ./install-conn-exporter.sh --listen-address :9101   # node_exporter holds 9100
#   sudo ./install-conn-exporter.sh --uninstall
#
# With systemd (the default) it places:
#   /usr/local/bin/conn-exporter
#   /etc/systemd/system/conn-exporter.service   (from deploy/systemd/, hardened)
#   /etc/default/conn-exporter                  (the exporter's flags)
# enables and (re)starts the service, then checks that /metrics answers.
# Running it again upgrades the binary and the unit in place.
#
# --init none is for hosts without systemd (minimal containers, test hosts):
# the exporter is started as a plain background process under the unprivileged
# user nobody, with a pid file and a log file. Nothing restarts it on failure or
# at boot. --prefix DIR relocates every file it places under DIR (only with
# --init none), so several installs can share one file system.
set -euo pipefail

readonly PROG=install-conn-exporter.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly REPO_DIR=${SCRIPT_DIR%/deploy}
readonly SERVICE=conn-exporter

binary=""
unit_file="$SCRIPT_DIR/systemd/conn-exporter.service"
listen_address=":9100"
extra_args=""
init=systemd
prefix=""
action=install
check_timeout=20

usage() {
    cat <<EOF
Usage: sudo $PROG [options]

Installs conn-exporter as a hardened systemd service, enables and starts it,
and checks that /metrics answers. Re-running it upgrades in place.

Options:
  --binary PATH          exporter binary to install (default:
                         target/release/conn-exporter of this repository,
                         else ./conn-exporter)
  --listen-address ADDR  address for the exporter's --web.listen-address
                         (default :9100; node_exporter also uses 9100)
  --extra-args ARGS      more exporter flags, e.g.
                         "--web.config.file=/etc/conn-exporter/web.yml"
  --unit-file PATH       systemd unit to install (default: deploy/systemd/conn-exporter.service)
  --init systemd|none    service manager (default systemd); "none" starts a
                         plain background process as user nobody (no systemd needed)
  --prefix DIR           place all files under DIR (only with --init none)
  --check-timeout SECS   how long to wait for /metrics to answer (default 20)
  --uninstall            stop the exporter and remove every file this script placed
  -h, --help             show this help
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

info() {
    printf '%s: %s\n' "$PROG" "$*"
}

while (($#)); do
    case $1 in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --binary=*) binary=${1#*=}; shift ;;
        --listen-address) listen_address=${2:?--listen-address needs a value}; shift 2 ;;
        --listen-address=*) listen_address=${1#*=}; shift ;;
        --extra-args) extra_args=${2?--extra-args needs a value}; shift 2 ;;
        --extra-args=*) extra_args=${1#*=}; shift ;;
        --unit-file) unit_file=${2:?--unit-file needs a path}; shift 2 ;;
        --unit-file=*) unit_file=${1#*=}; shift ;;
        --init) init=${2:?--init needs systemd or none}; shift 2 ;;
        --init=*) init=${1#*=}; shift ;;
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --check-timeout) check_timeout=${2:?--check-timeout needs seconds}; shift 2 ;;
        --check-timeout=*) check_timeout=${1#*=}; shift ;;
        --uninstall) action=uninstall; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; printf '\n%s: error: unknown option %q\n' "$PROG" "$1" >&2; exit 2 ;;
    esac
done

case $init in
    systemd | none) ;;
    *) die "--init must be 'systemd' or 'none', not '$init'" ;;
esac
if [[ -n $prefix ]]; then
    [[ $init == none ]] || die "--prefix is only supported with --init none (systemd reads units from /etc/systemd/system)"
    [[ $prefix == /* ]] || die "--prefix must be an absolute path"
    prefix=${prefix%/}
fi
[[ $check_timeout =~ ^[0-9]+$ ]] || die "--check-timeout must be a number of seconds"

readonly BIN_PATH="$prefix/usr/local/bin/conn-exporter"
readonly UNIT_PATH="$prefix/etc/systemd/system/$SERVICE.service"
readonly DEFAULTS_PATH="$prefix/etc/default/conn-exporter"
readonly PID_PATH="$prefix/run/conn-exporter.pid"
readonly LOG_PATH="$prefix/var/log/conn-exporter.log"

# --- preconditions ----------------------------------------------------------

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root (it installs into /usr/local/bin and /etc/systemd/system); try: sudo $0 $*"
fi

if [[ $init == systemd ]]; then
    # sd_booted(): the same test systemd itself uses.
    if [[ ! -d /run/systemd/system ]] || ! command -v systemctl >/dev/null 2>&1; then
        die "systemd is not running on this host (/run/systemd/system is missing), so a systemd service cannot be installed. On hosts without systemd use '--init none' (a plain background process, not restarted on failure or at boot)."
    fi
fi

# Port of a listen address: ":9100", "0.0.0.0:9100", "[::]:9100", "host:9100".
port_of() {
    local addr=$1
    [[ $addr =~ :([0-9]+)$ ]] || return 1
    printf '%s\n' "${BASH_REMATCH[1]}"
}

# The URL to check /metrics on, from the listen address.
check_url() {
    local addr=$1 port host
    port=$(port_of "$addr")
    host=${addr%:"$port"}
    case $host in
        "" | 0.0.0.0 | "*") host=127.0.0.1 ;;
        "[::]") host="[::1]" ;;
    esac
    printf 'http://%s:%s/metrics\n' "$host" "$port"
}

# True while a process runs (a zombie waiting for its parent to reap it does not).
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(awk '/^State:/{print $2}' "/proc/$1/status" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# Pid of the exporter this script manages, if it runs (else empty).
our_pid() {
    local pid=""
    if [[ $init == systemd ]]; then
        pid=$(systemctl show -p MainPID --value "$SERVICE" 2>/dev/null || true)
        [[ $pid == 0 ]] && pid=""
    elif [[ -r $PID_PATH ]]; then
        pid=$(<"$PID_PATH")
        if ! [[ $pid =~ ^[0-9]+$ ]] || ! alive "$pid" ||
            [[ $(readlink "/proc/$pid/exe" 2>/dev/null) != "$BIN_PATH"* ]]; then
            pid=""
        fi
    fi
    printf '%s\n' "$pid"
}

# Fails (with a message naming the flag to change) when another program
# listens on the port. Our own running exporter does not count: that is an upgrade.
# Sockets are matched by inode against our own process's descriptors; only
# when a stranger holds the port does `ss -p` (which walks every process's
# descriptors, slow on busy hosts) name it.
check_port_free() {
    local port=$1 mine=$2 inode ours="" foreign=0 holders
    command -v ss >/dev/null 2>&1 || { info "warning: 'ss' (iproute2) not found, cannot check port $port before starting"; return 0; }
    if [[ -n $mine ]]; then
        ours=$(find "/proc/$mine/fd" -maxdepth 1 -lname 'socket:*' -printf '%l\n' 2>/dev/null | tr -dc '0-9\n' || true)
    fi
    while IFS= read -r inode; do
        [[ -n $inode ]] || continue
        grep -qx -- "$inode" <<<"$ours" || foreign=1
    done < <(ss -Htlne "( sport = :$port )" 2>/dev/null | grep -o 'ino:[0-9]*' | cut -d: -f2 || true)
    ((foreign)) || return 0
    holders=$(ss -Htlnp "( sport = :$port )" 2>/dev/null | grep -o 'users:(.*)' || true)
    [[ -n $holders ]] || holders="(a process in another container or namespace, or not visible to ss)"
    local hint=""
    grep -q '"node_exporter"\|"prometheus-node' <<<"$holders" && hint=" (node_exporter: it uses 9100 by default)"
    printf '%s: error: port %s is already in use%s:\n%s\n' "$PROG" "$port" "$hint" "$holders" >&2
    printf '%s: choose a free port with --listen-address (passed to the exporter as --web.listen-address), e.g.: %s --listen-address :%s\n' \
        "$PROG" "$PROG" "$((port + 1))" >&2
    exit 1
}

wait_for_metrics() {
    local url=$1 deadline=$((SECONDS + check_timeout)) code body
    command -v curl >/dev/null 2>&1 || die "curl is needed to check that /metrics answers"
    while ((SECONDS < deadline)); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)
        if [[ $code == 200 ]]; then
            body=$(curl -fsS --max-time 10 "$url" || true)
            if grep -q '^conn_exporter_build_info' <<<"$body"; then
                info "OK: $url answers ($(grep -c '^network_connections_info' <<<"$body" || true) connection series)"
                return 0
            fi
        elif [[ $code == 401 ]]; then
            info "OK: $url answers (401: basic auth is configured)"
            return 0
        elif [[ $code == 000 ]] && curl -ks -o /dev/null --max-time 5 "${url/http:/https:}"; then
            info "OK: ${url/http:/https:} answers (TLS is configured)"
            return 0
        fi
        sleep 0.5
    done
    return 1
}

# --- uninstall -----------------------------------------------------------------

stop_plain() {
    local pid i
    pid=$(our_pid)
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
}

if [[ $action == uninstall ]]; then
    if [[ $init == systemd ]]; then
        systemctl disable --now "$SERVICE" >/dev/null 2>&1 || true
        rm -f "$UNIT_PATH" "$BIN_PATH" "$DEFAULTS_PATH"
        systemctl daemon-reload
        systemctl reset-failed "$SERVICE" >/dev/null 2>&1 || true
    else
        stop_plain
        rm -f "$BIN_PATH" "$DEFAULTS_PATH" "$PID_PATH" "$LOG_PATH"
    fi
    info "removed conn-exporter ($BIN_PATH, $DEFAULTS_PATH$([[ $init == systemd ]] && printf ', %s' "$UNIT_PATH"))"
    exit 0
fi

# --- install / upgrade ---------------------------------------------------------

if [[ -z $binary ]]; then
    if [[ -x $REPO_DIR/target/release/conn-exporter ]]; then
        binary=$REPO_DIR/target/release/conn-exporter
    elif [[ -x ./conn-exporter ]]; then
        binary=./conn-exporter
    else
        die "no binary found: build it with 'cargo build --release' or pass --binary PATH"
    fi
fi
[[ -f $binary && -x $binary ]] || die "binary '$binary' does not exist or is not executable"
version=$("$binary" --version 2>&1 | head -n1) || die "'$binary --version' failed: wrong architecture or not conn-exporter? ($version)"
[[ $init == none || -f $unit_file ]] || die "unit file '$unit_file' not found (pass --unit-file)"

port=$(port_of "$listen_address") || die "--listen-address '$listen_address' has no port (expected e.g. :9100 or 127.0.0.1:9100)"
url=$(check_url "$listen_address")

current=$(our_pid)
check_port_free "$port" "$current"

info "installing $version to $BIN_PATH"
mkdir -p "$(dirname "$BIN_PATH")" "$(dirname "$DEFAULTS_PATH")"
# Copy then rename: a running exporter keeps its old inode, nothing sees a half-written file.
install -m 0755 "$binary" "$BIN_PATH.new"
mv -f "$BIN_PATH.new" "$BIN_PATH"

args="--web.listen-address=$listen_address${extra_args:+ $extra_args}"
cat >"$DEFAULTS_PATH.new" <<EOF
# Flags for conn-exporter. Written by $PROG: re-running it rewrites this file.
# See 'conn-exporter --help'.
CONN_EXPORTER_ARGS="$args"
EOF
chmod 0644 "$DEFAULTS_PATH.new"
mv -f "$DEFAULTS_PATH.new" "$DEFAULTS_PATH"

if [[ $init == systemd ]]; then
    mkdir -p "$(dirname "$UNIT_PATH")"
    sed "s#^ExecStart=/usr/bin/conn-exporter#ExecStart=$BIN_PATH#" "$unit_file" >"$UNIT_PATH.new"
    chmod 0644 "$UNIT_PATH.new"
    mv -f "$UNIT_PATH.new" "$UNIT_PATH"
    systemctl daemon-reload
    systemctl enable "$SERVICE" >/dev/null 2>&1 || die "systemctl enable $SERVICE failed"
    if ! systemctl restart "$SERVICE"; then
        systemctl --no-pager status "$SERVICE" >&2 || true
        die "the service did not start; see: journalctl -u $SERVICE"
    fi
else
    stop_plain
    mkdir -p "$(dirname "$PID_PATH")" "$(dirname "$LOG_PATH")"
    command -v setpriv >/dev/null 2>&1 || die "setpriv (util-linux) is needed for --init none"
    # shellcheck disable=SC2086 # the flags are meant to split on spaces, like systemd's $VAR
    setsid setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs -- \
        "$BIN_PATH" $args >>"$LOG_PATH" 2>&1 </dev/null &
    echo "$!" >"$PID_PATH"
fi

if ! wait_for_metrics "$url"; then
    if [[ $init == systemd ]]; then
        systemctl --no-pager status "$SERVICE" >&2 || true
        journalctl -u "$SERVICE" --no-pager -n 30 >&2 || true
    else
        tail -n 30 "$LOG_PATH" >&2 || true
    fi
    die "$url did not answer within ${check_timeout}s"
fi

if [[ $init == systemd ]]; then
    info "conn-exporter is $(systemctl is-active "$SERVICE") and enabled; flags in $DEFAULTS_PATH"
else
    info "conn-exporter runs as pid $(<"$PID_PATH") (user nobody); log $LOG_PATH"
fi
