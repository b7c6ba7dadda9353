"""psycopg 3 through pgtenant, in psycopg's own idiom: autocommit and transaction blocks,
server-side prepared statements (prepare=True, prepare_threshold=0) reused across transactions
and servers, pipeline mode, COPY in and out (text, CSV, binary), cancel from another thread,
and session settings that follow their connection and no other.

The proxy pools two servers (PGT_POOL_SIZE). Where a check must run on both of them, it holds
one server with another connection's open transaction, so the next transaction has to use the
other one (`on_two_servers`).
"""

import io
import threading
import time
import uuid
from decimal import Decimal

import psycopg
from psycopg import errors, sql
from psycopg.pq import TransactionStatus

from common import (
    DB,
    HOST,
    INVOICES_A,
    INVOICES_B,
    PORT,
    POOL_SIZE,
    TENANT_A,
    TENANT_B,
    TOKEN_A,
    TOKEN_B,
    USER,
    USER_A,
    Suite,
    direct_query,
    expect,
    expect_true,
    install_fixtures,
    wait_until,
)

CURRENT_TENANT = "SELECT current_setting('app.current_tenant_id')"
BACKEND_PID = "SELECT pg_backend_pid()"
# The demo rows (config/demo_data.sql) among the tenant's invoices; checks add 'py-...' ones.
COUNT_DEMO_ROWS = "SELECT count(*) FROM invoices WHERE status IN ('paid', 'sent', 'draft')"
# Rows per large COPY: about 4 MB of text in, a few MB out.
COPY_ROWS = 60_000
# Longer than any check may wait for a cancel to land.
SLEEP_SECS = 10
# A cancelled query must end well before its sleep would have.
CANCEL_DEADLINE_SECS = 5


# Notices (severity, message, check) clients received; PostgreSQL sends none for what the
# checks do, so every one is something the proxy let through from its own statements.
NOTICES = []
SUITE = Suite("psycopg")


def connect(token=TOKEN_A, autocommit=True, **kwargs):
    conn = psycopg.connect(
        host=HOST,
        port=PORT,
        dbname=DB,
        user=USER,
        password=token,
        connect_timeout=30,
        autocommit=autocommit,
        **kwargs,
    )
    conn.add_notice_handler(
        lambda diag: NOTICES.append((diag.severity, diag.message_primary, SUITE.current))
    )
    return conn


def scalar(conn, query, params=None, **kwargs):
    return conn.execute(query, params, **kwargs).fetchone()[0]


def hold_server(token=TOKEN_B):
    """A connection keeping one pooled server busy with an open transaction; its pid."""
    holder = connect(token, autocommit=False)
    return holder, scalar(holder, BACKEND_PID)


def on_two_servers(work):
    """Calls `work()` (which returns the backend pid it ran on) twice, the second time with
    the first call's server held by another client, so the calls run on different servers.
    Returns both results' pids."""
    if POOL_SIZE != 2:
        raise AssertionError(f"on_two_servers needs a pool of 2, not {POOL_SIZE}")
    holder1, held1 = hold_server()
    try:
        first = work()
        expect_true(first != held1, f"work ran on the held server {held1}")
        holder2, held2 = hold_server()
        try:
            expect(held2, first, "the second holder's server (the only free one)")
            holder1.rollback()
            second = work()
        finally:
            # Rolled back first: a client vanishing inside a transaction gets its server closed.
            holder2.rollback()
            holder2.close()
    finally:
        holder1.close()
    expect_true(first != second, f"both calls ran on server {first}")
    return first, second


def invoice_count(status, tenant):
    """Rows with `status` of `tenant`, counted by the superuser (no RLS)."""
    return direct_query(
        "SELECT count(*) FROM invoices WHERE status = %s AND tenant_id = %s",
        (status, tenant),
    )[0][0]


def wait_for_active(marker, count=1):
    """Waits until `count` queries containing `marker` are running on PostgreSQL."""
    wait_until(
        lambda: direct_query(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{marker}%",),
        )[0][0]
        >= count,
        f"{count} query(ies) {marker!r} run",
    )


def cancel_when_running(conn, marker, cancel):
    """In a thread: waits until `marker` runs, then calls `cancel(conn)`."""

    def target():
        wait_for_active(marker)
        cancel(conn)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


# --- tenant isolation, autocommit, transactions -------------------------------------------


