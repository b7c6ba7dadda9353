-- pgbench -S for the RLS tables, as the application writes it behind pgtenant: the bare
-- statement; pgtenant sets the tenant, RLS picks the tenant's row.
\set aid random(1, 100000)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
