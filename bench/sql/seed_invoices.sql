-- The seed guide's benchmark table: invoices over many tenants (run with psql -v rows=N
-- -v tenants=M as a superuser in an empty database). Rows of one tenant are spread over the
-- whole table, as rows arriving over time from all tenants would be; tenant_id comes first
-- in the index, RLS is enabled and forced with one policy per command.
\set ON_ERROR_STOP on

CREATE FUNCTION bench_tenant(n integer) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT
    RETURN ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid;

CREATE TABLE invoices (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL,
    amount      numeric(12, 2) NOT NULL,
    status      text NOT NULL DEFAULT 'draft',
    description text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE invoices DROP CONSTRAINT invoices_pkey;

INSERT INTO invoices (tenant_id, amount, status, description, created_at)
SELECT bench_tenant(1 + i % :tenants),
       (i % 100000) / 100.0,
       (ARRAY['draft', 'sent', 'paid', 'void'])[1 + i % 4],
       (ARRAY['cloud', 'hosting', 'consulting', 'support', 'licence', 'training', 'hardware'])[1 + i % 7]
           || ' ' ||
       (ARRAY['cloud', 'hosting', 'consulting', 'support', 'licence', 'training', 'hardware'])[1 + (i / 7) % 7]
           || ' services, invoice ' || i || ' for the period ending ' || to_char(date '2024-01-01' + i % 366, 'YYYY-MM-DD'),
       timestamptz '2024-01-01' + (i % 31536000) * interval '1 second'
FROM generate_series(1, :rows) i;

ALTER TABLE invoices ADD PRIMARY KEY (id);
CREATE INDEX idx_invoices_tenant_created_at ON invoices (tenant_id, created_at DESC);

ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation_select ON invoices FOR SELECT
    USING (tenant_id = current_setting('app.current_tenant_id')::uuid);
CREATE POLICY tenant_isolation_insert ON invoices FOR INSERT
    WITH CHECK (tenant_id = current_setting('app.current_tenant_id')::uuid);
CREATE POLICY tenant_isolation_update ON invoices FOR UPDATE
    USING (tenant_id = current_setting('app.current_tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('app.current_tenant_id')::uuid);
CREATE POLICY tenant_isolation_delete ON invoices FOR DELETE
    USING (tenant_id = current_setting('app.current_tenant_id')::uuid);

GRANT USAGE ON SCHEMA public TO api_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON invoices TO api_user;

VACUUM ANALYZE invoices;
