//! Transaction-mode behaviour through the proxy: every transaction that runs a client statement
//! has the client's tenant set (autocommit, explicit, multi-statement, after a COMMIT inside
//! one query, chained, pipelined), no server ever goes back to the pool with a transaction or
//! a tenant left on it (also when a client fails a transaction or vanishes in the middle of
//! one), a transaction left idle past `idle_transaction_timeout` ends its session (25P03) and
//! is rolled back, and statements that cannot run in a transaction block still work.

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::future::join_all;
use support::raw::{error_field, raw_login, raw_query, read_msg};
use support::*;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// Polls of `pg_stat_activity` before giving up on a condition (100 ms apart).
const POLLS: usize = 150;
/// Bound on any single wait for the proxy, so that a stuck pool fails the test instead of
/// hanging it.
const HANG_GUARD: Duration = Duration::from_secs(20);

async fn simple(client: &Client, sql: &str) -> Vec<String> {
    simple_column(&client.simple_query(sql).await.unwrap())
}

/// `api_user` backends of `db` whose state starts with `state` (e.g. `idle in transaction`,
/// which also matches `idle in transaction (aborted)`).
async fn api_backends_in_state(superuser: &Client, db: &TestDb, state: &str) -> i64 {
    let pattern = format!("{state}%");
    superuser
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = $1 AND datname = $2 AND state LIKE $3",
            &[&API_USER, &db.name(), &pattern],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls until no `api_user` backend of `db` is in a transaction; returns the last count.
async fn wait_for_no_open_transaction(superuser: &Client, db: &TestDb) -> i64 {
    let mut open = 0;
    for _ in 0..POLLS {
        open = api_backends_in_state(superuser, db, "idle in transaction").await;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    open
}

/// Polls until exactly one `api_user` backend of `db` is in `state` (`idle in transaction`,
/// `idle in transaction (aborted)`).
async fn wait_for_one_backend_in(superuser: &Client, db: &TestDb, state: &str) {
    let mut seen = 0;
    for _ in 0..POLLS {
        seen = api_backends_in_state(superuser, db, state).await;
        if seen == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("expected one api_user backend in state {state:?}, saw {seen}");
}

/// SQLSTATE and message of an error, for failure lists.
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => err.to_string(),
    }
}

async fn guarded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no answer from the proxy within {HANG_GUARD:?}"),
    }
}

fn single_server(db: &TestDb) -> Proxy {
    Proxy::start(ProxyConfig::for_db(db).general("default_pool_size", 1))
}

#[tokio::test]
async fn autocommit_statement_runs_in_own_tenant_in_both_protocols() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let acme = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let globex = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    for _ in 0..3 {
        assert_eq!(simple(&acme, CURRENT_TENANT).await, [TENANT_ACME]);
        assert_eq!(current_tenant(&acme).await, TENANT_ACME);
        assert_eq!(simple(&globex, CURRENT_TENANT).await, [TENANT_GLOBEX]);
        assert_eq!(current_tenant(&globex).await, TENANT_GLOBEX);
        assert_eq!(invoice_count(&acme).await, ACME_INVOICES);
        assert_eq!(
            simple(&globex, "SELECT count(*) FROM invoices").await,
            [GLOBEX_INVOICES.to_string()]
        );
    }
}

