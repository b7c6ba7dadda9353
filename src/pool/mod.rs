//! The bounded pool of server connections for one upstream database, shared by all tenants.
//!
//! This module owns how many server connections exist (never more than
//! `pool_size + reserve_pool_size`), who gets the next free one (first come, first served),
//! and when idle ones are closed or replaced. A checked-out connection is a [`Checkout`]
//! guard: returning it is explicit (`release`), and a guard dropped without that — a client
//! vanished mid-transaction, a task was cancelled — closes the connection rather than letting
//! a server with unknown state back into the pool. The pool never looks at traffic.

pub mod statements;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::DatabaseConfig;
use crate::server::{ServerConn, ServerError};

/// Sizes and timeouts of one pool, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Duration,
    pub query_wait_timeout: Option<Duration>,
    pub server_connect_timeout: Duration,
    pub server_idle_timeout: Option<Duration>,
    pub server_lifetime: Option<Duration>,
    pub allow_privileged_role: bool,
}

/// Why a checkout failed. Each variant maps to one client-facing SQLSTATE.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection became free within query_wait_timeout ({0:?})")]
    WaitTimeout(Duration),
    #[error("could not connect to upstream database \"{db}\": {source}")]
    Connect { db: String, source: ServerError },
    #[error(
        "pgtenant refuses to serve database \"{db}\": its pool role is {what}, so row-level \
         security would not apply (set allow_privileged_role = true to override)"
    )]
    PrivilegedRole { db: String, what: &'static str },
    #[error("pool for database \"{0}\" is shutting down")]
    Closed(String),
    #[error(
        "tenant_seal is on for database \"{db}\" but registering the seal failed ({source}); \
         install config/sql/seal.sql in that database"
    )]
    Seal { db: String, source: ServerError },
}

impl PoolError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            PoolError::WaitTimeout(_) => "57014",
            PoolError::Connect { source, .. } => source.client_sqlstate(),
            PoolError::PrivilegedRole { .. } => "28000",
            PoolError::Closed(_) => "57P01",
            PoolError::Seal { .. } => "08006",
        }
    }
}

enum Grant {
    /// A server connection, already wrapped so that dropping the grant anywhere (a waiter
    /// that gave up, a cancelled checkout) closes it and frees its slot.
    Conn(Box<Checkout>),
    /// Permission to open one new connection; `total` already counts it.
    Slot(Slot),
}

/// A slot counted in `total` with no connection in it yet. Dropped unused (the connect
/// failed, the checkout was cancelled), it is given back.
struct Slot {
    pool: Arc<Pool>,
    armed: bool,
}

impl Slot {
    fn new(pool: &Arc<Pool>) -> Slot {
        Slot {
            pool: Arc::clone(pool),
            armed: true,
        }
    }

    /// The slot now holds a connection (or was handed on): nothing to give back.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.pool.give_back_slot();
        }
    }
}

struct PoolState {
    /// Boxed: connections move between the pool and sessions on every transaction, and an
    /// idle client's session keeps only a pointer's worth of room for one.
    idle: Vec<Box<ServerConn>>,
    /// Idle + checked out + being opened.
    total: usize,
    waiters: VecDeque<oneshot::Sender<Grant>>,
    closed: bool,
}

/// Counters shared by the admin console and metrics.
#[derive(Debug, Default)]
pub struct PoolCounters {
    pub checkouts: AtomicU64,
    pub connects: AtomicU64,
    pub connect_errors: AtomicU64,
    pub wait_timeouts: AtomicU64,
}

/// A snapshot of a pool's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub total: usize,
    pub idle: usize,
    pub waiting: usize,
}

pub struct Pool {
    pub name: String,
    upstream: Arc<str>,
    db: DatabaseConfig,
    settings: PoolSettings,
    state: Mutex<PoolState>,
    /// ParameterStatus values from the latest server login, echoed to clients at login.
    startup_params: Mutex<Vec<(String, String)>>,
    pub counters: PoolCounters,
    /// pgtenant's names for clients' prepared statements.
    pub statements: statements::StatementRegistry,
    /// Traffic numbers of this database (metrics and SHOW STATS).
    pub stats: Arc<crate::stats::PoolStats>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).finish()
    }
}

