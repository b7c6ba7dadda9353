//! Tenant tokens for tests, minted directly with `jsonwebtoken` (independently of the proxy's
//! own minting code, so a bug there cannot hide in both). Good tokens are HS256 with
//! [`JWT_SECRET`], claims `tenant_id`, `sub`, `exp`; the `bad_*`-style helpers each break one thing.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The HS256 secret the generated proxy config trusts.
pub const JWT_SECRET: &str = "pgtenant-test-secret-0123456789abcdef-not-for-production";
/// A different secret, for tokens the proxy must reject.
pub const WRONG_SECRET: &str = "some-other-secret-0123456789abcdef-also-not-for-production";
/// Lifetime of good tokens.
pub const TOKEN_TTL_SECS: u64 = 3600;

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// The claims of a good token for `tenant`.
pub fn claims_for(tenant: &str) -> Value {
    json!({
        "tenant_id": tenant,
        "sub": format!("user-of-{tenant}"),
        "exp": now_secs() + TOKEN_TTL_SECS,
        "iat": now_secs(),
    })
}

/// Signs arbitrary claims with HS256 and [`JWT_SECRET`].
pub fn sign_claims(claims: &Value) -> String {
    sign_with(Algorithm::HS256, JWT_SECRET.as_bytes(), claims)
}

/// Signs claims with an HMAC algorithm (HS256/384/512) and `secret`.
pub fn sign_with(algorithm: Algorithm, secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_else(|err| panic!("could not sign a test token: {err}"))
}

/// A valid token for `tenant`.
pub fn token_for(tenant: &str) -> String {
    sign_claims(&claims_for(tenant))
}

/// A valid token for `tenant` with extra or replaced claims merged in.
pub fn token_with(tenant: &str, extra: Value) -> String {
    let mut claims = claims_for(tenant);
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            claims.insert(key.clone(), value.clone());
        }
    }
    sign_claims(&claims)
}

/// Expired an hour ago (far beyond any leeway).
pub fn expired_token(tenant: &str) -> String {
    token_with(tenant, json!({ "exp": now_secs() - 3600 }))
}

/// `nbf` an hour in the future.
pub fn not_yet_valid_token(tenant: &str) -> String {
    token_with(tenant, json!({ "nbf": now_secs() + 3600 }))
}

/// Signed with [`WRONG_SECRET`].
pub fn wrong_key_token(tenant: &str) -> String {
    sign_with(
        Algorithm::HS256,
        WRONG_SECRET.as_bytes(),
        &claims_for(tenant),
    )
}

/// Signed with the right secret but HS512 while the proxy is configured for HS256.
pub fn wrong_algorithm_token(tenant: &str) -> String {
    sign_with(Algorithm::HS512, JWT_SECRET.as_bytes(), &claims_for(tenant))
}

/// Well signed, but without a `tenant_id` claim.
pub fn token_without_tenant() -> String {
    let mut claims = claims_for(super::TENANT_ACME);
    if let Some(object) = claims.as_object_mut() {
        object.remove("tenant_id");
    }
    sign_claims(&claims)
}

/// Well signed, but without `exp`.
pub fn token_without_exp(tenant: &str) -> String {
    let mut claims = claims_for(tenant);
    if let Some(object) = claims.as_object_mut() {
        object.remove("exp");
    }
    sign_claims(&claims)
}

/// Well signed, with `tenant_id` set to any JSON value (not a UUID, a number, an injection...).
pub fn token_with_tenant_value(tenant: Value) -> String {
    let mut claims = claims_for(super::TENANT_ACME);
    if let Some(object) = claims.as_object_mut() {
        object.insert("tenant_id".to_owned(), tenant);
    }
    sign_claims(&claims)
}

/// `alg: none` with an empty signature: must never be accepted.
pub fn unsigned_token(tenant: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims_for(tenant).to_string());
    format!("{header}.{payload}.")
}

/// A good token for `tenant` whose payload was swapped for another tenant's after signing.
pub fn tampered_token(signed_for: &str, claimed: &str) -> String {
    let token = token_for(signed_for);
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("jsonwebtoken produced a token without three parts");
    };
    let payload = URL_SAFE_NO_PAD.encode(claims_for(claimed).to_string());
    format!("{header}.{payload}.{signature}")
}

/// Not a JWT at all.
pub fn malformed_token() -> String {
    "this-is-not-a-jwt".to_owned()
}
