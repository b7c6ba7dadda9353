//! The admin console of a running proxy: logging in to the virtual databases `pgtenant` and
//! `pgbouncer` with an admin password or an admin-claim token (and the refusals: 28P01 for
//! a wrong password, 42501 for a tenant), every `SHOW` with its PgBouncer columns and values
//! checked against known traffic, `SHOW CONFIG` without secrets, unsupported commands and
//! the extended protocol refused without losing the session, and psql. The control commands
//! (PAUSE, KILL, RELOAD, ...) are in tests/admin_control.rs and tests/reload.rs.

mod support;

use std::process::Command;

use serde_json::json;
use support::admin::*;
use support::*;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Known traffic: Acme runs 3 autocommit statements and a 2-statement transaction (4
/// transactions, 7 queries counting BEGIN/COMMIT), Globex 1; both stay connected and idle.
async fn known_traffic(proxy: &Proxy) -> (Client, Client) {
    let acme = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    for _ in 0..3 {
        acme.simple_query("SELECT 1").await.unwrap();
    }
    for sql in ["BEGIN", "SELECT 2", "SELECT 3", "COMMIT"] {
        acme.simple_query(sql).await.unwrap();
    }
    let globex = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    globex.simple_query("SELECT 1").await.unwrap();
    (acme, globex)
}

/// Polls SHOW STATS until the proxy has counted `xacts` transactions (the count is taken
/// when the server goes back to the pool, just after the client got its reply).
async fn wait_for_xacts(console: &Client, xacts: i64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stats = show(console, "STATS").await;
        let n = int(
            stats.row_where("database", PROXY_DBNAME),
            "total_xact_count",
        );
        if n == xacts {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "total_xact_count stayed {n}, expected {xacts}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------ login

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_password_opens_the_console_under_both_database_names() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db));
    for dbname in ["pgtenant", "pgbouncer"] {
        let console = connect(&console_config(&proxy, dbname, ADMIN, ADMIN_PASSWORD))
            .await
            .unwrap_or_else(|e| panic!("{dbname}: {e}"));
        let version = show(&console, "VERSION").await;
        assert_eq!(version.columns, names(&["version"]));
        let v = version.rows[0].get("version").unwrap();
        assert!(v.starts_with("pgtenant "), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_the_admin_claim_opens_the_console() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db));
    let token = token_with(TENANT_ACME, json!({ ADMIN_CLAIM: true }));
    let console = connect(&console_config(&proxy, "pgtenant", "anyone", &token))
        .await
        .unwrap();
    assert_eq!(show(&console, "POOLS").await.rows.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_get_42501_and_wrong_passwords_28p01() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db));
    let refused = [
        // A valid tenant token, without the claim or with it not exactly true.
        (ADMIN, token_for(TENANT_ACME), "42501"),
        (
            "app",
            token_with(TENANT_ACME, json!({ ADMIN_CLAIM: "true" })),
            "42501",
        ),
        (ADMIN, "not-the-password".to_owned(), "28P01"),
        ("intruder", ADMIN_PASSWORD.to_owned(), "28P01"),
        // An admin-claim token that fails verification is refused like at a tenant login.
        (
            "anyone",
            token_with(
                TENANT_ACME,
                json!({ ADMIN_CLAIM: true, "exp": now_secs() - 3600 }),
            ),
            "28P01",
        ),
    ];
    for (user, password, want) in refused {
        let err = connect(&console_config(&proxy, "pgtenant", user, &password))
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} got in"));
        assert_eq!(sqlstate(&err), Some(want), "{user}: {err}");
        let text = err.to_string();
        assert!(
            !text.contains(&password),
            "the refusal quotes the secret: {text}"
        );
    }
    let err = connect(&console_config(
        &proxy,
        "pgtenant",
        "anyone",
        &sign_with(
            jsonwebtoken::Algorithm::HS256,
            WRONG_SECRET.as_bytes(),
            &json!({ "tenant_id": TENANT_ACME, ADMIN_CLAIM: true, "exp": now_secs() + 600 }),
        ),
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err), Some("28P01"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_settings_nobody_gets_in() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let token = token_with(TENANT_ACME, json!({ ADMIN_CLAIM: true }));
    let err = connect(&console_config(&proxy, "pgtenant", ADMIN, &token))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    let err = connect(&console_config(&proxy, "pgtenant", ADMIN, ADMIN_PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("28P01"), "{err}");
}

// ------------------------------------------------------------------ SHOW

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_and_stats_have_pgbouncer_columns_and_count_known_traffic() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db));
    let console = admin(&proxy).await;
    let (_acme, _globex) = known_traffic(&proxy).await;
    wait_for_xacts(&console, 5).await;

    let pools = show(&console, "POOLS").await;
    assert_eq!(
        pools.columns,
        names(&[
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
        ])
    );
    let app = pools.row_where("database", PROXY_DBNAME);
    assert_eq!(app.get("user"), Some(API_USER));
    assert_eq!(app.get("pool_mode"), Some("transaction"));
    // PgBouncer's cl_active: both logged-in clients, idle as they are.
    for (column, want) in [
        ("cl_active", 2),
        ("cl_waiting", 0),
        ("sv_active", 0),
        ("sv_idle", 1),
    ] {
        assert_eq!(int(app, column), want, "{column}");
    }

    let stats = show(&console, "STATS").await;
    assert_eq!(
        stats.columns,
        names(&[
            "database",
            "total_server_assignment_count",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "avg_server_assignment_count",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
        ])
    );
    let app = stats.row_where("database", PROXY_DBNAME);
    assert_eq!(int(app, "total_xact_count"), 5);
    assert_eq!(int(app, "total_query_count"), 8);
    // 5 transactions + the first login's parameter lookup.
    assert_eq!(int(app, "total_server_assignment_count"), 6);
    assert!(int(app, "total_received") > 0);
    assert!(int(app, "total_xact_time") > 0);
    assert_eq!(int(app, "avg_xact_time"), int(app, "total_xact_time") / 5);
    assert_eq!(int(app, "total_query_time"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_tenants_clients_servers_and_databases_match_known_traffic() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db));
    let console = admin(&proxy).await;
    let (acme, _globex) = known_traffic(&proxy).await;
    wait_for_xacts(&console, 5).await;

    let tenants = show(&console, "TENANTS").await;
    assert_eq!(
        tenants.columns,
        names(&["tenant", "clients", "active", "xacts", "queries", "wait_us"])
    );
    assert_eq!(tenants.rows.len(), 2);
    assert_eq!(
        tenants.rows[0].get("tenant"),
        Some(TENANT_ACME),
        "most transactions first"
    );
    let a = tenants.row_where("tenant", TENANT_ACME);
    assert_eq!(
        (
            int(a, "clients"),
            int(a, "active"),
            int(a, "xacts"),
            int(a, "queries")
        ),
        (1, 0, 4, 7)
    );
    let g = tenants.row_where("tenant", TENANT_GLOBEX);
    assert_eq!((int(g, "xacts"), int(g, "queries")), (1, 1));

    let clients = show(&console, "CLIENTS").await;
    assert_eq!(
        clients.columns,
        names(&[
            "type",
            "user",
            "database",
            "state",
            "addr",
            "port",
            "connect_time",
            "tenant",
            "in_transaction",
            "id",
        ])
    );
    assert_eq!(clients.rows.len(), 2, "one row per tenant client");
    for row in &clients.rows {
        assert_eq!(row.get("database"), Some(PROXY_DBNAME));
        assert_eq!(row.get("user"), Some(CLIENT_USER));
        assert_eq!(row.get("state"), Some("active"));
        assert_eq!(row.get("addr"), Some("127.0.0.1"));
        assert_eq!(int(row, "in_transaction"), 0);
        assert!(row.get("connect_time").unwrap().ends_with(" UTC"));
    }
    let acme_id = int(clients.row_where("tenant", TENANT_ACME), "id");
    assert_ne!(
        acme_id,
        int(clients.row_where("tenant", TENANT_GLOBEX), "id")
    );

    // An open transaction shows as a client in a transaction, an active tenant and server.
    acme.simple_query("BEGIN").await.unwrap();
    acme.simple_query("SELECT 1").await.unwrap();
    let clients = show(&console, "CLIENTS").await;
    let row = clients.row_where("tenant", TENANT_ACME);
    assert_eq!((int(row, "in_transaction"), int(row, "id")), (1, acme_id));
    let tenants = show(&console, "TENANTS").await;
    assert_eq!(int(tenants.row_where("tenant", TENANT_ACME), "active"), 1);
    let servers = show(&console, "SERVERS").await;
    assert_eq!(
        servers.columns,
        names(&["type", "user", "database", "state", "addr", "port", "count"])
    );
    assert_eq!(int(servers.row_where("state", "active"), "count"), 1);
    assert_eq!(int(servers.row_where("state", "idle"), "count"), 0);
    let pools = show(&console, "POOLS").await;
    let app = pools.row_where("database", PROXY_DBNAME);
    assert_eq!(
        (
            int(app, "cl_active"),
            int(app, "cl_waiting"),
            int(app, "sv_active")
        ),
        (2, 0, 1)
    );
    acme.simple_query("COMMIT").await.unwrap();

    let dbs = show(&console, "DATABASES").await;
    assert_eq!(
        dbs.columns,
        names(&[
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool",
            "server_lifetime",
            "pool_mode",
            "max_connections",
            "current_connections",
            "paused",
            "disabled",
            "tenant_seal",
        ])
    );
    let app = dbs.row_where("name", PROXY_DBNAME);
    assert_eq!(app.get("database"), Some(db.name()));
    assert_eq!(app.get("force_user"), Some(API_USER));
    assert_eq!(int(app, "port"), i64::from(db.cluster().port()));
    assert_eq!(int(app, "pool_size"), 4);
    assert_eq!(int(app, "max_connections"), 4);
    assert_eq!(int(app, "current_connections"), 1);

    let lists = show(&console, "LISTS").await;
    assert_eq!(lists.columns, names(&["list", "items"]));
    assert_eq!(int(lists.row_where("list", "databases"), "items"), 1);
    assert_eq!(int(lists.row_where("list", "used_clients"), "items"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_config_lists_settings_and_no_secret() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db).general("max_client_conn", 123));
    let console = admin(&proxy).await;
    let config = show(&console, "CONFIG").await;
    assert_eq!(
        config.columns,
        names(&["key", "value", "default", "changeable"])
    );
    let row = config.row_where("key", "max_client_conn");
    assert_eq!(
        (row.get("value"), row.get("default")),
        (Some("123"), Some("10000"))
    );
    assert_eq!(
        config.row_where("key", "admin_users").get("value"),
        Some(ADMIN)
    );
    // RELOAD changes pool sizes and token settings; the listening address needs a restart.
    for (key, changeable) in [
        ("default_pool_size", "yes"),
        ("query_wait_timeout", "yes"),
        ("auth.issuer", "yes"),
        ("listen_port", "no"),
        ("tenant_setting", "no"),
    ] {
        assert_eq!(
            config.row_where("key", key).get("changeable"),
            Some(changeable),
            "{key}"
        );
    }
    assert_eq!(
        config.row_where("key", "auth.admin_claim").get("value"),
        Some(ADMIN_CLAIM)
    );
    for row in &config.rows {
        for column in 0..row.len() {
            let value = row.get(column).unwrap_or_default();
            for secret in [JWT_SECRET, ADMIN_PASSWORD, db.pg().api_password()] {
                assert!(!value.contains(secret), "SHOW CONFIG shows a secret");
            }
        }
    }
}

