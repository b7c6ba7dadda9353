//! `SHOW CONFIG`: every setting in force with its default, in PgBouncer's columns (`key`,
//! `value`, `default`, `changeable`).
//!
//! This module owns how settings are spelled for an operator: durations in seconds (0 for
//! "never", as in the TOML), `auth.*` keys with their table prefix. It must never show a
//! secret: not the JWT secret, not a database or admin password, not key material; for
//! those it shows only where the value comes from, or nothing at all.

use std::time::Duration;

use super::reply::{ColumnType, ResultSet};
use crate::config::{Config, General, PoolMode, TenantFormat};
use crate::state::Shared;

/// `changeable`: whether RELOAD (or SIGHUP) changes the key in a running proxy.
fn changeable(key: &str) -> &'static str {
    if crate::reload::RESTART_ONLY.contains(&key) {
        "no"
    } else {
        "yes"
    }
}

pub fn config(shared: &Shared) -> ResultSet {
    let mut set = ResultSet::new(&[
        ("key", ColumnType::Text),
        ("value", ColumnType::Text),
        ("default", ColumnType::Text),
        ("changeable", ColumnType::Text),
    ]);
    for (key, value, default) in rows(&shared.config()) {
        set.push(vec![
            key.into(),
            value.into(),
            default.into(),
            changeable(key).into(),
        ]);
    }
    set
}

/// `(key, value, default)` for every non-secret setting.
fn rows(config: &Config) -> Vec<(&'static str, String, String)> {
    let g = &config.general;
    let d = General::default();
    let secs = |v: Duration| seconds(Some(v));
    let mut rows = vec![
        ("listen_addr", g.listen_addr.clone(), d.listen_addr.clone()),
        (
            "listen_port",
            g.listen_port.to_string(),
            d.listen_port.to_string(),
        ),
        (
            "pool_mode",
            pool_mode(g.pool_mode).to_owned(),
            pool_mode(d.pool_mode).to_owned(),
        ),
        (
            "default_pool_size",
            g.default_pool_size.to_string(),
            d.default_pool_size.to_string(),
        ),
        (
            "min_pool_size",
            g.min_pool_size.to_string(),
            d.min_pool_size.to_string(),
        ),
        (
            "reserve_pool_size",
            g.reserve_pool_size.to_string(),
            d.reserve_pool_size.to_string(),
        ),
        (
            "reserve_pool_timeout",
            secs(g.reserve_pool_timeout),
            secs(d.reserve_pool_timeout),
        ),
        (
            "max_client_conn",
            g.max_client_conn.to_string(),
            d.max_client_conn.to_string(),
        ),
        (
            "query_wait_timeout",
            seconds(g.query_wait_timeout),
            seconds(d.query_wait_timeout),
        ),
        (
            "server_connect_timeout",
            secs(g.server_connect_timeout),
            secs(d.server_connect_timeout),
        ),
        (
            "server_idle_timeout",
            seconds(g.server_idle_timeout),
            seconds(d.server_idle_timeout),
        ),
        (
            "server_lifetime",
            seconds(g.server_lifetime),
            seconds(d.server_lifetime),
        ),
        (
            "client_login_timeout",
            secs(g.client_login_timeout),
            secs(d.client_login_timeout),
        ),
        (
            "shutdown_timeout",
            secs(g.shutdown_timeout),
            secs(d.shutdown_timeout),
        ),
        (
            "idle_transaction_timeout",
            seconds(g.idle_transaction_timeout),
            seconds(d.idle_transaction_timeout),
        ),
        (
            "max_packet_size",
            g.max_packet_size.to_string(),
            d.max_packet_size.to_string(),
        ),
        (
            "max_prepared_statements",
            g.max_prepared_statements.to_string(),
            d.max_prepared_statements.to_string(),
        ),
        (
            "tenant_setting",
            g.tenant_setting.clone(),
            d.tenant_setting.clone(),
        ),
        (
            "allow_plaintext_token",
            g.allow_plaintext_token.to_string(),
            d.allow_plaintext_token.to_string(),
        ),
        ("workers", g.workers.to_string(), d.workers.to_string()),
        (
            "log_connections",
            g.log_connections.to_string(),
            d.log_connections.to_string(),
        ),
        (
            "log_disconnections",
            g.log_disconnections.to_string(),
            d.log_disconnections.to_string(),
        ),
        (
            "metrics_listen",
            g.metrics_listen.map(|a| a.to_string()).unwrap_or_default(),
            String::new(),
        ),
        (
            "top_tenants",
            g.top_tenants.to_string(),
            d.top_tenants.to_string(),
        ),
        (
            // Names only: the passwords are secrets.
            "admin_users",
            g.admin_users
                .iter()
                .map(|a| a.user.as_str())
                .collect::<Vec<_>>()
                .join(","),
            String::new(),
        ),
    ];
    // File paths, never their contents.
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let (t, dt) = (&g.tls, &d.tls);
    rows.extend([
        (
            "client_tls_sslmode",
            t.client_tls_sslmode.as_str().to_owned(),
            dt.client_tls_sslmode.as_str().to_owned(),
        ),
        (
            "client_tls_cert_file",
            path(&t.client_tls_cert_file),
            String::new(),
        ),
        (
            "client_tls_key_file",
            path(&t.client_tls_key_file),
            String::new(),
        ),
        (
            "server_tls_sslmode",
            t.server_tls_sslmode.as_str().to_owned(),
            dt.server_tls_sslmode.as_str().to_owned(),
        ),
        (
            "server_tls_ca_file",
            path(&t.server_tls_ca_file),
            String::new(),
        ),
    ]);
    let a = &config.auth;
    let key_source = if a.secret.is_some() {
        "secret"
    } else if a.jwks.is_some() {
        "jwks_file"
    } else {
        "public_key_file"
    };
    rows.extend([
        (
            "auth.algorithm",
            format!("{:?}", a.algorithm),
            String::new(),
        ),
        // Where the verification key comes from, never the key.
        ("auth.key_source", key_source.to_owned(), String::new()),
        (
            "auth.issuer",
            a.issuer.clone().unwrap_or_default(),
            String::new(),
        ),
        (
            "auth.audience",
            a.audience.clone().unwrap_or_default(),
            String::new(),
        ),
        ("auth.leeway", secs(a.leeway), "30".to_owned()),
        (
            "auth.tenant_claim",
            a.tenant_claim.clone(),
            "tenant_id".to_owned(),
        ),
        (
            "auth.tenant_format",
            match &a.tenant_format {
                TenantFormat::Uuid => "uuid".to_owned(),
                TenantFormat::Pattern(_) => "pattern".to_owned(),
            },
            "uuid".to_owned(),
        ),
        (
            "auth.admin_claim",
            a.admin_claim.clone().unwrap_or_default(),
            String::new(),
        ),
    ]);
    rows
}

