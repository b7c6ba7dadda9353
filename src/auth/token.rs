//! Tenant token (JWT) verification, and minting for local use.
//!
//! [`TokenVerifier`] is built once from [`AuthConfig`] and turns a token string into a
//! [`VerifiedToken`] carrying a validated [`TenantId`]. The algorithm is pinned by configuration
//! and never taken from the token: a header naming any other algorithm (`none`, or HS256 signed
//! with an RSA public key as the HMAC secret) is refused before any key is touched. `exp` is
//! required; `nbf` is checked when present; `iss` and `aud` are required and checked when
//! configured. A token accepted once is remembered (by its SHA-256) until it expires or the
//! verifier is replaced by a reload, so reconnecting clients skip the signature check; `exp`
//! is still checked on every use. This module must never put a token, or any part of one (claim values included),
//! into an error message or a log line.
//!
//! Crypto comes from `jsonwebtoken` with its `rust_crypto` feature; with exactly one backend
//! feature enabled the crate selects its provider itself, so no `CryptoProvider` is installed
//! here (and no process-global state is touched).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, ConfigError, TenantFormat};
use crate::tenant::{TenantError, TenantId};

/// Tokens longer than this are refused unparsed; real tenant tokens are well under 4 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Verifies tenant tokens against one pinned algorithm and key (or JWK Set). `Send + Sync`.
pub struct TokenVerifier {
    algorithm: Algorithm,
    keys: VerifyingKeys,
    validation: Validation,
    tenant_claim: Vec<String>,
    tenant_format: TenantFormat,
    /// Tokens this verifier accepted, by SHA-256 of the whole token, so that a client that
    /// reconnects with the same token (a serverless function, a pool's reconnect) skips the
    /// signature check and claim parsing. Only `exp` can change a verdict over time, and it
    /// is checked again on every use; everything else the verdict rests on (keys, issuer,
    /// audience, tenant format) belongs to this verifier, which a reload replaces whole.
    recent: Mutex<HashMap<[u8; 32], VerifiedToken>>,
}

/// Entries kept in [`TokenVerifier::recent`]; when full it starts over (a burst of full
/// verifications, never unbounded memory).
const RECENT_TOKENS: usize = 4096;

enum VerifyingKeys {
    Single(DecodingKey),
    /// Usable keys from a JWK Set, with their `kid`.
    Set(Vec<(Option<String>, DecodingKey)>),
}

/// What a verified token vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub tenant: TenantId,
    /// The `sub` claim, if it is a string.
    pub subject: Option<String>,
    /// The `exp` claim, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why a token was refused. `Display` equals [`TokenError::client_message`]: safe to send to the
/// client and to log, because it never contains the token or a claim value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token issuer (iss) is missing or not accepted")]
    WrongIssuer,
    #[error("the token audience (aud) is missing or not accepted")]
    WrongAudience,
    #[error("the token has no expiry (exp) claim; tenant tokens must expire")]
    MissingExp,
    #[error("the token has no tenant claim")]
    MissingTenantClaim,
    #[error("the token's tenant claim must be a string")]
    TenantClaimNotString,
    #[error("the token's tenant id is not valid: {0}")]
    InvalidTenant(#[source] TenantError),
    #[error("the token's key id (kid) is missing or matches no configured key")]
    UnknownKeyId,
    #[error("the token is not signed with the algorithm this server accepts")]
    WrongAlgorithm,
    #[error("the server could not use its token verification key; see the server log")]
    KeyUnusable,
}

impl TokenError {
    /// SQLSTATE for the ErrorResponse: `28P01` (invalid_password) when a well-formed token was
    /// refused on signature, time or claims; `28000` (invalid_authorization_specification) when
    /// it could not be checked at all.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            TokenError::Malformed
            | TokenError::UnknownKeyId
            | TokenError::WrongAlgorithm
            | TokenError::KeyUnusable => "28000",
            TokenError::BadSignature
            | TokenError::Expired
            | TokenError::NotYetValid
            | TokenError::WrongIssuer
            | TokenError::WrongAudience
            | TokenError::MissingExp
            | TokenError::MissingTenantClaim
            | TokenError::TenantClaimNotString
            | TokenError::InvalidTenant(_) => "28P01",
        }
    }

    /// What was wrong, for the client. Never echoes the token.
    pub fn client_message(&self) -> String {
        self.to_string()
    }

    /// Short stable label for metrics and logs.
    pub fn reason_label(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingExp => "missing_exp",
            TokenError::MissingTenantClaim => "missing_tenant_claim",
            TokenError::TenantClaimNotString => "tenant_claim_not_string",
            TokenError::InvalidTenant(_) => "invalid_tenant",
            TokenError::UnknownKeyId => "unknown_key_id",
            TokenError::WrongAlgorithm => "wrong_algorithm",
            TokenError::KeyUnusable => "key_unusable",
        }
    }
}

