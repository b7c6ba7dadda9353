//! sqlx (issue 4, item 6) through pgtenant, in sqlx's own idiom: `PgPool`s of several
//! connections on a proxy pool of two servers, `sqlx::query` with binds (sqlx prepares every
//! query as a named statement and keeps it in a per-connection cache), `query_as` and
//! `fetch_all`, `pool.begin()` transactions with rollback and nested savepoints, `copy_in_raw`
//! / `copy_out_raw`, concurrent tasks of two tenants, and session settings (`SET`, connect
//! options, `after_connect`) that follow their connection and no other.
//!
//! sqlx has no query-cancel API and does not pipeline, so neither is tested here.
//! Where a check must run on both servers, another client's open transaction holds one server
//! so the next transaction has to use the other ([`on_two_servers`]).

mod support;

use futures_util::TryStreamExt as _;
use sqlx::postgres::{PgConnectOptions, PgPoolCopyExt as _, PgPoolOptions, PgSslMode};
use sqlx::{Connection as _, Executor as _, PgConnection, PgPool, Row as _};
use support::*;

/// Server connections per proxy pool: small, so that statements and settings change servers.
const POOL_SIZE: i64 = 2;
/// Client connections per sqlx pool: more than the proxy has servers.
const SQLX_POOL_SIZE: u32 = 4;
/// The demo rows among a tenant's invoices; tests add rows with other statuses.
const COUNT_DEMO_ROWS: &str =
    "SELECT count(*) FROM invoices WHERE status IN ('paid', 'sent', 'draft')";

/// `sqlx_import` has no RLS (PostgreSQL refuses `COPY FROM` into a table with row-level
/// security), its `tenant_id` defaults to the tenant setting and `api_user` may only insert:
/// the tests check as superuser that every copied row got its own tenant. `sqlx_marker`
/// resolves to a different view in `public` and in `sqlx_alt`: it shows the `search_path`.
const FIXTURES_SQL: &str = "
CREATE TABLE public.sqlx_import (
    tenant_id uuid NOT NULL DEFAULT current_setting('app.current_tenant_id')::uuid,
    n         integer NOT NULL,
    label     text NOT NULL
);
GRANT INSERT ON public.sqlx_import TO api_user;
CREATE SCHEMA sqlx_alt;
GRANT USAGE ON SCHEMA sqlx_alt TO api_user;
CREATE VIEW public.sqlx_marker AS SELECT 'public'::text AS label;
CREATE VIEW sqlx_alt.sqlx_marker AS SELECT 'alt'::text AS label;
GRANT SELECT ON public.sqlx_marker, sqlx_alt.sqlx_marker TO api_user;
";

/// A database with the fixtures and a proxy with a pool of two servers and no reserve.
fn setup() -> (TestDb, Proxy) {
    let db = TestDb::new();
    db.psql(FIXTURES_SQL);
    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", POOL_SIZE)
            .general("reserve_pool_size", 0),
    );
    (db, proxy)
}

fn options(proxy: &Proxy, token: &str) -> PgConnectOptions {
    PgConnectOptions::new()
        .host("127.0.0.1")
        .port(proxy.port())
        .username(CLIENT_USER)
        .password(token)
        .database(PROXY_DBNAME)
        .ssl_mode(PgSslMode::Disable)
}

async fn pool(proxy: &Proxy, token: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(SQLX_POOL_SIZE)
        .connect_with(options(proxy, token))
        .await
        .unwrap()
}

async fn connection(proxy: &Proxy, token: &str) -> PgConnection {
    PgConnection::connect_with(&options(proxy, token))
        .await
        .unwrap()
}

/// The SQLSTATE of a sqlx error, if PostgreSQL (or the proxy) sent one.
fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db_err| db_err.code())
        .map(|code| code.into_owned())
}

