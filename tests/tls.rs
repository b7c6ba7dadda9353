//! TLS on both sides of the proxy. Towards clients: SSLRequest answered `S` and the session
//! encrypted (psql with `sslmode=verify-full`), PostgreSQL 17's direct TLS with ALPN
//! `postgresql` (and without it, refused), `client_tls_sslmode` require/allow/disable,
//! plaintext cancel requests for encrypted sessions, and the certificate reload. Towards
//! PostgreSQL: `server_tls_sslmode` disable/prefer/require/verify-ca/verify-full against a
//! cluster serving TLS with a certificate from a test CA.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use pgtenant::config::{Config, ServerTlsMode};
use pgtenant::tls::TlsState;
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use support::pki::{Ca, TlsFiles, client_config};
use support::raw::*;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

// ------------------------------------------------------------------ helpers

/// A proxy config serving clients with `files`' certificate in `mode`.
fn serving(db: &TestDb, files: &TlsFiles, mode: &str) -> ProxyConfig {
    ProxyConfig::for_db(db)
        .general("client_tls_sslmode", mode)
        .general("client_tls_cert_file", TlsFiles::path_str(&files.cert))
        .general("client_tls_key_file", TlsFiles::path_str(&files.key))
}

/// Runs psql with a libpq connection string (the token as the password) and `-c sql`; HOME
/// points at an empty directory so no `~/.postgresql` file changes what libpq verifies.
fn psql(db: &TestDb, conninfo: &str, token: &str, sql: &str) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(&db.cluster().binaries().psql);
    command
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-w",
            "-d",
            conninfo,
        ])
        .args(["-c", sql])
        .env("PGPASSWORD", token)
        .env("PGCONNECT_TIMEOUT", "30")
        .env("HOME", home.path())
        .stdin(Stdio::null());
    for var in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGSERVICE",
        "PGOPTIONS",
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGSSLCERT",
        "PGSSLKEY",
    ] {
        command.env_remove(var);
    }
    command.output().unwrap()
}

fn conninfo(proxy: &Proxy, host: &str, ssl: &str) -> String {
    format!(
        "host={host} port={} user={CLIENT_USER} dbname={PROXY_DBNAME} {ssl}",
        proxy.port()
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        stderr(output),
        stdout(output)
    );
}

/// A CA, a certificate for localhost and 127.0.0.1 signed by it, and a proxy serving
/// clients with it in `mode`.
fn serving_proxy(db: &TestDb, mode: &str) -> (Ca, TlsFiles, Proxy) {
    let ca = Ca::new("CA");
    let files = TlsFiles::new(&ca, &["localhost", "127.0.0.1"]);
    let proxy = Proxy::start(serving(db, &files, mode));
    (ca, files, proxy)
}

/// The login was refused with `code`, a message mentioning `fragment`, and went no further.
fn assert_refused(reply: &LoginReply, code: &str, fragment: &str, what: &str) {
    let (got, message) = reply.error.as_ref().expect(what);
    assert_eq!(got, code, "{message}");
    assert!(message.contains(fragment), "{message}");
    assert!(!reply.ready);
}

/// Opens a TCP connection to the proxy and starts TLS right away (direct TLS), trusting
/// `ca_pem` and offering `alpn`.
async fn direct_tls(
    port: u16,
    ca_pem: &str,
    alpn: Option<&[u8]>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(client_config(ca_pem, alpn))
        .connect(name, tcp)
        .await
}

/// Sends an SSLRequest on a fresh connection and returns the answer byte and the stream.
async fn ssl_request(port: u16) -> (u8, TcpStream) {
    let mut stream = raw_connect(port).await;
    stream
        .write_all(&request_packet(SSL_REQUEST_CODE))
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    tokio::time::timeout(READ_BOUND, stream.read_exact(&mut answer))
        .await
        .expect("no answer to SSLRequest")
        .unwrap();
    (answer[0], stream)
}

/// Logs in with the token as a startup parameter on an open stream; returns the proxy's
/// cancel key from BackendKeyData. Panics unless the login reaches ReadyForQuery.
async fn login_on<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, token: &str) -> (i32, i32) {
    write_startup(stream, &token_params(token)).await;
    let mut key = None;
    while let Some(msg) = read_msg(stream).await {
        match msg.tag {
            b'K' => {
                let b = &msg.body;
                key = Some((
                    i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                ));
            }
            b'E' => panic!(
                "login failed: {:?}",
                error_field(&msg.body, b'M').unwrap_or_default()
            ),
            b'Z' => return key.expect("no BackendKeyData before ReadyForQuery"),
            _ => {}
        }
    }
    panic!("the proxy closed the connection during login");
}

