//! Configuration: the TOML file, secrets pulled from the environment or files, and validation.
//!
//! This module owns turning `pgtenant.toml` into a [`Config`] that is valid as a whole: every
//! error names the offending key (`databases.app.port: ...`) and says what is wrong, unknown keys
//! are refused, and token key material is checked here so a bad key fails at load, not at the
//! first login. It must never print a secret (password, HMAC secret) in an error or `Debug`
//! output, and it holds no global state: callers own the `Config` (behind an `ArcSwap` for
//! reloads).
//!
//! Key names follow PgBouncer where the meaning is the same (`default_pool_size`,
//! `max_client_conn`, `query_wait_timeout`, ...). Durations are seconds, integer or float, as in
//! PgBouncer.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use regex::Regex;

/// Longest duration accepted anywhere, so later `Instant + Duration` arithmetic cannot overflow.
const MAX_DURATION_SECS: f64 = 10.0 * 365.0 * 24.0 * 3600.0;
/// RFC 7518 §3.2 wants an HMAC key at least as long as the hash; 32 bytes is the floor for HS256.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// PostgreSQL itself refuses messages above 1 GiB.
const MAX_PACKET_SIZE_LIMIT: usize = 1 << 30;
const MIN_PACKET_SIZE_LIMIT: usize = 1024;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How long a client keeps a server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection is lent for one transaction; the tenant is set with `SET LOCAL`
    /// semantics inside it. The only mode accepted today.
    Transaction,
    /// Reserved; refused at load ("not supported yet").
    Session,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// TOML table `[pgtenant]`.
    pub general: General,
    /// TOML table `[auth]`.
    pub auth: AuthConfig,
    /// TOML tables `[databases.NAME]`; at least one.
    pub databases: BTreeMap<String, DatabaseConfig>,
}

