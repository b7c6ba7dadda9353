//! The admin console's control commands against a running proxy, with PgBouncer's meaning:
//! PAUSE waits for running transactions and holds new ones until RESUME (at most
//! `query_wait_timeout`); RECONNECT replaces the servers as they come free without a client
//! noticing; KILL closes a database's clients (57P01) and servers and holds new clients until
//! RESUME; KILL_CLIENT closes one client (the id of SHOW CLIENTS) and rolls back its open
//! transaction; SHUTDOWN drains like SIGTERM and SHUTDOWN WAIT_FOR_CLIENTS waits for the last
//! client; SHOW POOLS counts idle logged-in clients as `cl_active` and held ones as
//! `cl_waiting`.
//!
//! Nothing here asserts how long anything took. Ordering is shown by state the proxy reports
//! (`cl_waiting`, `paused`) or by a guarantee (PAUSE cannot return while a server is out);
//! "has not completed" is only ever checked as "not yet", never as a speed claim.

mod support;

use std::time::Duration;

use support::admin::*;
use support::raw::{raw_login, raw_query, read_msg};
use support::*;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// Upper bound for polling loops and for any single wait on the proxy.
const BOUND: Duration = Duration::from_secs(30);

const INSERT_MARKED: &str = "INSERT INTO invoices (tenant_id, amount, status) \
     VALUES (current_setting('app.current_tenant_id')::uuid, 1, 'control-test')";

/// Server connections the proxy holds to `db` (as the pool role), from PostgreSQL's side.
async fn server_pids(superuser: &Client, db: &TestDb) -> Vec<i32> {
    superuser
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
            &[&db.name(), &API_USER],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Backends of `db` idle inside a transaction.
async fn open_transactions(superuser: &Client, db: &TestDb) -> i64 {
    superuser
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND state LIKE 'idle in transaction%'",
            &[&db.name()],
        )
        .await
        .unwrap()
        .get(0)
}

/// `(cl_active, cl_waiting)` of the app pool.
async fn pool_clients(console: &Client) -> (i64, i64) {
    let pools = show(console, "POOLS").await;
    let app = pools.row_where("database", PROXY_DBNAME);
    (int(app, "cl_active"), int(app, "cl_waiting"))
}

async fn paused(console: &Client) -> i64 {
    int(
        show(console, "DATABASES")
            .await
            .row_where("name", PROXY_DBNAME),
        "paused",
    )
}

/// Runs `sql` on `client` in a task, handing the client back with the result.
fn spawn_query(
    client: Client,
    sql: &'static str,
) -> JoinHandle<(Client, Result<(), tokio_postgres::Error>)> {
    tokio::spawn(async move {
        let result = client.simple_query(sql).await.map(|_| ());
        (client, result)
    })
}

async fn finished<T>(task: JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(BOUND, task)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not complete within {BOUND:?}"))
        .unwrap()
}

/// Reads the FATAL a closed raw client was sent, then expects EOF; returns its SQLSTATE.
async fn fatal_then_eof(stream: &mut tokio::net::TcpStream) -> String {
    let msg = read_msg(stream)
        .await
        .expect("closed without an ErrorResponse");
    assert_eq!(char::from(msg.tag), 'E', "expected an ErrorResponse");
    assert_eq!(
        support::raw::error_field(&msg.body, b'V').as_deref(),
        Some("FATAL")
    );
    assert!(read_msg(stream).await.is_none(), "still open after FATAL");
    support::raw::error_field(&msg.body, b'C').unwrap_or_default()
}

