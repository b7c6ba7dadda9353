-- pgbench -S for the RLS tables, the seed's way: the application opens a transaction and sets
-- the tenant itself (four round trips). @TENANT@ is replaced by bench/run.
\set aid random(1, 100000)
BEGIN;
SET LOCAL app.current_tenant_id = '@TENANT@';
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
COMMIT;
