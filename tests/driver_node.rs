//! Node.js driver compatibility (issue 4 item 6): runs tests/drivers/node/suite.mjs, which
//! drives node-postgres (`pg`, with `name:` queries, pipeline mode, pg-copy-streams,
//! `Client#cancel`) and postgres.js (prepared and pipelined tagged templates, `sql.begin`,
//! `sql.unsafe`, cursors, COPY streams, `query.cancel()`) through the proxy with a pool of two
//! servers, so that prepared statements and session settings must follow clients between
//! servers. The driver packages come from npm, pinned by tests/drivers/node/package-lock.json
//! and installed by scripts/drivers/node.sh; a failed installation fails this test.

mod support;

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// The pool size the suite is written for: small enough that its concurrent clients share
/// servers, and the number of servers its checks hold to force a client onto another one.
const POOL_SIZE: i64 = 2;
/// Bound on the whole suite, so that a hung proxy fails the test instead of hanging it (each
/// check also has its own deadline inside the suite).
const HANG_GUARD: Duration = Duration::from_secs(600);

use support::drivers::repo_root;

/// Runs scripts/drivers/node.sh (Node.js, npm and the locked packages); panics if it fails.
fn install_node_packages() {
    support::drivers::run_installer("scripts/drivers/node.sh");
}

/// Waits for `child` up to [`HANG_GUARD`], killing it when it takes longer.
fn wait_bounded(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_all(stream: Option<impl std::io::Read>) -> String {
    let mut text = String::new();
    if let Some(mut stream) = stream {
        let _ = stream.read_to_string(&mut text);
    }
    text
}

#[test]
fn node_postgres_and_postgres_js_suite_passes_through_the_proxy() {
    let root = repo_root();
    install_node_packages();

    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", POOL_SIZE));
    let suite_dir = root.join("tests/drivers/node");
    let mut child = Command::new("node")
        .arg("suite.mjs")
        .current_dir(&suite_dir)
        .envs(support::drivers::driver_env(&proxy, &db, POOL_SIZE))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("could not run node in {}: {err}", suite_dir.display()));

    // Drain stderr on a thread so that a chatty child cannot block on a full pipe.
    let stderr = child.stderr.take();
    let stderr_reader = std::thread::spawn(move || read_all(stderr));
    let stdout = child.stdout.take();
    let stdout_reader = std::thread::spawn(move || read_all(stdout));
    let status = wait_bounded(&mut child);
    let stdout = stdout_reader.join().unwrap();
    let stderr = stderr_reader.join().unwrap();

    println!("{stdout}");
    let succeeded = status.is_some_and(|status| status.success());
    assert!(
        succeeded,
        "the Node.js driver suite failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n\
         --- proxy log (last 60 lines) ---\n{}",
        status.map_or_else(|| format!("killed after {HANG_GUARD:?}"), |s| s.to_string()),
        tail(&proxy.log(), 60)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