// ------------------------------------------------------------------ the TLS state itself

fn config_in(dir: &Path, general: &str) -> Config {
    let toml = format!(
        "[pgtenant]\n{general}\n[auth]\nalgorithm = \"HS256\"\n\
         secret = \"0123456789abcdef0123456789abcdef\"\n\
         [databases.app]\nhost = \"localhost\"\nuser = \"api_user\"\n"
    );
    Config::from_toml_str_with_env(&toml, dir, |_| None).unwrap()
}

const SERVING_FILES: &str = "client_tls_sslmode = \"require\"\n\
                             client_tls_cert_file = \"server.pem\"\n\
                             client_tls_key_file = \"server.key\"";

/// A handshake between `acceptor` and a client trusting `ca_pem` over an in-memory pipe,
/// with one byte each way.
async fn handshake(acceptor: tokio_rustls::TlsAcceptor, ca_pem: &str) -> Result<(), String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut s = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        s.write_all(&byte).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())
    });
    let outcome = async {
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = TlsConnector::from(client_config(ca_pem, None))
            .connect(name, a)
            .await
            .map_err(|e| e.to_string())?;
        c.write_all(b"x").await.map_err(|e| e.to_string())?;
        c.flush().await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        c.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    }
    .await;
    let _ = server.await;
    outcome
}

#[tokio::test]
async fn reload_swaps_the_certificate_for_new_handshakes() {
    let first = Ca::new("first CA");
    let files = TlsFiles::new(&first, &["localhost"]);
    let config = config_in(files.dir(), SERVING_FILES);
    let state = TlsState::new(&config).unwrap();
    let before = state.client().acceptor.unwrap();
    handshake(before, &first.pem).await.unwrap();

    let second = Ca::new("second CA");
    files.replace_certificate(&second, &["localhost"]);
    state.reload(&config).unwrap();
    let after = state.client().acceptor.unwrap();
    handshake(after.clone(), &second.pem).await.unwrap();
    let refused = handshake(after, &first.pem).await;
    assert!(
        refused.is_err(),
        "a client trusting only the old CA accepted the reloaded certificate"
    );
}

#[tokio::test]
async fn failed_reload_keeps_the_certificate_in_force() {
    let ca = Ca::new("CA");
    let files = TlsFiles::new(&ca, &["localhost"]);
    let config = config_in(files.dir(), SERVING_FILES);
    let state = TlsState::new(&config).unwrap();
    std::fs::write(&files.key, "not a key").unwrap();
    let err = state.reload(&config).unwrap_err();
    assert_eq!(err.key(), "pgtenant.client_tls_key_file", "{err}");
    handshake(state.client().acceptor.unwrap(), &ca.pem)
        .await
        .unwrap();
}

#[test]
fn key_of_another_certificate_is_refused_at_load_naming_the_key_file() {
    let ca = Ca::new("CA");
    let files = TlsFiles::new(&ca, &["localhost"]);
    let (_, other_key) = ca.issue(&["localhost"]);
    std::fs::write(&files.key, &other_key).unwrap();
    let toml = format!(
        "[pgtenant]\n{SERVING_FILES}\n[auth]\nalgorithm = \"HS256\"\n\
         secret = \"0123456789abcdef0123456789abcdef\"\n\
         [databases.app]\nhost = \"localhost\"\nuser = \"api_user\"\n"
    );
    let err = Config::from_toml_str_with_env(&toml, files.dir(), |_| None).unwrap_err();
    assert_eq!(err.key(), Some("pgtenant.client_tls_key_file"), "{err}");
    assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
}

#[test]
fn check_config_refuses_a_certificate_file_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgtenant.toml");
    std::fs::write(
        &path,
        format!(
            "[pgtenant]\n{SERVING_FILES}\n[auth]\nalgorithm = \"HS256\"\n\
             secret = \"0123456789abcdef0123456789abcdef\"\n\
             [databases.app]\nhost = \"localhost\"\nuser = \"api_user\"\n"
        ),
    )
    .unwrap();
    let output = Command::new(support::proxy::proxy_binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success(), "check-config accepted it");
    let err = stderr(&output);
    assert!(err.contains("pgtenant.client_tls_cert_file"), "{err}");
    assert!(err.contains("server.pem"), "{err}");
}

