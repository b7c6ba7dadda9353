//! The state every connection task shares: configuration, the token verifier, the pools and
//! the client registry used for cancel requests and `max_client_conn`.
//!
//! Passed around as an `Arc<Shared>`; there is no global state, so several proxies can run in
//! one process (as the tests do). Nothing here is locked on the per-message path.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::auth::token::TokenVerifier;
use crate::config::Config;
use crate::pool::{Pool, PoolSettings};

pub struct Shared {
    pub config: Arc<Config>,
    pub verifier: TokenVerifier,
    pub pools: HashMap<String, Arc<Pool>>,
    /// Connected clients (logging in or logged in), for `max_client_conn`.
    pub clients: AtomicUsize,
    /// Cancel keys of logged-in clients and the servers they are bound to.
    pub cancels: crate::cancel::CancelRegistry,
    /// What metrics and the admin console report.
    pub stats: Arc<crate::stats::Stats>,
    /// Refuses client SQL that would change or bypass the tenant setting.
    pub guard: Arc<crate::guard::Guard>,
    /// Cancelled when the proxy shuts down: idle clients are closed, clients in a
    /// transaction are closed when it ends.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// TLS configurations of both sides; `reload` swaps them for new connections.
    pub tls: Arc<crate::tls::TlsState>,
    next_client_id: AtomicU64,
}

/// Why the shared state could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("auth: {0}")]
    Verifier(String),
    #[error(transparent)]
    Stats(#[from] crate::stats::StatsError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Shared>, StateError> {
        let verifier =
            TokenVerifier::new(&config.auth).map_err(|e| StateError::Verifier(e.to_string()))?;
        let g = &config.general;
        let stats = crate::stats::Stats::new()?;
        let guard = Arc::new(crate::guard::Guard::new(&config.general.tenant_setting));
        let tls = Arc::new(crate::tls::TlsState::new(&config)?);
        let pools = config
            .databases
            .iter()
            .map(|(name, db)| -> Result<(String, Arc<Pool>), StateError> {
                let settings = PoolSettings {
                    pool_size: config.pool_size(db),
                    min_pool_size: g.min_pool_size,
                    reserve_pool_size: g.reserve_pool_size,
                    reserve_pool_timeout: g.reserve_pool_timeout,
                    query_wait_timeout: g.query_wait_timeout,
                    server_connect_timeout: g.server_connect_timeout,
                    server_idle_timeout: g.server_idle_timeout,
                    server_lifetime: g.server_lifetime,
                    allow_privileged_role: db.allow_privileged_role,
                };
                let pool_stats = stats.pool(name)?;
                Ok((
                    name.clone(),
                    Pool::new(
                        name.clone(),
                        db.clone(),
                        settings,
                        pool_stats,
                        Arc::clone(&tls),
                    ),
                ))
            })
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(Shared {
            config,
            verifier,
            pools,
            clients: AtomicUsize::new(0),
            cancels: Default::default(),
            stats,
            guard,
            shutdown,
            tls,
            next_client_id: AtomicU64::new(1),
        }))
    }

    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}
