"""asyncpg through pgtenant, in asyncpg's own idiom. asyncpg prepares every statement under a
name of its own and caches it per connection, so every check here exercises named prepared
statements; many run concurrently over several connections while the proxy pools two servers
(PGT_POOL_SIZE), so statements hop between servers. Also: conn.transaction() (commit,
rollback, savepoints, isolation levels), executemany, cursors (Execute with a row limit),
COPY in (copy_records_to_table, copy_to_table) and out (copy_from_query, copy_from_table),
cancellation by timeout and by task cancellation, session SET and asyncpg's own
set_config('jit', ...) around type introspection, asyncpg's Pool with its reset query, and the
re-preparation after a schema change invalidated a cached statement.

Where a check must run on both servers, it holds one with another connection's open
transaction, so the next transaction has to use the other one (`on_two_servers`).
"""

import asyncio
import io
import time
import uuid
from decimal import Decimal

import asyncpg

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
    Suite,
    direct_execute,
    direct_query,
    expect,
    expect_true,
    install_fixtures,
)

CURRENT_TENANT = "SELECT current_setting('app.current_tenant_id')"
BACKEND_PID = "SELECT pg_backend_pid()"
# The demo rows (config/demo_data.sql) among the tenant's invoices; checks add 'py-...' ones.
DEMO_FILTER = "status IN ('paid', 'sent', 'draft')"
COUNT_DEMO_ROWS = f"SELECT count(*) FROM invoices WHERE {DEMO_FILTER}"
SLEEP_SECS = 10
CANCEL_DEADLINE_SECS = 5

SUITE = Suite("asyncpg")
# Log messages (severity, message, check) clients received; PostgreSQL sends none for what
# the checks do, so every one is something the proxy let through from its own statements.
NOTICES = []


async def connect(token=TOKEN_A, **kwargs):
    conn = await asyncpg.connect(
        host=HOST,
        port=PORT,
        user=USER,
        password=token,
        database=DB,
        timeout=30,
        **kwargs,
    )
    conn.add_log_listener(
        lambda _conn, msg: NOTICES.append((msg.severity, msg.message, SUITE.current))
    )
    return conn


class Connections:
    """`async with Connections(TOKEN_A, TOKEN_B) as (a, b)`: connects, closes at the end."""

    def __init__(self, *tokens, **kwargs):
        self.tokens = tokens
        self.kwargs = kwargs
        self.conns = []

    async def __aenter__(self):
        for token in self.tokens:
            self.conns.append(await connect(token, **self.kwargs))
        return self.conns

    async def __aexit__(self, *exc):
        for conn in self.conns:
            await conn.close(timeout=10)


async def hold_server(token=TOKEN_B):
    """A connection keeping one pooled server busy with an open transaction; its pid."""
    holder = await connect(token)
    transaction = holder.transaction()
    await transaction.start()
    return holder, transaction, await holder.fetchval(BACKEND_PID)


async def on_two_servers(work):
    """Awaits `work()` (which returns the backend pid it ran on) twice, the second time with
    the first call's server held by another client, so the calls run on different servers."""
    if POOL_SIZE != 2:
        raise AssertionError(f"on_two_servers needs a pool of 2, not {POOL_SIZE}")
    holder1, transaction1, held1 = await hold_server()
    try:
        first = await work()
        expect_true(first != held1, f"work ran on the held server {held1}")
        holder2, _, held2 = await hold_server()
        try:
            expect(held2, first, "the second holder's server (the only free one)")
            await transaction1.rollback()
            second = await work()
        finally:
            # Rolled back first: a client vanishing inside a transaction gets its server closed.
            await holder2.execute("ROLLBACK")
            await holder2.close(timeout=10)
    finally:
        await holder1.close(timeout=10)
    expect_true(first != second, f"both calls ran on server {first}")
    return first, second


def invoice_count(status, tenant):
    return direct_query(
        "SELECT count(*) FROM invoices WHERE status = %s AND tenant_id = %s",
        (status, tenant),
    )[0][0]