#[tokio::test]
async fn explicit_transaction_runs_in_own_tenant_in_both_protocols() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let mut client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();

    // Simple-protocol BEGIN, statements in both protocols, simple COMMIT.
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(simple(&client, CURRENT_TENANT).await, [TENANT_ACME]);
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
    client
        .execute(
            "INSERT INTO invoices (tenant_id, amount, status) \
             VALUES (current_setting('app.current_tenant_id')::uuid, 10.00, 'explicit')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(invoice_count(&client).await, ACME_INVOICES + 1);
    assert_eq!(simple(&client, CURRENT_TENANT).await, [TENANT_ACME]);
    client.batch_execute("COMMIT").await.unwrap();

    // Extended-protocol BEGIN and COMMIT.
    client.execute("BEGIN", &[]).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
    assert_eq!(simple(&client, CURRENT_TENANT).await, [TENANT_ACME]);
    assert_eq!(invoice_count(&client).await, ACME_INVOICES + 1);
    client.execute("COMMIT", &[]).await.unwrap();

    // tokio-postgres's own transaction API.
    let tx = client.transaction().await.unwrap();
    assert_eq!(current_tenant(&tx).await, TENANT_ACME);
    tx.execute(
        "UPDATE invoices SET status = 'done' WHERE status = 'explicit'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(current_tenant(&tx).await, TENANT_ACME);
    tx.commit().await.unwrap();

    assert_eq!(
        db.psql(&format!(
            "SELECT count(*) FROM invoices WHERE status = 'done' AND tenant_id = '{TENANT_ACME}'"
        )),
        "1"
    );
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
}

#[tokio::test]
async fn start_transaction_runs_in_own_tenant() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let client = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();

    client.batch_execute("START TRANSACTION").await.unwrap();
    assert_eq!(simple(&client, CURRENT_TENANT).await, [TENANT_GLOBEX]);
    assert_eq!(invoice_count(&client).await, GLOBEX_INVOICES);
    client.batch_execute("COMMIT").await.unwrap();

    client.execute("START TRANSACTION", &[]).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_GLOBEX);
    assert_eq!(simple(&client, CURRENT_TENANT).await, [TENANT_GLOBEX]);
    client.execute("COMMIT", &[]).await.unwrap();

    client
        .batch_execute("START TRANSACTION READ ONLY")
        .await
        .unwrap();
    assert_eq!(simple(&client, "SHOW transaction_read_only").await, ["on"]);
    assert_eq!(current_tenant(&client).await, TENANT_GLOBEX);
    client.batch_execute("COMMIT").await.unwrap();

    assert_eq!(
        simple(
            &client,
            "START TRANSACTION READ ONLY; \
             SELECT current_setting('app.current_tenant_id'); COMMIT"
        )
        .await,
        [TENANT_GLOBEX]
    );
}

/// PostgreSQL refuses to change the isolation level once the transaction ran a query (25001
/// "must be called before any query"), so the tenant must not be set by a query that runs
/// before the client's BEGIN/SET TRANSACTION in the same transaction.
#[tokio::test]
async fn transaction_with_an_isolation_level_gets_that_level_and_the_tenant() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let mut client = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();

    let attempts: [(&str, &[&str], &str); 4] = [
        (
            "simple START TRANSACTION ISOLATION LEVEL",
            &["START TRANSACTION ISOLATION LEVEL REPEATABLE READ"],
            "repeatable read",
        ),
        (
            "simple BEGIN ISOLATION LEVEL",
            &["BEGIN ISOLATION LEVEL SERIALIZABLE"],
            "serializable",
        ),
        (
            "BEGIN then SET TRANSACTION",
            &["BEGIN", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
            "serializable",
        ),
        (
            "one query",
            &["BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"],
            "repeatable read",
        ),
    ];
    // Every way is tried, and the failures are reported together.
    let mut failures = Vec::new();
    for (what, statements, level) in attempts {
        let mut started = Ok(());
        for statement in statements {
            started = started.and(client.batch_execute(statement).await);
        }
        if let Err(err) = started {
            failures.push(format!("{what}: {}", describe(&err)));
            client.batch_execute("ROLLBACK").await.unwrap();
            continue;
        }
        assert_eq!(
            simple(&client, "SHOW transaction_isolation").await,
            [level],
            "{what}"
        );
        assert_eq!(
            simple(&client, CURRENT_TENANT).await,
            [TENANT_GLOBEX],
            "{what}"
        );
        assert_eq!(invoice_count(&client).await, GLOBEX_INVOICES, "{what}");
        client.batch_execute("COMMIT").await.unwrap();
    }

    match client
        .execute("START TRANSACTION ISOLATION LEVEL REPEATABLE READ", &[])
        .await
    {
        Ok(_) => {
            assert_eq!(current_tenant(&client).await, TENANT_GLOBEX);
            client.execute("COMMIT", &[]).await.unwrap();
        }
        Err(err) => {
            failures.push(format!(
                "extended START TRANSACTION ISOLATION LEVEL: {}",
                describe(&err)
            ));
            client.batch_execute("ROLLBACK").await.unwrap();
        }
    }

    match client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::Serializable)
        .start()
        .await
    {
        Ok(tx) => {
            let level: String = tx
                .query_one("SHOW transaction_isolation", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(level, "serializable");
            assert_eq!(current_tenant(&tx).await, TENANT_GLOBEX);
            tx.commit().await.unwrap();
        }
        Err(err) => failures.push(format!(
            "tokio-postgres build_transaction: {}",
            describe(&err)
        )),
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn multi_statement_query_runs_in_own_tenant() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(
        simple(
            &client,
            "SELECT 1; SELECT current_setting('app.current_tenant_id')"
        )
        .await,
        ["1", TENANT_ACME]
    );
    assert_eq!(
        simple(
            &client,
            "SELECT current_setting('app.current_tenant_id'); \
             SELECT count(*) FROM invoices; \
             SELECT current_setting('app.current_tenant_id')"
        )
        .await,
        [TENANT_ACME, &ACME_INVOICES.to_string(), TENANT_ACME]
    );
}

#[tokio::test]
async fn begin_that_is_not_the_first_statement_keeps_the_tenant() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(
        simple(
            &client,
            "SELECT 1; BEGIN; SELECT current_setting('app.current_tenant_id'); COMMIT"
        )
        .await,
        ["1", TENANT_ACME]
    );

    // A BEGIN in the middle of a query that does not commit leaves the transaction open:
    // the tenant lasts until the client's COMMIT.
    assert_eq!(
        simple(
            &client,
            "SELECT 1; BEGIN; SELECT current_setting('app.current_tenant_id')"
        )
        .await,
        ["1", TENANT_ACME]
    );
    assert_eq!(simple(&client, CURRENT_TENANT).await, [TENANT_ACME]);
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
}

