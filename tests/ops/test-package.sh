#!/usr/bin/env bash
# The Debian package as an operator meets it: built with deploy/debian/build-deb.sh
# from the release binary, checked by lintian (no error, no warning beyond the
# overrides shipped with their reasons), its man pages read with `man` and
# compared flag by flag with the binary's --help (and each subcommand's), its
# shell completions loaded by bash, zsh and fish and checked for every flag.
set -euo pipefail
TEST_NAME=package
# shellcheck source=tests/ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
require_bin
require_cmds cargo cargo-deb lintian man dpkg-deb python3 bash zsh fish
cd "$REPO"

WORK=$(mktemp -d /tmp/conn-exporter-ops-package.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# cargo deb --no-build packages target/release/conn-exporter: it must be the binary under test.
[[ $BIN -ef $REPO/target/release/conn-exporter ]] ||
    fail "the package is built from target/release/conn-exporter, not $BIN: build there or unset CONN_EXPORTER_BIN"
deb=$(deploy/debian/build-deb.sh --no-build 2>"$WORK/build.log") || { cat "$WORK/build.log"; fail "build-deb.sh"; }
[[ -f $deb ]] || { cat "$WORK/build.log"; fail "build-deb.sh printed no package path ($deb)"; }
ok "built $(basename "$deb")"

# --- lintian ------------------------------------------------------------------------------
lintian --fail-on error,warning "$deb" >"$WORK/lintian.txt" 2>&1 || {
    cat "$WORK/lintian.txt"
    fail "lintian reported errors or warnings"
}
if grep -E '^[EW]: ' "$WORK/lintian.txt"; then fail "lintian reported errors or warnings"; fi
# What the shipped overrides accept, with their reasons (N: lines), for the log.
lintian --show-overrides "$deb" 2>/dev/null | grep -E '^(O|N): ' || true
ok "lintian: no error or warning"

# --- man pages against --help --------------------------------------------------------------
dpkg-deb -x "$deb" "$WORK/root"
man_of() { MANPATH="$WORK/root/usr/share/man" MANWIDTH=1000 man --nh --nj "$1" 2>&1; }
[[ -x $WORK/root/usr/bin/conn-exporter ]] || fail "the package has no usr/bin/conn-exporter"
man_of conn-exporter >"$WORK/man.txt" || { cat "$WORK/man.txt"; fail "man conn-exporter"; }
"$WORK/root/usr/bin/conn-exporter" --help >"$WORK/help.txt"
python3 "$OPS_DIR/lib/compare_man_help.py" "$WORK/man.txt" "$WORK/help.txt" >"$WORK/cmp.txt" ||
    { cat "$WORK/cmp.txt"; fail "man conn-exporter and --help disagree"; }
ok "man conn-exporter: $(cat "$WORK/cmp.txt")"
# Each subcommand of --help has its own page (conn-exporter-<name>) with its flags.
mapfile -t subs < <(awk '/^Commands:/ { on = 1; next } on && /^  [^ ]/ { print $1 } on && /^[^ ]/ { on = 0 }' "$WORK/help.txt" | grep -vx help || true)
for sub in "${subs[@]}"; do
    man_of "conn-exporter-$sub" >"$WORK/man-$sub.txt" || { cat "$WORK/man-$sub.txt"; fail "man conn-exporter-$sub"; }
    "$WORK/root/usr/bin/conn-exporter" "$sub" --help >"$WORK/help-$sub.txt"
    python3 "$OPS_DIR/lib/compare_man_help.py" "$WORK/man-$sub.txt" "$WORK/help-$sub.txt" >"$WORK/cmp.txt" ||
        { cat "$WORK/cmp.txt"; fail "man conn-exporter-$sub and '$sub --help' disagree"; }
    ok "man conn-exporter-$sub: $(cat "$WORK/cmp.txt")"
done

# --- shell completions ------------------------------------------------------------------------
mapfile -t long_flags < <(grep -oE '^ {2,6}(-[A-Za-z], )?--[A-Za-z0-9][A-Za-z0-9._-]*' "$WORK/help.txt" | grep -oE -- '--[^ ]+$' | sort -u)
((${#long_flags[@]} >= 10)) || fail "found only ${#long_flags[@]} long flags in --help"
share=$WORK/root/usr/share
# bash: load the completion and ask it what `conn-exporter --` completes to.
bash_words=$(bash -c '
    source "$1"
    COMP_WORDS=(conn-exporter --); COMP_CWORD=1; COMP_LINE="conn-exporter --"; COMP_POINT=${#COMP_LINE}
    fn=$(complete -p conn-exporter | grep -oE -- "-F [^ ]+" | cut -d" " -f2)
    [[ -n $fn ]] || exit 1
    "$fn" conn-exporter -- conn-exporter
    printf "%s\n" "${COMPREPLY[@]}"' _ "$share/bash-completion/completions/conn-exporter") ||
    fail "the bash completion registers no function for conn-exporter"
# fish: ask fish itself.
fish_words=$(fish --no-config -c "source $share/fish/vendor_completions.d/conn-exporter.fish; complete -C 'conn-exporter --'" | cut -f1)
# zsh: the file must parse; its _arguments specs ('*--flag=[help]...') must name every flag.
zsh -n "$share/zsh/vendor-completions/_conn-exporter" || fail "zsh completion does not parse"
zsh_words=$(grep -oE "^'\*?(\([^)]*\))?-{1,2}[A-Za-z0-9][A-Za-z0-9._-]*" "$share/zsh/vendor-completions/_conn-exporter" |
    sed -E "s/^'\*?(\([^)]*\))?//")
for f in "${long_flags[@]}"; do
    grep -qxF -- "$f" <<<"$bash_words" || fail "bash completion does not offer $f"
    grep -qxF -- "$f" <<<"$fish_words" || fail "fish completion does not offer $f"
    grep -qxF -- "$f" <<<"$zsh_words" || fail "zsh completion lacks $f"
done
ok "completions: bash and fish offer, zsh names, all ${#long_flags[@]} long flags of --help"
log "all package checks passed"
