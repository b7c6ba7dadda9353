//! The bounded pool of server connections for one upstream database, shared by all tenants.
//!
//! This module owns how many server connections exist (never more than
//! `pool_size + reserve_pool_size`), who gets the next free one (first come, first served),
//! and when idle ones are closed or replaced. A checked-out connection is a [`Checkout`]
//! guard: returning it is explicit (`release`), and a guard dropped without that — a client
//! vanished mid-transaction, a task was cancelled — closes the connection rather than letting
//! a server with unknown state back into the pool. The pool never looks at traffic.
//!
//! The operator's controls act here too: sizes and timeouts change live ([`Pool::reconfigure`],
//! from a reload), a pause gate holds new checkouts ([`Pool::pause`], [`Pool::resume`]), and a
//! generation count retires servers as they come free ([`Pool::reconnect`], or a changed
//! upstream). None of them ever takes a server away from a transaction in progress.

pub mod statements;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot, watch};

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
    #[error(
        "database \"{db}\" is paused by an administrator (PAUSE or KILL) and was not resumed \
         within query_wait_timeout ({waited:?})"
    )]
    Paused { db: String, waited: Duration },
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
            PoolError::WaitTimeout(_) | PoolError::Paused { .. } => "57014",
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

/// A server connection and where it came from.
struct Pooled {
    /// Boxed: connections move between the pool and sessions on every transaction, and an
    /// idle client's session keeps only a pointer's worth of room for one.
    conn: Box<ServerConn>,
    /// The pool's generation when it was opened; a server of an older generation is closed
    /// when it comes free instead of being reused.
    generation: u64,
    /// `host:port` it was opened to: where its cancel requests go.
    upstream: Arc<str>,
}

struct PoolState {
    idle: Vec<Pooled>,
    /// Idle + checked out + being opened.
    total: usize,
    waiters: VecDeque<oneshot::Sender<Grant>>,
    closed: bool,
    /// PAUSE or KILL: new checkouts wait at the gate, servers are closed as they come free.
    paused: bool,
    settings: PoolSettings,
    db: Arc<DatabaseConfig>,
    upstream: Arc<str>,
    generation: u64,
}

impl PoolState {
    /// The hard bound on server connections.
    fn limit(&self) -> usize {
        self.settings.pool_size + self.settings.reserve_pool_size
    }

    /// Takes every idle connection out of the pool (the caller closes them).
    fn take_all_idle(&mut self) -> Vec<Pooled> {
        let idle = std::mem::take(&mut self.idle);
        self.total -= idle.len();
        idle
    }
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
    /// Checkouts queued for a server (not those held by a pause).
    pub waiting: usize,
    pub paused: bool,
}

/// Why `PAUSE` returned before every server was released.
#[derive(Debug, thiserror::Error)]
#[error("database \"{0}\" was resumed before all its server connections were released")]
pub struct PauseInterrupted(pub String);

/// The ParameterStatus values a server reported at login, as every client is told them at
/// its own login (`is_superuser` always `off`: pgtenant refuses privileged pool roles
/// unless told otherwise, and clients must not act on it).
#[derive(Default)]
pub struct ServerParams {
    /// (name, its ParameterStatus message), sorted by name: encoded once per server login
    /// instead of once per client login.
    pub encoded: Vec<(String, bytes::Bytes)>,
}

impl ServerParams {
    fn new(reported: &std::collections::HashMap<String, String>) -> ServerParams {
        let mut encoded: Vec<(String, bytes::Bytes)> = reported
            .iter()
            .map(|(name, value)| {
                let value = if name == "is_superuser" { "off" } else { value };
                let mut b = bytes::BytesMut::new();
                crate::protocol::messages::parameter_status(&mut b, name, value);
                (name.clone(), b.freeze())
            })
            .collect();
        encoded.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        ServerParams { encoded }
    }
}

