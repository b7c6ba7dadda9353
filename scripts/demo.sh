#!/usr/bin/env bash
# Installs PostgreSQL if needed, then runs `pgtenant demo` (a throwaway PostgreSQL with the
# example schema, the proxy in front of it, and two tenants that cannot see each other).
# Extra arguments go to `pgtenant demo`. Works from any directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh
cargo run --release -- demo "$@"
