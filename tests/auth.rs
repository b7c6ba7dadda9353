//! Tenant tokens at the proxy's front door, against a real PostgreSQL: the three places a token
//! may come from (password, `tenant_token` startup parameter, `-c tenant_token=…` in
//! `options`), every way a token can be bad (each refused with SQLSTATE 28P01 or 28000 and a
//! message that says what was wrong without echoing the token), a dotted tenant claim path,
//! and RS256 with a public key file.

mod support;

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use postgres_protocol::message::frontend;
use serde_json::{Value, json};
use support::raw::*;
use support::*;
use tokio::io::AsyncWriteExt;

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Pieces of `token` long enough that finding one in a message means the token leaked.
fn token_fragments(token: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = token.split('.').filter(|p| p.len() >= 8).collect();
    if token.len() >= 8 {
        parts.push(token);
    }
    parts
}

fn assert_no_token_in(text: &str, token: &str, what: &str) {
    for fragment in token_fragments(token) {
        assert!(
            !text.contains(fragment),
            "{what} contains (part of) the token: {text}"
        );
    }
}

/// A client that gives `token` only as `-c tenant_token=…` in `options`, with no password.
fn token_in_options_config(port: u16, token: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(CLIENT_USER)
        .dbname(PROXY_DBNAME)
        .options(format!("-c tenant_token={token}"));
    config
}

// ------------------------------------------------------------------ where the token comes from

#[tokio::test]
async fn token_given_as_password_logs_in_as_its_tenant() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);
}

#[tokio::test]
async fn token_given_as_password_works_with_psql() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let output = proxy.psql(
        &token_for(TENANT_GLOBEX),
        &format!("SELECT current_setting('{TENANT_SETTING}'), (SELECT count(*) FROM invoices)"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), format!("{TENANT_GLOBEX}|{GLOBEX_INVOICES}"));
}

#[tokio::test]
async fn token_as_tenant_token_startup_parameter_needs_no_password() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let token = token_for(TENANT_GLOBEX);
    let mut stream = send_startup(proxy.port(), &token_params(&token)).await;
    let reply = read_login(&mut stream).await;
    assert_eq!(reply.error, None);
    assert_eq!(
        reply.auth,
        vec![0],
        "expected AuthenticationOk without a password request"
    );
    assert!(reply.backend_key && reply.ready, "{reply:?}");
    let tenant = raw_query(&mut stream, CURRENT_TENANT).await;
    assert_eq!(tenant, vec![TENANT_GLOBEX.to_owned()]);
    let count = raw_query(&mut stream, "SELECT count(*) FROM invoices").await;
    assert_eq!(count, vec![GLOBEX_INVOICES.to_string()]);
}

#[tokio::test]
async fn token_in_options_logs_in_without_a_password() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let config = token_in_options_config(proxy.port(), &token_for(TENANT_ACME));
    // No password is configured: tokio-postgres fails if the proxy asks for one.
    let client = connect(&config).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);
}

#[tokio::test]
async fn token_is_never_forwarded_upstream() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let token = token_for(TENANT_ACME);
    let client = proxy.connect(&token).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
    let superuser = db.superuser().await;
    let rows = superuser
        .query(
            "SELECT coalesce(application_name, '') || ' ' || coalesce(query, '') \
             FROM pg_stat_activity WHERE datname = $1",
            &[&db.name()],
        )
        .await
        .unwrap();
    for row in rows {
        let text: String = row.get(0);
        assert_no_token_in(&text, &token, "pg_stat_activity");
    }
    let options: String = client
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_no_token_in(&options, &token, "application_name");
}

// ------------------------------------------------------------------ bad tokens

struct BadToken {
    name: &'static str,
    token: String,
    /// The message must contain one of these (lowercased) words.
    says: &'static [&'static str],
}

