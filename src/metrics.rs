//! The operator's HTTP listener (`metrics_listen`): `GET /metrics` in the Prometheus text
//! format, `/healthz` (the process is alive) and `/readyz` (the client listener is up and a
//! database has been reached).
//!
//! This module owns the scrape: the shared registry of [`crate::stats`] plus the gauges that
//! only make sense computed at scrape time from [`crate::admin::snapshot`] (servers by state,
//! pool sizes, wait queues, the top-N tenants with the rest summed as `other`), so the hot
//! path pays nothing for them. The HTTP side is a deliberately minimal HTTP/1.1 responder:
//! one bounded request per connection, a deadline on every read and write, `Connection:
//! close`. It must never panic or wait forever on what a peer sends, never serve anything
//! but these three paths, and never put a secret in a response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::{CounterVec, Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::admin::snapshot;
use crate::state::Shared;

/// Largest request head (request line + headers) read before answering 431.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A peer gets this long to send its request and this long again to take the response.
const IO_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at accept (scrapers retry).
const MAX_CONNECTIONS: usize = 64;
/// After answering, how long (and how many bytes) to read and discard what the peer still
/// sends, so closing with unread data does not reset the connection before the peer has
/// read the response (a "lingering close").
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;
/// How long `/readyz` waits for a probe connection to the upstream before answering 503
/// (the probe itself runs on, bounded by `server_connect_timeout`).
const READY_PROBE_WAIT: Duration = Duration::from_secs(3);

/// Why the metrics listener could not start or a scrape could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("could not listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// Binds `addr` and serves it on a task until the task is aborted. `/readyz` answers 503 as
/// soon as `shutdown` is cancelled, so load balancers stop sending clients during a drain.
pub async fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!(addr = %local, "metrics listening");
    }
    let server = Arc::new(MetricsServer {
        shared,
        shutdown,
        probing: Arc::new(AtomicBool::new(false)),
    });
    Ok(tokio::spawn(server.accept_loop(listener)))
}

struct MetricsServer {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// A readiness probe connection is being opened; another request does not start one.
    probing: Arc<AtomicBool>,
}

