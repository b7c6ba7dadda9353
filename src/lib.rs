//! pgtenant: a PostgreSQL transaction pooler that runs every transaction in its client's
//! tenant (RLS) scope.
//!
//! A connection's life, module by module:
//! - [`listener`]: accept loop, `max_client_conn`, pool maintenance, shutdown.
//! - [`protocol`]: framing (5-byte header, size caps), the startup packet, messages we
//!   originate.
//! - [`session::login`]: the tenant token (from the password, a `tenant_token` startup
//!   parameter or `options`), verified by [`auth::token`] into a [`tenant::TenantId`].
//! - [`session`]: the transaction-mode state machine: binds a server per transaction,
//!   injects the tenant (`set_config(…, true)`) ahead of the client's first statement,
//!   swallows the injection's replies ([`session::expect`]), splits multi-statement queries
//!   where a statement ends a transaction ([`session::plan`], built on [`sql`]).
//! - [`pool`]: one bounded pool per upstream database; [`server`]: one upstream connection
//!   (SCRAM/MD5/cleartext login, role check, the injection statement).
//! - [`net`]: a connection's stream, plain TCP or TLS, and the non-blocking send/receive the
//!   session polls; [`tls`]: the rustls configurations of both sides (reloadable).
//! - [`config`]: TOML configuration with PgBouncer's names; [`state`]: what every
//!   connection shares; [`reload`]: SIGHUP and RELOAD apply a changed file, all or nothing.
//! - [`clients`]: the registry of logged-in clients that SHOW CLIENTS, KILL and KILL_CLIENT
//!   use.
//! - [`metrics`] (`/metrics`, `/healthz`, `/readyz`) and [`admin`] (the `pgtenant` console
//!   database): what operators see, both read from [`stats`] through [`admin::snapshot`].
//! - [`cluster`] and [`demo`]: a throwaway local PostgreSQL for `pgtenant demo` and tests.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod buffers;
pub mod cancel;
pub mod clients;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod guard;
pub mod listener;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod protocol;
pub mod reload;
pub mod server;
pub mod session;
pub mod sql;
pub mod state;
pub mod stats;
pub mod tenant;
pub mod tls;
