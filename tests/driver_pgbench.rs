//! pgbench (issue 4, item 6) through pgtenant in each of its query modes: `-M simple` (Query
//! messages), `-M extended` (unnamed Parse/Bind/Execute) and `-M prepared` (each statement
//! prepared once per client under a name, then only Bind/Execute).
//!
//! Each run is two pgbench processes at once, one per tenant, each with four clients
//! (`-c 4`) on a proxy pool of two servers, running a fixed number of explicit transactions
//! (`-t`) of a custom script. The script does the work of the issue (`BEGIN; SELECT count(*)
//! FROM invoices; SELECT current_setting('app.current_tenant_id'); END;`) and also checks
//! inside every transaction that it sees exactly its tenant's invoices: a wrong answer divides
//! by zero, which aborts the pgbench client and fails its run. The test wants a clean exit,
//! `number of failed transactions: 0` and every transaction processed.
//!
//! pgbench's built-in TPC-B-like script needs the pgbench tables (`pgbench -i` as a role with
//! CREATE); the application role has none, so that script is not run here.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Server connections in the proxy pool: fewer than the clients.
const POOL_SIZE: i64 = 2;
/// pgbench clients per tenant.
const CLIENTS: u32 = 4;
/// Transactions per client.
const TRANSACTIONS: u32 = 150;
/// Bound on a pgbench run, so that a stuck proxy fails the test instead of hanging CI.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// The transaction every client repeats. `:invoices` and `:total` are the tenant's invoice
/// count and sum (`-D`); `1 / false::int` raises division_by_zero when an answer is wrong.
const SCRIPT: &str = "\
BEGIN;
SELECT count(*) FROM invoices;
SELECT current_setting('app.current_tenant_id');
SELECT 1 / ((SELECT count(*) FROM invoices) = :invoices)::int;
SELECT 1 / ((SELECT sum(amount) FROM invoices) = :total)::int;
SELECT 1 / (SELECT bool_and(tenant_id = current_setting('app.current_tenant_id')::uuid) FROM invoices)::int;
END;
";

/// Acme's and Globex's invoices in `config/demo_data.sql`: (tenant, count, sum of amounts).
const TENANTS: [(&str, i64, &str); 2] = [
    (TENANT_ACME, ACME_INVOICES, "1750.00"),
    (TENANT_GLOBEX, GLOBEX_INVOICES, "9900.00"),
];

fn pgbench_binary(db: &TestDb) -> PathBuf {
    let bundled = db.cluster().binaries().bin_dir.join("pgbench");
    if bundled.exists() {
        bundled
    } else {
        "pgbench".into()
    }
}

/// Runs both tenants' pgbench at once in `mode` and checks each run's report.
fn run_mode(mode: &str) {
    let db = TestDb::new();
    let proxy = Proxy::start(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", POOL_SIZE)
            .general("reserve_pool_size", 0),
    );
    let dir = tempfile::Builder::new()
        .prefix("pgtenant-driver-pgbench-")
        .tempdir()
        .unwrap();
    let script_path = dir.path().join("tenant.sql");
    fs::write(&script_path, SCRIPT).unwrap();
    let pgbench = pgbench_binary(&db);
    let port = proxy.port().to_string();

    let mut children = Vec::new();
    for (tenant, invoices, total) in TENANTS {
        // Output goes to files, not pipes: polling for the deadline must not stall pgbench.
        let stdout_path = dir.path().join(format!("{tenant}.stdout"));
        let stderr_path = dir.path().join(format!("{tenant}.stderr"));
        let child = Command::new(&pgbench)
            .args(["-n", "-M", mode, "-j", "2"])
            .arg(format!("--client={CLIENTS}"))
            .arg(format!("--transactions={TRANSACTIONS}"))
            .arg(format!("--define=invoices={invoices}"))
            .arg(format!("--define=total={total}"))
            .arg("-f")
            .arg(&script_path)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                CLIENT_USER,
                PROXY_DBNAME,
            ])
            .env("PGPASSWORD", token_for(tenant))
            .env("PGCONNECT_TIMEOUT", "30")
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).unwrap())
            .stderr(fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap_or_else(|err| panic!("could not run {}: {err}", pgbench.display()));
        children.push((tenant, child, stdout_path, stderr_path));
    }

    let started = Instant::now();
    let mut reports = Vec::new();
    for (tenant, mut child, stdout_path, stderr_path) in children {
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > RUN_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
        let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
        reports.push((tenant, status, stdout, stderr));
    }
    for (tenant, status, stdout, stderr) in reports {
        let context = format!(
            "pgbench -M {mode} as {tenant}:\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        );
        let Some(status) = status else {
            panic!("still running after {RUN_DEADLINE:?}: {context}");
        };
        let output = Output {
            status,
            stdout: stdout.clone().into_bytes(),
            stderr: stderr.clone().into_bytes(),
        };
        check_report(&output, &context);
    }
}

/// A clean exit, no failed transaction, every transaction processed, no error printed.
fn check_report(output: &Output, context: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {}: {context}", output.status);
    assert!(
        !stderr.to_lowercase().contains("error") && !stdout.contains("aborted"),
        "errors reported: {context}"
    );
    let failed = stdout
        .lines()
        .find_map(|line| line.strip_prefix("number of failed transactions: "))
        .unwrap_or_else(|| panic!("no failed-transaction count: {context}"));
    assert!(failed.starts_with("0 "), "failed transactions: {context}");
    let processed = stdout
        .lines()
        .find_map(|line| line.strip_prefix("number of transactions actually processed: "))
        .unwrap_or_else(|| panic!("no processed-transaction count: {context}"));
    let expected = CLIENTS * TRANSACTIONS;
    assert_eq!(
        processed.trim(),
        format!("{expected}/{expected}"),
        "transactions processed: {context}"
    );
}

#[test]
fn pgbench_simple_mode_runs_both_tenants_without_failed_transactions() {
    run_mode("simple");
}

#[test]
fn pgbench_extended_mode_runs_both_tenants_without_failed_transactions() {
    run_mode("extended");
}

#[test]
fn pgbench_prepared_mode_runs_both_tenants_without_failed_transactions() {
    run_mode("prepared");
}
