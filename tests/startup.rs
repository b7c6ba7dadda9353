//! The start of a client connection through the proxy, against a real PostgreSQL: database
//! selection, `max_client_conn`, the guard on the tenant setting, malformed and oversized
//! messages (an error or a close, never a hang), `client_login_timeout`, SSLRequest, the
//! client's startup parameters (in effect in its transactions, reported in ParameterStatus,
//! never leaking to the next client on the same server), and configuration checks.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use support::proxy::proxy_binary;
use support::raw::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for polling loops (something that must happen eventually).
const POLL_BOUND: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ raw protocol helpers

/// How the proxy ended a conversation it did not like.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// An ErrorResponse with this SQLSTATE, then the connection was closed.
    Error(String),
    /// Closed without an ErrorResponse.
    Closed,
}

/// Reads until an ErrorResponse or EOF (never longer than [`READ_BOUND`] per read), and after
/// an ErrorResponse checks that the proxy closes the connection.
async fn error_or_close(stream: &mut TcpStream) -> Ending {
    while let Some(msg) = read_msg(stream).await {
        if msg.tag == b'E' {
            let code = error_field(&msg.body, b'C').unwrap_or_default();
            let after = read_msg(stream).await;
            assert!(
                after.is_none(),
                "the proxy kept the connection open after error {code}: {after:?}"
            );
            return Ending::Error(code);
        }
    }
    Ending::Closed
}

async fn read_one_byte(stream: &mut TcpStream) -> u8 {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(READ_BOUND, stream.read_exact(&mut byte)).await {
        Ok(Ok(_)) => byte[0],
        Ok(Err(err)) => panic!("connection closed instead of an answer: {err}"),
        Err(_) => panic!("no answer within {READ_BOUND:?}"),
    }
}

/// The proxy still logs clients in and runs their transactions.
async fn assert_still_serving(proxy: &Proxy) {
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
}

// ------------------------------------------------------------------ database and limits

#[tokio::test]
async fn unknown_database_is_refused_with_3d000() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let mut config = proxy.client_config(&token_for(TENANT_ACME));
    config.dbname("no_such_database");
    let err = match connect(&config).await {
        Ok(_) => panic!("logged in to a database the proxy does not serve"),
        Err(err) => err,
    };
    assert_eq!(sqlstate(&err), Some("3D000"), "{err}");
    assert_still_serving(&proxy).await;
}

#[tokio::test]
async fn client_beyond_max_client_conn_gets_53300() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("max_client_conn", 2));
    let token = token_for(TENANT_ACME);

    // The harness's own "is it listening?" probe counted as a client for a moment; retry
    // until it is gone.
    async fn connect_retrying(proxy: &Proxy, token: &str) -> tokio_postgres::Client {
        let deadline = tokio::time::Instant::now() + POLL_BOUND;
        loop {
            match proxy.connect(token).await {
                Ok(client) => return client,
                Err(err) if sqlstate(&err) == Some("53300") => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "still refused: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("{err}"),
            }
        }
    }
    let first = connect_retrying(&proxy, &token).await;
    let second = connect_retrying(&proxy, &token).await;
    first.simple_query("SELECT 1").await.unwrap();
    second.simple_query("SELECT 1").await.unwrap();

    let err = match proxy.connect(&token).await {
        Ok(_) => panic!("a third client was let in with max_client_conn = 2"),
        Err(err) => err,
    };
    assert_eq!(sqlstate(&err), Some("53300"), "{err}");

    // The two clients are unaffected, and a slot frees up when one leaves.
    second.simple_query("SELECT 1").await.unwrap();
    drop(first);
    let third = connect_retrying(&proxy, &token).await;
    third.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn tenant_setting_in_options_or_startup_parameters_is_refused_with_42501() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let token = token_for(TENANT_ACME);
    for options in [
        format!("-c {TENANT_SETTING}={TENANT_GLOBEX}"),
        format!("-c APP.Current_Tenant_ID={TENANT_GLOBEX}"),
        format!("--app.current_tenant_id={TENANT_GLOBEX}"),
    ] {
        let mut config = proxy.client_config(&token);
        config.options(&options);
        match connect(&config).await {
            Ok(_) => panic!("options {options:?} were accepted"),
            Err(err) => assert_eq!(sqlstate(&err), Some("42501"), "{options}: {err}"),
        }
    }

    let mut params = token_params(&token);
    params.push((TENANT_SETTING, TENANT_GLOBEX));
    let mut stream = send_startup(proxy.port(), &params).await;
    let reply = read_login(&mut stream).await;
    assert_eq!(
        reply.error.as_ref().map(|(code, _)| code.as_str()),
        Some("42501"),
        "{reply:?}"
    );
    assert!(!reply.ready);
    assert_still_serving(&proxy).await;
}

