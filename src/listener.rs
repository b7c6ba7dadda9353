//! The accept loop: binds the listening socket, enforces `max_client_conn`, spawns one task
//! per client, runs pool maintenance and (with `metrics_listen`) the metrics listener, and
//! stops on shutdown (draining clients for a bounded time) or on `SHUTDOWN WAIT_FOR_CLIENTS`
//! (waiting for the last client to leave).
//!
//! This module owns the process-level lifecycle of connections. It never reads client
//! traffic itself beyond handing the socket to a session.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::session;
use crate::state::{Shared, StateError};

/// Why the proxy could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Binds the configured address.
pub async fn bind(config: &Config) -> Result<TcpListener, RunError> {
    let addr = format!(
        "{}:{}",
        config.general.listen_addr, config.general.listen_port
    );
    TcpListener::bind(&addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

/// Serves clients on `listener` until `shared.stop_accepting` is cancelled. After a shutdown
/// (`shared.shutdown`) connected clients get up to `drain` (by default the configuration's
/// `shutdown_timeout`, as in force when the drain begins) to finish; after `SHUTDOWN
/// WAIT_FOR_CLIENTS` they may stay as long as they like, unless a shutdown follows.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    drain: Option<Duration>,
) -> Result<(), RunError> {
    let shutdown = shared.shutdown.clone();
    let tracker = TaskTracker::new();
    crate::admin::snapshot::register_start_time(&shared)
        .map_err(crate::metrics::MetricsError::from)?;
    let metrics = match shared.config().general.metrics_listen {
        Some(addr) => {
            // /readyz turns 503 as soon as no new clients are accepted.
            let stopping = shared.stop_accepting.clone();
            Some(crate::metrics::start(addr, Arc::clone(&shared), stopping).await?)
        }
        None => None,
    };

    let maintenance = {
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        // Sessions hear of the drain through their own signal, not by each
                        // waiting on the shared token (one lock for all, every transaction).
                        shared.logged_in.shutdown_all();
                        break;
                    }
                    _ = tick.tick() => {}
                }
                for pool in shared.all_pools() {
                    pool.maintain().await;
                }
            }
        })
    };

    // The accept loop runs as a task on the runtime's workers. Awaited directly it would run
    // on the thread that called `block_on`, and every accepted client would cost a wake-up of
    // that thread by the worker that saw the listener become readable.
    let accepting = tokio::spawn(accept_loop(Arc::clone(&shared), listener, tracker.clone()));
    if let Err(e) = accepting.await {
        tracing::error!(error = %e, "the accept loop ended abnormally");
    }
    tracker.close();
    let drained = tokio::select! {
        _ = tracker.wait() => true,
        _ = shutdown.cancelled() => {
            let drain = drain.unwrap_or(shared.config().general.shutdown_timeout);
            tokio::time::timeout(drain, tracker.wait()).await.is_ok()
        }
    };
    if !drained {
        tracing::warn!("shutdown: clients still connected after the drain timeout; closing them");
    }
    maintenance.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    for pool in shared.all_pools() {
        pool.close().await;
    }
    Ok(())
}

/// Accepts clients until `shared.stop_accepting` is cancelled, one tracked task each.
async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tracker: TaskTracker) {
    let stop_accepting = shared.stop_accepting.clone();
    loop {
        let accepted = tokio::select! {
            _ = stop_accepting.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let count = shared.clients.fetch_add(1, Ordering::AcqRel) + 1;
        let over_limit = count > shared.config().general.max_client_conn;
        // The connection leaves the count when its task ends.
        let client = session::serve_client(stream, peer, Arc::clone(&shared), over_limit);
        tracker.spawn(client);
    }
}