def check_isolation():
    with connect(TOKEN_A) as acme, connect(TOKEN_B) as globex:
        expect(scalar(acme, "SELECT count(*) FROM invoices"), INVOICES_A, "Acme's invoices")
        expect(scalar(globex, "SELECT count(*) FROM invoices"), INVOICES_B, "Globex's invoices")
        expect(scalar(acme, CURRENT_TENANT), TENANT_A, "Acme's tenant setting")
        expect(scalar(globex, CURRENT_TENANT), TENANT_B, "Globex's tenant setting")
        tenants = acme.execute("SELECT DISTINCT tenant_id::text FROM invoices").fetchall()
        expect(tenants, [(TENANT_A,)], "tenants of the invoices Acme sees")
        expect(
            scalar(globex, "SELECT count(*) FROM tenants WHERE slug = 'acme'"),
            0,
            "Acme's tenant row seen by Globex",
        )


def check_autocommit_statements_interleaved():
    with connect(TOKEN_A) as acme, connect(TOKEN_B) as globex:
        xids = set()
        for i in range(20):
            conn, tenant = (acme, TENANT_A) if i % 2 == 0 else (globex, TENANT_B)
            expect(scalar(conn, CURRENT_TENANT), tenant, f"tenant of statement {i}")
            xids.add(scalar(conn, "SELECT pg_current_xact_id()::text"))
        expect(len(xids), 20, "distinct transactions of 20 autocommit statements")


def check_transaction_commit():
    with connect(TOKEN_A) as acme, connect(TOKEN_B) as globex:
        with acme.transaction():
            acme.execute(
                "INSERT INTO invoices (tenant_id, amount, status) VALUES (%s, 10, 'py-commit')",
                (TENANT_A,),
            )
            expect(scalar(acme, CURRENT_TENANT), TENANT_A, "tenant inside the transaction")
            expect(
                scalar(acme, "SELECT count(*) FROM invoices WHERE status = 'py-commit'"),
                1,
                "own insert inside the transaction",
            )
        expect(invoice_count("py-commit", TENANT_A), 1, "committed row")
        expect(
            scalar(globex, "SELECT count(*) FROM invoices WHERE status = 'py-commit'"),
            0,
            "Acme's committed row seen by Globex",
        )


def check_transaction_rollback():
    class Undo(Exception):
        pass

    with connect(TOKEN_A) as acme:
        try:
            with acme.transaction():
                acme.execute(
                    "INSERT INTO invoices (tenant_id, amount, status) "
                    "VALUES (%s, 10, 'py-rollback')",
                    (TENANT_A,),
                )
                raise Undo()
        except Undo:
            pass
        expect(invoice_count("py-rollback", TENANT_A), 0, "rolled-back row")
        expect(scalar(acme, CURRENT_TENANT), TENANT_A, "tenant after the rollback")


def check_implicit_transactions():
    """autocommit=False: psycopg opens a transaction at the first statement; each commit() or
    rollback() ends it and the next statement starts another, again with the tenant."""
    with connect(TOKEN_A, autocommit=False) as acme:
        xids = set()
        for i in range(6):
            expect(scalar(acme, CURRENT_TENANT), TENANT_A, f"tenant in transaction {i}")
            expect(acme.info.transaction_status, TransactionStatus.INTRANS, "status")
            acme.execute(
                "INSERT INTO invoices (tenant_id, amount, status) VALUES (%s, 1, %s)",
                (TENANT_A, f"py-implicit-{i % 2}"),
            )
            xids.add(scalar(acme, "SELECT pg_current_xact_id()::text"))
            if i % 2 == 0:
                acme.commit()
            else:
                acme.rollback()
        expect(len(xids), 6, "distinct transactions")
        expect(invoice_count("py-implicit-0", TENANT_A), 3, "committed rows")
        expect(invoice_count("py-implicit-1", TENANT_A), 0, "rolled-back rows")


def check_failed_transaction():
    with connect(TOKEN_A, autocommit=False) as acme:
        try:
            acme.execute("SELECT 1 / 0")
            raise AssertionError("1 / 0 succeeded")
        except errors.DivisionByZero:
            pass
        try:
            acme.execute("SELECT 1")
            raise AssertionError("a statement ran in a failed transaction")
        except errors.InFailedSqlTransaction:
            pass
        acme.rollback()
        expect(scalar(acme, CURRENT_TENANT), TENANT_A, "tenant after rolling back")


def check_rls_refuses_other_tenant_insert():
    with connect(TOKEN_A) as acme:
        try:
            acme.execute(
                "INSERT INTO invoices (tenant_id, amount, status) VALUES (%s, 1, 'py-forged')",
                (TENANT_B,),
            )
            raise AssertionError("inserting a Globex row as Acme succeeded")
        except errors.InsufficientPrivilege as err:
            expect(err.sqlstate, "42501", "SQLSTATE")
            expect_true("row-level security" in str(err), f"not an RLS error: {err}")
        expect(invoice_count("py-forged", TENANT_B), 0, "forged rows")