// ------------------------------------------------------------------ PAUSE / RESUME

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_the_running_transaction_and_holds_new_ones_until_resume() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db).general("query_wait_timeout", 0));
    let superuser = db.superuser().await;
    let busy = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let held = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    busy.simple_query("BEGIN").await.unwrap();
    busy.simple_query(INSERT_MARKED).await.unwrap();

    let console = admin(&proxy).await;
    let monitor = admin(&proxy).await;
    let pause = spawn_query(console, "PAUSE");
    eventually("the pool reports paused", || async {
        paused(&monitor).await == 1
    })
    .await;

    // The running transaction goes on, and PAUSE cannot return while it holds its server.
    busy.simple_query("SELECT 1").await.unwrap();
    assert!(
        !pause.is_finished(),
        "PAUSE returned while a transaction was running"
    );

    // A new transaction is held: the pool counts its client as waiting.
    let held_query = spawn_query(held, "SELECT 1");
    eventually("the new transaction is held", || async {
        pool_clients(&monitor).await.1 == 1
    })
    .await;

    busy.simple_query("COMMIT").await.unwrap();
    let (console, result) = finished(pause, "PAUSE after the transaction ended").await;
    result.unwrap();
    // PgBouncer's PAUSE disconnects the servers: none is left upstream.
    eventually("servers closed", || async {
        server_pids(&superuser, &db).await.is_empty()
    })
    .await;
    assert!(!held_query.is_finished(), "a transaction ran while paused");
    assert_eq!(pool_clients(&monitor).await.1, 1);

    console.simple_query("RESUME").await.unwrap();
    let (_held, result) = finished(held_query, "the held transaction after RESUME").await;
    result.unwrap();
    assert_eq!(paused(&monitor).await, 0);
    let committed = db.psql("SELECT count(*) FROM invoices WHERE status = 'control-test'");
    assert_eq!(committed.trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_held_by_pause_still_gives_up_at_query_wait_timeout() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db).general("query_wait_timeout", 0.2));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let console = admin(&proxy).await;
    console.simple_query("PAUSE").await.unwrap();
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(message.contains("paused"), "{message}");
}

// ------------------------------------------------------------------ RECONNECT

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replaces_every_server_as_it_comes_free_without_an_error() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db));
    let superuser = db.superuser().await;
    let in_txn = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let idle = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    idle.simple_query("SELECT 1").await.unwrap();
    in_txn.simple_query("BEGIN").await.unwrap();
    let pid_in_txn = backend_pid(&in_txn).await;
    let old = server_pids(&superuser, &db).await;
    assert!(old.contains(&pid_in_txn));

    let console = admin(&proxy).await;
    console.simple_query("RECONNECT app").await.unwrap();

    // The open transaction keeps its server to the end...
    assert_eq!(backend_pid(&in_txn).await, pid_in_txn);
    in_txn.simple_query("COMMIT").await.unwrap();
    // ...and every later transaction runs on a new one.
    for (client, tenant) in [(&in_txn, TENANT_ACME), (&idle, TENANT_GLOBEX)] {
        let pid = backend_pid(client).await;
        assert!(
            !old.contains(&pid),
            "pid {pid} is a server from before RECONNECT"
        );
        assert_eq!(current_tenant(client).await, tenant);
    }
    eventually("the old servers are closed", || async {
        let now = server_pids(&superuser, &db).await;
        !now.iter().any(|pid| old.contains(pid))
    })
    .await;
}

// ------------------------------------------------------------------ KILL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_closes_the_databases_clients_and_servers_and_new_clients_wait_for_resume() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db).general("query_wait_timeout", 0));
    let superuser = db.superuser().await;
    let (mut idle, _) = raw_login(proxy.port(), &token_for(TENANT_GLOBEX), &[]).await;
    let (mut in_txn, _) = raw_login(proxy.port(), &token_for(TENANT_ACME), &[]).await;
    raw_query(&mut in_txn, "BEGIN").await;
    raw_query(&mut in_txn, INSERT_MARKED).await;
    assert_eq!(open_transactions(&superuser, &db).await, 1);

    let console = admin(&proxy).await;
    console.simple_query("KILL app").await.unwrap();

    assert_eq!(fatal_then_eof(&mut idle).await, "57P01");
    assert_eq!(fatal_then_eof(&mut in_txn).await, "57P01");
    eventually("the killed database's servers are gone", || async {
        server_pids(&superuser, &db).await.is_empty()
    })
    .await;
    let committed = db.psql("SELECT count(*) FROM invoices WHERE status = 'control-test'");
    assert_eq!(
        committed.trim(),
        "0",
        "the killed transaction was committed"
    );

    // A new client logs in, but its transaction waits for RESUME.
    let late = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let late_query = spawn_query(late, "SELECT 1");
    eventually("the new client is held", || async {
        pool_clients(&console).await.1 == 1
    })
    .await;
    assert!(
        !late_query.is_finished(),
        "a transaction ran on a killed database"
    );
    console.simple_query("RESUME app").await.unwrap();
    let (_late, result) = finished(late_query, "the held client after RESUME").await;
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_closes_only_that_client_and_rolls_back_its_transaction() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db));
    let superuser = db.superuser().await;
    let (mut victim, _) = raw_login(proxy.port(), &token_for(TENANT_ACME), &[]).await;
    let bystander = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    raw_query(&mut victim, "BEGIN").await;
    raw_query(&mut victim, INSERT_MARKED).await;

    let console = admin(&proxy).await;
    let clients = show(&console, "CLIENTS").await;
    let victim_id = int(clients.row_where("tenant", TENANT_ACME), "id");
    let bystander_id = int(clients.row_where("tenant", TENANT_GLOBEX), "id");
    assert_eq!(
        int(clients.row_where("tenant", TENANT_ACME), "in_transaction"),
        1
    );
    console
        .simple_query(&format!("KILL_CLIENT {victim_id}"))
        .await
        .unwrap();

    assert_eq!(fatal_then_eof(&mut victim).await, "57P01");
    assert_eq!(invoice_count(&bystander).await, GLOBEX_INVOICES);
    eventually("the killed transaction is gone upstream", || async {
        open_transactions(&superuser, &db).await == 0
    })
    .await;
    let committed = db.psql("SELECT count(*) FROM invoices WHERE status = 'control-test'");
    assert_eq!(
        committed.trim(),
        "0",
        "the killed transaction was committed"
    );
    let clients = show(&console, "CLIENTS").await;
    let ids: Vec<i64> = clients.rows.iter().map(|r| int(r, "id")).collect();
    assert_eq!(ids, vec![bystander_id]);
    // The id is gone for good.
    let err = console
        .simple_query(&format!("KILL_CLIENT {victim_id}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42704"), "{err}");
}

