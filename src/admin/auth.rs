//! Who may use the admin console: a configured admin user with its password
//! (`pgtenant.admin_users`), or a valid token whose `auth.admin_claim` is `true`.
//!
//! This module owns that decision and the refusal a client sees. It never logs or echoes a
//! password or a token, compares passwords in constant time, and grants nothing for a token
//! the tenant verifier has not accepted in full (signature, algorithm, expiry, issuer,
//! audience).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::token::TokenError;
use crate::state::Shared;

/// The databases a client names to reach the admin console (`pgbouncer` for PgBouncer
/// habits). A configured database of the same name takes precedence.
pub const ADMIN_DATABASES: &[&str] = &["pgtenant", "pgbouncer"];

/// Whether a login for `database` goes to the admin console.
pub fn is_admin_database(shared: &Shared, database: &str) -> bool {
    ADMIN_DATABASES.contains(&database) && !shared.current().pools.contains_key(database)
}

/// An admin who logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminLogin {
    pub user: String,
    /// How: `"password"` or `"token"` (for the log).
    pub method: &'static str,
}

/// Why an admin login was refused. `Display` is what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum AdminAuthError {
    #[error("password authentication failed for user \"{0}\"")]
    BadPassword(String),
    #[error(
        "permission denied: the admin console needs an admin user (pgtenant.admin_users) or a \
         token with the admin claim (auth.admin_claim)"
    )]
    NotAdmin,
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl AdminAuthError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AdminAuthError::BadPassword(_) => "28P01",
            AdminAuthError::NotAdmin => "42501",
            AdminAuthError::Token(e) => e.sqlstate(),
        }
    }

    /// Short stable label for logs and `pgtenant_login_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AdminAuthError::BadPassword(_) => "admin_password",
            AdminAuthError::NotAdmin => "not_admin",
            AdminAuthError::Token(e) => e.reason_label(),
        }
    }
}

/// Checks `secret` (the password, or a `tenant_token` startup parameter) for `user`.
///
/// A matching admin password wins. Otherwise a secret shaped like a JWT is verified as a
/// tenant token: valid with the admin claim `true` is an admin, valid without it is a tenant
/// (42501), invalid is refused as at a tenant login (unless `user` is an admin user, who is
/// told only that the password is wrong). Anything else is a wrong password.
pub fn authenticate(
    shared: &Shared,
    user: &str,
    secret: &str,
) -> Result<AdminLogin, AdminAuthError> {
    let current = shared.current();
    let admin_user = current
        .config
        .general
        .admin_users
        .iter()
        .find(|a| a.user == user);
    if let Some(a) = admin_user
        && constant_time_eq(a.password.expose(), secret)
    {
        return Ok(AdminLogin {
            user: user.to_owned(),
            method: "password",
        });
    }
    if looks_like_jwt(secret) {
        match current.verifier.verify(secret) {
            Ok(_) => {
                let claim = current.config.auth.admin_claim.as_deref();
                return match claim {
                    Some(path) if claim_is_true(secret, path) => Ok(AdminLogin {
                        user: user.to_owned(),
                        method: "token",
                    }),
                    _ => Err(AdminAuthError::NotAdmin),
                };
            }
            Err(e) if admin_user.is_none() => return Err(e.into()),
            Err(_) => {}
        }
    }
    Err(AdminAuthError::BadPassword(user.to_owned()))
}

/// Compares digests, so neither the position of the first difference nor the length of the
/// configured password shows in the time taken.
fn constant_time_eq(expected: &str, given: &str) -> bool {
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(given.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn looks_like_jwt(s: &str) -> bool {
    s.split('.').count() == 3
}

/// Reads `path` (dotted) from the payload of a token the verifier has already accepted.
fn claim_is_true(token: &str, path: &str) -> bool {
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    let Ok(json) = URL_SAFE_NO_PAD.decode(payload) else {
        return false;
    };
    let Ok(claims) = serde_json::from_slice::<Value>(&json) else {
        return false;
    };
    let value = path
        .split('.')
        .try_fold(&claims, |v, segment| v.get(segment));
    matches!(value, Some(Value::Bool(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with_payload(payload: &str) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn only_the_json_value_true_grants_the_claim() {
        let cases = [
            (r#"{"pgtenant_admin":true}"#, "pgtenant_admin", true),
            (r#"{"roles":{"admin":true}}"#, "roles.admin", true),
            (r#"{"pgtenant_admin":"true"}"#, "pgtenant_admin", false),
            (r#"{"pgtenant_admin":1}"#, "pgtenant_admin", false),
            (r#"{"pgtenant_admin":false}"#, "pgtenant_admin", false),
            (r#"{"other":true}"#, "pgtenant_admin", false),
            (r#"{"roles":["admin"]}"#, "roles.admin", false),
            ("not json", "pgtenant_admin", false),
        ];
        for (payload, path, expected) in cases {
            assert_eq!(
                claim_is_true(&token_with_payload(payload), path),
                expected,
                "{payload} {path}"
            );
        }
    }

    #[test]
    fn passwords_compare_equal_only_when_identical() {
        assert!(constant_time_eq("s3cret", "s3cret"));
        assert!(!constant_time_eq("s3cret", "s3cres"));
        assert!(!constant_time_eq("s3cret", "s3cret "));
        assert!(!constant_time_eq("s3cret", ""));
    }
}