/// Process-wide settings, TOML table `[pgtenant]`.
#[derive(Debug, Clone)]
pub struct General {
    pub listen_addr: String,
    pub listen_port: u16,
    pub pool_mode: PoolMode,
    pub default_pool_size: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Duration,
    pub max_client_conn: usize,
    /// `None` = wait forever (0 in TOML).
    pub query_wait_timeout: Option<Duration>,
    pub server_connect_timeout: Duration,
    pub server_idle_timeout: Option<Duration>,
    pub server_lifetime: Option<Duration>,
    pub client_login_timeout: Duration,
    /// On SIGTERM/SIGINT/SHUTDOWN, how long transactions in flight get to finish.
    pub shutdown_timeout: Duration,
    pub idle_transaction_timeout: Option<Duration>,
    pub max_packet_size: usize,
    /// Most clients' prepared statements kept prepared on one server connection; the least
    /// recently used is closed beyond it (PgBouncer: max_prepared_statements).
    pub max_prepared_statements: usize,
    pub tenant_setting: String,
    pub allow_plaintext_token: bool,
    /// 0 = number of cores.
    pub workers: usize,
    pub log_connections: bool,
    pub log_disconnections: bool,
    /// Log line format: human-readable text, or one JSON object per line.
    pub log_format: LogFormat,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None` = no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Tenants with their own series in `/metrics` (the most transactions); the rest are
    /// summed as `tenant="other"`.
    pub top_tenants: usize,
    /// Who may log in to the admin console (`database=pgtenant`) with a password.
    pub admin_users: Vec<AdminUser>,
    /// TLS towards clients and towards PostgreSQL (`client_tls_*`, `server_tls_*`).
    pub tls: TlsSettings,
}

/// `client_tls_sslmode`: whether clients may or must encrypt (PgBouncer's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTlsMode {
    /// SSLRequest is answered `N`; direct TLS is not accepted.
    Disable,
    /// TLS when the client asks for it (`prefer` is read as this, as in PgBouncer).
    Allow,
    /// Plaintext logins are refused with 28000; cancel requests may still come in plaintext.
    Require,
}

impl ClientTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTlsMode::Disable => "disable",
            ClientTlsMode::Allow => "allow",
            ClientTlsMode::Require => "require",
        }
    }
}

/// `server_tls_sslmode`: how pgtenant encrypts its connections to PostgreSQL (libpq's and
/// PgBouncer's names and meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerTlsMode {
    Disable,
    /// Ask for TLS; carry on in plaintext if the server says no. Nothing is verified.
    Prefer,
    /// TLS or no connection; the certificate is not verified.
    Require,
    /// TLS with a certificate chain that leads to `server_tls_ca_file`; any host name.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the configured host.
    VerifyFull,
}

impl ServerTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the mode checks the server's certificate (and so needs a CA file).
    pub fn verifies(self) -> bool {
        matches!(self, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull)
    }
}

/// TLS settings of the `[pgtenant]` table. Paths are resolved against the config file's
/// directory; the files are read by [`crate::tls`] at load and at every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub client_tls_sslmode: ClientTlsMode,
    /// PEM certificate chain presented to clients, leaf first.
    pub client_tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub client_tls_key_file: Option<PathBuf>,
    /// Default for every database; `databases.NAME.server_tls_sslmode` overrides it.
    pub server_tls_sslmode: ServerTlsMode,
    /// PEM CA certificates trusted for PostgreSQL's certificate (verify-ca, verify-full).
    pub server_tls_ca_file: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            client_tls_sslmode: ClientTlsMode::Disable,
            client_tls_cert_file: None,
            client_tls_key_file: None,
            server_tls_sslmode: ServerTlsMode::Prefer,
            server_tls_ca_file: None,
        }
    }
}

/// An admin console login, TOML `[[pgtenant.admin_users]]`.
#[derive(Debug, Clone)]
pub struct AdminUser {
    pub user: String,
    /// `password` | `password_env` | `password_file`, exactly one.
    pub password: Secret,
}

impl Default for General {
    fn default() -> Self {
        General {
            listen_addr: "127.0.0.1".to_owned(),
            listen_port: 6432,
            pool_mode: PoolMode::Transaction,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Duration::from_secs(5),
            max_client_conn: 10_000,
            query_wait_timeout: Some(Duration::from_secs(120)),
            server_connect_timeout: Duration::from_secs(15),
            server_idle_timeout: Some(Duration::from_secs(600)),
            server_lifetime: Some(Duration::from_secs(3600)),
            client_login_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            idle_transaction_timeout: None,
            max_packet_size: 64 * 1024 * 1024,
            max_prepared_statements: 200,
            tenant_setting: "app.current_tenant_id".to_owned(),
            allow_plaintext_token: false,
            workers: 0,
            log_connections: true,
            log_disconnections: true,
            log_format: LogFormat::Text,
            metrics_listen: None,
            top_tenants: 20,
            admin_users: Vec::new(),
            tls: TlsSettings::default(),
        }
    }
}

/// One upstream database, TOML table `[databases.NAME]`; clients select it by NAME.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub host: String,
    pub port: u16,
    /// Defaults to the entry's name.
    pub dbname: String,
    pub user: String,
    /// `password` | `password_env` | `password_file`, at most one.
    pub password: Option<Secret>,
    /// Overrides `pgtenant.default_pool_size`.
    pub pool_size: Option<usize>,
    /// Serve even if the role is a superuser or has BYPASSRLS (which would defeat RLS).
    pub allow_privileged_role: bool,
    /// Seal the tenant in every transaction with an HMAC under a per-connection secret
    /// (needs config/sql/seal.sql installed in the database).
    pub tenant_seal: bool,
    /// Overrides `pgtenant.server_tls_sslmode` for this database.
    pub server_tls_sslmode: Option<ServerTlsMode>,
}

/// A secret string whose `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself. Call sites are the audit trail: keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Tenant token verification settings, TOML table `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Pinned algorithm; the token header's `alg` must equal it.
    pub algorithm: Algorithm,
    /// HS* only: `secret` | `secret_env` | `secret_file`.
    pub secret: Option<Secret>,
    /// Asymmetric algorithms: contents of `public_key_file`.
    pub public_key_pem: Option<String>,
    /// Asymmetric algorithms: contents of `jwks_file` (a JWK Set, keys chosen by `kid`).
    pub jwks: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    /// Dotted path into the claims, e.g. `app_metadata.tenant_id`.
    pub tenant_claim: String,
    pub tenant_format: TenantFormat,
    /// Dotted path to a claim that, when `true`, makes a valid token an admin console login.
    pub admin_claim: Option<String>,
}

/// What a valid tenant id looks like.
#[derive(Debug, Clone)]
pub enum TenantFormat {
    /// Hyphenated UUID, normalised to lowercase.
    Uuid,
    /// A regex the whole id must match (anchored at load: `^(?:PATTERN)$`).
    Pattern(Regex),
}

/// A configuration problem. `Display` names the key and what is wrong; never a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TOML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{key}: unknown key (expected one of: {expected})")]
    UnknownKey { key: String, expected: String },
    #[error("{key}: required key is missing")]
    Missing { key: String },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    #[error("{key}: cannot read {}: {source}", file.display())]
    KeyFile {
        key: String,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::ReadFile { .. } | ConfigError::Syntax { .. } => None,
            ConfigError::UnknownKey { key, .. }
            | ConfigError::Missing { key }
            | ConfigError::Invalid { key, .. }
            | ConfigError::KeyFile { key, .. } => Some(key),
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl Config {
    /// Reads `path`, resolves `*_env` / `*_file` secrets (relative files against the config
    /// file's directory) and validates everything, including token key material.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
        Config::from_toml_str(&text, base_dir)
    }

    /// Parses and validates TOML text; `base_dir` resolves relative `*_file` paths.
    /// `*_env` keys read the process environment.
    pub fn from_toml_str(s: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Config::from_toml_str_with_env(s, base_dir, |name| std::env::var(name).ok())
    }

    /// As [`Config::from_toml_str`], with `env` standing in for the process environment
    /// (tests, or a caller that snapshots the environment once).
    pub fn from_toml_str_with_env(
        s: &str,
        base_dir: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let root: toml::Table = toml::from_str(s).map_err(|e| syntax_error(s, &e))?;
        let sources = SecretSources {
            base_dir,
            env: &env,
        };
        let mut root = Table::open(String::new(), root, &["pgtenant", "auth", "databases"])?;
        let general = root.table("pgtenant")?;
        let auth = root.table("auth")?.ok_or_else(|| missing("auth"))?;
        let databases = root.table("databases")?.ok_or_else(|| {
            ConfigError::invalid(
                "databases",
                "at least one database is required, e.g. [databases.app]",
            )
        })?;

        let general = match general {
            Some(t) => parse_general(Table::open("pgtenant".into(), t, GENERAL_KEYS)?, &sources)?,
            None => General::default(),
        };
        let auth = parse_auth(Table::open("auth".into(), auth, AUTH_KEYS)?, &sources)?;
        let databases = parse_databases(databases, &sources)?;

        let config = Config {
            general,
            auth,
            databases,
        };
        config.validate_across_tables()?;
        // Parse the key material now so a bad PEM or JWKS fails at load with its key name.
        crate::auth::token::TokenVerifier::new(&config.auth)?;
        // Likewise the TLS certificate, key and CA files.
        crate::tls::TlsState::new(&config)?;
        Ok(config)
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.get(name)
    }

    /// The server-connection cap for `db`: its `pool_size`, else `default_pool_size`.
    pub fn pool_size(&self, db: &DatabaseConfig) -> usize {
        db.pool_size.unwrap_or(self.general.default_pool_size)
    }

    /// The TLS mode of connections to database `name`: its own, else the default.
    pub fn server_tls_mode(&self, db: &DatabaseConfig) -> ServerTlsMode {
        db.server_tls_sslmode
            .unwrap_or(self.general.tls.server_tls_sslmode)
    }

    fn validate_across_tables(&self) -> Result<(), ConfigError> {
        let tls = &self.general.tls;
        if tls.server_tls_ca_file.is_none() {
            let needs_ca = std::iter::once((
                "pgtenant.server_tls_sslmode".to_owned(),
                tls.server_tls_sslmode,
            ))
            .chain(self.databases.iter().filter_map(|(name, db)| {
                db.server_tls_sslmode
                    .map(|mode| (format!("{}.server_tls_sslmode", db_path(name)), mode))
            }))
            .find(|(_, mode)| mode.verifies());
            if let Some((key, mode)) = needs_ca {
                return Err(ConfigError::invalid(
                    "pgtenant.server_tls_ca_file",
                    format!(
                        "required when {key} = {:?}: the CA that signed PostgreSQL's certificate",
                        mode.as_str()
                    ),
                ));
            }
        }
        let min = self.general.min_pool_size;
        if min > self.general.default_pool_size {
            return Err(ConfigError::invalid(
                "pgtenant.min_pool_size",
                format!(
                    "{min} is larger than pgtenant.default_pool_size ({})",
                    self.general.default_pool_size
                ),
            ));
        }
        for (name, db) in &self.databases {
            if let Some(size) = db.pool_size
                && min > size
            {
                return Err(ConfigError::invalid(
                    format!("{}.pool_size", db_path(name)),
                    format!("{size} is smaller than pgtenant.min_pool_size ({min})"),
                ));
            }
        }
        Ok(())
    }
}

fn missing(key: &str) -> ConfigError {
    ConfigError::Missing {
        key: key.to_owned(),
    }
}

/// Reports position and message only: toml's own `Display` quotes the source line, which could
/// be a line holding a secret.
fn syntax_error(source: &str, err: &toml::de::Error) -> ConfigError {
    let offset = err.span().map(|s| s.start).unwrap_or(0).min(source.len());
    let before = source.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Syntax {
        line,
        column,
        message: err.message().trim_end().to_owned(),
    }
}

/// Renders a database entry's path, quoting names that are not TOML bare keys.
fn db_path(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        format!("databases.{name}")
    } else {
        format!("databases.{name:?}")
    }
}

/// Where `*_env` and `*_file` secrets come from.
struct SecretSources<'a> {
    base_dir: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
}

/// A TOML table consumed key by key. Unknown keys are refused when it is opened, before any
/// value is judged, so a misspelt key is reported as such rather than as a missing one.
struct Table {
    path: String,
    entries: toml::Table,
}

impl Table {
    fn open(
        path: String,
        entries: toml::Table,
        allowed: &'static [&'static str],
    ) -> Result<Table, ConfigError> {
        let table = Table { path, entries };
        if let Some(extra) = table
            .entries
            .keys()
            .find(|k| !allowed.contains(&k.as_str()))
        {
            return Err(ConfigError::UnknownKey {
                key: table.key(extra),
                expected: allowed.join(", "),
            });
        }
        Ok(table)
    }

    fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn take(&mut self, name: &'static str) -> Option<toml::Value> {
        self.entries.remove(name)
    }

    /// Every allowed key must be consumed by its parser; a leftover means a parser forgot one.
    fn done(self) {
        debug_assert!(
            self.entries.is_empty(),
            "{}: keys allowed but never read: {:?}",
            self.path,
            self.entries.keys().collect::<Vec<_>>()
        );
    }

    fn wrong_type(&self, name: &str, expected: &str, found: &toml::Value) -> ConfigError {
        ConfigError::invalid(
            self.key(name),
            format!("expected {expected}, found {}", type_name(found)),
        )
    }

    fn table(&mut self, name: &'static str) -> Result<Option<toml::Table>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(toml::Value::Table(t)) => Ok(Some(t)),
            Some(other) => Err(self.wrong_type(name, "a table", &other)),
        }
    }

    fn string(&mut self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match self.take(name) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(name, "a string", &other)),
        }
    }

    fn non_empty_string(&mut self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match self.string(name)? {
            Some(s) if s.trim().is_empty() => {
                Err(ConfigError::invalid(self.key(name), "must not be empty"))
            }
            other => Ok(other),
        }
    }

    fn bool(&mut self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.take(name) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(b),
            Some(other) => Err(self.wrong_type(name, "true or false", &other)),
        }
    }

    /// An integer in `min..=max`; the error states the range.
    fn integer(
        &mut self,
        name: &'static str,
        min: i64,
        max: i64,
    ) -> Result<Option<i64>, ConfigError> {
        let wanted = format!("an integer {min}-{max}");
        match self.take(name) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if (min..=max).contains(&i) => Ok(Some(i)),
            Some(toml::Value::Integer(i)) => Err(ConfigError::invalid(
                self.key(name),
                format!("expected {wanted}, found {i}"),
            )),
            Some(other) => Err(self.wrong_type(name, &wanted, &other)),
        }
    }

    fn usize(
        &mut self,
        name: &'static str,
        min: usize,
        max: usize,
        default: usize,
    ) -> Result<usize, ConfigError> {
        let min_i = i64::try_from(min).unwrap_or(i64::MAX);
        let max_i = i64::try_from(max).unwrap_or(i64::MAX);
        match self.integer(name, min_i, max_i)? {
            // In range of two usizes, so the conversion cannot fail; keep the default if it did.
            Some(i) => Ok(usize::try_from(i).unwrap_or(default)),
            None => Ok(default),
        }
    }

    fn port(&mut self, name: &'static str, min: u16, default: u16) -> Result<u16, ConfigError> {
        match self.integer(name, i64::from(min), 65535)? {
            Some(i) => Ok(u16::try_from(i).unwrap_or(default)),
            None => Ok(default),
        }
    }

    /// Seconds, integer or float, `>= 0`.
    fn duration(&mut self, name: &'static str) -> Result<Option<Duration>, ConfigError> {
        let wanted = "a number of seconds (integer or float) >= 0";
        let secs = match self.take(name) {
            None => return Ok(None),
            Some(toml::Value::Integer(i)) => i as f64,
            Some(toml::Value::Float(f)) => f,
            Some(other) => return Err(self.wrong_type(name, wanted, &other)),
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(ConfigError::invalid(
                self.key(name),
                format!("expected {wanted}, found {secs}"),
            ));
        }
        if secs > MAX_DURATION_SECS {
            return Err(ConfigError::invalid(
                self.key(name),
                format!("{secs} seconds is more than ten years"),
            ));
        }
        Ok(Some(Duration::from_secs_f64(secs)))
    }

    fn duration_or(
        &mut self,
        name: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        Ok(self.duration(name)?.unwrap_or(default))
    }

    /// Like `duration_or`, but must be more than zero (a zero timeout would fail everything).
    fn positive_duration_or(
        &mut self,
        name: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration_or(name, default)?;
        if d.is_zero() {
            return Err(ConfigError::invalid(
                self.key(name),
                "must be more than 0 seconds",
            ));
        }
        Ok(d)
    }

    /// A duration where 0 means "never": `None`.
    fn optional_duration_or(
        &mut self,
        name: &'static str,
        default: Option<Duration>,
    ) -> Result<Option<Duration>, ConfigError> {
        match self.duration(name)? {
            None => Ok(default),
            Some(d) if d.is_zero() => Ok(None),
            Some(d) => Ok(Some(d)),
        }
    }

    /// `NAME` (literal), `NAME_env` (environment variable name) or `NAME_file` (path; trailing
    /// newlines trimmed): at most one.
    fn secret(
        &mut self,
        name: &'static str,
        name_env: &'static str,
        name_file: &'static str,
        sources: &SecretSources<'_>,
    ) -> Result<Option<Secret>, ConfigError> {
        // A literal secret's wrong type is reported without echoing anything.
        let literal = self.string(name)?;
        let env_name = self.non_empty_string(name_env)?;
        let file = self.non_empty_string(name_file)?;
        let given: Vec<&str> = [
            literal.as_ref().map(|_| name),
            env_name.as_ref().map(|_| name_env),
            file.as_ref().map(|_| name_file),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            return Err(ConfigError::invalid(
                self.key(given[1]),
                format!(
                    "conflicts with {}: give the secret in only one of {name}, {name_env}, {name_file}",
                    self.key(given[0])
                ),
            ));
        }
        let (value, key) = if let Some(v) = literal {
            (v, self.key(name))
        } else if let Some(var) = env_name {
            let key = self.key(name_env);
            match (sources.env)(&var) {
                Some(v) => (v, key),
                None => {
                    return Err(ConfigError::invalid(
                        key,
                        format!("environment variable {var} is not set (or is not UTF-8)"),
                    ));
                }
            }
        } else if let Some(file) = file {
            let key = self.key(name_file);
            let path = sources.base_dir.join(&file);
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::KeyFile {
                key: key.clone(),
                file: path.clone(),
                source,
            })?;
            (text.trim_end_matches(['\n', '\r']).to_owned(), key)
        } else {
            return Ok(None);
        };
        if value.is_empty() {
            return Err(ConfigError::invalid(key, "the secret is empty"));
        }
        Ok(Some(Secret(value)))
    }

    /// A file path (relative to the config directory), not read here.
    fn path(
        &mut self,
        name: &'static str,
        sources: &SecretSources<'_>,
    ) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self
            .non_empty_string(name)?
            .map(|file| sources.base_dir.join(file)))
    }

    /// Reads the file named by `name` (relative to the config directory).
    fn file_contents(
        &mut self,
        name: &'static str,
        sources: &SecretSources<'_>,
    ) -> Result<Option<String>, ConfigError> {
        let Some(file) = self.non_empty_string(name)? else {
            return Ok(None);
        };
        let path = sources.base_dir.join(file);
        std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|source| ConfigError::KeyFile {
                key: self.key(name),
                file: path,
                source,
            })
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

const GENERAL_KEYS: &[&str] = &[
    "listen_addr",
    "listen_port",
    "pool_mode",
    "default_pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "reserve_pool_timeout",
    "max_client_conn",
    "query_wait_timeout",
    "server_connect_timeout",
    "server_idle_timeout",
    "server_lifetime",
    "client_login_timeout",
    "shutdown_timeout",
    "idle_transaction_timeout",
    "max_packet_size",
    "max_prepared_statements",
    "tenant_setting",
    "allow_plaintext_token",
    "workers",
    "log_connections",
    "log_disconnections",
    "log_format",
    "metrics_listen",
    "top_tenants",
    "admin_users",
    "client_tls_sslmode",
    "client_tls_cert_file",
    "client_tls_key_file",
    "server_tls_sslmode",
    "server_tls_ca_file",
];

const ADMIN_USER_KEYS: &[&str] = &["user", "password", "password_env", "password_file"];

const AUTH_KEYS: &[&str] = &[
    "algorithm",
    "secret",
    "secret_env",
    "secret_file",
    "public_key_file",
    "jwks_file",
    "issuer",
    "audience",
    "leeway",
    "tenant_claim",
    "tenant_format",
    "tenant_pattern",
    "admin_claim",
];

const DATABASE_KEYS: &[&str] = &[
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "password_env",
    "password_file",
    "pool_size",
    "allow_privileged_role",
    "tenant_seal",
    "server_tls_sslmode",
];

fn parse_general(mut t: Table, sources: &SecretSources<'_>) -> Result<General, ConfigError> {
    let d = General::default();
    let listen_addr = t.non_empty_string("listen_addr")?.unwrap_or(d.listen_addr);
    check_listen_addr(&listen_addr).map_err(|p| ConfigError::invalid(t.key("listen_addr"), p))?;
    let listen_port = t.port("listen_port", 0, d.listen_port)?;
    let pool_mode = match t.string("pool_mode")?.as_deref() {
        None | Some("transaction") => PoolMode::Transaction,
        Some("statement") => {
            return Err(ConfigError::invalid(
                t.key("pool_mode"),
                "\"statement\" is not supported: the tenant is set with SET LOCAL, which lives \
                 for one transaction; statement pooling hands the connection to another client \
                 after each statement and would drop (or leak) the tenant. Use \"transaction\".",
            ));
        }
        Some("session") => {
            return Err(ConfigError::invalid(
                t.key("pool_mode"),
                "\"session\" is not supported yet; use \"transaction\"",
            ));
        }
        Some(other) => {
            return Err(ConfigError::invalid(
                t.key("pool_mode"),
                format!("unknown mode {other:?}; expected \"transaction\""),
            ));
        }
    };
    let default_pool_size = t.usize("default_pool_size", 1, 10_000, d.default_pool_size)?;
    let min_pool_size = t.usize("min_pool_size", 0, 10_000, d.min_pool_size)?;
    let reserve_pool_size = t.usize("reserve_pool_size", 0, 10_000, d.reserve_pool_size)?;
    let reserve_pool_timeout = t.duration_or("reserve_pool_timeout", d.reserve_pool_timeout)?;
    let max_client_conn = t.usize("max_client_conn", 1, 1_000_000, d.max_client_conn)?;
    let query_wait_timeout = t.optional_duration_or("query_wait_timeout", d.query_wait_timeout)?;
    let server_connect_timeout =
        t.positive_duration_or("server_connect_timeout", d.server_connect_timeout)?;
    let server_idle_timeout =
        t.optional_duration_or("server_idle_timeout", d.server_idle_timeout)?;
    let server_lifetime = t.optional_duration_or("server_lifetime", d.server_lifetime)?;
    let client_login_timeout =
        t.positive_duration_or("client_login_timeout", d.client_login_timeout)?;
    let shutdown_timeout = t.duration_or("shutdown_timeout", d.shutdown_timeout)?;
    let idle_transaction_timeout =
        t.optional_duration_or("idle_transaction_timeout", d.idle_transaction_timeout)?;
    let max_packet_size = t.usize(
        "max_packet_size",
        MIN_PACKET_SIZE_LIMIT,
        MAX_PACKET_SIZE_LIMIT,
        d.max_packet_size,
    )?;
    let max_prepared_statements = t.usize(
        "max_prepared_statements",
        1,
        100_000,
        d.max_prepared_statements,
    )?;
    let tenant_setting = t
        .non_empty_string("tenant_setting")?
        .unwrap_or(d.tenant_setting);
    check_custom_guc_name(&tenant_setting)
        .map_err(|p| ConfigError::invalid(t.key("tenant_setting"), p))?;
    let allow_plaintext_token = t.bool("allow_plaintext_token", d.allow_plaintext_token)?;
    let workers = t.usize("workers", 0, 1024, d.workers)?;
    let log_connections = t.bool("log_connections", d.log_connections)?;
    let log_disconnections = t.bool("log_disconnections", d.log_disconnections)?;
    let log_format = match t.string("log_format")?.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(ConfigError::invalid(
                t.key("log_format"),
                format!("unknown format {other:?}; expected \"text\" or \"json\""),
            ));
        }
    };
    let metrics_listen = match t.non_empty_string("metrics_listen")? {
        None => None,
        Some(addr) => Some(addr.parse::<SocketAddr>().map_err(|_| {
            ConfigError::invalid(
                t.key("metrics_listen"),
                format!(
                    "{addr:?} is not an address and port; expected e.g. \"127.0.0.1:9930\" or \"[::1]:9930\""
                ),
            )
        })?),
    };
    let top_tenants = t.usize("top_tenants", 0, 10_000, d.top_tenants)?;
    let admin_users = parse_admin_users(&mut t, sources)?;
    let tls = parse_tls(&mut t, sources)?;
    t.done();
    Ok(General {
        listen_addr,
        listen_port,
        pool_mode,
        default_pool_size,
        min_pool_size,
        reserve_pool_size,
        reserve_pool_timeout,
        max_client_conn,
        query_wait_timeout,
        server_connect_timeout,
        server_idle_timeout,
        server_lifetime,
        client_login_timeout,
        shutdown_timeout,
        idle_transaction_timeout,
        max_packet_size,
        max_prepared_statements,
        tenant_setting,
        allow_plaintext_token,
        workers,
        log_connections,
        log_disconnections,
        log_format,
        metrics_listen,
        top_tenants,
        admin_users,
        tls,
    })
}

/// The `client_tls_*` and `server_tls_*` keys of `[pgtenant]`: modes, and the files each
/// mode needs (their contents are checked by [`crate::tls`]).
fn parse_tls(t: &mut Table, sources: &SecretSources<'_>) -> Result<TlsSettings, ConfigError> {
    let d = TlsSettings::default();
    let client_tls_sslmode = match t.string("client_tls_sslmode")?.as_deref() {
        None => d.client_tls_sslmode,
        Some("disable") => ClientTlsMode::Disable,
        Some("allow" | "prefer") => ClientTlsMode::Allow,
        Some("require") => ClientTlsMode::Require,
        Some("verify-ca" | "verify-full") => {
            return Err(ConfigError::invalid(
                t.key("client_tls_sslmode"),
                "client certificates are not supported (clients authenticate with their tenant \
                 token); use \"require\"",
            ));
        }
        Some(other) => {
            return Err(ConfigError::invalid(
                t.key("client_tls_sslmode"),
                format!("unknown mode {other:?}; expected \"disable\", \"allow\" or \"require\""),
            ));
        }
    };
    let client_tls_cert_file = t.path("client_tls_cert_file", sources)?;
    let client_tls_key_file = t.path("client_tls_key_file", sources)?;
    if client_tls_sslmode != ClientTlsMode::Disable {
        for (file, name) in [
            (&client_tls_cert_file, "client_tls_cert_file"),
            (&client_tls_key_file, "client_tls_key_file"),
        ] {
            if file.is_none() {
                return Err(ConfigError::invalid(
                    t.key(name),
                    format!(
                        "required when client_tls_sslmode = {:?}",
                        client_tls_sslmode.as_str()
                    ),
                ));
            }
        }
    }
    let server_tls_sslmode = match t.string("server_tls_sslmode")? {
        None => d.server_tls_sslmode,
        Some(mode) => server_tls_mode(&mode)
            .map_err(|p| ConfigError::invalid(t.key("server_tls_sslmode"), p))?,
    };
    let server_tls_ca_file = t.path("server_tls_ca_file", sources)?;
    Ok(TlsSettings {
        client_tls_sslmode,
        client_tls_cert_file,
        client_tls_key_file,
        server_tls_sslmode,
        server_tls_ca_file,
    })
}

fn server_tls_mode(name: &str) -> Result<ServerTlsMode, String> {
    match name {
        "disable" => Ok(ServerTlsMode::Disable),
        "prefer" => Ok(ServerTlsMode::Prefer),
        "require" => Ok(ServerTlsMode::Require),
        "verify-ca" => Ok(ServerTlsMode::VerifyCa),
        "verify-full" => Ok(ServerTlsMode::VerifyFull),
        "allow" => Err(
            "\"allow\" (plaintext first, TLS only if the server insists) is not supported; \
             use \"prefer\""
                .to_owned(),
        ),
        other => Err(format!(
            "unknown mode {other:?}; expected \"disable\", \"prefer\", \"require\", \
             \"verify-ca\" or \"verify-full\""
        )),
    }
}

/// `admin_users = [{ user = "...", password_env = "..." }, ...]`: unique, non-empty names,
/// each with exactly one password source.
fn parse_admin_users(
    t: &mut Table,
    sources: &SecretSources<'_>,
) -> Result<Vec<AdminUser>, ConfigError> {
    let key = t.key("admin_users");
    let entries = match t.take("admin_users") {
        None => return Ok(Vec::new()),
        Some(toml::Value::Array(a)) => a,
        Some(other) => return Err(t.wrong_type("admin_users", "an array of tables", &other)),
    };
    let mut users: Vec<AdminUser> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let path = format!("{key}[{i}]");
        let toml::Value::Table(entry) = entry else {
            return Err(ConfigError::invalid(
                path,
                format!(
                    "expected a table like {{ user = \"admin\", password_env = \"VAR\" }}, found {}",
                    type_name(&entry)
                ),
            ));
        };
        let mut e = Table::open(path, entry, ADMIN_USER_KEYS)?;
        let user = e
            .non_empty_string("user")?
            .ok_or_else(|| missing(&e.key("user")))?;
        if users.iter().any(|u| u.user == user) {
            return Err(ConfigError::invalid(
                e.key("user"),
                format!("admin user {user:?} is listed twice"),
            ));
        }
        let password = e
            .secret("password", "password_env", "password_file", sources)?
            .ok_or_else(|| {
                ConfigError::invalid(
                    e.key("password"),
                    "an admin user needs one of password, password_env, password_file",
                )
            })?;
        e.done();
        users.push(AdminUser { user, password });
    }
    Ok(users)
}

fn check_listen_addr(addr: &str) -> Result<(), String> {
    if addr == "*" {
        return Err(
            "\"*\" is not supported; use \"0.0.0.0\" (all IPv4) or \"::\" (all IPv6)".into(),
        );
    }
    let host_name = addr
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if addr.parse::<IpAddr>().is_ok() || host_name {
        Ok(())
    } else {
        Err("expected an IP address or host name".into())
    }
}

/// PostgreSQL custom settings are `prefix.name`; we allow exactly two identifier parts so the
/// name is safe to splice into `set_config('<name>', $1, true)` and unambiguous in logs.
fn check_custom_guc_name(name: &str) -> Result<(), String> {
    fn identifier(part: &str) -> bool {
        let mut chars = part.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    }
    match name.split_once('.') {
        Some((prefix, rest)) if identifier(prefix) && identifier(rest) => Ok(()),
        _ => Err(format!(
            "{name:?} is not a custom setting name: expected two identifiers joined by a dot, \
             like \"app.current_tenant_id\" (letters, digits, _ and $; not starting with a digit)"
        )),
    }
}

fn parse_auth(mut t: Table, sources: &SecretSources<'_>) -> Result<AuthConfig, ConfigError> {
    let algorithm_key = t.key("algorithm");
    let algorithm = match t.string("algorithm")? {
        None => return Err(missing(&algorithm_key)),
        Some(name) => name.parse::<Algorithm>().map_err(|_| {
            ConfigError::invalid(
                &algorithm_key,
                format!(
                    "unknown algorithm {name:?}; expected one of HS256, HS384, HS512, RS256, \
                     RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
                ),
            )
        })?,
    };
    let secret = t.secret("secret", "secret_env", "secret_file", sources)?;
    let public_key_pem = t.file_contents("public_key_file", sources)?;
    let jwks = t.file_contents("jwks_file", sources)?;
    let issuer = t.non_empty_string("issuer")?;
    let audience = t.non_empty_string("audience")?;
    let leeway = t.duration_or("leeway", Duration::from_secs(30))?;
    let tenant_claim = t
        .non_empty_string("tenant_claim")?
        .unwrap_or_else(|| "tenant_id".to_owned());
    if tenant_claim.split('.').any(str::is_empty) {
        return Err(ConfigError::invalid(
            t.key("tenant_claim"),
            format!(
                "{tenant_claim:?} has an empty path segment; expected e.g. \"app_metadata.tenant_id\""
            ),
        ));
    }
    let admin_claim = t.non_empty_string("admin_claim")?;
    if let Some(claim) = &admin_claim
        && claim.split('.').any(str::is_empty)
    {
        return Err(ConfigError::invalid(
            t.key("admin_claim"),
            format!("{claim:?} has an empty path segment; expected e.g. \"pgtenant_admin\""),
        ));
    }
    let format_key = t.key("tenant_format");
    let pattern_key = t.key("tenant_pattern");
    let format_name = t.string("tenant_format")?;
    let pattern = t.non_empty_string("tenant_pattern")?;
    let tenant_format = match (format_name.as_deref(), pattern) {
        (None | Some("uuid"), None) => TenantFormat::Uuid,
        (Some("uuid"), Some(_)) => {
            return Err(ConfigError::invalid(
                pattern_key,
                "conflicts with tenant_format = \"uuid\"; remove one of them",
            ));
        }
        (None | Some("pattern"), Some(p)) => {
            let anchored = format!("^(?:{p})$");
            TenantFormat::Pattern(Regex::new(&anchored).map_err(|e| {
                ConfigError::invalid(&pattern_key, format!("not a valid regex: {e}"))
            })?)
        }
        (Some("pattern"), None) => {
            return Err(ConfigError::invalid(
                pattern_key,
                "required when tenant_format = \"pattern\"",
            ));
        }
        (Some(other), _) => {
            return Err(ConfigError::invalid(
                format_key,
                format!("unknown format {other:?}; expected \"uuid\" or \"pattern\""),
            ));
        }
    };

    match algorithm.family() {
        AlgorithmFamily::Hmac => {
            let Some(s) = &secret else {
                return Err(ConfigError::invalid(
                    t.key("secret"),
                    format!(
                        "{algorithm:?} needs a shared secret: set secret, secret_env or secret_file"
                    ),
                ));
            };
            if s.expose().len() < MIN_HMAC_SECRET_BYTES {
                return Err(ConfigError::invalid(
                    t.key("secret"),
                    format!(
                        "an {algorithm:?} secret must be at least {MIN_HMAC_SECRET_BYTES} bytes"
                    ),
                ));
            }
            for (present, key) in [
                (public_key_pem.is_some(), "public_key_file"),
                (jwks.is_some(), "jwks_file"),
            ] {
                if present {
                    return Err(ConfigError::invalid(
                        t.key(key),
                        format!(
                            "not used with {algorithm:?}, which verifies with auth.secret; remove it"
                        ),
                    ));
                }
            }
        }
        _ => {
            if secret.is_some() {
                return Err(ConfigError::invalid(
                    t.key("secret"),
                    format!(
                        "not used with {algorithm:?}, which verifies with a public key \
                         (public_key_file or jwks_file); remove it"
                    ),
                ));
            }
            match (&public_key_pem, &jwks) {
                (None, None) => {
                    return Err(ConfigError::invalid(
                        t.key("public_key_file"),
                        format!("{algorithm:?} needs public_key_file or jwks_file"),
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(ConfigError::invalid(
                        t.key("jwks_file"),
                        "conflicts with public_key_file; give only one",
                    ));
                }
                _ => {}
            }
        }
    }
    t.done();
    Ok(AuthConfig {
        algorithm,
        secret,
        public_key_pem,
        jwks,
        issuer,
        audience,
        leeway,
        tenant_claim,
        tenant_format,
        admin_claim,
    })
}

fn parse_databases(
    entries: toml::Table,
    sources: &SecretSources<'_>,
) -> Result<BTreeMap<String, DatabaseConfig>, ConfigError> {
    if entries.is_empty() {
        return Err(ConfigError::invalid(
            "databases",
            "at least one database is required, e.g. [databases.app]",
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in entries {
        let path = db_path(&name);
        if name.is_empty() {
            return Err(ConfigError::invalid(
                path,
                "database name must not be empty",
            ));
        }
        let toml::Value::Table(entry) = value else {
            return Err(ConfigError::invalid(
                path,
                format!("expected a table, found {}", type_name(&value)),
            ));
        };
        let db = parse_database(&name, Table::open(path, entry, DATABASE_KEYS)?, sources)?;
        out.insert(name, db);
    }
    Ok(out)
}

fn parse_database(
    name: &str,
    mut t: Table,
    sources: &SecretSources<'_>,
) -> Result<DatabaseConfig, ConfigError> {
    let host = t
        .non_empty_string("host")?
        .ok_or_else(|| missing(&t.key("host")))?;
    let port = t.port("port", 1, 5432)?;
    let dbname = t
        .non_empty_string("dbname")?
        .unwrap_or_else(|| name.to_owned());
    let user = t
        .non_empty_string("user")?
        .ok_or_else(|| missing(&t.key("user")))?;
    let password = t.secret("password", "password_env", "password_file", sources)?;
    let pool_size = t
        .integer("pool_size", 1, 10_000)?
        .map(|n| usize::try_from(n).unwrap_or(1));
    let allow_privileged_role = t.bool("allow_privileged_role", false)?;
    let tenant_seal = t.bool("tenant_seal", false)?;
    let server_tls_sslmode = match t.string("server_tls_sslmode")? {
        None => None,
        Some(mode) => Some(
            server_tls_mode(&mode)
                .map_err(|p| ConfigError::invalid(t.key("server_tls_sslmode"), p))?,
        ),
    };
    t.done();
    Ok(DatabaseConfig {
        host,
        port,
        dbname,
        user,
        password,
        pool_size,
        allow_privileged_role,
        tenant_seal,
        server_tls_sslmode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str_with_env(toml, Path::new("."), |_| None)
    }

    fn minimal(extra_general: &str) -> String {
        format!(
            "[pgtenant]\n{extra_general}\n[auth]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n\
             [databases.app]\nhost = \"localhost\"\nuser = \"api_user\"\n"
        )
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = load(&minimal("")).unwrap();
        let g = &c.general;
        assert_eq!(g.listen_port, 6432);
        assert_eq!(g.pool_mode, PoolMode::Transaction);
        assert_eq!(g.default_pool_size, 20);
        assert_eq!(g.query_wait_timeout, Some(Duration::from_secs(120)));
        assert_eq!(g.idle_transaction_timeout, None);
        assert_eq!(g.tenant_setting, "app.current_tenant_id");
        let db = c.database("app").unwrap();
        assert_eq!((db.port, db.dbname.as_str()), (5432, "app"));
        assert_eq!(c.pool_size(db), 20);
        assert_eq!(c.auth.leeway, Duration::from_secs(30));
        assert!(matches!(c.auth.tenant_format, TenantFormat::Uuid));
    }

    #[test]
    fn zero_timeouts_mean_never_and_floats_are_seconds() {
        let c = load(&minimal(
            "query_wait_timeout = 0\nserver_lifetime = 0\nreserve_pool_timeout = 0.25",
        ))
        .unwrap();
        assert_eq!(c.general.query_wait_timeout, None);
        assert_eq!(c.general.server_lifetime, None);
        assert_eq!(c.general.reserve_pool_timeout, Duration::from_millis(250));
    }

    #[test]
    fn tenant_setting_must_be_a_two_part_custom_name() {
        for bad in ["current_tenant", "app.x.y", "1app.t", "app.t'; --", "app."] {
            let err = load(&minimal(&format!("tenant_setting = {bad:?}"))).unwrap_err();
            assert_eq!(err.key(), Some("pgtenant.tenant_setting"), "{bad}");
        }
        assert!(load(&minimal("tenant_setting = \"my_app.tenant$id\"")).is_ok());
    }

    #[test]
    fn secret_never_appears_in_debug_output() {
        let c = load(&minimal("")).unwrap();
        assert!(!format!("{c:?}").contains(SECRET));
    }

    #[test]
    fn operator_keys_default_to_off_and_twenty_tenants() {
        let g = load(&minimal("")).unwrap().general;
        assert_eq!(g.metrics_listen, None);
        assert_eq!(g.top_tenants, 20);
        assert!(g.admin_users.is_empty());
        assert_eq!(load(&minimal("")).unwrap().auth.admin_claim, None);
    }

    #[test]
    fn metrics_listen_must_be_an_address_and_port() {
        let c = load(&minimal("metrics_listen = \"127.0.0.1:9930\"")).unwrap();
        assert_eq!(
            c.general.metrics_listen,
            Some("127.0.0.1:9930".parse().unwrap())
        );
        for bad in ["127.0.0.1", "localhost:9930", ":9930", "9930"] {
            let err = load(&minimal(&format!("metrics_listen = {bad:?}"))).unwrap_err();
            assert_eq!(err.key(), Some("pgtenant.metrics_listen"), "{bad}");
        }
    }

    #[test]
    fn admin_users_take_a_password_from_one_source_and_never_show_it() {
        let toml = minimal(
            "admin_users = [{ user = \"ops\", password = \"hunter2hunter2\" }, \
             { user = \"ci\", password_env = \"CI_ADMIN_PW\" }]",
        );
        let c = Config::from_toml_str_with_env(&toml, Path::new("."), |name| {
            (name == "CI_ADMIN_PW").then(|| "from-env".to_owned())
        })
        .unwrap();
        let users = &c.general.admin_users;
        assert_eq!(users.len(), 2);
        assert_eq!(
            (users[0].user.as_str(), users[0].password.expose()),
            ("ops", "hunter2hunter2")
        );
        assert_eq!(users[1].password.expose(), "from-env");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn admin_users_without_password_or_listed_twice_are_refused() {
        let cases = [
            (
                "admin_users = [{ user = \"ops\" }]",
                "pgtenant.admin_users[0].password",
            ),
            (
                "admin_users = [{ user = \"ops\", password = \"a\" }, { user = \"ops\", password = \"b\" }]",
                "pgtenant.admin_users[1].user",
            ),
            (
                "admin_users = [{ password = \"a\" }]",
                "pgtenant.admin_users[0].user",
            ),
            (
                "admin_users = [{ user = \"ops\", password = \"a\", role = \"x\" }]",
                "pgtenant.admin_users[0].role",
            ),
            ("admin_users = \"ops\"", "pgtenant.admin_users"),
        ];
        for (line, key) in cases {
            let err = load(&minimal(line)).unwrap_err();
            assert_eq!(err.key(), Some(key), "{line}: {err}");
            assert!(!err.to_string().contains("\"a\""), "{err}");
        }
    }

    #[test]
    fn top_tenants_is_bounded_and_admin_claim_is_a_claim_path() {
        assert_eq!(
            load(&minimal("top_tenants = 0"))
                .unwrap()
                .general
                .top_tenants,
            0
        );
        let err = load(&minimal("top_tenants = 20000")).unwrap_err();
        assert_eq!(err.key(), Some("pgtenant.top_tenants"));
        let with_claim = |claim: &str| {
            load(&format!(
                "[auth]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\nadmin_claim = {claim:?}\n\
                 [databases.app]\nhost = \"localhost\"\nuser = \"api_user\"\n"
            ))
        };
        assert_eq!(
            with_claim("roles.pgtenant_admin")
                .unwrap()
                .auth
                .admin_claim
                .as_deref(),
            Some("roles.pgtenant_admin")
        );
        assert_eq!(
            with_claim("roles..admin").unwrap_err().key(),
            Some("auth.admin_claim")
        );
    }

    #[test]
    fn syntax_errors_do_not_quote_the_offending_line() {
        let err = load("[auth]\nsecret = \"hunter2-hunter2-hunter2-hunter2-\n").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::Syntax { line: 2, .. }), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