// ------------------------------------------------------------------ SHUTDOWN

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_like_sigterm() {
    let db = TestDb::new();
    let mut proxy = Proxy::start(admin_config(&db));
    let busy = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let idle = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    busy.simple_query("BEGIN").await.unwrap();
    busy.simple_query(INSERT_MARKED).await.unwrap();

    let console = admin(&proxy).await;
    console.simple_query("SHUTDOWN").await.unwrap();

    eventually("the idle client is closed", || async { idle.is_closed() }).await;
    eventually("the console is closed", || async { console.is_closed() }).await;
    eventually("new connections are refused", || async {
        proxy.connect(&token_for(TENANT_GLOBEX)).await.is_err()
    })
    .await;
    // The transaction in flight finishes and commits.
    busy.simple_query("SELECT 1").await.unwrap();
    busy.simple_query("COMMIT").await.unwrap();
    let committed = db.psql("SELECT count(*) FROM invoices WHERE status = 'control-test'");
    assert_eq!(committed.trim(), "1");
    let mut status = None;
    eventually("the proxy exits", || {
        status = proxy.try_exit_status();
        std::future::ready(status.is_some())
    })
    .await;
    let status = status.unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wait_for_clients_exits_only_when_the_last_client_has_left() {
    let db = TestDb::new();
    let mut proxy = Proxy::start(admin_config(&db));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let console = admin(&proxy).await;
    console
        .simple_query("SHUTDOWN WAIT_FOR_CLIENTS")
        .await
        .unwrap();

    eventually("new connections are refused", || async {
        proxy.connect(&token_for(TENANT_GLOBEX)).await.is_err()
    })
    .await;
    // Connected clients are served as before, idle or not, and the process stays.
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);
    show(&console, "POOLS").await;
    assert!(
        proxy.try_exit_status().is_none(),
        "exited with clients connected"
    );

    drop(client);
    drop(console);
    let mut status = None;
    eventually("the proxy exits after the last client left", || {
        status = proxy.try_exit_status();
        std::future::ready(status.is_some())
    })
    .await;
    let status = status.unwrap();
    assert!(status.success(), "exit status {status}");
}

// ------------------------------------------------------------------ SHOW POOLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_counts_idle_logged_in_clients_as_active() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db));
    let console = admin(&proxy).await;
    assert_eq!(pool_clients(&console).await, (0, 0));
    let first = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    first.simple_query("SELECT 1").await.unwrap();
    let _second = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    // Both are idle, neither holds a server: PgBouncer counts them as cl_active.
    assert_eq!(pool_clients(&console).await, (2, 0));
    let pools = show(&console, "POOLS").await;
    assert_eq!(
        int(pools.row_where("database", PROXY_DBNAME), "sv_active"),
        0
    );
    drop(first);
    eventually("a client that left is no longer counted", || async {
        pool_clients(&console).await == (1, 0)
    })
    .await;
}
