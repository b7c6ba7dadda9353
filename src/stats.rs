//! The numbers pgtenant reports: one set of counters that both the Prometheus endpoint and
//! the admin console read, so they always agree.
//!
//! Every counter is an atomic owned by the thing it counts (the process, a pool, a tenant),
//! reached through an `Arc` taken once (at start, at login), so the hot path pays one atomic
//! add per counted event and never a label lookup or a lock. Labels are resolved only at
//! construction and on rare paths (a refused login, a guard refusal). Nothing here decides
//! anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::tenant::TenantId;

/// Buckets for waits and transaction durations, in seconds: 50 µs to 30 s.
const DURATION_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// Process-wide numbers.
pub struct Stats {
    pub registry: Registry,
    /// Logged-in clients not in a transaction.
    pub clients_idle: IntGauge,
    /// Clients bound to a server.
    pub clients_active: IntGauge,
    /// Clients waiting for a server.
    pub clients_waiting: IntGauge,
    pub logins: IntCounter,
    /// Those of `logins` over TLS.
    pub tls_logins: IntCounter,
    login_failures: IntCounterVec,
    guard_refusals: IntCounterVec,
    /// Per-tenant numbers, by tenant id.
    pub tenants: DashMap<String, Arc<TenantStats>>,
    /// Per-database numbers, by database name. Kept when a reload removes a database, so
    /// its counters go on (and are not registered twice) if it comes back.
    pools: DashMap<String, Arc<PoolStats>>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

/// Why building the metric set failed (a duplicate or malformed metric: a bug).
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct StatsError(#[from] prometheus::Error);

impl Stats {
    pub fn new() -> Result<Arc<Stats>, StatsError> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, StatsError> {
            let g = IntGauge::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let clients_idle = gauge(
            "pgtenant_clients_idle",
            "Logged-in clients outside a transaction",
        )?;
        let clients_active = gauge(
            "pgtenant_clients_active",
            "Clients bound to a server connection",
        )?;
        let clients_waiting = gauge(
            "pgtenant_clients_waiting",
            "Clients waiting for a server connection",
        )?;
        let logins = IntCounter::new("pgtenant_logins_total", "Successful client logins")?;
        registry.register(Box::new(logins.clone()))?;
        let tls_logins = IntCounter::new(
            "pgtenant_tls_logins_total",
            "Successful client logins over TLS",
        )?;
        registry.register(Box::new(tls_logins.clone()))?;
        let login_failures = IntCounterVec::new(
            Opts::new(
                "pgtenant_login_failures_total",
                "Refused client logins by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(login_failures.clone()))?;
        let guard_refusals = IntCounterVec::new(
            Opts::new(
                "pgtenant_guard_refusals_total",
                "Statements refused because they would change or bypass the tenant, by rule",
            ),
            &["rule"],
        )?;
        registry.register(Box::new(guard_refusals.clone()))?;
        Ok(Arc::new(Stats {
            registry,
            clients_idle,
            clients_active,
            clients_waiting,
            logins,
            tls_logins,
            login_failures,
            guard_refusals,
            tenants: DashMap::new(),
            pools: DashMap::new(),
        }))
    }

    /// Counts a refused login (rare path: one label lookup).
    pub fn login_failed(&self, reason: &str) {
        self.login_failures.with_label_values(&[reason]).inc();
    }

    /// Counts a guard refusal (rare path: one label lookup).
    pub fn guard_refused(&self, rule: &str) {
        self.guard_refusals.with_label_values(&[rule]).inc();
    }

    /// The counters of one tenant, created on first use (once per login).
    pub fn tenant(&self, tenant: &TenantId) -> Arc<TenantStats> {
        if let Some(t) = self.tenants.get(tenant.as_str()) {
            return Arc::clone(t.value());
        }
        Arc::clone(
            self.tenants
                .entry(tenant.as_str().to_owned())
                .or_insert_with(|| {
                    Arc::new(TenantStats {
                        id: tenant.clone(),
                        clients: AtomicI64::new(0),
                        active: AtomicI64::new(0),
                        xacts: AtomicU64::new(0),
                        queries: AtomicU64::new(0),
                        wait_time_us: AtomicU64::new(0),
                    })
                })
                .value(),
        )
    }

    /// Numbers of one pool, registered with the database name as label on first use (at
    /// start, or when a reload adds the database); later calls return the same numbers.
    pub fn pool(&self, db: &str) -> Result<Arc<PoolStats>, StatsError> {
        if let Some(p) = self.pools.get(db) {
            return Ok(Arc::clone(p.value()));
        }
        let entry = match self.pools.entry(db.to_owned()) {
            dashmap::Entry::Occupied(e) => return Ok(Arc::clone(e.get())),
            dashmap::Entry::Vacant(v) => v,
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, StatsError> {
            let c = IntCounter::with_opts(Opts::new(name, help).const_label("database", db))?;
            self.registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let histogram = |name: &str, help: &str| -> Result<Histogram, StatsError> {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .const_label("database", db)
                    .buckets(DURATION_BUCKETS.to_vec()),
            )?;
            self.registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let stats = Arc::new(PoolStats {
            xacts: counter(
                "pgtenant_transactions_total",
                "Transactions run (server checkouts)",
            )?,
            queries: counter(
                "pgtenant_queries_total",
                "Queries run (simple Query and extended Execute messages)",
            )?,
            bytes_received: counter(
                "pgtenant_client_received_bytes_total",
                "Bytes received from clients",
            )?,
            bytes_sent: counter("pgtenant_client_sent_bytes_total", "Bytes sent to clients")?,
            connect_errors: counter(
                "pgtenant_server_connect_errors_total",
                "Failed connections to the upstream database",
            )?,
            wait: histogram(
                "pgtenant_client_wait_seconds",
                "Time a client waited for a server connection",
            )?,
            xact_duration: histogram(
                "pgtenant_transaction_duration_seconds",
                "Time a client held a server connection for one transaction",
            )?,
            xact_time_us: AtomicU64::new(0),
            wait_time_us: AtomicU64::new(0),
            clients: AtomicI64::new(0),
            clients_waiting: AtomicI64::new(0),
        });
        entry.insert(Arc::clone(&stats));
        Ok(stats)
    }
}

/// Numbers of one database pool.
pub struct PoolStats {
    pub xacts: IntCounter,
    pub queries: IntCounter,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    pub connect_errors: IntCounter,
    pub wait: Histogram,
    pub xact_duration: Histogram,
    /// Totals in microseconds, for the admin console's SHOW STATS.
    pub xact_time_us: AtomicU64,
    pub wait_time_us: AtomicU64,
    /// Logged-in clients of this database, and those of them waiting for a server: what
    /// SHOW POOLS reports as `cl_active` (the difference) and `cl_waiting`.
    pub clients: AtomicI64,
    pub clients_waiting: AtomicI64,
}

impl std::fmt::Debug for PoolStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolStats").finish_non_exhaustive()
    }
}

impl PoolStats {
    pub fn waited(&self, d: Duration) {
        self.wait.observe(d.as_secs_f64());
        self.wait_time_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn transaction_done(&self, d: Duration) {
        self.xacts.inc();
        self.xact_duration.observe(d.as_secs_f64());
        self.xact_time_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Numbers of one tenant.
#[derive(Debug)]
pub struct TenantStats {
    /// The tenant. Its sessions and registry entries hold clones of this one: a tenant's
    /// thousands of clients share one copy of its id.
    pub id: TenantId,
    /// Connected clients.
    pub clients: AtomicI64,
    /// Clients in a transaction right now.
    pub active: AtomicI64,
    pub xacts: AtomicU64,
    pub queries: AtomicU64,
    pub wait_time_us: AtomicU64,
}

/// A client's state, for the gauges; the session moves it and the guard keeps the gauges
/// consistent when the session ends in any state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Idle,
    Waiting,
    Active,
}

/// Tracks one logged-in client's state in the process gauges, its database's client counts,
/// its tenant's counters and its registry entry (which it holds, so the client is listed
/// exactly as long as it is counted).
#[derive(Debug)]
pub struct ClientTracker {
    stats: Arc<Stats>,
    tenant: Arc<TenantStats>,
    pool: Arc<PoolStats>,
    registration: crate::clients::Registration,
    state: ClientState,
}

impl ClientTracker {
    pub fn new(
        stats: Arc<Stats>,
        tenant: Arc<TenantStats>,
        pool: Arc<PoolStats>,
        registration: crate::clients::Registration,
    ) -> ClientTracker {
        stats.clients_idle.inc();
        tenant.clients.fetch_add(1, Ordering::Relaxed);
        pool.clients.fetch_add(1, Ordering::Relaxed);
        ClientTracker {
            stats,
            tenant,
            pool,
            registration,
            state: ClientState::Idle,
        }
    }

    pub fn tenant(&self) -> &TenantStats {
        &self.tenant
    }

    /// The proxy-wide numbers (sessions reach them through here rather than each keeping
    /// another pointer).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Resolves once when this client is told to stop: KILL/KILL_CLIENT or the drain.
    pub fn stop_signal(&mut self) -> &mut crate::clients::StopSignal {
        self.registration.stop_signal()
    }

    /// Whether a stop notice was sent; see [`crate::clients::Registration::stop_sent`].
    pub fn stop_sent(&self) -> bool {
        self.registration.stop_sent()
    }

    pub fn set(&mut self, state: ClientState) {
        if state == self.state {
            return;
        }
        self.gauge(self.state).dec();
        self.gauge(state).inc();
        match (self.state, state) {
            (_, ClientState::Active) => {
                self.tenant.active.fetch_add(1, Ordering::Relaxed);
            }
            (ClientState::Active, _) => {
                self.tenant.active.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        match (self.state, state) {
            (_, ClientState::Waiting) => {
                self.pool.clients_waiting.fetch_add(1, Ordering::Relaxed);
            }
            (ClientState::Waiting, _) => {
                self.pool.clients_waiting.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.registration.info().set_state(state);
        self.state = state;
    }

    fn gauge(&self, state: ClientState) -> &IntGauge {
        match state {
            ClientState::Idle => &self.stats.clients_idle,
            ClientState::Waiting => &self.stats.clients_waiting,
            ClientState::Active => &self.stats.clients_active,
        }
    }
}

impl Drop for ClientTracker {
    fn drop(&mut self) {
        self.set(ClientState::Idle);
        self.stats.clients_idle.dec();
        self.tenant.clients.fetch_sub(1, Ordering::Relaxed);
        self.pool.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_login_of_a_tenant_gets_the_same_copy_of_its_id() {
        let stats = Stats::new().unwrap();
        let login = || {
            let verified = crate::tenant::TenantId::parse(
                "aaaaaaaa-0000-0000-0000-000000000001",
                &crate::config::TenantFormat::Uuid,
            )
            .unwrap();
            stats.tenant(&verified).id.clone()
        };
        let (first, second) = (login(), login());
        assert_eq!(first, second);
        assert_eq!(first.as_str().as_ptr(), second.as_str().as_ptr());
    }

    #[test]
    fn client_gauges_follow_state_and_return_to_zero() {
        let stats = Stats::new().unwrap();
        let tenant = crate::tenant::TenantId::parse(
            "aaaaaaaa-0000-0000-0000-000000000001",
            &crate::config::TenantFormat::Uuid,
        )
        .unwrap();
        let t = stats.tenant(&tenant);
        let pool = stats.pool("app").unwrap();
        let registry = Arc::new(crate::clients::ClientRegistry::default());
        {
            let registration = registry.register(crate::clients::NewClient {
                id: 7,
                database: "app".into(),
                user: "u".into(),
                tenant: tenant.clone(),
                peer: "127.0.0.1:5000".parse().unwrap(),
            });
            let mut c = ClientTracker::new(
                Arc::clone(&stats),
                Arc::clone(&t),
                Arc::clone(&pool),
                registration,
            );
            assert_eq!(stats.clients_idle.get(), 1);
            assert_eq!(pool.clients.load(Ordering::Relaxed), 1);
            c.set(ClientState::Waiting);
            assert_eq!(stats.clients_waiting.get(), 1);
            assert_eq!(pool.clients_waiting.load(Ordering::Relaxed), 1);
            assert_eq!(registry.list()[0].state(), ClientState::Waiting);
            c.set(ClientState::Active);
            assert_eq!(
                (stats.clients_active.get(), stats.clients_waiting.get()),
                (1, 0)
            );
            assert_eq!(t.active.load(Ordering::Relaxed), 1);
            assert_eq!(pool.clients_waiting.load(Ordering::Relaxed), 0);
        }
        assert!(
            registry.list().is_empty(),
            "a client that left is still listed"
        );
        assert_eq!(pool.clients.load(Ordering::Relaxed), 0);
        assert_eq!(
            (
                stats.clients_idle.get(),
                stats.clients_active.get(),
                stats.clients_waiting.get()
            ),
            (0, 0, 0)
        );
        assert_eq!(t.active.load(Ordering::Relaxed), 0);
        assert_eq!(t.clients.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn pools_register_their_own_labelled_metrics() {
        let stats = Stats::new().unwrap();
        let a = stats.pool("a").unwrap();
        let _b = stats.pool("b").unwrap();
        // A database added again by a reload gets its old numbers, not a second registration.
        let again = stats.pool("a").unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        a.transaction_done(Duration::from_millis(2));
        let families = stats.registry.gather();
        let xacts = families
            .iter()
            .find(|f| f.name() == "pgtenant_transactions_total")
            .unwrap();
        assert_eq!(xacts.get_metric().len(), 2);
    }
}
