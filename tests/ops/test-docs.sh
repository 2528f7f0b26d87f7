#!/usr/bin/env bash
# Follows the documentation as a new user would, running its commands as
# written: the fenced blocks marked `<!-- doc-test: NAME -->` in README.md (the quick
# start, on a fresh clone of the committed tree), docs/multi-host-deployment-guide.md,
# SECURITY.md and docs/promql-queries.md are copied out of the Markdown and run unchanged. The only substitution is
# the documented placeholder line `host=web1 ip=192.0.2.11` of SECURITY.md's
# certificate block, run once per host.
#
# The machine plays an operator's workstation and three hosts, web1, web2 and
# db1 (192.0.2.11-13, inside network namespaces this test creates, on a
# bridge with the workstation at 192.0.2.1). Each has its own network
# namespace, its own sshd and host key, and its own /etc, /usr/local, /var,
# /root and /run (overlays in a private mount namespace), so the installer
# writes its real paths and --uninstall finds them by itself, as on separate
# machines. None has systemd: the docs' --init none path.
#
# Steps: single-host install with --init none (dry run, install, uninstall)
# plus the installer's refusals (a key the service user cannot read, an
# exporter that dies at start); a deploy to three hosts refused for unknown
# host keys with ssh's real error in the summary, then after the documented
# ssh-keyscan a deploy that works; TLS and basic auth by SECURITY.md's recipe,
# shipped with --web-config-dir; Prometheus set up by the guide's section 4
# scraping the three over TLS, and the queries marked in promql-queries.md;
# a certificate re-issued in place; uninstall without install options.
set -euo pipefail
TEST_NAME=docs
# shellcheck source=tests/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
require_bin
require_cmds ip sshd ssh scp ssh-keygen ssh-keyscan openssl prometheus promtool curl python3 setpriv ss sudo \
    unshare nsenter git
cd "$REPO"

P="cxd$$"
NS_CTL="$P-ctl"
HOSTS=(web1 web2 db1)
declare -A IP=([web1]=192.0.2.11 [web2]=192.0.2.12 [db1]=192.0.2.13)
declare -A PORT=([web1]=9100 [web2]=9100 [db1]=9101)
WORK=$(mktemp -d /tmp/conn-exporter-ops-docs.XXXXXX)
chmod 755 "$WORK"
CHECKOUT=$WORK/conn-exporter
PROM=http://127.0.0.1:19091
GUIDE=$REPO/docs/multi-host-deployment-guide.md
SEC=$REPO/SECURITY.md
QUERIES=$REPO/docs/promql-queries.md
declare -A HOLDER # environment name -> pid of the process holding its namespaces

