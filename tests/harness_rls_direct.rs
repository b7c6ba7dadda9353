//! The test harness and the example schema, without the proxy: the throwaway cluster works
//! (also as root), and config/schema.sql isolates tenants when a client sets the tenant
//! exactly as the proxy will (`set_config(name, value, true)` inside a transaction).

mod support;

use std::os::unix::fs::MetadataExt as _;

use pgtenant::cluster::{HbaMethod, PasswordHash};
use support::*;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

/// Starts a transaction on `client` scoped to `tenant`, the way the proxy does.
async fn begin_as(client: &Client, tenant: &str) {
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "SELECT set_config('app.current_tenant_id', $1, true)",
            &[&tenant],
        )
        .await
        .unwrap();
}

async fn invoice_tenants(client: &Client) -> Vec<String> {
    client
        .query("SELECT tenant_id::text FROM invoices ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn schema_loads_with_forced_rls_on_every_table() {
    let db = TestDb::new();
    let rows = db.psql(
        "SELECT relname || ':' || relrowsecurity || ':' || relforcerowsecurity \
         FROM pg_class WHERE relname IN ('tenants', 'users', 'invoices') ORDER BY relname",
    );
    assert_eq!(
        rows,
        "invoices:true:true\ntenants:true:true\nusers:true:true"
    );
    let policies = db.psql(
        "SELECT tablename || ':' || string_agg(cmd, ',' ORDER BY cmd) FROM pg_policies \
         GROUP BY tablename ORDER BY tablename",
    );
    assert_eq!(
        policies,
        "invoices:DELETE,INSERT,SELECT,UPDATE\n\
         tenants:DELETE,INSERT,SELECT,UPDATE\n\
         users:DELETE,INSERT,SELECT,UPDATE"
    );
}

#[tokio::test]
async fn every_secondary_index_leads_with_tenant_id() {
    let db = TestDb::new();
    let leading = db.psql(
        "SELECT DISTINCT a.attname FROM pg_index i \
         JOIN pg_class t ON t.oid = i.indrelid \
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0] \
         WHERE t.relname IN ('users', 'invoices') AND NOT i.indisprimary",
    );
    assert_eq!(leading, "tenant_id");
}

#[test]
fn server_runs_as_an_unprivileged_user_when_we_are_root() {
    let pg = shared_pg();
    let owner = std::fs::metadata(pg.cluster().data_dir()).unwrap().uid();
    // SAFETY: geteuid cannot fail.
    let we_are_root = unsafe { libc::geteuid() } == 0;
    if we_are_root {
        assert_ne!(owner, 0, "the data directory must not belong to root");
    }
    assert_eq!(pg.cluster().psql("SELECT 1").unwrap(), "1");
}

#[tokio::test]
async fn superuser_dsn_connects_over_tcp() {
    let pg = shared_pg();
    let config: tokio_postgres::Config = pg.cluster().superuser_dsn().parse().unwrap();
    let client = connect(&config).await.unwrap();
    let row = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
}

#[tokio::test]
async fn tenant_sees_only_its_own_invoices() {
    let db = TestDb::new();
    let client = db.api_user().await;

    begin_as(&client, TENANT_ACME).await;
    let seen = invoice_tenants(&client).await;
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(seen.len() as i64, ACME_INVOICES);
    assert!(seen.iter().all(|tenant| tenant == TENANT_ACME), "{seen:?}");

    begin_as(&client, TENANT_GLOBEX).await;
    let seen = invoice_tenants(&client).await;
    let tenants = client
        .query("SELECT id::text FROM tenants", &[])
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(seen.len() as i64, GLOBEX_INVOICES);
    assert!(
        seen.iter().all(|tenant| tenant == TENANT_GLOBEX),
        "{seen:?}"
    );
    assert_eq!(tenants.len(), 1);
    assert_eq!(tenants[0].get::<_, String>(0), TENANT_GLOBEX);
}

#[tokio::test]
async fn tenant_b_sees_none_of_tenant_a_rows() {
    let db = TestDb::new();
    let client = db.api_user().await;

    begin_as(&client, TENANT_ACME).await;
    client
        .execute(
            "INSERT INTO invoices (tenant_id, amount) VALUES ($1::text::uuid, 500.00)",
            &[&TENANT_ACME],
        )
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();

    begin_as(&client, TENANT_GLOBEX).await;
    let leaked = client
        .query(
            "SELECT id FROM invoices WHERE tenant_id = $1::text::uuid",
            &[&TENANT_ACME],
        )
        .await
        .unwrap();
    let all = invoice_tenants(&client).await;
    client.batch_execute("COMMIT").await.unwrap();
    assert!(leaked.is_empty());
    assert!(all.iter().all(|tenant| tenant == TENANT_GLOBEX), "{all:?}");

    // The row exists: the superuser (no RLS) sees Acme's new invoice.
    let total = db.psql(&format!(
        "SELECT count(*) FROM invoices WHERE tenant_id = '{TENANT_ACME}'"
    ));
    assert_eq!(total, (ACME_INVOICES + 1).to_string());
}

/// Runs `sql` as `api_user` in a transaction of Acme, in a fresh database; PostgreSQL must
/// refuse it with `code`.
async fn assert_refused_as_acme(sql: &str, params: &[&(dyn ToSql + Sync)], code: &str) {
    let db = TestDb::new();
    let client = db.api_user().await;
    begin_as(&client, TENANT_ACME).await;
    let err = client.execute(sql, params).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(code), "{err}");
}