/// The part of the JOSE header we read before verifying.
#[derive(serde::Deserialize)]
struct UnverifiedHeader {
    alg: String,
    kid: Option<String>,
    /// RFC 7515 §4.1.11: extensions we do not understand must make the token invalid.
    crit: Option<Value>,
}

impl TokenVerifier {
    /// Builds the verifier, parsing key material. Errors name the `auth.*` key at fault.
    pub fn new(cfg: &AuthConfig) -> Result<TokenVerifier, ConfigError> {
        let algorithm = cfg.algorithm;
        let keys = match algorithm.family() {
            AlgorithmFamily::Hmac => {
                let secret = cfg.secret.as_ref().ok_or_else(|| {
                    ConfigError::invalid("auth.secret", format!("{algorithm:?} needs a secret"))
                })?;
                VerifyingKeys::Single(DecodingKey::from_secret(secret.expose().as_bytes()))
            }
            family => match (&cfg.public_key_pem, &cfg.jwks) {
                (Some(pem), None) => {
                    VerifyingKeys::Single(public_key_from_pem(pem, algorithm, family)?)
                }
                (None, Some(jwks)) => VerifyingKeys::Set(keys_from_jwks(jwks, algorithm)?),
                _ => {
                    return Err(ConfigError::invalid(
                        "auth.public_key_file",
                        format!("{algorithm:?} needs exactly one of public_key_file or jwks_file"),
                    ));
                }
            },
        };

        let mut validation = Validation::new(algorithm);
        validation.leeway = cfg.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &cfg.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.validate_aud = true;
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        Ok(TokenVerifier {
            algorithm,
            keys,
            validation,
            tenant_claim: cfg.tenant_claim.split('.').map(str::to_owned).collect(),
            tenant_format: cfg.tenant_format.clone(),
            recent: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies signature, algorithm, time and claims, and extracts the tenant.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        self.verify_at(token, jsonwebtoken::get_current_timestamp())
    }

    /// [`TokenVerifier::verify`] with the clock read by the caller: `now` decides whether a
    /// token accepted before has expired since (a token seen for the first time is checked
    /// by `jsonwebtoken` against the system clock).
    fn verify_at(&self, token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = recent.get(&digest) {
            // jsonwebtoken's rule: expired once `exp` is more than `leeway` in the past.
            if known.expires_at.saturating_add(self.validation.leeway) < now {
                recent.remove(&digest);
                return Err(TokenError::Expired);
            }
            return Ok(known.clone());
        }
        drop(recent);
        let verified = self.verify_fully(token)?;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_TOKENS {
            recent.clear();
        }
        recent.insert(digest, verified.clone());
        Ok(verified)
    }

    fn verify_fully(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        let header = read_unverified_header(token)?;
        if header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        if header.alg.parse::<Algorithm>().ok() != Some(self.algorithm) {
            return Err(TokenError::WrongAlgorithm);
        }
        let key = self.select_key(header.kid.as_deref())?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        let claims = data.claims;

        let expires_at = claims
            .get("exp")
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
            .ok_or(TokenError::MissingExp)?;
        let raw_tenant = match self.tenant_claim_value(&claims) {
            None | Some(Value::Null) => return Err(TokenError::MissingTenantClaim),
            Some(Value::String(s)) => s.clone(),
            // A whole number is taken as its decimal spelling; it must still pass the format.
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            Some(_) => return Err(TokenError::TenantClaimNotString),
        };
        let tenant =
            TenantId::parse(&raw_tenant, &self.tenant_format).map_err(TokenError::InvalidTenant)?;
        let subject = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
        Ok(VerifiedToken {
            tenant,
            subject,
            expires_at,
        })
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    fn tenant_claim_value<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.tenant_claim.split_first()?;
        rest.iter()
            .try_fold(claims.get(first)?, |value, segment| value.get(segment))
    }

    /// By `kid` when the token has one; a set holding a single key also serves tokens without
    /// `kid` (and, if that key itself has no `kid`, tokens with any `kid`).
    fn select_key(&self, kid: Option<&str>) -> Result<&DecodingKey, TokenError> {
        match &self.keys {
            VerifyingKeys::Single(key) => Ok(key),
            VerifyingKeys::Set(keys) => {
                if let Some(kid) = kid
                    && let Some((_, key)) = keys.iter().find(|(k, _)| k.as_deref() == Some(kid))
                {
                    return Ok(key);
                }
                match keys.as_slice() {
                    [(None, key)] => Ok(key),
                    [(Some(_), key)] if kid.is_none() => Ok(key),
                    _ => Err(TokenError::UnknownKeyId),
                }
            }
        }
    }
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = match &self.keys {
            VerifyingKeys::Single(_) => 1,
            VerifyingKeys::Set(k) => k.len(),
        };
        f.debug_struct("TokenVerifier")
            .field("algorithm", &self.algorithm)
            .field("keys", &keys)
            .field("tenant_claim", &self.tenant_claim.join("."))
            .finish_non_exhaustive()
    }
}

fn read_unverified_header(token: &str) -> Result<UnverifiedHeader, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
}

