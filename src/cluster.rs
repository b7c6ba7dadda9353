//! A throwaway local PostgreSQL cluster for `pgtenant demo` and the integration tests.
//!
//! This module owns one temporary data directory, the `initdb`/`pg_ctl` invocations that create,
//! start, stop and reload it, and the `pg_hba.conf` it is served with: the superuser `postgres`
//! may use the unix socket without a password (trust), everything over TCP (loopback only)
//! authenticates with a password, SCRAM-SHA-256 unless a per-role method was set; TLS is off
//! unless [`Cluster::enable_tls`] turns it on with a given certificate. When the
//! process runs as root (CI), PostgreSQL refuses to run, so every server-side command runs as
//! an unprivileged system user through `runuser`. A watchdog process stops the server and
//! removes the directory when this process exits without dropping the [`Cluster`] (a `static`
//! in a test binary is never dropped).
//!
//! It must never touch a cluster it did not create, listen on anything but 127.0.0.1, or put a
//! password in an error message, a log line or a command line.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng as _;

/// The example schema (`config/schema.sql`): tenants, users, invoices, RLS policies, `api_user`.
pub const EXAMPLE_SCHEMA_SQL: &str = include_str!("../config/schema.sql");
/// Demo rows for two tenants (`config/demo_data.sql`); run as superuser after the schema.
pub const EXAMPLE_DEMO_DATA_SQL: &str = include_str!("../config/demo_data.sql");

/// The superuser created by `initdb -U`.
pub const SUPERUSER: &str = "postgres";
/// The system user PostgreSQL runs as when this process is root.
pub const DEFAULT_RUN_AS_USER: &str = "pgtenant-test";
/// Environment variable naming a directory holding `initdb`, `pg_ctl` and `postgres`.
pub const BIN_DIR_ENV: &str = "PGTENANT_PG_BINDIR";

const PG_CTL_WAIT_SECONDS: &str = "60";
const RELOAD_WAIT: Duration = Duration::from_secs(10);
const PORT_ATTEMPTS: usize = 5;
const LOG_TAIL_LINES: usize = 40;
const SETTINGS_FILE: &str = "pgtenant.conf";

/// Everything that can go wrong while running a throwaway cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("PostgreSQL server binaries not found (looked for {looked_for})")]
    BinariesNotFound { looked_for: String },
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    CommandFailed {
        program: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "could not prepare the unprivileged user {user:?} PostgreSQL must run as when we are root: {reason}"
    )]
    RunAsUser { user: String, reason: String },
    #[error("could not find a free loopback port: {0}")]
    NoFreePort(#[source] io::Error),
    #[error("PostgreSQL did not start: {reason}\n--- last lines of {} ---\n{log_tail}", log.display())]
    StartFailed {
        reason: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error("PostgreSQL did not apply the configuration reload within {0:?}")]
    ReloadTimedOut(Duration),
    #[error("{0:?} is not a role name this harness accepts (letters, digits and '_' only)")]
    InvalidRoleName(String),
    #[error(
        "PostgreSQL did not turn TLS on: {reason}\n--- last lines of the server log ---\n{log_tail}"
    )]
    TlsNotEnabled { reason: String, log_tail: String },
}

/// How a role authenticates over TCP (a `pg_hba.conf` method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    Trust,
    /// Cleartext password.
    Password,
    /// MD5; PostgreSQL silently upgrades to SCRAM when the stored password is a SCRAM verifier,
    /// so store the role's password with [`PasswordHash::Md5`] to really get MD5.
    Md5,
    ScramSha256,
    Reject,
}

impl HbaMethod {
    fn as_hba(self) -> &'static str {
        match self {
            HbaMethod::Trust => "trust",
            HbaMethod::Password => "password",
            HbaMethod::Md5 => "md5",
            HbaMethod::ScramSha256 => "scram-sha-256",
            HbaMethod::Reject => "reject",
        }
    }
}

