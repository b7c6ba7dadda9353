//! `pgtenant audit`: connects to an upstream database and reports every way its schema lets one
//! tenant reach another's data.
//!
//! It owns the audit's own connection (tokio-postgres, no TLS, read-only catalog queries), the
//! list of findings and how they are rendered. [`catalog`] reads the facts, [`checks`] judges
//! them, [`report`] prints them. It must never change the database it audits (the fixes are
//! printed, never run), and never print the password it connected with.
//!
//! The pool role audited is the configured database's `user`, also when the audit connects
//! with an administrator's `--dsn`: every privilege is asked for that role. Severities:
//! `critical` (isolation is simply off: superuser, BYPASSRLS, RLS disabled, …), `error` (a
//! tenant can reach other tenants' data, or the schema breaks a rule the isolation relies on),
//! `warning` (a residual channel that the schema alone may not close, e.g. one shared role
//! seeing its own sessions' query text in `pg_stat_activity`). Exit status: 0 when there is no
//! critical or error finding (and, with `--strict`, no warning either), 1 otherwise, 2 when
//! the audit could not run.

pub mod catalog;
pub mod checks;
pub mod report;

use serde::Serialize;
use tokio_postgres::NoTls;

use crate::config::{Config, ConfigError};

pub use checks::Expectations;

/// Why the audit could not run (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no database {name:?} in the configuration (it has: {available})")]
    UnknownDatabase { name: String, available: String },
    #[error("the configuration has {count} databases ({available}): choose one with --database")]
    AmbiguousDatabase { count: usize, available: String },
    #[error("--dsn is not a valid connection string: {}", describe(.0))]
    Dsn(#[source] tokio_postgres::Error),
    #[error("cannot connect to {target}: {}", describe(source))]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("reading {what} failed: {}", describe(source))]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the pool role {0:?} does not exist in this cluster")]
    UnknownRole(String),
}

/// A tokio-postgres error with what PostgreSQL said (its `Display` alone is "db error") or
/// the underlying cause.
fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(err) {
        Some(cause) => format!("{err}: {cause}"),
        None => err.to_string(),
    }
}

/// How bad a finding is; the order is most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem: what is wrong with which object, and the SQL that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier of the rule (`rls_not_forced`, `view_runs_as_owner`, …).
    pub check: &'static str,
    /// `table public.invoices`, `role api_user`, `policy p on public.users`, …
    pub object: String,
    pub problem: String,
    /// SQL to run as an administrator (placeholders in `<…>`; comments after `--`).
    pub fix: String,
}

/// Findings counted by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub critical: usize,
    pub error: usize,
    pub warning: usize,
}

/// Everything `pgtenant audit` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The `[databases.NAME]` entry audited.
    pub database: String,
    /// `current_database()` upstream.
    pub dbname: String,
    pub connected_as: String,
    pub server_version: String,
    pub pool_role: String,
    pub tenant_setting: String,
    pub tenant_column: String,
    /// Tables audited as holding tenant data.
    pub tenant_tables: Vec<String>,
    pub findings: Vec<Finding>,
    pub summary: Summary,
    pub strict: bool,
    /// No critical or error finding (nor, with `strict`, a warning).
    pub passed: bool,
}

/// What to audit and how to connect.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// `[databases.NAME]` to audit; may be omitted when the configuration has exactly one.
    pub database: Option<String>,
    /// Connect with this libpq-style DSN (key=value or URL) instead of the pool's credentials.
    pub dsn: Option<String>,
    pub tenant_column: String,
    /// Warnings fail the audit too.
    pub strict: bool,
}

/// Connects, reads the catalogs and judges them.
pub async fn run(config: &Config, options: &AuditOptions) -> Result<Report, AuditError> {
    let (name, db) = pick_database(config, options.database.as_deref())?;
    let (pg_config, target) = match &options.dsn {
        Some(dsn) => {
            let mut pg: tokio_postgres::Config = dsn.parse().map_err(AuditError::Dsn)?;
            if pg.get_connect_timeout().is_none() {
                pg.connect_timeout(config.general.server_connect_timeout);
            }
            (pg, "the --dsn server".to_owned())
        }
        None => {
            let mut pg = tokio_postgres::Config::new();
            pg.host(&db.host)
                .port(db.port)
                .dbname(&db.dbname)
                .user(&db.user)
                .connect_timeout(config.general.server_connect_timeout);
            if let Some(password) = &db.password {
                pg.password(password.expose());
            }
            let target = format!(
                "{}:{} database {} as {}",
                db.host, db.port, db.dbname, db.user
            );
            (pg, target)
        }
    };
    let mut pg_config = pg_config;
    pg_config.application_name("pgtenant audit");
    let (client, connection) =
        pg_config
            .connect(NoTls)
            .await
            .map_err(|source| AuditError::Connect {
                target: target.clone(),
                source,
            })?;
    let driver = tokio::spawn(async move {
        // An error here also fails the next query, which reports it.
        let _ = connection.await;
    });
    let collected = catalog::collect(&client, &db.user, &options.tenant_column).await;
    drop(client);
    let _ = driver.await;
    let facts = collected?;

    let expect = Expectations {
        tenant_setting: config.general.tenant_setting.clone(),
        tenant_column: options.tenant_column.clone(),
    };
    Ok(build_report(name, &facts, &expect, options.strict))
}

/// Judges `facts` and wraps the findings into a [`Report`].
pub fn build_report(
    database: &str,
    facts: &catalog::Facts,
    expect: &Expectations,
    strict: bool,
) -> Report {
    let findings = checks::run_checks(facts, expect);
    let mut summary = Summary::default();
    for f in &findings {
        match f.severity {
            Severity::Critical => summary.critical += 1,
            Severity::Error => summary.error += 1,
            Severity::Warning => summary.warning += 1,
        }
    }
    let passed = summary.critical == 0 && summary.error == 0 && (!strict || summary.warning == 0);
    let matcher = checks::SettingMatcher::new(&expect.tenant_setting);
    Report {
        database: database.to_owned(),
        dbname: facts.database.clone(),
        connected_as: facts.connected_as.clone(),
        server_version: facts.server_version.clone(),
        pool_role: facts.role.ident.clone(),
        tenant_setting: expect.tenant_setting.clone(),
        tenant_column: expect.tenant_column.clone(),
        tenant_tables: checks::tenant_tables(facts, &matcher)
            .iter()
            .map(|t| t.name.clone())
            .collect(),
        findings,
        summary,
        strict,
        passed,
    }
}

fn pick_database<'c>(
    config: &'c Config,
    name: Option<&str>,
) -> Result<(&'c str, &'c crate::config::DatabaseConfig), AuditError> {
    let available = || {
        config
            .databases
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(name) => config
            .databases
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| AuditError::UnknownDatabase {
                name: name.to_owned(),
                available: available(),
            }),
        None => {
            let mut entries = config.databases.iter();
            match (entries.next(), entries.next()) {
                (Some((k, v)), None) => Ok((k.as_str(), v)),
                _ => Err(AuditError::AmbiguousDatabase {
                    count: config.databases.len(),
                    available: available(),
                }),
            }
        }
    }
}
