//! Shared integration-test harness: a throwaway PostgreSQL with the example schema, a fresh
//! database per test, the proxy as a child process, and tenant tokens.
//!
//! One cluster per test binary ([`shared_pg`]); each test takes a [`TestDb`] copied from a
//! template database that already holds `config/schema.sql` and `config/demo_data.sql`, so tests
//! never see each other's rows. Tests that stop PostgreSQL or change cluster-wide state use
//! [`dedicated_pg`]. Everything here panics instead of returning errors: it is test code, and a
//! panic message with the PostgreSQL log tail is the most useful failure.
//!
//! The psql helpers block the calling thread. Do not call them while a connection of the same
//! test holds a lock the psql statement needs (a single-threaded runtime would deadlock).
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod drivers;
pub mod pki;
pub mod proxy;
pub mod raw;
pub mod tokens;
pub mod wire;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use pgtenant::cluster::{Cluster, ClusterError, ClusterOptions, PasswordHash, quote_ident};
use tokio_postgres::{Client, GenericClient, NoTls, SimpleQueryMessage};

pub use proxy::{Proxy, ProxyConfig};
pub use tokens::*;

/// Acme Corp in `config/demo_data.sql`.
pub const TENANT_ACME: &str = "aaaaaaaa-0000-0000-0000-000000000001";
/// Globex Inc in `config/demo_data.sql`.
pub const TENANT_GLOBEX: &str = "bbbbbbbb-0000-0000-0000-000000000002";
/// A well-formed tenant id that has no row anywhere.
pub const TENANT_UNKNOWN: &str = "cccccccc-0000-0000-0000-000000000003";
pub const ACME_USER_ID: &str = "aaaaaaaa-1111-0000-0000-000000000001";
pub const GLOBEX_USER_ID: &str = "bbbbbbbb-1111-0000-0000-000000000002";
/// Invoices per tenant in the demo data.
pub const ACME_INVOICES: i64 = 3;
pub const GLOBEX_INVOICES: i64 = 2;
/// The setting every RLS policy of the example schema reads.
pub const TENANT_SETTING: &str = "app.current_tenant_id";
/// Reads [`TENANT_SETTING`] in the current transaction.
pub const CURRENT_TENANT: &str = "SELECT current_setting('app.current_tenant_id')";

/// The application role of `config/schema.sql`.
pub const API_USER: &str = "api_user";
/// The user name clients give the proxy (the proxy ignores it; the token decides).
pub const CLIENT_USER: &str = "app_client";
/// The `[databases.<name>]` entry the proxy config defines and clients connect to.
pub const PROXY_DBNAME: &str = "app";

const TEMPLATE_DB: &str = "pgtenant_template";

/// A running cluster with the template database prepared and `api_user`'s password set.
pub struct Pg {
    cluster: Cluster,
    api_password: String,
    next_db: AtomicUsize,
}

/// The cluster shared by every test of this binary; started on first use.
pub fn shared_pg() -> Arc<Pg> {
    static SHARED: OnceLock<Arc<Pg>> = OnceLock::new();
    SHARED.get_or_init(|| Arc::new(Pg::start())).clone()
}

/// A cluster of one's own, for tests that stop PostgreSQL or change cluster-wide settings.
/// Stopped and removed when the last handle (and its databases) is dropped.
pub fn dedicated_pg() -> Arc<Pg> {
    Arc::new(Pg::start())
}