/// How a role's password is stored in `pg_authid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordHash {
    ScramSha256,
    Md5,
}

/// Options for [`Cluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `max_connections` of the server.
    pub max_connections: u32,
    /// Directory holding `initdb`, `pg_ctl`, `postgres` (and usually `psql`); searched for when `None`.
    pub bin_dir: Option<PathBuf>,
    /// Where the temporary directory is created; `/tmp` when root, else the system temp dir.
    pub base_dir: Option<PathBuf>,
    /// The system user the server runs as when this process is root (created if missing).
    pub run_as_user: String,
    /// Extra `postgresql.conf` settings, e.g. `("log_min_duration_statement", "0")`; values are
    /// written verbatim, so quote strings yourself (`"'all'"`).
    pub extra_settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            max_connections: 200,
            bin_dir: None,
            base_dir: None,
            run_as_user: DEFAULT_RUN_AS_USER.to_owned(),
            extra_settings: Vec::new(),
        }
    }
}

/// The PostgreSQL programs a cluster is run with.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub bin_dir: PathBuf,
    pub initdb: PathBuf,
    pub pg_ctl: PathBuf,
    pub postgres: PathBuf,
    /// `psql` from the same directory if present, else from `PATH`.
    pub psql: PathBuf,
}

impl PgBinaries {
    /// Finds the server programs: `$PGTENANT_PG_BINDIR`, then `initdb` on `PATH` (symlinks
    /// resolved), then the highest version under `/usr/lib/postgresql/*/bin`.
    pub fn locate() -> Result<PgBinaries, ClusterError> {
        let mut candidates = Vec::new();
        if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
            candidates.push(PathBuf::from(dir));
        }
        if let Some(initdb) = find_on_path("initdb") {
            let resolved = fs::canonicalize(&initdb).unwrap_or(initdb);
            if let Some(dir) = resolved.parent() {
                candidates.push(dir.to_path_buf());
            }
        }
        candidates.extend(debian_bin_dirs());
        for dir in &candidates {
            if let Ok(found) = PgBinaries::in_dir(dir) {
                return Ok(found);
            }
        }
        Err(ClusterError::BinariesNotFound {
            looked_for: format!(
                "initdb, pg_ctl and postgres in ${BIN_DIR_ENV}, on PATH and under /usr/lib/postgresql/*/bin; \
                 run scripts/install-deps.sh"
            ),
        })
    }

    /// Uses the programs in `dir`.
    pub fn in_dir(dir: &Path) -> Result<PgBinaries, ClusterError> {
        let program = |name: &str| {
            let path = dir.join(name);
            if is_executable(&path) {
                Ok(path)
            } else {
                Err(ClusterError::BinariesNotFound {
                    looked_for: format!("{name} in {}", dir.display()),
                })
            }
        };
        let psql = program("psql")
            .ok()
            .or_else(|| find_on_path("psql"))
            .ok_or_else(|| ClusterError::BinariesNotFound {
                looked_for: format!("psql in {} or on PATH", dir.display()),
            })?;
        Ok(PgBinaries {
            bin_dir: dir.to_path_buf(),
            initdb: program("initdb")?,
            pg_ctl: program("pg_ctl")?,
            postgres: program("postgres")?,
            psql,
        })
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// `/usr/lib/postgresql/<version>/bin`, highest version first.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    highest_version_first(names)
        .into_iter()
        .map(|version| Path::new("/usr/lib/postgresql").join(version).join("bin"))
        .collect()
}

/// Keeps the names that are versions ("16", "9.6") and sorts them numerically, highest first.
fn highest_version_first(names: Vec<String>) -> Vec<String> {
    let mut versions: Vec<(Vec<u32>, String)> = names
        .into_iter()
        .filter_map(|name| {
            let version: Option<Vec<u32>> = name.split('.').map(|part| part.parse().ok()).collect();
            Some((version?, name))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, name)| name).collect()
}

