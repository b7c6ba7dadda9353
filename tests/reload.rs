//! Configuration reload (SIGHUP, and RELOAD on the admin console) on a running proxy: a new
//! pool size takes effect on the live pool (growing lets a waiting transaction in, shrinking
//! closes servers, and the bound holds in `pg_stat_activity`), connected clients keep their
//! connection and their transaction, an invalid file (syntax, unknown key, bad value) is
//! rejected whole and logged without secrets, a rotated JWT secret applies to new logins
//! only, databases can be added, removed and pointed elsewhere, and keys that need a restart
//! keep their running value with a warning.
//!
//! Nothing here asserts how long anything took: a SIGHUP's outcome is awaited in the log, and
//! "has not completed" is only ever checked as "not yet".

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use support::admin::*;
use support::*;
use tokio_postgres::Client;

/// Upper bound for polling loops and for any single wait on the proxy.
const BOUND: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(50);

const APPLIED: &str = "configuration reloaded";
const REJECTED: &str = "configuration reload failed";

/// Log lines that report a reload's outcome, without terminal colours.
fn outcomes(proxy: &Proxy) -> Vec<String> {
    proxy
        .log()
        .lines()
        .filter(|l| l.contains(APPLIED) || l.contains(REJECTED))
        .map(without_colours)
        .collect()
}

