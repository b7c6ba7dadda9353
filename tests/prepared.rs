//! Protocol-level named prepared statements through the proxy: they keep working whichever
//! pooled server runs the client's next transaction, each client's names are its own, one
//! server-side statement serves every client with the same query, Close/DEALLOCATE/DISCARD
//! act on the client's own statements only, PostgreSQL's errors for duplicate and unknown
//! names come through, a plan invalidated by a schema change recovers, and
//! `pgbench -M prepared` runs cleanly.

mod support;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::join_all;
use postgres_protocol::message::frontend;
use support::*;
use tokio_postgres::{Client, SimpleQueryMessage};

use support::wire::*;

const CURRENT_TENANT: &str = "current_setting('app.current_tenant_id')";
/// Bound on any wait for the proxy, so that a stuck pool fails the test instead of hanging it.
const HANG_GUARD: Duration = Duration::from_secs(30);

async fn guarded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no answer from the proxy within {HANG_GUARD:?}"),
    }
}

fn proxy_with_pool(db: &TestDb, pool_size: i64) -> Proxy {
    Proxy::start(ProxyConfig::for_db(db).general("default_pool_size", pool_size))
}

/// The first column of every row of a simple-protocol reply.
async fn simple_column(client: &Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap()
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_owned()),
            _ => None,
        })
        .collect()
}

/// Bind + Execute + Sync of the named statement `name`; the reply messages.
async fn run_named(raw: &mut Raw, name: &str, params: &[&str]) -> Vec<Msg> {
    let mut buf = BytesMut::new();
    bind(&mut buf, "", name, params);
    execute(&mut buf, "", 0);
    sync(&mut buf);
    raw.send(&buf).await;
    raw.until_ready().await
}

/// Parse of a named statement + Sync; the reply messages.
async fn prepare_named(raw: &mut Raw, name: &str, sql: &str) -> Vec<Msg> {
    let mut buf = BytesMut::new();
    parse(&mut buf, name, sql);
    sync(&mut buf);
    raw.send(&buf).await;
    raw.until_ready().await
}

/// Asserts that running `name` succeeded with one row whose first column is `expected`.
async fn assert_named_returns(raw: &mut Raw, name: &str, expected: &str) {
    let replies = run_named(raw, name, &[]).await;
    assert_eq!(
        tags(&replies),
        "2DCZ",
        "running statement {name:?}: {:?}",
        first_error(&replies)
    );
    assert_eq!(
        rows(&replies)[0][0].as_deref(),
        Some(expected),
        "statement {name:?}"
    );
}

/// Asserts that binding `name` fails as PostgreSQL fails for a statement that does not exist.
async fn assert_named_missing(raw: &mut Raw, name: &str) {
    let replies = run_named(raw, name, &[]).await;
    assert_eq!(tags(&replies), "EZ", "binding {name:?}");
    let (code, message) = first_error(&replies).unwrap();
    assert_eq!(code, "26000", "binding {name:?}: {message}");
    assert!(message.contains(&format!("\"{name}\"")), "{message}");
}

#[tokio::test]
async fn named_statements_keep_working_whichever_server_runs_the_transaction() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 2);
    const CLIENTS: usize = 8;
    const EXECUTIONS: i32 = 50;
    let sql =
        format!("SELECT {CURRENT_TENANT}, pg_backend_pid(), $1::int4 + 1, count(*) FROM invoices");
    let runs = (0..CLIENTS).map(|i| {
        let (tenant, invoices) = if i % 2 == 0 {
            (TENANT_ACME, ACME_INVOICES)
        } else {
            (TENANT_GLOBEX, GLOBEX_INVOICES)
        };
        let proxy = &proxy;
        let sql = &sql;
        async move {
            let client = proxy.connect(&token_for(tenant)).await.unwrap();
            let statement = client.prepare(sql).await.unwrap();
            let mut pids = HashSet::new();
            let mut failures = Vec::new();
            for n in 0..EXECUTIONS {
                match client.query_one(&statement, &[&n]).await {
                    Ok(row) => {
                        let seen_tenant: String = row.get(0);
                        let next: i32 = row.get(2);
                        let count: i64 = row.get(3);
                        if (seen_tenant.as_str(), next, count) != (tenant, n + 1, invoices) {
                            failures.push(format!(
                                "client {i} ({tenant}) execution {n}: got ({seen_tenant}, {next}, {count})"
                            ));
                        }
                        pids.insert(row.get::<_, i32>(1));
                    }
                    Err(err) => failures.push(format!("client {i} execution {n}: {err}")),
                }
            }
            (pids, failures)
        }
    });
    let results = guarded("8 clients x 50 executions", join_all(runs)).await;
    let failures: Vec<String> = results.iter().flat_map(|(_, f)| f.clone()).collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let all_pids: HashSet<i32> = results
        .iter()
        .flat_map(|(p, _)| p.iter().copied())
        .collect();
    assert!(
        all_pids.len() <= 2,
        "more servers than the pool allows: {all_pids:?}"
    );
    assert!(
        results.iter().any(|(pids, _)| pids.len() > 1),
        "no client's statement ever ran on a second server, so nothing was shown"
    );
}