#[test]
fn a_database_may_override_the_upstream_mode() {
    let ca = Ca::new("CA");
    let files = TlsFiles::new(&ca, &["localhost"]);
    let toml = "[pgtenant]\nserver_tls_sslmode = \"disable\"\nserver_tls_ca_file = \"ca.pem\"\n\
                [auth]\nalgorithm = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n\
                [databases.app]\nhost = \"localhost\"\nuser = \"api_user\"\n\
                [databases.secure]\nhost = \"db.example\"\nuser = \"api_user\"\n\
                server_tls_sslmode = \"verify-full\"\n";
    let config = Config::from_toml_str_with_env(toml, files.dir(), |_| None).unwrap();
    let state = TlsState::new(&config).unwrap();
    let app = state.upstream("app");
    assert_eq!(app.mode, ServerTlsMode::Disable);
    assert!(app.connector.is_none());
    let secure = state.upstream("secure");
    assert_eq!(secure.mode, ServerTlsMode::VerifyFull);
    assert!(secure.connector.is_some());
    // Without the CA file the override cannot be honoured: refused at load.
    let err = Config::from_toml_str_with_env(
        &toml.replace("server_tls_ca_file = \"ca.pem\"\n", ""),
        files.dir(),
        |_| None,
    )
    .unwrap_err();
    assert_eq!(err.key(), Some("pgtenant.server_tls_ca_file"), "{err}");
    assert!(
        err.to_string()
            .contains("databases.secure.server_tls_sslmode"),
        "{err}"
    );
}

/// pgtenant's upstream connector for `mode` (trusting `trusted`) against a TLS server
/// presenting a certificate for `names` signed by `signer`, connecting to `host`.
async fn upstream_handshake(
    mode: &str,
    signer: &Ca,
    trusted: &Ca,
    names: &[&str],
    host: &str,
) -> Result<(), String> {
    let files = TlsFiles::new(signer, names);
    std::fs::write(&files.ca, &trusted.pem).unwrap();
    let config = config_in(
        files.dir(),
        &format!(
            "{SERVING_FILES}\nserver_tls_sslmode = \"{mode}\"\nserver_tls_ca_file = \"ca.pem\""
        ),
    );
    let state = TlsState::new(&config).unwrap();
    let acceptor = state.client().acceptor.unwrap();
    let upstream = state.upstream("app");
    let name = pgtenant::tls::server_name(host, upstream.mode).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move { acceptor.accept(b).await.map(drop) });
    let outcome = upstream
        .connector
        .unwrap()
        .connect(name, a)
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    let _ = server.await;
    outcome
}

#[tokio::test]
async fn upstream_modes_verify_what_libpq_verifies() {
    let right = Ca::new("right CA");
    let wrong = Ca::new("wrong CA");
    // verify-full: the chain and the host name.
    upstream_handshake(
        "verify-full",
        &right,
        &right,
        &["db.internal"],
        "db.internal",
    )
    .await
    .unwrap();
    let err = upstream_handshake(
        "verify-full",
        &right,
        &right,
        &["other.host"],
        "db.internal",
    )
    .await
    .unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    let err = upstream_handshake(
        "verify-full",
        &wrong,
        &right,
        &["db.internal"],
        "db.internal",
    )
    .await
    .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // verify-ca: the chain only.
    upstream_handshake("verify-ca", &right, &right, &["other.host"], "db.internal")
        .await
        .unwrap();
    let err = upstream_handshake("verify-ca", &wrong, &right, &["db.internal"], "db.internal")
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // require: encrypted, nothing verified.
    upstream_handshake("require", &wrong, &right, &["other.host"], "db.internal")
        .await
        .unwrap();
}

// ------------------------------------------------------------------ clients

