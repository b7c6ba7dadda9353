//! The backend pool through the proxy, against a real PostgreSQL: the bound on server
//! connections (checked in `pg_stat_activity` from a superuser connection), FIFO waiting and
//! `query_wait_timeout`, `min_pool_size`, `server_idle_timeout`, `server_lifetime`, PostgreSQL
//! stopped and started again under a running proxy, the refusal of privileged pool roles, and
//! backend authentication with MD5 and cleartext passwords.
//!
//! Every "eventually" is a bounded polling loop; no test asserts how long anything took.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use pgtenant::cluster::{HbaMethod, PasswordHash, SUPERUSER};
use postgres_protocol::message::frontend;
use support::raw::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::Client;

/// Upper bound for polling loops and for any single wait on the proxy.
const BOUND: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Server connections the proxy holds to `db` as `user`.
async fn server_count(superuser: &Client, db: &TestDb, user: &str) -> i64 {
    superuser
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
            &[&db.name(), &user],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls until `server_count` equals `want`; panics with the last count after [`BOUND`].
async fn wait_for_server_count(superuser: &Client, db: &TestDb, user: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let count = server_count(superuser, db, user).await;
        if count == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {want} server connections for {user}, still {count} after {BOUND:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn tenant_of(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        TENANT_ACME
    } else {
        TENANT_GLOBEX
    }
}

// ------------------------------------------------------------------ bound and waiting

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_never_exceed_pool_size_plus_reserve_under_50_clients() {
    const POOL: i64 = 3;
    const RESERVE: i64 = 1;
    const CLIENTS: usize = 50;
    let db = TestDb::new();
    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", POOL)
            .general("reserve_pool_size", RESERVE)
            .general("reserve_pool_timeout", 0.2),
    );
    let superuser = db.superuser().await;

    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicI64::new(0));
    let monitor = {
        let done = Arc::clone(&done);
        let max_seen = Arc::clone(&max_seen);
        let name = db.name().to_owned();
        tokio::spawn(async move {
            while !done.load(Ordering::Acquire) {
                let count: i64 = superuser
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE datname = $1 AND usename = $2",
                        &[&name, &API_USER],
                    )
                    .await
                    .unwrap()
                    .get(0);
                max_seen.fetch_max(count, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            superuser
        })
    };

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let token = token_for(tenant_of(i));
        let config = proxy.client_config(&token);
        tasks.spawn(async move {
            let mut client = connect(&config).await.unwrap();
            for _ in 0..3 {
                let txn = client.transaction().await.unwrap();
                let tenant = current_tenant(&txn).await;
                assert_eq!(tenant, tenant_of(i), "client {i} ran as another tenant");
                txn.execute("SELECT pg_sleep(0.01)", &[]).await.unwrap();
                let foreign: i64 = txn
                    .query_one(
                        "SELECT count(*) FROM invoices WHERE tenant_id::text <> $1",
                        &[&tenant_of(i)],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(foreign, 0, "client {i} saw another tenant's invoices");
                txn.commit().await.unwrap();
            }
        });
    }
    let mut completed = 0;
    while let Some(result) = tokio::time::timeout(BOUND * 4, tasks.join_next())
        .await
        .expect("clients did not finish: waiting clients were never served")
    {
        result.unwrap();
        completed += 1;
    }
    done.store(true, Ordering::Release);
    let superuser = monitor.await.unwrap();
    assert_eq!(completed, CLIENTS);

    let max = max_seen.load(Ordering::Acquire);
    assert!(max >= 1, "the monitor never saw a server connection");
    assert!(
        max <= POOL + RESERVE,
        "{max} server connections with default_pool_size {POOL} + reserve_pool_size {RESERVE}"
    );
    assert!(server_count(&superuser, &db, API_USER).await <= POOL + RESERVE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_are_all_served_in_arrival_order() {
    let db = TestDb::new();
    db.psql("CREATE SEQUENCE arrival; GRANT USAGE ON SEQUENCE arrival TO api_user;");
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 1));

    let holder = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let mut waiters = Vec::new();
    for i in 0..5 {
        let client = proxy.connect(&token_for(tenant_of(i))).await.unwrap();
        waiters.push(tokio::spawn(async move {
            // Simple protocol: one message, one place in the queue.
            let messages = client
                .simple_query("SELECT nextval('arrival')")
                .await
                .unwrap();
            messages
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
                    _ => None,
                })
                .and_then(|v| v.parse::<i64>().ok())
                .expect("nextval returned no row")
        }));
        // Give this waiter time to reach the queue before the next one arrives. This orders
        // the arrivals; nothing asserts how long anything took.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for waiter in &waiters {
        assert!(
            !waiter.is_finished(),
            "a waiter ran while the only server was busy"
        );
    }
    holder.batch_execute("COMMIT").await.unwrap();

    let mut order = Vec::new();
    for waiter in waiters {
        let value = tokio::time::timeout(BOUND, waiter)
            .await
            .expect("a waiting client was never served")
            .unwrap();
        order.push(value);
    }
    assert_eq!(order, vec![1, 2, 3, 4, 5], "not first come, first served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_fails_the_waiting_query_with_a_clear_error() {
    let db = TestDb::new();
    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", 1)
            .general("reserve_pool_size", 0)
            .general("query_wait_timeout", 1),
    );
    let holder = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let waiter = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    let result = tokio::time::timeout(BOUND, waiter.simple_query("SELECT 1"))
        .await
        .expect("the waiting query hung past query_wait_timeout");
    let err = match result {
        Ok(_) => panic!("the query ran although the only server was held"),
        Err(err) => err,
    };
    let code = sqlstate(&err).unwrap_or_else(|| panic!("no SQLSTATE in {err}"));
    assert!(
        code == "57014" || code.starts_with("08"),
        "unexpected SQLSTATE {code}: {err}"
    );
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(
        message.contains("query_wait_timeout"),
        "the message does not say why: {message:?}"
    );

    // The holder is unaffected and, once it commits, others are served again.
    assert_eq!(current_tenant(&holder).await, TENANT_ACME);
    holder.batch_execute("COMMIT").await.unwrap();
    let next = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    assert_eq!(current_tenant(&next).await, TENANT_GLOBEX);
}