#[tokio::test]
async fn two_clients_with_the_same_statement_name_get_their_own_statements() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut acme = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    let mut globex = Raw::login(proxy.port(), &token_for(TENANT_GLOBEX)).await;
    let acme_sql = format!("SELECT 'acme query', {CURRENT_TENANT}");
    let globex_sql = format!("SELECT 'globex query', {CURRENT_TENANT}, 42");
    assert_eq!(
        tags(&prepare_named(&mut acme, "stmt", &acme_sql).await),
        "1Z"
    );
    assert_eq!(
        tags(&prepare_named(&mut globex, "stmt", &globex_sql).await),
        "1Z"
    );
    for round in 0..3 {
        let replies = run_named(&mut acme, "stmt", &[]).await;
        assert_eq!(
            tags(&replies),
            "2DCZ",
            "round {round}: {:?}",
            first_error(&replies)
        );
        assert_eq!(
            rows(&replies)[0],
            [Some("acme query".to_owned()), Some(TENANT_ACME.to_owned())]
        );
        let replies = run_named(&mut globex, "stmt", &[]).await;
        assert_eq!(
            tags(&replies),
            "2DCZ",
            "round {round}: {:?}",
            first_error(&replies)
        );
        assert_eq!(
            rows(&replies)[0],
            [
                Some("globex query".to_owned()),
                Some(TENANT_GLOBEX.to_owned()),
                Some("42".to_owned())
            ]
        );
    }
}

#[tokio::test]
async fn clients_preparing_the_same_query_share_one_server_statement() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    const CLIENTS: usize = 6;
    const MARKER: &str = "shared-statement-marker";
    let sql = format!("SELECT '{MARKER}'::text, count(*) FROM invoices");
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let tenant = if i % 2 == 0 {
            TENANT_ACME
        } else {
            TENANT_GLOBEX
        };
        let client = proxy.connect(&token_for(tenant)).await.unwrap();
        let statement = client.prepare(&sql).await.unwrap();
        let row = client.query_one(&statement, &[]).await.unwrap();
        let expected = if i % 2 == 0 {
            ACME_INVOICES
        } else {
            GLOBEX_INVOICES
        };
        assert_eq!(row.get::<_, i64>(1), expected, "client {i}");
        clients.push((client, statement));
    }
    // Only one server: every statement above lives on it.
    let observer = &clients[0].0;
    let same_query = simple_column(
        observer,
        &format!("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%{MARKER}%'"),
    )
    .await;
    assert_eq!(
        same_query,
        ["1"],
        "one server-side statement for {CLIENTS} clients"
    );
    let total: i64 = simple_column(observer, "SELECT count(*) FROM pg_prepared_statements").await
        [0]
    .parse()
    .unwrap();
    assert!(
        total < CLIENTS as i64,
        "{total} prepared statements on the server for one shared query"
    );
    // And every client still runs its statement.
    for (i, (client, statement)) in clients.iter().enumerate() {
        client
            .query_one(statement, &[])
            .await
            .unwrap_or_else(|err| panic!("client {i}: {err}"));
    }
}

