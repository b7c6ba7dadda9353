//! The state every connection task shares: what the latest (re)load of the configuration
//! produced (the configuration, the token verifier, the pools), the registries of connected
//! clients (for cancel requests, `max_client_conn`, the admin console's KILL), the numbers,
//! and the shutdown tokens.
//!
//! Passed around as an `Arc<Shared>`; there is no global state, so several proxies can run in
//! one process (as the tests do). What a reload changes sits behind one [`ArcSwap`], swapped
//! whole by [`crate::reload`], so a login sees one consistent configuration; sessions read it
//! once at login and keep what they need, so nothing here is locked or looked up on the
//! per-message path.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::auth::token::TokenVerifier;
use crate::config::{Config, DatabaseConfig};
use crate::pool::{Pool, PoolSettings};

/// What one load of the configuration produced. Replaced as a whole by a reload.
pub struct Loaded {
    pub config: Arc<Config>,
    pub verifier: TokenVerifier,
    /// Pools of the databases in `config`, by name.
    pub pools: HashMap<String, Arc<Pool>>,
}

pub struct Shared {
    loaded: ArcSwap<Loaded>,
    /// Where the configuration was read from: what SIGHUP and RELOAD read again. `None`
    /// when the proxy was started from a configuration that is not a file.
    pub config_path: Option<PathBuf>,
    /// Connected clients (logging in or logged in), for `max_client_conn`.
    pub clients: AtomicUsize,
    /// Logged-in tenant clients: SHOW CLIENTS, KILL, KILL_CLIENT.
    pub logged_in: Arc<crate::clients::ClientRegistry>,
    /// Cancel keys of logged-in clients and the servers they are bound to.
    pub cancels: crate::cancel::CancelRegistry,
    /// Startup parameters that logins with the same ones share.
    pub recent_params: crate::session::params::RecentParams,
    /// What metrics and the admin console report.
    pub stats: Arc<crate::stats::Stats>,
    /// Refuses client SQL that would change or bypass the tenant setting.
    pub guard: Arc<crate::guard::Guard>,
    /// Cancelled when the proxy shuts down: idle clients are closed, clients in a
    /// transaction are closed when it ends.
    pub shutdown: CancellationToken,
    /// Cancelled when the proxy stops accepting connections: on shutdown (it is a child of
    /// `shutdown`) or by `SHUTDOWN WAIT_FOR_CLIENTS`, which lets connected clients stay.
    pub stop_accepting: CancellationToken,
    /// Pools of databases a reload removed, while clients still use them.
    retired: Mutex<Vec<Weak<Pool>>>,
    /// One reload at a time.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// TLS configurations of both sides; a reload swaps them for new connections.
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

/// A pool's sizes and timeouts for `db` under `config`.
pub fn pool_settings(config: &Config, db: &DatabaseConfig) -> PoolSettings {
    let g = &config.general;
    PoolSettings {
        pool_size: config.pool_size(db),
        min_pool_size: g.min_pool_size,
        reserve_pool_size: g.reserve_pool_size,
        reserve_pool_timeout: g.reserve_pool_timeout,
        query_wait_timeout: g.query_wait_timeout,
        server_connect_timeout: g.server_connect_timeout,
        server_idle_timeout: g.server_idle_timeout,
        server_lifetime: g.server_lifetime,
        allow_privileged_role: db.allow_privileged_role,
    }
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        config_path: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Shared>, StateError> {
        let verifier =
            TokenVerifier::new(&config.auth).map_err(|e| StateError::Verifier(e.to_string()))?;
        let stats = crate::stats::Stats::new()?;
        let guard = Arc::new(crate::guard::Guard::new(&config.general.tenant_setting));
        let tls = Arc::new(crate::tls::TlsState::new(&config)?);
        let pools = config
            .databases
            .iter()
            .map(|(name, db)| -> Result<(String, Arc<Pool>), StateError> {
                let pool = Pool::new(
                    name.clone(),
                    db.clone(),
                    pool_settings(&config, db),
                    stats.pool(name)?,
                    Arc::clone(&tls),
                );
                Ok((name.clone(), pool))
            })
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(Shared {
            loaded: ArcSwap::from_pointee(Loaded {
                config,
                verifier,
                pools,
            }),
            config_path,
            clients: AtomicUsize::new(0),
            logged_in: Default::default(),
            cancels: Default::default(),
            recent_params: Default::default(),
            stats,
            guard,
            stop_accepting: shutdown.child_token(),
            shutdown,
            retired: Mutex::new(Vec::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            tls,
            next_client_id: AtomicU64::new(1),
        }))
    }

    /// The configuration, verifier and pools in force now. Take it once per login (or
    /// admin command) and use that one snapshot throughout.
    pub fn current(&self) -> Arc<Loaded> {
        self.loaded.load_full()
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.loaded.load().config)
    }

    /// Installs what a reload produced; pools it no longer has are kept as retired until
    /// their last client leaves.
    pub(crate) fn install(&self, next: Loaded) {
        let previous = self.loaded.swap(Arc::new(next));
        let current = self.loaded.load();
        let mut retired = self.lock_retired();
        for (name, pool) in &previous.pools {
            if !current.pools.contains_key(name) {
                retired.push(Arc::downgrade(pool));
            }
        }
        retired.retain(|p| {
            p.upgrade()
                .is_some_and(|p| !current.pools.values().any(|c| Arc::ptr_eq(c, &p)))
        });
    }

    /// A retired pool of `name` that clients still use, to serve that name again.
    pub(crate) fn retired_pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.lock_retired()
            .iter()
            .filter_map(Weak::upgrade)
            .find(|p| &*p.name == name)
    }

    /// Every pool that has servers to look after: those in force and retired ones still in
    /// use (maintenance and shutdown visit them all).
    pub fn all_pools(&self) -> Vec<Arc<Pool>> {
        let mut pools: Vec<Arc<Pool>> = self.current().pools.values().cloned().collect();
        let mut retired = self.lock_retired();
        retired.retain(|p| p.strong_count() > 0);
        pools.extend(retired.iter().filter_map(Weak::upgrade));
        pools
    }

    fn lock_retired(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Pool>>> {
        self.retired.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the drain (SIGTERM, SIGINT, the admin console's SHUTDOWN): no new connections,
    /// idle clients closed, transactions in flight finish.
    pub fn begin_shutdown(&self, by: &str) {
        tracing::info!(
            by,
            "shutting down: no new connections, waiting for clients to finish"
        );
        self.shutdown.cancel();
    }

    /// `SHUTDOWN WAIT_FOR_CLIENTS`: no new connections; the process exits when the last
    /// connected client has left (a later shutdown still drains as usual).
    pub fn stop_when_clients_leave(&self, by: &str) {
        tracing::info!(
            by,
            "no new connections; exiting when the last client disconnects"
        );
        self.stop_accepting.cancel();
    }

    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}