pub struct Pool {
    /// Shared with the registry entries of the pool's clients.
    pub name: Arc<str>,
    state: Mutex<PoolState>,
    /// Mirrors of `state.generation` and `state.paused`, read without the lock by
    /// [`Checkout::reusable`] (once per transaction).
    generation: AtomicU64,
    paused: AtomicBool,
    /// Mirror of the database's `tenant_seal`, read once per transaction.
    sealed: AtomicBool,
    /// The pause flag as a channel: checkouts held by a pause wait for it to turn false.
    /// Written only under the state lock, together with `state.paused`.
    pause_gate: watch::Sender<bool>,
    /// Notified whenever server connections are closed or the pool resumes (PAUSE waits on
    /// it).
    released: Notify,
    /// ParameterStatus values from the latest server login, echoed to clients at login.
    startup_params: Mutex<Option<Arc<ServerParams>>>,
    pub counters: PoolCounters,
    /// pgtenant's names for clients' prepared statements.
    pub statements: statements::StatementRegistry,
    /// Traffic numbers of this database (metrics and SHOW STATS).
    pub stats: Arc<crate::stats::PoolStats>,
    /// Whether and how new server connections use TLS (read at each connect, so a reload
    /// applies to the next one).
    tls: Arc<crate::tls::TlsState>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).finish()
    }
}

/// What a checkout does next, decided under the lock.
enum Step {
    Granted(Grant),
    Queued(oneshot::Receiver<Grant>),
    Paused(watch::Receiver<bool>),
}

/// The limits of one checkout attempt, read under the lock.
#[derive(Clone, Copy)]
struct WaitLimits {
    query_wait_timeout: Option<Duration>,
    reserve_pool_timeout: Duration,
    has_reserve: bool,
    server_lifetime: Option<Duration>,
}

fn upstream_of(db: &DatabaseConfig) -> Arc<str> {
    Arc::from(format!("{}:{}", db.host, db.port))
}

/// Whether servers opened for `old` must not serve `new`: another server, database or role,
/// other credentials, the seal switched, or the privileged-role check changed.
fn needs_new_servers(old: &DatabaseConfig, new: &DatabaseConfig) -> bool {
    old.host != new.host
        || old.port != new.port
        || old.dbname != new.dbname
        || old.user != new.user
        || old.password != new.password
        || old.tenant_seal != new.tenant_seal
        || old.allow_privileged_role != new.allow_privileged_role
}

