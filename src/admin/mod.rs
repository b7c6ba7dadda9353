//! The admin console: a client that logs in to the virtual database `pgtenant` (or
//! `pgbouncer`) as an admin gets PgBouncer-style `SHOW` commands over the simple query
//! protocol.
//!
//! This module owns the console's session after login: reading messages, splitting a query
//! into commands, answering each, and refusing the extended protocol cleanly. Who is an
//! admin is [`auth`]'s decision, what is reported comes from [`snapshot`] (the same numbers
//! `/metrics` serves), result encoding is [`reply`]'s, and the control commands (PAUSE,
//! KILL, RELOAD, SHUTDOWN, ...) are [`control`]'s. The console never forwards anything to a
//! PostgreSQL server and never shows a secret; it ends with the proxy's shutdown like any
//! idle client.

pub mod auth;
pub mod control;
pub mod reply;
pub mod show;
pub mod show_config;
pub mod snapshot;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use crate::net::{ClientStream, send_all};

use crate::protocol::messages::{self, Severity};
use crate::protocol::{self, FrameError};
use crate::state::Shared;
use auth::AdminLogin;
use reply::Reply;

/// Largest message accepted from an admin client; commands are a few words.
const MAX_ADMIN_MESSAGE: usize = 64 * 1024;
/// Longest command word quoted back in an error.
const MAX_QUOTED: usize = 64;

/// Why an admin session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin client connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unexpected message type '{0}' on the admin console")]
    UnexpectedMessage(char),
}

/// Appends what a client gets after an admin login, before ReadyForQuery:
/// AuthenticationOk and the ParameterStatus messages drivers expect.
pub fn write_welcome(out: &mut BytesMut) {
    messages::auth_ok(out);
    let version = format!("{} (pgtenant admin console)", env!("CARGO_PKG_VERSION"));
    for (name, value) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        messages::parameter_status(out, name, value);
    }
}

/// Serves a logged-in admin until it disconnects. `out` holds the login replies; the first
/// ReadyForQuery is appended here.
pub async fn serve(
    mut stream: ClientStream,
    peer: SocketAddr,
    client_id: u64,
    shared: Arc<Shared>,
    login: AdminLogin,
    mut out: BytesMut,
    pending: BytesMut,
) {
    tracing::info!(client = client_id, %peer, user = %login.user, method = login.method, "admin console login");
    messages::ready_for_query(&mut out, b'I');
    match run(&mut stream, &shared, out, pending).await {
        Ok(()) => tracing::debug!(client = client_id, "admin console session ended"),
        Err(e @ (AdminError::Frame(_) | AdminError::UnexpectedMessage(_))) => {
            let mut out = BytesMut::new();
            messages::error_response(&mut out, Severity::Fatal, "08P01", &e.to_string(), None);
            let _ = send_all(&mut stream, &out).await;
            tracing::info!(client = client_id, error = %e, "admin console session closed");
        }
        Err(e) => tracing::debug!(client = client_id, error = %e, "admin console session ended"),
    }
}

async fn run(
    stream: &mut ClientStream,
    shared: &Shared,
    mut out: BytesMut,
    mut buf: BytesMut,
) -> Result<(), AdminError> {
    buf.reserve(1024);
    // After an extended-protocol message was refused: skip to the next Sync, as PostgreSQL
    // does after an error in an extended-protocol batch.
    let mut skipping_to_sync = false;
    loop {
        while let Some(frame) = protocol::peek_frame(&buf, MAX_ADMIN_MESSAGE)? {
            let msg = protocol::take_frame(&mut buf, frame);
            match frame.tag {
                b'Q' => {
                    let sql = protocol::read_cstr(protocol::payload(&msg))
                        .map(|(s, _)| String::from_utf8_lossy(s).into_owned())
                        .unwrap_or_default();
                    execute(shared, &sql, &mut out).await;
                    messages::ready_for_query(&mut out, b'I');
                }
                b'X' => {
                    send_all(stream, &out).await?;
                    return Ok(());
                }
                b'S' => {
                    skipping_to_sync = false;
                    messages::ready_for_query(&mut out, b'I');
                }
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {
                    if !skipping_to_sync {
                        skipping_to_sync = true;
                        Reply::error(
                            "0A000",
                            "the admin console speaks the simple query protocol only \
                             (e.g. psql, or simple_query in a driver)",
                        )
                        .encode(&mut out);
                    }
                }
                b'F' => {
                    Reply::error(
                        "0A000",
                        "function calls are not supported on the admin console",
                    )
                    .encode(&mut out);
                    messages::ready_for_query(&mut out, b'I');
                }
                other => return Err(AdminError::UnexpectedMessage(char::from(other))),
            }
        }
        if !out.is_empty() {
            send_all(stream, &out).await?;
            out.clear();
        }
        let read = tokio::select! {
            r = stream.read_buf(&mut buf) => r?,
            _ = shared.shutdown.cancelled() => {
                messages::error_response(
                    &mut out,
                    Severity::Fatal,
                    "57P01",
                    "terminating connection due to administrator command (pgtenant is shutting down)",
                    None,
                );
                send_all(stream, &out).await?;
                return Ok(());
            }
        };
        if read == 0 {
            return Ok(());
        }
    }
}

/// Runs every `;`-separated command of `sql`, stopping at the first error (as PostgreSQL
/// stops a multi-statement query), and appends the replies.
async fn execute(shared: &Shared, sql: &str, out: &mut BytesMut) {
    let commands: Vec<&str> = sql
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if commands.is_empty() {
        messages::empty_reply(out, b'I');
        return;
    }
    for command in commands {
        let reply = answer(shared, command).await;
        reply.encode(out);
        if reply.is_error() {
            return;
        }
    }
}

/// The reply to one command (no `;`).
pub async fn answer(shared: &Shared, command: &str) -> Reply {
    let mut words = command.split_whitespace();
    let Some(first) = words.next() else {
        return Reply::error("42601", "empty command");
    };
    let first = first.to_ascii_uppercase();
    if first == "SHOW" {
        let what = words
            .next()
            .map(str::to_ascii_uppercase)
            .unwrap_or_default();
        if words.next().is_some() {
            return Reply::error(
                "42601",
                format!("SHOW {what} takes no arguments on the admin console"),
            );
        }
        return show::run(shared, &what).unwrap_or_else(|| {
            Reply::error(
                "42601",
                format!(
                    "unknown SHOW item \"{}\"; SHOW HELP lists what the admin console shows",
                    quoted(&what)
                ),
            )
        });
    }
    let args: Vec<&str> = words.collect();
    control::run(shared, &first, &args)
        .await
        .unwrap_or_else(|| {
            Reply::error(
                "42601",
                format!(
                    "unknown admin console command \"{}\"; SHOW HELP lists the commands",
                    quoted(&first)
                ),
            )
        })
}

fn quoted(word: &str) -> String {
    word.chars().take(MAX_QUOTED).collect()
}
