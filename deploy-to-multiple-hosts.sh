#!/usr/bin/env bash
# Kept at the repository root where the specification put it; the real script is
# deploy/deploy-to-multiple-hosts.sh. Hosts come from arguments or --hosts-file:
# there is nothing to edit here.
set -euo pipefail
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/deploy/deploy-to-multiple-hosts.sh" "$@"