async fn direct_count(db: &TestDb, sql: &str) -> i64 {
    db.superuser()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

/// A Globex connection holding one pooled server with an open transaction; its pid.
async fn hold_server(proxy: &Proxy) -> (PgConnection, i32) {
    let mut holder = connection(proxy, &token_for(TENANT_GLOBEX)).await;
    holder.execute("BEGIN").await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    (holder, pid)
}

/// Calls `work` (one transaction, returning its backend pid) twice, the second time with the
/// first call's server held by another client, so the calls run on different servers.
async fn on_two_servers(proxy: &Proxy, mut work: impl AsyncFnMut() -> i32) {
    let (mut holder1, held1) = hold_server(proxy).await;
    let first = work().await;
    assert_ne!(first, held1, "work ran on the held server");
    let (mut holder2, held2) = hold_server(proxy).await;
    assert_eq!(held2, first, "the second holder got the only free server");
    holder1.execute("ROLLBACK").await.unwrap();
    let second = work().await;
    // Rolled back first: a client vanishing inside a transaction gets its server closed.
    holder2.execute("ROLLBACK").await.unwrap();
    assert_ne!(first, second, "both calls ran on one server");
    holder1.close().await.unwrap();
    holder2.close().await.unwrap();
}

/// A row for `query_as`: `FromRow` written by hand (sqlx's derive needs its macros feature).
#[derive(Debug, PartialEq)]
struct Invoice {
    tenant_id: String,
    amount: String,
    status: String,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Invoice {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(Invoice {
            tenant_id: row.try_get("tenant_id")?,
            amount: row.try_get("amount")?,
            status: row.try_get("status")?,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pools_of_two_tenants_see_only_their_own_rows_in_concurrent_tasks() {
    let (_db, proxy) = setup();
    let acme = pool(&proxy, &token_for(TENANT_ACME)).await;
    let globex = pool(&proxy, &token_for(TENANT_GLOBEX)).await;

    let invoices: Vec<Invoice> = sqlx::query_as(
        "SELECT tenant_id::text AS tenant_id, amount::text AS amount, status \
         FROM invoices ORDER BY amount, status",
    )
    .fetch_all(&acme)
    .await
    .unwrap();
    let expected = [("500.00", "draft"), ("500.00", "paid"), ("750.00", "sent")];
    assert_eq!(
        invoices,
        expected
            .iter()
            .map(|(amount, status)| Invoice {
                tenant_id: TENANT_ACME.to_owned(),
                amount: (*amount).to_owned(),
                status: (*status).to_owned(),
            })
            .collect::<Vec<_>>()
    );
    let globex_rows = sqlx::query("SELECT tenant_id::text FROM invoices")
        .fetch_all(&globex)
        .await
        .unwrap();
    assert_eq!(globex_rows.len() as i64, GLOBEX_INVOICES);
    for row in &globex_rows {
        assert_eq!(row.get::<String, _>(0), TENANT_GLOBEX);
    }

    // 4 + 4 sqlx connections on 2 servers, 40 tasks per tenant, each a prepared statement
    // with a bind; every answer must be the task's own tenant's.
    let mut tasks = Vec::new();
    for i in 0..80 {
        let (pool, tenant, invoices) = if i % 2 == 0 {
            (acme.clone(), TENANT_ACME, ACME_INVOICES)
        } else {
            (globex.clone(), TENANT_GLOBEX, GLOBEX_INVOICES)
        };
        tasks.push(tokio::spawn(async move {
            let (count, seen): (i64, String) = sqlx::query_as(
                "SELECT count(*), current_setting('app.current_tenant_id') \
                 FROM invoices WHERE amount >= $1",
            )
            .bind(i % 3)
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(seen, tenant, "tenant of task {i}");
            assert_eq!(count, invoices, "invoices of task {i}");
            let tenants: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT tenant_id::text FROM invoices")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            assert_eq!(tenants, [tenant], "tenants task {i} sees");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    acme.close().await;
    globex.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_refuses_another_tenants_row_and_the_connection_stays_usable() {
    let (db, proxy) = setup();
    let acme = pool(&proxy, &token_for(TENANT_ACME)).await;
    let err = sqlx::query(
        "INSERT INTO invoices (tenant_id, amount, status) VALUES ($1::uuid, 1, 'sqlx-foreign')",
    )
    .bind(TENANT_GLOBEX)
    .execute(&acme)
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    let tenant: String = sqlx::query_scalar(CURRENT_TENANT)
        .fetch_one(&acme)
        .await
        .unwrap();
    assert_eq!(tenant, TENANT_ACME);
    assert_eq!(
        direct_count(
            &db,
            "SELECT count(*) FROM invoices WHERE status = 'sqlx-foreign'"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_are_reused_across_transactions_and_servers() {
    let (_db, proxy) = setup();
    let mut acme = connection(&proxy, &token_for(TENANT_ACME)).await;
    let query = "SELECT pg_backend_pid(), count(*), current_setting('app.current_tenant_id') \
                 FROM invoices WHERE amount > $1 AND status IN ('paid', 'sent', 'draft')";
    let mut work = async || {
        let mut tx = acme.begin().await.unwrap();
        let (pid, count, tenant): (i32, i64, String) = sqlx::query_as(query)
            .bind(600)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(count, 1, "Acme's invoices above 600");
        assert_eq!(tenant, TENANT_ACME);
        tx.commit().await.unwrap();
        pid
    };
    for _ in 0..20 {
        work().await;
    }
    on_two_servers(&proxy, &mut work).await;
    on_two_servers(&proxy, &mut work).await;
    // The same statement also works in rolled-back transactions and in autocommit.
    for round in 0..5 {
        let mut tx = acme.begin().await.unwrap();
        let (_, count, tenant): (i32, i64, String) = sqlx::query_as(query)
            .bind(0)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!((count, tenant.as_str()), (ACME_INVOICES, TENANT_ACME));
        tx.rollback().await.unwrap();
        let (_, count, _): (i32, i64, String) = sqlx::query_as(query)
            .bind(round)
            .fetch_one(&mut acme)
            .await
            .unwrap();
        assert_eq!(count, ACME_INVOICES);
    }
    // sqlx kept it as a named statement (BEGIN/COMMIT go as simple queries, never cached).
    assert!(
        acme.cached_statements_size() >= 1,
        "sqlx cached no statement"
    );
    acme.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_statement_cache_evicts_and_reprepares_across_many_transactions() {
    let (_db, proxy) = setup();
    let capacity = 4;
    let mut acme = PgConnection::connect_with(
        &options(&proxy, &token_for(TENANT_ACME)).statement_cache_capacity(capacity),
    )
    .await
    .unwrap();
    let mut globex = connection(&proxy, &token_for(TENANT_GLOBEX)).await;
    for round in 0..5i32 {
        let mut tx = acme.begin().await.unwrap();
        for i in 0..12i32 {
            let sql = format!(
                "SELECT $1::int + {i}, current_setting('app.current_tenant_id'), \
                 (SELECT count(*) FROM invoices WHERE status IN ('paid', 'sent', 'draft'))"
            );
            let (sum, tenant, count): (i32, String, i64) = sqlx::query_as(&sql)
                .bind(round)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(sum, round + i, "statement {i} of round {round}");
            assert_eq!(tenant, TENANT_ACME);
            assert_eq!(count, ACME_INVOICES);
            if i == 6 {
                // Commit mid-round, so the evicted statements' Close spans transactions.
                tx.commit().await.unwrap();
                tx = acme.begin().await.unwrap();
            }
        }
        tx.commit().await.unwrap();
        assert!(acme.cached_statements_size() <= capacity);
        // Another client between the rounds, on whichever server is free.
        let (count, tenant): (i64, String) = sqlx::query_as(
            "SELECT count(*), current_setting('app.current_tenant_id') FROM invoices",
        )
        .fetch_one(&mut globex)
        .await
        .unwrap();
        assert_eq!((count, tenant.as_str()), (GLOBEX_INVOICES, TENANT_GLOBEX));
    }
    acme.close().await.unwrap();
    globex.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_begin_commits_and_rolls_back_in_the_own_tenant() {
    let (db, proxy) = setup();
    let acme = pool(&proxy, &token_for(TENANT_ACME)).await;
    let globex = pool(&proxy, &token_for(TENANT_GLOBEX)).await;
    let insert = "INSERT INTO invoices (tenant_id, amount, status) VALUES ($1::uuid, $2, $3)";

    let mut tx = acme.begin().await.unwrap();
    sqlx::query(insert)
        .bind(TENANT_ACME)
        .bind(1)
        .bind("sqlx-rollback")
        .execute(&mut *tx)
        .await
        .unwrap();
    let inside: i64 =
        sqlx::query_scalar("SELECT count(*) FROM invoices WHERE status = 'sqlx-rollback'")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(inside, 1, "own insert inside the transaction");
    tx.rollback().await.unwrap();

    // A dropped transaction rolls back too.
    {
        let mut tx = acme.begin().await.unwrap();
        sqlx::query(insert)
            .bind(TENANT_ACME)
            .bind(2)
            .bind("sqlx-dropped")
            .execute(&mut *tx)
            .await
            .unwrap();
    }

    let mut tx = acme.begin().await.unwrap();
    sqlx::query(insert)
        .bind(TENANT_ACME)
        .bind(3)
        .bind("sqlx-commit")
        .execute(&mut *tx)
        .await
        .unwrap();
    // A nested transaction is a savepoint: rolled back, the outer one goes on.
    let mut nested = tx.begin().await.unwrap();
    sqlx::query(insert)
        .bind(TENANT_ACME)
        .bind(4)
        .bind("sqlx-savepoint")
        .execute(&mut *nested)
        .await
        .unwrap();
    let err = sqlx::query("SELECT 1/0")
        .execute(&mut *nested)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"), "{err}");
    nested.rollback().await.unwrap();
    let tenant: String = sqlx::query_scalar(CURRENT_TENANT)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenant, TENANT_ACME, "tenant after ROLLBACK TO SAVEPOINT");
    tx.commit().await.unwrap();

    for (status, expected) in [
        ("sqlx-rollback", 0),
        ("sqlx-dropped", 0),
        ("sqlx-savepoint", 0),
        ("sqlx-commit", 1),
    ] {
        let rows = direct_count(
            &db,
            &format!(
                "SELECT count(*) FROM invoices WHERE status = '{status}' \
                 AND tenant_id = '{TENANT_ACME}'"
            ),
        )
        .await;
        assert_eq!(rows, expected, "rows with status {status}");
    }
    let seen: i64 =
        sqlx::query_scalar("SELECT count(*) FROM invoices WHERE status = 'sqlx-commit'")
            .fetch_one(&globex)
            .await
            .unwrap();
    assert_eq!(seen, 0, "Acme's committed row seen by Globex");
    let demo: i64 = sqlx::query_scalar(COUNT_DEMO_ROWS)
        .fetch_one(&acme)
        .await
        .unwrap();
    assert_eq!(demo, ACME_INVOICES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_raw_rows_get_the_own_tenant_and_copy_out_raw_sees_only_own_rows() {
    let (db, proxy) = setup();
    let acme = pool(&proxy, &token_for(TENANT_ACME)).await;
    let globex = pool(&proxy, &token_for(TENANT_GLOBEX)).await;

    let mut copy = acme
        .copy_in_raw("COPY sqlx_import (n, label) FROM STDIN")
        .await
        .unwrap();
    for chunk in 0..10 {
        let data: String = (0..1000)
            .map(|i| format!("{}\tsqlx-copy-a\n", chunk * 1000 + i))
            .collect();
        copy.send(data.as_bytes()).await.unwrap();
    }
    assert_eq!(copy.finish().await.unwrap(), 10_000);

    let mut copy = globex
        .copy_in_raw("COPY sqlx_import (n, label) FROM STDIN WITH (FORMAT csv)")
        .await
        .unwrap();
    copy.send(&b"1,sqlx-copy-b\n2,sqlx-copy-b\n"[..])
        .await
        .unwrap();
    assert_eq!(copy.finish().await.unwrap(), 2);

    // An aborted COPY (CopyFail) leaves nothing and the pool goes on.
    let mut copy = acme
        .copy_in_raw("COPY sqlx_import (n, label) FROM STDIN")
        .await
        .unwrap();
    copy.send(&b"1\tsqlx-copy-aborted\n"[..]).await.unwrap();
    copy.abort("the test changed its mind").await.unwrap();

    let counts = db
        .superuser()
        .await
        .query(
            "SELECT label, tenant_id::text, count(*) FROM sqlx_import GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect::<Vec<(String, String, i64)>>();
    assert_eq!(
        counts,
        [
            ("sqlx-copy-a".to_owned(), TENANT_ACME.to_owned(), 10_000),
            ("sqlx-copy-b".to_owned(), TENANT_GLOBEX.to_owned(), 2),
        ]
    );

    // COPY into a table with RLS is refused by PostgreSQL itself.
    let err = acme
        .copy_in_raw("COPY invoices (tenant_id, amount) FROM STDIN")
        .await
        .err()
        .expect("COPY FROM into invoices (RLS) must fail");
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err}");

    let chunks: Vec<_> = acme
        .copy_out_raw("COPY invoices (tenant_id, status) TO STDOUT")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let text = String::from_utf8(chunks.concat()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as i64, ACME_INVOICES, "{text}");
    for line in &lines {
        assert!(line.starts_with(&format!("{TENANT_ACME}\t")), "{line}");
    }
    let chunks: Vec<_> = globex
        .copy_out_raw("COPY (SELECT amount FROM invoices ORDER BY amount) TO STDOUT (FORMAT csv)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(chunks.concat()).unwrap(),
        "4900.00\n5000.00\n"
    );
    let tenant: String = sqlx::query_scalar(CURRENT_TENANT)
        .fetch_one(&acme)
        .await
        .unwrap();
    assert_eq!(tenant, TENANT_ACME, "tenant after COPY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_follow_their_connection_and_no_other() {
    let (_db, proxy) = setup();
    let mut acme = connection(&proxy, &token_for(TENANT_ACME)).await;
    let mut other = connection(&proxy, &token_for(TENANT_ACME)).await;
    let globex = pool(&proxy, &token_for(TENANT_GLOBEX)).await;

    sqlx::query("SET search_path = sqlx_alt, public")
        .execute(&mut acme)
        .await
        .unwrap();
    sqlx::raw_sql("SET statement_timeout = '4321ms'")
        .execute(&mut acme)
        .await
        .unwrap();
    let mut work = async || {
        let mut tx = acme.begin().await.unwrap();
        let (label, timeout, tenant, pid): (String, String, String, i32) = sqlx::query_as(
            "SELECT label, current_setting('statement_timeout'), \
             current_setting('app.current_tenant_id'), pg_backend_pid() FROM sqlx_marker",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(label, "alt", "Acme's search_path");
        assert_eq!(timeout, "4321ms", "Acme's statement_timeout");
        assert_eq!(tenant, TENANT_ACME);
        tx.commit().await.unwrap();
        pid
    };
    for _ in 0..3 {
        work().await;
    }
    on_two_servers(&proxy, &mut work).await;
    for _ in 0..4 {
        let (label, timeout): (String, String) =
            sqlx::query_as("SELECT label, current_setting('statement_timeout') FROM sqlx_marker")
                .fetch_one(&globex)
                .await
                .unwrap();
        assert_eq!(
            (label.as_str(), timeout.as_str()),
            ("public", "0"),
            "Globex"
        );
        let (label, timeout): (String, String) =
            sqlx::query_as("SELECT label, current_setting('statement_timeout') FROM sqlx_marker")
                .fetch_one(&mut other)
                .await
                .unwrap();
        assert_eq!(
            (label.as_str(), timeout.as_str()),
            ("public", "0"),
            "Acme's other connection"
        );
    }
    // A SET in a rolled-back transaction is undone.
    let mut tx = acme.begin().await.unwrap();
    sqlx::query("SET search_path = public")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let label: String = sqlx::query_scalar("SELECT label FROM sqlx_marker")
        .fetch_one(&mut acme)
        .await
        .unwrap();
    assert_eq!(label, "alt", "search_path after a rolled-back SET");
    acme.close().await.unwrap();
    other.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_options_and_after_connect_settings_hold_on_every_pool_connection() {
    let (_db, proxy) = setup();
    // Startup `options` (-c search_path=...) and an after_connect SET, sqlx's two idioms for
    // per-connection settings.
    let acme = PgPoolOptions::new()
        .max_connections(SQLX_POOL_SIZE)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("SET work_mem = '7777kB'").await?;
                Ok(())
            })
        })
        .connect_with(
            options(&proxy, &token_for(TENANT_ACME))
                .options([("search_path", "sqlx_alt,public")])
                .application_name("sqlx-acme"),
        )
        .await
        .unwrap();
    let globex = pool(&proxy, &token_for(TENANT_GLOBEX)).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (acme, globex) = (acme.clone(), globex.clone());
        tasks.push(tokio::spawn(async move {
            let mut tx = acme.begin().await.unwrap();
            let (label, work_mem, app, tenant): (String, String, String, String) = sqlx::query_as(
                "SELECT label, current_setting('work_mem'), \
                     current_setting('application_name'), \
                     current_setting('app.current_tenant_id') FROM sqlx_marker",
            )
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            assert_eq!(
                (
                    label.as_str(),
                    work_mem.as_str(),
                    app.as_str(),
                    tenant.as_str()
                ),
                ("alt", "7777kB", "sqlx-acme", TENANT_ACME),
                "Acme's settings in task {i}"
            );
            tx.commit().await.unwrap();
            let (label, work_mem, app): (String, String, String) = sqlx::query_as(
                "SELECT label, current_setting('work_mem'), \
                 current_setting('application_name') FROM sqlx_marker",
            )
            .fetch_one(&globex)
            .await
            .unwrap();
            assert_eq!(label, "public", "Globex's search_path in task {i}");
            assert_ne!(work_mem, "7777kB", "Globex's work_mem in task {i}");
            assert_ne!(app, "sqlx-acme", "Globex's application_name in task {i}");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sql_multi_statement_queries_run_in_the_own_tenant() {
    let (db, proxy) = setup();
    let mut acme = connection(&proxy, &token_for(TENANT_ACME)).await;
    let rows = sqlx::raw_sql(&format!(
        "INSERT INTO invoices (tenant_id, amount, status) VALUES ('{TENANT_ACME}', 1, 'sqlx-raw'); \
         SELECT current_setting('app.current_tenant_id'); \
         SELECT count(*)::text FROM invoices WHERE status = 'sqlx-raw'"
    ))
    .fetch_all(&mut acme)
    .await
    .unwrap();
    let values: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(values, [TENANT_ACME, "1"]);
    // A transaction spanning raw_sql calls, with a COMMIT in the middle of one of them.
    sqlx::raw_sql("BEGIN; DELETE FROM invoices WHERE status = 'sqlx-raw'")
        .execute(&mut acme)
        .await
        .unwrap();
    let rows = sqlx::raw_sql(
        "COMMIT; SELECT current_setting('app.current_tenant_id'), \
         (SELECT count(*) FROM invoices)::text",
    )
    .fetch_all(&mut acme)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<String, _>(0), TENANT_ACME);
    assert_eq!(rows[0].get::<String, _>(1), ACME_INVOICES.to_string());
    assert_eq!(
        direct_count(
            &db,
            "SELECT count(*) FROM invoices WHERE status = 'sqlx-raw'"
        )
        .await,
        0
    );
    acme.close().await.unwrap();
}
