"""Shared pieces of the Python driver suites: the environment of the driver conventions
(notes/DRIVERS.md), the check runner that counts passes and failures, and the fixtures a
superuser adds to the suite's own database before the checks run.

Nothing here talks to the proxy; the suites do, each in its driver's idiom. The superuser
connection (PGT_DIRECT_DSN) only prepares fixtures and inspects what landed in the tables.
"""

import asyncio
import faulthandler
import os
import sys
import time
import traceback

HOST = os.environ["PGT_HOST"]
PORT = int(os.environ["PGT_PORT"])
DB = os.environ["PGT_DB"]
USER = os.environ["PGT_USER"]
TOKEN_A = os.environ["PGT_TOKEN_A"]
TOKEN_B = os.environ["PGT_TOKEN_B"]
TENANT_A = os.environ["PGT_TENANT_A"]
TENANT_B = os.environ["PGT_TENANT_B"]
DIRECT_DSN = os.environ["PGT_DIRECT_DSN"]
POOL_SIZE = int(os.environ.get("PGT_POOL_SIZE", "2"))

# The demo data (config/demo_data.sql).
INVOICES_A = 3
INVOICES_B = 2
USER_A = "aaaaaaaa-1111-0000-0000-000000000001"

# A check that takes longer than this is stuck: its traceback is dumped and the suite exits,
# so a hang names the check instead of running into the Rust test's deadline.
CHECK_DEADLINE_SECS = 90

# Superuser fixtures, run once per suite in the suite's own database.
#
# PostgreSQL refuses COPY FROM into a table with row-level security for a role subject to it
# ("COPY FROM not supported with row-level security", 0A000), so COPY FROM goes through a view
# with an INSTEAD OF INSERT trigger that inserts each row into invoices as the calling role:
# the rows land in invoices and the RLS WITH CHECK policy judges each of them. api_user may
# only INSERT into the view (a plain view reads as its owner, so it must not be readable).
#
# py_marker resolves to a different view in public and in py_alt: what it returns shows which
# search_path is in force.
FIXTURES_SQL = """
CREATE OR REPLACE FUNCTION public.invoices_import_row() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER AS $$
BEGIN
    INSERT INTO public.invoices (tenant_id, created_by, amount, status)
    VALUES (NEW.tenant_id, NEW.created_by, NEW.amount, NEW.status);
    RETURN NEW;
END
$$;
CREATE OR REPLACE VIEW public.invoices_import AS
    SELECT tenant_id, created_by, amount, status FROM public.invoices WHERE false;
DROP TRIGGER IF EXISTS invoices_import_row ON public.invoices_import;
CREATE TRIGGER invoices_import_row INSTEAD OF INSERT ON public.invoices_import
    FOR EACH ROW EXECUTE FUNCTION public.invoices_import_row();
REVOKE ALL ON public.invoices_import FROM api_user;
GRANT INSERT ON public.invoices_import TO api_user;

CREATE SCHEMA IF NOT EXISTS py_alt;
GRANT USAGE ON SCHEMA py_alt TO api_user;
CREATE OR REPLACE VIEW public.py_marker AS SELECT 'public'::text AS label;
CREATE OR REPLACE VIEW py_alt.py_marker AS SELECT 'alt'::text AS label;
GRANT SELECT ON public.py_marker, py_alt.py_marker TO api_user;
"""


def install_fixtures():
    import psycopg

    with psycopg.connect(DIRECT_DSN, autocommit=True) as conn:
        conn.execute(FIXTURES_SQL)


def direct_query(sql, params=None):
    """Rows of `sql` run as the superuser straight on PostgreSQL (RLS does not apply)."""
    import psycopg

    with psycopg.connect(DIRECT_DSN, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def direct_execute(sql):
    """Runs a statement without result rows as the superuser straight on PostgreSQL."""
    import psycopg

    with psycopg.connect(DIRECT_DSN, autocommit=True) as conn:
        conn.execute(sql)


def wait_until(condition, what, attempts=100, pause=0.1):
    """Polls `condition` until it is true; raises naming `what` otherwise."""
    for _ in range(attempts):
        if condition():
            return
        time.sleep(pause)
    raise AssertionError(f"timed out waiting until {what}")


def expect(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


def expect_true(condition, what):
    if not condition:
        raise AssertionError(what)


class Suite:
    """Runs named checks, prints one line per check and a final `N passed, M failed`."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = []
        # The check running now, for drivers' notice handlers to say where a notice came.
        self.current = None
        faulthandler.enable()

    def run(self, name, check):
        """Runs `check()`; an exception (assertion or driver error) fails it."""
        faulthandler.dump_traceback_later(CHECK_DEADLINE_SECS, exit=True)
        started = time.monotonic()
        print(f"[{self.name}] {name} ...", flush=True)
        self.current = name
        try:
            result = check()
            if asyncio.iscoroutine(result):
                asyncio.run(asyncio.wait_for(result, CHECK_DEADLINE_SECS - 5))
        except Exception as err:  # noqa: BLE001 - every failure is reported, none stops the suite
            self.failed.append(name)
            detail = "".join(traceback.format_exception(err)).rstrip()
            print(f"FAIL {name} ({time.monotonic() - started:.1f}s)\n{detail}", flush=True)
        else:
            self.passed += 1
            print(f"ok   {name} ({time.monotonic() - started:.1f}s)", flush=True)
        finally:
            faulthandler.cancel_dump_traceback_later()

    def finish(self):
        if self.failed:
            print(f"[{self.name}] failed checks: {', '.join(self.failed)}")
        print(f"{self.passed} passed, {len(self.failed)} failed", flush=True)
        sys.exit(1 if self.failed else 0)