#[tokio::test]
async fn psql_with_verify_full_logs_in_over_tls_and_sees_only_its_tenant() {
    let db = TestDb::new();
    let ca = Ca::new("client-side CA");
    let files = TlsFiles::new(&ca, &["localhost", "127.0.0.1"]);
    let proxy = Proxy::start(serving(&db, &files, "require").general("log_format", "json"));
    let info = conninfo(
        &proxy,
        "localhost",
        &format!(
            "sslmode=verify-full sslrootcert={}",
            TlsFiles::path_str(&files.ca)
        ),
    );
    let token = token_for(TENANT_ACME);
    let output = psql(
        &db,
        &info,
        &token,
        "SELECT count(*) FROM invoices; SELECT DISTINCT tenant_id FROM invoices",
    );
    assert_success(&output, "psql with verify-full");
    assert_eq!(
        stdout(&output),
        format!("{ACME_INVOICES}\n{TENANT_ACME}"),
        "wrong rows over TLS"
    );
    // psql's own account of the connection: encrypted.
    let output = psql(&db, &info, &token, "\\conninfo");
    assert_success(&output, "psql \\conninfo");
    assert!(
        stdout(&output).contains("SSL connection"),
        "psql does not report TLS: {}",
        stdout(&output)
    );
    // And the proxy's: the login line says TLS.
    let log = proxy.log();
    let tls_logins = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "login")
        .filter(|line| line["fields"]["tls"] == true)
        .count();
    assert_eq!(tls_logins, 2, "{log}");
}

#[tokio::test]
async fn psql_with_verify_full_refuses_a_proxy_certificate_from_another_ca() {
    let db = TestDb::new();
    let ca = Ca::new("client-side CA");
    let files = TlsFiles::new(&ca, &["localhost", "127.0.0.1"]);
    let proxy = Proxy::start(serving(&db, &files, "require"));
    let stranger = files.write("stranger.pem", &Ca::new("another CA").pem);
    let info = conninfo(
        &proxy,
        "localhost",
        &format!(
            "sslmode=verify-full sslrootcert={}",
            TlsFiles::path_str(&stranger)
        ),
    );
    let output = psql(&db, &info, &token_for(TENANT_ACME), "SELECT 1");
    assert!(
        !output.status.success(),
        "psql trusted a certificate its CA did not sign"
    );
    assert!(
        stderr(&output).contains("certificate verify failed"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn require_refuses_plaintext_logins_with_28000_and_serves_tls() {
    let db = TestDb::new();
    let (_ca, _files, proxy) = serving_proxy(&db, "require");

    let mut plain = send_startup(proxy.port(), &token_params(&token_for(TENANT_ACME))).await;
    let reply = read_login(&mut plain).await;
    let (code, message) = reply.error.expect("a plaintext login was not refused");
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("TLS"), "{message}");
    assert!(
        read_msg(&mut plain).await.is_none(),
        "kept the connection open"
    );

    let output = psql(
        &db,
        &conninfo(&proxy, "127.0.0.1", "sslmode=disable"),
        &token_for(TENANT_ACME),
        "SELECT 1",
    );
    assert!(!output.status.success(), "a plaintext psql got in");
    assert!(
        stderr(&output).contains("client_tls_sslmode"),
        "{}",
        stderr(&output)
    );

    let output = psql(
        &db,
        &conninfo(&proxy, "127.0.0.1", "sslmode=require"),
        &token_for(TENANT_GLOBEX),
        "SELECT count(*) FROM invoices",
    );
    assert_success(&output, "psql with sslmode=require");
    assert_eq!(stdout(&output), GLOBEX_INVOICES.to_string());
}

#[tokio::test]
async fn allow_serves_plaintext_and_tls_clients_side_by_side() {
    let db = TestDb::new();
    let (_ca, _files, proxy) = serving_proxy(&db, "allow");
    let plain = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(invoice_count(&plain).await, ACME_INVOICES);
    let (answer, _) = ssl_request(proxy.port()).await;
    assert_eq!(answer, b'S');
    let output = psql(
        &db,
        &conninfo(&proxy, "127.0.0.1", "sslmode=require"),
        &token_for(TENANT_GLOBEX),
        "SELECT count(*) FROM invoices",
    );
    assert_success(&output, "psql with sslmode=require");
    assert_eq!(stdout(&output), GLOBEX_INVOICES.to_string());
}

#[tokio::test]
async fn disable_answers_ssl_request_with_n_and_closes_direct_tls() {
    let db = TestDb::new();
    let ca = Ca::new("CA");
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("client_tls_sslmode", "disable"));
    let (answer, mut stream) = ssl_request(proxy.port()).await;
    assert_eq!(answer, b'N');
    // The conversation goes on in plaintext.
    write_startup(&mut stream, &token_params(&token_for(TENANT_ACME))).await;
    let reply = read_login(&mut stream).await;
    assert!(reply.ready, "{reply:?}");
    let err = direct_tls(proxy.port(), &ca.pem, Some(b"postgresql"))
        .await
        .expect_err("a direct TLS handshake succeeded with TLS disabled");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );
}

