//! The Python driver compatibility suites (issue 4, item 6): psycopg 3 and asyncpg, each run
//! against its own database and proxy with a pool of two servers, so that prepared statements
//! and session settings have to hop between pooled servers.
//!
//! The suites live in tests/drivers/python; scripts/drivers/python.sh installs the drivers
//! into a venv first (a failed install fails the test, it never skips). Each suite prints
//! `N passed, M failed` and exits non-zero when a check failed; its whole output is shown then.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Bound on one suite's run, so that a hung driver fails the test instead of hanging CI.
const SUITE_DEADLINE: Duration = Duration::from_secs(300);
/// Server connections per pool: small, so that statements and settings change servers.
const POOL_SIZE: i64 = 2;

use support::drivers::repo_root;

/// Runs scripts/drivers/python.sh and returns the venv's python (the script's last line).
fn install_drivers() -> PathBuf {
    let python = support::drivers::run_installer("scripts/drivers/python.sh");
    assert!(
        Path::new(&python).is_file(),
        "scripts/drivers/python.sh did not print the venv's python: {python:?}"
    );
    PathBuf::from(python)
}

/// Starts a database and a proxy, runs `suite` (a file of tests/drivers/python) with the
/// environment of the driver conventions, and panics with its output unless it exits 0.
fn run_suite(suite: &str) {
    let python = install_drivers();
    let db = TestDb::new();
    // No reserve: the suites rely on a second client's transaction holding the only other server.
    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", POOL_SIZE)
            .general("reserve_pool_size", 0),
    );
    let dir = tempfile::Builder::new()
        .prefix("pgtenant-driver-python-")
        .tempdir()
        .unwrap();
    // Output goes to files, not pipes: polling for the deadline must not stall a chatty child.
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let script = repo_root().join("tests/drivers/python").join(suite);
    let mut child = Command::new(&python)
        .arg("-u")
        .arg(&script)
        .current_dir(repo_root().join("tests/drivers/python"))
        .envs(support::drivers::driver_env(&proxy, &db, POOL_SIZE))
        // No __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PGPASSWORD")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).unwrap())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|err| panic!("could not run {}: {err}", python.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SUITE_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    match status {
        Some(status) if status.success() => {
            // Shown with --nocapture: which checks ran.
            println!("{stdout}");
            assert!(
                stdout.contains(" passed, 0 failed"),
                "{suite} exited 0 without its summary line:\n{stdout}\n{stderr}"
            );
        }
        Some(status) => {
            panic!("{suite} failed ({status}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")
        }
        None => panic!(
            "{suite} did not finish within {SUITE_DEADLINE:?}:\n--- stdout ---\n{stdout}\n\
             --- stderr ---\n{stderr}"
        ),
    }
}

#[test]
fn psycopg3_suite_passes_through_the_proxy() {
    run_suite("psycopg_suite.py");
}

#[test]
fn asyncpg_suite_passes_through_the_proxy() {
    run_suite("asyncpg_suite.py");
}