impl MetricsServer {
    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        // Connections live in this set, so aborting the accept task ends them too.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) if connections.len() < MAX_CONNECTIONS => {
                        connections.spawn(Arc::clone(&self).serve_connection(stream));
                    }
                    Ok((stream, peer)) => {
                        tracing::debug!(%peer, "metrics: too many connections; closing");
                        drop(stream);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }

    async fn serve_connection(self: Arc<Self>, mut stream: TcpStream) {
        let response = match tokio::time::timeout(IO_DEADLINE, read_request_head(&mut stream)).await
        {
            Err(_) => return,
            Ok(Err(HeadError::Closed)) => return,
            Ok(Err(HeadError::TooLarge)) => Response::text(431, "request header too large\n"),
            Ok(Ok(head)) => match parse_request_line(&head) {
                Some(req) => self.route(&req).await,
                None => Response::text(400, "bad request\n"),
            },
        };
        let _ = tokio::time::timeout(IO_DEADLINE, async {
            stream.write_all(&response.head_bytes()).await?;
            if !response.head_only {
                stream.write_all(&response.body).await?;
            }
            stream.shutdown().await
        })
        .await;
        let _ = tokio::time::timeout(LINGER, async {
            let mut sink = [0u8; 4096];
            let mut drained = 0;
            while drained < LINGER_BYTES {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }

    async fn route(&self, req: &Request<'_>) -> Response {
        let head_only = match req.method {
            "GET" => false,
            "HEAD" => true,
            _ => return Response::text(405, "method not allowed\n").allow("GET, HEAD"),
        };
        let response = match req.path {
            "/metrics" => match render(&self.shared) {
                Ok(body) => Response {
                    status: 200,
                    content_type: prometheus::TEXT_FORMAT,
                    body: body.into_bytes(),
                    allow: None,
                    head_only: false,
                },
                Err(e) => {
                    tracing::error!(error = %e, "metrics: could not render the scrape");
                    Response::text(500, "could not render metrics; see the pgtenant log\n")
                }
            },
            "/healthz" => Response::text(200, "ok\n"),
            "/readyz" => {
                if self.shutdown.is_cancelled() {
                    Response::text(503, "shutting down\n")
                } else if self.upstream_reached().await {
                    Response::text(200, "ready\n")
                } else {
                    Response::text(503, "no upstream database reached yet\n")
                }
            }
            _ => Response::text(404, "not found\n"),
        };
        Response {
            head_only,
            ..response
        }
    }

    /// Whether some pool holds a server connection, or can open one now. With none open, a
    /// probe checks a connection out of each pool in turn and returns it; the probe runs on
    /// its own task because a checkout must not be abandoned half-way (it would lose the
    /// pool slot it holds), and this request waits for it only [`READY_PROBE_WAIT`].
    async fn upstream_reached(&self) -> bool {
        let pools: Vec<_> = self.shared.current().pools.values().cloned().collect();
        if pools.iter().any(|p| p.stats().total > 0) {
            return true;
        }
        if self.probing.swap(true, Ordering::AcqRel) {
            return false;
        }
        let in_flight = ProbeInFlight(Arc::clone(&self.probing));
        let probe = tokio::spawn(async move {
            let _in_flight = in_flight;
            for pool in pools {
                match pool.checkout().await {
                    Ok(conn) => {
                        conn.release();
                        return true;
                    }
                    Err(e) => {
                        tracing::debug!(db = %pool.name, error = %e, "readiness probe failed");
                    }
                }
            }
            false
        });
        matches!(
            tokio::time::timeout(READY_PROBE_WAIT, probe).await,
            Ok(Ok(true))
        )
    }
}

/// Clears the probe flag when the probe task ends, however it ends.
struct ProbeInFlight(Arc<AtomicBool>);

impl Drop for ProbeInFlight {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Renders everything `/metrics` serves, in the Prometheus text format.
pub fn render(shared: &Shared) -> Result<String, MetricsError> {
    let mut families = shared.stats.registry.gather();
    families.extend(scrape_time_registry(shared)?.gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    prometheus::TextEncoder::new().encode(&families, &mut out)?;
    // The text encoder writes only UTF-8 (names are ASCII, label values are Rust strings).
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A throwaway registry filled from one snapshot: what is cheaper to compute at scrape time
/// than to maintain on every event.
fn scrape_time_registry(shared: &Shared) -> Result<Registry, MetricsError> {
    let registry = Registry::new();
    let gauges = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        registry.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let counters =
        |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };

    let servers = gauges(
        "pgtenant_server_connections",
        "Server connections by state: active (lent to a client's transaction, or being \
         opened) and idle (in the pool)",
        &["database", "state"],
    )?;
    let pool_size = gauges(
        "pgtenant_pool_size",
        "Configured server connections per pool (default_pool_size or pool_size)",
        &["database"],
    )?;
    let reserve_size = gauges(
        "pgtenant_pool_reserve_size",
        "Configured extra server connections (reserve_pool_size)",
        &["database"],
    )?;
    let waiting = gauges(
        "pgtenant_pool_waiting_clients",
        "Logged-in clients of the pool waiting for a server connection (queued, or held by \
         PAUSE/KILL); SHOW POOLS cl_waiting",
        &["database"],
    )?;
    let active = gauges(
        "pgtenant_pool_active_clients",
        "Logged-in clients of the pool not waiting for a server connection, idle ones \
         included; SHOW POOLS cl_active",
        &["database"],
    )?;
    let connects = counters(
        "pgtenant_server_connects_total",
        "Connections opened to the upstream database (attempts)",
        &["database"],
    )?;
    let assignments = counters(
        "pgtenant_server_assignments_total",
        "Server connections handed to clients",
        &["database"],
    )?;
    let wait_timeouts = counters(
        "pgtenant_pool_wait_timeouts_total",
        "Clients refused because no server became free within query_wait_timeout",
        &["database"],
    )?;
    for p in snapshot::pools(shared) {
        let db = [p.database.as_str()];
        servers
            .with_label_values(&[p.database.as_str(), "active"])
            .set(to_i64(p.servers_active));
        servers
            .with_label_values(&[p.database.as_str(), "idle"])
            .set(to_i64(p.servers_idle));
        pool_size.with_label_values(&db).set(to_i64(p.pool_size));
        reserve_size
            .with_label_values(&db)
            .set(to_i64(p.reserve_pool_size));
        waiting.with_label_values(&db).set(p.clients_waiting);
        active.with_label_values(&db).set(p.clients_active);
        connects.with_label_values(&db).inc_by(p.connects);
        assignments.with_label_values(&db).inc_by(p.assignments);
        wait_timeouts.with_label_values(&db).inc_by(p.wait_timeouts);
    }

    let connections = IntGauge::new(
        "pgtenant_client_connections",
        "Client connections accepted and open (logged in, logging in, or admin console)",
    )?;
    registry.register(Box::new(connections.clone()))?;
    connections.set(to_i64(snapshot::clients(shared).connected));

    let known = IntGauge::new(
        "pgtenant_tenants",
        "Tenants that have logged in since start",
    )?;
    registry.register(Box::new(known.clone()))?;
    known.set(to_i64(shared.stats.tenants.len()));

    let xacts = counters(
        "pgtenant_tenant_transactions_total",
        "Transactions per tenant (top_tenants by transactions; the rest as tenant=\"other\")",
        &["tenant"],
    )?;
    let queries = counters(
        "pgtenant_tenant_queries_total",
        "Queries per tenant (top_tenants by transactions; the rest as tenant=\"other\")",
        &["tenant"],
    )?;
    let wait = CounterVec::new(
        Opts::new(
            "pgtenant_tenant_wait_seconds_total",
            "Time the tenant's clients waited for a server connection",
        ),
        &["tenant"],
    )?;
    registry.register(Box::new(wait.clone()))?;
    let tenant_clients = gauges(
        "pgtenant_tenant_clients",
        "Connected clients per tenant",
        &["tenant"],
    )?;
    let tenant_active = gauges(
        "pgtenant_tenant_active_transactions",
        "Clients of the tenant in a transaction (bound to a server) now",
        &["tenant"],
    )?;
    let (top, other) = snapshot::top_tenants(shared, shared.config().general.top_tenants);
    for t in top.iter().chain(std::iter::once(&other)) {
        let label = [t.tenant.as_str()];
        xacts.with_label_values(&label).inc_by(t.xacts);
        queries.with_label_values(&label).inc_by(t.queries);
        wait.with_label_values(&label)
            .inc_by(Duration::from_micros(t.wait_us).as_secs_f64());
        tenant_clients.with_label_values(&label).set(t.clients);
        tenant_active.with_label_values(&label).set(t.active);
    }
    Ok(registry)
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// ------------------------------------------------------------------ minimal HTTP/1.1

enum HeadError {
    /// The peer closed (or reset) before sending a whole request head.
    Closed,
    TooLarge,
}

/// Reads up to the blank line that ends the request head; the body (if any) is ignored.
async fn read_request_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let scan_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf[scan_from..]) {
            buf.truncate(scan_from + end);
            return Ok(buf);
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Position just past `\r\n\r\n` (or a bare `\n\n`, which RFC 9112 §2.2 lets servers accept).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    method: &'a str,
    /// The path without its query string.
    path: &'a str,
}

/// `METHOD SP request-target SP HTTP/1.x` (RFC 9112 §3); anything else is `None`.
fn parse_request_line(head: &[u8]) -> Option<Request<'_>> {
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !matches!(version, "HTTP/1.1" | "HTTP/1.0")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some(Request { method, path })
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    allow: Option<&'static str>,
    head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            allow: None,
            head_only: false,
        }
    }

    fn allow(self, methods: &'static str) -> Response {
        Response {
            allow: Some(methods),
            ..self
        }
    }

    fn head_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Unknown",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            head.push_str("Allow: ");
            head.push_str(allow);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_gives_method_and_path_without_query() {
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(Request {
                method: "GET",
                path: "/metrics"
            })
        );
        assert_eq!(
            parse_request_line(b"HEAD /healthz HTTP/1.0\n\n"),
            Some(Request {
                method: "HEAD",
                path: "/healthz"
            })
        );
    }

    #[test]
    fn garbage_request_lines_are_refused() {
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"\xff\xfe /x HTTP/1.1\r\n\r\n",
            b"no newline at all",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn head_end_is_found_across_both_line_endings() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn responses_state_length_and_close() {
        let head = String::from_utf8(Response::text(404, "not found\n").head_bytes()).unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
        assert!(head.contains("Content-Length: 10\r\n"), "{head}");
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
    }
}
