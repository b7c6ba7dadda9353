#!/usr/bin/env bash
# Installs what tests/drivers/node needs: Node.js and npm (Debian packages, only when missing)
# and the suite's npm packages, exactly as pinned in tests/drivers/node/package-lock.json, into
# tests/drivers/node/node_modules. Idempotent: does nothing when node, npm and the locked
# packages are present. Exits non-zero when anything cannot be installed (e.g. the registry
# is unreachable), so the driver test fails instead of skipping.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
suite=tests/drivers/node

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "drivers/node: node or npm missing; installing Debian's nodejs and npm with apt-get"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "drivers/node: apt-get not available; install Node.js (>= 18) and npm yourself" >&2
        exit 1
    fi
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        echo "drivers/node: not root and sudo is missing; cannot install nodejs and npm" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    ${as_root[@]+"${as_root[@]}"} apt-get update
    ${as_root[@]+"${as_root[@]}"} apt-get install -y --no-install-recommends nodejs npm
fi

# npm ci removes node_modules and reinstalls from the lock file; the stamp records which
# lock file the current node_modules came from, so an unchanged lock file costs nothing.
stamp="$suite/node_modules/.pgtenant-lock.sha256"
want=$(sha256sum "$suite/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "drivers/node: packages of package-lock.json present (nothing to install)"
    exit 0
fi

echo "drivers/node: installing the packages of $suite/package-lock.json with npm ci"
(cd "$suite" && npm ci --no-audit --no-fund --loglevel=error)
echo "$want" >"$stamp"
echo "drivers/node: installed"
