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
cargo test --all-targets -- ${test_args[@]+"${test_args[@]}"}