def check_isolation_level_transaction():
    with connect(TOKEN_A) as acme:
        acme.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        acme.read_only = True
        with acme.transaction():
            expect(scalar(acme, "SHOW transaction_isolation"), "serializable", "isolation")
            expect(scalar(acme, "SHOW transaction_read_only"), "on", "read only")
            expect(scalar(acme, CURRENT_TENANT), TENANT_A, "tenant")
            expect(scalar(acme, COUNT_DEMO_ROWS), INVOICES_A, "invoices")


# --- prepared statements --------------------------------------------------------------------

# Counts demo rows only (the checks add rows with statuses 'py-...').
PREPARED_QUERY = (
    "SELECT count(*), current_setting('app.current_tenant_id'), pg_backend_pid() "
    "FROM invoices WHERE amount >= %s AND status <> %s AND status IN ('paid', 'sent', 'draft')"
)


def prepared_names(conn):
    # psycopg's own bookkeeping of what it prepared (psycopg._preparing.PrepareManager).
    return list(conn._prepared._names.values())


def check_prepare_true_across_transactions_and_servers():
    with connect(TOKEN_A) as acme:
        pids = set()

        def run():
            with acme.transaction():
                count, tenant, pid = acme.execute(
                    PREPARED_QUERY, (Decimal("0"), "none"), prepare=True
                ).fetchone()
            expect(count, INVOICES_A, "prepared count")
            expect(tenant, TENANT_A, "prepared tenant")
            pids.add(pid)
            return pid

        for _ in range(10):
            run()
        on_two_servers(run)
        for _ in range(10):
            run()
        expect(len(prepared_names(acme)), 1, "statements psycopg prepared")
        expect_true(len(pids) >= 2, f"ran on servers {pids}")


