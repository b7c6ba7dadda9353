//! Configuration reload, for SIGHUP and the admin console's `RELOAD`: read and validate the
//! whole file, then apply all of it or none of it.
//!
//! What a reload changes, without dropping a connected client: pool sizes and timeouts (live,
//! on the existing pools); databases added (served to the next login), removed (the next
//! login gets 3D000; connected clients keep their pool until they leave) or pointed at
//! another upstream (servers replaced as they come free, as with RECONNECT); the token keys,
//! JWKS and claim checks, admin users, the TLS certificate, key, CA file and modes (new
//! connections use them; servers made under other upstream TLS rules are replaced as they
//! come free), and what new clients pick up at login (`max_client_conn`, timeouts, limits,
//! logging). Keys in [`RESTART_ONLY`] keep their running
//! value, with a warning naming them. This module never closes a client, and never logs a
//! secret: errors are [`ConfigError`]'s text, which names keys, not values.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::token::TokenVerifier;
use crate::config::{Config, ConfigError, General};
use crate::pool::Pool;
use crate::state::{Loaded, Shared, pool_settings};

/// `[pgtenant]` keys a running proxy cannot change: the listening sockets, the runtime, the
/// log format, and the tenant setting (the guard and every session are built around it).
pub const RESTART_ONLY: &[&str] = &[
    "listen_addr",
    "listen_port",
    "pool_mode",
    "workers",
    "log_format",
    "metrics_listen",
    "tenant_setting",
];

/// Why a reload was rejected. The configuration in force stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no configuration file to reload (the proxy was not started from one)")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("auth: {0}")]
    Verifier(String),
    #[error(transparent)]
    Stats(#[from] crate::stats::StatsError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Keys changed in the file that need a restart; their running values were kept.
    pub needs_restart: Vec<&'static str>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Databases whose upstream changed: their servers are replaced as they come free.
    pub reconnected: Vec<String>,
}

impl ReloadReport {
    /// One line per thing an operator should know, for the admin console.
    pub fn notices(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.needs_restart.is_empty() {
            lines.push(format!(
                "not changed until restart (running values kept): {}",
                self.needs_restart.join(", ")
            ));
        }
        for (what, names) in [
            ("databases added", &self.added),
            (
                "databases removed (connected clients stay until they leave)",
                &self.removed,
            ),
            (
                "databases reconnecting to a changed upstream",
                &self.reconnected,
            ),
        ] {
            if !names.is_empty() {
                lines.push(format!("{what}: {}", names.join(", ")));
            }
        }
        lines
    }
}