/// The unprivileged account server commands run as when we are root.
#[derive(Debug, Clone)]
struct RunAs {
    user: String,
    uid: u32,
    gid: u32,
}

fn effective_uid_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl RunAs {
    /// Looks the user up, creating it as a system user if it does not exist yet.
    fn ensure(user: &str) -> Result<RunAs, ClusterError> {
        if lookup_id(user, "-u").is_err() {
            let output = Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home"])
                .args(["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"])
                .arg(user)
                .stdin(Stdio::null())
                .output()
                .map_err(|source| ClusterError::Spawn {
                    program: "useradd".to_owned(),
                    source,
                })?;
            // Exit code 9 means "already exists": another test process created it meanwhile.
            if !output.status.success() && output.status.code() != Some(9) {
                return Err(ClusterError::RunAsUser {
                    user: user.to_owned(),
                    reason: format!(
                        "useradd failed ({}): {}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                });
            }
        }
        let fail = |reason: String| ClusterError::RunAsUser {
            user: user.to_owned(),
            reason,
        };
        Ok(RunAs {
            user: user.to_owned(),
            uid: lookup_id(user, "-u").map_err(fail)?,
            gid: lookup_id(user, "-g").map_err(fail)?,
        })
    }

    fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(|source| {
            ClusterError::Io {
                action: "could not change the owner of",
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

/// `id -u USER` / `id -g USER`, parsed.
fn lookup_id(user: &str, flag: &str) -> Result<u32, String> {
    let output = Command::new("id")
        .args([flag, user])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("could not run id: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "id {flag} {user}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|err| format!("id {flag} {user} printed something that is not a number: {err}"))
}

/// A free TCP port on 127.0.0.1 at the time of the call (someone else may take it afterwards).
pub fn free_loopback_port() -> Result<u16, io::Error> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings is on by default).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A temporary PostgreSQL cluster listening on 127.0.0.1. Dropping it stops the server and
/// removes its directory.
pub struct Cluster {
    bins: PgBinaries,
    run_as: Option<RunAs>,
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    max_connections: u32,
    extra_settings: Vec<(String, String)>,
    superuser_password: String,
    hba_rules: Mutex<Vec<(String, HbaMethod)>>,
    watchdog: Option<(Child, ChildStdin)>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("bin_dir", &self.bins.bin_dir)
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("run_as", &self.run_as.as_ref().map(|r| &r.user))
            .field("superuser_password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Creates a new cluster in a fresh temporary directory and starts it.
    pub fn start(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        let bins = match &opts.bin_dir {
            Some(dir) => PgBinaries::in_dir(dir)?,
            None => PgBinaries::locate()?,
        };
        let run_as = if effective_uid_is_root() {
            Some(RunAs::ensure(&opts.run_as_user)?)
        } else {
            None
        };
        // The server user must be able to traverse the parent: /tmp is world-searchable,
        // root's own TMPDIR might not be.
        let base_dir = match (&opts.base_dir, &run_as) {
            (Some(dir), _) => dir.clone(),
            (None, Some(_)) => PathBuf::from("/tmp"),
            (None, None) => std::env::temp_dir(),
        };
        let root = tempfile::Builder::new()
            .prefix("pgtenant-pg-")
            .tempdir_in(&base_dir)
            .map_err(|source| ClusterError::Io {
                action: "could not create a temporary directory in",
                path: base_dir.clone(),
                source,
            })?;
        let root_path = root.path().to_path_buf();
        let socket_dir = root_path.join("sock");
        fs::create_dir(&socket_dir).map_err(|source| ClusterError::Io {
            action: "could not create",
            path: socket_dir.clone(),
            source,
        })?;
        if let Some(run_as) = &run_as {
            run_as.chown(&root_path)?;
            run_as.chown(&socket_dir)?;
        }
        let mut cluster = Cluster {
            data_dir: root_path.join("data"),
            log_path: root_path.join("postgres.log"),
            socket_dir,
            root_path,
            root: Some(root),
            bins,
            run_as,
            port: 0,
            max_connections: opts.max_connections,
            extra_settings: opts.extra_settings,
            superuser_password: random_password(),
            hba_rules: Mutex::new(Vec::new()),
            watchdog: None,
        };
        cluster.watchdog = Some(cluster.spawn_watchdog()?);
        cluster.initdb()?;
        cluster.write_hba(&[])?;
        cluster.start_on_free_port()?;
        let verifier =
            postgres_protocol::password::scram_sha_256(cluster.superuser_password.as_bytes());
        cluster.psql(&format!(
            "ALTER ROLE {} PASSWORD {}",
            quote_ident(SUPERUSER),
            quote_literal(&verifier)
        ))?;
        Ok(cluster)
    }

    /// The TCP port PostgreSQL listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The directory holding the unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (stderr of the postmaster); print it when a test fails.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the server log ("" if unreadable).
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log_path, lines)
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// The password of the superuser `postgres` over TCP (SCRAM).
    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// A libpq key/value DSN for the superuser over TCP, database `postgres`.
    pub fn superuser_dsn(&self) -> String {
        self.superuser_dsn_for("postgres")
    }

    /// A libpq key/value DSN for the superuser over TCP to database `dbname`.
    pub fn superuser_dsn_for(&self, dbname: &str) -> String {
        // The password is hex and the name is quoted, so neither needs more escaping.
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} password={} dbname='{}'",
            self.port,
            self.superuser_password,
            dbname.replace('\\', "\\\\").replace('\'', "\\'")
        )
    }

    /// Runs `sql` with psql as the superuser in database `postgres` (unix socket), stopping at
    /// the first error. Returns stdout (unaligned, tuples only) without the trailing newline.
    pub fn psql(&self, sql: &str) -> Result<String, ClusterError> {
        self.psql_in("postgres", sql)
    }

    /// Like [`Cluster::psql`] in database `dbname`. `sql` may hold many statements (it is fed
    /// as a script, so `CREATE DATABASE` works).
    pub fn psql_in(&self, dbname: &str, sql: &str) -> Result<String, ClusterError> {
        let mut command = Command::new(&self.bins.psql);
        command
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", dbname]);
        for var in LIBPQ_ENV {
            command.env_remove(var);
        }
        let output = run_with_stdin(command, "psql", sql.as_bytes())?;
        check_output("psql", &output)?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned())
    }

    /// Sets a role's password, storing a verifier computed here so the cleartext never reaches
    /// the server, its log or an error message.
    pub fn set_role_password(
        &self,
        role: &str,
        password: &str,
        hash: PasswordHash,
    ) -> Result<(), ClusterError> {
        let stored = match hash {
            PasswordHash::ScramSha256 => {
                postgres_protocol::password::scram_sha_256(password.as_bytes())
            }
            PasswordHash::Md5 => postgres_protocol::password::md5(password.as_bytes(), role),
        };
        self.psql(&format!(
            "ALTER ROLE {} PASSWORD {}",
            quote_ident(role),
            quote_literal(&stored)
        ))
        .map(drop)
    }

    /// Makes TCP logins of `role` use `method` (replacing an earlier rule for it), then reloads.
    pub fn set_hba_method(&self, role: &str, method: HbaMethod) -> Result<(), ClusterError> {
        if role.is_empty() || !role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ClusterError::InvalidRoleName(role.to_owned()));
        }
        let mut rules = self.lock_rules();
        rules.retain(|(existing, _)| existing != role);
        rules.push((role.to_owned(), method));
        self.write_hba(&rules)?;
        drop(rules);
        self.reload()
    }

    /// Drops every per-role rule (back to SCRAM for all), then reloads.
    pub fn reset_hba(&self) -> Result<(), ClusterError> {
        let mut rules = self.lock_rules();
        rules.clear();
        self.write_hba(&rules)?;
        drop(rules);
        self.reload()
    }

    /// Reloads the configuration and waits until the postmaster has applied it, so every
    /// connection opened afterwards sees the new `pg_hba.conf`.
    pub fn reload(&self) -> Result<(), ClusterError> {
        let before = self.psql("SELECT pg_conf_load_time()")?;
        self.psql("SELECT pg_reload_conf()")?;
        let deadline = Instant::now() + RELOAD_WAIT;
        // Each psql run is a new backend forked from the postmaster: once it reports a newer
        // load time, the postmaster has re-read the files.
        while self.psql("SELECT pg_conf_load_time()")? == before {
            if Instant::now() > deadline {
                return Err(ClusterError::ReloadTimedOut(RELOAD_WAIT));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Turns TLS on (`ssl = on`): `cert_pem` (leaf first) and `key_pem` become the server's
    /// `server.crt` and `server.key` in the data directory, the key readable by the server
    /// user only (PostgreSQL refuses a key others can read), then the configuration is
    /// reloaded and checked: afterwards an SSLRequest is answered `S`. Plaintext TCP logins
    /// keep working (`pg_hba.conf` uses `host`, which matches both).
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) -> Result<(), ClusterError> {
        self.write_server_file(&self.data_dir.join("server.crt"), cert_pem)?;
        self.write_private_server_file(&self.data_dir.join("server.key"), key_pem)?;
        self.psql("ALTER SYSTEM SET ssl = on")?;
        self.reload()?;
        match self.answers_ssl_request() {
            Ok(b'S') => Ok(()),
            Ok(other) => Err(ClusterError::TlsNotEnabled {
                reason: format!(
                    "SSLRequest answered {:?}",
                    char::from(other).escape_default().to_string()
                ),
                log_tail: self.log_tail(LOG_TAIL_LINES),
            }),
            Err(err) => Err(ClusterError::TlsNotEnabled {
                reason: format!("SSLRequest failed: {err}"),
                log_tail: self.log_tail(LOG_TAIL_LINES),
            }),
        }
    }

    /// Sends an SSLRequest over TCP and returns the one-byte answer.
    fn answers_ssl_request(&self) -> io::Result<u8> {
        use std::io::Read as _;
        let mut stream = std::net::TcpStream::connect((self.host(), self.port))?;
        stream.set_read_timeout(Some(RELOAD_WAIT))?;
        // Length 8, code 80877103 ("Message Formats" in the protocol documentation).
        stream.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer)?;
        Ok(answer[0])
    }

    /// Whether the postmaster is running (per `pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.server_command(&self.bins.pg_ctl)
            .arg("status")
            .arg("-D")
            .arg(&self.data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Stops the server (fast shutdown: clients are disconnected), keeping the data directory
    /// and port so [`Cluster::start_server`] can bring it back. Stopping a stopped server is a no-op.
    pub fn stop_server(&self) -> Result<(), ClusterError> {
        if !self.data_dir.join("postmaster.pid").exists() {
            return Ok(());
        }
        self.pg_ctl_stop("fast")
    }

    /// Starts the server again on the same data directory and port.
    pub fn start_server(&self) -> Result<(), ClusterError> {
        self.write_settings(self.port)?;
        self.pg_ctl_start()
    }

    /// `stop_server` then `start_server`.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.stop_server()?;
        self.start_server()
    }

    /// Stops the server and removes the directory now, reporting errors (Drop ignores them).
    pub fn stop(mut self) -> Result<(), ClusterError> {
        let stopped = self.stop_server();
        let removed = match self.root.take() {
            Some(root) => root.close().map_err(|source| ClusterError::Io {
                action: "could not remove",
                path: self.root_path.clone(),
                source,
            }),
            None => Ok(()),
        };
        stopped.and(removed)
    }

    fn lock_rules(&self) -> MutexGuard<'_, Vec<(String, HbaMethod)>> {
        // A panic while holding the lock cannot leave the Vec inconsistent.
        self.hba_rules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A command that runs as the unprivileged user when we are root.
    fn server_command(&self, program: &Path) -> Command {
        let mut command = match &self.run_as {
            Some(run_as) => {
                let mut command = Command::new("runuser");
                command.args(["-u", &run_as.user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        // The server user may not be allowed into our cwd (e.g. /root).
        command.current_dir(&self.root_path).stdin(Stdio::null());
        for var in LIBPQ_ENV {
            command.env_remove(var);
        }
        command
    }

    fn run_server_command(&self, mut command: Command, name: &str) -> Result<Output, ClusterError> {
        let output = command.output().map_err(|source| ClusterError::Spawn {
            program: name.to_owned(),
            source,
        })?;
        check_output(name, &output)?;
        Ok(output)
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        let mut command = self.server_command(&self.bins.initdb);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--no-locale", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
        self.run_server_command(command, "initdb")?;
        let conf = self.data_dir.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|source| ClusterError::Io {
                action: "could not open",
                path: conf.clone(),
                source,
            })?;
        writeln!(
            file,
            "\n# added by pgtenant::cluster\ninclude '{SETTINGS_FILE}'"
        )
        .map_err(|source| ClusterError::Io {
            action: "could not write",
            path: conf,
            source,
        })
    }

    /// Writes the settings file included from postgresql.conf.
    fn write_settings(&self, port: u16) -> Result<(), ClusterError> {
        let mut settings = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{}'\n\
             max_connections = {}\n\
             password_encryption = 'scram-sha-256'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = '32MB'\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            self.socket_dir.display().to_string().replace('\'', "''"),
            self.max_connections,
        );
        for (name, value) in &self.extra_settings {
            settings.push_str(&format!("{name} = {value}\n"));
        }
        self.write_server_file(&self.data_dir.join(SETTINGS_FILE), &settings)
    }

    fn write_hba(&self, rules: &[(String, HbaMethod)]) -> Result<(), ClusterError> {
        let mut hba = format!(
            "# written by pgtenant::cluster\n\
             local all {SUPERUSER} trust\n\
             local all all scram-sha-256\n"
        );
        for (role, method) in rules {
            hba.push_str(&format!(
                "host all {role} 127.0.0.1/32 {}\n",
                method.as_hba()
            ));
        }
        hba.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
        self.write_server_file(&self.data_dir.join("pg_hba.conf"), &hba)
    }

    /// Writes a file only its owner (the server user) may read.
    fn write_private_server_file(&self, path: &Path, contents: &str) -> Result<(), ClusterError> {
        let io_error = |action, source| ClusterError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_error("could not create", e))?;
        // The mode only applies at creation: make sure of it for an existing file too.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error("could not restrict the permissions of", e))?;
        file.write_all(contents.as_bytes())
            .map_err(|e| io_error("could not write", e))?;
        match &self.run_as {
            Some(run_as) => run_as.chown(path),
            None => Ok(()),
        }
    }

    /// Writes a file in the data directory, owned by the server user.
    fn write_server_file(&self, path: &Path, contents: &str) -> Result<(), ClusterError> {
        fs::write(path, contents).map_err(|source| ClusterError::Io {
            action: "could not write",
            path: path.to_path_buf(),
            source,
        })?;
        match &self.run_as {
            Some(run_as) => run_as.chown(path),
            None => Ok(()),
        }
    }

    fn start_on_free_port(&mut self) -> Result<(), ClusterError> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_loopback_port().map_err(ClusterError::NoFreePort)?;
            self.port = port;
            self.write_settings(port)?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                // Someone took the port between our probe and the server's bind: try another.
                Err(err @ ClusterError::StartFailed { .. })
                    if self
                        .log_tail(LOG_TAIL_LINES)
                        .contains("Address already in use") =>
                {
                    last_error = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(
            last_error.unwrap_or(ClusterError::NoFreePort(io::Error::other(
                "no attempt was made",
            ))),
        )
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let mut command = self.server_command(&self.bins.pg_ctl);
        command
            .arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .args(["-w", "-t", PG_CTL_WAIT_SECONDS, "-s"]);
        let output = command.output().map_err(|source| ClusterError::Spawn {
            program: "pg_ctl".to_owned(),
            source,
        })?;
        if output.status.success() {
            return Ok(());
        }
        Err(ClusterError::StartFailed {
            reason: format!(
                "pg_ctl start failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            log: self.log_path.clone(),
            log_tail: self.log_tail(LOG_TAIL_LINES),
        })
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), ClusterError> {
        let mut command = self.server_command(&self.bins.pg_ctl);
        command.arg("stop").arg("-D").arg(&self.data_dir).args([
            "-m",
            mode,
            "-w",
            "-t",
            PG_CTL_WAIT_SECONDS,
            "-s",
        ]);
        self.run_server_command(command, "pg_ctl stop").map(drop)
    }

    /// Starts a shell that waits for EOF on its stdin — which happens when this process exits,
    /// however it exits — then stops the server and removes the directory.
    fn spawn_watchdog(&self) -> Result<(Child, ChildStdin), ClusterError> {
        const SCRIPT: &str = r#"
trap '' INT HUP TERM PIPE
while IFS= read -r _line; do :; done
pidfile="$1/postmaster.pid"
if [ -f "$pidfile" ]; then
    pid=$(head -n 1 "$pidfile")
    if [ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null; then
        tries=0
        while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 100 ]; do
            sleep 0.1
            tries=$((tries + 1))
        done
    fi
fi
if [ -n "$2" ] && [ -d "$2" ]; then rm -rf -- "$2"; fi
"#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("pgtenant-cluster-watchdog")
            .arg(&self.data_dir)
            .arg(&self.root_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| ClusterError::Spawn {
                program: "sh (cluster watchdog)".to_owned(),
                source,
            })?;
        match child.stdin.take() {
            Some(stdin) => Ok((child, stdin)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(ClusterError::Spawn {
                    program: "sh (cluster watchdog)".to_owned(),
                    source: io::Error::other("no stdin pipe"),
                })
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.root.is_some() && self.data_dir.join("postmaster.pid").exists() {
            // Immediate: nothing here is worth a checkpoint.
            let _ = self.pg_ctl_stop("immediate");
        }
        if let Some(root) = self.root.take() {
            let _ = root.close();
        }
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// libpq environment variables that would silently change where psql/pg_ctl connect.
const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGDATA",
];

fn random_password() -> String {
    let bytes: [u8; 18] = rand::rng().random();
    hex::encode(bytes)
}

fn check_output(program: &str, output: &Output) -> Result<(), ClusterError> {
    if output.status.success() {
        return Ok(());
    }
    Err(ClusterError::CommandFailed {
        program: program.to_owned(),
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

/// Runs `command` feeding `input` on stdin from a second thread, so a chatty child cannot
/// deadlock against us while we are still writing.
fn run_with_stdin(mut command: Command, name: &str, input: &[u8]) -> Result<Output, ClusterError> {
    let spawn_error = |source| ClusterError::Spawn {
        program: name.to_owned(),
        source,
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let stdin = child.stdin.take();
    std::thread::scope(|scope| {
        if let Some(mut stdin) = stdin {
            // A write error means the child exited early; its status and stderr say why.
            scope.spawn(move || {
                let _ = stdin.write_all(input);
            });
        }
        child.wait_with_output().map_err(spawn_error)
    })
}

fn tail_of(path: &Path, lines: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically_highest_first() {
        let names = ["9.6", "15", "16", "README", "10"]
            .map(String::from)
            .to_vec();
        assert_eq!(highest_version_first(names), ["16", "15", "10", "9.6"]);
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn hba_methods_use_pg_hba_spelling() {
        assert_eq!(HbaMethod::ScramSha256.as_hba(), "scram-sha-256");
        assert_eq!(HbaMethod::Md5.as_hba(), "md5");
        assert_eq!(HbaMethod::Password.as_hba(), "password");
    }
}
