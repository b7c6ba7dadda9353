//! Configuration loading and tenant-token verification, without a database.
//!
//! Key fixtures under tests/fixtures/ are throwaway keys generated with openssl for these tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use pgtenant::auth::token::{MintKey, TokenError, TokenVerifier, mint, mint_claims};
use pgtenant::config::{Config, ConfigError};
use pgtenant::tenant::TenantError;
use serde_json::{Map, Value, json};

const TENANT: &str = "0e1d7c3a-5b6f-4a2b-9c8d-1234567890ab";
const HS_SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef0123456789abcdef0123";
const DB: &str = "[databases.app]\nhost = \"localhost\"\nuser = \"api_user\"\n";
const HOUR: Duration = Duration::from_secs(3600);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn load_with_env(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_toml_str_with_env(toml, &fixtures(), |name| env.get(name).cloned())
}

fn load(toml: &str) -> Result<Config, ConfigError> {
    load_with_env(toml, &[])
}

fn load_err(toml: &str) -> ConfigError {
    match load(toml) {
        Ok(_) => panic!("config unexpectedly loaded:\n{toml}"),
        Err(e) => e,
    }
}

fn hs_auth(alg: &str) -> String {
    format!("[auth]\nalgorithm = \"{alg}\"\nsecret = \"{HS_SECRET}\"\n")
}

fn verifier(auth_section: &str) -> TokenVerifier {
    let config = load(&format!("{auth_section}\n{DB}")).unwrap();
    TokenVerifier::new(&config.auth).unwrap()
}

fn hs256() -> MintKey {
    MintKey::hmac(Algorithm::HS256, HS_SECRET.as_bytes()).unwrap()
}

fn claims(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("claims must be an object"),
    }
}

fn token_for(key: &MintKey, extra: Value) -> String {
    mint(key, "tenant_id", TENANT, HOUR, claims(extra)).unwrap()
}

/// Verification must fail, and neither the message nor `Debug` may contain any part of the token.
fn refused(verifier: &TokenVerifier, token: &str) -> TokenError {
    let err = verifier
        .verify(token)
        .expect_err("token unexpectedly accepted");
    let shown = format!("{} {:?}", err.client_message(), err);
    for part in token.split('.').filter(|p| p.len() >= 4) {
        assert!(!shown.contains(part), "error echoes the token: {shown}");
    }
    err
}

// ---------------------------------------------------------------- configuration

#[test]
fn unknown_keys_are_refused_with_their_full_name() {
    let err = load_err(&format!("{}colour = \"blue\"\n{DB}", hs_auth("HS256")));
    assert_eq!(err.key(), Some("auth.colour"));
    assert!(
        err.to_string().starts_with("auth.colour: unknown key"),
        "{err}"
    );

    let err = load_err(&format!("{}{DB}hots = \"x\"\n", hs_auth("HS256")));
    assert_eq!(err.key(), Some("databases.app.hots"));

    let err = load_err(&format!("[pgbouncer]\n{}{DB}", hs_auth("HS256")));
    assert_eq!(err.key(), Some("pgbouncer"));
}

#[test]
fn misspelt_key_is_reported_as_unknown_not_as_missing() {
    let err = load_err(&format!(
        "[auth]\nalgorithm = \"HS256\"\nsecert = \"{HS_SECRET}\"\n{DB}"
    ));
    assert_eq!(err.key(), Some("auth.secert"));
    assert!(!err.to_string().contains(HS_SECRET), "{err}");

    let err = load_err(&format!(
        "{}[databases.app]\nhots = \"db\"\nuser = \"api_user\"\n",
        hs_auth("HS256")
    ));
    assert_eq!(err.key(), Some("databases.app.hots"));
}

#[test]
fn statement_pool_mode_is_refused_because_set_local_needs_a_transaction() {
    let err = load_err(&format!(
        "[pgtenant]\npool_mode = \"statement\"\n{}{DB}",
        hs_auth("HS256")
    ));
    let text = err.to_string();
    assert!(text.starts_with("pgtenant.pool_mode: "), "{text}");
    assert!(
        text.contains("SET LOCAL") && text.contains("transaction"),
        "{text}"
    );
}

#[test]
fn session_pool_mode_is_refused_as_not_supported_yet() {
    let err = load_err(&format!(
        "[pgtenant]\npool_mode = \"session\"\n{}{DB}",
        hs_auth("HS256")
    ));
    assert!(err.to_string().contains("not supported yet"), "{err}");
}