/// Needs the SQL scanner to find the COMMIT/ROLLBACK inside the query (`src/sql`).
#[tokio::test]
async fn statements_after_commit_in_one_query_run_in_own_tenant() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(
        simple(
            &client,
            "BEGIN; SELECT 1; COMMIT; SELECT current_setting('app.current_tenant_id')"
        )
        .await,
        ["1", TENANT_ACME]
    );
    assert_eq!(
        simple(
            &client,
            "BEGIN; SELECT 1; ROLLBACK; SELECT current_setting('app.current_tenant_id')"
        )
        .await,
        ["1", TENANT_ACME]
    );
    assert_eq!(
        simple(
            &client,
            "BEGIN; SELECT current_setting('app.current_tenant_id'); COMMIT; \
             BEGIN; SELECT current_setting('app.current_tenant_id'); COMMIT; \
             SELECT count(*) FROM invoices"
        )
        .await,
        [TENANT_ACME, TENANT_ACME, &ACME_INVOICES.to_string()]
    );
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
}

/// Needs the SQL scanner to recognise `COMMIT AND CHAIN` (`src/sql`).
#[tokio::test]
async fn commit_and_chain_sets_the_tenant_in_the_chained_transaction() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let client = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();

    // Simple protocol.
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(simple(&client, CURRENT_TENANT).await, [TENANT_GLOBEX]);
    client.batch_execute("COMMIT AND CHAIN").await.unwrap();
    assert_eq!(simple(&client, CURRENT_TENANT).await, [TENANT_GLOBEX]);
    assert_eq!(invoice_count(&client).await, GLOBEX_INVOICES);
    client.batch_execute("COMMIT").await.unwrap();

    // Extended protocol.
    client.execute("BEGIN", &[]).await.unwrap();
    client.execute("COMMIT AND CHAIN", &[]).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_GLOBEX);
    assert_eq!(invoice_count(&client).await, GLOBEX_INVOICES);
    client.execute("ROLLBACK AND CHAIN", &[]).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_GLOBEX);
    client.execute("COMMIT", &[]).await.unwrap();

    // Inside one multi-statement query.
    assert_eq!(
        simple(
            &client,
            "BEGIN; SELECT 1; COMMIT AND CHAIN; \
             SELECT current_setting('app.current_tenant_id'); COMMIT"
        )
        .await,
        ["1", TENANT_GLOBEX]
    );
    assert_eq!(current_tenant(&client).await, TENANT_GLOBEX);
}

