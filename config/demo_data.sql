-- Demo rows for config/schema.sql: two tenants, one user and a few invoices each.
-- Run as a superuser (superusers bypass RLS), after the schema.

BEGIN;

INSERT INTO tenants (id, name, slug, plan) VALUES
    ('aaaaaaaa-0000-0000-0000-000000000001', 'Acme Corp', 'acme', 'business'),
    ('bbbbbbbb-0000-0000-0000-000000000002', 'Globex Inc', 'globex', 'starter');

INSERT INTO users (id, tenant_id, email, role) VALUES
    ('aaaaaaaa-1111-0000-0000-000000000001', 'aaaaaaaa-0000-0000-0000-000000000001',
     'wile.e@acme.example', 'admin'),
    ('bbbbbbbb-1111-0000-0000-000000000002', 'bbbbbbbb-0000-0000-0000-000000000002',
     'hank@globex.example', 'admin');

-- Acme: 3 invoices totalling 1750.00. Globex: 2 invoices totalling 9900.00.
INSERT INTO invoices (tenant_id, created_by, amount, status) VALUES
    ('aaaaaaaa-0000-0000-0000-000000000001', 'aaaaaaaa-1111-0000-0000-000000000001', 500.00, 'paid'),
    ('aaaaaaaa-0000-0000-0000-000000000001', 'aaaaaaaa-1111-0000-0000-000000000001', 750.00, 'sent'),
    ('aaaaaaaa-0000-0000-0000-000000000001', 'aaaaaaaa-1111-0000-0000-000000000001', 500.00, 'draft'),
    ('bbbbbbbb-0000-0000-0000-000000000002', 'bbbbbbbb-1111-0000-0000-000000000002', 4900.00, 'paid'),
    ('bbbbbbbb-0000-0000-0000-000000000002', 'bbbbbbbb-1111-0000-0000-000000000002', 5000.00, 'sent');

COMMIT;