#[test]
fn bad_port_names_the_database_key_and_the_range() {
    let err = load_err(&format!("{}{DB}port = 70000\n", hs_auth("HS256")));
    assert_eq!(
        err.to_string(),
        "databases.app.port: expected an integer 1-65535, found 70000"
    );
    let err = load_err(&format!("{}{DB}port = \"5432\"\n", hs_auth("HS256")));
    assert_eq!(
        err.to_string(),
        "databases.app.port: expected an integer 1-65535, found a string"
    );
}

#[test]
fn hs_algorithm_without_a_secret_names_auth_secret() {
    let err = load_err(&format!("[auth]\nalgorithm = \"HS256\"\n{DB}"));
    assert_eq!(err.key(), Some("auth.secret"));
}

#[test]
fn short_hmac_secret_is_refused_without_echoing_it() {
    let err = load_err(&format!(
        "[auth]\nalgorithm = \"HS256\"\nsecret = \"tooshort-abc\"\n{DB}"
    ));
    assert_eq!(err.key(), Some("auth.secret"));
    assert!(!err.to_string().contains("tooshort-abc"), "{err}");
}

#[test]
fn two_secret_sources_are_refused() {
    let err = load_err(&format!(
        "[auth]\nalgorithm = \"HS256\"\nsecret = \"{HS_SECRET}\"\nsecret_env = \"JWT_SECRET\"\n{DB}"
    ));
    assert_eq!(err.key(), Some("auth.secret_env"));
    assert!(err.to_string().contains("auth.secret"), "{err}");
    assert!(!err.to_string().contains(HS_SECRET), "{err}");
}

#[test]
fn secret_env_reads_the_named_variable() {
    let toml = format!("[auth]\nalgorithm = \"HS384\"\nsecret_env = \"JWT_SECRET\"\n{DB}");
    let config = load_with_env(&toml, &[("JWT_SECRET", HS_SECRET)]).unwrap();
    assert_eq!(config.auth.secret.as_ref().unwrap().expose(), HS_SECRET);

    let err = load_with_env(&toml, &[]).unwrap_err();
    assert_eq!(err.key(), Some("auth.secret_env"));
    assert!(err.to_string().contains("JWT_SECRET"), "{err}");
}

#[test]
fn secret_and_password_files_are_read_relative_to_the_config_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt"), format!("{HS_SECRET}\n")).unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret-pw\r\n").unwrap();
    let path = dir.path().join("pgtenant.toml");
    std::fs::write(
        &path,
        "[auth]\nalgorithm = \"HS512\"\nsecret_file = \"jwt\"\n\
         [databases.app]\nhost = \"db\"\nuser = \"api_user\"\npassword_file = \"pw\"\n",
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.auth.secret.as_ref().unwrap().expose(), HS_SECRET);
    let db = config.database("app").unwrap();
    assert_eq!(db.password.as_ref().unwrap().expose(), "s3cret-pw");
    assert!(!format!("{config:?}").contains("s3cret-pw"));
}

#[test]
fn missing_secret_file_names_the_key() {
    let err = load_err(&format!(
        "[auth]\nalgorithm = \"HS256\"\nsecret_file = \"no-such-file\"\n{DB}"
    ));
    assert_eq!(err.key(), Some("auth.secret_file"));
}

#[test]
fn asymmetric_algorithm_needs_a_public_key_or_jwks() {
    let err = load_err(&format!("[auth]\nalgorithm = \"RS256\"\n{DB}"));
    assert_eq!(err.key(), Some("auth.public_key_file"));
    let err = load_err(&format!(
        "[auth]\nalgorithm = \"RS256\"\npublic_key_file = \"rsa_public.pem\"\nsecret = \"{HS_SECRET}\"\n{DB}"
    ));
    assert_eq!(err.key(), Some("auth.secret"));
}

#[test]
fn private_key_given_as_public_key_is_refused() {
    let err = load_err(&format!(
        "[auth]\nalgorithm = \"RS256\"\npublic_key_file = \"rsa_private.pem\"\n{DB}"
    ));
    assert_eq!(err.key(), Some("auth.public_key_file"));
    assert!(err.to_string().contains("private key"), "{err}");
}

#[test]
fn key_of_the_wrong_curve_fails_at_load() {
    let err = load_err(&format!(
        "[auth]\nalgorithm = \"ES384\"\npublic_key_file = \"ec_public.pem\"\n{DB}"
    ));
    assert_eq!(err.key(), Some("auth.public_key_file"));
}

