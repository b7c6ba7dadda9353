//! What the driver suites (tests/drivers/, run by tests/driver_*.rs) share: the repository
//! root, their installer scripts, and the environment that tells a suite where the proxy is
//! and which tenants and tokens to use.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::proxy::Proxy;
use super::tokens::token_for;
use super::{CLIENT_USER, PROXY_DBNAME, TENANT_ACME, TENANT_GLOBEX, TestDb};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs an installer (`scripts/drivers/NAME.sh`, relative to the repository root) and
/// returns the last line it printed; panics with its output if it fails.
pub fn run_installer(script: &str) -> String {
    let root = repo_root();
    let output = Command::new("bash")
        .arg(root.join(script))
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("could not run {script}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout.lines().last().unwrap_or_default().trim().to_owned()
}

/// The environment of the driver conventions: proxy address, database and user, a token
/// and the tenant id for Acme (A) and Globex (B), a superuser DSN to the same database, and
/// the proxy's pool size.
pub fn driver_env(proxy: &Proxy, db: &TestDb, pool_size: i64) -> Vec<(&'static str, String)> {
    vec![
        ("PGT_HOST", "127.0.0.1".to_owned()),
        ("PGT_PORT", proxy.port().to_string()),
        ("PGT_DB", PROXY_DBNAME.to_owned()),
        ("PGT_USER", CLIENT_USER.to_owned()),
        ("PGT_TOKEN_A", token_for(TENANT_ACME)),
        ("PGT_TOKEN_B", token_for(TENANT_GLOBEX)),
        ("PGT_TENANT_A", TENANT_ACME.to_owned()),
        ("PGT_TENANT_B", TENANT_GLOBEX.to_owned()),
        ("PGT_DIRECT_DSN", db.cluster().superuser_dsn_for(db.name())),
        ("PGT_POOL_SIZE", pool_size.to_string()),
    ]
}