// ------------------------------------------------------------------ malformed input

#[tokio::test]
async fn malformed_startup_packets_get_an_error_or_a_close_never_a_hang() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("client_login_timeout", 2));

    let mut v2_startup = Vec::new();
    v2_startup.extend_from_slice(&24i32.to_be_bytes());
    v2_startup.extend_from_slice(&(2i32 << 16).to_be_bytes());
    v2_startup.extend_from_slice(b"user\0x\0\0\0\0\0\0\0\0\0\0");
    let mut unterminated = Vec::new();
    unterminated.extend_from_slice(&17i32.to_be_bytes());
    unterminated.extend_from_slice(&196_608i32.to_be_bytes());
    unterminated.extend_from_slice(b"user\0app");
    let mut truncated = Vec::new();
    truncated.extend_from_slice(&64i32.to_be_bytes());
    truncated.extend_from_slice(&196_608i32.to_be_bytes());
    truncated.extend_from_slice(b"user\0");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "length 3 and garbage",
            vec![0, 0, 0, 3, 0xde, 0xad, 0xbe, 0xef],
        ),
        ("length 0", vec![0, 0, 0, 0]),
        ("negative length", vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]),
        (
            "huge length 0x7fffffff",
            vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        ),
        ("length just over the cap", 10_001i32.to_be_bytes().to_vec()),
        ("protocol 2.0", v2_startup),
        ("unterminated parameter list", unterminated),
        ("truncated packet, then silence", truncated),
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
    ];
    for (name, bytes) in cases {
        let mut stream = raw_connect(proxy.port()).await;
        stream.write_all(&bytes).await.unwrap();
        let ending = error_or_close(&mut stream).await;
        if let Ending::Error(code) = &ending {
            assert!(
                code.starts_with("08") || code == "0A000" || code == "54000",
                "{name}: unexpected SQLSTATE {code}"
            );
        }
    }
    assert_still_serving(&proxy).await;
}

#[tokio::test]
async fn malformed_messages_after_login_get_an_error_and_a_close() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let token = token_for(TENANT_ACME);

    let mut unknown_type = vec![b'z'];
    unknown_type.extend_from_slice(&8i32.to_be_bytes());
    unknown_type.extend_from_slice(&[1, 2, 3, 4]);
    let mut unterminated_query = vec![b'Q'];
    unterminated_query.extend_from_slice(&12i32.to_be_bytes());
    unterminated_query.extend_from_slice(b"SELECT 1");

    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "Query with length 0x7fffffff",
            vec![b'Q', 0x7f, 0xff, 0xff, 0xff],
            &["54000", "08P01"],
        ),
        ("Query with length 2", vec![b'Q', 0, 0, 0, 2], &["08P01"]),
        ("Sync with length 0", vec![b'S', 0, 0, 0, 0], &["08P01"]),
        (
            "Parse with negative length",
            vec![b'P', 0xff, 0xff, 0xff, 0xf0],
            &["08P01"],
        ),
        ("unknown message type", unknown_type, &["08P01"]),
        (
            "Query without its terminating NUL",
            unterminated_query,
            &["08P01", "42601"],
        ),
    ];
    for (name, bytes, codes) in cases {
        let (mut stream, _) = raw_login(proxy.port(), &token, &[]).await;
        // A normal transaction first, so a server was bound and released once.
        assert_eq!(raw_query(&mut stream, "SELECT 1").await, vec!["1"]);
        stream.write_all(&bytes).await.unwrap();
        match error_or_close(&mut stream).await {
            Ending::Error(code) => {
                assert!(codes.contains(&code.as_str()), "{name}: SQLSTATE {code}")
            }
            Ending::Closed => panic!("{name}: closed without telling the client why"),
        }
    }
    assert_still_serving(&proxy).await;
}

#[tokio::test]
async fn oversized_password_message_is_refused() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let mut stream = raw_password_request(proxy.port()).await;
    stream
        .write_all(&[b'p', 0x7f, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    match error_or_close(&mut stream).await {
        Ending::Error(code) => assert!(code.starts_with("08") || code.starts_with("28"), "{code}"),
        Ending::Closed => panic!("closed without an error"),
    }
    assert_still_serving(&proxy).await;
}

#[tokio::test]
async fn silent_client_is_dropped_after_client_login_timeout() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("client_login_timeout", 1));

    // Sends nothing at all.
    let mut silent = raw_connect(proxy.port()).await;
    match error_or_close(&mut silent).await {
        Ending::Error(code) => assert!(code.starts_with("08"), "{code}"),
        Ending::Closed => {}
    }

    // Asked for a password and never answers.
    let mut stalled = raw_password_request(proxy.port()).await;
    match error_or_close(&mut stalled).await {
        Ending::Error(code) => assert!(code.starts_with("08"), "{code}"),
        Ending::Closed => {}
    }

    // A client that logged in is not subject to the login timeout.
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.simple_query("SELECT 1").await.unwrap();
}