#[test]
fn min_pool_size_above_pool_size_is_refused() {
    let err = load_err(&format!(
        "[pgtenant]\nmin_pool_size = 5\n{}{DB}pool_size = 2\n",
        hs_auth("HS256")
    ));
    assert_eq!(err.key(), Some("databases.app.pool_size"));
    let err = load_err(&format!(
        "[pgtenant]\ndefault_pool_size = 4\nmin_pool_size = 5\n{}{DB}",
        hs_auth("HS256")
    ));
    assert_eq!(err.key(), Some("pgtenant.min_pool_size"));
}

#[test]
fn at_least_one_database_is_required() {
    let err = load_err(&format!("{}[databases]\n", hs_auth("HS256")));
    assert_eq!(err.key(), Some("databases"));
    let err = load_err(&hs_auth("HS256"));
    assert_eq!(err.key(), Some("databases"));
}

#[test]
fn negative_duration_is_refused_with_its_key() {
    let err = load_err(&format!(
        "[pgtenant]\nquery_wait_timeout = -1\n{}{DB}",
        hs_auth("HS256")
    ));
    assert_eq!(err.key(), Some("pgtenant.query_wait_timeout"));
}

#[test]
fn example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgtenant.toml");
    let config = Config::load(&path).unwrap();
    assert!(config.database("app").is_some());
    assert_eq!(config.auth.algorithm, Algorithm::HS256);
}

// ---------------------------------------------------------------- tokens: valid

#[test]
fn hmac_tokens_verify_for_each_hs_algorithm() {
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let v = verifier(&hs_auth(&format!("{alg:?}")));
        let key = MintKey::hmac(alg, HS_SECRET.as_bytes()).unwrap();
        let verified = v
            .verify(&token_for(&key, json!({"sub": "user-7"})))
            .unwrap();
        assert_eq!(verified.tenant.as_str(), TENANT, "{alg:?}");
        assert_eq!(verified.subject.as_deref(), Some("user-7"));
        assert!(verified.expires_at > now());
    }
}

#[test]
fn public_key_tokens_verify_for_rsa_pss_ecdsa_and_eddsa() {
    let cases = [
        (Algorithm::RS256, "rsa_private.pem", "rsa_public.pem"),
        (Algorithm::PS256, "rsa_private.pem", "rsa_public.pem"),
        (Algorithm::ES256, "ec_private.pem", "ec_public.pem"),
        (
            Algorithm::EdDSA,
            "ed25519_private.pem",
            "ed25519_public.pem",
        ),
    ];
    for (alg, private, public) in cases {
        let v = verifier(&format!(
            "[auth]\nalgorithm = \"{alg:?}\"\npublic_key_file = \"{public}\"\n"
        ));
        let key = MintKey::from_private_key_pem(alg, &fixture(private)).unwrap();
        let verified = v.verify(&token_for(&key, json!({}))).unwrap();
        assert_eq!(verified.tenant.as_str(), TENANT, "{alg:?}");
    }
}

#[test]
fn uppercase_uuid_tenant_is_normalised() {
    let v = verifier(&hs_auth("HS256"));
    let token = mint(
        &hs256(),
        "tenant_id",
        &TENANT.to_uppercase(),
        HOUR,
        Map::new(),
    )
    .unwrap();
    assert_eq!(v.verify(&token).unwrap().tenant.as_str(), TENANT);
}

// ---------------------------------------------------------------- tokens: JWKS

fn write_jwks(dir: &Path, keys: &[(&str, Option<&str>)]) -> String {
    let keys = keys
        .iter()
        .map(|(public, kid)| {
            let decoding = DecodingKey::from_rsa_pem(&fixture(public)).unwrap();
            let mut jwk = Jwk::from_decoding_key(&decoding, Some(Algorithm::RS256)).unwrap();
            jwk.common.key_id = kid.map(str::to_owned);
            jwk
        })
        .collect();
    let path = dir.join("jwks.json");
    std::fs::write(&path, serde_json::to_string(&JwkSet { keys }).unwrap()).unwrap();
    format!(
        "[auth]\nalgorithm = \"RS256\"\njwks_file = \"{}\"\n",
        path.display()
    )
}

