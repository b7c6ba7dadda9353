#!/usr/bin/env bash
# Installs PostgreSQL if needed, then runs every test target. Works from any directory.
# PGTENANT_TEST_THREADS overrides the number of tests run at once within a test binary
# (default: libtest's, the number of cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh

test_args=()
if [ -n "${PGTENANT_TEST_THREADS:-}" ]; then
    test_args+=(--test-threads "$PGTENANT_TEST_THREADS")
fi
# cargo prints one "test result" line per test binary (the last one may be a binary with no
# tests); the total is printed last so the closing line reflects the whole run.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-targets -- ${test_args[@]+"${test_args[@]}"} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