#[tokio::test]
async fn insert_with_another_tenants_id_is_rejected() {
    assert_refused_as_acme(
        "INSERT INTO invoices (tenant_id, amount) VALUES ($1::text::uuid, 1.00)",
        &[&TENANT_GLOBEX],
        "42501",
    )
    .await;
}

#[tokio::test]
async fn update_cannot_move_a_row_to_another_tenant() {
    assert_refused_as_acme(
        "UPDATE invoices SET tenant_id = $1::text::uuid",
        &[&TENANT_GLOBEX],
        "42501",
    )
    .await;
}

#[tokio::test]
async fn invoice_cannot_reference_another_tenants_user() {
    assert_refused_as_acme(
        "INSERT INTO invoices (tenant_id, created_by, amount) \
         VALUES ($1::text::uuid, $2::text::uuid, 1.00)",
        &[&TENANT_ACME, &GLOBEX_USER_ID],
        "23503",
    )
    .await;
}

#[tokio::test]
async fn deleting_a_tenant_removes_only_its_own_rows() {
    let db = TestDb::new();
    let client = db.api_user().await;
    begin_as(&client, TENANT_ACME).await;
    // A user who issued invoices cannot be deleted on its own...
    let err = client.execute("DELETE FROM users", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("23503"), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();

    // ...but deleting the tenant takes its users and invoices with it.
    begin_as(&client, TENANT_ACME).await;
    let deleted = client.execute("DELETE FROM tenants", &[]).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(
        db.psql("SELECT string_agg(DISTINCT tenant_id::text, ',') FROM invoices"),
        TENANT_GLOBEX
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM invoices"),
        GLOBEX_INVOICES.to_string()
    );
    assert_eq!(db.psql("SELECT count(*) FROM users"), "1");
}

#[tokio::test]
async fn api_user_is_neither_superuser_nor_bypassrls_nor_owner() {
    let db = TestDb::new();
    let attributes = db.psql(
        "SELECT rolsuper || ':' || rolbypassrls || ':' || rolcreatedb || ':' || rolcreaterole \
         FROM pg_roles WHERE rolname = 'api_user'",
    );
    assert_eq!(attributes, "false:false:false:false");
    let owned = db.psql(
        "SELECT count(*) FROM pg_class \
         WHERE relowner = 'api_user'::regrole AND relname IN ('tenants', 'users', 'invoices')",
    );
    assert_eq!(owned, "0");
    let can_create = db.psql("SELECT has_schema_privilege('api_user', 'public', 'CREATE')");
    assert_eq!(can_create, "f");
}

#[tokio::test]
async fn api_user_cannot_create_tables_or_disable_rls() {
    let db = TestDb::new();
    let client = db.api_user().await;
    let err = client
        .batch_execute("CREATE TABLE public.sneaky (id int)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    let err = client
        .batch_execute("ALTER TABLE invoices DISABLE ROW LEVEL SECURITY")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    let err = client
        .batch_execute("SET row_security = off; SELECT 1 FROM invoices")
        .await
        .unwrap_err();
    // With row_security off, a query RLS would filter raises instead of bypassing.
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
}

#[tokio::test]
async fn queries_fail_closed_without_a_tenant() {
    let db = TestDb::new();
    let client = db.api_user().await;

    // Never set in this session: the setting is unknown.
    let err = client
        .query("SELECT count(*) FROM invoices", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42704"), "{err}");

    begin_as(&client, TENANT_ACME).await;
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);
    client.batch_execute("COMMIT").await.unwrap();

    // After the transaction the transaction-scoped value is gone: '' remains, which is not a
    // uuid, so every policy raises instead of matching anything.
    let setting: String = client
        .query_one("SELECT current_setting('app.current_tenant_id')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, "");
    let err = client
        .query("SELECT count(*) FROM invoices", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("22P02"), "{err}");
}

#[tokio::test]
async fn rolled_back_tenant_setting_does_not_survive() {
    let db = TestDb::new();
    let client = db.api_user().await;
    begin_as(&client, TENANT_ACME).await;
    client.batch_execute("ROLLBACK").await.unwrap();
    let err = client
        .query("SELECT count(*) FROM users", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(sqlstate(&err), Some("22P02" | "42704")),
        "expected an error, got {err}"
    );
}

#[tokio::test]
async fn databases_of_a_test_are_independent() {
    let first = TestDb::new();
    let second = TestDb::new();
    first.psql("DELETE FROM invoices");
    assert_eq!(first.psql("SELECT count(*) FROM invoices"), "0");
    assert_eq!(
        second.psql("SELECT count(*) FROM invoices"),
        (ACME_INVOICES + GLOBEX_INVOICES).to_string()
    );
}

#[tokio::test]
async fn cluster_stops_and_starts_on_the_same_port_keeping_data() {
    let pg = dedicated_pg();
    let db = pg.fresh_db();
    db.psql("DELETE FROM invoices WHERE tenant_id = 'bbbbbbbb-0000-0000-0000-000000000002'");
    let port = pg.cluster().port();

    pg.ok(pg.cluster().stop_server());
    assert!(!pg.cluster().is_running());
    let refused = connect(&db.direct_config(API_USER, pg.api_password())).await;
    assert!(refused.is_err(), "connected to a stopped server");
    // Stopping twice is harmless.
    pg.ok(pg.cluster().stop_server());

    pg.ok(pg.cluster().start_server());
    assert!(pg.cluster().is_running());
    assert_eq!(pg.cluster().port(), port);
    let client = db.api_user().await;
    begin_as(&client, TENANT_GLOBEX).await;
    assert_eq!(invoice_count(&client).await, 0);

    pg.ok(pg.cluster().restart());
    assert_eq!(
        db.psql("SELECT count(*) FROM invoices"),
        ACME_INVOICES.to_string()
    );
}

#[tokio::test]
async fn per_role_hba_methods_take_effect_after_reload() {
    let db = TestDb::new();
    let password = "md5-role-password";
    let role = db.create_app_role("md5", password, PasswordHash::Md5);
    let stored = db.psql(&format!(
        "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = '{role}'"
    ));
    assert_eq!(stored, "md5");

    let cluster = db.cluster();
    cluster.set_hba_method(&role, HbaMethod::Reject).unwrap();
    let err = connect(&db.direct_config(&role, password))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("28000"), "{err}");

    for method in [HbaMethod::Md5, HbaMethod::Password] {
        cluster.set_hba_method(&role, method).unwrap();
        let client = connect(&db.direct_config(&role, password))
            .await
            .unwrap_or_else(|err| panic!("{method:?}: {err}"));
        begin_as(&client, TENANT_ACME).await;
        assert_eq!(invoice_count(&client).await, ACME_INVOICES, "{method:?}");
        let err = connect(&db.direct_config(&role, "wrong"))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err), Some("28P01"), "{method:?}: {err}");
    }

    // SCRAM needs a SCRAM verifier: an MD5-stored password cannot log in with it.
    cluster.reset_hba().unwrap();
    let err = connect(&db.direct_config(&role, password))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("28P01"), "{err}");
    cluster
        .set_role_password(&role, password, PasswordHash::ScramSha256)
        .unwrap();
    connect(&db.direct_config(&role, password)).await.unwrap();
}