async def wait_for_active(marker, count=1, present=True):
    """Waits until `count` queries containing `marker` run on PostgreSQL (or, with
    present=False, until none does)."""
    for _ in range(100):
        running = direct_query(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{marker}%",),
        )[0][0]
        if (running >= count) if present else running == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{marker!r}: still {running} running (wanted present={present})")


# --- isolation and prepared statements ------------------------------------------------------


async def check_isolation():
    async with Connections(TOKEN_A, TOKEN_B) as (acme, globex):
        expect(await acme.fetchval("SELECT count(*) FROM invoices"), INVOICES_A, "Acme's")
        expect(await globex.fetchval("SELECT count(*) FROM invoices"), INVOICES_B, "Globex's")
        expect(await acme.fetchval(CURRENT_TENANT), TENANT_A, "Acme's tenant")
        expect(await globex.fetchval(CURRENT_TENANT), TENANT_B, "Globex's tenant")
        rows = await acme.fetch("SELECT DISTINCT tenant_id FROM invoices")
        expect([row["tenant_id"] for row in rows], [uuid.UUID(TENANT_A)], "Acme's tenants")


QUERIES = [
    (f"SELECT count(*) FROM invoices WHERE amount >= $1 AND {DEMO_FILTER}", "count"),
    ("SELECT current_setting('app.current_tenant_id')::uuid = $1::uuid", "tenant"),
    (f"SELECT coalesce(sum(amount), 0) FROM invoices WHERE status = $1 AND {DEMO_FILTER}",
     "sum"),
    ("SELECT $1::int + 1", "plus one"),
    ("SELECT count(*) FROM tenants WHERE id = $1::uuid", "own tenant row"),
]

# Acme: 500 paid, 750 sent, 500 draft. Globex: 4900 paid, 5000 sent.
EXPECTED = {
    TENANT_A: {"count": 1, "sum_paid": Decimal("500.00")},
    TENANT_B: {"count": 2, "sum_paid": Decimal("4900.00")},
}


async def run_query_mix(conn, tenant, rounds):
    other = TENANT_B if tenant == TENANT_A else TENANT_A
    for i in range(rounds):
        expect(await conn.fetchval(QUERIES[0][0], Decimal(600)), EXPECTED[tenant]["count"],
               f"count round {i}")
        expect(await conn.fetchval(QUERIES[1][0], tenant), True, f"tenant round {i}")
        expect(await conn.fetchval(QUERIES[1][0], other), False, f"other round {i}")
        expect(await conn.fetchval(QUERIES[2][0], "paid"), EXPECTED[tenant]["sum_paid"],
               f"sum round {i}")
        expect(await conn.fetchval(QUERIES[3][0], i), i + 1, f"plus one round {i}")
        expect(await conn.fetchval(QUERIES[4][0], other), 0, f"other tenant row round {i}")
        if i % 3 == 0:
            async with conn.transaction():
                expect(await conn.fetchval(QUERIES[4][0], tenant), 1, f"own row round {i}")
                expect(await conn.fetchval(QUERIES[1][0], tenant), True, f"in txn round {i}")


async def check_concurrent_prepared_statements():
    """6 connections of two tenants run the same 5 statements (each prepared by asyncpg on
    every connection) 30 times each, all at once, over 2 servers."""
    tokens = [(TOKEN_A, TENANT_A), (TOKEN_B, TENANT_B)] * 3
    async with Connections(*(token for token, _ in tokens)) as conns:
        await asyncio.gather(
            *(run_query_mix(conn, tenant, 30) for conn, (_, tenant) in zip(conns, tokens))
        )
        for conn in conns:
            # asyncpg's statement cache holds what it prepared: every query, one name each.
            expect_true(len(conn._stmt_cache) >= len(QUERIES), "statements asyncpg cached")


