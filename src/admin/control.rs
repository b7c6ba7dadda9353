//! PgBouncer's control commands on the admin console: `PAUSE [db]`, `RESUME [db]`,
//! `RECONNECT [db]`, `KILL [db]`, `KILL_CLIENT id`, `RELOAD` and `SHUTDOWN
//! [WAIT_FOR_CLIENTS]`, with PgBouncer's meaning.
//!
//! This module owns parsing their arguments, choosing the pools they act on and the reply;
//! the work itself belongs to others: the pool (pause gate, generations), the client registry
//! (kill tokens), [`crate::reload`] and the shutdown tokens in [`Shared`]. It never closes a
//! socket or takes a server away from a transaction itself: a killed session closes its own
//! connection and server, a paused pool closes servers as they come free.

use std::sync::Arc;

use super::reply::Reply;
use crate::pool::Pool;
use crate::state::Shared;

/// The control command `word` (upper case) with its arguments, if it is one; `None` for
/// unknown words.
pub async fn run(shared: &Shared, word: &str, args: &[&str]) -> Option<Reply> {
    let reply = match word {
        "PAUSE" => with_pools(shared, word, args, |pools| pause(shared, pools)).await,
        "RESUME" => with_pools(shared, word, args, |pools| async move { resume(&pools) }).await,
        "RECONNECT" => with_pools(shared, word, args, reconnect).await,
        "KILL" => with_pools(shared, word, args, |pools| kill(shared, args, pools)).await,
        "KILL_CLIENT" => kill_client(shared, args),
        "RELOAD" => match args {
            [] => reload(shared).await,
            _ => too_many_arguments(word),
        },
        "SHUTDOWN" => shutdown(shared, args),
        "SUSPEND" | "DISABLE" | "ENABLE" | "WAIT_CLOSE" | "SET" => {
            let why = match word {
                "SUSPEND" => "it exists for PgBouncer's online restart, which pgtenant does not do",
                "DISABLE" | "ENABLE" => "refusing new clients per database is not implemented",
                "WAIT_CLOSE" => "waiting for retired servers to close is not implemented",
                _ => "settings change through the configuration file and RELOAD",
            };
            Reply::error(
                "0A000",
                format!("{word} is not supported by pgtenant: {why}"),
            )
        }
        _ => return None,
    };
    Some(reply)
}

/// Runs `action` on the pool named by the one optional argument, or on every pool.
async fn with_pools<F, Fut>(shared: &Shared, word: &str, args: &[&str], action: F) -> Reply
where
    F: FnOnce(Vec<Arc<Pool>>) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let current = shared.current();
    let pools = match args {
        [] => {
            let mut all: Vec<Arc<Pool>> = current.pools.values().cloned().collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            all
        }
        [name] => {
            let name = unquote(name);
            match current.pools.get(name) {
                Some(pool) => vec![Arc::clone(pool)],
                None => {
                    return Reply::error(
                        "3D000",
                        format!("database \"{}\" does not exist", super::quoted(name)),
                    );
                }
            }
        }
        _ => return too_many_arguments(word),
    };
    action(pools).await
}

fn too_many_arguments(word: &str) -> Reply {
    Reply::error(
        "42601",
        format!("too many arguments for {word}; SHOW HELP lists the commands"),
    )
}

/// A database name may be given as a quoted identifier.
fn unquote(name: &str) -> &str {
    name.strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(name)
}