/// Bytes a client sends after an SSLRequest, before the answer, would be taken as if they
/// had come encrypted: refused, as PostgreSQL does.
#[tokio::test]
async fn plaintext_sent_after_an_ssl_request_before_its_answer_is_refused_with_08p01() {
    let db = TestDb::new();
    let (_ca, _files, proxy) = serving_proxy(&db, "allow");
    let mut bytes = BytesMut::from(&request_packet(SSL_REQUEST_CODE)[..]);
    let token = token_for(TENANT_ACME);
    frontend::startup_message(token_params(&token).iter().copied(), &mut bytes).unwrap();
    let mut stream = raw_connect(proxy.port()).await;
    stream.write_all(&bytes).await.unwrap();
    let reply = read_login(&mut stream).await;
    assert_refused(&reply, "08P01", "unencrypted data", "the login went on");
}

#[tokio::test]
async fn direct_tls_with_alpn_postgresql_logs_in_and_runs_queries() {
    let db = TestDb::new();
    let (ca, _files, proxy) = serving_proxy(&db, "require");
    let mut tls = direct_tls(proxy.port(), &ca.pem, Some(b"postgresql"))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    login_on(&mut tls, &token_for(TENANT_GLOBEX)).await;
    assert_eq!(
        raw_query(&mut tls, "SELECT count(*) FROM invoices").await,
        vec![GLOBEX_INVOICES.to_string()]
    );
    assert_eq!(
        raw_query(&mut tls, CURRENT_TENANT).await,
        vec![TENANT_GLOBEX.to_owned()]
    );
}

#[tokio::test]
async fn direct_tls_without_alpn_is_refused() {
    let db = TestDb::new();
    let (ca, _files, proxy) = serving_proxy(&db, "require");
    let mut tls = direct_tls(proxy.port(), &ca.pem, None).await.unwrap();
    // Refused right after the handshake, before any startup packet.
    let reply = read_login(&mut tls).await;
    assert_refused(&reply, "08P01", "ALPN", "direct TLS without ALPN got in");
}

#[tokio::test]
async fn plaintext_cancel_request_cancels_a_query_of_a_tls_session() {
    let db = TestDb::new();
    let (ca, _files, proxy) = serving_proxy(&db, "require");
    let mut tls = direct_tls(proxy.port(), &ca.pem, Some(b"postgresql"))
        .await
        .unwrap();
    let (pid, secret) = login_on(&mut tls, &token_for(TENANT_ACME)).await;
    let mut buf = BytesMut::new();
    frontend::query("SELECT pg_sleep(60) /* tls-cancel-marker */", &mut buf).unwrap();
    tls.write_all(&buf).await.unwrap();
    tls.flush().await.unwrap();

    let superuser = db.superuser().await;
    eventually("the query running in PostgreSQL", || async {
        let n: i64 = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' \
                 AND query LIKE '%tls-cancel-marker%' AND pid <> pg_backend_pid()",
                &[&db.name()],
            )
            .await
            .unwrap()
            .get(0);
        n > 0
    })
    .await;

    let mut cancel = raw_connect(proxy.port()).await;
    let mut buf = BytesMut::new();
    frontend::cancel_request(pid, secret, &mut buf);
    cancel.write_all(&buf).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(READ_BOUND, cancel.read_to_end(&mut rest)).await;

    let mut code = None;
    while let Some(msg) = read_msg(&mut tls).await {
        match msg.tag {
            b'E' => code = error_field(&msg.body, b'C'),
            b'Z' => break,
            _ => {}
        }
    }
    assert_eq!(
        code.as_deref(),
        Some("57014"),
        "the query was not cancelled"
    );
}

