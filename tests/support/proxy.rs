//! The proxy under test as a child process: a generated TOML config (keys of CONFIG_API.md), a
//! free port, stdout+stderr captured to a file that is printed when the test panics, and a
//! kill on drop.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtenant::cluster::free_loopback_port;
use tokio_postgres::Client;
use toml::{Table, Value};

use super::{API_USER, CLIENT_USER, PROXY_DBNAME, Pg, TestDb, connect, tokens::JWT_SECRET};

/// How long a starting proxy may take to accept TCP connections before the test gives up.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// The path of the `pgtenant` binary cargo built for these tests.
pub fn proxy_binary() -> &'static str {
    env!("CARGO_BIN_EXE_pgtenant")
}

/// A proxy configuration, rendered to TOML when the proxy starts (`listen_port` is filled in
/// then, unless set explicitly).
#[derive(Clone)]
pub struct ProxyConfig {
    general: Table,
    auth: Table,
    databases: Table,
    env: Vec<(String, String)>,
    psql: PathBuf,
    pg: Option<Arc<Pg>>,
}

impl ProxyConfig {
    /// Serves `db` as `[databases.app]` (host/port of its cluster, user `api_user`), HS256 tokens
    /// signed with [`JWT_SECRET`], `default_pool_size = 4`.
    pub fn for_db(db: &TestDb) -> ProxyConfig {
        let cluster = db.cluster();
        let mut general = Table::new();
        general.insert("listen_addr".into(), "127.0.0.1".into());
        general.insert("default_pool_size".into(), 4.into());
        let mut auth = Table::new();
        auth.insert("algorithm".into(), "HS256".into());
        auth.insert("secret".into(), JWT_SECRET.into());
        let mut app = Table::new();
        app.insert("host".into(), cluster.host().into());
        app.insert("port".into(), i64::from(cluster.port()).into());
        app.insert("dbname".into(), db.name().into());
        app.insert("user".into(), API_USER.into());
        app.insert("password".into(), db.pg().api_password().into());
        let mut databases = Table::new();
        databases.insert(PROXY_DBNAME.into(), Value::Table(app));
        ProxyConfig {
            general,
            auth,
            databases,
            env: Vec::new(),
            psql: cluster.binaries().psql.clone(),
            pg: Some(Arc::clone(db.pg())),
        }
    }

    /// Sets a key of `[pgtenant]`, e.g. `.general("default_pool_size", 2)`.
    pub fn general(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.general.insert(key.to_owned(), value.into());
        self
    }

    /// Sets a key of `[auth]`, e.g. `.auth("issuer", "https://issuer.example")`.
    pub fn auth(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.auth.insert(key.to_owned(), value.into());
        self
    }

    /// Removes a key of `[auth]` (e.g. `secret`, to replace it with `secret_env`).
    pub fn without_auth(mut self, key: &str) -> Self {
        self.auth.remove(key);
        self
    }

    /// Sets a key of `[databases.app]`, e.g. `.app_db("pool_size", 1)` or `.app_db("user", role)`.
    pub fn app_db(self, key: &str, value: impl Into<Value>) -> Self {
        self.database_key(PROXY_DBNAME, key, value)
    }

    /// Sets a key of `[databases.<name>]`, creating the table if needed.
    pub fn database_key(mut self, name: &str, key: &str, value: impl Into<Value>) -> Self {
        let entry = self
            .databases
            .entry(name.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(table) = entry {
            table.insert(key.to_owned(), value.into());
        }
        self
    }

    /// Removes the whole `[databases.<name>]` table.
    pub fn without_database(mut self, name: &str) -> Self {
        self.databases.remove(name);
        self
    }

    /// Removes a key of `[databases.<name>]`.
    pub fn without_database_key(mut self, name: &str, key: &str) -> Self {
        if let Some(Value::Table(table)) = self.databases.get_mut(name) {
            table.remove(key);
        }
        self
    }

    /// Sets an environment variable of the proxy process (e.g. `RUST_LOG`, or a `secret_env`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The TOML the proxy would get when listening on `listen_port` (unless the test set one).
    pub fn to_toml(&self, listen_port: u16) -> String {
        let mut general = self.general.clone();
        general
            .entry("listen_port")
            .or_insert_with(|| i64::from(listen_port).into());
        let mut document = Table::new();
        document.insert("pgtenant".into(), Value::Table(general));
        document.insert("auth".into(), Value::Table(self.auth.clone()));
        document.insert("databases".into(), Value::Table(self.databases.clone()));
        toml::to_string(&document)
            .unwrap_or_else(|err| panic!("could not render the proxy config: {err}"))
    }

    /// The listen port set with `.general("listen_port", ..)`, if any.
    fn explicit_port(&self) -> Option<u16> {
        self.general
            .get("listen_port")
            .and_then(Value::as_integer)
            .and_then(|port| u16::try_from(port).ok())
    }
}

/// A running `pgtenant` process. Killed (SIGKILL) on drop; its output is printed if the test
/// is panicking.
pub struct Proxy {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    config: ProxyConfig,
}

impl Proxy {
    /// Starts the proxy and waits until it accepts TCP connections; panics (printing its
    /// output) if it exits or never listens.
    pub fn start(config: ProxyConfig) -> Proxy {
        match Proxy::try_start(config) {
            Ok(proxy) => proxy,
            Err(output) => panic!("the proxy did not start:\n{output}"),
        }
    }