#[tokio::test]
async fn pipelined_extended_queries_run_in_own_tenant() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 2));
    let acme = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let globex = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();

    // Unprepared: each query is Parse/Describe/Sync then Bind/Execute/Sync, interleaved.
    let replies = join_all((0..8).map(|i| {
        let client = if i % 2 == 0 { &acme } else { &globex };
        client.query(CURRENT_TENANT, &[])
    }))
    .await;
    for (i, reply) in replies.into_iter().enumerate() {
        let expected = if i % 2 == 0 {
            TENANT_ACME
        } else {
            TENANT_GLOBEX
        };
        let rows = reply.unwrap();
        assert_eq!(rows[0].get::<_, String>(0), expected, "query {i}");
    }

    // Prepared once, then many Bind/Execute/Sync batches in a row.
    let setting = acme.prepare(CURRENT_TENANT).await.unwrap();
    let count = acme.prepare("SELECT count(*) FROM invoices").await.unwrap();
    let replies = join_all((0..10).map(|i| {
        let statement = if i % 2 == 0 { &setting } else { &count };
        acme.query(statement, &[])
    }))
    .await;
    for (i, reply) in replies.into_iter().enumerate() {
        let row = &reply.unwrap()[0];
        if i % 2 == 0 {
            assert_eq!(row.get::<_, String>(0), TENANT_ACME, "query {i}");
        } else {
            assert_eq!(row.get::<_, i64>(0), ACME_INVOICES, "query {i}");
        }
    }

    // Pipelined inside an explicit transaction.
    acme.batch_execute("BEGIN").await.unwrap();
    let replies = join_all((0..6).map(|_| acme.query(&setting, &[]))).await;
    for reply in replies {
        assert_eq!(reply.unwrap()[0].get::<_, String>(0), TENANT_ACME);
    }
    acme.batch_execute("COMMIT").await.unwrap();

    // Pipelined together with simple queries.
    let extended = acme.query(&setting, &[]);
    let simple_query = acme.simple_query(CURRENT_TENANT);
    let (extended, simple_reply) = futures_util::future::join(extended, simple_query).await;
    assert_eq!(extended.unwrap()[0].get::<_, String>(0), TENANT_ACME);
    assert_eq!(simple_column(&simple_reply.unwrap()), [TENANT_ACME]);
}

#[tokio::test]
async fn no_server_is_left_in_a_transaction_or_showing_a_tenant_after_clients_finish() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 2));
    let superuser = db.superuser().await;
    let mut acme = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let globex = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();

    assert_eq!(current_tenant(&acme).await, TENANT_ACME);
    acme.batch_execute("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(simple(&acme, CURRENT_TENANT).await, [TENANT_ACME]);
    acme.batch_execute("COMMIT").await.unwrap();
    let tx = acme.transaction().await.unwrap();
    assert_eq!(current_tenant(&tx).await, TENANT_ACME);
    tx.rollback().await.unwrap();
    globex.batch_execute("BEGIN").await.unwrap();
    let err = globex.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("22012"));
    globex.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        simple(
            &globex,
            "SELECT 1; SELECT current_setting('app.current_tenant_id')"
        )
        .await,
        ["1", TENANT_GLOBEX]
    );
    let replies = join_all((0..4).map(|_| globex.query(CURRENT_TENANT, &[]))).await;
    for reply in replies {
        assert_eq!(reply.unwrap()[0].get::<_, String>(0), TENANT_GLOBEX);
    }

    // batch_execute returns on ReadyForQuery: the servers' states are settled by then.
    acme.batch_execute("SELECT 1").await.unwrap();
    globex.batch_execute("SELECT 1").await.unwrap();
    // Both clients are still connected, between transactions: their servers are idle.
    assert_eq!(
        api_backends_in_state(&superuser, &db, "idle in transaction").await,
        0
    );
    assert_eq!(api_backends_in_state(&superuser, &db, "active").await, 0);
    assert!(api_backends_in_state(&superuser, &db, "idle").await >= 1);
    // The tenant travels as a bound parameter, never in query text a server shows.
    let shown: Vec<String> = superuser
        .query(
            "SELECT coalesce(query, '') FROM pg_stat_activity WHERE usename = $1 AND datname = $2",
            &[&API_USER, &db.name()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    for query in &shown {
        assert!(
            !query.contains(TENANT_ACME) && !query.contains(TENANT_GLOBEX),
            "a server shows a tenant id in its query text: {query}"
        );
    }

    drop(acme);
    drop(globex);
    assert_eq!(wait_for_no_open_transaction(&superuser, &db).await, 0);
}

#[tokio::test]
async fn transaction_scoped_tenant_never_reaches_the_next_client() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let mut acme = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let globex = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();

    for round in 0..3 {
        // Acme: explicit transaction in the simple protocol, then Globex autocommit.
        acme.batch_execute("BEGIN").await.unwrap();
        assert_eq!(
            simple(&acme, CURRENT_TENANT).await,
            [TENANT_ACME],
            "{round}"
        );
        acme.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            simple(&globex, CURRENT_TENANT).await,
            [TENANT_GLOBEX],
            "{round}"
        );
        assert_eq!(invoice_count(&globex).await, GLOBEX_INVOICES, "{round}");

        // Acme: extended-protocol transaction, then Globex's pipelined queries.
        let tx = acme.transaction().await.unwrap();
        assert_eq!(invoice_count(&tx).await, ACME_INVOICES, "{round}");
        tx.commit().await.unwrap();
        let replies = join_all((0..3).map(|_| globex.query(CURRENT_TENANT, &[]))).await;
        for reply in replies {
            assert_eq!(reply.unwrap()[0].get::<_, String>(0), TENANT_GLOBEX);
        }

        // Globex: multi-statement query, then Acme autocommit.
        assert_eq!(
            simple(
                &globex,
                "SELECT current_setting('app.current_tenant_id'); SELECT count(*) FROM invoices"
            )
            .await,
            [TENANT_GLOBEX, &GLOBEX_INVOICES.to_string()]
        );
        assert_eq!(current_tenant(&acme).await, TENANT_ACME, "{round}");
        assert_eq!(invoice_count(&acme).await, ACME_INVOICES, "{round}");
    }

    // Globex waits for the only server while Acme's transaction holds it; when Acme commits,
    // Globex's queries run on that very server and must see Globex only.
    acme.batch_execute("BEGIN").await.unwrap();
    assert_eq!(simple(&acme, CURRENT_TENANT).await, [TENANT_ACME]);
    let waiting = tokio::spawn(async move {
        let setting = current_tenant(&globex).await;
        let count = invoice_count(&globex).await;
        let simple_setting = simple(&globex, CURRENT_TENANT).await;
        (setting, count, simple_setting)
    });
    assert_eq!(invoice_count(&acme).await, ACME_INVOICES);
    acme.batch_execute("COMMIT").await.unwrap();
    let (setting, count, simple_setting) = guarded("waiting client", waiting).await.unwrap();
    assert_eq!(setting, TENANT_GLOBEX);
    assert_eq!(count, GLOBEX_INVOICES);
    assert_eq!(simple_setting, [TENANT_GLOBEX]);
    assert_eq!(current_tenant(&acme).await, TENANT_ACME);
}