async def check_explicit_prepare_on_two_servers():
    async with Connections(TOKEN_A) as (acme,):
        stmt = await acme.prepare(
            "SELECT count(*), current_setting('app.current_tenant_id'), pg_backend_pid() "
            f"FROM invoices WHERE amount >= $1 AND {DEMO_FILTER}"
        )
        expect_true(stmt.get_name().startswith("__asyncpg_stmt_"), f"name {stmt.get_name()}")

        async def run():
            async with acme.transaction():
                count, tenant, pid = await stmt.fetchrow(Decimal(0))
            expect((count, tenant), (INVOICES_A, TENANT_A), "prepared statement's row")
            count, tenant, _ = await stmt.fetchrow(Decimal(600))
            expect((count, tenant), (1, TENANT_A), "autocommit row")
            return pid

        for _ in range(5):
            await run()
        await on_two_servers(run)
        expect(
            [tuple(row)[:2] for row in await stmt.fetch(Decimal(0))],
            [(INVOICES_A, TENANT_A)],
            "after the hop",
        )


async def check_statement_cache_eviction():
    """statement_cache_size=2 with 5 statements in turn: asyncpg closes evicted statements
    (protocol Close) and prepares them again, on whichever server."""
    async with Connections(TOKEN_A, TOKEN_B, statement_cache_size=2) as (acme, globex):
        await asyncio.gather(run_query_mix(acme, TENANT_A, 15),
                             run_query_mix(globex, TENANT_B, 15))
        expect_true(len(acme._stmt_cache) <= 2, "asyncpg's cache bound")


async def check_cursor_with_row_limit():
    """A cursor fetches with Execute row limits (PortalSuspended) inside a transaction."""
    async with Connections(TOKEN_A) as (acme,):
        async with acme.transaction():
            seen = [row async for row in acme.cursor(
                "SELECT g, current_setting('app.current_tenant_id') FROM generate_series(1, $1) g",
                95,
                prefetch=10,
            )]
            expect([row[0] for row in seen], list(range(1, 96)), "cursor rows")
            expect({row[1] for row in seen}, {TENANT_A}, "cursor tenant")
            cursor = await acme.cursor("SELECT tenant_id FROM invoices")
            first = await cursor.fetch(2)
            rest = await cursor.fetch(100)
            expect({row[0] for row in first + rest}, {uuid.UUID(TENANT_A)}, "cursor tenants")


# --- transactions ----------------------------------------------------------------------------


async def check_transaction_commit_and_rollback():
    class Undo(Exception):
        pass

    async with Connections(TOKEN_A, TOKEN_B) as (acme, globex):
        async with acme.transaction():
            await acme.execute(
                "INSERT INTO invoices (tenant_id, amount, status) VALUES ($1, 1, 'apg-commit')",
                uuid.UUID(TENANT_A),
            )
            expect(await acme.fetchval(CURRENT_TENANT), TENANT_A, "tenant in the transaction")
        try:
            async with acme.transaction():
                await acme.execute(
                    "INSERT INTO invoices (tenant_id, amount, status) "
                    "VALUES ($1, 1, 'apg-rollback')",
                    uuid.UUID(TENANT_A),
                )
                raise Undo()
        except Undo:
            pass
        expect(invoice_count("apg-commit", TENANT_A), 1, "committed rows")
        expect(invoice_count("apg-rollback", TENANT_A), 0, "rolled-back rows")
        expect(
            await globex.fetchval("SELECT count(*) FROM invoices WHERE status = 'apg-commit'"),
            0,
            "Acme's row seen by Globex",
        )


async def check_savepoints():
    async with Connections(TOKEN_A) as (acme,):
        async with acme.transaction():
            await acme.execute(
                "INSERT INTO invoices (tenant_id, amount, status) VALUES ($1, 1, 'apg-outer')",
                uuid.UUID(TENANT_A),
            )
            try:
                async with acme.transaction():
                    await acme.execute(
                        "INSERT INTO invoices (tenant_id, amount, status) "
                        "VALUES ($1, 1, 'apg-inner')",
                        uuid.UUID(TENANT_A),
                    )
                    await acme.execute("SELECT 1 / 0")
            except asyncpg.DivisionByZeroError:
                pass
            expect(await acme.fetchval(CURRENT_TENANT), TENANT_A, "after the savepoint")
        expect(invoice_count("apg-outer", TENANT_A), 1, "outer rows")
        expect(invoice_count("apg-inner", TENANT_A), 0, "rolled-back savepoint rows")


