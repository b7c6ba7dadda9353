//! The accept loop: binds the listening socket, enforces `max_client_conn`, spawns one task
//! per client, runs pool maintenance and (with `metrics_listen`) the metrics listener, and
//! stops on shutdown.
//!
//! This module owns the process-level lifecycle of connections. It never reads client
//! traffic itself beyond handing the socket to a session.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
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

/// Serves clients on `listener` until `shutdown` is cancelled, then waits up to
/// `drain` for connected clients to finish.
pub async fn serve(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), RunError> {
    let shared = Shared::new(config, shutdown.clone())?;
    let tracker = TaskTracker::new();
    crate::admin::snapshot::register_start_time(&shared)
        .map_err(crate::metrics::MetricsError::from)?;
    let metrics = match shared.config.general.metrics_listen {
        Some(addr) => {
            Some(crate::metrics::start(addr, Arc::clone(&shared), shutdown.clone()).await?)
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
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                for pool in shared.pools.values() {
                    pool.maintain().await;
                }
            }
        })
    };

    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
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
        let shared = Arc::clone(&shared);
        let count = shared.clients.fetch_add(1, Ordering::AcqRel) + 1;
        let over_limit = count > shared.config.general.max_client_conn;
        tracker.spawn(async move {
            session::serve_client(stream, peer, Arc::clone(&shared), over_limit).await;
            shared.clients.fetch_sub(1, Ordering::AcqRel);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown: clients still connected after the drain timeout; closing them");
    }
    maintenance.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    for pool in shared.pools.values() {
        pool.close().await;
    }
    Ok(())
}
