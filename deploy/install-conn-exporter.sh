#!/usr/bin/env bash
# Install, upgrade or remove conn-exporter on one host, with or without systemd.
#
#   sudo ./install-conn-exporter.sh                          # systemd service
#   sudo ./install-conn-exporter.sh --init none              # no systemd: a background process
#   sudo ./install-conn-exporter.sh --listen-address :9101   # node_exporter holds 9100
#   sudo ./install-conn-exporter.sh --dry-run                # show what it would do
#   sudo ./install-conn-exporter.sh --uninstall              # finds what was installed
#
# With systemd (the default) it places:
#   /usr/local/bin/conn-exporter
#   /etc/systemd/system/conn-exporter.service   (from deploy/systemd/, hardened)
#   /etc/default/conn-exporter                  (the exporter's flags)
#   /var/lib/conn-exporter/install.state        (what was installed, for --uninstall)
# enables and (re)starts the service, then checks that /metrics answers.
# Running it again upgrades the binary and the unit in place. Before it stops a
# running exporter it starts the new binary with the new flags once, briefly, on
# a loopback port the kernel picks, as the user the service runs as: a
# configuration that cannot start (a bad web config, a key that user cannot
# read) is refused and the running exporter is left alone.
#
# --init none is for hosts without systemd (minimal containers, test hosts):
# the exporter is started as a plain background process under the unprivileged
# user nobody, with a pid file and a log file. Nothing restarts it on failure or
# at boot. --prefix DIR relocates every file it places under DIR (only with
# --init none), so several installs can share one file system; the record is
# then DIR/var/lib/conn-exporter/install.state and --uninstall needs --prefix DIR.
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
web_config_dir=""
init=systemd
init_given=""
prefix=""
action=install
dry_run=0
check_timeout=20