#[test]
fn jwks_selects_the_key_named_by_kid() {
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(&write_jwks(
        dir.path(),
        &[
            ("rsa_public.pem", Some("k1")),
            ("rsa2_public.pem", Some("k2")),
        ],
    ));
    let key2 = || MintKey::from_private_key_pem(Algorithm::RS256, &fixture("rsa2_private.pem"));
    let good = token_for(&key2().unwrap().with_kid("k2"), json!({}));
    assert_eq!(v.verify(&good).unwrap().tenant.as_str(), TENANT);

    let wrong_kid = token_for(&key2().unwrap().with_kid("k1"), json!({}));
    assert_eq!(refused(&v, &wrong_kid), TokenError::BadSignature);
    let unknown_kid = token_for(&key2().unwrap().with_kid("k3"), json!({}));
    assert_eq!(refused(&v, &unknown_kid), TokenError::UnknownKeyId);
    let no_kid = token_for(&key2().unwrap(), json!({}));
    assert_eq!(refused(&v, &no_kid), TokenError::UnknownKeyId);
}

#[test]
fn jwks_with_a_single_key_accepts_tokens_without_kid() {
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(&write_jwks(dir.path(), &[("rsa_public.pem", Some("only"))]));
    let key = MintKey::from_private_key_pem(Algorithm::RS256, &fixture("rsa_private.pem")).unwrap();
    assert!(v.verify(&token_for(&key, json!({}))).is_ok());
}

// ---------------------------------------------------------------- tokens: refused

#[test]
fn expired_token_is_refused_but_leeway_is_honoured() {
    let v = verifier(&format!("{}leeway = 30\n", hs_auth("HS256")));
    let expired = token_for(&hs256(), json!({"exp": now() - 3600}));
    let err = refused(&v, &expired);
    assert_eq!(err, TokenError::Expired);
    assert_eq!((err.sqlstate(), err.reason_label()), ("28P01", "expired"));

    let within_leeway = token_for(&hs256(), json!({"exp": now() - 5}));
    assert!(v.verify(&within_leeway).is_ok());
}

#[test]
fn token_not_yet_valid_is_refused() {
    let v = verifier(&hs_auth("HS256"));
    let token = token_for(&hs256(), json!({"nbf": now() + 3600}));
    assert_eq!(refused(&v, &token), TokenError::NotYetValid);
}

#[test]
fn token_without_exp_is_refused() {
    let v = verifier(&hs_auth("HS256"));
    let token = mint_claims(&hs256(), &claims(json!({"tenant_id": TENANT}))).unwrap();
    assert_eq!(refused(&v, &token), TokenError::MissingExp);
}

#[test]
fn issuer_and_audience_are_required_when_configured() {
    let v = verifier(&format!(
        "{}issuer = \"https://auth.example\"\naudience = \"pgtenant\"\n",
        hs_auth("HS256")
    ));
    let ok = json!({"iss": "https://auth.example", "aud": "pgtenant"});
    assert!(v.verify(&token_for(&hs256(), ok)).is_ok());

    let wrong_iss = json!({"iss": "https://evil.example", "aud": "pgtenant"});
    assert_eq!(
        refused(&v, &token_for(&hs256(), wrong_iss)),
        TokenError::WrongIssuer
    );
    let no_iss = json!({"aud": "pgtenant"});
    assert_eq!(
        refused(&v, &token_for(&hs256(), no_iss)),
        TokenError::WrongIssuer
    );
    let wrong_aud = json!({"iss": "https://auth.example", "aud": ["other"]});
    assert_eq!(
        refused(&v, &token_for(&hs256(), wrong_aud)),
        TokenError::WrongAudience
    );
}

#[test]
fn token_signed_with_another_secret_or_tampered_is_refused() {
    let v = verifier(&hs_auth("HS256"));
    let other = MintKey::hmac(
        Algorithm::HS256,
        b"another-secret-0123456789abcdef-0123456789",
    )
    .unwrap();
    assert_eq!(
        refused(&v, &token_for(&other, json!({}))),
        TokenError::BadSignature
    );

    // Swap in a payload naming another tenant, keeping the original signature.
    let token = token_for(&hs256(), json!({}));
    let parts: Vec<&str> = token.split('.').collect();
    let forged_payload = URL_SAFE_NO_PAD.encode(
        json!({"tenant_id": "11111111-2222-3333-4444-555555555555", "exp": now() + 3600})
            .to_string(),
    );
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(refused(&v, &forged), TokenError::BadSignature);
}

