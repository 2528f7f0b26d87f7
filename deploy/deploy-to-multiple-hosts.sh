#!/usr/bin/env bash
# Install or upgrade conn-exporter on many hosts over ssh, in parallel.
#
#   ./deploy-to-multiple-hosts.sh --hosts-file hosts.txt
#   ./deploy-to-multiple-hosts.sh web1 web2 db1.example.com
#   ./deploy-to-multiple-hosts.sh --dry-run --hosts-file hosts.txt
#   ./deploy-to-multiple-hosts.sh --hosts-file hosts.txt --web-config-dir 'tls/{host}'
#   ./deploy-to-multiple-hosts.sh --uninstall web1
#
# Hosts come from a file and/or the command line; nobody edits this script.
# A hosts file has one host per line as ssh understands it (name, user@name,
# an alias from ~/.ssh/config), '#' starts a comment, and a line may carry
# installer options for that host only, e.g.:
#     db1.example.com --listen-address :9101    # node_exporter holds 9100 there
#
# For each host: a private staging directory is made with mktemp on the host,
# the binary, the installer, the unit (and with --web-config-dir the web
# configuration with its certificates and keys) are copied there with scp, the
# installer runs (with sudo when the ssh user is not root), and the staging
# directory is removed. --uninstall needs no install options: the installer
# finds what it installed in its record on the host. ssh runs in batch mode with the operator's ssh
# configuration (or --ssh-config FILE), so keys, jump hosts and ports come from
# there. The installer is idempotent, so re-running upgrades in place.
# Exit status: 0 when every host succeeded, 1 when any failed, 2 on bad usage.
set -euo pipefail

readonly PROG=deploy-to-multiple-hosts.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly REPO_DIR=${SCRIPT_DIR%/deploy}

binary="$REPO_DIR/target/release/conn-exporter"
installer="$SCRIPT_DIR/install-conn-exporter.sh"
unit_file="$SCRIPT_DIR/systemd/conn-exporter.service"
listen_address=""
install_args=""
web_config_dir=""
parallel=8
ssh_config=""
ssh_options=()
dry_run=0
action=install
host_timeout=300
log_dir=""
hosts_files=()
hosts=()
host_opts=()

usage() {
    cat <<EOF
Usage: $PROG [options] [HOST...]

Installs conn-exporter on every host over ssh (systemd service, or with
--install-args "--init none" a background process on hosts without systemd).
First contact with new hosts: their keys must be in ~/.ssh/known_hosts (ssh
runs in batch mode), or choose -o StrictHostKeyChecking=accept-new.

Options:
  -f, --hosts-file FILE   read hosts from FILE (repeatable; '-' for stdin)
  --binary PATH           binary to deploy (default: target/release/conn-exporter)
  --listen-address ADDR   passed to the installer (default: the installer's, :9100)
  --install-args ARGS     more installer options for every host; {host} is
                          replaced by the host name, e.g. "--init none"
  --web-config-dir DIR    ship DIR (web-config.yml and the certificates and
                          keys it names, relative to it) to every host: the
                          installer puts it in /etc/conn-exporter, readable by
                          the service user only; {host} is replaced by the host
                          name (one server certificate per host)
  -j, --parallel N        hosts handled at once (default 8)
  --ssh-config FILE       ssh configuration to use (default: the operator's own)
  -o, --ssh-option OPT    extra ssh -o option (repeatable), e.g. -o Port=2222
  --timeout SECS          give up on one host after SECS (default 300)
  --log-dir DIR           keep per-host logs in DIR (default: a new temporary directory)
  --dry-run               print what would run on each host, connect to none
  --uninstall             remove conn-exporter from the hosts instead (each
                          host's installer finds what it installed: no
                          install options needed, not even --init none)
  -h, --help              show this help
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 2
}

while (($#)); do
    case $1 in
        -f | --hosts-file) hosts_files+=("${2:?$1 needs a file}"); shift 2 ;;
        --hosts-file=*) hosts_files+=("${1#*=}"); shift ;;
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --binary=*) binary=${1#*=}; shift ;;
        --listen-address) listen_address=${2:?--listen-address needs a value}; shift 2 ;;
        --listen-address=*) listen_address=${1#*=}; shift ;;
        --install-args) install_args=${2?--install-args needs a value}; shift 2 ;;
        --install-args=*) install_args=${1#*=}; shift ;;
        --web-config-dir) web_config_dir=${2:?--web-config-dir needs a directory}; shift 2 ;;
        --web-config-dir=*) web_config_dir=${1#*=}; shift ;;
        -j | --parallel) parallel=${2:?$1 needs a number}; shift 2 ;;
        --parallel=*) parallel=${1#*=}; shift ;;
        --ssh-config) ssh_config=${2:?--ssh-config needs a file}; shift 2 ;;
        --ssh-config=*) ssh_config=${1#*=}; shift ;;
        -o | --ssh-option) ssh_options+=(-o "${2:?$1 needs an option}"); shift 2 ;;
        --timeout) host_timeout=${2:?--timeout needs seconds}; shift 2 ;;
        --log-dir) log_dir=${2:?--log-dir needs a directory}; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        --uninstall) action=uninstall; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; while (($#)); do hosts+=("$1"); host_opts+=(""); shift; done ;;
        -*) usage >&2; die "unknown option '$1'" ;;
        *) hosts+=("$1"); host_opts+=(""); shift ;;
    esac