async def check_isolation_levels():
    async with Connections(TOKEN_A) as (acme,):
        for isolation in ["serializable", "repeatable_read", "read_committed"]:
            async with acme.transaction(isolation=isolation, readonly=True):
                expect(
                    await acme.fetchval("SHOW transaction_isolation"),
                    isolation.replace("_", " "),
                    "isolation",
                )
                expect(await acme.fetchval("SHOW transaction_read_only"), "on", "read only")
                expect(await acme.fetchval(CURRENT_TENANT), TENANT_A, "tenant")
                expect(await acme.fetchval(COUNT_DEMO_ROWS), INVOICES_A, "invoices")


async def check_executemany():
    async with Connections(TOKEN_A) as (acme,):
        await acme.executemany(
            "INSERT INTO invoices (tenant_id, amount, status) VALUES ($1, $2, 'apg-many')",
            [(uuid.UUID(TENANT_A), Decimal(i)) for i in range(150)],
        )
        expect(invoice_count("apg-many", TENANT_A), 150, "executemany rows")
        try:
            await acme.executemany(
                "INSERT INTO invoices (tenant_id, amount, status) "
                "VALUES ($1, 1, 'apg-many-forged')",
                [(uuid.UUID(TENANT_A),)] * 3 + [(uuid.UUID(TENANT_B),)],
            )
            raise AssertionError("executemany with a Globex row succeeded")
        except asyncpg.InsufficientPrivilegeError as err:
            expect_true("row-level security" in str(err), f"not an RLS error: {err}")
        expect(invoice_count("apg-many-forged", TENANT_A), 0, "Acme rows of the refused batch")
        expect(invoice_count("apg-many-forged", TENANT_B), 0, "Globex rows of the batch")
        expect(await acme.fetchval(CURRENT_TENANT), TENANT_A, "after the refused batch")


# --- COPY ------------------------------------------------------------------------------------

COPY_COLUMNS = ["tenant_id", "amount", "status"]


async def check_copy_records_to_table():
    async with Connections(TOKEN_A) as (acme,):
        tenant = uuid.UUID(TENANT_A)
        result = await acme.copy_records_to_table(
            "invoices_import",
            records=((tenant, Decimal(i) / 4, "apg-copy") for i in range(30_000)),
            columns=COPY_COLUMNS,
        )
        expect(result, "COPY 30000", "status")
        expect(invoice_count("apg-copy", TENANT_A), 30_000, "copied rows")
        expect(
            await acme.fetchval("SELECT sum(amount) FROM invoices WHERE status = 'apg-copy'"),
            sum(Decimal(i) / 4 for i in range(30_000)),
            "sum of the copied amounts",
        )


async def check_copy_records_other_tenant_refused():
    async with Connections(TOKEN_A) as (acme,):
        records = [(uuid.UUID(TENANT_A), Decimal(1), "apg-copy-forged")] * 100
        records.append((uuid.UUID(TENANT_B), Decimal(1), "apg-copy-forged"))
        try:
            await acme.copy_records_to_table(
                "invoices_import", records=records, columns=COPY_COLUMNS
            )
            raise AssertionError("COPY of a Globex row as Acme succeeded")
        except asyncpg.InsufficientPrivilegeError as err:
            expect_true("row-level security" in str(err), f"not an RLS error: {err}")
        expect(await acme.fetchval(CURRENT_TENANT), TENANT_A, "after the refused COPY")
    expect(invoice_count("apg-copy-forged", TENANT_A), 0, "Acme rows of the refused COPY")
    expect(invoice_count("apg-copy-forged", TENANT_B), 0, "Globex rows of the refused COPY")