def check_prepare_threshold_zero_concurrent():
    """4 connections of two tenants share one statement text over a pool of 2 servers."""
    failures = []

    def worker(token, tenant, expected):
        try:
            with connect(token, prepare_threshold=0) as conn:
                for i in range(25):
                    if i % 2:
                        with conn.transaction():
                            row = conn.execute(PREPARED_QUERY, (Decimal("0"), "none")).fetchone()
                    else:
                        row = conn.execute(PREPARED_QUERY, (Decimal("0"), "none")).fetchone()
                    expect(row[:2], (expected, tenant), f"row {i}")
                expect(len(prepared_names(conn)), 1, "statements psycopg prepared")
        except Exception as err:  # noqa: BLE001 - collected and reported below
            failures.append(f"{tenant}: {err!r}")

    threads = [
        threading.Thread(target=worker, args=args)
        for args in [(TOKEN_A, TENANT_A, INVOICES_A), (TOKEN_B, TENANT_B, INVOICES_B)] * 2
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expect(failures, [], "worker failures")


def check_prepared_survive_rollback_deallocate_all():
    """psycopg answers a ROLLBACK by sending DEALLOCATE ALL and re-preparing later."""
    with connect(TOKEN_A, prepare_threshold=0) as acme:
        for round_ in range(3):
            with acme.transaction(force_rollback=True):
                row = acme.execute(PREPARED_QUERY, (Decimal("600"), "none")).fetchone()
                expect(row[:2], (1, TENANT_A), f"row in round {round_}")
            expect(prepared_names(acme), [], "psycopg's statements after ROLLBACK")
            row = acme.execute(PREPARED_QUERY, (Decimal("0"), "none")).fetchone()
            expect(row[:2], (INVOICES_A, TENANT_A), f"row after DEALLOCATE ALL {round_}")
        acme.execute("DEALLOCATE ALL")
        row = acme.execute(PREPARED_QUERY, (Decimal("0"), "none")).fetchone()
        expect(row[:2], (INVOICES_A, TENANT_A), "row after an explicit DEALLOCATE ALL")


def check_prepared_eviction_closes_statements():
    """With prepared_max=3, psycopg closes (protocol Close) its oldest statement whenever it
    prepares a fourth; every query still answers correctly."""
    with connect(TOKEN_A, prepare_threshold=0) as acme:
        acme.prepared_max = 3
        for round_ in range(3):
            for amount in range(8):
                query = f"SELECT count(*) FROM invoices WHERE amount >= %s AND {amount} = {amount}"
                expected = scalar(acme, "SELECT count(*) FROM invoices WHERE amount >= %s",
                                  (Decimal(amount * 100),), prepare=False)
                got = scalar(acme, query, (Decimal(amount * 100),))
                expect(got, expected, f"query {amount} round {round_}")
            expect_true(len(prepared_names(acme)) <= 3, "psycopg kept at most 3 statements")


# --- pipeline mode ---------------------------------------------------------------------------


def check_pipeline_several_executes():
    with connect(TOKEN_A) as acme:
        with acme.pipeline():
            cursors = [
                acme.execute(CURRENT_TENANT),
                acme.execute(COUNT_DEMO_ROWS),
                acme.execute(
                    "INSERT INTO invoices (tenant_id, amount, status) "
                    "VALUES (%s, 5, 'py-pipeline') RETURNING tenant_id::text",
                    (TENANT_A,),
                ),
                acme.execute("SELECT count(*) FROM invoices WHERE status = 'py-pipeline'"),
                acme.execute(PREPARED_QUERY, (Decimal("0"), "py-pipeline"), prepare=True),
            ]
        results = [cur.fetchone() for cur in cursors]
        expect(results[0], (TENANT_A,), "tenant")
        expect(results[1], (INVOICES_A,), "invoices")
        expect(results[2], (TENANT_A,), "inserted row's tenant")
        expect(results[3], (1,), "inserted row seen later in the pipeline")
        expect(results[4][:2], (INVOICES_A, TENANT_A), "prepared statement in the pipeline")
        expect(invoice_count("py-pipeline", TENANT_A), 1, "pipelined insert committed")


def check_pipeline_many_syncs_prepared_on_two_servers():
    with connect(TOKEN_A, prepare_threshold=0) as acme:

        def run():
            with acme.pipeline() as pipeline:
                first = acme.execute(PREPARED_QUERY, (Decimal("0"), "none"))
                pipeline.sync()
                second = acme.execute(PREPARED_QUERY, (Decimal("600"), "none"))
                pipeline.sync()
                third = acme.execute(CURRENT_TENANT)
            first_row = first.fetchone()
            expect(first_row[:2], (INVOICES_A, TENANT_A), "first sync group")
            expect(second.fetchone()[:2], (1, TENANT_A), "second sync group")
            expect(third.fetchone(), (TENANT_A,), "third sync group")
            return first_row[2]

        for _ in range(5):
            run()
        on_two_servers(run)


def check_pipeline_in_transaction():
    with connect(TOKEN_A, prepare_threshold=0) as acme:
        with acme.pipeline(), acme.transaction():
            acme.execute(
                "INSERT INTO invoices (tenant_id, amount, status) VALUES (%s, 5, 'py-pipe-txn')",
                (TENANT_A,),
            )
            counted = acme.execute("SELECT count(*) FROM invoices WHERE status = 'py-pipe-txn'")
            tenant = acme.execute(CURRENT_TENANT)
        expect(counted.fetchone(), (1,), "row inside the pipelined transaction")
        expect(tenant.fetchone(), (TENANT_A,), "tenant inside the pipelined transaction")
        expect(invoice_count("py-pipe-txn", TENANT_A), 1, "committed")


def check_pipeline_error_aborts_rest():
    with connect(TOKEN_A) as acme:
        try:
            with acme.pipeline():
                acme.execute(
                    "INSERT INTO invoices (tenant_id, amount, status) "
                    "VALUES (%s, 5, 'py-pipe-err')",
                    (TENANT_A,),
                )
                acme.execute("SELECT 1 / 0")
                acme.execute(
                    "INSERT INTO invoices (tenant_id, amount, status) "
                    "VALUES (%s, 5, 'py-pipe-err')",
                    (TENANT_A,),
                )
            raise AssertionError("the pipeline did not raise")
        except errors.DivisionByZero:
            pass
        # Everything up to the Sync was one implicit transaction: nothing of it stays.
        expect(invoice_count("py-pipe-err", TENANT_A), 0, "rows of the failed pipeline")
        with acme.pipeline():
            tenant = acme.execute(CURRENT_TENANT)
            after = acme.execute("SELECT count(*) FROM invoices WHERE status = 'py-pipe-err'")
        expect(tenant.fetchone(), (TENANT_A,), "tenant in the next pipeline")
        expect(after.fetchone(), (0,), "rows seen in the next pipeline")


def check_executemany_pipelined():
    with connect(TOKEN_A) as acme:
        with acme.cursor() as cur:
            cur.executemany(
                "INSERT INTO invoices (tenant_id, amount, status) VALUES (%s, %s, 'py-many')",
                [(TENANT_A, Decimal(i)) for i in range(200)],
            )
        expect(invoice_count("py-many", TENANT_A), 200, "executemany rows")
        try:
            with acme.cursor() as cur:
                cur.executemany(
                    "INSERT INTO invoices (tenant_id, amount, status) "
                    "VALUES (%s, 1, 'py-many-forged')",
                    [(TENANT_A,), (TENANT_A,), (TENANT_B,), (TENANT_A,)],
                )
            raise AssertionError("executemany with a Globex row succeeded")
        except errors.InsufficientPrivilege:
            pass
        expect(
            invoice_count("py-many-forged", TENANT_B),
            0,
            "Globex rows of the refused executemany",
        )


# --- COPY ------------------------------------------------------------------------------------


def check_copy_from_into_rls_table_refused():
    with connect(TOKEN_A) as acme:
        try:
            with acme.cursor().copy("COPY invoices (tenant_id, amount) FROM STDIN") as copy:
                copy.write_row((TENANT_A, Decimal(1)))
            raise AssertionError("COPY FROM into an RLS table succeeded")
        except errors.FeatureNotSupported as err:
            expect_true("row-level security" in str(err), f"unexpected message: {err}")
        expect(scalar(acme, CURRENT_TENANT), TENANT_A, "tenant after the refused COPY")


def copy_text_rows(tenant, status, rows):
    lines = (f"{tenant}\t{USER_A if tenant == TENANT_A else chr(92) + 'N'}\t{i}.25\t{status}\n"
             for i in range(rows))
    return "".join(lines).encode()


def check_copy_from_text_large():
    payload = copy_text_rows(TENANT_A, "py-copy-text", COPY_ROWS)
    expect_true(len(payload) > 3_000_000, f"payload of {len(payload)} bytes")
    with connect(TOKEN_A) as acme:
        with acme.cursor() as cur:
            with cur.copy(
                "COPY invoices_import (tenant_id, created_by, amount, status) FROM STDIN"
            ) as copy:
                for start in range(0, len(payload), 65536):
                    copy.write(payload[start:start + 65536])
            expect(cur.rowcount, COPY_ROWS, "rows COPY reported")
        expect(invoice_count("py-copy-text", TENANT_A), COPY_ROWS, "rows in invoices")
        expect(
            scalar(acme, "SELECT count(*) FROM invoices WHERE status = 'py-copy-text'"),
            COPY_ROWS,
            "rows Acme sees",
        )
    with connect(TOKEN_B) as globex:
        expect(
            scalar(globex, "SELECT count(*) FROM invoices WHERE status = 'py-copy-text'"),
            0,
            "Acme's copied rows seen by Globex",
        )


def check_copy_from_binary():
    tenant = uuid.UUID(TENANT_B)
    with connect(TOKEN_B) as globex:
        with globex.cursor() as cur:
            with cur.copy(
                "COPY invoices_import (tenant_id, amount, status) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["uuid", "numeric", "text"])
                for i in range(20_000):
                    copy.write_row((tenant, Decimal(i) / 4, "py-copy-binary"))
        expect(invoice_count("py-copy-binary", TENANT_B), 20_000, "binary rows")
        expect(
            scalar(globex, "SELECT sum(amount) FROM invoices WHERE status = 'py-copy-binary'"),
            sum(Decimal(i) / 4 for i in range(20_000)),
            "sum of the binary amounts",
        )


def check_copy_from_other_tenant_refused():
    payload = copy_text_rows(TENANT_A, "py-copy-forged", 500) + copy_text_rows(
        TENANT_B, "py-copy-forged", 1
    )
    with connect(TOKEN_A) as acme:
        try:
            with acme.cursor().copy(
                "COPY invoices_import (tenant_id, created_by, amount, status) FROM STDIN"
            ) as copy:
                copy.write(payload)
            raise AssertionError("COPY of a Globex row as Acme succeeded")
        except errors.InsufficientPrivilege as err:
            expect_true("row-level security" in str(err), f"not an RLS error: {err}")
        expect(scalar(acme, CURRENT_TENANT), TENANT_A, "tenant after the refused COPY")
    expect(invoice_count("py-copy-forged", TENANT_A), 0, "Acme rows of the refused COPY")
    expect(invoice_count("py-copy-forged", TENANT_B), 0, "Globex rows of the refused COPY")


def check_copy_from_client_abort():
    class Abort(Exception):
        pass

    with connect(TOKEN_A) as acme:
        try:
            with acme.cursor().copy(
                "COPY invoices_import (tenant_id, created_by, amount, status) FROM STDIN"
            ) as copy:
                copy.write(copy_text_rows(TENANT_A, "py-copy-abort", 1000))
                raise Abort()
        except Abort:
            pass
        expect(acme.info.transaction_status, TransactionStatus.IDLE, "status after CopyFail")
        expect(scalar(acme, CURRENT_TENANT), TENANT_A, "tenant after CopyFail")
    expect(invoice_count("py-copy-abort", TENANT_A), 0, "rows of the aborted COPY")


def check_copy_in_transaction_rolled_back():
    with connect(TOKEN_A) as acme:
        with acme.transaction(force_rollback=True):
            with acme.cursor().copy(
                "COPY invoices_import (tenant_id, created_by, amount, status) FROM STDIN"
            ) as copy:
                copy.write(copy_text_rows(TENANT_A, "py-copy-txn", 300))
            expect(
                scalar(acme, "SELECT count(*) FROM invoices WHERE status = 'py-copy-txn'"),
                300,
                "rows inside the transaction",
            )
        expect(invoice_count("py-copy-txn", TENANT_A), 0, "rows after rollback")


def check_copy_to_text_only_own_rows():
    with connect(TOKEN_A) as acme:
        expected = scalar(acme, "SELECT count(*) FROM invoices")
        out = io.BytesIO()
        with acme.cursor().copy("COPY invoices (tenant_id, amount, status) TO STDOUT") as copy:
            for block in copy:
                out.write(block)
    lines = out.getvalue().decode().splitlines()
    expect_true(out.tell() > 2_000_000, f"only {out.tell()} bytes copied out")
    expect(len(lines), expected, "rows copied out")
    expect({line.split("\t")[0] for line in lines}, {TENANT_A}, "tenants copied out")


def check_copy_to_binary_and_csv():
    with connect(TOKEN_B) as globex:
        expected = scalar(globex, "SELECT count(*) FROM invoices")
        with globex.cursor().copy(
            "COPY (SELECT tenant_id, amount FROM invoices) TO STDOUT (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["uuid", "numeric"])
            rows = list(copy.rows())
        expect(len(rows), expected, "binary rows")
        expect({str(row[0]) for row in rows}, {TENANT_B}, "binary tenants")
        out = io.BytesIO()
        with globex.cursor().copy(
            "COPY (SELECT tenant_id, current_setting('app.current_tenant_id') FROM invoices) "
            "TO STDOUT (FORMAT CSV, HEADER)"
        ) as copy:
            for block in copy:
                out.write(block)
        lines = out.getvalue().decode().splitlines()
        expect(lines[0], "tenant_id,current_setting", "CSV header")
        expect(len(lines) - 1, expected, "CSV rows")
        expect(set(lines[1:]), {f"{TENANT_B},{TENANT_B}"}, "CSV tenants")


# --- cancel ----------------------------------------------------------------------------------


def cancelled_sleep(cancel, marker):
    with connect(TOKEN_A) as acme:
        query = f"SELECT pg_sleep({SLEEP_SECS}) /* {marker} */"
        thread = cancel_when_running(acme, marker, cancel)
        started = time.monotonic()
        try:
            acme.execute(query)
            raise AssertionError("pg_sleep was not cancelled")
        except errors.QueryCanceled as err:
            expect(err.sqlstate, "57014", "SQLSTATE")
            expect_true("user request" in str(err), f"not a user cancel: {err}")
        elapsed = time.monotonic() - started
        thread.join()
        expect_true(elapsed < CANCEL_DEADLINE_SECS, f"the cancel took {elapsed:.1f}s")
        expect(scalar(acme, CURRENT_TENANT), TENANT_A, "tenant after the cancel")
        expect(scalar(acme, "SELECT count(*) FROM invoices WHERE amount < 0"), 0, "next query")


def check_cancel():
    cancelled_sleep(lambda conn: conn.cancel(), "py-cancel")


def check_cancel_safe():
    cancelled_sleep(lambda conn: conn.cancel_safe(), "py-cancel-safe")


def check_cancel_in_transaction():
    marker = "py-cancel-txn"
    with connect(TOKEN_A) as acme:
        try:
            with acme.transaction():
                acme.execute(
                    "INSERT INTO invoices (tenant_id, amount, status) VALUES (%s, 1, %s)",
                    (TENANT_A, marker),
                )
                thread = cancel_when_running(acme, marker + "*", lambda conn: conn.cancel())
                acme.execute(f"SELECT pg_sleep({SLEEP_SECS}) /* {marker}* */")
            raise AssertionError("pg_sleep was not cancelled")
        except errors.QueryCanceled:
            pass
        thread.join()
        expect(acme.info.transaction_status, TransactionStatus.IDLE, "status after rollback")
        expect(scalar(acme, CURRENT_TENANT), TENANT_A, "tenant after the cancel")
    expect(invoice_count(marker, TENANT_A), 0, "rows of the cancelled transaction")


def check_stale_cancel_hits_nobody():
    """Acme's cancel after its query ended must not cancel Globex's queries, which hold both
    pooled servers (so one of them is the server Acme last used)."""
    marker = "py-stale-cancel"
    with connect(TOKEN_A) as acme:
        expect(scalar(acme, CURRENT_TENANT), TENANT_A, "Acme's query")
        results = []

        def sleeper():
            try:
                with connect(TOKEN_B) as globex:
                    results.append(scalar(globex, f"SELECT pg_sleep(2)::text /* {marker} */"))
            except Exception as err:  # noqa: BLE001 - reported below
                results.append(repr(err))

        threads = [threading.Thread(target=sleeper) for _ in range(POOL_SIZE)]
        for thread in threads:
            thread.start()
        wait_for_active(marker, POOL_SIZE)
        acme.cancel()
        acme.cancel_safe()
        for thread in threads:
            thread.join()
        expect(results, [""] * POOL_SIZE, "Globex's sleeps")
        expect(scalar(acme, CURRENT_TENANT), TENANT_A, "Acme after its stale cancels")


# --- session settings ------------------------------------------------------------------------


def check_session_search_path():
    with connect(TOKEN_A) as acme, connect(TOKEN_A) as other, connect(TOKEN_B) as globex:
        acme.execute("SET search_path = py_alt, public")

        def run():
            with acme.transaction():
                expect(scalar(acme, "SELECT label FROM py_marker"), "alt", "Acme's py_marker")
                expect(scalar(acme, CURRENT_TENANT), TENANT_A, "tenant after a session SET")
                expect(scalar(acme, "SELECT count(*) FROM invoices WHERE false"), 0, "public")
                return scalar(acme, BACKEND_PID)

        for _ in range(3):
            run()
        on_two_servers(run)
        for conn, who in [(other, "Acme's other connection"), (globex, "Globex")]:
            for _ in range(4):
                expect(scalar(conn, "SELECT label FROM py_marker"), "public", who)
                expect(scalar(conn, "SHOW search_path"), '"$user", public', who)
        expect(scalar(acme, "SHOW search_path"), "py_alt, public", "Acme's search_path")
        acme.execute("RESET search_path")
        expect(scalar(acme, "SELECT label FROM py_marker"), "public", "after RESET")


def check_session_statement_timeout():
    with connect(TOKEN_A) as acme, connect(TOKEN_B) as globex:
        acme.execute("SET statement_timeout = '300ms'")

        def run():
            with acme.transaction():
                expect(scalar(acme, "SHOW statement_timeout"), "300ms", "Acme's timeout")
                expect(scalar(acme, CURRENT_TENANT), TENANT_A, "tenant after a session SET")
                pid = scalar(acme, BACKEND_PID)
            try:
                acme.execute(f"SELECT pg_sleep({SLEEP_SECS})")
                raise AssertionError("statement_timeout did not stop pg_sleep")
            except errors.QueryCanceled as err:
                expect_true("statement timeout" in str(err), f"not a timeout: {err}")
            return pid

        run()
        on_two_servers(run)
        for _ in range(4):
            expect(scalar(globex, "SHOW statement_timeout"), "0", "Globex's timeout")
        expect(scalar(globex, "SELECT pg_sleep(0.5)::text"), "", "Globex's short sleep")
        with connect(TOKEN_A) as other:
            expect(scalar(other, "SHOW statement_timeout"), "0", "Acme's other connection")


def check_session_set_in_transactions():
    """SET inside a rolled-back transaction is undone, SET LOCAL ends with its transaction,
    SET in a committed transaction stays, set_config(..., false) is a session SET."""
    with connect(TOKEN_A, autocommit=False) as acme, connect(TOKEN_B) as globex:
        default_work_mem = scalar(globex, "SHOW work_mem")
        expect_true(default_work_mem != "7777kB", "work_mem's default is the test value")
        acme.execute("SET application_name = 'py-rolled-back'")
        acme.rollback()
        expect_true(
            scalar(acme, "SHOW application_name") != "py-rolled-back", "rolled-back SET"
        )
        acme.rollback()
        acme.execute("SET LOCAL statement_timeout = '4321ms'")
        expect(scalar(acme, "SHOW statement_timeout"), "4321ms", "SET LOCAL inside")
        acme.commit()
        expect(scalar(acme, "SHOW statement_timeout"), "0", "SET LOCAL after commit")
        acme.commit()
        acme.execute("SET application_name = 'py-committed'")
        acme.execute("SELECT set_config('work_mem', '7777kB', false)")
        acme.commit()
        for _ in range(4):
            expect(scalar(acme, "SHOW application_name"), "py-committed", "committed SET")
            expect(scalar(acme, "SHOW work_mem"), "7777kB", "set_config(..., false)")
            expect(scalar(acme, CURRENT_TENANT), TENANT_A, "tenant after a session SET")
            expect(scalar(acme, COUNT_DEMO_ROWS), INVOICES_A, "invoices after a session SET")
            acme.commit()
            expect(scalar(globex, "SHOW work_mem"), default_work_mem, "Globex's work_mem")
            expect_true(
                scalar(globex, "SHOW application_name") != "py-committed",
                "Globex's application_name",
            )


def check_no_unexpected_notices():
    unexpected = list(NOTICES)
    with connect(TOKEN_A) as acme:
        acme.execute("DO $$ BEGIN RAISE NOTICE 'py-notice %', 1; END $$")
        with acme.transaction():
            acme.execute("DO $$ BEGIN RAISE WARNING 'py-warning'; END $$")
    expect(
        NOTICES[len(unexpected):],
        [("NOTICE", "py-notice 1", SUITE.current), ("WARNING", "py-warning", SUITE.current)],
        "notices raised by the client's own statements",
    )
    expect(unexpected, [], "notices clients received from statements the proxy added")


def main():
    install_fixtures()
    suite = SUITE
    checks = [
        ("tenant isolation: Acme sees 3 invoices, Globex 2, each its own tenant",
         check_isolation),
        ("autocommit statements of two tenants interleaved run in their own tenant",
         check_autocommit_statements_interleaved),
        ("conn.transaction() commits in the own tenant, invisible to the other",
         check_transaction_commit),
        ("an exception in conn.transaction() rolls the insert back",
         check_transaction_rollback),
        ("autocommit=False: each commit()/rollback() starts a new transaction with the tenant",
         check_implicit_transactions),
        ("a failed transaction refuses statements (25P02) until rollback",
         check_failed_transaction),
        ("inserting another tenant's row is refused by RLS (42501)",
         check_rls_refuses_other_tenant_insert),
        ("SERIALIZABLE READ ONLY transaction runs with the tenant",
         check_isolation_level_transaction),
        ("prepare=True statement reused across transactions on both pooled servers",
         check_prepare_true_across_transactions_and_servers),
        ("prepare_threshold=0: 4 connections of 2 tenants share a statement over 2 servers",
         check_prepare_threshold_zero_concurrent),
        ("prepared statements after psycopg's DEALLOCATE ALL (on ROLLBACK) and an explicit one",
         check_prepared_survive_rollback_deallocate_all),
        ("prepared_max=3: psycopg's Close of evicted statements keeps queries right",
         check_prepared_eviction_closes_statements),
        ("pipeline: several executes (insert, select, prepared) answered in order",
         check_pipeline_several_executes),
        ("pipeline with several syncs and prepared statements on both servers",
         check_pipeline_many_syncs_prepared_on_two_servers),
        ("pipeline inside a transaction commits",
         check_pipeline_in_transaction),
        ("pipeline error: the rest of the sync group is skipped, the connection works",
         check_pipeline_error_aborts_rest),
        ("executemany (pipelined) inserts 200 rows; one forged row refuses the batch",
         check_executemany_pipelined),
        ("COPY FROM STDIN into an RLS table is refused by PostgreSQL (0A000)",
         check_copy_from_into_rls_table_refused),
        ("COPY FROM STDIN text, ~4 MB, rows land in the own tenant",
         check_copy_from_text_large),
        ("COPY FROM STDIN binary (write_row) lands in the own tenant",
         check_copy_from_binary),
        ("COPY FROM STDIN with another tenant's row fails with RLS 42501, nothing lands",
         check_copy_from_other_tenant_refused),
        ("COPY FROM STDIN aborted by the client (CopyFail) leaves nothing",
         check_copy_from_client_abort),
        ("COPY FROM STDIN inside a rolled-back transaction is undone",
         check_copy_in_transaction_rolled_back),
        ("COPY TO STDOUT text: a few MB, only the own tenant's rows",
         check_copy_to_text_only_own_rows),
        ("COPY TO STDOUT binary and CSV of a query: only the own tenant",
         check_copy_to_binary_and_csv),
        ("conn.cancel() from another thread ends pg_sleep with 57014",
         check_cancel),
        ("conn.cancel_safe() from another thread ends pg_sleep with 57014",
         check_cancel_safe),
        ("cancel inside a transaction aborts it; the connection works after",
         check_cancel_in_transaction),
        ("a stale cancel does not cancel another tenant's queries on the pooled servers",
         check_stale_cancel_hits_nobody),
        ("SET search_path follows the connection across transactions and servers, no further",
         check_session_search_path),
        ("SET statement_timeout is enforced in later transactions on both servers, no further",
         check_session_statement_timeout),
        ("SET in rolled-back/committed transactions, SET LOCAL, set_config(..., false)",
         check_session_set_in_transactions),
        ("clients get their own notices and none from the proxy's statements",
         check_no_unexpected_notices),
    ]
    for name, check in checks:
        suite.run(name, check)
    suite.finish()


if __name__ == "__main__":
    main()