// ------------------------------------------------------------------ pool maintenance

#[tokio::test]
async fn min_pool_size_opens_connections_without_any_client() {
    let db = TestDb::new();
    let _proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", 4)
            .general("min_pool_size", 2),
    );
    let superuser = db.superuser().await;
    wait_for_server_count(&superuser, &db, API_USER, 2).await;
}

/// Opens `n` server connections at once: `n` clients, each in an open transaction.
async fn hold_servers(proxy: &Proxy, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in 0..n {
        let client = proxy.connect(&token_for(tenant_of(i))).await.unwrap();
        client.batch_execute("BEGIN; SELECT 1").await.unwrap();
        clients.push(client);
    }
    clients
}

async fn commit_all(clients: &[Client]) {
    for client in clients {
        client.batch_execute("COMMIT").await.unwrap();
    }
}

#[tokio::test]
async fn server_idle_timeout_closes_idle_servers() {
    let db = TestDb::new();
    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", 4)
            .general("server_idle_timeout", 1),
    );
    let superuser = db.superuser().await;
    let clients = hold_servers(&proxy, 3).await;
    assert_eq!(server_count(&superuser, &db, API_USER).await, 3);
    commit_all(&clients).await;

    // The clients stay connected but idle: their servers go.
    wait_for_server_count(&superuser, &db, API_USER, 0).await;
    for (i, client) in clients.iter().enumerate() {
        assert_eq!(current_tenant(client).await, tenant_of(i));
    }
}

#[tokio::test]
async fn server_idle_timeout_keeps_min_pool_size() {
    let db = TestDb::new();
    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", 4)
            .general("min_pool_size", 1)
            .general("server_idle_timeout", 1),
    );
    let superuser = db.superuser().await;
    let clients = hold_servers(&proxy, 4).await;
    assert_eq!(server_count(&superuser, &db, API_USER).await, 4);
    commit_all(&clients).await;
    wait_for_server_count(&superuser, &db, API_USER, 1).await;
    // And it stays there for a few more maintenance rounds.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(server_count(&superuser, &db, API_USER).await, 1);
    }
}

