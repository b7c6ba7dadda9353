#!/bin/bash
# One-shot client of docker-compose.yml: mints a token for each demo tenant with
# `pgtenant token` (signed with the compose configuration's demo secret), then counts the
# invoices each tenant sees through pgtenant with a bare SELECT (no WHERE tenant_id): RLS does
# the filtering. Exits non-zero unless Acme sees its 3 invoices and Globex its 2
# (config/demo_data.sql).
set -euo pipefail
config="${PGTENANT_CONFIG:-/etc/pgtenant/pgtenant.toml}"
host="${PGTENANT_HOST:-pgtenant}"
port="${PGTENANT_PORT:-6432}"

status=0
check() {
    local name="$1" tenant="$2" expected="$3" token count
    token="$(pgtenant token --config "$config" --tenant "$tenant" --ttl 300)"
    # The token is the password; psql reads it from PGPASSWORD, so it is not on a command line.
    count="$(PGPASSWORD="$token" psql -X -A -t -v ON_ERROR_STOP=1 \
        "host=$host port=$port dbname=app user=$name sslmode=disable" \
        -c 'SELECT count(*) FROM invoices')"
    echo "$name (tenant $tenant) sees $count invoices (expected $expected)"
    if [ "$count" != "$expected" ]; then
        status=1
    fi
}

check acme aaaaaaaa-0000-0000-0000-000000000001 3
check globex bbbbbbbb-0000-0000-0000-000000000002 2
exit "$status"
