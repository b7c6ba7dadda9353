//! Session state in transaction mode: a client's session-level settings (`SET`,
//! `set_config(…, false)`) follow it from transaction to transaction on a shared server and
//! never reach another client; `SET` in a rolled-back transaction and `SET LOCAL` behave as
//! on PostgreSQL; what cannot follow a client between servers (LISTEN, session advisory
//! locks, temporary tables, WITH HOLD cursors, SQL PREPARE) is refused with 0A000 naming the
//! feature, in both protocols, while `pg_advisory_xact_lock` works.

mod support;

use support::*;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The settings these tests change, in the order [`settings`] returns them.
const SETTINGS: [&str; 4] = [
    "search_path",
    "statement_timeout",
    "application_name",
    "jit",
];

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

/// [`SETTINGS`] as the client sees them, read with SHOW (simple protocol) and with
/// `current_setting` (extended protocol); both must agree.
async fn settings(client: &Client) -> Vec<String> {
    let shown = simple_column(
        client,
        &SETTINGS.map(|name| format!("SHOW {name}")).join("; "),
    )
    .await;
    let row = client
        .query_one(
            "SELECT current_setting('search_path'), current_setting('statement_timeout'), \
             current_setting('application_name'), current_setting('jit')",
            &[],
        )
        .await
        .unwrap();
    let selected: Vec<String> = (0..SETTINGS.len()).map(|i| row.get(i)).collect();
    assert_eq!(shown, selected, "SHOW and current_setting disagree");
    shown
}

async fn setting(client: &Client, name: &str) -> String {
    simple_column(client, &format!("SHOW {name}"))
        .await
        .remove(0)
}

/// What is wrong with the outcome of a statement that must be refused as needing a session.
fn refusal_problem(
    what: String,
    result: Result<(), tokio_postgres::Error>,
    keyword: &str,
) -> Option<String> {
    let err = match result {
        Ok(()) => return Some(format!("{what}: succeeded")),
        Err(err) => err,
    };
    let message = err
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_else(|| err.to_string());
    let named = message.contains(keyword) && message.contains("session");
    (sqlstate(&err) != Some("0A000") || !named)
        .then(|| format!("{what}: {:?} {message}", sqlstate(&err)))
}

fn single_server(db: &TestDb) -> Proxy {
    Proxy::start(ProxyConfig::for_db(db).general("default_pool_size", 1))
}

#[tokio::test]
async fn session_settings_follow_their_client_and_never_reach_another() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let other = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    let baseline = settings(&other).await;
    assert_eq!(settings(&client).await, baseline);

    client
        .batch_execute("SET search_path = pg_catalog, public")
        .await
        .unwrap();
    client
        .batch_execute("SET statement_timeout = '12345ms'")
        .await
        .unwrap();
    client
        .execute("SET application_name = 'settings-client'", &[])
        .await
        .unwrap();
    // As asyncpg sends it.
    client
        .query_one("SELECT set_config('jit', 'off', false)", &[])
        .await
        .unwrap();
    let changed = ["pg_catalog, public", "12345ms", "settings-client", "off"];
    assert_ne!(baseline, changed, "the test must change every setting");

    for round in 0..3 {
        assert_eq!(
            settings(&other).await,
            baseline,
            "other client, round {round}"
        );
        assert_eq!(settings(&client).await, changed, "round {round}");
        // Inside an explicit transaction too.
        client.batch_execute("BEGIN").await.unwrap();
        assert_eq!(
            settings(&client).await,
            changed,
            "in a transaction, round {round}"
        );
        client.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            simple_column(&other, "SELECT current_setting('app.current_tenant_id')").await,
            [TENANT_GLOBEX]
        );
    }

    // RESET goes back to the default for this client only.
    client
        .batch_execute("RESET statement_timeout")
        .await
        .unwrap();
    assert_eq!(setting(&client, "statement_timeout").await, baseline[1]);
    assert_eq!(setting(&client, "jit").await, "off");
    assert_eq!(settings(&other).await, baseline);
}

