#!/usr/bin/env bash
# Installs the Python drivers of the compatibility suite (tests/drivers/python) into a venv
# under target/drivers/python-venv: psycopg 3 with its binary libpq build, and asyncpg, pinned
# in tests/drivers/python/requirements.txt. Idempotent: does nothing when the venv already holds
# exactly those requirements. Installs from PyPI only (pip); fails loudly when it cannot.
# Prints the venv's python path as its last line of output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

requirements=tests/drivers/python/requirements.txt
venv=target/drivers/python-venv
stamp="$venv/.requirements-installed"

# python3 with the venv module: from Debian's packages when missing (like scripts/install-deps.sh).
python=${PGTENANT_PYTHON:-python3}
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "drivers/python: $python with the venv module is missing and apt-get is not available" >&2
        exit 1
    fi
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        as_root=(sudo)
    fi
    echo "drivers/python: installing python3 and python3-venv with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    ${as_root[@]+"${as_root[@]}"} apt-get update >&2
    ${as_root[@]+"${as_root[@]}"} apt-get install -y --no-install-recommends python3 python3-venv >&2
    python=python3
fi

# Two suites may call this at once (cargo runs tests in parallel): one installs, the other waits.
mkdir -p "$(dirname "$venv")"
exec 9>"$(dirname "$venv")/python.lock"
flock 9

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$requirements" "$stamp"; then
    echo "drivers/python: $venv is up to date (nothing to install)" >&2
    echo "$PWD/$venv/bin/python"
    exit 0
fi

echo "drivers/python: creating $venv and installing $(tr '\n' ' ' <"$requirements")" >&2
rm -rf "$venv"
if ! "$python" -m venv "$venv" >&2; then
    echo "drivers/python: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --only-binary=:all: -r "$requirements" >&2
cp "$requirements" "$stamp"
echo "$PWD/$venv/bin/python"