#[test]
fn proxy_config_renders_the_documented_keys() {
    let db = TestDb::new();
    let config = ProxyConfig::for_db(&db)
        .general("default_pool_size", 2)
        .app_db("pool_size", 1);
    let rendered: toml::Table = config.to_toml(7654).parse().unwrap();
    let general = rendered["pgtenant"].as_table().unwrap();
    assert_eq!(general["listen_port"].as_integer(), Some(7654));
    assert_eq!(general["default_pool_size"].as_integer(), Some(2));
    let auth = rendered["auth"].as_table().unwrap();
    assert_eq!(auth["algorithm"].as_str(), Some("HS256"));
    assert_eq!(auth["secret"].as_str(), Some(JWT_SECRET));
    let app = rendered["databases"]["app"].as_table().unwrap();
    assert_eq!(app["host"].as_str(), Some("127.0.0.1"));
    assert_eq!(
        app["port"].as_integer(),
        Some(i64::from(db.cluster().port()))
    );
    assert_eq!(app["dbname"].as_str(), Some(db.name()));
    assert_eq!(app["user"].as_str(), Some(API_USER));
    assert_eq!(app["password"].as_str(), Some(db.pg().api_password()));
    assert_eq!(app["pool_size"].as_integer(), Some(1));
}

mod minted_tokens {
    use super::support::*;
    use jsonwebtoken::errors::ErrorKind;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
    use serde_json::Value;