impl Pool {
    pub fn new(
        name: String,
        db: DatabaseConfig,
        settings: PoolSettings,
        stats: Arc<crate::stats::PoolStats>,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            name,
            upstream: Arc::from(format!("{}:{}", db.host, db.port)),
            db,
            settings,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                total: 0,
                waiters: VecDeque::new(),
                closed: false,
            }),
            startup_params: Mutex::new(Vec::new()),
            counters: PoolCounters::default(),
            statements: statements::StatementRegistry::default(),
            stats,
        })
    }

    /// `host:port` of the upstream server (for forwarding cancel requests).
    pub fn upstream_addr(&self) -> Arc<str> {
        Arc::clone(&self.upstream)
    }

    /// Whether transactions carry a sealed tenant (see config/sql/seal.sql).
    pub fn sealed(&self) -> bool {
        self.db.tenant_seal
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding this lock would be a bug in this module; the state itself is
        // still consistent field by field, so keep serving rather than poisoning every client.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.lock();
        PoolStats {
            total: st.total,
            idle: st.idle.len(),
            waiting: st.waiters.len(),
        }
    }

    /// ParameterStatus values a server reported at login, opening one connection first if
    /// none has been made yet.
    pub async fn startup_params(self: &Arc<Self>) -> Result<Vec<(String, String)>, PoolError> {
        {
            let p = self
                .startup_params
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !p.is_empty() {
                return Ok(p.clone());
            }
        }
        let conn = self.checkout().await?;
        conn.release();
        let p = self
            .startup_params
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(p.clone())
    }

    /// An idle connection if one is ready now and nobody is queued before us: the common
    /// case, without the future of [`Pool::checkout`] (whose connect and wait states would
    /// otherwise live in every client's task, idle or not).
    pub fn try_checkout(self: &Arc<Self>) -> Option<Checkout> {
        loop {
            let conn = {
                let mut st = self.lock();
                if st.closed || !st.waiters.is_empty() {
                    return None;
                }
                self.take_idle(&mut st)?
            };
            let mut checkout = Checkout {
                conn: Some(conn),
                pool: Arc::clone(self),
            };
            if self.is_stale(checkout.conn()) {
                checkout.discard();
                continue;
            }
            self.counters.checkouts.fetch_add(1, Ordering::Relaxed);
            return Some(checkout);
        }
    }

    /// Hands out a server connection: an idle one, a new one while under the limit, or the
    /// next one released, in arrival order, waiting at most `query_wait_timeout`.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        let started = Instant::now();
        let mut reserve_tried = self.settings.reserve_pool_size == 0;
        loop {
            let rx = {
                let mut st = self.lock();
                if st.closed {
                    return Err(PoolError::Closed(self.name.clone()));
                }
                match self.take_idle(&mut st) {
                    Some(conn) => Ok(Grant::Conn(Box::new(Checkout {
                        conn: Some(conn),
                        pool: Arc::clone(self),
                    }))),
                    None if st.total < self.settings.pool_size => {
                        st.total += 1;
                        Ok(Grant::Slot(Slot::new(self)))
                    }
                    None => {
                        let (tx, rx) = oneshot::channel();
                        st.waiters.push_back(tx);
                        Err(rx)
                    }
                }
            };
            let grant = match rx {
                Ok(g) => g,
                Err(mut rx) => {
                    let wait = self.next_wait(started, reserve_tried);
                    let received = match wait {
                        Some(d) => tokio::time::timeout(d, &mut rx).await.ok(),
                        None => Some((&mut rx).await),
                    };
                    match received {
                        Some(Ok(g)) => g,
                        Some(Err(_)) => return Err(PoolError::Closed(self.name.clone())),
                        None => {
                            // Stop further grants, but keep one that raced with the timeout.
                            rx.close();
                            if let Ok(g) = rx.try_recv() {
                                g
                            } else if !reserve_tried {
                                reserve_tried = true;
                                if self.try_reserve_slot() {
                                    Grant::Slot(Slot::new(self))
                                } else {
                                    continue;
                                }
                            } else {
                                self.counters.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                                let waited = self.settings.query_wait_timeout.unwrap_or_default();
                                return Err(PoolError::WaitTimeout(waited));
                            }
                        }
                    }
                }
            };
            let checkout = match grant {
                Grant::Conn(mut checkout) => {
                    if self.is_stale(checkout.conn()) {
                        checkout.discard();
                        continue;
                    }
                    *checkout
                }
                Grant::Slot(slot) => {
                    // If this future is dropped mid-connect, `slot` gives the slot back.
                    let conn = self.open().await?;
                    slot.disarm();
                    Checkout {
                        conn: Some(conn),
                        pool: Arc::clone(self),
                    }
                }
            };
            self.counters.checkouts.fetch_add(1, Ordering::Relaxed);
            return Ok(checkout);
        }
    }

    fn next_wait(&self, started: Instant, reserve_tried: bool) -> Option<Duration> {
        let elapsed = started.elapsed();
        let to_deadline = self
            .settings
            .query_wait_timeout
            .map(|t| t.saturating_sub(elapsed));
        if reserve_tried {
            return to_deadline;
        }
        let to_reserve = self.settings.reserve_pool_timeout.saturating_sub(elapsed);
        Some(match to_deadline {
            Some(d) => d.min(to_reserve),
            None => to_reserve,
        })
    }

    fn try_reserve_slot(&self) -> bool {
        let mut st = self.lock();
        if st.total < self.settings.pool_size + self.settings.reserve_pool_size {
            st.total += 1;
            true
        } else {
            false
        }
    }

    fn take_idle(&self, st: &mut PoolState) -> Option<Box<ServerConn>> {
        // Most recently used first: its caches are warm and the others can age out.
        st.idle.pop()
    }

    fn is_stale(&self, conn: &mut ServerConn) -> bool {
        let too_old = self
            .settings
            .server_lifetime
            .is_some_and(|life| conn.created.elapsed() >= life);
        too_old || conn.is_dead()
    }

    async fn open(&self) -> Result<Box<ServerConn>, PoolError> {
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        let connect = ServerConn::connect(&self.db, self.settings.server_connect_timeout).await;
        let mut conn = match connect {
            Ok(c) => c,
            Err(source) => {
                self.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                self.stats.connect_errors.inc();
                tracing::warn!(db = %self.name, error = %source, "upstream connection failed");
                return Err(PoolError::Connect {
                    db: self.name.clone(),
                    source,
                });
            }
        };
        let privileges = conn
            .role_privileges()
            .await
            .map_err(|source| PoolError::Connect {
                db: self.name.clone(),
                source,
            })?;
        if !self.settings.allow_privileged_role {
            let what = if privileges.superuser {
                Some("a superuser")
            } else if privileges.bypass_rls {
                Some("BYPASSRLS")
            } else {
                None
            };
            if let Some(what) = what {
                tracing::error!(db = %self.name, role = %self.db.user, what, "pool role bypasses row-level security; refusing to serve");
                conn.terminate().await;
                return Err(PoolError::PrivilegedRole {
                    db: self.name.clone(),
                    what,
                });
            }
        }
        let seal = if self.db.tenant_seal {
            conn.register_seal().await
        } else {
            Ok(())
        };
        {
            if let Err(source) = seal {
                tracing::error!(db = %self.name, error = %source, "tenant seal registration failed");
                conn.terminate().await;
                return Err(PoolError::Seal {
                    db: self.name.clone(),
                    source,
                });
            }
        }
        {
            let mut p = self
                .startup_params
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut params: Vec<(String, String)> = conn
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            params.sort();
            *p = params;
        }
        tracing::debug!(db = %self.name, server = conn.id, pid = conn.backend_pid, "server connection opened");
        Ok(Box::new(conn))
    }

    /// Gives back a slot whose connection never came to be or was closed, passing it on to
    /// the first waiter so nobody waits for a connection that will never be released.
    fn give_back_slot(self: &Arc<Self>) {
        let mut st = self.lock();
        while let Some(w) = st.waiters.pop_front() {
            match w.send(Grant::Slot(Slot::new(self))) {
                Ok(()) => return,
                // That waiter gave up; the slot goes on to the next (disarmed here: dropping
                // it armed would re-enter this lock).
                Err(Grant::Slot(slot)) => slot.disarm(),
                Err(Grant::Conn(_)) => unreachable_grant(),
            }
        }
        st.total = st.total.saturating_sub(1);
    }

    /// Drops a connection that must not be reused.
    fn forget(self: &Arc<Self>, conn: Box<ServerConn>) {
        tracing::debug!(db = %self.name, server = conn.id, "server connection closed");
        drop(conn);
        self.give_back_slot();
    }

    fn put_back(self: &Arc<Self>, mut conn: Box<ServerConn>) {
        conn.last_used = Instant::now();
        let mut st = self.lock();
        if st.closed {
            drop(st);
            self.forget(conn);
            return;
        }
        let mut conn = Some(conn);
        while let Some(w) = st.waiters.pop_front() {
            let grant = Grant::Conn(Box::new(Checkout {
                conn: conn.take(),
                pool: Arc::clone(self),
            }));
            match w.send(grant) {
                Ok(()) => return,
                // That waiter gave up: take the connection back for the next one.
                Err(Grant::Conn(mut returned)) => conn = returned.conn.take(),
                Err(Grant::Slot(_)) => unreachable_grant(),
            }
        }
        if let Some(conn) = conn {
            st.idle.push(conn);
        }
    }

    /// Closes idle connections past `server_idle_timeout` or `server_lifetime`, drops dead
    /// ones, and opens connections up to `min_pool_size`. Called periodically.
    pub async fn maintain(self: &Arc<Self>) {
        let mut to_close = Vec::new();
        {
            let mut st = self.lock();
            let now = Instant::now();
            let min = self.settings.min_pool_size;
            let mut keep = Vec::with_capacity(st.idle.len());
            let idle = std::mem::take(&mut st.idle);
            let mut total = st.total;
            for mut conn in idle {
                let too_old = self
                    .settings
                    .server_lifetime
                    .is_some_and(|l| now.duration_since(conn.created) >= l);
                let too_idle = self
                    .settings
                    .server_idle_timeout
                    .is_some_and(|t| now.duration_since(conn.last_used) >= t)
                    && total > min;
                if too_old || too_idle || conn.is_dead() {
                    total -= 1;
                    to_close.push(conn);
                } else {
                    keep.push(conn);
                }
            }
            st.idle = keep;
            st.total = total;
        }
        for conn in to_close {
            tracing::debug!(db = %self.name, server = conn.id, "closing idle server connection");
            conn.terminate().await;
        }
        loop {
            let open = {
                let mut st = self.lock();
                if !st.closed && st.total < self.settings.min_pool_size && st.waiters.is_empty() {
                    st.total += 1;
                    true
                } else {
                    false
                }
            };
            if !open {
                break;
            }
            let slot = Slot::new(self);
            match self.open().await {
                Ok(conn) => {
                    slot.disarm();
                    self.put_back(conn);
                }
                // `slot` gives the slot back.
                Err(_) => break,
            }
        }
    }

    /// Stops handing out connections and closes the idle ones.
    pub async fn close(&self) {
        let idle = {
            let mut st = self.lock();
            st.closed = true;
            st.waiters.clear();
            let idle = std::mem::take(&mut st.idle);
            st.total -= idle.len();
            idle
        };
        for conn in idle {
            conn.terminate().await;
        }
    }
}

#[cold]
fn unreachable_grant() {
    // A failed send returns the grant that was sent; its kind cannot change.
    tracing::error!("pool invariant broken: a returned grant changed kind");
}

/// A server connection checked out of a pool. Deref to use it; `release` returns it, and
/// dropping it without `release` closes it.
pub struct Checkout {
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
}

impl Checkout {
    pub fn conn(&mut self) -> &mut ServerConn {
        // `conn` is only `None` after `release`/`discard`, which consume the guard.
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("checkout used after release"))
    }

    pub fn stream(&self) -> &tokio::net::TcpStream {
        match &self.conn {
            Some(c) => &c.stream,
            None => unreachable!("checkout used after release"),
        }
    }

    /// Returns a clean connection (idle, no transaction, nothing outstanding) to the pool.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_back(conn);
        }
    }

    /// Closes the connection: its state cannot be vouched for.
    pub fn discard(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.forget(conn);
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.forget(conn);
        }
    }
}