// ------------------------------------------------------------------ SSLRequest

#[tokio::test]
async fn ssl_and_gssenc_requests_are_answered_n_and_login_proceeds() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let token = token_for(TENANT_GLOBEX);
    for requests in [
        vec![SSL_REQUEST_CODE],
        vec![GSSENC_REQUEST_CODE],
        vec![GSSENC_REQUEST_CODE, SSL_REQUEST_CODE],
    ] {
        let mut stream = raw_connect(proxy.port()).await;
        for code in &requests {
            stream.write_all(&request_packet(*code)).await.unwrap();
            assert_eq!(read_one_byte(&mut stream).await, b'N', "answer to {code}");
        }
        write_startup(&mut stream, &token_params(&token)).await;
        let reply = read_login(&mut stream).await;
        assert_eq!(reply.error, None);
        assert_eq!(reply.auth, vec![0]);
        assert!(reply.ready);
        let tenant = raw_query(&mut stream, CURRENT_TENANT).await;
        assert_eq!(tenant, vec![TENANT_GLOBEX.to_owned()]);
    }
}

/// Nothing in the protocol makes a client wait for ReadyForQuery before it queues its first
/// query: a startup packet, password and query sent in one write are all served, the query
/// as the token's tenant.
#[tokio::test]
async fn a_query_sent_in_the_same_write_as_the_login_is_answered() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let token = token_for(TENANT_GLOBEX);
    let mut bytes = BytesMut::new();
    frontend::startup_message(
        [("user", CLIENT_USER), ("database", PROXY_DBNAME)],
        &mut bytes,
    )
    .unwrap();
    frontend::password_message(token.as_bytes(), &mut bytes).unwrap();
    frontend::query(CURRENT_TENANT, &mut bytes).unwrap();
    let mut stream = raw_connect(proxy.port()).await;
    stream.write_all(&bytes).await.unwrap();
    assert_eq!(read_login(&mut stream).await.auth, vec![3]);
    let reply = read_login(&mut stream).await;
    assert_eq!(reply.error, None);
    assert!(reply.ready, "{reply:?}");
    let mut rows = Vec::new();
    loop {
        let msg = read_msg(&mut stream)
            .await
            .expect("closed before the query's answer");
        match msg.tag {
            b'D' => rows.push(String::from_utf8_lossy(&msg.body[6..]).into_owned()),
            b'E' => panic!("{:?}", error_field(&msg.body, b'M')),
            b'Z' => break,
            _ => {}
        }
    }
    assert_eq!(rows, vec![TENANT_GLOBEX.to_owned()]);
}

// ------------------------------------------------------------------ startup parameters

/// The session settings a client's statements run with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    time_zone: String,
    search_path: String,
    date_style: String,
    extra_float_digits: String,
    application_name: String,
}

const SETTINGS_SQL: &str = "SELECT current_setting('TimeZone'), current_setting('search_path'), \
     current_setting('DateStyle'), current_setting('extra_float_digits'), \
     current_setting('application_name')";

async fn settings(client: &tokio_postgres::Client) -> Settings {
    let row = client.query_one(SETTINGS_SQL, &[]).await.unwrap();
    Settings {
        time_zone: row.get(0),
        search_path: row.get(1),
        date_style: row.get(2),
        extra_float_digits: row.get(3),
        application_name: row.get(4),
    }
}

/// Settings read inside an explicit transaction, with the server's pid.
async fn settings_in_transaction(client: &tokio_postgres::Client) -> (Settings, i32) {
    client.batch_execute("BEGIN").await.unwrap();
    let found = settings(client).await;
    let pid = backend_pid(client).await;
    client.batch_execute("COMMIT").await.unwrap();
    (found, pid)
}

const X_OPTIONS: &str =
    "-c TimeZone=Asia/Tokyo -c search_path=custom -c DateStyle=SQL,DMY -c extra_float_digits=3";

fn expect_x(found: &Settings) {
    assert_eq!(found.time_zone, "Asia/Tokyo", "{found:?}");
    assert_eq!(found.search_path, "custom", "{found:?}");
    assert_eq!(found.date_style, "SQL, DMY", "{found:?}");
    assert_eq!(found.extra_float_digits, "3", "{found:?}");
    assert_eq!(found.application_name, "startup-params-x", "{found:?}");
}

