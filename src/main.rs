//! The `pgtenant` command: run the proxy, check a configuration, mint a token, or run the
//! self-contained demo. All logic lives in the library; this file only wires the CLI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use pgtenant::auth::token::{MintKey, mint};
use pgtenant::config::{Config, LogFormat};
use pgtenant::state::Shared;

#[derive(Parser)]
#[command(
    name = "pgtenant",
    version,
    about = "Tenant-scoped PostgreSQL transaction pooler"
)]
struct Cli {
    /// Configuration file to run the proxy with.
    #[arg(long, short = 'c', global = false)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (same as `pgtenant --config FILE`).
    Run {
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    CheckConfig { file: PathBuf },
    /// Mint a tenant token for local use, signed with the configuration's HS* secret.
    Token {
        /// Tenant id to put in the token.
        #[arg(long)]
        tenant: String,
        /// Configuration whose [auth] secret and tenant claim to use.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Subject (`sub`) claim.
        #[arg(long)]
        sub: Option<String>,
    },
    /// Start a throwaway PostgreSQL with the example schema and two tenants, and the proxy in
    /// front of it; prints ready-to-paste psql lines. Ctrl-C stops and removes everything.
    Demo {
        /// Port for the proxy.
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
    /// Audit an upstream database's schema for ways one tenant can reach another's data.
    /// Exit status: 0 clean (warnings allowed unless --strict), 1 findings, 2 could not audit.
    Audit {
        /// Configuration whose database entry, pool credentials and tenant_setting to use.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// The [databases.NAME] entry to audit (needed when the configuration has several).
        #[arg(long)]
        database: Option<String>,
        /// Connect with this DSN (e.g. an administrator's) instead of the pool credentials;
        /// the pool role audited is still the entry's `user`.
        #[arg(long)]
        dsn: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The column that holds the tenant in tenant tables.
        #[arg(long, default_value = "tenant_id")]
        tenant_column: String,
        /// Fail on warnings too.
        #[arg(long)]
        strict: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match (cli.command, cli.config) {
        (Some(Command::Run { config }), _) | (None, Some(config)) => run(config),
        (Some(Command::CheckConfig { file }), _) => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: OK ({} database{}, listening on {}:{})",
                    file.display(),
                    c.databases.len(),
                    if c.databases.len() == 1 { "" } else { "s" },
                    c.general.listen_addr,
                    c.general.listen_port
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::FAILURE
            }
        },
        (
            Some(Command::Token {
                tenant,
                config,
                ttl,
                sub,
            }),
            _,
        ) => token(&config, &tenant, ttl, sub),
        (Some(Command::Demo { port }), _) => demo(port),
        (
            Some(Command::Audit {
                config,
                database,
                dsn,
                json,
                tenant_column,
                strict,
            }),
            _,
        ) => audit(
            &config,
            json,
            pgtenant::audit::AuditOptions {
                database,
                dsn,
                tenant_column,
                strict,
            },
        ),
        (None, None) => {
            eprintln!(
                "usage: pgtenant --config FILE | pgtenant check-config FILE | pgtenant token | pgtenant demo | pgtenant audit (see --help)"
            );
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr, human-readable or one JSON object per line (`log_format`); `RUST_LOG`
/// overrides the level (default info).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    b.enable_all().build()
}

fn run(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            init_logging(LogFormat::Text);
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    init_logging(config.general.log_format);
    let rt = match runtime(config.general.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Signal handlers first: a SIGHUP that arrives as soon as the port is open must
        // reload, not end the process (SIGHUP's default action).
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("could not install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Everything the configuration names (TLS files, keys) is loaded before the port
        // opens: once a client can connect, the proxy no longer needs those files to exist.
        let bind_config = Arc::clone(&config);
        let shutdown = CancellationToken::new();
        let shared = match Shared::new(config, Some(path), shutdown) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match pgtenant::listener::bind(&bind_config).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        drop(bind_config);
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "pgtenant listening");
        }
        tokio::spawn(signals.handle(Arc::clone(&shared)));
        match pgtenant::listener::serve(shared, listener, None).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGTERM and SIGINT start the drain; SIGHUP reloads the configuration.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn handle(self, shared: Arc<Shared>) {
        #[cfg(unix)]
        {
            let Signals {
                mut term,
                mut int,
                mut hup,
            } = self;
            loop {
                tokio::select! {
                    _ = term.recv() => shared.begin_shutdown("SIGTERM"),
                    _ = int.recv() => shared.begin_shutdown("SIGINT"),
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        // Errors are logged by reload; the old configuration stays.
                        let _ = pgtenant::reload::reload(&shared).await;
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = self;
            let _ = tokio::signal::ctrl_c().await;
            shared.begin_shutdown("Ctrl-C");
        }
    }
}

fn token(config: &std::path::Path, tenant: &str, ttl: u64, sub: Option<String>) -> ExitCode {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return ExitCode::FAILURE;
        }
    };
    let key = match MintKey::from_auth_config(&config.auth) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut extra = serde_json::Map::new();
    if let Some(sub) = sub {
        extra.insert("sub".into(), serde_json::Value::String(sub));
    }
    match mint(
        &key,
        &config.auth.tenant_claim,
        tenant,
        Duration::from_secs(ttl),
        extra,
    ) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(port: u16) -> ExitCode {
    init_logging(LogFormat::Text);
    let rt = match runtime(0) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(pgtenant::demo::run(port)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn audit(
    config_path: &std::path::Path,
    json: bool,
    options: pgtenant::audit::AuditOptions,
) -> ExitCode {
    const COULD_NOT_AUDIT: u8 = 2;
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", config_path.display());
            return ExitCode::from(COULD_NOT_AUDIT);
        }
    };
    let rt = match runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("could not start the runtime: {e}");
            return ExitCode::from(COULD_NOT_AUDIT);
        }
    };
    let report = match rt.block_on(pgtenant::audit::run(&config, &options)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("audit failed: {e}");
            return ExitCode::from(COULD_NOT_AUDIT);
        }
    };
    let text = if json {
        match pgtenant::audit::report::to_json(&report) {
            Ok(text) => text + "\n",
            Err(e) => {
                eprintln!("could not render the report: {e}");
                return ExitCode::from(COULD_NOT_AUDIT);
            }
        }
    } else {
        pgtenant::audit::report::to_text(&report)
    };
    // A reader that went away (`| head`) is not a reason to panic; the status still tells.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