#[tokio::test]
async fn set_in_a_rolled_back_transaction_is_undone() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let mut client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let other = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    let baseline = settings(&other).await;

    client
        .batch_execute("SET statement_timeout = '5s'")
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("SET statement_timeout = '7s'")
        .await
        .unwrap();
    assert_eq!(setting(&client, "statement_timeout").await, "7s");
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(settings(&other).await, baseline);
    assert_eq!(setting(&client, "statement_timeout").await, "5s");

    // Through the extended protocol and tokio-postgres's transaction API.
    let tx = client.transaction().await.unwrap();
    tx.execute("SET statement_timeout = '9s'", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(setting(&client, "statement_timeout").await, "5s");

    // A transaction that failed, then rolled back.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("SET search_path = pg_catalog")
        .await
        .unwrap();
    assert!(client.batch_execute("SELECT 1 / 0").await.is_err());
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(setting(&client, "search_path").await, baseline[0]);

    // A committed one keeps it.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("SET application_name = 'committed'")
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(settings(&other).await, baseline);
    assert_eq!(setting(&client, "application_name").await, "committed");
    assert_eq!(setting(&client, "statement_timeout").await, "5s");
}

#[tokio::test]
async fn set_local_lasts_only_its_transaction() {
    let db = TestDb::new();
    let proxy = single_server(&db);
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let other = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    let baseline = settings(&other).await;

    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("SET LOCAL statement_timeout = '3s'")
        .await
        .unwrap();
    client
        .query_one(
            "SELECT set_config('application_name', 'local-name', true)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(setting(&client, "statement_timeout").await, "3s");
    assert_eq!(setting(&client, "application_name").await, "local-name");
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(settings(&client).await, baseline);
    assert_eq!(settings(&other).await, baseline);

    // In an implicit transaction of one multi-statement query.
    assert_eq!(
        simple_column(
            &client,
            "SET LOCAL statement_timeout = '4s'; SHOW statement_timeout"
        )
        .await,
        ["4s"]
    );
    assert_eq!(settings(&client).await, baseline);
}

#[tokio::test]
async fn session_only_features_are_refused_with_0a000_naming_the_feature() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 2));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let features = [
        ("LISTEN jobs", "LISTEN"),
        ("SELECT pg_advisory_lock(42)", "advisory lock"),
        ("CREATE TEMP TABLE scratch (a int)", "temporary table"),
        ("SELECT 1 AS a INTO TEMP scratch", "temporary table"),
        (
            "CREATE OR REPLACE TEMP VIEW scratch AS SELECT 1",
            "temporary table",
        ),
        ("DECLARE held CURSOR WITH HOLD FOR SELECT 1", "WITH HOLD"),
        ("PREPARE q AS SELECT 1", "PREPARE"),
    ];
    let mut failures = Vec::new();
    for (sql, keyword) in features {
        let simple = client.simple_query(sql).await.map(|_| ());
        failures.extend(refusal_problem(format!("simple {sql}"), simple, keyword));
        let extended = client.execute(sql, &[]).await.map(|_| ());
        failures.extend(refusal_problem(
            format!("extended {sql}"),
            extended,
            keyword,
        ));

        // Inside a transaction block the refusal fails the transaction, as an error would.
        for extended in [false, true] {
            client.batch_execute("BEGIN").await.unwrap();
            let refused = if extended {
                client.execute(sql, &[]).await.map(|_| ())
            } else {
                client.simple_query(sql).await.map(|_| ())
            };
            failures.extend(refusal_problem(
                format!("{sql} in a transaction (extended: {extended})"),
                refused,
                keyword,
            ));
            let next = client.simple_query("SELECT 1").await;
            match next {
                Err(err) if sqlstate(&err) == Some("25P02") => {}
                other => failures.push(format!(
                    "{sql} in a transaction (extended: {extended}): next statement gave {other:?}"
                )),
            }
            client.batch_execute("ROLLBACK").await.unwrap();
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Nothing of it happened on a server.
    let superuser = db.superuser().await;
    let advisory: i64 = superuser
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(advisory, 0);
    let temp_tables: i64 = superuser
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'scratch'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(temp_tables, 0);
    assert_eq!(
        simple_column(&client, "SELECT current_setting('app.current_tenant_id')").await,
        [TENANT_ACME]
    );
}

#[tokio::test]
async fn transaction_scoped_advisory_lock_works() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 2));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let superuser = db.superuser().await;
    let advisory_locks = async || -> i64 {
        superuser
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    };

    client.batch_execute("BEGIN").await.unwrap();
    client
        .query_one("SELECT pg_advisory_xact_lock(42)", &[])
        .await
        .unwrap();
    client
        .simple_query("SELECT pg_advisory_xact_lock(43)")
        .await
        .unwrap();
    assert_eq!(advisory_locks().await, 2);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(advisory_locks().await, 0);

    // Autocommit, both protocols.
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_xact_lock(44)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(locked);
    assert_eq!(
        simple_column(&client, "SELECT pg_try_advisory_xact_lock(44)").await,
        ["t"]
    );
    assert_eq!(advisory_locks().await, 0);
}