// ------------------------------------------------------------------ other commands

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_and_unknown_commands_are_refused_and_the_session_goes_on() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db));
    let console = admin(&proxy).await;
    for (command, want) in [
        ("SUSPEND", "0A000"),
        ("DISABLE app", "0A000"),
        ("SET default_pool_size = 5", "0A000"),
        ("RESUME app", "55000"),
        ("PAUSE nowhere", "3D000"),
        ("KILL_CLIENT 999999", "42704"),
        ("KILL_CLIENT seven", "22P02"),
        ("SHUTDOWN NOW", "42601"),
        ("RECONNECT app extra", "42601"),
        ("SELECT 1", "42601"),
        ("SHOW NONSENSE", "42601"),
        ("SHOW POOLS EXTRA", "42601"),
    ] {
        let err = console.simple_query(command).await.unwrap_err();
        assert_eq!(sqlstate(&err), Some(want), "{command}: {err}");
    }
    // The extended protocol is refused, and the session still answers afterwards.
    let err = console.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("0A000"), "{err}");
    // Several commands in one query, case-insensitively, and an empty query.
    let replies = console
        .simple_query("show version; SHOW pools;")
        .await
        .unwrap();
    let rows = replies
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 2);
    console.simple_query("").await.unwrap();
    console.simple_query("SHOW HELP").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_pools_on_the_console() {
    let db = TestDb::new();
    let proxy = Proxy::start(admin_config(&db));
    let port = proxy.port().to_string();
    let output = Command::new(&db.cluster().binaries().psql)
        .args(["-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "-w"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            ADMIN,
            "-d",
            "pgtenant",
        ])
        .args(["-c", "SHOW POOLS"])
        .env("PGPASSWORD", ADMIN_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "30")
        .env_remove("PGOPTIONS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().next().unwrap_or_default();
    assert!(
        line.starts_with(&format!("{PROXY_DBNAME}|{API_USER}|")),
        "{stdout}"
    );
    assert!(line.ends_with("|transaction"), "{stdout}");
}
