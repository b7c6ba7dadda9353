//! The tenant seal (config/sql/seal.sql + seal_policies.sql, `tenant_seal = true`): the
//! database itself rejects a forged tenant, whatever the guard misses. Normal traffic works
//! in both protocols; a tenant that forges `app.current_tenant_id` through a function the
//! guard cannot look into reads and writes nothing of another tenant (and, to show why the
//! seal exists, reads everything of it without the seal); the registration and the secrets
//! are out of a client's reach; the seal never shows in `pg_stat_activity`; and after a
//! PostgreSQL restart the proxy registers its new connections again.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio_postgres::{Client, SimpleQueryMessage};

fn install_seal(db: &TestDb) {
    db.psql(include_str!("../config/sql/seal.sql"));
    db.psql(include_str!("../config/sql/seal_policies.sql"));
}

fn sealed_proxy(db: &TestDb) -> Proxy {
    install_seal(db);
    Proxy::start(
        ProxyConfig::for_db(db)
            .general("default_pool_size", 2)
            .app_db("tenant_seal", true),
    )
}

/// Functions owned by the superuser that api_user may run, which forge the tenant where the
/// guard cannot see it: the client only sends `SELECT forge('…')`.
fn create_forging_functions(db: &TestDb) {
    db.psql(
        "CREATE FUNCTION public.forge(t text) RETURNS void
             LANGUAGE plpgsql SECURITY INVOKER
             AS $$BEGIN PERFORM set_config('app.current_tenant_id', t, true); END$$;
         CREATE FUNCTION public.forge_dynamic(t text) RETURNS void
             LANGUAGE plpgsql SECURITY INVOKER
             AS $$BEGIN
                 EXECUTE format('SE' || 'T LOCAL %s.%s = %L', 'app', 'current_' || 'tenant_id', t);
             END$$;
         REVOKE ALL ON FUNCTION public.forge(text), public.forge_dynamic(text) FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION public.forge(text), public.forge_dynamic(text) TO api_user;",
    );
}

fn rows(messages: &[SimpleQueryMessage]) -> Vec<String> {
    simple_column(messages)
}

/// `BEGIN; SELECT <forger>('<Acme>'); SELECT tenant_id FROM invoices; COMMIT` as Globex;
/// returns the tenant ids read after forging.
async fn forge_and_read(client: &Client, forger: &str) -> Vec<String> {
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query(&format!("SELECT {forger}('{TENANT_ACME}')"))
        .await
        .unwrap();
    // The forgery itself worked: the setting now holds Acme's id.
    let setting = client.simple_query(CURRENT_TENANT).await.unwrap();
    assert_eq!(rows(&setting), [TENANT_ACME]);
    let ids = rows(
        &client
            .simple_query("SELECT tenant_id::text FROM invoices")
            .await
            .unwrap(),
    );
    client.simple_query("COMMIT").await.unwrap();
    ids
}

#[tokio::test]
async fn sealed_traffic_works_for_each_tenant_in_both_protocols() {
    let db = TestDb::new();
    let proxy = sealed_proxy(&db);
    for (tenant, expected) in [
        (TENANT_ACME, ACME_INVOICES),
        (TENANT_GLOBEX, GLOBEX_INVOICES),
    ] {
        let client = proxy.connect(&token_for(tenant)).await.unwrap();
        // Extended protocol.
        assert_eq!(invoice_count(&client).await, expected, "{tenant}");
        assert_eq!(current_tenant(&client).await, tenant);
        // Simple protocol, autocommit and in a block.
        let ids = rows(
            &client
                .simple_query("SELECT tenant_id::text FROM invoices")
                .await
                .unwrap(),
        );
        assert_eq!(ids.len() as i64, expected);
        assert!(ids.iter().all(|t| t == tenant), "{ids:?}");
        let reply = client
            .simple_query("BEGIN; SELECT count(*) FROM invoices; COMMIT")
            .await
            .unwrap();
        assert_eq!(rows(&reply), [expected.to_string()]);
        // The policies read the tenant through the seal, and it verifies.
        let sealed = client
            .query_one("SELECT pgtenant_seal.tenant()", &[])
            .await
            .unwrap();
        assert_eq!(sealed.get::<_, Option<String>>(0).as_deref(), Some(tenant));
    }
}