cleanup() {
    local rc=$? env pid ns mnt proc
    set +e
    for env in "${!HOLDER[@]}"; do
        mnt=$(readlink "/proc/${HOLDER[$env]}/ns/mnt" 2>/dev/null) || continue
        # Everything started inside this environment's mount namespace is ours.
        for proc in /proc/[0-9]*; do
            [[ $(readlink "$proc/ns/mnt" 2>/dev/null) == "$mnt" ]] && kill -9 "${proc#/proc/}" 2>/dev/null
        done
    done
    for ns in "$NS_CTL" "${HOSTS[@]/#/$P-}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    if ((rc != 0)); then
        tail -n 30 "$WORK"/prom.log 2>/dev/null
        for env in "${HOSTS[@]}"; do tail -n 5 "$WORK/$env/sshd.log" 2>/dev/null; done
    fi
    # The overlays' upper layers live in tmpfs mounts inside the environments:
    # gone with them. Only plain files remain under $WORK.
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- environments: a network namespace plus a private file system view ---------------
# The holder process keeps the namespaces; commands enter them with nsenter.
# /etc, /usr/local, /var and /root are overlays (writes stay in this
# environment), /run a fresh tmpfs.
# shellcheck disable=SC2016 # expanded by the environment's own shell
PRIVATE_FS='set -e
base=$1; shift
mount -t tmpfs -o mode=0755 tmpfs "$base"
for d in etc usr/local var root; do
    mkdir -p "$base/upper/$d" "$base/work/$d"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$base/upper/$d,workdir=$base/work/$d" "/$d"
done
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -m 0755 /run/sshd
printf "127.0.0.1 localhost %s\n::1 localhost\n" "$(hostname)" >/etc/hosts
exec "$@"'

# start_env NAME NETNS COMMAND...: COMMAND runs in NETNS with a private file system
# and holds both; its pid is HOLDER[NAME].
start_env() {
    local name=$1 ns=$2 pid
    shift 2
    mkdir -p "$WORK/$name/fs"
    ip netns exec "$ns" unshare -m --propagation private bash -c "$PRIVATE_FS" private-fs "$WORK/$name/fs" "$@" \
        >>"$WORK/$name/holder.log" 2>&1 &
    pid=$!
    HOLDER[$name]=$pid
    # Ready when the holder has set up the file system and exec'd its command.
    wait_until 10 "$name's private file system" env_ready "$pid" "$(command -v "$1")"
}
env_ready() { [[ $(readlink "/proc/$1/exe") == "$(readlink -f "$2")" ]]; }

# in_env NAME COMMAND...: runs COMMAND inside environment NAME, in the checkout.
in_env() {
    local name=$1
    shift
    # TMPDIR: the deploy script's per-run log directories go under $WORK.
    nsenter -t "${HOLDER[$name]}" -m -n -- env -C "$CHECKOUT" PATH="$WORK/bin:$PATH" TMPDIR="$WORK/tmp" "$@"
}

# run_block NAME FILE BLOCK [SED]: extracts a marked block and runs it with bash
# -e in environment NAME from the checkout (SED: a documented placeholder
# substitution). Output goes to stdout; the exit status is the block's.
run_block() {
    local name=$1 file=$2 block=$3 subst=${4:-} script
    script="$WORK/blocks/$block${subst:+-$(printf '%s' "$subst" | tr -c 'A-Za-z0-9' _)}.sh"
    mkdir -p "$WORK/blocks"
    python3 "$OPS_DIR/lib/doc_blocks.py" "$file" "$block" >"$script" || fail "no block '$block' in $file"
    if [[ -n $subst ]]; then
        cp "$script" "$script.orig"
        sed -i "$subst" "$script"
        # The substitution must change exactly the placeholder line.
        [[ $(diff "$script.orig" "$script" | grep -c '^[<>]') == 2 ]] ||
            fail "placeholder substitution '$subst' did not change exactly one line of '$block'"
    fi
    log "running ${file#"$REPO"/} block '$block'$([[ -n $subst ]] && echo " with $subst")"
    sed 's/^/    | /' "$script"
    in_env "$name" bash -e "$script"
}

indent() { sed 's/^/    /'; }

# in_host HOST COMMAND...: a command on that host (its namespaces, as root).
in_host() { local h=$1; shift; nsenter -t "${HOLDER[$h]}" -m -n -- "$@"; }

# --- the workstation: the checkout as a user has it, the binary on PATH --------------
mkdir -p "$CHECKOUT/target/release" "$WORK/bin" "$WORK/tmp"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$CHECKOUT" 2>/dev/null || true
[[ -f $CHECKOUT/install-conn-exporter.sh && -f $CHECKOUT/docs/multi-host-deployment-guide.md ]] ||
    fail "copying the checkout to $CHECKOUT failed"
install -m 0755 "$BIN" "$CHECKOUT/target/release/conn-exporter"
install -m 0755 "$BIN" "$WORK/bin/conn-exporter" # "conn-exporter" as the docs call it

# --- network: a bridge in the workstation's namespace, one veth per host -------------
log "namespaces $NS_CTL and ${HOSTS[*]/#/$P-} on 192.0.2.0/24"
ip netns add "$NS_CTL"
ip -n "$NS_CTL" link set lo up
ip -n "$NS_CTL" link add br0 type bridge
ip -n "$NS_CTL" addr add 192.0.2.1/24 dev br0
ip -n "$NS_CTL" link set br0 up
for h in "${HOSTS[@]}"; do
    ip netns add "$P-$h"
    ip -n "$P-$h" link set lo up
    ip -n "$NS_CTL" link add "v$h" type veth peer name eth0 netns "$P-$h"
    ip -n "$NS_CTL" link set "v$h" master br0 up
    ip -n "$P-$h" addr add "${IP[$h]}/24" dev eth0
    ip -n "$P-$h" link set eth0 up
done

start_env ctl "$NS_CTL" sleep infinity
{
    for h in "${HOSTS[@]}"; do echo "${IP[$h]} $h"; done
} | in_env ctl tee -a /etc/hosts >/dev/null
# The operator's own ssh set-up, which the guide assumes: a key the hosts accept.
in_env ctl bash -c 'mkdir -p -m 0700 /root/.ssh && rm -f /root/.ssh/known_hosts /root/.ssh/config &&
    ssh-keygen -q -t ed25519 -N "" -C conn-exporter-docs -f /root/.ssh/id_docs &&
    printf "Host web1 web2 db1\n    User root\n    IdentityFile /root/.ssh/id_docs\n    IdentitiesOnly yes\n" >/root/.ssh/config'
in_env ctl cat /root/.ssh/id_docs.pub >"$WORK/authorized_keys"
chmod 600 "$WORK/authorized_keys"
ok "workstation: checkout copy, its own /etc, /root and /usr/local, an ssh key; no known host"

# --- the README's quick start, verbatim, on a fresh clone ------------------------------
# A clone of the committed tree. Its target/release starts as a copy of this build's (the
# release build that scripts/test.sh makes first): cargo then rebuilds this crate only,
# instead of every dependency (minutes on a small machine); the commands are the README's.
FRESH=$WORK/fresh/conn-exporter
git clone -q "$REPO" "$FRESH" || fail "git clone of $REPO failed"
mkdir -p "$FRESH/target"
if [[ -d $REPO/target/release/deps ]]; then
    cp -a "$REPO/target/release" "$FRESH/target/" || fail "copying $REPO/target/release failed"
    rm -f "$FRESH/target/release/conn-exporter"
fi
mkdir -p "$WORK/blocks"
python3 "$OPS_DIR/lib/doc_blocks.py" "$REPO/README.md" quick-start >"$WORK/blocks/quick-start.sh" ||
    fail "no quick-start block in README.md"
log "running README.md block 'quick-start' in a fresh clone"
sed 's/^/    | /' "$WORK/blocks/quick-start.sh"
start=$SECONDS
# Into a file, not $(...): the exporter the block leaves running holds its standard output.
set +e
nsenter -t "${HOLDER[ctl]}" -m -n -- env -C "$FRESH" PATH="$PATH" bash -e "$WORK/blocks/quick-start.sh" \
    >"$WORK/quick-start.out" 2>"$WORK/quick-start.err"
rc=$?
set -e
out=$(<"$WORK/quick-start.out")
# The block leaves the exporter running in the background, as a user's would: stop it.
for proc in /proc/[0-9]*; do
    [[ $(readlink "$proc/exe" 2>/dev/null) == "$FRESH/target/release/conn-exporter" ]] && kill "${proc#/proc/}" 2>/dev/null
done
indent <<<"$out"
((rc == 0)) || { tail -n 30 "$WORK/quick-start.err"; fail "the README's quick start failed (exit $rc)"; }
[[ $(wc -l <<<"$out") == 10 ]] || fail "quick start: curl | head printed $(wc -l <<<"$out") lines, want 10"
grep -q '^# HELP network_connections_info ' <<<"$out" || fail "quick start: the scrape does not start with the exporter's families"
[[ -x $FRESH/target/release/conn-exporter ]] || fail "quick start: no binary built in the fresh clone"
ok "README quick start on a fresh clone: built in $((SECONDS - start))s, served /metrics on :9100 (10 lines shown)"

# --- single host, --init none (the guide's section 1), on the workstation ------------
out=$(python3 "$OPS_DIR/lib/doc_blocks.py" "$GUIDE" single-host)
dry_line=$(grep -- '--dry-run' <<<"$out") || fail "the single-host block has no --dry-run line"
dry=$(in_env ctl bash -e -c "$dry_line" 2>&1) || { echo "$dry"; fail "dry run failed"; }
indent <<<"$dry"
assert_contains "$dry" "dry run: nothing is changed" "installer dry run"
assert_contains "$dry" "/var/lib/conn-exporter/install.state" "dry run names the record"
in_env ctl test ! -e /usr/local/bin/conn-exporter || fail "the dry run installed the binary"
in_env ctl test ! -e /var/lib/conn-exporter/install.state || fail "the dry run wrote the record"
ok "installer --dry-run prints the plan and changes nothing"

out=$(run_block ctl "$GUIDE" single-host 2>&1) || { echo "$out"; fail "single-host block failed"; }
indent <<<"$out"
count=$(tail -n 1 <<<"$out")
[[ $count =~ ^[1-9][0-9]*$ ]] || fail "single host: curl | grep -c printed '$count', want a positive count"
state=$(in_env ctl cat /var/lib/conn-exporter/install.state) || fail "no install record"
assert_contains "$state" "INIT=none" "install record"
pid=$(in_env ctl cat /run/conn-exporter.pid)
[[ $(stat -c %U "/proc/$pid") == nobody ]] || fail "single host: exporter pid $pid does not run as nobody"
# Independent check: ss in the same namespace counts the listeners /metrics shows.
ss_listen=$(in_env ctl ss -Htln | wc -l)
m_listen=$(in_env ctl curl -fsS http://localhost:9100/metrics | grep -c '^network_connections_info{.*state="LISTEN"' || true)
((ss_listen == m_listen)) || fail "single host: ss shows $ss_listen listeners, /metrics $m_listen"
ok "single host: installed with --init none as nobody, $count connection series, $m_listen listeners as ss says"

# The installer's refusals: a key only root can read. The running exporter must stay.
in_env ctl bash -e -c 'mkdir -p /etc/cx-bad && cd /etc/cx-bad &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bad \
        -keyout server.key -out server.crt 2>/dev/null && chmod 0600 server.key &&
    printf "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n" >web.yml'
set +e
out=$(in_env ctl ./install-conn-exporter.sh --init none --extra-args "--web.config.file=/etc/cx-bad/web.yml" 2>&1)
rc=$?
set -e
indent <<<"$out"
((rc == 1)) || fail "install with an unreadable key: exit $rc, want 1"
assert_contains "$out" "the new exporter cannot start" "unreadable key refused"
assert_contains "$out" "server.key" "the exporter's own message names the key"
assert_contains "$out" "runs as user nobody" "the exporter's own message names the user"
assert_contains "$out" "keeps running" "the running exporter is left alone"
if [[ $(in_env ctl cat /run/conn-exporter.pid) != "$pid" ]] || ! kill -0 "$pid"; then fail "the old exporter $pid was stopped"; fi
in_env ctl curl -fsS -o /dev/null http://localhost:9100/metrics || fail "the old exporter no longer answers"
in_env ctl grep -q 'CONN_EXPORTER_ARGS="--web.listen-address=:9100"$' /etc/default/conn-exporter ||
    fail "the refused install rewrote /etc/default/conn-exporter"
ok "a key the service user cannot read is refused before the running exporter is touched"

# An exporter that dies after the check (an address no interface holds): noticed at once.
set +e
out=$(in_env ctl ./install-conn-exporter.sh --init none --listen-address 192.0.2.250:9100 2>&1)
rc=$?
set -e
indent <<<"$out"
((rc == 1)) || fail "install on an address no interface holds: exit $rc, want 1"
assert_contains "$out" "did not start: the process" "death noticed"
assert_not_contains "$out" "did not answer within" "death noticed before the timeout"
assert_contains "$out" "192.0.2.250:9100" "the exporter's last log lines are shown"
ok "an exporter that dies at start is reported at once with its log"

out=$(run_block ctl "$GUIDE" single-host-uninstall 2>&1) || { echo "$out"; fail "uninstall block failed"; }
indent <<<"$out"
for f in /usr/local/bin/conn-exporter /etc/default/conn-exporter /var/lib/conn-exporter/install.state \
    /run/conn-exporter.pid /var/log/conn-exporter.log; do
    in_env ctl test ! -e "$f" || fail "uninstall left $f"
done
if in_env ctl ss -Htln 'sport = :9100' | grep -q .; then fail "something still listens on 9100"; fi
ok "uninstall without options found the --init none install and removed it"

# --- three hosts with their own sshd and file system ---------------------------------
for h in "${HOSTS[@]}"; do
    d="$WORK/$h"
    mkdir -p "$d"
    ssh-keygen -q -t ed25519 -N '' -C "$h" -f "$d/ssh_host_ed25519_key"
    cat >"$d/sshd_config" <<EOF
ListenAddress ${IP[$h]}:22
HostKey $d/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile $WORK/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
Subsystem sftp internal-sftp
LogLevel VERBOSE
EOF
    start_env "$h" "$P-$h" /usr/sbin/sshd -D -f "$d/sshd_config" -E "$d/sshd.log"
    listening() { ip netns exec "$P-$1" ss -Htln 'sport = :22' | grep -q .; }
    wait_until 10 "sshd on $h" listening "$h"
done
ok "hosts ${HOSTS[*]}: own network, sshd, host key and file system"

out=$(run_block ctl "$GUIDE" hosts-file 2>&1) || { echo "$out"; fail "hosts-file block failed"; }

# First contact, as the issue found it: no known host key yet.
set +e
out=$(run_block ctl "$GUIDE" deploy 2>&1)
rc=$?
set -e
indent <<<"$out"
((rc != 0)) || fail "deploy to hosts with unknown host keys succeeded"
assert_not_contains "$(grep -A3 '^\[web1\]' <<<"$out")" "\\" "dry run without stray escapes"
assert_contains "$out" "STAGING/install-conn-exporter.sh --binary STAGING/conn-exporter" "dry run shows the installer's command"
for h in "${HOSTS[@]}"; do
    line=$(grep -E "^$h +FAILED " <<<"$out") || fail "summary does not show $h FAILED"
    assert_contains "$line" "Host key verification failed." "$h: ssh's real error in the summary"
    assert_contains "$line" "StrictHostKeyChecking=accept-new" "$h: the first-contact hint in the summary"
done
ok "unknown host keys: every host FAILED with ssh's own error and the first-contact hint"

out=$(run_block ctl "$GUIDE" first-contact 2>&1) || { echo "$out"; fail "first-contact block failed"; }
for h in "${HOSTS[@]}"; do
    fp=$(ssh-keygen -lf "$WORK/$h/ssh_host_ed25519_key.pub" | awk '{print $2}')
    assert_contains "$out" "$fp" "known_hosts holds $h's real key"
done
out=$(run_block ctl "$GUIDE" deploy 2>&1) || { echo "$out"; fail "deploy block failed after first contact"; }
indent <<<"$out"
for h in "${HOSTS[@]}"; do grep -Eq "^$h +OK " <<<"$out" || fail "summary does not show $h OK"; done
assert_contains "$out" "3 ok, 0 failed" "deploy summary"
for h in "${HOSTS[@]}"; do
    state=$(in_host "$h" cat /var/lib/conn-exporter/install.state) || fail "$h: no install record"
    assert_contains "$state" "INIT=none" "$h: install record"
    pid=$(in_host "$h" cat /run/conn-exporter.pid)
    [[ $(stat -c %U "/proc/$pid") == nobody ]] || fail "$h: exporter does not run as nobody"
    [[ $(readlink "/proc/$pid/ns/net") == "$(ip netns exec "$P-$h" readlink /proc/self/ns/net)" ]] ||
        fail "$h: exporter is not in $h's network namespace"
    body=$(in_env ctl curl -fsS "http://$h:${PORT[$h]}/metrics") || fail "$h: /metrics does not answer"
    grep -q "source_address=\"${IP[$h]}\",source_port=\"22\",state=\"LISTEN\"" <<<"$body" ||
        grep -q "source_address=\"${IP[$h]}\".*source_port=\"22\".*LISTEN" <<<"$body" ||
        fail "$h: its own sshd listener ${IP[$h]}:22 is missing"
done
ok "after ssh-keyscan the documented deploy installs all three (db1 on :9101), as nobody, each in its own namespace"

# --- TLS and basic auth by SECURITY.md -------------------------------------------------
run_block ctl "$SEC" tls-ca >/dev/null 2>&1 || fail "tls-ca block failed"
for h in "${HOSTS[@]}"; do
    subst=""
    [[ $h == web1 ]] || subst="s/^host=web1 ip=192\.0\.2\.11\$/host=$h ip=${IP[$h]}/"
    out=$(run_block ctl "$SEC" tls-server-cert "$subst" 2>&1) ||
        { echo "$out"; fail "tls-server-cert block failed for $h"; }
    assert_contains "$out" "tls/$h/server.crt: OK" "$h's certificate verifies against the CA"
    sans=$(openssl x509 -in "$CHECKOUT/tls/$h/server.crt" -noout -ext subjectAltName)
    assert_contains "$sans" "DNS:$h" "$h: DNS SAN"
    assert_contains "$sans" "IP Address:${IP[$h]}" "$h: IP SAN"
done
out=$(run_block ctl "$SEC" tls-web-config 2>&1) || { echo "$out"; fail "tls-web-config block failed"; }
password=$(<"$CHECKOUT/tls/prometheus.password")
[[ -n $password ]] || fail "the recipe wrote an empty password"
hash=$(awk '/prometheus:/{print $2}' "$CHECKOUT/tls/web1/web-config.yml")
[[ $hash == \$2[aby]\$10\$* ]] || fail "web-config.yml holds '$hash', not a bcrypt hash of cost 10"
ok "SECURITY.md: CA, three server certificates with DNS and IP SANs, password and bcrypt hash"

out=$(run_block ctl "$GUIDE" deploy-tls 2>&1) || { echo "$out"; fail "deploy-tls block failed"; }
indent <<<"$out"
count=$(tail -n 1 <<<"$out")
[[ $count =~ ^[1-9][0-9]*$ ]] || fail "curl over TLS with the password printed '$count'"
for h in "${HOSTS[@]}"; do
    perms=$(in_host "$h" stat -c '%U:%G %a' /etc/conn-exporter/server.key)
    [[ $perms == "root:nogroup 640" ]] || fail "$h: server.key is $perms, want root:nogroup 640"
    url="https://$h:${PORT[$h]}/metrics"
    code=$(in_env ctl curl -s -o /dev/null -w '%{http_code}' --cacert tls/ca.crt "$url")
    [[ $code == 401 ]] || fail "$h: without the password $url answered $code, want 401"
    code=$(in_env ctl curl -s -o /dev/null -w '%{http_code}' --cacert tls/ca.crt -u "prometheus:wrong$password" "$url")
    [[ $code == 401 ]] || fail "$h: a wrong password got $code, want 401"
    code=$(in_env ctl curl -s -o /dev/null -w '%{http_code}' --cacert tls/ca.crt -u "prometheus:$password" "$url")
    [[ $code == 200 ]] || fail "$h: the right password got $code, want 200"
    plain=$(in_env ctl curl -s -w ' %{http_code}' "http://$h:${PORT[$h]}/metrics" || true)
    [[ $plain == *" 400" ]] || fail "$h: plain http:// on the TLS port answered '$plain', want 400"
    assert_contains "$plain" "https" "$h: the 400 says to use https"
done
ok "deploy --web-config-dir: TLS with basic auth on all three; keys root:nogroup 0640; 401 without or with a wrong password; plain http gets 400 'use https'"

# --- Prometheus by the guide's section 4 -----------------------------------------------
run_block ctl "$GUIDE" prometheus-setup >/dev/null 2>&1 || fail "prometheus-setup block failed"
# "Add this job at the end of prometheus.yml".
python3 "$OPS_DIR/lib/doc_blocks.py" "$GUIDE" prometheus-tls-job | in_env ctl tee -a /etc/prometheus/prometheus.yml >/dev/null
out=$(run_block ctl "$GUIDE" prometheus-tls-files 2>&1) || { echo "$out"; fail "prometheus-tls-files block failed"; }
assert_contains "$out" "SUCCESS" "promtool check config"
in_env ctl prometheus --config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path="$WORK/prom-data" \
    --web.listen-address=127.0.0.1:19091 >"$WORK/prom.log" 2>&1 &
promq() { in_env ctl curl -fsS --max-time 10 -G "$PROM/api/v1/query" --data-urlencode "query=$1"; }
all_up() {
    [[ $(promq 'count(up{job="conn-exporter"} == 1)' | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)') == 3 ]]
}
wait_until 60 "Prometheus scraping the three hosts over TLS" all_up
targets=$(in_env ctl curl -fsS "$PROM/api/v1/targets")
python3 - "$targets" <<'PY' || fail "Prometheus targets"
import json, sys
active = json.loads(sys.argv[1])["data"]["activeTargets"]
got = sorted((t["labels"]["instance"], t["labels"]["job"], t["scrapeUrl"].split(":")[0], t["health"]) for t in active)
want = [(h, "conn-exporter", "https", "up") for h in ("db1", "web1", "web2")]
assert got == want, f"targets {got}, want exactly {want}: a config copied as shipped must add none"
print("targets:", got)
PY
ok "Prometheus as the guide sets it up scrapes exactly web1, web2, db1 over TLS with basic auth"

# The marked queries must return data; the peer-network one is checked against ss.
mapfile -t queries < <(python3 "$OPS_DIR/lib/doc_blocks.py" --all "$QUERIES" query |
    python3 -c 'import json,sys; [print(" ".join(l for l in b.splitlines() if not l.lstrip().startswith("#"))) for b in json.load(sys.stdin)]')
((${#queries[@]} == 5)) || fail "docs/promql-queries.md marks ${#queries[@]} queries, want 5"
for q in "${queries[@]}"; do
    res=$(promq "$q") || fail "query failed: $q"
    n=$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]["result"]))' <<<"$res")
    ((n > 0)) || fail "query returned nothing: $q"
    log "  $n result(s): $q"
    if [[ $q == *'(::ffff:)?192'* ]]; then
        # Each exporter sees Prometheus (192.0.2.1) as an IPv4-mapped peer of its dual-stack listener.
        # The exporter closes a connection idle for 10 s, so between two 15 s scrapes there
        # may be none: wait for the next scrape's.
        mapped_peer() { ip netns exec "$P-$1" ss -Htn state established "( sport = :${PORT[$1]} )" | grep -q '\[::ffff:192.0.2.1\]'; }
        for h in "${HOSTS[@]}"; do
            wait_until 20 "$h: ss showing the IPv4-mapped peer ::ffff:192.0.2.1 on :${PORT[$h]}" mapped_peer "$h"
            python3 -c 'import json, sys
res = json.loads(sys.argv[1])["data"]["result"]
sys.exit(not any(r["metric"].get("instance") == sys.argv[2] and r["metric"].get("destination_address") == "::ffff:192.0.2.1" for r in res))' "$res" "$h" ||
                fail "$h: the peer-network query misses the IPv4-mapped peer ::ffff:192.0.2.1 that ss shows"
        done
        old=${q//'(::ffff:)?'/}
        n_old=$(promq "$old" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]["result"]))')
        ((n_old == 0)) || fail "without (::ffff:)? the query still found $n_old: the test would not see the fix"
    fi
done
ok "the 5 marked queries return data; the address regex finds the IPv4-mapped peers ss shows (the old one finds none)"

# --- re-issue a certificate in place ---------------------------------------------------
serial() { in_env ctl bash -c "openssl s_client -connect web1:9100 -servername web1 -CAfile tls/ca.crt </dev/null 2>/dev/null | openssl x509 -noout -serial"; }
before=$(serial)
pid=$(in_host web1 cat /run/conn-exporter.pid)
run_block ctl "$SEC" tls-server-cert >/dev/null 2>&1 || fail "re-issuing web1's certificate failed"
want=$(openssl x509 -in "$CHECKOUT/tls/web1/server.crt" -noout -serial)
[[ $want != "$before" ]] || fail "the re-issued certificate has the old serial"
out=$(run_block ctl "$SEC" tls-reissue 2>&1) || { echo "$out"; fail "tls-reissue block failed"; }
new_cert() { [[ $(serial) == "$want" ]]; }
wait_until 20 "web1 serving the re-issued certificate" new_cert
if [[ $(in_host web1 cat /run/conn-exporter.pid) != "$pid" ]] || ! kill -0 "$pid"; then fail "web1's exporter was restarted"; fi
perms=$(in_host web1 stat -c '%U:%G %a' /etc/conn-exporter/server.key)
[[ $perms == "root:nogroup 640" ]] || fail "re-issue changed server.key to $perms"
ok "re-issued web1's certificate in place: served ($before -> $want) without a restart"

# --- uninstall: no install options repeated ---------------------------------------------
out=$(run_block ctl "$GUIDE" uninstall 2>&1) || { echo "$out"; fail "uninstall block failed"; }
assert_contains "$out" "3 ok, 0 failed" "uninstall summary"
for h in "${HOSTS[@]}"; do
    for f in /usr/local/bin/conn-exporter /etc/default/conn-exporter /var/lib/conn-exporter/install.state \
        /run/conn-exporter.pid /etc/conn-exporter; do
        in_host "$h" test ! -e "$f" || fail "$h: uninstall left $f"
    done
    if ip netns exec "$P-$h" ss -Htln "sport = :${PORT[$h]}" | grep -q .; then fail "$h: still listening"; fi
done
ok "uninstall over ssh removed everything, web config included, without --init none"
log "all documentation checks passed"
