-- The stock pgbench tables (pgbench -i, no RLS), readable and writable by the pooled role.
\set ON_ERROR_STOP on
GRANT USAGE ON SCHEMA public TO api_user;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON pgbench_branches, pgbench_tellers, pgbench_accounts, pgbench_history TO api_user;