#[test]
fn alg_none_is_refused() {
    let v = verifier(&hs_auth("HS256"));
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload =
        URL_SAFE_NO_PAD.encode(json!({"tenant_id": TENANT, "exp": now() + 3600}).to_string());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.c2lnbmF0dXJl"),
    ] {
        let err = refused(&v, &token);
        assert_eq!(err, TokenError::WrongAlgorithm);
        assert_eq!(err.sqlstate(), "28000");
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let v = verifier("[auth]\nalgorithm = \"RS256\"\npublic_key_file = \"rsa_public.pem\"\n");
    let confused = MintKey::hmac(Algorithm::HS256, &fixture("rsa_public.pem")).unwrap();
    let token = token_for(&confused, json!({}));
    assert_eq!(refused(&v, &token), TokenError::WrongAlgorithm);
}

#[test]
fn token_of_another_asymmetric_algorithm_is_refused() {
    let v = verifier("[auth]\nalgorithm = \"RS256\"\npublic_key_file = \"rsa_public.pem\"\n");
    let ps = MintKey::from_private_key_pem(Algorithm::PS256, &fixture("rsa_private.pem")).unwrap();
    assert_eq!(
        refused(&v, &token_for(&ps, json!({}))),
        TokenError::WrongAlgorithm
    );
}

#[test]
fn malformed_tokens_are_refused() {
    let v = verifier(&hs_auth("HS256"));
    let too_long = "a".repeat(20_000);
    for token in [
        "",
        "not-a-token",
        "a.b",
        "a.b.c.d",
        "!!!!.e30.sig",
        &too_long,
    ] {
        let err = v.verify(token).unwrap_err();
        assert_eq!(err, TokenError::Malformed, "{token:.20}");
        assert_eq!((err.sqlstate(), err.reason_label()), ("28000", "malformed"));
    }
}

#[test]
fn critical_header_extensions_are_refused() {
    let v = verifier(&hs_auth("HS256"));
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#);
    let token = format!("{header}.e30.c2ln");
    assert_eq!(refused(&v, &token), TokenError::Malformed);
}

#[test]
fn missing_tenant_claim_is_refused() {
    let v = verifier(&hs_auth("HS256"));
    let token = mint(&hs256(), "org_id", TENANT, HOUR, Map::new()).unwrap();
    assert_eq!(refused(&v, &token), TokenError::MissingTenantClaim);
}

#[test]
fn dotted_tenant_claim_path_reaches_into_objects() {
    let v = verifier(&format!(
        "{}tenant_claim = \"app_metadata.tenant_id\"\n",
        hs_auth("HS256")
    ));
    let nested = mint(
        &hs256(),
        "app_metadata.tenant_id",
        TENANT,
        HOUR,
        claims(json!({"app_metadata": {"role": "member"}})),
    )
    .unwrap();
    assert_eq!(v.verify(&nested).unwrap().tenant.as_str(), TENANT);

    let top_level_only = token_for(&hs256(), json!({}));
    assert_eq!(refused(&v, &top_level_only), TokenError::MissingTenantClaim);
}

#[test]
fn numeric_tenant_claim_is_accepted_only_if_its_decimal_form_validates() {
    let numeric = mint_claims(
        &hs256(),
        &claims(json!({"tenant_id": 42, "exp": now() + 3600})),
    )
    .unwrap();
    let digits = verifier(&format!(
        "{}tenant_pattern = \"[0-9]+\"\n",
        hs_auth("HS256")
    ));
    assert_eq!(digits.verify(&numeric).unwrap().tenant.as_str(), "42");

    let uuid = verifier(&hs_auth("HS256"));
    assert_eq!(
        refused(&uuid, &numeric),
        TokenError::InvalidTenant(TenantError::NotUuid)
    );

    let object = mint_claims(
        &hs256(),
        &claims(json!({"tenant_id": {"id": 1}, "exp": now() + 3600})),
    )
    .unwrap();
    assert_eq!(refused(&digits, &object), TokenError::TenantClaimNotString);
}

#[test]
fn sql_injection_in_the_tenant_claim_is_refused() {
    let attack = "x'; DROP TABLE accounts; --";
    let permissive = verifier(&format!("{}tenant_pattern = \".+\"\n", hs_auth("HS256")));
    let uuid = verifier(&hs_auth("HS256"));
    let token = mint(&hs256(), "tenant_id", attack, HOUR, Map::new()).unwrap();

    let err = refused(&permissive, &token);
    assert_eq!(
        err,
        TokenError::InvalidTenant(TenantError::ForbiddenCharacter)
    );
    assert!(!err.client_message().contains("DROP"), "{err}");
    assert_eq!(
        refused(&uuid, &token),
        TokenError::InvalidTenant(TenantError::NotUuid)
    );
}
