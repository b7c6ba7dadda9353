//! The JDBC driver compatibility suite (issue 4, item 6): Debian's pgJDBC
//! (libpostgresql-jdbc-java) with the machine's JDK, against its own database and a proxy with a
//! pool of two servers, so that server-side prepared statements and session settings have to
//! hop between pooled servers.
//!
//! The suite lives in tests/drivers/jdbc (plain Java, no build tool); scripts/drivers/jdbc.sh
//! installs the JDK and the driver jar with apt-get when missing (a failed install fails the
//! test, it never skips). This test compiles the suite with javac into target/drivers/jdbc,
//! creates the fixtures the suite needs as superuser, and runs it. The suite prints
//! `N passed, M failed` and exits non-zero when a check failed; its whole output is shown then.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Bound on the suite's run, so that a hung driver fails the test instead of hanging CI.
const SUITE_DEADLINE: Duration = Duration::from_secs(300);
/// Server connections per pool: small, so that statements and settings change servers.
const POOL_SIZE: i64 = 2;

/// What the suite needs besides the example schema, created as superuser:
/// - `jdbc_import`: PostgreSQL refuses `COPY FROM` into a table with row-level security
///   (0A000), so `CopyManager.copyIn` loads this table without RLS whose `tenant_id` defaults to
///   the tenant setting; the suite checks (as superuser) that every row got its own tenant.
///   `api_user` may only insert into it.
/// - `jdbc_marker` resolves to a different view in `public` and in `jdbc_alt`: what it returns
///   shows which `search_path` is in force.
const FIXTURES_SQL: &str = "
CREATE TABLE public.jdbc_import (
    tenant_id uuid NOT NULL DEFAULT current_setting('app.current_tenant_id')::uuid,
    n         integer NOT NULL,
    label     text NOT NULL
);
CREATE INDEX jdbc_import_tenant_label ON public.jdbc_import (tenant_id, label);
GRANT INSERT ON public.jdbc_import TO api_user;

CREATE SCHEMA jdbc_alt;
GRANT USAGE ON SCHEMA jdbc_alt TO api_user;
CREATE VIEW public.jdbc_marker AS SELECT 'public'::text AS label;
CREATE VIEW jdbc_alt.jdbc_marker AS SELECT 'alt'::text AS label;
GRANT SELECT ON public.jdbc_marker, jdbc_alt.jdbc_marker TO api_user;
";

use support::drivers::repo_root;

/// Runs scripts/drivers/jdbc.sh and returns the driver jar (the script's last line).
fn install_driver() -> PathBuf {
    let jar = support::drivers::run_installer("scripts/drivers/jdbc.sh");
    assert!(
        Path::new(&jar).is_file(),
        "scripts/drivers/jdbc.sh did not print the driver jar: {jar:?}"
    );
    PathBuf::from(jar)
}

/// Compiles tests/drivers/jdbc/*.java against `jar` into target/drivers/jdbc/classes.
fn compile_suite(jar: &Path) -> PathBuf {
    let sources_dir = repo_root().join("tests/drivers/jdbc");
    let mut sources: Vec<PathBuf> = fs::read_dir(&sources_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "java"))
        .collect();
    sources.sort();
    assert!(
        !sources.is_empty(),
        "no Java sources in {}",
        sources_dir.display()
    );
    let classes = repo_root().join("target/drivers/jdbc/classes");
    // Stale classes of renamed sources must not linger.
    let _ = fs::remove_dir_all(&classes);
    fs::create_dir_all(&classes).unwrap();
    let output = Command::new("javac")
        .args(["-encoding", "UTF-8", "-Xlint:all", "-d"])
        .arg(&classes)
        .arg("-cp")
        .arg(jar)
        .args(&sources)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("could not run javac: {err}"));
    assert!(
        output.status.success(),
        "javac failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    classes
}

#[test]
fn jdbc_suite_passes_through_the_proxy() {
    let jar = install_driver();
    let classes = compile_suite(&jar);
    let db = TestDb::new();
    db.psql(FIXTURES_SQL);
    // No reserve: the suite relies on a second client's transaction holding the only other server.
    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", POOL_SIZE)
            .general("reserve_pool_size", 0),
    );
    let dir = tempfile::Builder::new()
        .prefix("pgtenant-driver-jdbc-")
        .tempdir()
        .unwrap();
    // Output goes to files, not pipes: polling for the deadline must not stall a chatty child.
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut classpath = classes.into_os_string();
    classpath.push(":");
    classpath.push(&jar);
    let mut child = Command::new("java")
        .arg("-cp")
        .arg(&classpath)
        .arg("JdbcSuite")
        .current_dir(dir.path())
        .envs(support::drivers::driver_env(&proxy, &db, POOL_SIZE))
        .env_remove("JAVA_TOOL_OPTIONS")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).unwrap())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|err| panic!("could not run java: {err}"));
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
                "the JDBC suite exited 0 without its summary line:\n{stdout}\n{stderr}"
            );
        }
        Some(status) => panic!(
            "the JDBC suite failed ({status}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
        None => panic!(
            "the JDBC suite did not finish within {SUITE_DEADLINE:?}:\n--- stdout ---\n{stdout}\n\
             --- stderr ---\n{stderr}"
        ),
    }
}