    fn verify(token: &str) -> Result<Value, ErrorKind> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        decode::<Value>(
            token,
            &DecodingKey::from_secret(JWT_SECRET.as_bytes()),
            &validation,
        )
        .map(|data| data.claims)
        .map_err(|err| err.into_kind())
    }

    #[test]
    fn good_token_carries_the_tenant() {
        let claims = verify(&token_for(TENANT_ACME)).unwrap();
        assert_eq!(claims["tenant_id"], TENANT_ACME);
        assert!(claims["exp"].as_u64().unwrap() > now_secs());
    }

    #[test]
    fn bad_tokens_are_bad_for_the_intended_reason() {
        assert_eq!(
            verify(&expired_token(TENANT_ACME)),
            Err(ErrorKind::ExpiredSignature)
        );
        assert_eq!(
            verify(&wrong_key_token(TENANT_ACME)),
            Err(ErrorKind::InvalidSignature)
        );
        assert_eq!(
            verify(&tampered_token(TENANT_ACME, TENANT_GLOBEX)),
            Err(ErrorKind::InvalidSignature)
        );
        assert_eq!(
            verify(&wrong_algorithm_token(TENANT_ACME)),
            Err(ErrorKind::InvalidAlgorithm)
        );
        assert!(matches!(
            verify(&token_without_exp(TENANT_ACME)),
            Err(ErrorKind::MissingRequiredClaim(claim)) if claim == "exp"
        ));
        assert!(verify(&unsigned_token(TENANT_ACME)).is_err());
        assert!(verify(&malformed_token()).is_err());
        let claims = verify(&token_without_tenant()).unwrap();
        assert!(claims.get("tenant_id").is_none());
    }
}

#[test]
fn startup_failure_reports_the_server_log() {
    let options = pgtenant::cluster::ClusterOptions {
        extra_settings: vec![("shared_buffers".into(), "'not-a-size'".into())],
        ..Default::default()
    };
    let err = pgtenant::cluster::Cluster::start(options).unwrap_err();
    assert!(
        matches!(err, pgtenant::cluster::ClusterError::StartFailed { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("shared_buffers"), "{err}");
}