impl Pool {
    pub fn new(
        name: String,
        db: DatabaseConfig,
        settings: PoolSettings,
        stats: Arc<crate::stats::PoolStats>,
        tls: Arc<crate::tls::TlsState>,
    ) -> Arc<Pool> {
        let sealed = db.tenant_seal;
        Arc::new(Pool {
            name: name.into(),
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                total: 0,
                waiters: VecDeque::new(),
                closed: false,
                paused: false,
                settings,
                upstream: upstream_of(&db),
                db: Arc::new(db),
                generation: 0,
            }),
            generation: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            sealed: AtomicBool::new(sealed),
            pause_gate: watch::Sender::new(false),
            released: Notify::new(),
            startup_params: Mutex::new(None),
            counters: PoolCounters::default(),
            statements: statements::StatementRegistry::default(),
            stats,
            tls,
        })
    }

    /// Whether transactions carry a sealed tenant (see config/sql/seal.sql).
    pub fn sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// The sizes and timeouts in force.
    pub fn settings(&self) -> PoolSettings {
        self.lock().settings.clone()
    }

    /// The upstream database entry in force.
    pub fn database(&self) -> Arc<DatabaseConfig> {
        Arc::clone(&self.lock().db)
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
            paused: st.paused,
        }
    }

    /// ParameterStatus values a server reported at login, opening one connection first if
    /// none has been made yet.
    pub async fn startup_params(self: &Arc<Self>) -> Result<Arc<ServerParams>, PoolError> {
        if let Some(p) = self.latest_params() {
            return Ok(p);
        }
        let conn = self.checkout().await?;
        conn.release();
        // Every server login records its parameters, so this one did.
        Ok(self.latest_params().unwrap_or_default())
    }

    fn latest_params(&self) -> Option<Arc<ServerParams>> {
        self.startup_params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An idle connection if one is ready now, the pool is not paused and nobody is queued
    /// before us: the common case, without the future of [`Pool::checkout`] (whose wait
    /// and connect states would otherwise live in every client's task, idle or not).
    pub fn try_checkout(self: &Arc<Self>) -> Option<Checkout> {
        loop {
            let (item, lifetime) = {
                let mut st = self.lock();
                if st.closed || st.paused || !st.waiters.is_empty() {
                    return None;
                }
                let lifetime = st.settings.server_lifetime;
                (self.take_idle(&mut st)?, lifetime)
            };
            let mut checkout = Checkout {
                item: Some(item),
                pool: Arc::clone(self),
            };
            if self.is_stale(&mut checkout, lifetime) {
                checkout.discard();
                continue;
            }
            self.counters.checkouts.fetch_add(1, Ordering::Relaxed);
            return Some(checkout);
        }
    }

    /// Hands out a server connection: an idle one, a new one while under the limit, or the
    /// next one released, in arrival order, waiting at most `query_wait_timeout` (a pause
    /// included).
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        let started = Instant::now();
        let mut reserve_tried = false;
        loop {
            let (step, limits) = {
                let mut st = self.lock();
                if st.closed {
                    return Err(PoolError::Closed(self.name.to_string()));
                }
                let s = &st.settings;
                let limits = WaitLimits {
                    query_wait_timeout: s.query_wait_timeout,
                    reserve_pool_timeout: s.reserve_pool_timeout,
                    has_reserve: s.reserve_pool_size > 0,
                    server_lifetime: s.server_lifetime,
                };
                let step = if st.paused {
                    Step::Paused(self.pause_gate.subscribe())
                } else if let Some(item) = self.take_idle(&mut st) {
                    Step::Granted(Grant::Conn(Box::new(Checkout {
                        item: Some(item),
                        pool: Arc::clone(self),
                    })))
                } else if st.total < st.settings.pool_size {
                    st.total += 1;
                    Step::Granted(Grant::Slot(Slot::new(self)))
                } else {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.push_back(tx);
                    Step::Queued(rx)
                };
                (step, limits)
            };
            let grant = match step {
                Step::Granted(g) => g,
                Step::Paused(mut gate) => {
                    let remaining = limits
                        .query_wait_timeout
                        .map(|t| t.saturating_sub(started.elapsed()));
                    let resumed = async { gate.wait_for(|paused| !*paused).await.is_ok() };
                    let resumed = match remaining {
                        Some(d) => tokio::time::timeout(d, resumed).await.unwrap_or(false),
                        None => resumed.await,
                    };
                    if !resumed {
                        self.counters.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                        return Err(PoolError::Paused {
                            db: self.name.to_string(),
                            waited: limits.query_wait_timeout.unwrap_or_default(),
                        });
                    }
                    continue;
                }
                Step::Queued(mut rx) => {
                    let wait = next_wait(limits, started, reserve_tried);
                    let received = match wait {
                        Some(d) => tokio::time::timeout(d, &mut rx).await.ok(),
                        None => Some((&mut rx).await),
                    };
                    match received {
                        Some(Ok(g)) => g,
                        // The queue was cleared (a pause, or shutdown): look again.
                        Some(Err(_)) => continue,
                        None => {
                            // Stop further grants, but keep one that raced with the timeout.
                            rx.close();
                            if let Ok(g) = rx.try_recv() {
                                g
                            } else if !reserve_tried && limits.has_reserve {
                                reserve_tried = true;
                                if self.try_reserve_slot() {
                                    Grant::Slot(Slot::new(self))
                                } else {
                                    continue;
                                }
                            } else {
                                self.counters.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                                let waited = limits.query_wait_timeout.unwrap_or_default();
                                return Err(PoolError::WaitTimeout(waited));
                            }
                        }
                    }
                }
            };
            let mut checkout = match grant {
                Grant::Conn(checkout) => *checkout,
                Grant::Slot(slot) => {
                    // If this future is dropped mid-connect, `slot` gives the slot back.
                    let item = self.open().await?;
                    slot.disarm();
                    Checkout {
                        item: Some(item),
                        pool: Arc::clone(self),
                    }
                }
            };
            if self.is_stale(&mut checkout, limits.server_lifetime) {
                checkout.discard();
                continue;
            }
            self.counters.checkouts.fetch_add(1, Ordering::Relaxed);
            return Ok(checkout);
        }
    }

    fn try_reserve_slot(&self) -> bool {
        let mut st = self.lock();
        if !st.paused && !st.closed && st.total < st.limit() {
            st.total += 1;
            true
        } else {
            false
        }
    }

    fn take_idle(&self, st: &mut PoolState) -> Option<Pooled> {
        // Most recently used first: its caches are warm and the others can age out.
        st.idle.pop()
    }

    /// Past `server_lifetime`, dead, or of a generation the pool has moved past.
    fn is_stale(&self, checkout: &mut Checkout, lifetime: Option<Duration>) -> bool {
        let current = self.generation.load(Ordering::Acquire);
        let Some(item) = checkout.item.as_mut() else {
            return true;
        };
        let too_old = lifetime.is_some_and(|life| item.conn.created.elapsed() >= life);
        too_old || item.generation != current || item.conn.is_dead()
    }

    /// Opens a connection to the upstream in force, of the current generation.
    async fn open(&self) -> Result<Pooled, PoolError> {
        let (db, connect_timeout, allow_privileged_role, generation, upstream) = {
            let st = self.lock();
            (
                Arc::clone(&st.db),
                st.settings.server_connect_timeout,
                st.settings.allow_privileged_role,
                st.generation,
                Arc::clone(&st.upstream),
            )
        };
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        let connect =
            ServerConn::connect(&db, connect_timeout, self.tls.upstream(&self.name)).await;
        let mut conn = match connect {
            Ok(c) => c,
            Err(source) => {
                self.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                self.stats.connect_errors.inc();
                tracing::warn!(db = %self.name, error = %source, "upstream connection failed");
                return Err(PoolError::Connect {
                    db: self.name.to_string(),
                    source,
                });
            }
        };
        let privileges = conn
            .role_privileges()
            .await
            .map_err(|source| PoolError::Connect {
                db: self.name.to_string(),
                source,
            })?;
        if !allow_privileged_role {
            let what = if privileges.superuser {
                Some("a superuser")
            } else if privileges.bypass_rls {
                Some("BYPASSRLS")
            } else {
                None
            };
            if let Some(what) = what {
                tracing::error!(db = %self.name, role = %db.user, what, "pool role bypasses row-level security; refusing to serve");
                conn.terminate().await;
                return Err(PoolError::PrivilegedRole {
                    db: self.name.to_string(),
                    what,
                });
            }
        }
        let seal = if db.tenant_seal {
            conn.register_seal().await
        } else {
            Ok(())
        };
        {
            if let Err(source) = seal {
                tracing::error!(db = %self.name, error = %source, "tenant seal registration failed");
                conn.terminate().await;
                return Err(PoolError::Seal {
                    db: self.name.to_string(),
                    source,
                });
            }
        }
        let params = Arc::new(ServerParams::new(&conn.params));
        *self
            .startup_params
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(params);
        tracing::debug!(db = %self.name, server = conn.id, pid = conn.backend_pid, "server connection opened");
        Ok(Pooled {
            conn: Box::new(conn),
            generation,
            upstream,
        })
    }

    /// Gives back a slot whose connection never came to be or was closed, passing it on to
    /// the first waiter so nobody waits for a connection that will never be released —
    /// unless the pool is paused or above its (possibly just lowered) bound.
    fn give_back_slot(self: &Arc<Self>) {
        let mut st = self.lock();
        if !st.closed && !st.paused && st.total <= st.limit() {
            while let Some(w) = st.waiters.pop_front() {
                match w.send(Grant::Slot(Slot::new(self))) {
                    Ok(()) => return,
                    // That waiter gave up; the slot goes on to the next (disarmed here:
                    // dropping it armed would re-enter this lock).
                    Err(Grant::Slot(slot)) => slot.disarm(),
                    Err(Grant::Conn(_)) => unreachable_grant(),
                }
            }
        }
        st.total = st.total.saturating_sub(1);
        drop(st);
        self.released.notify_waiters();
    }

    /// Lets queued checkouts open connections while the pool is below `pool_size` (after it
    /// grew, or servers were closed).
    fn admit_waiters(self: &Arc<Self>, st: &mut PoolState) {
        while !st.closed && !st.paused && st.total < st.settings.pool_size {
            let Some(w) = st.waiters.pop_front() else {
                break;
            };
            match w.send(Grant::Slot(Slot::new(self))) {
                Ok(()) => st.total += 1,
                Err(Grant::Slot(slot)) => slot.disarm(),
                Err(Grant::Conn(_)) => unreachable_grant(),
            }
        }
    }

    /// Drops a connection that must not be reused.
    fn forget(self: &Arc<Self>, item: Pooled) {
        tracing::debug!(db = %self.name, server = item.conn.id, "server connection closed");
        drop(item);
        self.give_back_slot();
    }

    fn put_back(self: &Arc<Self>, mut item: Pooled) {
        item.conn.last_used = Instant::now();
        let mut st = self.lock();
        if st.closed || st.paused || item.generation != st.generation || st.total > st.limit() {
            drop(st);
            self.forget(item);
            return;
        }
        let mut item = Some(item);
        while let Some(w) = st.waiters.pop_front() {
            let grant = Grant::Conn(Box::new(Checkout {
                item: item.take(),
                pool: Arc::clone(self),
            }));
            match w.send(grant) {
                Ok(()) => return,
                // That waiter gave up: take the connection back for the next one.
                Err(Grant::Conn(mut returned)) => item = returned.item.take(),
                Err(Grant::Slot(_)) => unreachable_grant(),
            }
        }
        if let Some(item) = item {
            st.idle.push(item);
        }
    }

    /// Closes connections already taken out of the pool's count.
    async fn close_all(&self, items: Vec<Pooled>) {
        if items.is_empty() {
            return;
        }
        self.released.notify_waiters();
        for item in items {
            tracing::debug!(db = %self.name, server = item.conn.id, "closing idle server connection");
            item.conn.terminate().await;
        }
    }

    /// Closes idle connections past `server_idle_timeout` or `server_lifetime`, drops dead
    /// ones, and opens connections up to `min_pool_size`. Called periodically.
    pub async fn maintain(self: &Arc<Self>) {
        let to_close = {
            let mut st = self.lock();
            let now = Instant::now();
            let min = st.settings.min_pool_size;
            let lifetime = st.settings.server_lifetime;
            let idle_timeout = st.settings.server_idle_timeout;
            let mut keep = Vec::with_capacity(st.idle.len());
            let mut to_close = Vec::new();
            let idle = std::mem::take(&mut st.idle);
            let mut total = st.total;
            for mut item in idle {
                let too_old = lifetime.is_some_and(|l| now.duration_since(item.conn.created) >= l);
                let too_idle = idle_timeout
                    .is_some_and(|t| now.duration_since(item.conn.last_used) >= t)
                    && total > min;
                if too_old || too_idle || item.conn.is_dead() {
                    total -= 1;
                    to_close.push(item);
                } else {
                    keep.push(item);
                }
            }
            st.idle = keep;
            st.total = total;
            self.admit_waiters(&mut st);
            to_close
        };
        self.close_all(to_close).await;
        loop {
            let open = {
                let mut st = self.lock();
                if !st.closed
                    && !st.paused
                    && st.total < st.settings.min_pool_size
                    && st.waiters.is_empty()
                {
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
                Ok(item) => {
                    slot.disarm();
                    self.put_back(item);
                }
                // `slot` gives the slot back.
                Err(_) => break,
            }
        }
    }

    /// Applies sizes, timeouts and the database entry from a reload. Growing lets queued
    /// checkouts in at once; shrinking closes idle servers above the new `pool_size` now and
    /// others as they come free while above the new bound. A changed upstream (server,
    /// database, role, password, seal, privileged-role check) starts a new generation, as
    /// RECONNECT does. Returns whether it did.
    pub async fn reconfigure(self: &Arc<Self>, db: DatabaseConfig, settings: PoolSettings) -> bool {
        let (reconnect, to_close) = {
            let mut st = self.lock();
            let reconnect = needs_new_servers(&st.db, &db);
            st.settings = settings;
            let mut to_close = Vec::new();
            if reconnect {
                st.upstream = upstream_of(&db);
                self.sealed.store(db.tenant_seal, Ordering::Release);
                self.new_generation(&mut st);
                to_close = st.take_all_idle();
            }
            st.db = Arc::new(db);
            let surplus = st
                .total
                .saturating_sub(st.settings.pool_size)
                .min(st.idle.len());
            // The least recently used go first.
            to_close.extend(st.idle.drain(..surplus));
            st.total -= surplus;
            self.admit_waiters(&mut st);
            (reconnect, to_close)
        };
        self.close_all(to_close).await;
        reconnect
    }

    fn new_generation(&self, st: &mut PoolState) {
        st.generation += 1;
        self.generation.store(st.generation, Ordering::Release);
    }

    /// RECONNECT: closes the idle servers now and every other one when its transaction
    /// releases it; new servers are opened as needed.
    pub async fn reconnect(self: &Arc<Self>) {
        let idle = {
            let mut st = self.lock();
            self.new_generation(&mut st);
            let idle = st.take_all_idle();
            self.admit_waiters(&mut st);
            idle
        };
        self.close_all(idle).await;
    }

    /// PAUSE (and the first half of KILL): new checkouts wait until [`Pool::resume`]
    /// (bounded by `query_wait_timeout`), idle servers are closed now and the others as
    /// their transactions release them. See [`Pool::wait_released`].
    pub async fn pause(self: &Arc<Self>) {
        let idle = {
            let mut st = self.lock();
            st.paused = true;
            self.paused.store(true, Ordering::Release);
            self.pause_gate.send_replace(true);
            // Queued checkouts move to the gate: their channel closes and they look again.
            st.waiters.clear();
            st.take_all_idle()
        };
        self.close_all(idle).await;
    }

    /// Waits until the pool holds no server connection at all.
    pub async fn wait_released(&self) -> Result<(), PauseInterrupted> {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if st.total == 0 {
                    return Ok(());
                }
                if !st.paused {
                    return Err(PauseInterrupted(self.name.to_string()));
                }
            }
            notified.await;
        }
    }

    /// Lets held checkouts go on. Returns whether the pool was paused.
    pub fn resume(&self) -> bool {
        let was_paused = {
            let mut st = self.lock();
            let was = st.paused;
            st.paused = false;
            self.paused.store(false, Ordering::Release);
            self.pause_gate.send_replace(false);
            was
        };
        self.released.notify_waiters();
        was_paused
    }

    /// Stops handing out connections and closes the idle ones.
    pub async fn close(&self) {
        let idle = {
            let mut st = self.lock();
            st.closed = true;
            st.waiters.clear();
            st.take_all_idle()
        };
        self.close_all(idle).await;
    }
}

