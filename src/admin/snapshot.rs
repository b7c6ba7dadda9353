//! The numbers the admin console and `/metrics` both report, read at one instant from
//! [`crate::stats`], the pools and the configuration.
//!
//! This module owns turning live counters into plain rows (per pool, per tenant, per client
//! state) so that `SHOW POOLS` and `pgtenant_server_connections` can never disagree about
//! what they count. It only reads: it never changes a counter, a pool or a client, and it is
//! never called on the per-message path (a scrape or an admin command, nothing else).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::state::Shared;

/// Name of the gauge holding the process start time (Unix seconds) in the shared registry.
pub const START_TIME_METRIC: &str = "pgtenant_process_start_time_seconds";

/// One database pool: its configuration, its servers right now and its totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub database: String,
    /// The role pgtenant logs in as upstream.
    pub user: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub tenant_seal: bool,
    pub pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub server_lifetime_secs: u64,
    /// Server connections: idle + checked out + being opened.
    pub servers_total: usize,
    pub servers_idle: usize,
    /// Checked out (bound to a client's transaction) or being opened.
    pub servers_active: usize,
    /// Logged-in clients of this database not waiting for a server, idle ones included
    /// (PgBouncer's `cl_active`).
    pub clients_active: i64,
    /// Logged-in clients of this database waiting for a server, queued or held by a pause
    /// (PgBouncer's `cl_waiting`).
    pub clients_waiting: i64,
    /// PAUSE or KILL is in effect.
    pub paused: bool,
    /// Servers handed to clients (transactions started, readiness probes included).
    pub assignments: u64,
    pub connects: u64,
    pub connect_errors: u64,
    pub wait_timeouts: u64,
    pub xacts: u64,
    pub queries: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub xact_time_us: u64,
    pub wait_time_us: u64,
}

/// One tenant's clients and totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSnapshot {
    pub tenant: String,
    pub clients: i64,
    pub active: i64,
    pub xacts: u64,
    pub queries: u64,
    pub wait_us: u64,
}

/// Client connections by state, process-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// Every accepted connection: logged in, logging in, or on the admin console.
    pub connected: usize,
    pub idle: i64,
    pub active: i64,
    pub waiting: i64,
}

impl ClientSnapshot {
    /// Connections that are not logged-in tenant clients: still logging in, or admin.
    pub fn other(&self) -> i64 {
        let connected = i64::try_from(self.connected).unwrap_or(i64::MAX);
        (connected - self.idle - self.active - self.waiting).max(0)
    }
}

/// Every pool in force, ordered by database name.
pub fn pools(shared: &Shared) -> Vec<PoolSnapshot> {
    let mut rows: Vec<PoolSnapshot> = shared
        .current()
        .pools
        .iter()
        .map(|(name, pool)| {
            let now = pool.stats();
            let settings = pool.settings();
            let db = pool.database();
            let stats = &pool.stats;
            let counters = &pool.counters;
            let clients = stats.clients.load(Ordering::Relaxed).max(0);
            let clients_waiting = stats
                .clients_waiting
                .load(Ordering::Relaxed)
                .clamp(0, clients);
            PoolSnapshot {
                database: name.clone(),
                user: db.user.clone(),
                host: db.host.clone(),
                port: db.port,
                dbname: db.dbname.clone(),
                tenant_seal: db.tenant_seal,
                pool_size: settings.pool_size,
                min_pool_size: settings.min_pool_size,
                reserve_pool_size: settings.reserve_pool_size,
                server_lifetime_secs: settings.server_lifetime.map_or(0, |d| d.as_secs()),
                servers_total: now.total,
                servers_idle: now.idle,
                servers_active: now.total.saturating_sub(now.idle),
                clients_active: clients - clients_waiting,
                clients_waiting,
                paused: now.paused,
                assignments: counters.checkouts.load(Ordering::Relaxed),
                connects: counters.connects.load(Ordering::Relaxed),
                connect_errors: counters.connect_errors.load(Ordering::Relaxed),
                wait_timeouts: counters.wait_timeouts.load(Ordering::Relaxed),
                xacts: stats.xacts.get(),
                queries: stats.queries.get(),
                bytes_received: stats.bytes_received.get(),
                bytes_sent: stats.bytes_sent.get(),
                xact_time_us: stats.xact_time_us.load(Ordering::Relaxed),
                wait_time_us: stats.wait_time_us.load(Ordering::Relaxed),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.database.cmp(&b.database));
    rows
}

/// Every tenant seen since start, most transactions first (ties by tenant id, so the order
/// is stable between two reads).
pub fn tenants(shared: &Shared) -> Vec<TenantSnapshot> {
    let mut rows: Vec<TenantSnapshot> = shared
        .stats
        .tenants
        .iter()
        .map(|entry| {
            let t = entry.value();
            TenantSnapshot {
                tenant: entry.key().clone(),
                clients: t.clients.load(Ordering::Relaxed).max(0),
                active: t.active.load(Ordering::Relaxed).max(0),
                xacts: t.xacts.load(Ordering::Relaxed),
                queries: t.queries.load(Ordering::Relaxed),
                wait_us: t.wait_time_us.load(Ordering::Relaxed),
            }
        })
        .collect();
    rows.sort_by(|a, b| b.xacts.cmp(&a.xacts).then_with(|| a.tenant.cmp(&b.tenant)));
    rows
}

/// The first `top` tenants of [`tenants`] and the rest summed into one row named `other`
/// (always present, zero when nobody is left over), so a reader's series count is bounded.
pub fn top_tenants(shared: &Shared, top: usize) -> (Vec<TenantSnapshot>, TenantSnapshot) {
    let mut rows = tenants(shared);
    let rest = rows.split_off(top.min(rows.len()));
    let mut other = TenantSnapshot {
        tenant: "other".to_owned(),
        clients: 0,
        active: 0,
        xacts: 0,
        queries: 0,
        wait_us: 0,
    };
    for t in rest {
        other.clients += t.clients;
        other.active += t.active;
        other.xacts += t.xacts;
        other.queries += t.queries;
        other.wait_us += t.wait_us;
    }
    (rows, other)
}

pub fn clients(shared: &Shared) -> ClientSnapshot {
    let s = &shared.stats;
    ClientSnapshot {
        connected: shared.clients.load(Ordering::Relaxed),
        idle: s.clients_idle.get().max(0),
        active: s.clients_active.get().max(0),
        waiting: s.clients_waiting.get().max(0),
    }
}

/// Records now as the process start time, once per registry (a second call is a no-op).
pub fn register_start_time(shared: &Shared) -> Result<(), prometheus::Error> {
    if started_at(shared).is_some() {
        return Ok(());
    }
    let gauge = prometheus::Gauge::new(
        START_TIME_METRIC,
        "Start time of the pgtenant process since the Unix epoch, in seconds",
    )?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    gauge.set(now.as_secs_f64());
    shared.stats.registry.register(Box::new(gauge))
}

/// When the proxy started serving, if [`register_start_time`] ran.
pub fn started_at(shared: &Shared) -> Option<SystemTime> {
    let families = shared.stats.registry.gather();
    let family = families.iter().find(|f| f.name() == START_TIME_METRIC)?;
    let secs = family.get_metric().first()?.get_gauge().get_value();
    (secs.is_finite() && secs > 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// Time since the proxy started serving; `None` when unknown.
pub fn uptime(shared: &Shared) -> Option<Duration> {
    SystemTime::now().duration_since(started_at(shared)?).ok()
}
