//! Query cancel through the proxy: a CancelRequest with the key pgtenant gave a client cancels
//! that client's running query; a wrong key does nothing; and a key used after its client's
//! transaction ended never reaches the query another client now runs on the same server.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

use support::wire::*;

/// Polls of `pg_stat_activity` before giving up (50 ms apart).
const POLLS: usize = 200;

/// Waits until an `api_user` backend of `db` is running a query containing `marker`.
async fn wait_until_running(superuser: &Client, db: &TestDb, marker: &str) {
    let pattern = format!("%{marker}%");
    for _ in 0..POLLS {
        let running: i64 = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2 \
                 AND state = 'active' AND query LIKE $3",
                &[&API_USER, &db.name(), &pattern],
            )
            .await
            .unwrap()
            .get(0);
        if running > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the query {marker:?} never showed up as running");
}

/// Sends a CancelRequest to the proxy and waits until the proxy has handled it (it closes
/// the connection afterwards).
async fn send_cancel(port: u16, pid: i32, secret: i32) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = BytesMut::new();
    frontend::cancel_request(pid, secret, &mut buf);
    stream.write_all(&buf).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(READ_BOUND, stream.read_to_end(&mut rest))
        .await
        .expect("the proxy kept a cancel connection open")
        .ok();
    assert!(
        rest.is_empty(),
        "the proxy answered a CancelRequest: {rest:?}"
    );
}

#[tokio::test]
async fn cancel_token_cancels_the_running_query() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 2));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let superuser = db.superuser().await;
    let token = client.cancel_token();
    let sleeping = tokio::spawn(async move {
        let result = client
            .simple_query("SELECT pg_sleep(10) /* cancel-me */")
            .await;
        (client, result)
    });
    wait_until_running(&superuser, &db, "cancel-me").await;
    token.cancel_query(NoTls).await.unwrap();
    let (client, result) = tokio::time::timeout(Duration::from_secs(5), sleeping)
        .await
        .expect("the query was not cancelled")
        .unwrap();
    let err = result.unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    // The connection goes on, in its tenant.
    let tenant: String = client
        .query_one("SELECT current_setting('app.current_tenant_id')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tenant, TENANT_ACME);
}

#[tokio::test]
async fn cancel_with_a_wrong_key_does_nothing() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 2));
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_GLOBEX)).await;
    let superuser = db.superuser().await;

    let mut buf = BytesMut::new();
    frontend::query("SELECT 'slept' /* wrong-key */ FROM pg_sleep(2)", &mut buf).unwrap();
    client.send(&buf).await;
    wait_until_running(&superuser, &db, "wrong-key").await;
    send_cancel(proxy.port(), client.pid, client.secret.wrapping_add(1)).await;
    send_cancel(proxy.port(), client.pid, !client.secret).await;
    send_cancel(proxy.port(), client.pid.wrapping_add(1), client.secret).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "TDCZ", "{:?}", first_error(&replies));
    assert_eq!(rows(&replies), [[Some("slept".to_owned())]]);

    // The right key does cancel (so the key above was the one that mattered).
    client.send(&buf).await;
    wait_until_running(&superuser, &db, "wrong-key").await;
    send_cancel(proxy.port(), client.pid, client.secret).await;
    let replies = client.until_ready().await;
    assert_eq!(first_error(&replies).map(|e| e.0).as_deref(), Some("57014"));
}

#[tokio::test]
async fn stale_cancel_does_not_cancel_another_clients_query_on_the_same_server() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 1));
    let superuser = db.superuser().await;

    let mut first = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    let replies = first.simple("SELECT pg_backend_pid()").await;
    let first_server = rows(&replies)[0][0].clone().unwrap();

    let second = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    let sleeping = tokio::spawn(async move {
        second
            .query_one(
                "SELECT pg_backend_pid()::text FROM pg_sleep(2) /* not-yours */",
                &[],
            )
            .await
            .map(|row| row.get::<_, String>(0))
    });
    wait_until_running(&superuser, &db, "not-yours").await;
    // The first client's key, after its transaction ended.
    send_cancel(proxy.port(), first.pid, first.secret).await;
    let second_server = tokio::time::timeout(READ_BOUND, sleeping)
        .await
        .expect("the second client's query never ended")
        .unwrap()
        .unwrap_or_else(|err| panic!("a stale cancel reached another client's query: {err}"));
    assert_eq!(
        second_server, first_server,
        "both clients should share the one server"
    );

    // The first client still works and was not disturbed either.
    let replies = first
        .simple("SELECT current_setting('app.current_tenant_id')")
        .await;
    assert_eq!(rows(&replies), [[Some(TENANT_ACME.to_owned())]]);
}
