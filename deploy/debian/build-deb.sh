#!/usr/bin/env bash
# Builds the Debian package: writes the man pages and shell completions from the
# flag definitions (examples/generate-assets.rs) into target/assets, then runs
# cargo deb, which builds the release binary unless given --no-build. Prints the
# path of the .deb on its last line.
#
#   deploy/debian/build-deb.sh               # release build + package
#   deploy/debian/build-deb.sh --no-build    # package target/release/conn-exporter as is
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

rm -rf target/assets
cargo run --locked --quiet --example generate-assets -- target/assets >/dev/null
# Debian policy: man pages compressed with gzip -9, no timestamp (reproducible).
gzip -9n target/assets/man/*.1
cargo deb --locked "$@" | tail -n 1
