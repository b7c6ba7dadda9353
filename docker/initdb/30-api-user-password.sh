#!/bin/bash
# Runs once, in the postgres image's docker-entrypoint-initdb.d after config/schema.sql (10-)
# and config/demo_data.sql (20-): gives api_user, which the schema creates without a password,
# the password pgtenant logs in with (API_USER_PASSWORD, the same value as pgtenant's
# PGTENANT_APP_PASSWORD). The value is passed as a psql variable, never spliced into SQL text.
set -euo pipefail
: "${API_USER_PASSWORD:?API_USER_PASSWORD must be set}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v api_user_password="$API_USER_PASSWORD" <<'SQL'
ALTER ROLE api_user PASSWORD :'api_user_password';
SQL