fn map_jwt_error(kind: &JwtErrorKind) -> TokenError {
    match kind {
        JwtErrorKind::InvalidSignature => TokenError::BadSignature,
        JwtErrorKind::ExpiredSignature => TokenError::Expired,
        JwtErrorKind::ImmatureSignature => TokenError::NotYetValid,
        JwtErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        JwtErrorKind::InvalidAudience => TokenError::WrongAudience,
        JwtErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => TokenError::MissingExp,
            "iss" => TokenError::WrongIssuer,
            "aud" => TokenError::WrongAudience,
            _ => TokenError::Malformed,
        },
        JwtErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
        JwtErrorKind::InvalidEcdsaKey
        | JwtErrorKind::InvalidEddsaKey
        | JwtErrorKind::InvalidRsaKey(_)
        | JwtErrorKind::InvalidKeyFormat
        | JwtErrorKind::UnsupportedAlgorithm
        | JwtErrorKind::Provider(_) => TokenError::KeyUnusable,
        _ => TokenError::Malformed,
    }
}

fn public_key_from_pem(
    pem: &str,
    algorithm: Algorithm,
    family: AlgorithmFamily,
) -> Result<DecodingKey, ConfigError> {
    const KEY: &str = "auth.public_key_file";
    if pem.contains("PRIVATE KEY-----") {
        return Err(ConfigError::invalid(
            KEY,
            "holds a private key; give the public key (openssl pkey -in key.pem -pubout)",
        ));
    }
    if pem.contains("CERTIFICATE-----") {
        return Err(ConfigError::invalid(
            KEY,
            "holds a certificate; give the public key (openssl x509 -in cert.pem -pubkey -noout)",
        ));
    }
    let parsed = match family {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem.as_bytes()),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem.as_bytes()),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem.as_bytes()),
        AlgorithmFamily::Hmac => Err(JwtErrorKind::InvalidKeyFormat.into()),
    };
    let key = parsed.map_err(|e| {
        ConfigError::invalid(
            KEY,
            format!("not a PEM public key usable with {algorithm:?}: {e}"),
        )
    })?;
    probe_key(&key, algorithm).map_err(|problem| ConfigError::invalid(KEY, problem))?;
    Ok(key)
}

/// Builds a verifier for `key` once, so a key of the wrong curve or type fails at load instead
/// of at every login.
fn probe_key(key: &DecodingKey, algorithm: Algorithm) -> Result<(), String> {
    match jsonwebtoken::crypto::verify("AAAA", b"probe", key, algorithm) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("key cannot verify {algorithm:?} signatures: {e}")),
    }
}