#[tokio::test]
async fn large_results_and_queries_cross_both_tls_layers_intact() {
    let pg = tls_pg();
    let db = pg.fresh_db();
    let ca = Ca::new("CA");
    let files = TlsFiles::new(&ca, &["localhost", "127.0.0.1"]);
    let upstream_ca = files.write("upstream-ca.pem", &upstream_ca().pem);
    let proxy = Proxy::start(
        serving(&db, &files, "require")
            .general("server_tls_sslmode", "verify-full")
            .general("server_tls_ca_file", TlsFiles::path_str(&upstream_ca)),
    );
    let mut tls = direct_tls(proxy.port(), &ca.pem, Some(b"postgresql"))
        .await
        .unwrap();
    login_on(&mut tls, &token_for(TENANT_ACME)).await;
    // About 4 MB towards the client, far beyond every buffer and the back-pressure mark.
    let rows = raw_query(
        &mut tls,
        "SELECT repeat(chr(65 + g % 26), 4000) FROM generate_series(0, 999) g",
    )
    .await;
    assert_eq!(rows.len(), 1000);
    for (i, row) in rows.iter().enumerate() {
        let expected = char::from(b'A' + (i % 26) as u8).to_string().repeat(4000);
        assert!(*row == expected, "row {i} arrived damaged");
    }
    // About 2 MB towards the server in one query.
    let literal = "xyz".repeat(700_000);
    let sql = format!("SELECT length('{literal}')");
    let answer = raw_query(&mut tls, &sql).await;
    assert_eq!(answer, vec![literal.len().to_string()]);
    assert_eq!(
        raw_query(
            &mut tls,
            "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        .await,
        vec!["true".to_owned()]
    );
}

// ------------------------------------------------------------------ upstream

/// The CA that signed the TLS cluster's certificate.
fn upstream_ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| Ca::new("upstream CA"))
}

/// A cluster of this binary's own serving TLS with a certificate for 127.0.0.1 only (not
/// "localhost"), signed by [`upstream_ca`].
fn tls_pg() -> Arc<Pg> {
    static PG: OnceLock<Arc<Pg>> = OnceLock::new();
    PG.get_or_init(|| {
        let pg = dedicated_pg();
        let (cert, key) = upstream_ca().issue(&["127.0.0.1"]);
        pg.ok(pg.cluster().enable_tls(&cert, &key));
        pg
    })
    .clone()
}

/// A proxy for `db` with `server_tls_sslmode = mode`, `ca` as the contents of
/// `server_tls_ca_file` (unset when `None`) and `host` instead of the database's host.
fn upstream_proxy(db: &TestDb, mode: &str, ca: Option<&str>, host: Option<&str>) -> Proxy {
    // The proxy reads the CA file when it starts; the file may go after that.
    let scratch = tempfile::tempdir().unwrap();
    let mut config = ProxyConfig::for_db(db).general("server_tls_sslmode", mode);
    if let Some(ca) = ca {
        let path = scratch.path().join("upstream-ca.pem");
        std::fs::write(&path, ca).unwrap();
        config = config.general("server_tls_ca_file", TlsFiles::path_str(&path));
    }
    if let Some(host) = host {
        config = config.app_db("host", host);
    }
    Proxy::start(config)
}

async fn upstream_ssl(proxy: &Proxy) -> bool {
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // And the tenant is still set on an encrypted server connection.
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);
    ssl
}

/// The login error a client gets when the proxy cannot reach the database as configured.
async fn upstream_login_error(proxy: &Proxy) -> (String, String) {
    match proxy.connect(&token_for(TENANT_ACME)).await {
        Ok(_) => panic!("logged in although the upstream connection must fail"),
        Err(err) => (
            sqlstate(&err).unwrap_or_default().to_owned(),
            err.as_db_error()
                .map(|e| e.message().to_owned())
                .unwrap_or_else(|| err.to_string()),
        ),
    }
}

#[tokio::test]
async fn verify_full_upstream_encrypts_server_connections() {
    let db = tls_pg().fresh_db();
    let proxy = upstream_proxy(&db, "verify-full", Some(&upstream_ca().pem), None);
    assert!(
        upstream_ssl(&proxy).await,
        "the server connection is not TLS"
    );
}