#[tokio::test]
async fn closed_statement_name_can_be_reused_for_a_different_query() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    let mut other = Raw::login(proxy.port(), &token_for(TENANT_GLOBEX)).await;
    // Another client holds a statement with the same text: it must survive the Close.
    assert_eq!(
        tags(&prepare_named(&mut other, "other", "SELECT 'first'::text").await),
        "1Z"
    );

    assert_eq!(
        tags(&prepare_named(&mut client, "s", "SELECT 'first'::text").await),
        "1Z"
    );
    assert_named_returns(&mut client, "s", "first").await;

    // Close in its own transaction, then Parse of the same name with another query.
    let mut buf = BytesMut::new();
    frontend::close(b'S', "s", &mut buf).unwrap();
    sync(&mut buf);
    client.send(&buf).await;
    assert_eq!(tags(&client.until_ready().await), "3Z");
    assert_named_missing(&mut client, "s").await;
    let second = format!("SELECT 'second'::text, {CURRENT_TENANT}");
    assert_eq!(tags(&prepare_named(&mut client, "s", &second).await), "1Z");
    let replies = run_named(&mut client, "s", &[]).await;
    assert_eq!(
        rows(&replies),
        [[Some("second".to_owned()), Some(TENANT_ACME.to_owned())]]
    );

    // Close and Parse again in one batch.
    let mut buf = BytesMut::new();
    frontend::close(b'S', "s", &mut buf).unwrap();
    parse(&mut buf, "s", "SELECT 'third'::text");
    bind(&mut buf, "", "s", &[]);
    execute(&mut buf, "", 0);
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "312DCZ", "{:?}", first_error(&replies));
    assert_eq!(rows(&replies)[0][0].as_deref(), Some("third"));

    assert_named_returns(&mut other, "other", "first").await;
}

#[tokio::test]
async fn parse_of_an_existing_name_fails_with_42p05_and_keeps_the_first_statement() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    assert_eq!(
        tags(&prepare_named(&mut client, "dup", "SELECT 'one'::text").await),
        "1Z"
    );

    // In a later transaction, with the rest of the batch skipped up to Sync.
    let mut buf = BytesMut::new();
    parse(&mut buf, "dup", "SELECT 'two'::text");
    bind(&mut buf, "", "dup", &[]);
    execute(&mut buf, "", 0);
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "EZ");
    let (code, message) = first_error(&replies).unwrap();
    assert_eq!(code, "42P05", "{message}");
    assert_eq!(message, "prepared statement \"dup\" already exists");

    // In the same batch as the first Parse.
    let mut buf = BytesMut::new();
    parse(&mut buf, "dup2", "SELECT 'one'::text");
    parse(&mut buf, "dup2", "SELECT 'two'::text");
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "1EZ");
    assert_eq!(first_error(&replies).unwrap().0, "42P05");

    assert_named_returns(&mut client, "dup", "one").await;
    assert_named_returns(&mut client, "dup2", "one").await;
}

#[tokio::test]
async fn bind_of_an_unknown_statement_fails_with_26000_and_the_connection_goes_on() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_GLOBEX)).await;
    assert_named_missing(&mut client, "never_prepared").await;
    let replies = client.simple(&format!("SELECT {CURRENT_TENANT}")).await;
    assert_eq!(rows(&replies), [[Some(TENANT_GLOBEX.to_owned())]]);
    // Also inside a transaction block: the transaction is then failed, as on PostgreSQL.
    assert_eq!(tags(&client.simple("BEGIN").await), "CZ");
    assert_named_missing(&mut client, "never_prepared").await;
    let replies = client.simple("SELECT 1").await;
    assert_eq!(first_error(&replies).unwrap().0, "25P02");
    assert_eq!(client.simple("ROLLBACK").await.last().unwrap().body, b"I");
}

