-- pgtenant example schema: three tables isolated per tenant by Row-Level Security.
--
-- Run as a superuser in an empty database. The tables are owned by that superuser; the
-- application connects as api_user, which can read and write rows but never bypass RLS,
-- own a table or create objects. Every policy reads the tenant from the transaction-scoped
-- setting app.current_tenant_id, which the proxy sets with set_config(..., true) (SET LOCAL)
-- at the start of every transaction. Outside such a transaction the setting is either
-- unknown or '' and every policy raises an error: the schema fails closed.
--
-- api_user's password is not set here: run ALTER ROLE api_user PASSWORD '...' yourself.

BEGIN;

CREATE TABLE tenants (
    id         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name       TEXT NOT NULL,
    slug       TEXT NOT NULL UNIQUE,
    plan       TEXT NOT NULL DEFAULT 'starter',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email      TEXT NOT NULL,
    role       TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member', 'viewer')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email),
    -- Lets invoices reference a user of the same tenant only (see below).
    UNIQUE (tenant_id, id)
);

CREATE TABLE invoices (
    id         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_by UUID,
    amount     NUMERIC(12, 2) NOT NULL,
    status     TEXT NOT NULL DEFAULT 'draft',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Foreign-key checks bypass RLS; keying on (tenant_id, created_by) stops a tenant from
    -- pointing at, or probing for, another tenant's user.
    -- Deleting a user who issued invoices is refused; deleting the tenant removes both.
    FOREIGN KEY (tenant_id, created_by) REFERENCES users (tenant_id, id)
);

-- RLS filters by tenant_id first, so every secondary index leads with it.
-- users: UNIQUE (tenant_id, email) and UNIQUE (tenant_id, id) above are those indexes.
CREATE INDEX idx_invoices_tenant_created_at ON invoices (tenant_id, created_at DESC);
CREATE INDEX idx_invoices_tenant_created_by ON invoices (tenant_id, created_by);

-- FORCE: the owner is subject to the policies too (a superuser still is not).
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoices FORCE ROW LEVEL SECURITY;

-- One policy per command. current_setting() without missing_ok raises an error when the
-- setting was never defined, and ''::uuid raises one after a SET LOCAL expired.

-- A tenant sees and changes only its own row.
CREATE POLICY tenant_isolation_select ON tenants FOR SELECT
    USING (id = current_setting('app.current_tenant_id')::uuid);
CREATE POLICY tenant_isolation_insert ON tenants FOR INSERT
    WITH CHECK (id = current_setting('app.current_tenant_id')::uuid);
CREATE POLICY tenant_isolation_update ON tenants FOR UPDATE
    USING (id = current_setting('app.current_tenant_id')::uuid)
    WITH CHECK (id = current_setting('app.current_tenant_id')::uuid);
CREATE POLICY tenant_isolation_delete ON tenants FOR DELETE
    USING (id = current_setting('app.current_tenant_id')::uuid);

CREATE POLICY tenant_isolation_select ON users FOR SELECT
    USING (tenant_id = current_setting('app.current_tenant_id')::uuid);
CREATE POLICY tenant_isolation_insert ON users FOR INSERT
    WITH CHECK (tenant_id = current_setting('app.current_tenant_id')::uuid);
CREATE POLICY tenant_isolation_update ON users FOR UPDATE
    USING (tenant_id = current_setting('app.current_tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('app.current_tenant_id')::uuid);
CREATE POLICY tenant_isolation_delete ON users FOR DELETE
    USING (tenant_id = current_setting('app.current_tenant_id')::uuid);

CREATE POLICY tenant_isolation_select ON invoices FOR SELECT
    USING (tenant_id = current_setting('app.current_tenant_id')::uuid);
CREATE POLICY tenant_isolation_insert ON invoices FOR INSERT
    WITH CHECK (tenant_id = current_setting('app.current_tenant_id')::uuid);
CREATE POLICY tenant_isolation_update ON invoices FOR UPDATE
    USING (tenant_id = current_setting('app.current_tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('app.current_tenant_id')::uuid);
CREATE POLICY tenant_isolation_delete ON invoices FOR DELETE
    USING (tenant_id = current_setting('app.current_tenant_id')::uuid);

-- The application role. Roles are cluster-wide, so it may exist already (another database
-- of the same cluster); either way it ends up with exactly these attributes.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'api_user') THEN
        CREATE ROLE api_user;
    END IF;
END
$$;
ALTER ROLE api_user LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION INHERIT;

-- Nobody but the owner creates objects in public (the default before PostgreSQL 15 let anyone).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO api_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, users, invoices TO api_user;

-- No temporary tables for the application: they have no RLS and outlive the transaction on a
-- pooled server connection, where the next tenant's unqualified names would find them first.
-- (pgtenant refuses the statements that create them; this also covers dynamic SQL.)
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END
$$;

COMMIT;