#[tokio::test]
async fn forging_through_a_function_reads_nothing_of_another_tenant_with_the_seal() {
    let db = TestDb::new();
    create_forging_functions(&db);
    let proxy = sealed_proxy(&db);
    let globex = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    for forger in ["forge", "forge_dynamic"] {
        let ids = forge_and_read(&globex, forger).await;
        assert_eq!(ids, Vec::<String>::new(), "{forger}: read {ids:?}");
    }
    // Next transaction: the proxy's sealed tenant again.
    assert_eq!(invoice_count(&globex).await, GLOBEX_INVOICES);
}

/// Why the seal exists: the same attack, without it, reads all of Acme's rows. This pins
/// down the unsealed behaviour the guard alone cannot prevent.
#[tokio::test]
async fn forging_through_a_function_reads_another_tenant_without_the_seal() {
    let db = TestDb::new();
    create_forging_functions(&db);
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 2));
    let globex = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    for forger in ["forge", "forge_dynamic"] {
        let ids = forge_and_read(&globex, forger).await;
        assert_eq!(ids.len() as i64, ACME_INVOICES, "{forger}: read {ids:?}");
        assert!(ids.iter().all(|t| t == TENANT_ACME), "{forger}: {ids:?}");
    }
}

#[tokio::test]
async fn writes_with_a_forged_tenant_are_rejected_with_the_seal() {
    let db = TestDb::new();
    create_forging_functions(&db);
    let proxy = sealed_proxy(&db);
    let globex = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();

    let insert = format!(
        "INSERT INTO invoices (tenant_id, amount, status) VALUES ('{TENANT_ACME}', 1.00, 'forged')"
    );
    globex.simple_query("BEGIN").await.unwrap();
    globex
        .simple_query(&format!("SELECT forge('{TENANT_ACME}')"))
        .await
        .unwrap();
    let err = globex.simple_query(&insert).await.unwrap_err();
    // new row violates row-level security policy
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    globex.simple_query("ROLLBACK").await.unwrap();

    // UPDATE and DELETE find nothing to touch.
    globex.simple_query("BEGIN").await.unwrap();
    globex
        .simple_query(&format!("SELECT forge('{TENANT_ACME}')"))
        .await
        .unwrap();
    let updated = globex
        .execute("UPDATE invoices SET status = 'forged'", &[])
        .await
        .unwrap();
    let deleted = globex.execute("DELETE FROM invoices", &[]).await.unwrap();
    globex.simple_query("COMMIT").await.unwrap();
    assert_eq!((updated, deleted), (0, 0));

    let untouched = db.psql(
        "SELECT count(*) FROM invoices WHERE status = 'forged' OR status IS NULL; \
         SELECT count(*) FROM invoices",
    );
    assert_eq!(
        untouched.split_whitespace().collect::<Vec<_>>(),
        ["0", &(ACME_INVOICES + GLOBEX_INVOICES).to_string()]
    );
}

#[tokio::test]
async fn a_client_cannot_register_a_seal_again_or_read_the_secrets() {
    let db = TestDb::new();
    let proxy = sealed_proxy(&db);
    let globex = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();

    let err = globex
        .simple_query("SELECT pgtenant_seal.register('\\x00112233445566778899aabbccddeeff')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("already registered")),
        "{err}"
    );
    // Also through the extended protocol, with the secret bound.
    let secret: &[u8] = &[7u8; 32];
    let err = globex
        .query("SELECT pgtenant_seal.register($1)", &[&secret])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");

    for sql in [
        "SELECT * FROM pgtenant_seal.backend_secret",
        "SELECT secret FROM pgtenant_seal.backend_secret WHERE pid = pg_backend_pid()",
    ] {
        let err = globex.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err), Some("42501"), "{sql}: {err}");
    }
    let err = globex
        .simple_query("DELETE FROM pgtenant_seal.backend_secret")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");

    // The connection still works, sealed, in its own tenant.
    assert_eq!(invoice_count(&globex).await, GLOBEX_INVOICES);
}