#[tokio::test]
async fn verify_full_upstream_with_the_wrong_ca_fails_with_class_08() {
    let db = tls_pg().fresh_db();
    let stranger = Ca::new("not the upstream CA");
    let proxy = upstream_proxy(&db, "verify-full", Some(&stranger.pem), None);
    let (code, message) = upstream_login_error(&proxy).await;
    assert!(code.starts_with("08"), "{code}: {message}");
    assert!(message.contains("certificate"), "{message}");
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let db = tls_pg().fresh_db();
    // The certificate names 127.0.0.1, not localhost.
    let proxy = upstream_proxy(
        &db,
        "verify-full",
        Some(&upstream_ca().pem),
        Some("localhost"),
    );
    let (code, message) = upstream_login_error(&proxy).await;
    assert!(code.starts_with("08"), "{code}: {message}");
    assert!(message.contains("not valid for name"), "{message}");
    drop(proxy);
    let proxy = upstream_proxy(
        &db,
        "verify-ca",
        Some(&upstream_ca().pem),
        Some("localhost"),
    );
    assert!(upstream_ssl(&proxy).await, "verify-ca did not encrypt");
}

#[tokio::test]
async fn require_upstream_encrypts_without_a_ca() {
    let db = tls_pg().fresh_db();
    let proxy = upstream_proxy(&db, "require", None, None);
    assert!(upstream_ssl(&proxy).await, "require did not encrypt");
}

#[tokio::test]
async fn disable_upstream_stays_plaintext_though_the_server_offers_tls() {
    let db = tls_pg().fresh_db();
    let proxy = upstream_proxy(&db, "disable", None, None);
    assert!(!upstream_ssl(&proxy).await, "disable encrypted anyway");
}

#[tokio::test]
async fn prefer_upstream_encrypts_when_offered_and_falls_back_to_plaintext_otherwise() {
    let with_tls = tls_pg().fresh_db();
    let proxy = upstream_proxy(&with_tls, "prefer", None, None);
    assert!(
        upstream_ssl(&proxy).await,
        "prefer did not use the TLS offered"
    );
    // The shared cluster of this binary has no TLS.
    let without_tls = TestDb::new();
    let proxy = upstream_proxy(&without_tls, "prefer", None, None);
    assert!(!upstream_ssl(&proxy).await);
}

#[tokio::test]
async fn require_upstream_against_a_server_without_tls_fails_with_class_08() {
    let without_tls = TestDb::new();
    let proxy = upstream_proxy(&without_tls, "require", None, None);
    let (code, message) = upstream_login_error(&proxy).await;
    assert!(code.starts_with("08"), "{code}: {message}");
    assert!(message.contains("does not accept TLS"), "{message}");
}

#[tokio::test]
async fn pooled_tls_server_connections_are_reused_and_dead_ones_replaced() {
    let db = tls_pg().fresh_db();
    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("server_tls_sslmode", "require")
            .app_db("pool_size", 1),
    );
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let first = backend_pid(&client).await;
    // Idle in the pool between transactions, then reused: the idle probe must not take a
    // healthy TLS connection for a dead one.
    assert_eq!(backend_pid(&client).await, first);
    assert_eq!(backend_pid(&client).await, first);
    // Killed while idle: the next transaction gets a fresh (TLS) connection.
    let superuser = db.superuser().await;
    superuser
        .execute("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .unwrap();
    // Once the backend is gone its FATAL and end of stream are in the proxy's socket.
    eventually("the terminated backend gone", || async {
        let alive: i64 = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&first],
            )
            .await
            .unwrap()
            .get(0);
        alive == 0
    })
    .await;
    assert_ne!(
        backend_pid(&client).await,
        first,
        "a dead TLS server connection was handed out again"
    );
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}

// ------------------------------------------------------------------ reload (SIGHUP)

/// Upper bound for waiting on a reload's outcome.
const RELOAD_BOUND: std::time::Duration = std::time::Duration::from_secs(30);

/// The `message` of every reload outcome the proxy logged so far (it must log JSON).
fn reload_outcomes(proxy: &Proxy) -> Vec<serde_json::Value> {
    proxy
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            let message = line["fields"]["message"].as_str().unwrap_or_default();
            message.starts_with("configuration reload")
        })
        .collect()
}