/// After a failed transaction was rolled back: the next transaction works and has the tenant,
/// nothing of the failed one was kept, and the single server serves another tenant cleanly.
async fn assert_recovered_from_failed_transaction(proxy: &Proxy, db: &TestDb, client: &Client) {
    client.batch_execute("BEGIN").await.unwrap();
    assert_eq!(simple(client, CURRENT_TENANT).await, [TENANT_ACME]);
    assert_eq!(current_tenant(client).await, TENANT_ACME);
    assert_eq!(invoice_count(client).await, ACME_INVOICES);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        db.psql("SELECT count(*) FROM invoices WHERE status = 'failed-txn'"),
        "0"
    );
    let globex = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    assert_eq!(current_tenant(&globex).await, TENANT_GLOBEX);
}

const INSERT_FAILED_TXN_MARKER: &str = "INSERT INTO invoices (tenant_id, amount, status) \
     VALUES (current_setting('app.current_tenant_id')::uuid, 1.00, 'failed-txn')";

#[tokio::test]
async fn failed_simple_protocol_transaction_reports_25p02_until_rollback() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();

    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(INSERT_FAILED_TXN_MARKER)
        .await
        .unwrap();
    let err = client.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("22012"), "{err}");
    let err = client.batch_execute(CURRENT_TENANT).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("25P02"), "{err}");
    let err = client.query(CURRENT_TENANT, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("25P02"), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_recovered_from_failed_transaction(&proxy, &db, &client).await;
}

#[tokio::test]
async fn failed_extended_protocol_transaction_reports_25p02_until_rollback() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();

    client.execute("BEGIN", &[]).await.unwrap();
    client.execute(INSERT_FAILED_TXN_MARKER, &[]).await.unwrap();
    let err = client.execute("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("22012"), "{err}");
    let err = client.query(CURRENT_TENANT, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("25P02"), "{err}");
    let err = client.simple_query(CURRENT_TENANT).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("25P02"), "{err}");
    // PostgreSQL accepts a ROLLBACK (Parse, Bind, Execute) in a failed transaction.
    client
        .execute("ROLLBACK", &[])
        .await
        .unwrap_or_else(|err| panic!("extended-protocol ROLLBACK refused: {}", describe(&err)));
    assert_recovered_from_failed_transaction(&proxy, &db, &client).await;
}