/// `line` without ANSI SGR sequences (`ESC [ ... m`).
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits for the reload outcome after the first `before` ones to be logged; returns it.
async fn next_outcome(proxy: &Proxy, before: usize) -> String {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Some(line) = outcomes(proxy).get(before) {
            return line.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload outcome logged after SIGHUP:\n{}",
            proxy.log()
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Sends SIGHUP (the file as it is) and returns the logged outcome.
async fn sighup_and_wait(proxy: &Proxy) -> String {
    let before = outcomes(proxy).len();
    proxy.signal(libc::SIGHUP);
    next_outcome(proxy, before).await
}

/// Rewrites the config file, sends SIGHUP and returns the logged outcome.
async fn reload(proxy: &mut Proxy, config: ProxyConfig) -> String {
    let before = outcomes(proxy).len();
    proxy.reload_with(config);
    next_outcome(proxy, before).await
}

/// Server connections the proxy holds to `db` as the pool role.
async fn server_count(superuser: &Client, db: &TestDb) -> i64 {
    superuser
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
            &[&db.name(), &API_USER],
        )
        .await
        .unwrap()
        .get(0)
}

/// Samples the server count until stopped; the handle returns the largest count seen.
fn monitor_servers(
    superuser: Client,
    db_name: String,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<i64> {
    let max = Arc::new(AtomicI64::new(0));
    tokio::spawn(async move {
        while !done.load(Ordering::Acquire) {
            let count: i64 = superuser
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
                    &[&db_name, &API_USER],
                )
                .await
                .unwrap()
                .get(0);
            max.fetch_max(count, Ordering::AcqRel);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        max.load(Ordering::Acquire)
    })
}

/// A client in an open transaction (so it holds a server).
async fn in_transaction(proxy: &Proxy, tenant: &str) -> Client {
    let client = proxy.connect(&token_for(tenant)).await.unwrap();
    client.simple_query("BEGIN").await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    client
}

fn pool_of(size: i64, db: &TestDb) -> ProxyConfig {
    admin_config(db)
        .general("default_pool_size", size)
        .general("query_wait_timeout", 0)
}

// ------------------------------------------------------------------ pool size

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_pool_size_applies_to_the_live_pool_both_ways() {
    let db = TestDb::new();
    let mut proxy = Proxy::start(pool_of(2, &db));
    let superuser = db.superuser().await;
    let console = admin(&proxy).await;
    let done = Arc::new(AtomicBool::new(false));
    let monitor = monitor_servers(
        db.superuser().await,
        db.name().to_owned(),
        Arc::clone(&done),
    );

    // Two transactions hold both servers; a third waits for one.
    let mut holders = vec![
        in_transaction(&proxy, TENANT_ACME).await,
        in_transaction(&proxy, TENANT_GLOBEX).await,
    ];
    let third = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let waiting = tokio::spawn(async move {
        third.simple_query("BEGIN").await.unwrap();
        third.simple_query("SELECT 1").await.unwrap();
        third
    });
    eventually("the third transaction queues", || async {
        let pools = show(&console, "POOLS").await;
        int(pools.row_where("database", PROXY_DBNAME), "cl_waiting") == 1
    })
    .await;
    assert!(!waiting.is_finished(), "a third server with pool size 2");

    // Growing to 5 lets it in while the first two still hold theirs, and two more fit.
    let outcome = reload(&mut proxy, pool_of(5, &db)).await;
    assert!(outcome.contains(APPLIED), "{outcome}");
    let third = tokio::time::timeout(BOUND, waiting)
        .await
        .expect("the waiting transaction was not let in by the larger pool")
        .unwrap();
    holders.push(third);
    holders.push(in_transaction(&proxy, TENANT_GLOBEX).await);
    holders.push(in_transaction(&proxy, TENANT_ACME).await);
    assert_eq!(server_count(&superuser, &db).await, 5);
    let dbs = show(&console, "DATABASES").await;
    assert_eq!(int(dbs.row_where("name", PROXY_DBNAME), "pool_size"), 5);
    for client in &holders {
        client.simple_query("COMMIT").await.unwrap();
    }
    done.store(true, Ordering::Release);
    let max = monitor.await.unwrap();
    assert!(max <= 5, "{max} servers with pool size 5");

    // Shrinking to 2 closes the surplus idle servers...
    let outcome = reload(&mut proxy, pool_of(2, &db)).await;
    assert!(outcome.contains(APPLIED), "{outcome}");
    eventually("the pool shrinks to 2 servers", || async {
        server_count(&superuser, &db).await == 2
    })
    .await;
    // ...and the new bound holds under five concurrent clients.
    let done = Arc::new(AtomicBool::new(false));
    let monitor = monitor_servers(
        db.superuser().await,
        db.name().to_owned(),
        Arc::clone(&done),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for client in holders {
        tasks.spawn(async move {
            for _ in 0..3 {
                client.simple_query("BEGIN").await.unwrap();
                client.simple_query("SELECT pg_sleep(0.01)").await.unwrap();
                client.simple_query("COMMIT").await.unwrap();
            }
        });
    }
    while let Some(result) = tokio::time::timeout(BOUND * 2, tasks.join_next())
        .await
        .expect("clients did not finish under the smaller pool")
    {
        result.unwrap();
    }
    done.store(true, Ordering::Release);
    let max = monitor.await.unwrap();
    assert!(max <= 2, "{max} servers after shrinking the pool to 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_client_keeps_its_connection_and_transaction_across_a_reload() {
    let db = TestDb::new();
    let mut proxy = Proxy::start(pool_of(2, &db));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);
    client.simple_query("BEGIN").await.unwrap();
    let pid = backend_pid(&client).await;

    let outcome = reload(
        &mut proxy,
        pool_of(3, &db).general("server_idle_timeout", 5),
    )
    .await;
    assert!(outcome.contains(APPLIED), "{outcome}");

    // Same transaction, same server, still the client's tenant; and the next one works.
    assert_eq!(backend_pid(&client).await, pid);
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
    client.simple_query("COMMIT").await.unwrap();
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);
}

// ------------------------------------------------------------------ invalid files

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_rejected_whole_logged_and_the_old_one_keeps_serving() {
    let db = TestDb::new();
    let good = pool_of(2, &db);
    let mut proxy = Proxy::start(good.clone());
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let console = admin(&proxy).await;

    // Each bad file also asks for a larger pool: nothing of it may apply.
    let unknown_key = good
        .clone()
        .general("default_pool_size", 7)
        .general("no_such_setting", 1);
    let bad_value = good
        .clone()
        .general("default_pool_size", 7)
        .app_db("port", 70_000);
    for (bad, names) in [
        (unknown_key, "pgtenant.no_such_setting"),
        (bad_value, "databases.app.port"),
    ] {
        let outcome = reload(&mut proxy, bad).await;
        assert!(outcome.contains(REJECTED), "{outcome}");
        assert!(
            outcome.contains(names),
            "the error does not name the key: {outcome}"
        );
    }
    std::fs::write(
        proxy.config_path(),
        "[pgtenant]\ndefault_pool_size = 7\n[auth\nalgorithm = \"HS256\"\n",
    )
    .unwrap();
    let outcome = sighup_and_wait(&proxy).await;
    assert!(outcome.contains(REJECTED), "{outcome}");
    assert!(outcome.contains("syntax error"), "{outcome}");

    let dbs = show(&console, "DATABASES").await;
    assert_eq!(int(dbs.row_where("name", PROXY_DBNAME), "pool_size"), 2);
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);
    let fresh = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    assert_eq!(invoice_count(&fresh).await, GLOBEX_INVOICES);
    let log = proxy.log();
    for secret in [JWT_SECRET, db.pg().api_password(), ADMIN_PASSWORD] {
        assert!(!log.contains(secret), "the log shows a secret");
    }
}

// ------------------------------------------------------------------ tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_jwt_secret_admits_new_tokens_refuses_old_ones_and_keeps_logged_in_clients() {
    let db = TestDb::new();
    let config = ProxyConfig::for_db(&db);
    let mut proxy = Proxy::start(config.clone());
    let logged_in = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();

    let outcome = reload(&mut proxy, config.auth("secret", WRONG_SECRET)).await;
    assert!(outcome.contains(APPLIED), "{outcome}");

    let new_token = sign_with(
        jsonwebtoken::Algorithm::HS256,
        WRONG_SECRET.as_bytes(),
        &claims_for(TENANT_GLOBEX),
    );
    let fresh = proxy.connect(&new_token).await.unwrap();
    assert_eq!(current_tenant(&fresh).await, TENANT_GLOBEX);
    let Err(err) = proxy.connect(&token_for(TENANT_GLOBEX)).await else {
        panic!("a token signed with the old secret was accepted");
    };
    assert_eq!(sqlstate(&err), Some("28P01"), "{err}");
    // Verified once at login: the client logged in with the old key goes on.
    assert_eq!(invoice_count(&logged_in).await, ACME_INVOICES);
    assert_eq!(current_tenant(&logged_in).await, TENANT_ACME);
}