#[tokio::test]
async fn server_lifetime_replaces_old_servers_but_not_mid_transaction() {
    let db = TestDb::new();
    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", 1)
            .general("server_lifetime", 1)
            .general("server_idle_timeout", 0),
    );
    let superuser = db.superuser().await;
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();

    // A transaction keeps its server even when the server outlives server_lifetime meanwhile.
    client.batch_execute("BEGIN").await.unwrap();
    let in_txn = backend_pid(&client).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(backend_pid(&client).await, in_txn);
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
    client.batch_execute("COMMIT").await.unwrap();

    // Afterwards the old server is closed and a new one takes its place.
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let pid = backend_pid(&client).await;
        if pid != in_txn {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server {in_txn} still in use after server_lifetime"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let alive: i64 = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&in_txn],
            )
            .await
            .unwrap()
            .get(0);
        if alive == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server {in_txn} still connected after server_lifetime"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert!(server_count(&superuser, &db, API_USER).await <= 1);
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
}

// ------------------------------------------------------------------ PostgreSQL down and back

/// Sends a simple query and returns the SQLSTATE of the first error, or `None` if it
/// succeeded (or the connection closed without an error).
async fn raw_query_error(stream: &mut TcpStream, sql: &str) -> Option<String> {
    let mut buf = BytesMut::new();
    frontend::query(sql, &mut buf).unwrap();
    if stream.write_all(&buf).await.is_err() {
        return None;
    }
    raw_next_error(stream).await
}

/// Reads until an ErrorResponse (returns its SQLSTATE), ReadyForQuery or EOF (`None`).
async fn raw_next_error(stream: &mut TcpStream) -> Option<String> {
    while let Some(msg) = read_msg(stream).await {
        match msg.tag {
            b'E' => return Some(error_field(&msg.body, b'C').unwrap_or_default()),
            b'Z' => return None,
            _ => {}
        }
    }
    None
}

/// Connects and runs a query; the SQLSTATE of whichever step failed.
async fn try_tenant_query(proxy: &Proxy, token: &str) -> Result<String, Option<String>> {
    let client = proxy
        .connect(token)
        .await
        .map_err(|e| sqlstate(&e).map(str::to_owned))?;
    let row = client
        .query_one(&format!("SELECT current_setting('{TENANT_SETTING}')"), &[])
        .await
        .map_err(|e| sqlstate(&e).map(str::to_owned))?;
    Ok(row.get(0))
}