fn next_wait(limits: WaitLimits, started: Instant, reserve_tried: bool) -> Option<Duration> {
    let elapsed = started.elapsed();
    let to_deadline = limits.query_wait_timeout.map(|t| t.saturating_sub(elapsed));
    if reserve_tried || !limits.has_reserve {
        return to_deadline;
    }
    let to_reserve = limits.reserve_pool_timeout.saturating_sub(elapsed);
    Some(match to_deadline {
        Some(d) => d.min(to_reserve),
        None => to_reserve,
    })
}

#[cold]
fn unreachable_grant() {
    // A failed send returns the grant that was sent; its kind cannot change.
    tracing::error!("pool invariant broken: a returned grant changed kind");
}

/// A server connection checked out of a pool. Deref to use it; `release` returns it, and
/// dropping it without `release` closes it.
pub struct Checkout {
    item: Option<Pooled>,
    pool: Arc<Pool>,
}

impl Checkout {
    fn item(&self) -> &Pooled {
        // `item` is only `None` after `release`/`discard`, which consume the guard.
        self.item
            .as_ref()
            .unwrap_or_else(|| unreachable!("checkout used after release"))
    }

    pub fn conn(&mut self) -> &mut ServerConn {
        match self.item.as_mut() {
            Some(item) => &mut item.conn,
            None => unreachable!("checkout used after release"),
        }
    }

    /// `host:port` of the server this connection goes to (for forwarding cancel requests).
    pub fn upstream_addr(&self) -> Arc<str> {
        Arc::clone(&self.item().upstream)
    }

    /// Whether the pool would take this server back for reuse: not once the pool is paused
    /// or has moved to a newer generation. A session keeps its server for a transaction
    /// already pipelined behind the current one only while this holds.
    pub fn reusable(&self) -> bool {
        !self.pool.paused.load(Ordering::Acquire)
            && self.item().generation == self.pool.generation.load(Ordering::Acquire)
    }

    /// Returns a clean connection (idle, no transaction, nothing outstanding) to the pool.
    pub fn release(mut self) {
        if let Some(item) = self.item.take() {
            self.pool.put_back(item);
        }
    }

    /// Closes the connection: its state cannot be vouched for.
    pub fn discard(mut self) {
        if let Some(item) = self.item.take() {
            self.pool.forget(item);
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.pool.forget(item);
        }
    }
}
