-- pgtenant tenant seal: row-level security that does not depend on the proxy's guard.
--
-- Threat model. With a shared pool role, the tenant lives in the ordinary custom setting
-- app.current_tenant_id, which any SQL in the session can change (SET, set_config, dynamic
-- SQL in a DO block or a function). pgtenant's guard refuses the forms it can see; the seal
-- makes the database itself reject a forged tenant:
--   * When pgtenant opens a server connection it registers a fresh random secret for that
--     backend with pgtenant_seal.register(). Registration is accepted once per backend, so
--     nothing the client later runs on that connection can replace the secret, and the
--     secret is kept in a table the pool role cannot read.
--   * In every transaction pgtenant sets app.current_tenant_id and
--     app.current_tenant_id_seal = hex(HMAC-SHA256(secret, tenant)), both as bound parameters.
--   * Policies read the tenant through pgtenant_seal.tenant(), which returns it only when the
--     seal verifies for this backend, and NULL otherwise: a forged tenant id sees no rows and
--     every write is rejected.
-- What it does not protect against: a client that learns another tenant's seal for the same
-- backend (pgtenant never sends one tenant's seal to another client), and anyone with the
-- pool role's password connecting directly (keep it secret; audit with `pgtenant audit`).
--
-- The setting names are app.current_tenant_id and app.current_tenant_id_seal (pgtenant's
-- tenant_setting and tenant_setting + "_seal"); change them here if you changed
-- tenant_setting. Runs as a superuser (or the schema owner) on PostgreSQL 13+, also on
-- managed services: it needs only the pgcrypto extension. Replace api_user with your pool
-- role. Idempotent.

CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE SCHEMA IF NOT EXISTS pgtenant_seal;
REVOKE ALL ON SCHEMA pgtenant_seal FROM PUBLIC;

-- One secret per live backend, keyed by process id and start time (a pid is reused).
CREATE TABLE IF NOT EXISTS pgtenant_seal.backend_secret (
    pid           integer     NOT NULL,
    backend_start timestamptz NOT NULL,
    secret        bytea       NOT NULL,
    PRIMARY KEY (pid)
);
REVOKE ALL ON pgtenant_seal.backend_secret FROM PUBLIC;

-- Called by pgtenant once per new server connection, with a random secret as a bound
-- parameter. Refuses a second registration for the same backend.
CREATE OR REPLACE FUNCTION pgtenant_seal.register(p_secret bytea)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_start timestamptz;
BEGIN
    IF length(p_secret) < 16 THEN
        RAISE EXCEPTION 'pgtenant seal secret too short' USING ERRCODE = '22023';
    END IF;
    SELECT a.backend_start INTO v_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid();
    -- A row left by an earlier backend with the same pid is stale.
    DELETE FROM pgtenant_seal.backend_secret s
     WHERE s.pid = pg_backend_pid() AND s.backend_start IS DISTINCT FROM v_start;
    BEGIN
        INSERT INTO pgtenant_seal.backend_secret (pid, backend_start, secret)
        VALUES (pg_backend_pid(), v_start, p_secret);
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'pgtenant seal already registered for this connection'
            USING ERRCODE = '42501';
    END;
END
$fn$;

-- The sealed tenant of the current transaction, or NULL when the seal does not verify.
-- STABLE and SECURITY DEFINER; policies should call it as a scalar subquery,
-- (SELECT pgtenant_seal.tenant()), so it runs once per statement, not once per row.
CREATE OR REPLACE FUNCTION pgtenant_seal.tenant()
RETURNS text
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_tenant text := current_setting('app.current_tenant_id', true);
    v_seal   text := current_setting('app.current_tenant_id_seal', true);
    v_secret bytea;
BEGIN
    IF v_tenant IS NULL OR v_tenant = '' OR v_seal IS NULL OR v_seal = '' THEN
        RETURN NULL;
    END IF;
    -- pgtenant registers every connection it opens before any client uses it, replacing
    -- a stale row of an earlier backend with the same pid, so the pid identifies the secret.
    SELECT s.secret INTO v_secret
      FROM pgtenant_seal.backend_secret s
     WHERE s.pid = pg_backend_pid();
    IF v_secret IS NULL THEN
        RETURN NULL;
    END IF;
    IF encode(public.hmac(convert_to(v_tenant, 'UTF8'), v_secret, 'sha256'), 'hex') = v_seal THEN
        RETURN v_tenant;
    END IF;
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION pgtenant_seal.register(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtenant_seal.tenant() FROM PUBLIC;
GRANT USAGE ON SCHEMA pgtenant_seal TO api_user;
GRANT EXECUTE ON FUNCTION pgtenant_seal.register(bytea) TO api_user;
GRANT EXECUTE ON FUNCTION pgtenant_seal.tenant() TO api_user;