fn names(pools: &[Arc<Pool>]) -> String {
    pools
        .iter()
        .map(|p| &*p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Holds new transactions, closes servers as running transactions release them, and returns
/// when none is left (PgBouncer's PAUSE; new transactions wait until RESUME, bounded by
/// `query_wait_timeout`).
async fn pause(shared: &Shared, pools: Vec<Arc<Pool>>) -> Reply {
    tracing::info!(databases = %names(&pools), "PAUSE: holding new transactions, waiting for running ones to finish");
    for pool in &pools {
        pool.pause().await;
    }
    let released = async {
        for pool in &pools {
            pool.wait_released().await?;
        }
        Ok::<(), crate::pool::PauseInterrupted>(())
    };
    tokio::select! {
        r = released => match r {
            Ok(()) => {
                tracing::info!(databases = %names(&pools), "PAUSE: all server connections released");
                Reply::Notices(Vec::new(), "PAUSE")
            }
            Err(e) => Reply::error("55000", e.to_string()),
        },
        _ = shared.shutdown.cancelled() => {
            Reply::error("57P01", "PAUSE interrupted: pgtenant is shutting down")
        }
    }
}

fn resume(pools: &[Arc<Pool>]) -> Reply {
    let resumed: Vec<&str> = pools
        .iter()
        .filter(|p| p.resume())
        .map(|p| &*p.name)
        .collect();
    if resumed.is_empty() {
        return Reply::error(
            "55000",
            match pools {
                [one] => format!("database \"{}\" is not paused", one.name),
                _ => "no database is paused".to_owned(),
            },
        );
    }
    tracing::info!(databases = %resumed.join(", "), "RESUME: transactions go on");
    Reply::Notices(Vec::new(), "RESUME")
}

/// Servers are replaced as they come free; nobody's transaction is interrupted.
async fn reconnect(pools: Vec<Arc<Pool>>) -> Reply {
    tracing::info!(databases = %names(&pools), "RECONNECT: replacing server connections as they come free");
    for pool in &pools {
        pool.reconnect().await;
    }
    Reply::Notices(Vec::new(), "RECONNECT")
}

/// Ends every client of the database(s) now and holds new ones until RESUME.
async fn kill(shared: &Shared, args: &[&str], pools: Vec<Arc<Pool>>) -> Reply {
    // Pause first, so neither a killed client nor a new one gets a server meanwhile.
    for pool in &pools {
        pool.pause().await;
    }
    let killed = match args {
        [] => shared.logged_in.kill_database(None),
        _ => pools
            .iter()
            .map(|p| shared.logged_in.kill_database(Some(&p.name)))
            .sum(),
    };
    tracing::info!(databases = %names(&pools), clients = killed, "KILL: clients closed; new clients wait for RESUME");
    Reply::Notices(Vec::new(), "KILL")
}

fn kill_client(shared: &Shared, args: &[&str]) -> Reply {
    let [id] = args else {
        return Reply::error(
            "42601",
            "KILL_CLIENT takes one client id (the id column of SHOW CLIENTS)",
        );
    };
    let Ok(id) = id.parse::<u64>() else {
        return Reply::error(
            "22P02",
            format!("invalid client id \"{}\"", super::quoted(id)),
        );
    };
    if !shared.logged_in.kill(id) {
        return Reply::error(
            "42704",
            format!("no client with id {id} (SHOW CLIENTS lists them)"),
        );
    }
    tracing::info!(client = id, "KILL_CLIENT: client closed");
    Reply::Notices(Vec::new(), "KILL_CLIENT")
}

async fn reload(shared: &Shared) -> Reply {
    match crate::reload::reload(shared).await {
        Ok(report) => Reply::Notices(report.notices(), "RELOAD"),
        // Config errors name the key and the problem, never a secret's value.
        Err(e) => Reply::error("F0000", format!("configuration not reloaded: {e}")),
    }
}

fn shutdown(shared: &Shared, args: &[&str]) -> Reply {
    match args {
        [] => shared.begin_shutdown("SHUTDOWN command"),
        [mode] if mode.eq_ignore_ascii_case("WAIT_FOR_CLIENTS") => {
            shared.stop_when_clients_leave("SHUTDOWN WAIT_FOR_CLIENTS command")
        }
        _ => {
            return Reply::error("42601", "SHUTDOWN takes no argument or WAIT_FOR_CLIENTS");
        }
    }
    Reply::Notices(Vec::new(), "SHUTDOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_may_be_quoted() {
        assert_eq!(unquote("\"app\""), "app");
        assert_eq!(unquote("app"), "app");
        assert_eq!(unquote("\""), "\"");
    }
}