#[tokio::test]
async fn error_inside_a_multi_statement_query_skips_the_rest_until_rollback() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();

    let err = client
        .batch_execute(&format!(
            "BEGIN; {INSERT_FAILED_TXN_MARKER}; SELECT 1/0; COMMIT; \
             SELECT current_setting('app.current_tenant_id')"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("22012"), "{err}");
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("25P02"), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_recovered_from_failed_transaction(&proxy, &db, &client).await;
}

/// Opens a transaction with an uncommitted invoice on `client`.
async fn open_transaction_with_uncommitted_invoice(client: &Client) {
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "INSERT INTO invoices (tenant_id, amount, status) \
             VALUES (current_setting('app.current_tenant_id')::uuid, 9.99, 'uncommitted')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(current_tenant(client).await, TENANT_ACME);
    // batch_execute returns on ReadyForQuery, so the server's state is settled by then.
    client.batch_execute("SELECT 1").await.unwrap();
}

/// After a client vanished mid-transaction: no open transaction remains, nothing of it was
/// committed, and the (single-server) pool serves other clients in their own tenant.
async fn assert_pool_recovered(proxy: &Proxy, db: &TestDb, superuser: &Client) {
    assert_eq!(
        wait_for_no_open_transaction(superuser, db).await,
        0,
        "a server stayed idle in transaction"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM invoices WHERE status = 'uncommitted'"),
        "0"
    );
    let globex = guarded(
        "connect after the kill",
        proxy.connect(&token_for(TENANT_GLOBEX)),
    )
    .await
    .unwrap();
    assert_eq!(
        guarded("query after the kill", current_tenant(&globex)).await,
        TENANT_GLOBEX
    );
    assert_eq!(simple(&globex, CURRENT_TENANT).await, [TENANT_GLOBEX]);
    let acme = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(
        guarded("query after the kill", invoice_count(&acme)).await,
        ACME_INVOICES
    );
}

/// A client of `tenant` whose socket [`vanish`] can drop without a Terminate message.
async fn vanishable_client(proxy: &Proxy, tenant: &str) -> (Client, JoinHandle<()>) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .unwrap();
    let (client, connection) = proxy
        .client_config(&token_for(tenant))
        .connect_raw(stream, NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, connection)
}

/// Closes a [`vanishable_client`]'s socket as a crashed client would: no Terminate.
async fn vanish(client: Client, connection: JoinHandle<()>) {
    connection.abort();
    let _ = connection.await;
    drop(client);
}

#[tokio::test]
async fn client_vanishing_mid_transaction_leaves_no_open_transaction() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let superuser = db.superuser().await;

    let (client, connection) = vanishable_client(&proxy, TENANT_ACME).await;
    open_transaction_with_uncommitted_invoice(&client).await;
    assert_eq!(
        api_backends_in_state(&superuser, &db, "idle in transaction").await,
        1
    );

    vanish(client, connection).await;
    assert_pool_recovered(&proxy, &db, &superuser).await;
}

#[tokio::test]
async fn client_terminating_mid_transaction_leaves_no_open_transaction() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let superuser = db.superuser().await;
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    open_transaction_with_uncommitted_invoice(&client).await;
    assert_eq!(
        api_backends_in_state(&superuser, &db, "idle in transaction").await,
        1
    );
    // Dropping the client makes tokio-postgres send Terminate and close.
    drop(client);
    assert_pool_recovered(&proxy, &db, &superuser).await;
}

#[tokio::test]
async fn client_vanishing_in_a_failed_transaction_leaves_no_open_transaction() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let superuser = db.superuser().await;
    let (client, connection) = vanishable_client(&proxy, TENANT_ACME).await;
    open_transaction_with_uncommitted_invoice(&client).await;
    let err = client.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("22012"));
    // The client has its error before the ReadyForQuery that follows it: poll.
    wait_for_one_backend_in(&superuser, &db, "idle in transaction (aborted)").await;
    vanish(client, connection).await;
    assert_pool_recovered(&proxy, &db, &superuser).await;
}