impl Pg {
    fn start() -> Pg {
        let cluster = match Cluster::start(ClusterOptions::default()) {
            Ok(cluster) => cluster,
            Err(err) => panic!("could not start the test PostgreSQL: {err}"),
        };
        let pg = Pg {
            cluster,
            api_password: format!("api-{}", random_suffix()),
            next_db: AtomicUsize::new(0),
        };
        pg.ok(pg.cluster.psql(&format!("CREATE DATABASE {TEMPLATE_DB}")));
        pg.ok(pg
            .cluster
            .psql_in(TEMPLATE_DB, pgtenant::cluster::EXAMPLE_SCHEMA_SQL));
        pg.ok(pg
            .cluster
            .psql_in(TEMPLATE_DB, pgtenant::cluster::EXAMPLE_DEMO_DATA_SQL));
        pg.ok(pg
            .cluster
            .set_role_password(API_USER, &pg.api_password, PasswordHash::ScramSha256));
        pg
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// `api_user`'s password (the same in every database of this cluster).
    pub fn api_password(&self) -> &str {
        &self.api_password
    }

    /// A new database holding the schema and the demo data.
    pub fn fresh_db(self: &Arc<Self>) -> TestDb {
        let name = format!("test_{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        // A database's own privileges are not copied from its template: the schema's
        // REVOKE TEMPORARY is repeated for the copy.
        self.ok(self.cluster.psql(&format!(
            "CREATE DATABASE {db} TEMPLATE {TEMPLATE_DB};\n\
             REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC;",
            db = quote_ident(&name)
        )));
        TestDb {
            pg: Arc::clone(self),
            name,
            roles: Mutex::new(Vec::new()),
        }
    }

    /// Unwraps a cluster result, panicking with the server log tail.
    pub fn ok<T>(&self, result: Result<T, ClusterError>) -> T {
        match result {
            Ok(value) => value,
            Err(err) => panic!(
                "{err}\n--- PostgreSQL log {} (last lines) ---\n{}",
                self.cluster.log_path().display(),
                self.cluster.log_tail(30)
            ),
        }
    }
}

/// One database of a test, dropped (with its extra roles) when the value is dropped.
pub struct TestDb {
    pg: Arc<Pg>,
    name: String,
    roles: Mutex<Vec<String>>,
}

impl TestDb {
    /// A fresh database on the shared cluster.
    pub fn new() -> TestDb {
        shared_pg().fresh_db()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pg(&self) -> &Arc<Pg> {
        &self.pg
    }

    pub fn cluster(&self) -> &Cluster {
        &self.pg.cluster
    }

    /// Runs SQL as superuser in this database (psql); panics on error.
    pub fn psql(&self, sql: &str) -> String {
        self.pg.ok(self.try_psql(sql))
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, ClusterError> {
        self.pg.cluster.psql_in(&self.name, sql)
    }

    /// Connection settings for `user` straight to PostgreSQL over TCP (bypassing the proxy).
    pub fn direct_config(&self, user: &str, password: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.pg.cluster.host())
            .port(self.pg.cluster.port())
            .user(user)
            .password(password)
            .dbname(&self.name);
        config
    }

    /// A superuser connection straight to PostgreSQL (RLS does not apply to it).
    pub async fn superuser(&self) -> Client {
        let config = self.direct_config(
            pgtenant::cluster::SUPERUSER,
            self.pg.cluster.superuser_password(),
        );
        connect(&config)
            .await
            .unwrap_or_else(|err| panic!("superuser connection to {}: {err}", self.name))
    }

    /// An `api_user` connection straight to PostgreSQL (RLS applies; no tenant set yet).
    pub async fn api_user(&self) -> Client {
        let config = self.direct_config(API_USER, &self.pg.api_password);
        connect(&config)
            .await
            .unwrap_or_else(|err| panic!("api_user connection to {}: {err}", self.name))
    }

    /// Creates a login role `<prefix>_<db>` that is a member of `api_user` (same privileges,
    /// same RLS), with its password stored as `hash`. Dropped with the database.
    /// Use it with [`Cluster::set_hba_method`] to test MD5 or cleartext backend auth without
    /// touching `api_user`, which the other tests share.
    pub fn create_app_role(&self, prefix: &str, password: &str, hash: PasswordHash) -> String {
        let role = format!("{prefix}_{}", self.name);
        self.psql(&format!(
            "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE {API_USER}",
            role = quote_ident(&role)
        ));
        self.lock_roles().push(role.clone());
        self.pg
            .ok(self.pg.cluster.set_role_password(&role, password, hash));
        role
    }

    fn lock_roles(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.roles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for TestDb {
    fn default() -> Self {
        TestDb::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL log {} (last lines) ---\n{}",
                self.pg.cluster.log_path().display(),
                self.pg.cluster.log_tail(40)
            );
        }
        let mut sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE);\n",
            quote_ident(&self.name)
        );
        for role in self.lock_roles().iter() {
            sql.push_str(&format!("DROP ROLE IF EXISTS {};\n", quote_ident(role)));
        }
        // Best effort: the server may be stopped on purpose by the test.
        let _ = self.pg.cluster.psql(&sql);
    }
}

/// Connects with tokio-postgres (no TLS) and drives the connection on a spawned task.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // Errors surface on the client's next call; nothing to do with them here.
        let _ = connection.await;
    });
    Ok(client)
}

/// The tenant the current transaction runs as (extended protocol).
pub async fn current_tenant(client: &impl GenericClient) -> String {
    client.query_one(CURRENT_TENANT, &[]).await.unwrap().get(0)
}

/// How many invoices the client can see (extended protocol).
pub async fn invoice_count(client: &impl GenericClient) -> i64 {
    client
        .query_one("SELECT count(*) FROM invoices", &[])
        .await
        .unwrap()
        .get(0)
}

/// The PostgreSQL backend process serving the client's current statement.
pub async fn backend_pid(client: &impl GenericClient) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The first column of every row of a simple-protocol reply.
pub fn simple_column(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_owned()),
            _ => None,
        })
        .collect()
}

/// The SQLSTATE code of a tokio-postgres error, if the server sent one.
pub fn sqlstate(err: &tokio_postgres::Error) -> Option<&str> {
    err.code().map(|code| code.code())
}

fn random_suffix() -> String {
    use rand::Rng as _;
    let bytes: [u8; 12] = rand::rng().random();
    hex::encode(bytes)
}

/// How long [`eventually`] waits: generous, since a loaded CI machine is slow.
pub const EVENTUALLY_BOUND: std::time::Duration = std::time::Duration::from_secs(30);

/// Polls `check` every 50 ms until it holds; panics naming `what` after
/// [`EVENTUALLY_BOUND`].
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(EVENTUALLY_BOUND, what, check).await;
}

/// [`eventually`] with its own bound, for checks that must fail when something waits for
/// a longer timeout instead.
pub async fn eventually_within<F, Fut>(bound: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached after {bound:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
