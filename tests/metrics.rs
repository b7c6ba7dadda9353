//! The operator HTTP listener (`metrics_listen`) of a running proxy: `/metrics` numbers move
//! with real traffic (transactions, queries, bytes, waits, servers by state, the wait queue,
//! login failures by reason, per-tenant top-N with the rest as `other`), `/healthz`,
//! `/readyz` (ready once a database is reached, not while it is unreachable or while the
//! proxy drains), and the HTTP responder's answers to requests it does not serve.
//!
//! Every "eventually" is a bounded polling loop; no test asserts how long anything took.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use pgtenant::cluster::free_loopback_port;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOUND: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(50);

/// A proxy for `db` serving metrics on a free port; returns it with that port.
fn start_with_metrics(config: ProxyConfig) -> (Proxy, u16) {
    let port = free_loopback_port().unwrap();
    let proxy = Proxy::start(config.general("metrics_listen", format!("127.0.0.1:{port}")));
    (proxy, port)
}

/// Sends raw bytes, returns (status code, body). Status 0 when no status line came back.
async fn http_raw(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // The listener may answer (and close) before an oversized request is fully sent: a
    // failed write or a reset after the answer is part of that, not a test failure.
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(BOUND, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.expect("the metrics listener neither answered nor closed");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn get(port: u16, path: &str) -> (u16, String) {
    http_raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
    .await
}

async fn scrape(port: u16) -> Scrape {
    let (status, body) = get(port, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(&body)
}

/// A sample's labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// The samples of one scrape, by metric name.
struct Scrape {
    text: String,
    samples: BTreeMap<String, Vec<Sample>>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            samples
                .entry(name.to_owned())
                .or_default()
                .push((labels, value));
        }
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of the sample of `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(name)?.iter().find_map(|(have, value)| {
            labels
                .iter()
                .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
                .then_some(*value)
        })
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{}", self.text))
    }

    /// Label values of `label` across the samples of `name`.
    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        self.samples
            .get(name)
            .map(|s| {
                s.iter()
                    .filter_map(|(l, _)| l.get(label).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Scrapes until `check` holds; panics with the last scrape after [`BOUND`].
async fn scrape_until(port: u16, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let s = scrape(port).await;
        if check(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached after {BOUND:?}; last scrape:\n{}",
            s.text
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn get_until(port: u16, path: &str, want: u16) -> String {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let (status, body) = get(port, path).await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: still {status} ({body:?}), expected {want}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

const APP: (&str, &str) = ("database", PROXY_DBNAME);

// ------------------------------------------------------------------ traffic

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_queries_bytes_and_waits_move_with_traffic() {
    let db = TestDb::new();
    let (proxy, port) = start_with_metrics(ProxyConfig::for_db(&db));
    let before = scrape(port).await;
    assert_eq!(before.value("pgtenant_transactions_total", &[APP]), 0.0);
    assert_eq!(before.value("pgtenant_pool_size", &[APP]), 4.0);

    let acme = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    for _ in 0..3 {
        acme.simple_query("SELECT 1").await.unwrap();
    }
    // One transaction of two queries.
    acme.simple_query("BEGIN").await.unwrap();
    acme.simple_query("SELECT 2").await.unwrap();
    acme.simple_query("SELECT 3").await.unwrap();
    acme.simple_query("COMMIT").await.unwrap();

    let s = scrape_until(port, "4 transactions counted", |s| {
        s.get("pgtenant_transactions_total", &[APP]) == Some(4.0)
    })
    .await;
    assert_eq!(s.value("pgtenant_queries_total", &[APP]), 7.0);
    assert_eq!(
        s.value("pgtenant_transaction_duration_seconds_count", &[APP]),
        4.0
    );
    assert_eq!(s.value("pgtenant_client_wait_seconds_count", &[APP]), 4.0);
    // The first login borrows a server once to learn its parameters: 4 + 1.
    assert_eq!(s.value("pgtenant_server_assignments_total", &[APP]), 5.0);
    assert!(s.value("pgtenant_client_received_bytes_total", &[APP]) > 0.0);
    assert!(s.get("pgtenant_client_sent_bytes_total", &[APP]).is_some());
    assert_eq!(s.value("pgtenant_logins_total", &[]), 1.0);
    assert_eq!(s.value("pgtenant_clients_idle", &[]), 1.0);
    assert_eq!(s.value("pgtenant_client_connections", &[]), 1.0);
    assert_eq!(
        s.value("pgtenant_server_connections", &[APP, ("state", "idle")]),
        1.0
    );
    assert_eq!(
        s.value("pgtenant_server_connections", &[APP, ("state", "active")]),
        0.0
    );
    assert_eq!(s.value("pgtenant_server_connects_total", &[APP]), 1.0);
    assert_eq!(
        s.value(
            "pgtenant_tenant_transactions_total",
            &[("tenant", TENANT_ACME)]
        ),
        4.0
    );
    assert_eq!(
        s.value("pgtenant_tenant_queries_total", &[("tenant", TENANT_ACME)]),
        7.0
    );
    assert!(
        s.get("pgtenant_process_start_time_seconds", &[])
            .is_some_and(|t| t > 0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_queued_for_the_only_server_shows_in_the_wait_queue() {
    let db = TestDb::new();
    let (proxy, port) = start_with_metrics(
        ProxyConfig::for_db(&db)
            .general("default_pool_size", 1)
            .general("query_wait_timeout", 0),
    );
    let holder = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let waiter = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    holder.simple_query("BEGIN").await.unwrap();
    holder.simple_query("SELECT 1").await.unwrap();

    let s = scrape(port).await;
    assert_eq!(
        s.value("pgtenant_server_connections", &[APP, ("state", "active")]),
        1.0
    );
    assert_eq!(s.value("pgtenant_clients_active", &[]), 1.0);
    // SHOW POOLS' cl_active: logged-in clients not waiting, the idle one included.
    assert_eq!(s.value("pgtenant_pool_active_clients", &[APP]), 2.0);
    assert_eq!(s.value("pgtenant_pool_waiting_clients", &[APP]), 0.0);
    assert_eq!(
        s.value(
            "pgtenant_tenant_active_transactions",
            &[("tenant", TENANT_ACME)]
        ),
        1.0
    );

    let queued = tokio::spawn(async move {
        waiter.simple_query("SELECT 1").await.unwrap();
        waiter
    });
    scrape_until(port, "one client in the wait queue", |s| {
        s.get("pgtenant_pool_waiting_clients", &[APP]) == Some(1.0)
            && s.get("pgtenant_clients_waiting", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(
        scrape(port)
            .await
            .value("pgtenant_pool_active_clients", &[APP]),
        1.0
    );

    holder.simple_query("COMMIT").await.unwrap();
    let _waiter = tokio::time::timeout(BOUND, queued).await.unwrap().unwrap();
    let s = scrape_until(port, "queue drained", |s| {
        s.get("pgtenant_pool_waiting_clients", &[APP]) == Some(0.0)
            && s.get(
                "pgtenant_tenant_transactions_total",
                &[("tenant", TENANT_GLOBEX)],
            ) == Some(1.0)
    })
    .await;
    assert_eq!(s.value("pgtenant_clients_waiting", &[]), 0.0);
    assert!(
        s.value(
            "pgtenant_tenant_wait_seconds_total",
            &[("tenant", TENANT_GLOBEX)]
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_top_n_tenants_get_series_and_the_rest_sum_as_other() {
    let db = TestDb::new();
    let (proxy, port) = start_with_metrics(ProxyConfig::for_db(&db).general("top_tenants", 1));
    // Acme: 3 transactions; Globex: 2; the unknown tenant: 1 (and stays connected).
    for (tenant, xacts) in [(TENANT_ACME, 3), (TENANT_GLOBEX, 2)] {
        let client = proxy.connect(&token_for(tenant)).await.unwrap();
        for _ in 0..xacts {
            client.simple_query("SELECT 1").await.unwrap();
        }
    }
    let third = proxy.connect(&token_for(TENANT_UNKNOWN)).await.unwrap();
    third.simple_query("SELECT 1").await.unwrap();

    let s = scrape_until(port, "6 transactions", |s| {
        s.get("pgtenant_transactions_total", &[APP]) == Some(6.0)
    })
    .await;
    let mut tenants = s.label_values("pgtenant_tenant_transactions_total", "tenant");
    tenants.sort();
    assert_eq!(tenants, vec![TENANT_ACME.to_owned(), "other".to_owned()]);
    let xacts = |t: &str| s.value("pgtenant_tenant_transactions_total", &[("tenant", t)]);
    assert_eq!((xacts(TENANT_ACME), xacts("other")), (3.0, 3.0));
    assert_eq!(
        s.value("pgtenant_tenant_clients", &[("tenant", "other")]),
        1.0
    );
    assert_eq!(s.value("pgtenant_tenants", &[]), 3.0);
    for tenant in [TENANT_GLOBEX, TENANT_UNKNOWN] {
        assert!(!s.text.contains(tenant), "{tenant} has its own series");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_are_counted_by_reason() {
    let db = TestDb::new();
    let (proxy, port) = start_with_metrics(ProxyConfig::for_db(&db));
    for token in [
        expired_token(TENANT_ACME),
        expired_token(TENANT_GLOBEX),
        wrong_key_token(TENANT_ACME),
        token_without_tenant(),
    ] {
        assert!(proxy.connect(&token).await.is_err());
    }
    let s = scrape_until(port, "4 refused logins", |s| {
        s.samples
            .get("pgtenant_login_failures_total")
            .is_some_and(|v| v.iter().map(|(_, n)| n).sum::<f64>() == 4.0)
    })
    .await;
    let failures = |reason: &str| s.value("pgtenant_login_failures_total", &[("reason", reason)]);
    assert_eq!(failures("expired"), 2.0);
    assert_eq!(failures("bad_signature"), 1.0);
    assert_eq!(failures("missing_tenant_claim"), 1.0);
    assert_eq!(s.value("pgtenant_logins_total", &[]), 0.0);
}

// ------------------------------------------------------------------ health and readiness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_ready_once_the_database_is_reached() {
    let db = TestDb::new();
    let (proxy, port) = start_with_metrics(ProxyConfig::for_db(&db));
    assert_eq!(get(port, "/healthz").await, (200, "ok\n".to_owned()));
    // No client has connected: the probe itself reaches the database.
    get_until(port, "/readyz", 200).await;
    let s = scrape(port).await;
    assert_eq!(
        s.value("pgtenant_server_connections", &[APP, ("state", "idle")]),
        1.0
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_unavailable_while_no_database_can_be_reached() {
    let db = TestDb::new();
    let closed_port = free_loopback_port().unwrap();
    let (proxy, port) = start_with_metrics(
        ProxyConfig::for_db(&db)
            .app_db("port", i64::from(closed_port))
            .general("server_connect_timeout", 1),
    );
    for _ in 0..3 {
        let (status, body) = get(port, "/readyz").await;
        assert_eq!(status, 503, "{body}");
    }
    assert_eq!(get(port, "/healthz").await.0, 200);
    let s = scrape_until(port, "connect errors counted", |s| {
        s.get("pgtenant_server_connect_errors_total", &[APP])
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(
        s.value("pgtenant_server_connections", &[APP, ("state", "idle")]),
        0.0
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_proxy_drains_and_metrics_stay_up() {
    let db = TestDb::new();
    let (mut proxy, port) = start_with_metrics(ProxyConfig::for_db(&db));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    get_until(port, "/readyz", 200).await;
    // A transaction in flight keeps the drain going (idle clients are closed at once).
    client.batch_execute("BEGIN; SELECT 1").await.unwrap();

    proxy.signal(libc::SIGTERM);
    let body = get_until(port, "/readyz", 503).await;
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(get(port, "/healthz").await.0, 200);
    assert_eq!(
        scrape(port).await.value("pgtenant_clients_active", &[]),
        1.0
    );

    client.batch_execute("COMMIT").await.unwrap();
    drop(client);
    let status = tokio::task::spawn_blocking(move || proxy.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

// ------------------------------------------------------------------ the HTTP responder

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_it_does_not_serve_get_an_error_and_never_stop_the_listener() {
    let db = TestDb::new();
    let (_proxy, port) = start_with_metrics(ProxyConfig::for_db(&db));
    assert_eq!(get(port, "/").await.0, 404);
    assert_eq!(get(port, "/metrics/../admin").await.0, 404);
    assert_eq!(
        http_raw(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .await
            .0,
        405
    );
    assert_eq!(
        http_raw(
            port,
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n"
        )
        .await
        .0,
        400
    );
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(http_raw(port, huge.as_bytes()).await.0, 431);
    // A peer that connects and leaves, or sends half a request and leaves.
    drop(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    let mut half = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    half.write_all(b"GET /metr").await.unwrap();
    drop(half);

    let (status, body) = http_raw(port, b"HEAD /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(get(port, "/healthz?verbose=1").await.0, 200);
}