async def check_copy_into_rls_table_refused():
    async with Connections(TOKEN_A) as (acme,):
        try:
            await acme.copy_records_to_table(
                "invoices", records=[(uuid.UUID(TENANT_A), Decimal(1), "apg-x")],
                columns=COPY_COLUMNS,
            )
            raise AssertionError("COPY FROM into an RLS table succeeded")
        except asyncpg.FeatureNotSupportedError as err:
            expect_true("row-level security" in str(err), f"unexpected message: {err}")
        expect(await acme.fetchval(CURRENT_TENANT), TENANT_A, "after the refused COPY")


async def check_copy_to_table_csv_in_transaction():
    async with Connections(TOKEN_B) as (globex,):
        source = io.BytesIO(
            "".join(f"{TENANT_B},{i}.50,apg-copy-csv\n" for i in range(5000)).encode()
        )
        async with globex.transaction():
            result = await globex.copy_to_table(
                "invoices_import", source=source, columns=COPY_COLUMNS, format="csv"
            )
            expect(result, "COPY 5000", "status")
            expect(await globex.fetchval(CURRENT_TENANT), TENANT_B, "tenant after COPY")
        expect(invoice_count("apg-copy-csv", TENANT_B), 5000, "copied rows")


async def check_copy_from_query_and_table():
    async with Connections(TOKEN_A) as (acme,):
        total = await acme.fetchval("SELECT count(*) FROM invoices")
        out = io.BytesIO()
        result = await acme.copy_from_table(
            "invoices", output=out, columns=["tenant_id", "amount"], format="text"
        )
        lines = out.getvalue().decode().splitlines()
        expect(result, f"COPY {total}", "copy_from_table status")
        expect(len(lines), total, "rows copied out")
        expect({line.split("\t")[0] for line in lines}, {TENANT_A}, "tenants copied out")
        expect_true(len(out.getvalue()) > 1_000_000, f"{len(out.getvalue())} bytes")
        out = io.BytesIO()
        await acme.copy_from_query(
            "SELECT tenant_id, current_setting('app.current_tenant_id') FROM invoices "
            "WHERE amount >= $1",
            Decimal(0),
            output=out,
            format="csv",
        )
        lines = out.getvalue().decode().splitlines()
        expect(len(lines), total, "CSV rows")
        expect(set(lines), {f"{TENANT_A},{TENANT_A}"}, "CSV tenants")
        out = io.BytesIO()
        await acme.copy_from_query("SELECT id FROM invoices", output=out, format="binary")
        expect_true(out.getvalue().startswith(b"PGCOPY\n\xff\r\n\0"), "binary COPY signature")


# --- cancellation ----------------------------------------------------------------------------


async def check_timeout_cancels_query():
    marker = "apg-timeout"
    async with Connections(TOKEN_A) as (acme,):
        started = time.monotonic()
        try:
            await acme.fetch(f"SELECT pg_sleep({SLEEP_SECS}) /* {marker} */", timeout=0.5)
            raise AssertionError("the timeout did not fire")
        except asyncio.TimeoutError:
            pass
        # asyncpg sent a CancelRequest and waited for the server's answer: the query is gone.
        await wait_for_active(marker, present=False)
        elapsed = time.monotonic() - started
        expect_true(elapsed < CANCEL_DEADLINE_SECS, f"the cancel took {elapsed:.1f}s")
        expect(await acme.fetchval(CURRENT_TENANT), TENANT_A, "tenant after the timeout")
        expect(await acme.fetchval(COUNT_DEMO_ROWS), INVOICES_A, "query after the timeout")
        async with acme.transaction():
            expect(await acme.fetchval("SELECT 41 + 1"), 42, "transaction after the timeout")