fn bad_tokens() -> Vec<BadToken> {
    vec![
        BadToken {
            name: "expired",
            token: expired_token(TENANT_ACME),
            says: &["expired"],
        },
        BadToken {
            name: "not yet valid",
            token: not_yet_valid_token(TENANT_ACME),
            says: &["not valid yet", "nbf", "not yet valid"],
        },
        BadToken {
            name: "wrong key",
            token: wrong_key_token(TENANT_ACME),
            says: &["signature"],
        },
        BadToken {
            name: "tampered payload",
            token: tampered_token(TENANT_GLOBEX, TENANT_ACME),
            says: &["signature"],
        },
        BadToken {
            name: "alg none",
            token: unsigned_token(TENANT_ACME),
            says: &["algorithm", "alg", "signature"],
        },
        BadToken {
            name: "HS512 while HS256 is pinned",
            token: wrong_algorithm_token(TENANT_ACME),
            says: &["algorithm", "alg"],
        },
        BadToken {
            name: "missing tenant claim",
            token: token_without_tenant(),
            says: &["tenant"],
        },
        BadToken {
            name: "missing exp",
            token: token_without_exp(TENANT_ACME),
            says: &["exp"],
        },
        BadToken {
            name: "SQL injection as tenant",
            token: token_with_tenant_value(json!("x'; DROP TABLE invoices; --")),
            says: &["tenant"],
        },
        BadToken {
            name: "tenant is not a UUID",
            token: token_with_tenant_value(json!("acme")),
            says: &["tenant"],
        },
        BadToken {
            name: "tenant is an object",
            token: token_with_tenant_value(json!({ "id": TENANT_ACME })),
            says: &["tenant"],
        },
        BadToken {
            name: "malformed garbage",
            token: malformed_token(),
            says: &["malformed", "well-formed", "jwt"],
        },
        BadToken {
            name: "three parts of garbage",
            token: "bm90.anNvbg.c2ln-garbage-garbage".to_owned(),
            says: &["malformed", "well-formed", "jwt"],
        },
    ]
}

fn assert_auth_failure(case: &str, err: &tokio_postgres::Error, token: &str, says: &[&str]) {
    let code = sqlstate(err);
    assert!(
        matches!(code, Some("28P01") | Some("28000")),
        "{case}: expected SQLSTATE 28P01 or 28000, got {code:?} ({err})"
    );
    let message = err
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_default();
    let lower = message.to_lowercase();
    assert!(
        says.iter().any(|word| lower.contains(word)),
        "{case}: message {message:?} does not say what was wrong (expected one of {says:?})"
    );
    assert_no_token_in(&message, token, case);
    assert_no_token_in(&format!("{err} {err:?}"), token, case);
}

#[tokio::test]
async fn each_bad_token_as_password_is_refused_with_28p01_or_28000_without_echoing_it() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let cases = bad_tokens();
    for case in &cases {
        match proxy.connect(&case.token).await {
            Ok(_) => panic!("{}: the proxy accepted the token", case.name),
            Err(err) => assert_auth_failure(case.name, &err, &case.token, case.says),
        }
    }
    // Still serving good clients after all that.
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
    // And nothing of any token reached the log.
    let log = proxy.log();
    for case in &cases {
        assert_no_token_in(&log, &case.token, "the proxy log");
    }
}

#[tokio::test]
async fn bad_tokens_in_startup_parameter_and_options_are_refused_without_echoing_them() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    for case in bad_tokens() {
        // As the tenant_token startup parameter.
        let mut stream = send_startup(proxy.port(), &token_params(&case.token)).await;
        let reply = read_login(&mut stream).await;
        let Some((code, message)) = reply.error else {
            panic!("{}: no ErrorResponse, got {reply:?}", case.name);
        };
        assert!(
            code == "28P01" || code == "28000",
            "{}: tenant_token parameter: SQLSTATE {code}",
            case.name
        );
        assert!(!reply.ready, "{}: logged in anyway", case.name);
        assert_no_token_in(&message, &case.token, case.name);

        // Inside options.
        let config = token_in_options_config(proxy.port(), &case.token);
        match connect(&config).await {
            Ok(_) => panic!("{}: accepted inside options", case.name),
            Err(err) => assert_auth_failure(case.name, &err, &case.token, case.says),
        }
    }
    let log = proxy.log();
    for case in bad_tokens() {
        assert_no_token_in(&log, &case.token, "the proxy log");
    }
}

