//! Tenant isolation through the proxy, driven by real clients (tokio-postgres in the simple and
//! extended protocols, and psql): every client sees and changes only its own tenant's rows,
//! also with many clients of many tenants sharing a small pool, and the pool never holds more
//! server connections than configured.

mod support;

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use support::*;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Any column value as its raw wire bytes (the extended protocol sends `uuid` as 16 bytes,
/// which tokio-postgres cannot decode without a feature this crate does not enable).
struct RawValue(Vec<u8>);

impl<'a> FromSql<'a> for RawValue {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(RawValue(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn uuid_bytes(tenant: &str) -> Vec<u8> {
    uuid::Uuid::parse_str(tenant).unwrap().as_bytes().to_vec()
}

/// The rows of a simple-protocol reply, every column as text.
fn simple_rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The rows-affected count of the last CommandComplete of a simple-protocol reply.
fn simple_affected(messages: &[SimpleQueryMessage]) -> u64 {
    messages
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .next_back()
        .unwrap()
}

/// Runs psql through the proxy, asserting success, and returns its `-A -t` output lines.
fn psql_lines(proxy: &Proxy, token: &str, sql: &str) -> Vec<String> {
    let output = proxy.psql(token, sql);
    assert!(
        output.status.success(),
        "psql failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Invoices `client` sees whose uuid column `column` equals `value` (extended protocol).
async fn count_where(client: &Client, column: &str, value: &str) -> i64 {
    client
        .query_one(
            &format!("SELECT count(*) FROM invoices WHERE {column} = $1::text::uuid"),
            &[&value],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn tenant_b_sees_none_of_the_invoice_tenant_a_inserted() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let acme = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let globex_token = token_for(TENANT_GLOBEX);
    let globex = proxy.connect(&globex_token).await.unwrap();

    let id: String = acme
        .query_one(
            &format!(
                "INSERT INTO invoices (tenant_id, created_by, amount, status) \
                 VALUES ('{TENANT_ACME}', '{ACME_USER_ID}', 4242.42, 'breach-test') \
                 RETURNING id::text"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The row is really there (a superuser bypasses RLS).
    assert_eq!(
        db.psql(&format!(
            "SELECT tenant_id FROM invoices WHERE id = '{id}' AND status = 'breach-test'"
        )),
        TENANT_ACME
    );

    // B, by id, by marker, by A's tenant id and in total: nothing of A's.
    assert_eq!(count_where(&globex, "id", &id).await, 0);
    let by_marker = globex
        .simple_query("SELECT id FROM invoices WHERE status = 'breach-test'")
        .await
        .unwrap();
    assert!(simple_rows(&by_marker).is_empty());
    assert_eq!(count_where(&globex, "tenant_id", TENANT_ACME).await, 0);
    assert_eq!(invoice_count(&globex).await, GLOBEX_INVOICES);
    assert_eq!(
        psql_lines(
            &proxy,
            &globex_token,
            "SELECT count(*) FROM invoices WHERE status = 'breach-test'"
        ),
        ["0"]
    );

    // A sees it, and all of its own.
    assert_eq!(count_where(&acme, "id", &id).await, 1);
    assert_eq!(invoice_count(&acme).await, ACME_INVOICES + 1);
}

#[tokio::test]
async fn select_star_without_where_returns_only_own_rows_in_every_protocol() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    for (tenant, expected) in [
        (TENANT_ACME, ACME_INVOICES),
        (TENANT_GLOBEX, GLOBEX_INVOICES),
    ] {
        let expected = usize::try_from(expected).unwrap();
        let token = token_for(tenant);
        let client = proxy.connect(&token).await.unwrap();

        let simple = client.simple_query("SELECT * FROM invoices").await.unwrap();
        let rows = simple_rows(&simple);
        assert_eq!(rows.len(), expected, "simple protocol, {tenant}");
        for row in &rows {
            // Columns: id, tenant_id, created_by, amount, status, created_at.
            assert_eq!(row[1].as_deref(), Some(tenant), "simple protocol");
        }

        let rows = client.query("SELECT * FROM invoices", &[]).await.unwrap();
        assert_eq!(rows.len(), expected, "extended protocol, {tenant}");
        for row in &rows {
            let RawValue(owner) = row.get("tenant_id");
            assert_eq!(owner, uuid_bytes(tenant), "extended protocol");
        }

        let lines = psql_lines(&proxy, &token, "SELECT * FROM invoices");
        assert_eq!(lines.len(), expected, "psql, {tenant}: {lines:?}");
        for line in &lines {
            assert_eq!(line.split('|').nth(1), Some(tenant), "psql: {line}");
        }

        // The other tables too: one tenant row, one user.
        let tenants = client.simple_query("SELECT * FROM tenants").await.unwrap();
        assert_eq!(simple_column(&tenants), [tenant]);
        let users = client.query("SELECT * FROM users", &[]).await.unwrap();
        assert_eq!(users.len(), 1);
    }
}

#[tokio::test]
async fn insert_with_another_tenants_id_is_rejected_by_rls() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let acme = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();

    let err = acme
        .batch_execute(&format!(
            "INSERT INTO invoices (tenant_id, amount) VALUES ('{TENANT_GLOBEX}', 1.00)"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "simple protocol: {err}");

    let err = acme
        .execute(
            "INSERT INTO invoices (tenant_id, amount) VALUES ($1::text::uuid, 1.00)",
            &[&TENANT_GLOBEX],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "extended protocol: {err}");

    let err = acme
        .execute(
            "INSERT INTO users (tenant_id, email) VALUES ($1::text::uuid, 'mole@acme.example')",
            &[&TENANT_GLOBEX],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "users: {err}");

    let err = acme
        .batch_execute(&format!(
            "BEGIN; INSERT INTO tenants (id, name, slug) \
             VALUES ('{TENANT_UNKNOWN}', 'Fake', 'fake'); COMMIT"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "tenants: {err}");
    acme.batch_execute("ROLLBACK").await.unwrap();

    // Nothing reached the table, and the session still works in its own tenant.
    assert_eq!(
        db.psql("SELECT count(*) FROM invoices WHERE amount = 1.00"),
        "0"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM users"),
        "2",
        "the rejected user insert left a row"
    );
    assert_eq!(db.psql("SELECT count(*) FROM tenants"), "2");
    let inserted = acme
        .execute(
            "INSERT INTO invoices (tenant_id, amount) VALUES ($1::text::uuid, 1.00)",
            &[&TENANT_ACME],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    assert_eq!(current_tenant(&acme).await, TENANT_ACME);
}

/// Runs `extended` (with Globex's id as `$1`) and then `simple`, both aimed at Globex's rows,
/// as `client`; each must affect no row.
async fn assert_globex_untouched(client: &Client, what: &str, extended: &str, simple: &str) {
    let affected = client.execute(extended, &[&TENANT_GLOBEX]).await.unwrap();
    assert_eq!(affected, 0, "extended-protocol {what}");
    let reply = client.simple_query(simple).await.unwrap();
    assert_eq!(simple_affected(&reply), 0, "simple-protocol {what}");
}

#[tokio::test]
async fn update_and_delete_of_another_tenants_rows_affect_nothing() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let acme = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let before = db.psql(&format!(
        "SELECT string_agg(id || ':' || amount || ':' || status, ',' ORDER BY id) \
         FROM invoices WHERE tenant_id = '{TENANT_GLOBEX}'"
    ));

    assert_globex_untouched(
        &acme,
        "UPDATE",
        "UPDATE invoices SET status = 'hijacked', amount = 0 WHERE tenant_id = $1::text::uuid",
        &format!("UPDATE invoices SET status = 'hijacked' WHERE tenant_id = '{TENANT_GLOBEX}'"),
    )
    .await;
    assert_globex_untouched(
        &acme,
        "DELETE",
        "DELETE FROM invoices WHERE tenant_id = $1::text::uuid",
        &format!("DELETE FROM invoices WHERE tenant_id = '{TENANT_GLOBEX}'"),
    )
    .await;

    // Without a tenant filter, only own rows change: each tenant has one 'sent' invoice.
    let updated = acme
        .execute(
            "UPDATE invoices SET status = 'void' WHERE status = 'sent'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    // Moving an own row to another tenant fails the policy's WITH CHECK.
    let err = acme
        .execute(
            "UPDATE invoices SET tenant_id = $1::text::uuid, created_by = NULL",
            &[&TENANT_GLOBEX],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    let deleted = acme.execute("DELETE FROM invoices", &[]).await.unwrap();
    assert_eq!(deleted, u64::try_from(ACME_INVOICES).unwrap());

    let after = db.psql(&format!(
        "SELECT string_agg(id || ':' || amount || ':' || status, ',' ORDER BY id) \
         FROM invoices WHERE tenant_id = '{TENANT_GLOBEX}'"
    ));
    assert_eq!(after, before, "Globex's invoices changed");
    assert_eq!(db.psql("SELECT count(*) FROM invoices"), "2");
}

/// Tenants and clients of the load test.
const LOAD_TENANTS: usize = 20;
const LOAD_CLIENTS: usize = 200;
const LOAD_POOL_SIZE: i64 = 10;
const LOAD_ROUNDS: usize = 3;

fn load_tenant(index: usize) -> String {
    format!("dddddddd-0000-4000-8000-{index:012x}")
}

/// Invoices seeded for load tenant `index` (1 to 3, so a leak shows up in counts too).
fn load_invoices(index: usize) -> usize {
    index % 3 + 1
}

/// One load client's work: simple and extended autocommit statements, explicit transactions
/// in both protocols and a multi-statement query, `LOAD_ROUNDS` times, asserting the tenant
/// and the rows every time.
async fn load_client_work(mut client: Client, tenant: String, expected: usize) {
    for round in 0..LOAD_ROUNDS {
        let context = format!("tenant {tenant}, round {round}");

        let reply = client
            .simple_query(
                "SELECT current_setting('app.current_tenant_id'), \
                 (SELECT count(*) FROM invoices)",
            )
            .await
            .unwrap();
        let rows = simple_rows(&reply);
        assert_eq!(rows.len(), 1, "{context}");
        assert_eq!(rows[0][0].as_deref(), Some(tenant.as_str()), "{context}");
        assert_eq!(rows[0][1], Some(expected.to_string()), "{context}");

        let owners: Vec<String> = client
            .query("SELECT tenant_id::text FROM invoices", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(owners.len(), expected, "{context}");
        assert!(owners.iter().all(|owner| *owner == tenant), "{context}");
        assert_eq!(current_tenant(&client).await, tenant, "{context}");

        // Extended-protocol statements inside an explicit transaction; the insert is rolled
        // back so that every client of the tenant keeps seeing the seeded count.
        let tx = client.transaction().await.unwrap();
        assert_eq!(current_tenant(&tx).await, tenant, "{context}");
        let owner: String = tx
            .query_one(
                "INSERT INTO invoices (tenant_id, amount, status) \
                 VALUES (current_setting('app.current_tenant_id')::uuid, 1.00, 'load') \
                 RETURNING tenant_id::text",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(owner, tenant, "{context}");
        let count = invoice_count(&tx).await;
        assert_eq!(
            usize::try_from(count).unwrap(),
            expected + 1,
            "{context}: in the transaction"
        );
        tx.rollback().await.unwrap();

        // Simple-protocol transaction, several statements.
        client.batch_execute("BEGIN").await.unwrap();
        let reply = client.simple_query(CURRENT_TENANT).await.unwrap();
        assert_eq!(simple_column(&reply), [tenant.as_str()], "{context}");
        let reply = client.simple_query("SELECT id FROM tenants").await.unwrap();
        assert_eq!(simple_column(&reply), [tenant.as_str()], "{context}");
        client.batch_execute("COMMIT").await.unwrap();

        let reply = client
            .simple_query(
                "SELECT current_setting('app.current_tenant_id'); \
                 SELECT tenant_id FROM invoices",
            )
            .await
            .unwrap();
        let values = simple_column(&reply);
        assert_eq!(values.len(), expected + 1, "{context}: {values:?}");
        assert!(values.iter().all(|value| *value == tenant), "{context}");
    }
}

async fn api_user_backends(superuser: &Client, dbname: &str) -> i64 {
    superuser
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2",
            &[&API_USER, &dbname],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_of_twenty_tenants_see_only_their_own_rows_within_the_pool_bound() {
    let db = TestDb::new();
    let mut seed = String::from("BEGIN;\n");
    for index in 0..LOAD_TENANTS {
        let tenant = load_tenant(index);
        seed.push_str(&format!(
            "INSERT INTO tenants (id, name, slug) VALUES ('{tenant}', 'Load {index}', 'load-{index}');\n"
        ));
        for n in 0..load_invoices(index) {
            seed.push_str(&format!(
                "INSERT INTO invoices (tenant_id, amount, status) VALUES ('{tenant}', {n}.00, 'seed');\n"
            ));
        }
    }
    seed.push_str("COMMIT;\n");
    db.psql(&seed);

    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", LOAD_POOL_SIZE)
            .general("reserve_pool_size", 0),
    );

    let superuser = db.superuser().await;
    let done = Arc::new(AtomicBool::new(false));
    let most_seen = Arc::new(AtomicI64::new(0));
    let sampler = {
        let done = Arc::clone(&done);
        let most_seen = Arc::clone(&most_seen);
        let dbname = db.name().to_owned();
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !done.load(Ordering::Acquire) {
                let now = api_user_backends(&superuser, &dbname).await;
                most_seen.fetch_max(now, Ordering::AcqRel);
                samples += 1;
            }
            // One more after the clients are done.
            let now = api_user_backends(&superuser, &dbname).await;
            most_seen.fetch_max(now, Ordering::AcqRel);
            samples + 1
        })
    };

    let mut clients = Vec::with_capacity(LOAD_CLIENTS);
    for index in 0..LOAD_CLIENTS {
        let tenant_index = index % LOAD_TENANTS;
        let tenant = load_tenant(tenant_index);
        let token = token_for(&tenant);
        let config = proxy.client_config(&token);
        clients.push(tokio::spawn(async move {
            let client = connect(&config).await.unwrap();
            load_client_work(client, tenant, load_invoices(tenant_index)).await;
        }));
    }
    let mut failures = Vec::new();
    for (index, client) in clients.into_iter().enumerate() {
        if let Err(err) = client.await {
            failures.push(format!("client {index}: {err}"));
        }
    }
    done.store(true, Ordering::Release);
    let samples = sampler.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {LOAD_CLIENTS} clients failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let most = most_seen.load(Ordering::Acquire);
    assert!(
        most <= LOAD_POOL_SIZE,
        "{most} api_user backends at once (pool size {LOAD_POOL_SIZE}, {samples} samples)"
    );
    assert!(
        most >= 1,
        "the sampler never saw a server ({samples} samples)"
    );

    // Nothing the clients rolled back was committed.
    assert_eq!(
        db.psql("SELECT count(*) FROM invoices WHERE status = 'load'"),
        "0"
    );
}