#[tokio::test]
async fn startup_parameters_are_in_effect_in_every_transaction() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 2));
    let mut config = proxy.client_config(&token_for(TENANT_ACME));
    config
        .application_name("startup-params-x")
        .options(X_OPTIONS);
    let client = connect(&config).await.unwrap();
    // Autocommit, explicit transaction, and again after other clients used the servers.
    expect_x(&settings(&client).await);
    expect_x(&settings_in_transaction(&client).await.0);
    for _ in 0..3 {
        let other = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
        other.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
        expect_x(&settings(&client).await);
    }
    // The tenant still comes with them.
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
}

#[tokio::test]
async fn startup_parameters_do_not_leak_to_the_next_client_on_the_same_server() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 1));

    // What a client that asks for nothing gets from PostgreSQL directly.
    let direct = db.api_user().await;
    let defaults = settings(&direct).await;
    assert_ne!(defaults.time_zone, "Asia/Tokyo");
    assert_ne!(defaults.search_path, "custom");

    let mut x_config = proxy.client_config(&token_for(TENANT_ACME));
    x_config
        .application_name("startup-params-x")
        .options(X_OPTIONS);
    let x = connect(&x_config).await.unwrap();
    let y = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();

    let (x_settings, x_pid) = settings_in_transaction(&x).await;
    expect_x(&x_settings);
    let (y_settings, y_pid) = settings_in_transaction(&y).await;
    assert_eq!(
        x_pid, y_pid,
        "pool size 1: both must have used the same server"
    );
    let y_expected = Settings {
        application_name: y_settings.application_name.clone(),
        ..defaults.clone()
    };
    assert_eq!(y_settings, y_expected, "X's settings leaked to Y");
    assert_ne!(y_settings.application_name, "startup-params-x");
    // Autocommit statements too, and back and forth.
    assert_eq!(settings(&y).await, y_expected);
    expect_x(&settings(&x).await);
    assert_eq!(settings(&y).await, y_expected);

    // X disconnects; Y still sees the defaults.
    drop(x);
    assert_eq!(settings_in_transaction(&y).await.0, y_expected);
}

#[tokio::test]
async fn parameters_a_client_sets_later_do_not_leak_to_the_next_client() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 1));
    let direct = db.api_user().await;
    let defaults = settings(&direct).await;

    let x = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let y = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    // Session-level SETs of tracked parameters, outside any explicit transaction.
    x.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    x.batch_execute("SET search_path = custom").await.unwrap();
    x.batch_execute("SET DateStyle = 'SQL, DMY'").await.unwrap();
    let x_now = settings(&x).await;
    assert_eq!(x_now.time_zone, "Asia/Tokyo");
    assert_eq!(x_now.search_path, "custom");
    let x_pid = backend_pid(&x).await;

    let y_now = settings(&y).await;
    assert_eq!(backend_pid(&y).await, x_pid, "pool size 1: same server");
    assert_eq!(
        y_now.time_zone, defaults.time_zone,
        "X's SET TimeZone leaked"
    );
    assert_eq!(
        y_now.date_style, defaults.date_style,
        "X's SET DateStyle leaked"
    );
    assert_eq!(
        y_now.search_path, defaults.search_path,
        "X's SET search_path leaked to another client"
    );
    // X keeps what it set.
    assert_eq!(settings(&x).await.time_zone, "Asia/Tokyo");
}

#[tokio::test]
async fn parameter_status_at_login_reflects_the_clients_own_settings() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 1));
    let direct = db.api_user().await;
    let default_zone: String = direct
        .query_one("SELECT current_setting('TimeZone')", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(default_zone, "Asia/Tokyo");

    let (mut x, x_login) = raw_login(
        proxy.port(),
        &token_for(TENANT_ACME),
        &[("application_name", "ps-x"), ("TimeZone", "Asia/Tokyo")],
    )
    .await;
    assert_eq!(x_login.auth, vec![0]);
    assert!(x_login.backend_key, "no BackendKeyData");
    let reported = |login: &LoginReply, name: &str| login.params.get(name).cloned();
    assert_eq!(
        reported(&x_login, "application_name").as_deref(),
        Some("ps-x")
    );
    assert_eq!(
        reported(&x_login, "TimeZone").as_deref(),
        Some("Asia/Tokyo")
    );
    for name in [
        "server_version",
        "server_encoding",
        "client_encoding",
        "DateStyle",
        "integer_datetimes",
        "standard_conforming_strings",
    ] {
        assert!(
            x_login.params.contains_key(name),
            "no ParameterStatus {name}: {:?}",
            x_login.params
        );
    }
    assert_eq!(reported(&x_login, "is_superuser").as_deref(), Some("off"));
    assert_eq!(raw_query(&mut x, "SHOW TimeZone").await, vec!["Asia/Tokyo"]);

    // Another client, after X used the only server: its own values, not X's.
    let (mut y, y_login) = raw_login(
        proxy.port(),
        &token_for(TENANT_GLOBEX),
        &[("application_name", "ps-y")],
    )
    .await;
    assert_eq!(
        reported(&y_login, "application_name").as_deref(),
        Some("ps-y")
    );
    assert_eq!(
        reported(&y_login, "TimeZone").as_deref(),
        Some(default_zone.as_str())
    );
    assert_eq!(raw_query(&mut y, "SHOW TimeZone").await, vec![default_zone]);
    assert_eq!(
        raw_query(&mut y, "SHOW application_name").await,
        vec!["ps-y"]
    );
}