#[tokio::test]
async fn deallocate_and_discard_all_drop_only_the_clients_own_statements() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    let mut other = Raw::login(proxy.port(), &token_for(TENANT_GLOBEX)).await;
    // The other client uses one of the same names for another query, and another name for
    // the same query text as one of the client's.
    assert_eq!(
        tags(&prepare_named(&mut other, "a1", "SELECT 'other a1'::text").await),
        "1Z"
    );
    assert_eq!(
        tags(&prepare_named(&mut other, "same", "SELECT 'a2'::text").await),
        "1Z"
    );
    let other_still_works = async |other: &mut Raw| {
        assert_named_returns(other, "a1", "other a1").await;
        assert_named_returns(other, "same", "a2").await;
    };

    assert_eq!(
        tags(&prepare_named(&mut client, "a1", "SELECT 'a1'::text").await),
        "1Z"
    );
    assert_eq!(
        tags(&prepare_named(&mut client, "a2", "SELECT 'a2'::text").await),
        "1Z"
    );

    // DEALLOCATE name.
    let replies = client.simple("DEALLOCATE a1").await;
    assert_eq!(tags(&replies), "CZ", "{:?}", first_error(&replies));
    assert_named_missing(&mut client, "a1").await;
    assert_named_returns(&mut client, "a2", "a2").await;
    other_still_works(&mut other).await;
    assert_eq!(
        tags(&prepare_named(&mut client, "a1", "SELECT 'a1 again'::text").await),
        "1Z"
    );
    assert_named_returns(&mut client, "a1", "a1 again").await;
    // A name the client never prepared: PostgreSQL's error.
    let replies = client.simple("DEALLOCATE never_prepared").await;
    assert_eq!(first_error(&replies).unwrap().0, "26000");

    // DEALLOCATE inside a transaction block.
    assert_eq!(tags(&client.simple("BEGIN").await), "CZ");
    let replies = client.simple("DEALLOCATE a1").await;
    assert_eq!(tags(&replies), "CZ", "{:?}", first_error(&replies));
    assert_eq!(replies.last().unwrap().body, b"T");
    assert_eq!(tags(&client.simple("COMMIT").await), "CZ");
    assert_named_missing(&mut client, "a1").await;

    // DEALLOCATE ALL.
    assert_eq!(
        tags(&prepare_named(&mut client, "a1", "SELECT 'a1'::text").await),
        "1Z"
    );
    let replies = client.simple("DEALLOCATE ALL").await;
    assert_eq!(tags(&replies), "CZ", "{:?}", first_error(&replies));
    assert_named_missing(&mut client, "a1").await;
    assert_named_missing(&mut client, "a2").await;
    other_still_works(&mut other).await;

    // DEALLOCATE ALL pipelined with a Parse of the same name (PgBouncer#1535).
    assert_eq!(
        tags(&prepare_named(&mut client, "a1", "SELECT 'a1'::text").await),
        "1Z"
    );
    let mut buf = BytesMut::new();
    frontend::query("DEALLOCATE ALL", &mut buf).unwrap();
    parse(&mut buf, "a1", "SELECT 'after pipelined deallocate'::text");
    bind(&mut buf, "", "a1", &[]);
    execute(&mut buf, "", 0);
    sync(&mut buf);
    client.send(&buf).await;
    let mut replies = client.until_ready().await;
    replies.extend(client.until_ready().await);
    assert_eq!(tags(&replies), "CZ12DCZ", "{:?}", first_error(&replies));
    assert_eq!(
        rows(&replies)[0][0].as_deref(),
        Some("after pipelined deallocate")
    );

    // DISCARD ALL.
    assert_eq!(
        tags(&prepare_named(&mut client, "a2", "SELECT 'a2'::text").await),
        "1Z"
    );
    let replies = client.simple("DISCARD ALL").await;
    assert_eq!(tags(&replies), "CZ", "{:?}", first_error(&replies));
    assert_named_missing(&mut client, "a1").await;
    assert_named_missing(&mut client, "a2").await;
    other_still_works(&mut other).await;
    assert_eq!(
        tags(&prepare_named(&mut client, "a1", "SELECT 'a1 after discard'::text").await),
        "1Z"
    );
    assert_eq!(
        tags(&prepare_named(&mut client, "a2", "SELECT 'a2'::text").await),
        "1Z"
    );
    assert_named_returns(&mut client, "a1", "a1 after discard").await;
    assert_named_returns(&mut client, "a2", "a2").await;
    other_still_works(&mut other).await;
}

/// After a schema change that alters a statement's result type, PostgreSQL fails it with
/// 0A000 "cached plan must not change result type"; drivers then prepare the query again.
/// Through the proxy, whose server-side statements are shared by query text, the error may
/// come once, but a statement prepared again must work: the error is not surfaced forever.
#[tokio::test]
async fn statement_prepared_again_after_a_schema_change_works() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let other = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    let statement = client.prepare("SELECT * FROM invoices").await.unwrap();
    let other_statement = other.prepare("SELECT * FROM invoices").await.unwrap();
    assert_eq!(
        client.query(&statement, &[]).await.unwrap().len(),
        ACME_INVOICES as usize
    );
    assert_eq!(
        other.query(&other_statement, &[]).await.unwrap().len(),
        GLOBEX_INVOICES as usize
    );

    db.superuser()
        .await
        .batch_execute("ALTER TABLE invoices ADD COLUMN note text")
        .await
        .unwrap();

    if let Err(err) = client.query(&statement, &[]).await {
        assert_cached_plan_error(&err);
    }
    for (name, client, invoices) in [
        ("acme", &client, ACME_INVOICES),
        ("globex", &other, GLOBEX_INVOICES),
    ] {
        let again = client.prepare("SELECT * FROM invoices").await.unwrap();
        assert_eq!(
            again.columns().len(),
            7,
            "{name}: the new column is described"
        );
        for attempt in 0..3 {
            let rows = client
                .query(&again, &[])
                .await
                .unwrap_or_else(|err| panic!("{name}, execution {attempt}: {err:?}"));
            assert_eq!(rows.len(), invoices as usize);
            assert_eq!(rows[0].len(), 7);
        }
    }
}