    /// Like [`Proxy::start`], but returns the proxy's output if it exits before listening
    /// (for tests of configurations the proxy must refuse).
    pub fn try_start(config: ProxyConfig) -> Result<Proxy, String> {
        let dir = tempfile::Builder::new()
            .prefix("pgtenant-proxy-")
            .tempdir()
            .map_err(|err| format!("could not create a temp dir: {err}"))?;
        let port = match config.explicit_port() {
            Some(port) => port,
            None => free_loopback_port().map_err(|err| format!("no free port: {err}"))?,
        };
        let config_path = dir.path().join("pgtenant.toml");
        fs::write(&config_path, config.to_toml(port))
            .map_err(|err| format!("could not write {}: {err}", config_path.display()))?;
        let log_path = dir.path().join("pgtenant.log");
        let log = fs::File::create(&log_path)
            .map_err(|err| format!("could not create {}: {err}", log_path.display()))?;
        let log_for_stdout = log
            .try_clone()
            .map_err(|err| format!("could not duplicate the log handle: {err}"))?;
        let mut command = Command::new(proxy_binary());
        command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_for_stdout))
            .stderr(Stdio::from(log));
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        for (key, value) in &config.env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .map_err(|err| format!("could not run {}: {err}", proxy_binary()))?;
        let mut proxy = Proxy {
            child: Some(child),
            port,
            dir,
            config_path,
            log_path,
            config,
        };
        proxy.wait_until_listening()?;
        Ok(proxy)
    }

    fn wait_until_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not listening on 127.0.0.1:{} after {STARTUP_DEADLINE:?}:\n{}",
                    self.port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// A scratch directory living as long as the proxy (for key files etc.).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the proxy's stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the proxy printed so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Client settings for the proxy: `user=app_client dbname=app password=<token>`.
    pub fn client_config(&self, token: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(CLIENT_USER)
            .dbname(PROXY_DBNAME)
            .password(token);
        config
    }

    /// Connects through the proxy with `token` as the password.
    pub async fn connect(&self, token: &str) -> Result<Client, tokio_postgres::Error> {
        connect(&self.client_config(token)).await
    }

    /// Runs `psql -c sql` through the proxy with `PGPASSWORD=token` (libpq defaults otherwise,
    /// so psql first asks for TLS). Returns the raw output; `-A -t` format.
    pub fn psql(&self, token: &str, sql: &str) -> Output {
        self.psql_with_args(token, &["-c", sql])
    }

    /// Runs psql through the proxy with extra arguments (e.g. `["-f", path]`).
    pub fn psql_with_args(&self, token: &str, args: &[&str]) -> Output {
        let port = self.port.to_string();
        let mut command = Command::new(&self.config.psql);
        command
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-w"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                CLIENT_USER,
                "-d",
                PROXY_DBNAME,
            ])
            .args(args)
            .env("PGPASSWORD", token)
            .env("PGCONNECT_TIMEOUT", "30")
            .stdin(Stdio::null());
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGSERVICE",
            "PGOPTIONS",
        ] {
            command.env_remove(var);
        }
        command
            .output()
            .unwrap_or_else(|err| panic!("could not run psql: {err}"))
    }

    /// Rewrites the config file (keeping the port) and sends SIGHUP.
    pub fn reload_with(&mut self, config: ProxyConfig) {
        fs::write(&self.config_path, config.to_toml(self.port))
            .unwrap_or_else(|err| panic!("could not rewrite the proxy config: {err}"));
        self.config = config;
        self.signal(libc::SIGHUP);
    }

    /// Sends a signal (SIGTERM for a graceful shutdown, SIGHUP for reload...).
    pub fn signal(&self, signal: i32) {
        let Some(pid) = self.pid() else { return };
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            panic!("pid {pid} does not fit pid_t");
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// The exit status if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Waits for the process to exit (after a signal, say) and returns its status.
    pub fn wait(&mut self) -> ExitStatus {
        let Some(child) = self.child.as_mut() else {
            panic!("the proxy was already reaped");
        };
        child
            .wait()
            .unwrap_or_else(|err| panic!("waiting for the proxy: {err}"))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- pgtenant output ({}) ---\n{}\n--- config ({}) ---\n{}",
                self.log_path.display(),
                self.log(),
                self.config_path.display(),
                redact_secrets(&self.config.to_toml(self.port)),
            );
            if let Some(pg) = &self.config.pg {
                eprintln!(
                    "--- PostgreSQL log {} (last lines) ---\n{}",
                    pg.cluster().log_path().display(),
                    pg.cluster().log_tail(30)
                );
            }
        }
    }
}

/// The config without its secret and password values.
fn redact_secrets(toml_text: &str) -> String {
    toml_text
        .lines()
        .map(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            if key == "secret" || key == "password" {
                format!("{key} = \"<redacted>\"")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