#[tokio::test]
async fn psql_options_and_application_name_are_in_effect() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let output = Command::new(&db.cluster().binaries().psql)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-w"])
        .args(["-h", "127.0.0.1", "-p", &proxy.port().to_string()])
        .args(["-U", CLIENT_USER, "-d", PROXY_DBNAME])
        .args([
            "-c",
            "SHOW application_name",
            "-c",
            "SHOW TimeZone",
            "-c",
            "SHOW search_path",
        ])
        .env("PGPASSWORD", token_for(TENANT_ACME))
        .env("PGAPPNAME", "psql-startup")
        .env("PGOPTIONS", "-c TimeZone=Asia/Tokyo -c search_path=custom")
        .env("PGCONNECT_TIMEOUT", "30")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGSERVICE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, vec!["psql-startup", "Asia/Tokyo", "custom"]);
}

// ------------------------------------------------------------------ configuration

const GOOD_CONFIG: &str = r#"
[pgtenant]
listen_addr = "127.0.0.1"
listen_port = 6543
default_pool_size = 5

[auth]
algorithm = "HS256"
secret = "a-test-secret-that-is-long-enough-0123456789"

[databases.app]
host = "127.0.0.1"
port = 5432
user = "api_user"
"#;

fn check_config(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgtenant.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(proxy_binary())
        .arg("check-config")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_a_good_file() {
    let (ok, stdout, stderr) = check_config(GOOD_CONFIG);
    assert!(ok, "refused a good config: {stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn check_config_names_the_bad_key_and_exits_nonzero() {
    let cases = [
        (
            GOOD_CONFIG.replace("default_pool_size = 5", "default_pool_size = 0"),
            "pgtenant.default_pool_size",
        ),
        (
            GOOD_CONFIG.replace("port = 5432", "port = 5432\npool_sise = 3"),
            "databases.app.pool_sise",
        ),
        (
            GOOD_CONFIG.replace("port = 5432", "port = \"five\""),
            "databases.app.port",
        ),
        (
            GOOD_CONFIG.replace("algorithm = \"HS256\"", "algorithm = \"HS257\""),
            "auth.algorithm",
        ),
        (
            GOOD_CONFIG.replace(
                "a-test-secret-that-is-long-enough-0123456789",
                "hunter2-short",
            ),
            "auth.secret",
        ),
    ];
    for (text, key) in cases {
        let (ok, _, stderr) = check_config(&text);
        assert!(!ok, "accepted a config with a bad {key}");
        assert!(stderr.contains(key), "error does not name {key}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "error echoes the secret: {stderr}"
        );
    }
}

#[test]
fn check_config_refuses_statement_pool_mode_mentioning_set_local() {
    let text = GOOD_CONFIG.replace(
        "default_pool_size = 5",
        "default_pool_size = 5\npool_mode = \"statement\"",
    );
    let (ok, _, stderr) = check_config(&text);
    assert!(!ok);
    assert!(stderr.contains("pgtenant.pool_mode"), "{stderr}");
    assert!(stderr.contains("SET LOCAL"), "{stderr}");
}

#[tokio::test]
async fn proxy_refuses_to_start_in_statement_pool_mode() {
    let db = TestDb::new();
    let config = ProxyConfig::for_db(&db).general("pool_mode", "statement");
    match Proxy::try_start(config) {
        Ok(_) => panic!("the proxy started with pool_mode = \"statement\""),
        Err(output) => {
            assert!(output.contains("pool_mode"), "{output}");
            assert!(output.contains("SET LOCAL"), "{output}");
        }
    }
}