#[tokio::test]
async fn psql_killed_mid_transaction_leaves_no_open_transaction() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let superuser = db.superuser().await;

    let port = proxy.port().to_string();
    let mut psql = Command::new(&db.cluster().binaries().psql)
        .args(["-X", "-A", "-t", "-w", "-h", "127.0.0.1", "-p", &port])
        .args(["-U", CLIENT_USER, "-d", PROXY_DBNAME])
        .env("PGPASSWORD", token_for(TENANT_ACME))
        .env("PGCONNECT_TIMEOUT", "30")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Keep stdin open: psql waits for more input inside its transaction.
    let mut stdin = psql.stdin.take().unwrap();
    stdin
        .write_all(
            b"BEGIN;\n\
              INSERT INTO invoices (tenant_id, amount, status) \
              VALUES (current_setting('app.current_tenant_id')::uuid, 9.99, 'uncommitted');\n",
        )
        .unwrap();
    stdin.flush().unwrap();
    wait_for_one_backend_in(&superuser, &db, "idle in transaction").await;

    psql.kill().unwrap();
    psql.wait().unwrap();
    drop(stdin);
    assert_pool_recovered(&proxy, &db, &superuser).await;
}

#[tokio::test]
async fn set_local_of_an_unrelated_setting_works_inside_the_clients_transaction() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let mut client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let before = simple(&client, "SHOW statement_timeout").await;
    assert_ne!(before, ["1234ms"]);

    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("SET LOCAL statement_timeout = '1234ms'")
        .await
        .unwrap();
    assert_eq!(simple(&client, "SHOW statement_timeout").await, ["1234ms"]);
    assert_eq!(simple(&client, CURRENT_TENANT).await, [TENANT_ACME]);
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(simple(&client, "SHOW statement_timeout").await, before);

    let tx = client.transaction().await.unwrap();
    tx.execute("SET LOCAL statement_timeout = '4321ms'", &[])
        .await
        .unwrap();
    let shown: String = tx
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "4321ms");
    assert_eq!(current_tenant(&tx).await, TENANT_ACME);
    tx.commit().await.unwrap();
    assert_eq!(simple(&client, "SHOW statement_timeout").await, before);

    // In one multi-statement query too.
    assert_eq!(
        simple(
            &client,
            "BEGIN; SET LOCAL statement_timeout = '999ms'; SHOW statement_timeout; \
             SELECT current_setting('app.current_tenant_id'); COMMIT"
        )
        .await,
        ["999ms", TENANT_ACME]
    );
    assert_eq!(simple(&client, "SHOW statement_timeout").await, before);
}

/// Needs the SQL scanner to recognise statements that cannot run in a transaction block
/// (`src/sql`).
#[tokio::test]
async fn lone_statements_that_refuse_transaction_blocks_are_not_refused_with_25001() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let attempts = [
        (
            "simple VACUUM",
            client.batch_execute("VACUUM invoices").await,
        ),
        (
            "simple VACUUM (all tables)",
            client.batch_execute("VACUUM").await,
        ),
        (
            "extended VACUUM",
            client.execute("VACUUM invoices", &[]).await.map(|_| ()),
        ),
        (
            "simple CREATE INDEX CONCURRENTLY",
            client
                .batch_execute("CREATE INDEX CONCURRENTLY ON invoices (tenant_id, status)")
                .await,
        ),
    ];
    let mut refused = Vec::new();
    for (what, result) in attempts {
        // api_user owns no table: PostgreSQL may skip with a warning or refuse with 42501,
        // but never because of a transaction block the client did not open.
        if let Err(err) = result {
            assert!(err.code().is_some(), "{what}: {err}");
            if sqlstate(&err) == Some("25001") {
                refused.push(format!("{what}: {}", describe(&err)));
            }
        }
        assert_eq!(
            simple(&client, CURRENT_TENANT).await,
            [TENANT_ACME],
            "after {what}"
        );
    }
    assert!(refused.is_empty(), "refused with 25001: {refused:#?}");
}

