//! Graceful shutdown: on SIGTERM pgtenant stops accepting, closes clients that are between
//! transactions with 57P01, lets a transaction in flight finish, then exits.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn sigterm_lets_a_transaction_in_flight_finish_and_closes_idle_clients() {
    let db = TestDb::new();
    let mut proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 2));
    let busy = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let idle = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    busy.batch_execute("BEGIN").await.unwrap();
    busy.batch_execute(
        "INSERT INTO invoices (tenant_id, amount, status) \
         VALUES (current_setting('app.current_tenant_id')::uuid, 1, 'drain-test')",
    )
    .await
    .unwrap();

    proxy.signal(libc::SIGTERM);

    // The idle client is told why and closed.
    eventually("the idle client closed on shutdown", || async {
        idle.is_closed()
    })
    .await;

    // No new connections are accepted.
    eventually("new connections refused after SIGTERM", || async {
        proxy.connect(&token_for(TENANT_GLOBEX)).await.is_err()
    })
    .await;

    // The transaction in flight goes on and commits.
    assert_eq!(invoice_count(&busy).await, ACME_INVOICES + 1);
    busy.batch_execute("COMMIT").await.unwrap();
    let committed = db.psql("SELECT count(*) FROM invoices WHERE status = 'drain-test'");
    assert_eq!(committed.trim(), "1");

    // Then the proxy exits by itself.
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = proxy.try_exit_status() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = exited.expect("the proxy did not exit after its last transaction ended");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_transaction_left_open_past_shutdown_timeout_is_rolled_back_and_the_proxy_exits() {
    let db = TestDb::new();
    let mut proxy = Proxy::start(ProxyConfig::for_db(&db).general("shutdown_timeout", 1));
    let stuck = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    stuck.batch_execute("BEGIN").await.unwrap();
    stuck
        .batch_execute(
            "INSERT INTO invoices (tenant_id, amount, status) \
             VALUES (current_setting('app.current_tenant_id')::uuid, 1, 'never-committed')",
        )
        .await
        .unwrap();

    proxy.signal(libc::SIGTERM);

    // The transaction never ends on its own; the default (30 s) would still be waiting
    // when this gives up.
    let mut exited = None;
    eventually_within(
        Duration::from_secs(15),
        "the proxy exits after shutdown_timeout",
        || {
            exited = proxy.try_exit_status();
            std::future::ready(exited.is_some())
        },
    )
    .await;
    let status = exited.expect("checked above");
    assert!(status.success(), "exit status {status}");

    // Its server was closed with the transaction open: nothing was committed, and no backend
    // is left in a transaction.
    let in_transaction = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
         AND state LIKE 'idle in transaction%'",
        db.name()
    );
    eventually("no backend left in a transaction", || {
        std::future::ready(db.psql(&in_transaction).trim() == "0")
    })
    .await;
    let committed = db.psql("SELECT count(*) FROM invoices WHERE status = 'never-committed'");
    assert_eq!(committed.trim(), "0");
}
