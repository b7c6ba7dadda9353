//! PgBouncer's control commands (`PAUSE`, `RESUME`, `RELOAD`, `RECONNECT`, `KILL`,
//! `KILL_CLIENT`, `SHUTDOWN`, ...) on the admin console.
//!
//! None of them can be done faithfully from outside the pool and the session yet, so each
//! answers SQLSTATE 0A000 naming what is missing, rather than doing half of it: a `KILL`
//! that closed a pool for good with no `RESUME`, or a `SHUTDOWN` that raised a signal an
//! embedding process did not expect, would be worse than a clear "not supported yet". This
//! module must never change pool or client state behind the session's back.

use super::reply::Reply;

/// The control command `word` (upper case), if it is one; `None` for unknown words.
pub fn run(word: &str) -> Option<Reply> {
    let why = match word {
        "PAUSE" | "SUSPEND" => "holding new transactions needs a pause gate in the pool",
        "RESUME" => "there is nothing to resume: PAUSE, SUSPEND and KILL are not supported",
        "RELOAD" => "configuration reload is not implemented yet (restart to apply changes)",
        "RECONNECT" => "replacing servers as they come free needs a generation count in the pool",
        "KILL" => "dropping a database's clients needs a per-client registry",
        "KILL_CLIENT" => "ending one client needs a per-client registry",
        "SHUTDOWN" => {
            "the console cannot reach the shutdown token yet; send SIGTERM to the process \
             (same drain)"
        }
        "DISABLE" | "ENABLE" => "refusing new clients per database needs a flag in the pool",
        "WAIT_CLOSE" => "waiting for servers to close needs RECONNECT",
        "SET" => "settings cannot be changed at run time yet",
        _ => return None,
    };
    Some(Reply::error(
        "0A000",
        format!("{word} is not supported by pgtenant yet: {why}"),
    ))
}