done

[[ $parallel =~ ^[1-9][0-9]*$ ]] || die "--parallel must be a positive number"
[[ $host_timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive number of seconds"

for file in "${hosts_files[@]}"; do
    [[ $file == - || -r $file ]] || die "cannot read hosts file '$file'"
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%%#*}
        read -r host opts <<<"$line" || true
        [[ -n ${host:-} ]] || continue
        hosts+=("$host")
        host_opts+=("${opts:-}")
    done < <(if [[ $file == - ]]; then cat; else cat -- "$file"; fi)
done

((${#hosts[@]})) || { usage >&2; die "no hosts given (arguments or --hosts-file)"; }

# A host listed twice would be installed twice at once: refuse.
dupes=$(printf '%s\n' "${hosts[@]}" | sort | uniq -d)
[[ -z $dupes ]] || die "hosts listed more than once: $(tr '\n' ' ' <<<"$dupes")"

if [[ $action == install ]]; then
    [[ -f $binary && -x $binary ]] || die "binary '$binary' not found: run 'cargo build --release' or pass --binary"
    if [[ -n $web_config_dir ]]; then
        for host in "${hosts[@]}"; do
            d=${web_config_dir//\{host\}/$host}
            [[ -f $d/web-config.yml ]] || die "--web-config-dir: $d/web-config.yml not found (for host $host)"
        done
    fi
fi
[[ -f $installer ]] || die "installer '$installer' not found"
[[ -f $unit_file ]] || die "unit file '$unit_file' not found"
if [[ -n $ssh_config ]]; then
    [[ -r $ssh_config ]] || die "cannot read ssh config '$ssh_config'"
    ssh_options=(-F "$ssh_config" "${ssh_options[@]}")
fi
ssh_options=(-o BatchMode=yes -o ConnectTimeout=15 "${ssh_options[@]}")

# The installer's command line for one host, as words.
installer_args() {
    local host=$1 opts=$2 words=()
    if [[ $action == uninstall ]]; then
        words+=(--uninstall)
    else
        words+=(--binary '@DIR@/conn-exporter' --unit-file '@DIR@/conn-exporter.service')
        [[ -z $listen_address ]] || words+=(--listen-address "$listen_address")
        [[ -z $web_config_dir ]] || words+=(--web-config-dir '@DIR@/web')
    fi
    local extra=${install_args//\{host\}/$host} w
    # Options are split on white space, like a shell would without quotes.
    for w in $extra $opts; do words+=("$w"); done
    printf '%s\n' "${words[@]}"
}

# The shell command run on the host. @DIR@ is the staging directory.
# shellcheck disable=SC2016 # $dir, $sudo and $rc expand on the remote host, not here
remote_script() {
    local host=$1 opts=$2 quoted="" w
    while IFS= read -r w; do
        quoted+=" $(printf '%q' "$w")"
    done < <(installer_args "$host" "$opts")
    printf '%s' 'dir=$1; sudo=""; if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi; '
    printf '%s' "rc=0; \$sudo bash \"\$dir/install-conn-exporter.sh\"${quoted//@DIR@/\"\$dir\"} || rc=\$?; "
    printf '%s' 'rm -rf -- "$dir"; exit $rc'
}

# Why ssh failed, from its messages, with a hint for the usual first-contact problem.
ssh_failure() {
    local err=$1 why
    why=$(tr -d '\r' <<<"$err" | grep -v '^[[:space:]]*$' | grep -v '^@\|^WARNING\|^IT IS POSSIBLE\|^Someone could' | tail -n 1)
    case $err in
        *"Host key verification failed"* | *"No ED25519 host key is known"* | *"No RSA host key is known"* | *"host key for"*"has changed"*)
            why+=" (first contact: add the host key to known_hosts, e.g. ssh-keyscan, or choose -o StrictHostKeyChecking=accept-new; see the deployment guide)" ;;
    esac
    printf '%s\n' "${why:-ssh failed without a message}"
}

deploy_one() {
    local host=$1 opts=$2 dir rc=0 err
    local script
    script=$(remote_script "$host" "$opts")
    err=$(mktemp)
    dir=$(ssh "${ssh_options[@]}" -- "$host" 'mktemp -d /tmp/conn-exporter-install.XXXXXX' 2>"$err") || {
        cat "$err"
        echo "cannot connect or create a staging directory: $(ssh_failure "$(cat "$err")")"
        rm -f "$err"
        return 1
    }
    cat "$err"
    rm -f "$err"
    [[ $dir == /tmp/conn-exporter-install.* ]] || { echo "unexpected staging directory '$dir'"; return 1; }
    local files=("$installer" "$unit_file")
    [[ $action == install ]] && files+=("$binary")
    # scp copies under the names given, so put the binary under its final name.
    scp -q "${ssh_options[@]}" -- "${files[@]}" "$host:$dir/" ||
        { ssh "${ssh_options[@]}" -- "$host" "rm -rf -- '$dir'" || true; echo "copy failed"; return 1; }
    if [[ $action == install && -n $web_config_dir ]]; then
        scp -q -r "${ssh_options[@]}" -- "${web_config_dir//\{host\}/$host}" "$host:$dir/web" ||
            { ssh "${ssh_options[@]}" -- "$host" "rm -rf -- '$dir'" || true; echo "copy of the web config failed"; return 1; }
    fi
    if [[ $action == install && $(basename "$binary") != conn-exporter ]]; then
        ssh "${ssh_options[@]}" -- "$host" "mv -- '$dir/$(basename "$binary")' '$dir/conn-exporter'" || return 1
    fi
    ssh "${ssh_options[@]}" -- "$host" "bash -c $(printf '%q' "$script") deploy $(printf '%q' "$dir")" || rc=$?
    return "$rc"
}

if ((dry_run)); then
    echo "dry run: nothing is copied or run"
    for i in "${!hosts[@]}"; do
        host=${hosts[$i]}
        printf '\n[%s]\n' "$host"
        if [[ $action == install ]]; then
            printf '  scp %s %s %s %s:STAGING/\n' "$installer" "$unit_file" "$binary" "$host"
            [[ -z $web_config_dir ]] || printf '  scp -r %s %s:STAGING/web\n' "${web_config_dir//\{host\}/$host}" "$host"
        else
            printf '  scp %s %s %s:STAGING/\n' "$installer" "$unit_file" "$host"
        fi
        printf '  ssh %s [sudo] bash STAGING/install-conn-exporter.sh' "$host"
        while IFS= read -r w; do
            # Quote for a shell only what needs it; STAGING stays readable.
            if [[ $w =~ ^[A-Za-z0-9_./:=@,+-]*$ ]]; then printf ' %s' "$w"; else printf ' %q' "$w"; fi
        done < <(installer_args "$host" "${host_opts[$i]}" | sed 's#@DIR@#STAGING#')
        printf '\n'
    done
    printf '\nSTAGING is a private directory made on each host with mktemp -d /tmp/conn-exporter-install.XXXXXX.\n'
    printf '\n%d host(s) would be %s.\n' "${#hosts[@]}" "$([[ $action == install ]] && echo installed || echo uninstalled)"
    exit 0
fi

if [[ -z $log_dir ]]; then
    log_dir=$(mktemp -d "${TMPDIR:-/tmp}/conn-exporter-deploy.XXXXXX")
else
    mkdir -p "$log_dir"
fi

echo "${action}ing conn-exporter on ${#hosts[@]} host(s), $parallel at a time; logs in $log_dir"

for i in "${!hosts[@]}"; do
    host=${hosts[$i]}
    key=${host//\//_}
    while (($(jobs -rp | wc -l) >= parallel)); do wait -n || true; done
    (
        start=$SECONDS
        rc=0
        export -f deploy_one remote_script installer_args ssh_failure
        # timeout needs a program: run the function in a child bash.
        timeout --kill-after=10 "$host_timeout" bash -c "$(declare -p ssh_options action listen_address install_args web_config_dir binary installer unit_file); deploy_one \"\$1\" \"\$2\"" \
            deploy "$host" "${host_opts[$i]}" >"$log_dir/$key.log" 2>&1 || rc=$?
        ((rc == 124)) && echo "timed out after ${host_timeout}s" >>"$log_dir/$key.log"
        printf '%s %s\n' "$rc" "$((SECONDS - start))" >"$log_dir/$key.result"
    ) &
done
wait

failed=0
printf '\n%-32s %-7s %6s  %s\n' HOST RESULT TIME DETAIL
for host in "${hosts[@]}"; do
    key=${host//\//_}
    read -r rc secs <"$log_dir/$key.result" || { rc=1; secs=0; }
    # The whole last line: it holds the cause (ssh's error, the installer's message).
    detail=$(grep -v '^[[:space:]]*$' "$log_dir/$key.log" | tail -n 1 || true)
    if [[ $rc == 0 ]]; then
        result=OK
    else
        result=FAILED
        failed=$((failed + 1))
    fi
    printf '%-32s %-7s %5ss  %s\n' "$host" "$result" "$secs" "$detail"
done
printf '\n%d ok, %d failed (logs: %s)\n' "$((${#hosts[@]} - failed))" "$failed" "$log_dir"
((failed == 0))