async def check_task_cancel_cancels_query():
    marker = "apg-task-cancel"
    async with Connections(TOKEN_A) as (acme,):
        task = asyncio.create_task(
            acme.fetchval(f"SELECT pg_sleep({SLEEP_SECS}) /* {marker} */")
        )
        await wait_for_active(marker)
        started = time.monotonic()
        task.cancel()
        try:
            await task
            raise AssertionError("the task was not cancelled")
        except asyncio.CancelledError:
            pass
        await wait_for_active(marker, present=False)
        expect_true(time.monotonic() - started < CANCEL_DEADLINE_SECS, "cancel too slow")
        expect(await acme.fetchval(CURRENT_TENANT), TENANT_A, "tenant after the cancel")


async def check_timeout_in_transaction():
    marker = "apg-timeout-txn"
    async with Connections(TOKEN_A) as (acme,):
        try:
            async with acme.transaction():
                await acme.execute(
                    "INSERT INTO invoices (tenant_id, amount, status) VALUES ($1, 1, $2)",
                    uuid.UUID(TENANT_A),
                    marker,
                )
                await acme.fetch(f"SELECT pg_sleep({SLEEP_SECS}) /* {marker} */", timeout=0.5)
            raise AssertionError("the timeout did not fire")
        except asyncio.TimeoutError:
            pass
        await wait_for_active(marker, present=False)
        expect(acme.is_in_transaction(), False, "in a transaction after the rollback")
        expect(await acme.fetchval(CURRENT_TENANT), TENANT_A, "tenant after the timeout")
    expect(invoice_count(marker, TENANT_A), 0, "rows of the cancelled transaction")


# --- session settings ------------------------------------------------------------------------


async def check_session_statement_timeout():
    async with Connections(TOKEN_A, TOKEN_B, TOKEN_A) as (acme, globex, acme2):
        await acme.execute("SET statement_timeout = '300ms'")

        async def run():
            async with acme.transaction():
                expect(await acme.fetchval("SHOW statement_timeout"), "300ms", "Acme's")
                expect(await acme.fetchval(CURRENT_TENANT), TENANT_A, "tenant")
                pid = await acme.fetchval(BACKEND_PID)
            try:
                await acme.fetchval(f"SELECT pg_sleep({SLEEP_SECS})")
                raise AssertionError("statement_timeout did not stop pg_sleep")
            except asyncpg.QueryCanceledError as err:
                expect_true("statement timeout" in str(err), f"not a timeout: {err}")
            return pid

        await run()
        await on_two_servers(run)
        for conn, who in [(globex, "Globex"), (acme2, "Acme's other connection")]:
            for _ in range(3):
                expect(await conn.fetchval("SHOW statement_timeout"), "0", who)
        expect(await globex.fetchval("SELECT pg_sleep(0.5)::text"), "", "Globex's sleep")
        await acme.execute("RESET statement_timeout")
        expect(await acme.fetchval("SHOW statement_timeout"), "0", "after RESET")


async def check_set_config_jit_follows_connection():
    async with Connections(TOKEN_A, TOKEN_B) as (acme, globex):
        default = await globex.fetchval("SHOW jit")
        flipped = "off" if default == "on" else "on"
        await acme.fetchval("SELECT set_config('jit', $1, false)", flipped)

        async def run():
            async with acme.transaction():
                expect(await acme.fetchval("SHOW jit"), flipped, "Acme's jit")
                expect(await acme.fetchval(CURRENT_TENANT), TENANT_A, "tenant")
                return await acme.fetchval(BACKEND_PID)

        await run()
        await on_two_servers(run)
        for _ in range(3):
            expect(await globex.fetchval("SHOW jit"), default, "Globex's jit")
        await acme.execute("SET search_path = py_alt, public")
        expect(await acme.fetchval("SELECT label FROM py_marker"), "alt", "Acme's search_path")
        expect(await globex.fetchval("SELECT label FROM py_marker"), "public", "Globex's")