usage() {
    cat <<EOF
Usage: sudo $PROG [options]

Installs conn-exporter as a hardened systemd service, or with --init none as a
plain background process on hosts without systemd; starts it and checks that
/metrics answers. Re-running it upgrades in place; --uninstall removes what
was installed (recorded in /var/lib/conn-exporter/install.state).

Options:
  --binary PATH          exporter binary to install (default:
                         target/release/conn-exporter of this repository,
                         else ./conn-exporter)
  --listen-address ADDR  address for the exporter's --web.listen-address
                         (default :9100; node_exporter also uses 9100)
  --extra-args ARGS      more exporter flags, e.g.
                         "--log.level=debug"
  --web-config-dir DIR   install DIR's web-config.yml and the certificates and
                         keys it names (relative paths) into /etc/conn-exporter,
                         readable by the service user only (root-owned, group
                         nogroup for --init none; for systemd the group
                         conn-exporter-keys, given to the service by a
                         SupplementaryGroups= drop-in), and run the exporter
                         with --web.config.file=/etc/conn-exporter/web-config.yml
  --unit-file PATH       systemd unit to install (default: deploy/systemd/conn-exporter.service)
  --init systemd|none    service manager (default systemd); "none" starts a
                         plain background process as user nobody (no systemd
                         needed; nothing restarts it after a crash or a reboot)
  --prefix DIR           place all files under DIR (only with --init none)
  --check-timeout SECS   how long to wait for /metrics to answer (default 20)
  --dry-run              print what would be done, change nothing
  --uninstall            stop the exporter and remove every file this script
                         placed; --init and the paths come from the record
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
        --web-config-dir) web_config_dir=${2:?--web-config-dir needs a directory}; shift 2 ;;
        --web-config-dir=*) web_config_dir=${1#*=}; shift ;;
        --unit-file) unit_file=${2:?--unit-file needs a path}; shift 2 ;;
        --unit-file=*) unit_file=${1#*=}; shift ;;
        --init) init=${2:?--init needs systemd or none}; init_given=$init; shift 2 ;;
        --init=*) init=${1#*=}; init_given=$init; shift ;;
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --check-timeout) check_timeout=${2:?--check-timeout needs seconds}; shift 2 ;;
        --check-timeout=*) check_timeout=${1#*=}; shift ;;
        --dry-run) dry_run=1; shift ;;
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
    [[ $prefix == /* ]] || die "--prefix must be an absolute path"
    prefix=${prefix%/}
    # An uninstall reads --init from the record; an install needs it spelled out.
    [[ $action == uninstall || $init == none ]] ||
        die "--prefix is only supported with --init none (systemd reads units from /etc/systemd/system)"
fi
[[ $check_timeout =~ ^[0-9]+$ ]] || die "--check-timeout must be a number of seconds"

readonly STATE_PATH="$prefix/var/lib/conn-exporter/install.state"

# The record of an install: KEY=VALUE lines, read without running them.
state_get() {
    local key=$1 k v
    [[ -r $STATE_PATH ]] || return 1
    while IFS='=' read -r k v; do
        [[ $k == "$key" ]] && { printf '%s\n' "$v"; return 0; }
    done <"$STATE_PATH"
    return 1
}

if [[ $action == uninstall && -r $STATE_PATH ]]; then
    recorded=$(state_get INIT) || die "$STATE_PATH has no INIT line: remove the files by hand"
    if [[ -n $init_given && $init_given != "$recorded" ]]; then
        info "note: $STATE_PATH records --init $recorded; using that, not --init $init_given"
    fi
    init=$recorded
elif [[ $action == uninstall && -n $prefix ]]; then
    init=none
fi

BIN_PATH="$prefix/usr/local/bin/conn-exporter"
UNIT_PATH="$prefix/etc/systemd/system/$SERVICE.service"
DEFAULTS_PATH="$prefix/etc/default/conn-exporter"
PID_PATH="$prefix/run/conn-exporter.pid"
LOG_PATH="$prefix/var/log/conn-exporter.log"
WEB_DIR="$prefix/etc/conn-exporter"
DROPIN_PATH="$prefix/etc/systemd/system/$SERVICE.service.d/web-config-keys.conf"
if [[ $action == uninstall && -r $STATE_PATH ]]; then
    BIN_PATH=$(state_get BIN_PATH || echo "$BIN_PATH")
    DEFAULTS_PATH=$(state_get DEFAULTS_PATH || echo "$DEFAULTS_PATH")
    UNIT_PATH=$(state_get UNIT_PATH || echo "$UNIT_PATH")
    PID_PATH=$(state_get PID_PATH || echo "$PID_PATH")
    LOG_PATH=$(state_get LOG_PATH || echo "$LOG_PATH")
    WEB_DIR=$(state_get WEB_DIR || echo "")
    DROPIN_PATH=$(state_get DROPIN_PATH || echo "")
fi
readonly BIN_PATH UNIT_PATH DEFAULTS_PATH PID_PATH LOG_PATH WEB_DIR DROPIN_PATH
# The group that may read the web config's keys: nobody's own group for
# --init none; for systemd a group the dynamic user joins through a drop-in
# (a static group named like the unit's Group= would replace the dynamic one).
if [[ $init == none ]]; then KEYS_GROUP=nogroup; else KEYS_GROUP=conn-exporter-keys; fi
readonly KEYS_GROUP

# --- preconditions ----------------------------------------------------------

sd_booted() {
    # The same test systemd itself uses.
    [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1
}

if [[ $(id -u) -ne 0 ]] && ((!dry_run)); then
    die "must run as root (it installs into /usr/local/bin and /etc/systemd/system); try: sudo $0 $*"
fi

if [[ $action == uninstall && ! -r $STATE_PATH && -z $init_given ]] && ! sd_booted; then
    # Installed before installs were recorded, on a host without systemd.
    init=none
fi

if [[ $init == systemd ]] && ! sd_booted; then
    if [[ $action == uninstall ]]; then
        die "no install is recorded in $STATE_PATH and systemd is not running here. For an install made with --prefix DIR, run: $PROG --uninstall --prefix DIR"
    fi
    die "systemd is not running on this host (/run/systemd/system is missing), so a systemd service cannot be installed. On hosts without systemd use '--init none' (a plain background process, not restarted on failure or at boot)."
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

# Why the exporter this script started is not running any more, or nothing.
# Polled while waiting for /metrics, so a start-up failure is reported at once.
exporter_died() {
    local state
    if [[ $init == systemd ]]; then
        state=$(systemctl show -p ActiveState --value "$SERVICE" 2>/dev/null || true)
        # Restart=on-failure turns a crash into "activating" (auto-restart) or "failed".
        [[ $state == active ]] || { printf 'the service is %s\n' "${state:-unknown}"; return 0; }
    else
        alive "$started_pid" || { printf 'the process (pid %s) exited\n' "$started_pid"; return 0; }
    fi
    return 1
}

# The exporter's last log lines since it was started.
show_log() {
    if [[ $init == systemd ]]; then
        journalctl -u "$SERVICE" --no-pager -n 20 --since "@$start_time" >&2 || true
    else
        tail -c "+$((log_offset + 1))" "$LOG_PATH" 2>/dev/null | tail -n 20 >&2 || true
    fi
}

wait_for_metrics() {
    local url=$1 deadline=$((SECONDS + check_timeout)) code body why
    command -v curl >/dev/null 2>&1 || die "curl is needed to check that /metrics answers"
    while ((SECONDS < deadline)); do
        if why=$(exporter_died); then
            show_log
            die "conn-exporter did not start: $why (last log lines above)"
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --connect-timeout 2 --max-time 10 "$url" || true)
        if [[ $code == 200 ]]; then
            body=$(curl -fsS --max-time 10 "$url" || true)
            # An exporter's families (build info is left out with --web.disable-exporter-metrics).
            if grep -Eq '^(conn_exporter_build_info|# TYPE (network|conn_exporter)_)' <<<"$body"; then
                info "OK: $url answers ($(grep -c '^network_connections_info' <<<"$body" || true) connection series)"
                return 0
            fi
        elif [[ $code == 401 ]]; then
            info "OK: $url answers (401: basic auth is configured)"
            return 0
        elif [[ $code == 400 || $code == 000 ]] && curl -ks -o /dev/null --max-time 5 "${url/http:/https:}"; then
            info "OK: ${url/http:/https:} answers (TLS is configured)"
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# The user the service runs as, for the configuration check: nobody for
# --init none; for systemd a DynamicUser, which like nobody owns no files,
# plus the unit's SupplementaryGroups= (from a drop-in) that may grant a key.
service_groups() {
    local groups="" g
    if [[ -n $web_config_dir ]]; then
        groups=$KEYS_GROUP
    fi
    if [[ $init == systemd ]]; then
        for g in $(systemctl show -p SupplementaryGroups --value "$SERVICE" 2>/dev/null || true); do
            [[ $g != "$KEYS_GROUP" ]] && getent group "$g" >/dev/null && groups+=${groups:+,}$g
        done
    fi
    printf '%s\n' "$groups"
}

# check_config BINARY FLAGS: starts BINARY with FLAGS once, as the service user, on a loopback
# port the kernel picks, and stops it as soon as it listens. Fails with the
# exporter's own message when it exits instead (bad flags, bad web config, a
# certificate or key that user cannot read). The running exporter is untouched.
check_config() {
    local bin=$1 flags=$2 groups words=() w check_args=() skip=0 pid log deadline
    groups=$(service_groups)
    # shellcheck disable=SC2206 # the flags split on spaces, like systemd's $VAR
    words=($flags)
    for w in "${words[@]}"; do
        if ((skip)); then skip=0; continue; fi
        case $w in
            --web.listen-address) skip=1 ;;
            --web.listen-address=*) ;;
            *) check_args+=("$w") ;;
        esac
    done
    local group_opt=--clear-groups
    [[ -z $groups ]] || group_opt=--groups=$groups
    log=$(mktemp "${TMPDIR:-/tmp}/conn-exporter-check.XXXXXX")
    setpriv --reuid=nobody --regid=nogroup "$group_opt" --no-new-privs -- \
        "$bin" --web.listen-address=127.0.0.1:0 "${check_args[@]}" >"$log" 2>&1 </dev/null &
    pid=$!
    deadline=$((SECONDS + check_timeout))
    while ! ss -Htlnp 2>/dev/null | grep -q "pid=$pid,"; do
        if ! alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            tail -n 20 "$log" >&2
            rm -f "$log"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            kill "$pid" 2>/dev/null || true
            tail -n 20 "$log" >&2
            rm -f "$log"
            printf '%s: the new exporter did not listen within %ss\n' "$PROG" "$check_timeout" >&2
            return 1
        fi
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
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
    removed=("$BIN_PATH" "$DEFAULTS_PATH")
    if [[ $init == systemd ]]; then
        removed+=("$UNIT_PATH")
    else
        removed+=("$PID_PATH" "$LOG_PATH")
    fi
    [[ -z $DROPIN_PATH ]] || removed+=("$DROPIN_PATH")
    [[ -z $WEB_DIR ]] || removed+=("$WEB_DIR/")
    if ((dry_run)); then
        info "dry run: would stop the exporter ($([[ $init == systemd ]] && echo "systemctl disable --now $SERVICE" || echo "pid in $PID_PATH")) and remove: ${removed[*]} $STATE_PATH"
        exit 0
    fi
    if [[ $init == systemd ]]; then
        systemctl disable --now "$SERVICE" >/dev/null 2>&1 || true
        rm -f "${removed[@]%/}" 2>/dev/null || true
        systemctl daemon-reload
        systemctl reset-failed "$SERVICE" >/dev/null 2>&1 || true
    else
        stop_plain
        rm -f "${removed[@]%/}" 2>/dev/null || true
    fi
    [[ -z $WEB_DIR ]] || rm -rf -- "$WEB_DIR"
    [[ -z $DROPIN_PATH ]] || rmdir "$(dirname "$DROPIN_PATH")" 2>/dev/null || true
    rm -f "$STATE_PATH"
    rmdir "$(dirname "$STATE_PATH")" 2>/dev/null || true
    info "removed conn-exporter (--init $init: ${removed[*]})"
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
command -v setpriv >/dev/null 2>&1 || die "setpriv (util-linux) is needed to check the configuration as the service user"

port=$(port_of "$listen_address") || die "--listen-address '$listen_address' has no port (expected e.g. :9100 or 127.0.0.1:9100)"
url=$(check_url "$listen_address")
args="--web.listen-address=$listen_address${extra_args:+ $extra_args}"
if [[ -n $web_config_dir ]]; then
    [[ -f $web_config_dir/web-config.yml ]] || die "--web-config-dir '$web_config_dir' has no web-config.yml"
    [[ $args != *--web.config.file* ]] || die "--web-config-dir sets --web.config.file: do not pass it in --extra-args too"
    while IFS= read -r named; do
        [[ $named != /* ]] || die "$web_config_dir/web-config.yml names '$named': with --web-config-dir, name files relative to web-config.yml (they are installed beside it)"
        [[ -f $web_config_dir/$named ]] || die "$web_config_dir/web-config.yml names '$named', which is not in $web_config_dir"
    done < <(sed -n 's/^[[:space:]]*\(cert_file\|key_file\|client_ca_file\):[[:space:]]*["'"'"']\{0,1\}\([^"'"'"'#[:space:]]*\).*/\2/p' "$web_config_dir/web-config.yml")
    args+=" --web.config.file=$WEB_DIR/web-config.yml"
fi

if ((dry_run)); then
    current=$(our_pid)
    echo "dry run: nothing is changed"
    echo "  binary:      $binary ($version) -> $BIN_PATH"
    echo "  flags:       CONN_EXPORTER_ARGS=\"$args\" -> $DEFAULTS_PATH"
    if [[ $init == systemd ]]; then
        echo "  service:     $UNIT_PATH from $unit_file, enabled and restarted"
    else
        echo "  process:     $BIN_PATH as user nobody, pid $PID_PATH, log $LOG_PATH (nothing restarts it)"
    fi
    if [[ -n $web_config_dir ]]; then
        echo "  web config:  $web_config_dir/* -> $WEB_DIR/ (root:$KEYS_GROUP, 0640)$([[ $init == systemd ]] && echo "; $DROPIN_PATH: SupplementaryGroups=$KEYS_GROUP")"
    fi
    echo "  record:      $STATE_PATH (read by --uninstall)"
    echo "  running now: ${current:-no exporter of this install}"
    echo "  first:       the new binary starts once with these flags on 127.0.0.1 as the service user;"
    echo "               if it cannot, nothing is changed and a running exporter keeps running"
    echo "  then checks: $url answers within ${check_timeout}s"
    check_port_free "$port" "$current"
    echo "  port $port:   free (or held by this install's exporter)"
    exit 0
fi

current=$(our_pid)
check_port_free "$port" "$current"

info "installing $version to $BIN_PATH"
mkdir -p "$(dirname "$BIN_PATH")" "$(dirname "$DEFAULTS_PATH")" "$(dirname "$STATE_PATH")"
# Copy then rename: a running exporter keeps its old inode, nothing sees a half-written file.
install -m 0755 "$binary" "$BIN_PATH.new"
check_flags=$args
if [[ -n $web_config_dir ]]; then
    # Staged beside the live directory, checked there, then swapped in.
    if [[ $KEYS_GROUP == conn-exporter-keys ]] && ! getent group "$KEYS_GROUP" >/dev/null; then
        groupadd --system "$KEYS_GROUP" || die "cannot create the group $KEYS_GROUP"
    fi
    rm -rf -- "$WEB_DIR.new"
    install -d -m 0750 -o root -g "$KEYS_GROUP" "$WEB_DIR.new"
    find "$web_config_dir" -maxdepth 1 -type f -exec install -m 0640 -o root -g "$KEYS_GROUP" {} "$WEB_DIR.new/" \;
    check_flags=${args//"$WEB_DIR/web-config.yml"/"$WEB_DIR.new/web-config.yml"}
fi
if ! check_config "$BIN_PATH.new" "$check_flags"; then
    rm -f "$BIN_PATH.new"
    [[ -z $web_config_dir ]] || rm -rf -- "$WEB_DIR.new"
    die "the new exporter cannot start with: $args (its messages above); nothing was changed${current:+, the running exporter (pid $current) keeps running}"
fi
info "configuration checked: the new binary starts with these flags as the service user"
mv -f "$BIN_PATH.new" "$BIN_PATH"
if [[ -n $web_config_dir ]]; then
    rm -rf -- "$WEB_DIR.old"
    [[ ! -e $WEB_DIR ]] || mv -- "$WEB_DIR" "$WEB_DIR.old"
    mv -- "$WEB_DIR.new" "$WEB_DIR"
    rm -rf -- "$WEB_DIR.old"
    if [[ $init == systemd ]]; then
        mkdir -p "$(dirname "$DROPIN_PATH")"
        printf '# Written by %s: lets the dynamic service user read %s.\n[Service]\nSupplementaryGroups=%s\n' \
            "$PROG" "$WEB_DIR" "$KEYS_GROUP" >"$DROPIN_PATH"
    fi
fi

cat >"$DEFAULTS_PATH.new" <<EOF
# Flags for conn-exporter. Written by $PROG: re-running it rewrites this file.
# See 'conn-exporter --help'.
CONN_EXPORTER_ARGS="$args"
EOF
chmod 0644 "$DEFAULTS_PATH.new"
mv -f "$DEFAULTS_PATH.new" "$DEFAULTS_PATH"

{
    echo "# Written by $PROG; read by '$PROG --uninstall${prefix:+ --prefix $prefix}'."
    echo "INIT=$init"
    echo "PREFIX=$prefix"
    echo "VERSION=$version"
    echo "BIN_PATH=$BIN_PATH"
    echo "DEFAULTS_PATH=$DEFAULTS_PATH"
    if [[ $init == systemd ]]; then
        echo "UNIT_PATH=$UNIT_PATH"
    else
        echo "PID_PATH=$PID_PATH"
        echo "LOG_PATH=$LOG_PATH"
    fi
    if [[ -n $web_config_dir ]]; then
        echo "WEB_DIR=$WEB_DIR"
        [[ $init == none ]] || echo "DROPIN_PATH=$DROPIN_PATH"
    else
        # Placed by an earlier run: still ours to remove on --uninstall.
        state_get WEB_DIR | sed 's/^/WEB_DIR=/' || true
        state_get DROPIN_PATH | sed 's/^/DROPIN_PATH=/' || true
    fi
} >"$STATE_PATH.new"
chmod 0644 "$STATE_PATH.new"
mv -f "$STATE_PATH.new" "$STATE_PATH"

start_time=$(date +%s)
started_pid=""
log_offset=0
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
    log_offset=$(stat -c %s "$LOG_PATH" 2>/dev/null || echo 0)
    # shellcheck disable=SC2086 # the flags are meant to split on spaces, like systemd's $VAR
    setsid setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs -- \
        "$BIN_PATH" $args >>"$LOG_PATH" 2>&1 </dev/null &
    started_pid=$!
    echo "$started_pid" >"$PID_PATH"
fi

if ! wait_for_metrics "$url"; then
    if [[ $init == systemd ]]; then
        systemctl --no-pager status "$SERVICE" >&2 || true
    fi
    show_log
    die "$url did not answer within ${check_timeout}s"
fi

if [[ $init == systemd ]]; then
    info "conn-exporter is $(systemctl is-active "$SERVICE") and enabled; flags in $DEFAULTS_PATH; record $STATE_PATH"
else
    info "conn-exporter runs as pid $(<"$PID_PATH") (user nobody); log $LOG_PATH; record $STATE_PATH"
fi