// ------------------------------------------------------------------ databases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_added_by_a_reload_are_served_and_removed_ones_refuse_new_logins() {
    let db = TestDb::new();
    let other = TestDb::new();
    other.psql("UPDATE invoices SET status = 'from-other'");
    let config = ProxyConfig::for_db(&db);
    let mut proxy = Proxy::start(config.clone());
    let app_client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let other_client_config = |proxy: &Proxy| {
        let mut c = proxy.client_config(&token_for(TENANT_ACME));
        c.dbname("other");
        c
    };
    let err = connect(&other_client_config(&proxy)).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("3D000"), "{err}");

    let with_other = config
        .clone()
        .database_key("other", "host", other.cluster().host())
        .database_key("other", "port", i64::from(other.cluster().port()))
        .database_key("other", "dbname", other.name())
        .database_key("other", "user", API_USER)
        .database_key("other", "password", other.pg().api_password());
    let outcome = reload(&mut proxy, with_other.clone()).await;
    assert!(outcome.contains(APPLIED), "{outcome}");
    let other_client = connect(&other_client_config(&proxy)).await.unwrap();
    let rows = other_client
        .simple_query("SELECT DISTINCT status FROM invoices")
        .await
        .unwrap();
    assert_eq!(simple_column(&rows), vec!["from-other"]);

    // Remove `app`: new logins to it are refused; its connected client finishes its life.
    let outcome = reload(&mut proxy, with_other.without_database("app")).await;
    assert!(outcome.contains(APPLIED), "{outcome}");
    let err = proxy.connect(&token_for(TENANT_ACME)).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("3D000"), "{err}");
    assert_eq!(invoice_count(&app_client).await, ACME_INVOICES);
    assert_eq!(invoice_count(&other_client).await, ACME_INVOICES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_upstream_moves_clients_after_their_transaction_ends() {
    let db = TestDb::new();
    let other = TestDb::new();
    other.psql("UPDATE invoices SET status = 'from-other'");
    let config = ProxyConfig::for_db(&db);
    let mut proxy = Proxy::start(config.clone());
    let idle = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let busy = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    idle.simple_query("SELECT 1").await.unwrap();
    busy.simple_query("BEGIN").await.unwrap();
    let statuses = "SELECT DISTINCT status FROM invoices WHERE status = 'from-other'";
    assert!(simple_column(&busy.simple_query(statuses).await.unwrap()).is_empty());

    let outcome = reload(&mut proxy, config.app_db("dbname", other.name())).await;
    assert!(outcome.contains(APPLIED), "{outcome}");
    assert!(outcome.contains(r#"reconnected=["app"]"#), "{outcome}");

    // The open transaction stays on the old database to its end...
    assert!(simple_column(&busy.simple_query(statuses).await.unwrap()).is_empty());
    busy.simple_query("COMMIT").await.unwrap();
    // ...then every transaction runs on the new one, with no error on the way.
    for client in [&busy, &idle] {
        let rows = client.simple_query(statuses).await.unwrap();
        assert_eq!(simple_column(&rows), vec!["from-other"]);
    }
}

// ------------------------------------------------------------------ restart-only keys

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_need_a_restart_keep_their_value_and_the_rest_applies() {
    let db = TestDb::new();
    let config = pool_of(2, &db);
    let mut proxy = Proxy::start(config.clone());
    let console = admin(&proxy).await;
    let changed = config
        .general("tenant_setting", "app.other_tenant")
        .general("workers", 3)
        .general("default_pool_size", 3);
    let outcome = reload(&mut proxy, changed).await;
    assert!(outcome.contains(APPLIED), "{outcome}");
    let log = proxy.log();
    let warning = log
        .lines()
        .find(|l| l.contains("need a restart"))
        .map(without_colours)
        .unwrap_or_else(|| panic!("no warning about restart-only keys:\n{log}"));
    assert!(
        warning.contains("tenant_setting") && warning.contains("workers"),
        "{warning}"
    );

    let shown = show(&console, "CONFIG").await;
    let value = |key: &str| shown.row_where("key", key).get("value").map(str::to_owned);
    assert_eq!(value("tenant_setting").as_deref(), Some(TENANT_SETTING));
    assert_eq!(value("default_pool_size").as_deref(), Some("3"));
    // Tenants are still set where the policies read them.
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
}

// ------------------------------------------------------------------ RELOAD

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_the_console_applies_the_file_and_reports_an_invalid_one() {
    let db = TestDb::new();
    let config = pool_of(2, &db);
    let proxy = Proxy::start(config.clone());
    let console = admin(&proxy).await;
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();

    std::fs::write(
        proxy.config_path(),
        config
            .clone()
            .general("default_pool_size", 4)
            .general("workers", 2)
            .to_toml(proxy.port()),
    )
    .unwrap();
    let replies = console.simple_query("RELOAD").await.unwrap();
    assert!(
        replies
            .iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(_))),
        "RELOAD did not complete"
    );
    let dbs = show(&console, "DATABASES").await;
    assert_eq!(int(dbs.row_where("name", PROXY_DBNAME), "pool_size"), 4);

    std::fs::write(
        proxy.config_path(),
        config
            .clone()
            .general("default_pool_size", 6)
            .general("query_wait_timeout", "soon")
            .to_toml(proxy.port()),
    )
    .unwrap();
    let err = console.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("F0000"), "{err}");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("pgtenant.query_wait_timeout"), "{message}");
    let dbs = show(&console, "DATABASES").await;
    assert_eq!(int(dbs.row_where("name", PROXY_DBNAME), "pool_size"), 4);
    assert!(proxy.log().contains(REJECTED));
    // The console and the clients go on.
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);
    show(&console, "POOLS").await;
}
