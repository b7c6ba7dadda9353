-- The pgbench tables with a tenant column and Row-Level Security, as the seed guide builds a
-- multi-tenant schema: tenant_id NOT NULL and first in every index, ENABLE + FORCE ROW LEVEL
-- SECURITY, one policy per command reading app.current_tenant_id, a non-superuser role.
--
-- Every tenant owns a complete pgbench world of its own: 10 branches, 100 tellers (as a
-- scale-10 pgbench has) and :accounts accounts, with ids counting from 1 in every tenant.
-- So the very same script runs for any tenant, and `WHERE aid = :aid` finds the current
-- tenant's account only because RLS adds `tenant_id = current_setting(...)::uuid` (matched
-- by the (tenant_id, aid) primary key). With :tenants = 10 and :accounts = 100000 the
-- tables hold as many rows as a scale-10 pgbench (1,000,000 accounts).
--
-- Run as a superuser in an empty database with psql -v tenants=N -v accounts=M.
\set ON_ERROR_STOP on

BEGIN;

CREATE FUNCTION bench_tenant(n integer) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT
    RETURN ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid;

CREATE TABLE pgbench_branches (
    tenant_id uuid NOT NULL,
    bid       integer NOT NULL,
    bbalance  integer NOT NULL,
    filler    char(88)
) WITH (fillfactor = 100);

CREATE TABLE pgbench_tellers (
    tenant_id uuid NOT NULL,
    tid       integer NOT NULL,
    bid       integer NOT NULL,
    tbalance  integer NOT NULL,
    filler    char(84)
) WITH (fillfactor = 100);

CREATE TABLE pgbench_accounts (
    tenant_id uuid NOT NULL,
    aid       integer NOT NULL,
    bid       integer NOT NULL,
    abalance  integer NOT NULL,
    filler    char(84)
) WITH (fillfactor = 100);

-- The TPC-B-like script inserts without naming the tenant: the default takes it from the
-- transaction's setting, and the INSERT policy checks it.
CREATE TABLE pgbench_history (
    tenant_id uuid NOT NULL DEFAULT current_setting('app.current_tenant_id')::uuid,
    tid       integer,
    bid       integer,
    aid       integer,
    delta     integer,
    mtime     timestamp,
    filler    char(22)
);

INSERT INTO pgbench_branches
SELECT bench_tenant(t), b, 0, NULL
FROM generate_series(1, :tenants) t, generate_series(1, 10) b;

INSERT INTO pgbench_tellers
SELECT bench_tenant(t), x, (x - 1) / 10 + 1, 0, NULL
FROM generate_series(1, :tenants) t, generate_series(1, 100) x;

INSERT INTO pgbench_accounts
SELECT bench_tenant(t), a, (a - 1) * 10 / :accounts + 1, 0, ''
FROM generate_series(1, :tenants) t, generate_series(1, :accounts) a;

ALTER TABLE pgbench_branches ADD PRIMARY KEY (tenant_id, bid);
ALTER TABLE pgbench_tellers ADD PRIMARY KEY (tenant_id, tid);
ALTER TABLE pgbench_accounts ADD PRIMARY KEY (tenant_id, aid);

DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['pgbench_branches', 'pgbench_tellers', 'pgbench_accounts',
                               'pgbench_history'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', tbl);
        EXECUTE format('CREATE POLICY tenant_isolation_select ON %I FOR SELECT '
                       'USING (tenant_id = current_setting(''app.current_tenant_id'')::uuid)', tbl);
        EXECUTE format('CREATE POLICY tenant_isolation_insert ON %I FOR INSERT '
                       'WITH CHECK (tenant_id = current_setting(''app.current_tenant_id'')::uuid)', tbl);
        EXECUTE format('CREATE POLICY tenant_isolation_update ON %I FOR UPDATE '
                       'USING (tenant_id = current_setting(''app.current_tenant_id'')::uuid) '
                       'WITH CHECK (tenant_id = current_setting(''app.current_tenant_id'')::uuid)', tbl);
        EXECUTE format('CREATE POLICY tenant_isolation_delete ON %I FOR DELETE '
                       'USING (tenant_id = current_setting(''app.current_tenant_id'')::uuid)', tbl);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO api_user;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON pgbench_branches, pgbench_tellers, pgbench_accounts, pgbench_history TO api_user;

COMMIT;

VACUUM ANALYZE;