/// The statement described before the schema change must never return rows of another
/// shape than its description: PostgreSQL keeps failing it with 0A000, and a driver that
/// decodes rows by the cached RowDescription (tokio-postgres, pgx, JDBC in binary) would
/// misread them.
#[tokio::test]
async fn statement_invalidated_by_a_schema_change_never_returns_rows_of_another_shape() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let statement = client.prepare("SELECT * FROM invoices").await.unwrap();
    assert_eq!(statement.columns().len(), 6);
    assert_eq!(
        client.query(&statement, &[]).await.unwrap().len(),
        ACME_INVOICES as usize
    );

    db.superuser()
        .await
        .batch_execute("ALTER TABLE invoices ADD COLUMN note text")
        .await
        .unwrap();

    for attempt in 0..3 {
        match client.query(&statement, &[]).await {
            Ok(rows) => assert!(
                rows.iter().all(|row| row.len() == 6),
                "execution {attempt}: rows do not match the statement's description"
            ),
            Err(err) => assert_cached_plan_error(&err),
        }
    }
}

fn assert_cached_plan_error(err: &tokio_postgres::Error) {
    let message = err.as_db_error().map(|db| db.message().to_owned());
    assert_eq!(sqlstate(err), Some("0A000"), "{err:?}");
    assert_eq!(
        message.as_deref(),
        Some("cached plan must not change result type")
    );
}

/// Runs `pgbench -n -M prepared -c <clients> -T 3` with `script` through a proxy whose pool
/// has `pool_size` servers; panics unless it ran transactions and reported no error.
async fn run_pgbench_prepared(script: &str, clients: u32, pool_size: i64) {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, pool_size);
    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("invoices.sql");
    std::fs::write(&script_path, script).unwrap();
    let bundled = db.cluster().binaries().bin_dir.join("pgbench");
    let pgbench = if bundled.exists() {
        bundled
    } else {
        "pgbench".into()
    };
    let port = proxy.port().to_string();
    let clients = clients.to_string();
    let mut child = Command::new(&pgbench)
        .args(["-n", "-T", "3", "-c", &clients, "-M", "prepared", "-f"])
        .arg(&script_path)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            CLIENT_USER,
            PROXY_DBNAME,
        ])
        .env("PGPASSWORD", token_for(TENANT_ACME))
        .env_remove("PGOPTIONS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("could not run {}: {err}", pgbench.display()));
    // pgbench runs for 3 s; far longer means it is stuck on the proxy. (Its output is small
    // enough for the pipes, so waiting before reading cannot block it.)
    const PGBENCH_GUARD: Duration = Duration::from_secs(15);
    let mut waited = Duration::ZERO;
    while child.try_wait().unwrap().is_none() {
        if waited > PGBENCH_GUARD {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "pgbench was still running after {PGBENCH_GUARD:?}:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pgbench failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !stderr.to_lowercase().contains("error"),
        "pgbench reported errors:\n{stderr}"
    );
    let processed: u64 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in pgbench's output:\n{stdout}"));
    assert!(processed > 0, "{stdout}");
    if let Some(failed) = stdout
        .lines()
        .find_map(|line| line.strip_prefix("number of failed transactions: "))
    {
        assert!(failed.starts_with("0 "), "pgbench: {failed}\n{stdout}");
    }
}

#[tokio::test]
async fn pgbench_in_prepared_mode_runs_without_errors() {
    run_pgbench_prepared(
        "\\set min random(1, 1000)\n\
         SELECT count(*) FROM invoices WHERE amount > :min;\n\
         SELECT id, amount FROM invoices WHERE amount > :min ORDER BY created_at LIMIT 2;\n\
         SELECT current_setting('app.current_tenant_id');\n",
        4,
        2,
    )
    .await;
}

/// pgbench prepares each statement synchronously (PQprepare: Parse + Sync) the first time a
/// client reaches it, while its other connections may sit in an open `BEGIN … END`
/// transaction, so with more clients than servers its Parse must not wait for a server.
#[tokio::test]
async fn pgbench_in_prepared_mode_runs_explicit_transactions_with_more_clients_than_servers() {
    run_pgbench_prepared(
        "\\set min random(1, 1000)\n\
         BEGIN;\n\
         SELECT count(*) FROM invoices WHERE amount > :min;\n\
         SELECT current_setting('app.current_tenant_id');\n\
         END;\n",
        4,
        2,
    )
    .await;
}