fn pool_mode(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
}

/// Seconds as the TOML takes them: whole numbers bare, fractions as decimals, "never" as 0.
fn seconds(d: Option<Duration>) -> String {
    match d {
        None => "0".to_owned(),
        Some(d) if d.subsec_nanos() == 0 => d.as_secs().to_string(),
        Some(d) => format!("{}", d.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-admin-test";

    #[test]
    fn config_rows_show_settings_and_never_a_secret() {
        let toml = format!(
            "[pgtenant]\nreserve_pool_timeout = 0.25\nquery_wait_timeout = 0\n\
             admin_users = [{{ user = \"ops\", password = \"hunter2-admin\" }}]\n\
             [auth]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n\
             [databases.app]\nhost = \"localhost\"\nuser = \"api_user\"\npassword = \"dbpw-xyz\"\n"
        );
        let config = Config::from_toml_str_with_env(&toml, Path::new("."), |_| None).unwrap();
        let rows = rows(&config);
        let get = |k: &str| {
            rows.iter()
                .find(|(key, _, _)| *key == k)
                .map(|(_, v, d)| (v.as_str(), d.as_str()))
                .unwrap()
        };
        assert_eq!(get("reserve_pool_timeout"), ("0.25", "5"));
        assert_eq!(get("query_wait_timeout"), ("0", "120"));
        assert_eq!(get("max_client_conn"), ("10000", "10000"));
        assert_eq!(get("admin_users"), ("ops", ""));
        assert_eq!(get("auth.key_source"), ("secret", ""));
        assert_eq!(get("client_tls_sslmode"), ("disable", "disable"));
        assert_eq!(get("server_tls_sslmode"), ("prefer", "prefer"));
        assert_eq!(get("server_tls_ca_file"), ("", ""));
        assert_eq!(changeable("default_pool_size"), "yes");
        assert_eq!(changeable("auth.algorithm"), "yes");
        assert_eq!(changeable("client_tls_cert_file"), "yes");
        assert_eq!(changeable("listen_port"), "no");
        assert_eq!(changeable("tenant_setting"), "no");
        let all = format!("{rows:?}");
        for secret in [SECRET, "hunter2-admin", "dbpw-xyz"] {
            assert!(!all.contains(secret), "{secret} leaked");
        }
    }
}
