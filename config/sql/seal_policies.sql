-- The example schema's policies, rewritten to read the tenant through the seal
-- (config/sql/seal.sql must have run first). A forged app.current_tenant_id then sees no
-- rows and every write is rejected. The scalar subquery makes PostgreSQL evaluate the seal
-- once per statement (an InitPlan), not once per row.

DO $do$
DECLARE
    t text;
    col text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'users', 'invoices'] LOOP
        col := CASE WHEN t = 'tenants' THEN 'id' ELSE 'tenant_id' END;
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation_select ON %I', t);
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation_insert ON %I', t);
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation_update ON %I', t);
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation_delete ON %I', t);
        EXECUTE format('CREATE POLICY tenant_isolation_select ON %I FOR SELECT
                          USING (%I = (SELECT pgtenant_seal.tenant())::uuid)', t, col);
        EXECUTE format('CREATE POLICY tenant_isolation_insert ON %I FOR INSERT
                          WITH CHECK (%I = (SELECT pgtenant_seal.tenant())::uuid)', t, col);
        EXECUTE format('CREATE POLICY tenant_isolation_update ON %I FOR UPDATE
                          USING (%I = (SELECT pgtenant_seal.tenant())::uuid)
                          WITH CHECK (%I = (SELECT pgtenant_seal.tenant())::uuid)', t, col, col);
        EXECUTE format('CREATE POLICY tenant_isolation_delete ON %I FOR DELETE
                          USING (%I = (SELECT pgtenant_seal.tenant())::uuid)', t, col);
    END LOOP;
END
$do$;