/// Reads the configuration file again and applies it; on any error logs it and keeps the
/// configuration in force entirely.
pub async fn reload(shared: &Shared) -> Result<ReloadReport, ReloadError> {
    let _one_at_a_time = shared.reload_lock.lock().await;
    let result = apply(shared).await;
    match &result {
        Ok(report) => {
            if !report.needs_restart.is_empty() {
                tracing::warn!(
                    keys = %report.needs_restart.join(", "),
                    "configuration reload: these settings need a restart to change; keeping their running values"
                );
            }
            tracing::info!(
                added = ?report.added,
                removed = ?report.removed,
                reconnected = ?report.reconnected,
                "configuration reloaded"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration reload failed; keeping the configuration in force");
        }
    }
    result
}

async fn apply(shared: &Shared) -> Result<ReloadReport, ReloadError> {
    let path = shared.config_path.as_deref().ok_or(ReloadError::NoFile)?;
    // Everything that can fail comes first, before anything is changed.
    let mut config = Config::load(path)?;
    let current = shared.current();
    let mut report = ReloadReport {
        needs_restart: keep_restart_only(&current.config.general, &mut config.general),
        ..ReloadReport::default()
    };
    let verifier =
        TokenVerifier::new(&config.auth).map_err(|e| ReloadError::Verifier(e.to_string()))?;
    let mut pools = HashMap::new();
    let mut updates = Vec::new();
    for (name, db) in &config.databases {
        let settings = pool_settings(&config, db);
        let existing = current.pools.get(name).cloned();
        let pool = match existing.or_else(|| shared.retired_pool(name)) {
            Some(pool) => {
                if !current.pools.contains_key(name) {
                    report.added.push(name.clone());
                }
                updates.push((Arc::clone(&pool), db.clone(), settings));
                pool
            }
            None => {
                report.added.push(name.clone());
                Pool::new(
                    name.clone(),
                    db.clone(),
                    settings,
                    shared.stats.pool(name)?,
                    Arc::clone(&shared.tls),
                )
            }
        };
        pools.insert(name.clone(), pool);
    }
    // The certificate, key and CA files, read again: the last step that can fail, so a bad
    // file rejects the whole reload.
    shared.tls.reload(&config)?;

    // From here on nothing fails.
    for (pool, db, settings) in updates {
        // Servers connected under other TLS rules are replaced like those of a changed
        // upstream, so that tightening the rules leaves no older connection in use.
        let tls_changed = upstream_tls_changed(&current.config, &config, &pool.name);
        if pool.reconfigure(db, settings).await {
            report.reconnected.push(pool.name.to_string());
        } else if tls_changed {
            pool.reconnect().await;
            report.reconnected.push(pool.name.to_string());
        }
    }
    report.removed = current
        .pools
        .keys()
        .filter(|name| !config.databases.contains_key(*name))
        .cloned()
        .collect();
    report.removed.sort();
    shared.install(Loaded {
        config: Arc::new(config),
        verifier,
        pools,
    });
    Ok(report)
}

/// Whether new server connections of database `name` would be made under other TLS rules:
/// another effective `server_tls_sslmode`, or another CA file.
fn upstream_tls_changed(running: &Config, next: &Config, name: &str) -> bool {
    let mode = |c: &Config| c.database(name).map(|db| c.server_tls_mode(db));
    mode(running) != mode(next)
        || running.general.tls.server_tls_ca_file != next.general.tls.server_tls_ca_file
}

/// Puts the running values of [`RESTART_ONLY`] keys back into `next`; returns the keys whose
/// value the file changed.
fn keep_restart_only(running: &General, next: &mut General) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($($field:ident),*) => {$(
            if running.$field != next.$field {
                kept.push(stringify!($field));
                next.$field = running.$field.clone();
            }
        )*};
    }
    keep!(
        listen_addr,
        listen_port,
        pool_mode,
        workers,
        log_format,
        metrics_listen,
        tenant_setting
    );
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;

    #[test]
    fn every_restart_only_key_keeps_its_running_value() {
        let running = General::default();
        let mut next = General {
            listen_addr: "0.0.0.0".to_owned(),
            listen_port: running.listen_port + 1,
            workers: 3,
            log_format: LogFormat::Json,
            metrics_listen: Some("127.0.0.1:9187".parse().unwrap()),
            tenant_setting: "app.other".to_owned(),
            default_pool_size: 7,
            ..General::default()
        };
        let kept = keep_restart_only(&running, &mut next);
        // pool_mode has only one accepted value, so it cannot differ here.
        let expected: Vec<&str> = RESTART_ONLY
            .iter()
            .copied()
            .filter(|k| *k != "pool_mode")
            .collect();
        assert_eq!(kept, expected);
        assert_eq!(next.listen_port, running.listen_port);
        assert_eq!(next.tenant_setting, running.tenant_setting);
        assert_eq!(next.metrics_listen, None);
        assert_eq!(
            next.default_pool_size, 7,
            "a reloadable key must not be reset"
        );
    }

    #[test]
    fn an_unchanged_file_needs_no_restart() {
        let running = General::default();
        let mut next = General::default();
        assert!(keep_restart_only(&running, &mut next).is_empty());
    }
}
