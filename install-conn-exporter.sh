#!/usr/bin/env bash
# Kept at the repository root so the specification's 'sudo ./install-conn-exporter.sh'
# keeps working; the real script is deploy/install-conn-exporter.sh.
set -euo pipefail
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/deploy/install-conn-exporter.sh" "$@"