#[tokio::test]
async fn the_seal_never_appears_in_pg_stat_activity() {
    let db = TestDb::new();
    let proxy = sealed_proxy(&db);
    let globex = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    let pid = backend_pid(&globex).await;

    let sleeper = tokio::spawn(async move {
        let result = globex
            .simple_query("SELECT pg_sleep(300), count(*) FROM invoices")
            .await;
        (globex, result)
    });

    let superuser = db.superuser().await;
    let mut seen = false;
    for _ in 0..600 {
        let row = superuser
            .query_opt(
                "SELECT query FROM pg_stat_activity WHERE pid = $1 AND state = 'active' \
                 AND query LIKE '%pg_sleep%'",
                &[&pid],
            )
            .await
            .unwrap();
        if row.is_some() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen,
        "the client's pg_sleep never showed in pg_stat_activity"
    );

    // The seal the backend holds right now, computed by the superuser from its secret.
    let seal: String = superuser
        .query_one(
            "SELECT encode(public.hmac(convert_to($2, 'UTF8'), s.secret, 'sha256'), 'hex') \
             FROM pgtenant_seal.backend_secret s WHERE s.pid = $1",
            &[&pid, &TENANT_GLOBEX],
        )
        .await
        .unwrap()
        .get(0);
    let texts: Vec<String> = superuser
        .query(
            "SELECT coalesce(query, '') FROM pg_stat_activity WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let client_text = superuser
        .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert_eq!(client_text, "SELECT pg_sleep(300), count(*) FROM invoices");
    for text in &texts {
        assert!(!text.contains(&seal), "seal in pg_stat_activity: {text:?}");
        assert!(
            !text.contains("current_tenant_id_seal"),
            "seal setting in pg_stat_activity: {text:?}"
        );
        assert!(
            !text.contains(TENANT_GLOBEX),
            "tenant id in pg_stat_activity: {text:?}"
        );
    }

    superuser
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .await
        .unwrap();
    let (_globex, result) = sleeper.await.unwrap();
    let err = result.unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
}

#[tokio::test]
async fn after_a_postgresql_restart_new_connections_are_registered_and_sealed() {
    let pg: Arc<Pg> = dedicated_pg();
    let db = pg.fresh_db();
    let proxy = sealed_proxy(&db);
    let before = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    assert_eq!(invoice_count(&before).await, GLOBEX_INVOICES);
    drop(before);

    pg.ok(pg.cluster().restart());

    // Connections the pool held died with the old server; the first transaction may see
    // that. New server connections must register again and serve sealed traffic.
    let mut count = None;
    for _ in 0..20 {
        let Ok(client) = proxy.connect(&token_for(TENANT_GLOBEX)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        match client.query_one("SELECT count(*) FROM invoices", &[]).await {
            Ok(row) => {
                count = Some(row.get::<_, i64>(0));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(count, Some(GLOBEX_INVOICES));

    let acme = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(invoice_count(&acme).await, ACME_INVOICES);
    let pid = backend_pid(&acme).await;
    let sealed = acme
        .query_one("SELECT pgtenant_seal.tenant()", &[])
        .await
        .unwrap();
    assert_eq!(
        sealed.get::<_, Option<String>>(0).as_deref(),
        Some(TENANT_ACME)
    );
    // The secret row belongs to the new backend (its start time is this backend's).
    let superuser = db.superuser().await;
    let current: bool = superuser
        .query_one(
            "SELECT s.backend_start = a.backend_start FROM pgtenant_seal.backend_secret s \
             JOIN pg_stat_activity a USING (pid) WHERE s.pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    assert!(current);
}