async def check_type_introspection_set_config():
    """Decoding a composite (the invoices row type) makes asyncpg introspect it between
    set_config('jit', 'off', false) and set_config('jit', <previous>, false)."""
    async with Connections(TOKEN_A, TOKEN_B) as (acme, globex):
        default = await acme.fetchval("SHOW jit")
        rows = await acme.fetch("SELECT i FROM invoices i WHERE " + DEMO_FILTER)
        expect(len(rows), INVOICES_A, "composite rows")
        expect({row["i"]["tenant_id"] for row in rows}, {uuid.UUID(TENANT_A)}, "tenants")
        expect(await acme.fetchval("SHOW jit"), default, "jit after the introspection")
        expect(await globex.fetchval("SHOW jit"), default, "Globex's jit")
        rows = await globex.fetch("SELECT t FROM tenants t")
        expect([row["t"]["slug"] for row in rows], ["globex"], "Globex's tenant rows")
        expect(await globex.fetchval("SHOW jit"), default, "Globex's jit after introspection")


async def check_asyncpg_pool_reset():
    """asyncpg's own Pool runs `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL;` whenever a connection goes back to it."""
    pool = await asyncpg.create_pool(
        host=HOST, port=PORT, user=USER, password=TOKEN_A, database=DB,
        min_size=3, max_size=3, timeout=30,
    )
    try:
        async def use(i):
            async with pool.acquire() as conn:
                expect(await conn.fetchval("SHOW statement_timeout"), "0", f"reset {i}")
                await conn.execute("SET statement_timeout = '12345ms'")
                expect(await conn.fetchval(CURRENT_TENANT), TENANT_A, f"tenant {i}")
                expect(await conn.fetchval(COUNT_DEMO_ROWS), INVOICES_A, f"invoices {i}")

        await asyncio.gather(*(use(i) for i in range(30)))
    finally:
        await pool.close()


INVALIDATED_QUERY = f"SELECT * FROM invoices WHERE {DEMO_FILTER} ORDER BY amount"


async def fetch_invalidated(conn, with_note):
    """Runs INVALIDATED_QUERY (cached by asyncpg), checks its rows, returns the server pid."""
    rows = await conn.fetch(INVALIDATED_QUERY)
    expect(len(rows), INVOICES_A, "rows")
    expect("apg_note" in rows[0].keys(), with_note, "the added column in the row")
    if with_note:
        expect({row["apg_note"] for row in rows}, {"noted"}, "the added column's values")
    return await conn.fetchval(BACKEND_PID)


async def check_cached_plan_invalidated_on_servers_that_prepared_it():
    """After ALTER TABLE changes what `SELECT *` returns, PostgreSQL answers a statement
    prepared before with 'cached plan must not change result type' (0A000); outside a
    transaction asyncpg then prepares it again and retries. Both servers had prepared it."""
    async with Connections(TOKEN_A) as (acme,):
        await on_two_servers(lambda: fetch_invalidated(acme, False))
        direct_execute("ALTER TABLE invoices ADD COLUMN apg_note text DEFAULT 'noted'")
        try:
            for _ in range(2):
                await on_two_servers(lambda: fetch_invalidated(acme, True))
        finally:
            direct_execute("ALTER TABLE invoices DROP COLUMN apg_note")


async def check_cached_plan_invalidated_on_a_new_server():
    """The same, when the statement prepared before ALTER TABLE next runs on a server that
    never had it: on PostgreSQL the client's statement is stale (0A000, asyncpg re-prepares);
    it must never get rows of a shape other than the one it was told."""
    async with Connections(TOKEN_A) as (acme,):
        old_pid = await fetch_invalidated(acme, False)
        # Two clients that vanish inside their transactions: the proxy closes both servers.
        holders = [await hold_server(), await hold_server()]
        old_pids = {held for _, _, held in holders}
        expect_true(old_pid in old_pids, f"{old_pid} is one of the held servers {old_pids}")
        for holder, _, _ in holders:
            holder.terminate()
        for _ in range(100):
            alive = direct_query(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(old_pids),)
            )[0][0]
            if alive == 0:
                break
            await asyncio.sleep(0.1)
        expect(alive, 0, "servers of the vanished clients still running")
        direct_execute("ALTER TABLE invoices ADD COLUMN apg_note text DEFAULT 'noted'")
        try:
            new_pid = await fetch_invalidated(acme, True)
            expect_true(new_pid not in old_pids, f"ran on an old server {new_pid}")
            await on_two_servers(lambda: fetch_invalidated(acme, True))
        finally:
            direct_execute("ALTER TABLE invoices DROP COLUMN apg_note")


