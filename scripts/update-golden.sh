#!/usr/bin/env bash
# Rewrites tests/golden/* (text, OpenMetrics, protobuf and its readable form) from the
# real binary's scrape of tests/fixtures/proc, then
# shows the diff for review.
set -euo pipefail
cd "$(dirname "$0")/.."
UPDATE_GOLDEN=1 cargo test --quiet --test integration golden::fixture_scrape_matches_golden_and_passes_promtool
git --no-pager diff --stat -- tests/golden