fn is_class_08(code: &Option<String>) -> bool {
    code.as_deref().is_some_and(|c| c.starts_with("08"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_gives_class_08_errors_and_the_proxy_recovers_by_itself() {
    let pg = dedicated_pg();
    let db = pg.fresh_db();
    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", 2)
            .general("server_connect_timeout", 5),
    );
    let acme = token_for(TENANT_ACME);

    // One client idle between transactions, one in the middle of a transaction.
    let idle = proxy.connect(&acme).await.unwrap();
    assert_eq!(current_tenant(&idle).await, TENANT_ACME);
    let (mut busy, _) = raw_login(proxy.port(), &acme, &[]).await;
    assert_eq!(raw_query_error(&mut busy, "BEGIN; SELECT 1").await, None);

    let stopper = Arc::clone(&pg);
    tokio::task::spawn_blocking(move || stopper.ok(stopper.cluster().stop_server()))
        .await
        .unwrap();

    // The client in a transaction is told its server went away.
    let busy_error = match raw_next_error(&mut busy).await {
        Some(code) => Some(code),
        // Nothing arrived before EOF on our side: ask, the answer must be an error.
        None => raw_query_error(&mut busy, "SELECT 1").await,
    };
    assert!(
        busy_error.as_deref() == Some("57P01") || is_class_08(&busy_error),
        "client in a transaction got {busy_error:?}"
    );

    // The idle client's next transaction, and a new client, get class 08 errors.
    let idle_error = match idle.simple_query("SELECT 1").await {
        Ok(_) => panic!("a query ran while PostgreSQL was down"),
        Err(err) => sqlstate(&err).map(str::to_owned),
    };
    assert!(is_class_08(&idle_error), "idle client got {idle_error:?}");
    match try_tenant_query(&proxy, &acme).await {
        Ok(_) => panic!("a new client ran a query while PostgreSQL was down"),
        Err(code) => assert!(is_class_08(&code), "new client got {code:?}"),
    }

    let starter = Arc::clone(&pg);
    tokio::task::spawn_blocking(move || starter.ok(starter.cluster().start_server()))
        .await
        .unwrap();

    // Without restarting the proxy, new clients work again.
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match try_tenant_query(&proxy, &acme).await {
            Ok(tenant) => {
                assert_eq!(tenant, TENANT_ACME);
                break;
            }
            Err(code) => assert!(
                tokio::time::Instant::now() < deadline,
                "still failing ({code:?}) after PostgreSQL came back"
            ),
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let client = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    assert_eq!(invoice_count(&client).await, GLOBEX_INVOICES);
}

// ------------------------------------------------------------------ the pool role

fn assert_refused_for_rls(err: &tokio_postgres::Error, what: &str) {
    assert_eq!(sqlstate(err), Some("28000"), "{what}: {err}");
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(
        message.contains("row-level security"),
        "{what}: the message does not mention row-level security: {message:?}"
    );
}

/// A proxy whose pool role is `privilege` (superuser, BYPASSRLS) refuses clients, twice in a
/// row; with `allow_privileged_role` it serves a client of `tenant`.
async fn assert_refused_unless_allowed(config: ProxyConfig, privilege: &str, tenant: &str) {
    let proxy = Proxy::start(config.clone());
    for attempt in 0..2 {
        match proxy.connect(&token_for(TENANT_ACME)).await {
            Ok(client) => {
                let result = client.simple_query("SELECT 1").await;
                panic!("attempt {attempt}: served with a {privilege} pool role: {result:?}");
            }
            Err(err) => assert_refused_for_rls(&err, privilege),
        }
    }
    drop(proxy);

    let proxy = Proxy::start(config.app_db("allow_privileged_role", true));
    let client = proxy.connect(&token_for(tenant)).await.unwrap();
    assert_eq!(current_tenant(&client).await, tenant);
}

#[tokio::test]
async fn superuser_pool_role_is_refused_unless_allowed() {
    let db = TestDb::new();
    let config = ProxyConfig::for_db(&db)
        .app_db("user", SUPERUSER)
        .app_db("password", db.cluster().superuser_password());
    assert_refused_unless_allowed(config, "superuser", TENANT_ACME).await;
}

#[tokio::test]
async fn bypassrls_pool_role_is_refused_unless_allowed() {
    let db = TestDb::new();
    let password = "bypass-role-password";
    let role = db.create_app_role("bypass", password, PasswordHash::ScramSha256);
    db.psql(&format!("ALTER ROLE {role} BYPASSRLS"));
    let config = ProxyConfig::for_db(&db)
        .app_db("user", role.as_str())
        .app_db("password", password);
    assert_refused_unless_allowed(config, "BYPASSRLS", TENANT_GLOBEX).await;
}

// ------------------------------------------------------------------ backend authentication

/// Serves `db` through a proxy that logs in as a fresh member of `api_user` whose password is
/// stored as `hash` and checked with `method`; checks that clients work, then that a wrong
/// configured password does not.
async fn backend_auth_works(prefix: &str, hash: PasswordHash, method: HbaMethod) {
    let db = TestDb::new();
    let password = format!("{prefix}-backend-password");
    let role = db.create_app_role(prefix, &password, hash);
    db.pg().ok(db.cluster().set_hba_method(&role, method));

    let config = ProxyConfig::for_db(&db)
        .app_db("user", role.as_str())
        .app_db("password", password.as_str());
    let proxy = Proxy::start(config.clone());
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);
    let superuser = db.superuser().await;
    assert!(server_count(&superuser, &db, &role).await >= 1);
    drop(client);
    drop(proxy);

    // The password really is checked.
    let wrong = Proxy::start(config.app_db("password", "not-the-password"));
    match wrong.connect(&token_for(TENANT_ACME)).await {
        Ok(client) => {
            let err = client
                .simple_query("SELECT 1")
                .await
                .expect_err("served with a wrong backend password");
            assert!(!err.to_string().contains("not-the-password"), "{err}");
        }
        Err(err) => {
            assert!(sqlstate(&err).is_some(), "no SQLSTATE: {err}");
            assert!(!err.to_string().contains("not-the-password"), "{err}");
        }
    }
    assert!(
        !wrong.log().contains("not-the-password"),
        "the backend password is in the proxy log"
    );
}

#[tokio::test]
async fn backend_md5_authentication_works() {
    backend_auth_works("md5", PasswordHash::Md5, HbaMethod::Md5).await;
}

#[tokio::test]
async fn backend_cleartext_password_authentication_works() {
    backend_auth_works("clear", PasswordHash::ScramSha256, HbaMethod::Password).await;
}