async def check_no_unexpected_notices():
    unexpected = list(NOTICES)
    async with Connections(TOKEN_A) as (acme,):
        await acme.execute("DO $$ BEGIN RAISE NOTICE 'apg-notice %', 1; END $$")
        await asyncio.sleep(0)
    expect(
        NOTICES[len(unexpected):],
        [("NOTICE", "apg-notice 1", SUITE.current)],
        "notices raised by the client's own statements",
    )
    expect(unexpected, [], "notices clients received from statements the proxy added")


def main():
    install_fixtures()
    checks = [
        ("tenant isolation: Acme sees 3 invoices, Globex 2, each its own tenant",
         check_isolation),
        ("6 connections of 2 tenants run asyncpg's prepared statements at once over 2 servers",
         check_concurrent_prepared_statements),
        ("conn.prepare() statement reused across transactions on both pooled servers",
         check_explicit_prepare_on_two_servers),
        ("statement_cache_size=2: evicted statements are closed and prepared again",
         check_statement_cache_eviction),
        ("cursor in a transaction fetches with row limits (PortalSuspended)",
         check_cursor_with_row_limit),
        ("conn.transaction() commits; an exception rolls back",
         check_transaction_commit_and_rollback),
        ("a failed nested transaction rolls back to its savepoint only",
         check_savepoints),
        ("isolation levels and read-only transactions run with the tenant",
         check_isolation_levels),
        ("executemany inserts in the own tenant; one forged row refuses the whole batch",
         check_executemany),
        ("copy_records_to_table (binary COPY FROM STDIN) lands 30000 rows in the own tenant",
         check_copy_records_to_table),
        ("copy_records_to_table with another tenant's row fails with RLS 42501",
         check_copy_records_other_tenant_refused),
        ("COPY FROM STDIN into an RLS table is refused by PostgreSQL (0A000)",
         check_copy_into_rls_table_refused),
        ("copy_to_table CSV inside a transaction",
         check_copy_to_table_csv_in_transaction),
        ("copy_from_table / copy_from_query (text, CSV, binary) return only own rows",
         check_copy_from_query_and_table),
        ("fetch(timeout=0.5) on pg_sleep cancels the query; the connection works after",
         check_timeout_cancels_query),
        ("cancelling the asyncio task cancels the query; the connection works after",
         check_task_cancel_cancels_query),
        ("a timeout inside conn.transaction() cancels and rolls back",
         check_timeout_in_transaction),
        ("SET statement_timeout is enforced in later transactions on both servers, no further",
         check_session_statement_timeout),
        ("set_config('jit', ..., false) and SET search_path follow the connection only",
         check_set_config_jit_follows_connection),
        ("asyncpg's type introspection (set_config jit off/back) leaves jit as it was",
         check_type_introspection_set_config),
        ("asyncpg's Pool reset query (advisory unlock, CLOSE ALL, UNLISTEN *, RESET ALL)",
         check_asyncpg_pool_reset),
        ("a statement invalidated by ALTER TABLE is re-prepared on servers that had it",
         check_cached_plan_invalidated_on_servers_that_prepared_it),
        ("a statement invalidated by ALTER TABLE never returns rows of another shape",
         check_cached_plan_invalidated_on_a_new_server),
        ("clients get their own notices and none from the proxy's statements",
         check_no_unexpected_notices),
    ]
    for name, check in checks:
        SUITE.run(name, check)
    SUITE.finish()


if __name__ == "__main__":
    main()