#[tokio::test]
async fn empty_query_is_answered_and_the_session_continues() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    for empty in ["", " ", ";", "-- nothing\n"] {
        let reply = guarded("empty query", client.simple_query(empty))
            .await
            .unwrap();
        assert!(simple_column(&reply).is_empty(), "{empty:?}");
        assert_eq!(current_tenant(&client).await, TENANT_ACME, "{empty:?}");
    }
    let rows = guarded("empty extended query", client.query("", &[]))
        .await
        .unwrap();
    assert!(rows.is_empty());
    // An empty query inside a transaction leaves the transaction and its tenant alone.
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("").await.unwrap();
    assert_eq!(simple(&client, CURRENT_TENANT).await, [TENANT_ACME]);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(simple(&client, CURRENT_TENANT).await, [TENANT_ACME]);
}

fn write_script(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn psql_script_with_transactions_runs_every_statement_in_own_tenant() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let token = token_for(TENANT_ACME);
    let script = write_script(
        proxy.dir(),
        "ok.sql",
        "\\set ON_ERROR_STOP 1\n\
         SELECT current_setting('app.current_tenant_id');\n\
         BEGIN;\n\
         INSERT INTO invoices (tenant_id, amount, status) \
           VALUES (current_setting('app.current_tenant_id')::uuid, 77.00, 'psql');\n\
         SELECT current_setting('app.current_tenant_id');\n\
         SELECT count(*) FROM invoices;\n\
         COMMIT;\n\
         SELECT current_setting('app.current_tenant_id'); SELECT count(*) FROM invoices;\n\
         START TRANSACTION;\n\
         SELECT id FROM tenants;\n\
         ROLLBACK;\n",
    );
    let output = proxy.psql_with_args(&token, &["-f", &script]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "psql failed ({}): {}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            TENANT_ACME,
            "BEGIN",
            "INSERT 0 1",
            TENANT_ACME,
            "4",
            "COMMIT",
            TENANT_ACME,
            "4",
            "START TRANSACTION",
            TENANT_ACME,
            "ROLLBACK",
        ]
    );
    assert_eq!(
        db.psql(&format!(
            "SELECT count(*) FROM invoices WHERE status = 'psql' AND tenant_id = '{TENANT_ACME}'"
        )),
        "1"
    );
}

#[tokio::test]
async fn psql_script_stops_at_the_first_error_and_commits_nothing() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let superuser = db.superuser().await;
    let token = token_for(TENANT_ACME);
    let script = write_script(
        proxy.dir(),
        "fails.sql",
        "\\set ON_ERROR_STOP 1\n\
         BEGIN;\n\
         INSERT INTO invoices (tenant_id, amount, status) \
           VALUES (current_setting('app.current_tenant_id')::uuid, 66.00, 'psql-failed');\n\
         SELECT 1/0;\n\
         SELECT 'not reached';\n\
         COMMIT;\n",
    );
    let output = proxy.psql_with_args(&token, &["-f", &script]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // psql exits with 3 when ON_ERROR_STOP stopped a script.
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stderr.contains("division by zero"), "{stderr}");
    assert!(!stdout.contains("not reached"), "{stdout}");
    assert_eq!(
        db.psql("SELECT count(*) FROM invoices WHERE status = 'psql-failed'"),
        "0"
    );
    assert_eq!(wait_for_no_open_transaction(&superuser, &db).await, 0);

    // The pool's only server is usable again.
    let lines = proxy.psql(&token, CURRENT_TENANT);
    assert!(lines.status.success());
    assert_eq!(String::from_utf8_lossy(&lines.stdout).trim(), TENANT_ACME);
}

#[tokio::test]
async fn a_transaction_left_idle_past_idle_transaction_timeout_ends_the_session_with_25p03() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("idle_transaction_timeout", 1));
    let superuser = db.superuser().await;
    let (mut client, _) = raw_login(proxy.port(), &token_for(TENANT_ACME), &[]).await;
    raw_query(&mut client, "BEGIN").await;
    assert_eq!(raw_query(&mut client, CURRENT_TENANT).await, [TENANT_ACME]);

    // Nothing more is sent: the proxy ends the session, and PostgreSQL the transaction.
    let msg = read_msg(&mut client)
        .await
        .expect("closed without an ErrorResponse");
    assert_eq!(char::from(msg.tag), 'E', "expected an ErrorResponse");
    assert_eq!(error_field(&msg.body, b'V').as_deref(), Some("FATAL"));
    assert_eq!(error_field(&msg.body, b'C').as_deref(), Some("25P03"));
    assert!(
        read_msg(&mut client).await.is_none(),
        "still open after FATAL"
    );
    assert_eq!(wait_for_no_open_transaction(&superuser, &db).await, 0);
}