fn keys_from_jwks(
    jwks: &str,
    algorithm: Algorithm,
) -> Result<Vec<(Option<String>, DecodingKey)>, ConfigError> {
    const KEY: &str = "auth.jwks_file";
    let set: JwkSet = serde_json::from_str(jwks)
        .map_err(|e| ConfigError::invalid(KEY, format!("not a JWK Set: {e}")))?;
    let mut usable = Vec::new();
    let mut seen = HashSet::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        if let Some(alg) = jwk.common.key_algorithm
            && alg.to_string().parse::<Algorithm>().ok() != Some(algorithm)
        {
            continue;
        }
        // Symmetric (`oct`) keys are never taken from a JWK Set: the pinned algorithm is
        // asymmetric here, and an HMAC key would reopen algorithm confusion.
        let fits = match (&jwk.algorithm, algorithm) {
            (AlgorithmParameters::RSA(_), a) => a.family() == AlgorithmFamily::Rsa,
            (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => {
                p.curve == EllipticCurve::P256
            }
            (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => {
                p.curve == EllipticCurve::P384
            }
            (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
                p.curve == EllipticCurve::Ed25519
            }
            _ => false,
        };
        if !fits {
            continue;
        }
        let label = kid.as_deref().unwrap_or("(no kid)");
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| ConfigError::invalid(KEY, format!("key {label:?} cannot be used: {e}")))?;
        probe_key(&key, algorithm)
            .map_err(|problem| ConfigError::invalid(KEY, format!("key {label:?}: {problem}")))?;
        if let Some(k) = &kid
            && !seen.insert(k.clone())
        {
            return Err(ConfigError::invalid(
                KEY,
                format!("two keys share kid {k:?}; key ids must be unique"),
            ));
        }
        usable.push((kid, key));
    }
    if usable.is_empty() {
        return Err(ConfigError::invalid(
            KEY,
            format!("no key in the set can verify {algorithm:?} tokens"),
        ));
    }
    if usable.len() > 1 && usable.iter().any(|(kid, _)| kid.is_none()) {
        return Err(ConfigError::invalid(
            KEY,
            "a set with several usable keys needs a kid on every key",
        ));
    }
    Ok(usable)
}

/// A signing key for [`mint`]: an HMAC secret, or a private key in PEM with its algorithm.
///
/// ```no_run
/// # use pgtenant::auth::token::{MintKey, mint};
/// # use std::time::Duration;
/// let key = MintKey::hmac(jsonwebtoken::Algorithm::HS256, b"a-secret-of-at-least-32-bytes....")?;
/// let token = mint(&key, "tenant_id", "0e1d7c3a-5b6f-4a2b-9c8d-1234567890ab",
///                  Duration::from_secs(3600), serde_json::Map::new())?;
/// # Ok::<(), pgtenant::auth::token::MintError>(())
/// ```
pub struct MintKey {
    algorithm: Algorithm,
    key: EncodingKey,
    kid: Option<String>,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("{algorithm:?} is not an HMAC algorithm; use MintKey::from_private_key_pem")]
    NotHmac { algorithm: Algorithm },
    #[error("{algorithm:?} is an HMAC algorithm; use MintKey::hmac")]
    NotAsymmetric { algorithm: Algorithm },
    #[error(
        "the [auth] section has no secret to sign with ({algorithm:?} needs the issuer's private key)"
    )]
    NoSigningKey { algorithm: Algorithm },
    #[error("not a PKCS#8 / PKCS#1 private key PEM usable with {algorithm:?}: {source}")]
    BadPrivateKey {
        algorithm: Algorithm,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("tenant claim path {path:?} runs through a claim that is not an object")]
    ClaimPathBlocked { path: String },
    #[error("the system clock is before 1970")]
    Clock,
    #[error("signing failed: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

impl MintKey {
    /// An HMAC key (`HS256`/`HS384`/`HS512`).
    pub fn hmac(algorithm: Algorithm, secret: &[u8]) -> Result<MintKey, MintError> {
        if algorithm.family() != AlgorithmFamily::Hmac {
            return Err(MintError::NotHmac { algorithm });
        }
        Ok(MintKey {
            algorithm,
            key: EncodingKey::from_secret(secret),
            kid: None,
        })
    }