#[tokio::test]
async fn empty_password_is_refused_with_an_auth_error() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let mut stream = raw_password_request(proxy.port()).await;
    let mut buf = BytesMut::new();
    frontend::password_message(b"", &mut buf).unwrap();
    stream.write_all(&buf).await.unwrap();
    let reply = read_login(&mut stream).await;
    let Some((code, message)) = reply.error else {
        panic!("no ErrorResponse for an empty password: {reply:?}");
    };
    assert!(code == "28P01" || code == "28000", "SQLSTATE {code}");
    assert!(
        message.to_lowercase().contains("token"),
        "message does not say the token is missing: {message:?}"
    );
    // The proxy closes the connection after the error.
    assert!(read_msg(&mut stream).await.is_none());
}

#[tokio::test]
async fn token_with_the_tenant_claim_under_another_name_is_refused() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db));
    let token = sign_claims(&json!({
        "tenant": TENANT_ACME,
        "exp": now_secs() + TOKEN_TTL_SECS,
    }));
    match proxy.connect(&token).await {
        Ok(_) => panic!("a token without tenant_id was accepted"),
        Err(err) => assert_auth_failure("claim named tenant", &err, &token, &["tenant"]),
    }
}

// ------------------------------------------------------------------ other configurations

#[tokio::test]
async fn dotted_tenant_claim_path_selects_the_nested_tenant() {
    let db = TestDb::new();
    let proxy =
        Proxy::start(ProxyConfig::for_db(&db).auth("tenant_claim", "app_metadata.tenant_id"));
    let nested = sign_claims(&json!({
        "sub": "someone",
        "exp": now_secs() + TOKEN_TTL_SECS,
        "app_metadata": { "tenant_id": TENANT_GLOBEX, "plan": "pro" },
        // A top-level tenant_id must not be what the proxy uses.
        "tenant_id": TENANT_ACME,
    }));
    let client = proxy.connect(&nested).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_GLOBEX);
    assert_eq!(invoice_count(&client).await, GLOBEX_INVOICES);

    // Only a top-level tenant_id: the configured path is missing.
    let flat = token_for(TENANT_ACME);
    match proxy.connect(&flat).await {
        Ok(_) => panic!("a token without app_metadata.tenant_id was accepted"),
        Err(err) => assert_auth_failure("flat tenant_id", &err, &flat, &["tenant"]),
    }
}

fn rsa_token(private_pem: &str, claims: &Value) -> String {
    let pem = std::fs::read(fixture_path(private_pem)).unwrap();
    let key = EncodingKey::from_rsa_pem(&pem).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
}

#[tokio::test]
async fn rs256_with_a_public_key_file_accepts_its_tokens_only() {
    let public = fixture_path("rsa_public.pem");
    assert!(public.exists(), "fixture {} is missing", public.display());
    let db = TestDb::new();
    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .without_auth("secret")
            .auth("algorithm", "RS256")
            .auth("public_key_file", public.to_string_lossy().into_owned()),
    );

    let good = rsa_token("rsa_private.pem", &claims_for(TENANT_ACME));
    let client = proxy.connect(&good).await.unwrap();
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
    assert_eq!(invoice_count(&client).await, ACME_INVOICES);

    // Signed by another RSA key.
    let other_key = rsa_token("rsa2_private.pem", &claims_for(TENANT_ACME));
    match proxy.connect(&other_key).await {
        Ok(_) => panic!("a token signed with another RSA key was accepted"),
        Err(err) => assert_auth_failure("other RSA key", &err, &other_key, &["signature"]),
    }

    // Algorithm confusion: HS256 keyed with the public key's PEM text.
    let public_pem = std::fs::read(&public).unwrap();
    let confused = sign_with(Algorithm::HS256, &public_pem, &claims_for(TENANT_ACME));
    match proxy.connect(&confused).await {
        Ok(_) => panic!("an HS256 token keyed with the RSA public key was accepted"),
        Err(err) => assert_auth_failure("HS256 with public key", &err, &confused, &["alg"]),
    }

    // The HS256 test token (the proxy has no secret now).
    let hs = token_for(TENANT_ACME);
    match proxy.connect(&hs).await {
        Ok(_) => panic!("an HS256 token was accepted by an RS256 proxy"),
        Err(err) => assert_auth_failure("HS256 token", &err, &hs, &["alg"]),
    }
}