/// Sends SIGHUP and waits for the reload's logged outcome.
async fn sighup_and_wait(proxy: &Proxy) -> serde_json::Value {
    let before = reload_outcomes(proxy).len();
    proxy.signal(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + RELOAD_BOUND;
    loop {
        if let Some(outcome) = reload_outcomes(proxy).get(before) {
            return outcome.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload outcome logged after SIGHUP:\n{}",
            proxy.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn verify_full_with(proxy: &Proxy, ca: &Path) -> String {
    conninfo(
        proxy,
        "localhost",
        &format!("sslmode=verify-full sslrootcert={}", TlsFiles::path_str(ca)),
    )
}

#[tokio::test]
async fn sighup_serves_a_new_certificate_to_new_clients_and_keeps_tls_sessions() {
    let db = TestDb::new();
    let first = Ca::new("first CA");
    let files = TlsFiles::new(&first, &["localhost", "127.0.0.1"]);
    let proxy = Proxy::start(serving(&db, &files, "require").general("log_format", "json"));
    let mut session = direct_tls(proxy.port(), &first.pem, Some(b"postgresql"))
        .await
        .unwrap();
    login_on(&mut session, &token_for(TENANT_ACME)).await;

    let second = Ca::new("second CA");
    files.replace_certificate(&second, &["localhost", "127.0.0.1"]);
    let second_ca = files.write("second-ca.pem", &second.pem);
    let outcome = sighup_and_wait(&proxy).await;
    assert_eq!(
        outcome["fields"]["message"], "configuration reloaded",
        "{outcome}"
    );

    let token = token_for(TENANT_GLOBEX);
    let output = psql(
        &db,
        &verify_full_with(&proxy, &second_ca),
        &token,
        "SELECT 1",
    );
    assert_success(&output, "psql trusting the new CA");
    let output = psql(
        &db,
        &verify_full_with(&proxy, &files.ca),
        &token,
        "SELECT 1",
    );
    assert!(
        !output.status.success(),
        "the old certificate is still served after the reload"
    );
    // The session accepted before the reload carries on.
    assert_eq!(
        raw_query(&mut session, CURRENT_TENANT).await,
        vec![TENANT_ACME.to_owned()]
    );
}

#[tokio::test]
async fn sighup_with_a_broken_key_keeps_the_certificate_in_force() {
    let db = TestDb::new();
    let ca = Ca::new("CA");
    let files = TlsFiles::new(&ca, &["localhost", "127.0.0.1"]);
    let proxy = Proxy::start(serving(&db, &files, "require").general("log_format", "json"));
    std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nbroken\n").unwrap();
    let outcome = sighup_and_wait(&proxy).await;
    let message = outcome["fields"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("configuration reload failed"),
        "{outcome}"
    );
    let error = outcome["fields"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("pgtenant.client_tls_key_file"), "{outcome}");
    let output = psql(
        &db,
        &verify_full_with(&proxy, &files.ca),
        &token_for(TENANT_ACME),
        "SELECT count(*) FROM invoices",
    );
    assert_success(&output, "psql after a rejected reload");
    assert_eq!(stdout(&output), ACME_INVOICES.to_string());
}

#[tokio::test]
async fn sighup_tightening_server_tls_replaces_plaintext_server_connections() {
    let db = tls_pg().fresh_db();
    let scratch = tempfile::tempdir().unwrap();
    let ca_file = scratch.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, &upstream_ca().pem).unwrap();
    let config = ProxyConfig::for_db(&db)
        .general("log_format", "json")
        .general("server_tls_sslmode", "disable")
        .app_db("pool_size", 1);
    let mut proxy = Proxy::start(config.clone());
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let before: bool = client.query_one(ssl, &[]).await.unwrap().get(0);
    assert!(!before);

    let before_reloads = reload_outcomes(&proxy).len();
    proxy.reload_with(
        config
            .general("server_tls_sslmode", "verify-full")
            .general("server_tls_ca_file", TlsFiles::path_str(&ca_file)),
    );
    let deadline = tokio::time::Instant::now() + RELOAD_BOUND;
    let outcome = loop {
        if let Some(outcome) = reload_outcomes(&proxy).get(before_reloads) {
            break outcome.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        outcome["fields"]["message"], "configuration reloaded",
        "{outcome}"
    );
    // The idle plaintext server is not handed out again: the same client's next
    // transaction runs on an encrypted one.
    let after: bool = client.query_one(ssl, &[]).await.unwrap().get(0);
    assert!(after, "a plaintext server connection survived the reload");
}