    /// A private key in PEM (PKCS#8; PKCS#1 also for RSA) for RS*, PS*, ES256/384 or EdDSA.
    pub fn from_private_key_pem(algorithm: Algorithm, pem: &[u8]) -> Result<MintKey, MintError> {
        let parsed = match algorithm.family() {
            AlgorithmFamily::Hmac => return Err(MintError::NotAsymmetric { algorithm }),
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem),
        };
        let key = parsed.map_err(|source| MintError::BadPrivateKey { algorithm, source })?;
        Ok(MintKey {
            algorithm,
            key,
            kid: None,
        })
    }

    /// The signing key the proxy itself holds: only HS* configurations have one.
    pub fn from_auth_config(cfg: &AuthConfig) -> Result<MintKey, MintError> {
        match &cfg.secret {
            Some(secret) => MintKey::hmac(cfg.algorithm, secret.expose().as_bytes()),
            None => Err(MintError::NoSigningKey {
                algorithm: cfg.algorithm,
            }),
        }
    }

    /// Puts `kid` in the token header (for JWK Set verification).
    pub fn with_kid(mut self, kid: impl Into<String>) -> MintKey {
        self.kid = Some(kid.into());
        self
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

impl fmt::Debug for MintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Mints a token for local use (`pgtenant token`, demos, tests).
///
/// Claims: `iat` = now and `exp` = now + `ttl`, then every entry of `extra` (which may override
/// them, e.g. to mint an expired token, or add `iss`, `aud`, `sub`, `nbf`), then `tenant` at the
/// dotted `tenant_claim` path (nested objects are created). `tenant` is deliberately not
/// validated, so tests can mint hostile ids and watch the verifier refuse them.
pub fn mint(
    key: &MintKey,
    tenant_claim: &str,
    tenant: &str,
    ttl: Duration,
    extra: Map<String, Value>,
) -> Result<String, MintError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| MintError::Clock)?
        .as_secs();
    let mut claims = Map::new();
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(ttl.as_secs()).into());
    claims.extend(extra);
    put_at_path(&mut claims, tenant_claim, Value::String(tenant.to_owned()))?;
    mint_claims(key, &claims)
}

/// Signs exactly `claims`, adding nothing (no `exp`): for tests of malformed tokens.
pub fn mint_claims(key: &MintKey, claims: &Map<String, Value>) -> Result<String, MintError> {
    let mut header = Header::new(key.algorithm);
    header.kid = key.kid.clone();
    jsonwebtoken::encode(&header, claims, &key.key).map_err(MintError::Sign)
}

fn put_at_path(claims: &mut Map<String, Value>, path: &str, value: Value) -> Result<(), MintError> {
    let blocked = || MintError::ClaimPathBlocked {
        path: path.to_owned(),
    };
    let mut segments: Vec<&str> = path.split('.').collect();
    let last = segments.pop().ok_or_else(blocked)?;
    let mut object = claims;
    for segment in segments {
        let entry = object
            .entry(segment.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        object = entry.as_object_mut().ok_or_else(blocked)?;
    }
    object.insert(last.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "unit-test-secret-0123456789abcdef0123456789abcdef";
    const TENANT: &str = "0e1d7c3a-5b6f-4a2b-9c8d-1234567890ab";

    fn verifier(leeway: u64) -> TokenVerifier {
        let toml = format!(
            "[auth]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\nleeway = {leeway}\n\
             [databases.app]\nhost = \"localhost\"\nuser = \"api_user\"\n"
        );
        let config =
            crate::config::Config::from_toml_str(&toml, std::path::Path::new(".")).unwrap();
        TokenVerifier::new(&config.auth).unwrap()
    }

    fn token(ttl: Duration) -> String {
        let key = MintKey::hmac(Algorithm::HS256, SECRET.as_bytes()).unwrap();
        mint(&key, "tenant_id", TENANT, ttl, Map::new()).unwrap()
    }

    #[test]
    fn a_remembered_token_is_refused_once_it_expires() {
        let v = verifier(30);
        let token = token(Duration::from_secs(60));
        let now = jsonwebtoken::get_current_timestamp();
        let first = v.verify_at(&token, now).unwrap();
        assert_eq!(first.tenant.as_str(), TENANT);
        // Remembered: accepted again while `exp` plus the leeway has not passed.
        let at_the_limit = first.expires_at + 30;
        assert_eq!(v.verify_at(&token, at_the_limit), Ok(first.clone()));
        assert_eq!(
            v.verify_at(&token, at_the_limit + 1),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_token_differing_from_a_remembered_one_is_checked_in_full() {
        let v = verifier(0);
        let token = token(Duration::from_secs(60));
        assert!(v.verify(&token).is_ok());
        // Same header and claims, one character of the signature changed.
        let at = token.len() - 5;
        let swapped = if &token[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{swapped}{}", &token[..at], &token[at + 1..]);
        assert_eq!(v.verify(&forged), Err(TokenError::BadSignature));
    }
}
