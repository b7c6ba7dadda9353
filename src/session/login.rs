//! The login phase of a client connection: startup packet, tenant token, and the replies
//! that make the client believe it talks to PostgreSQL (AuthenticationOk, ParameterStatus,
//! BackendKeyData, ReadyForQuery).
//!
//! This module owns where a token may come from (the password, a `tenant_token` startup
//! parameter, or `-c tenant_token=…` in `options`), which startup parameters a client may
//! set, and the client's side of encryption: SSLRequest answered `S` (or `N`), PostgreSQL
//! 17's direct TLS, and `client_tls_sslmode = require`. It never forwards the token upstream,
//! never logs it, and never lets a failure message quote it.

use std::net::SocketAddr;

use bytes::BytesMut;

use crate::auth::token::TokenError;
use crate::config::ClientTlsMode;
use crate::net::{ClientStream, Stream, send_all};
use crate::pool::Pool;
use crate::protocol::messages::{self, Severity};
use crate::protocol::startup::{self, StartupError, StartupPacket, StartupParams};
use crate::session::params::{ParamSet, tracked_index};
use crate::state::Shared;
use crate::tenant::TenantId;

/// Largest password message accepted: room for a large RS/ES token with many claims.
const MAX_PASSWORD_MESSAGE: usize = 64 * 1024;

/// Room for the login's reply (AuthenticationOk, a dozen ParameterStatus, BackendKeyData,
/// ReadyForQuery: about 420 bytes), reserved once instead of grown message by message.
const LOGIN_REPLY: usize = 512;

/// A client that logged in.
pub struct LoggedIn {
    pub pool: std::sync::Arc<Pool>,
    pub database: String,
    pub user: String,
    pub tenant: TenantId,
    pub params: ParamSet,
    /// The client's cancel key, registered in [`crate::cancel::CancelRegistry`].
    pub cancel_pid: i32,
    pub cancel: std::sync::Arc<crate::cancel::CancelSlot>,
}

pub enum LoginOutcome {
    Session(Box<LoggedIn>),
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// An admin logged in to the admin console (`database=pgtenant`): hand the connection
    /// to [`crate::admin::serve`].
    Admin(Box<crate::admin::auth::AdminLogin>),
}

/// Why a login ended without a session. `Refused` carries what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{message}")]
    Refused {
        sqlstate: &'static str,
        message: String,
        /// Short stable label for logs and metrics.
        reason: &'static str,
    },
    #[error("client went away during login")]
    Gone,
    /// Closed without a reply: the client speaks TLS where pgtenant cannot answer in TLS, or
    /// the handshake failed.
    #[error("connection closed during login ({reason})")]
    Dropped { reason: &'static str },
    #[error("i/o error during login: {0}")]
    Io(#[from] std::io::Error),
}

impl LoginError {
    fn refused(sqlstate: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        LoginError::Refused {
            sqlstate,
            message: message.into(),
            reason,
        }
    }
}

impl From<TokenError> for LoginError {
    fn from(e: TokenError) -> Self {
        LoginError::Refused {
            sqlstate: e.sqlstate(),
            message: e.client_message(),
            reason: e.reason_label(),
        }
    }
}

/// The first byte of a TLS record carrying a handshake message (a ClientHello); a startup
/// packet starts with its length, whose first byte is 0 (they are under 10,000 bytes).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Runs the login phase up to (not including) the final ReadyForQuery. `stream` starts as
/// plain TCP and comes back encrypted if the client asked for TLS.
///
/// `rbuf` keeps what the client sent past the login (a client that pipelines its first
/// messages), for the session to handle.
pub async fn login(
    stream: &mut ClientStream,
    peer: SocketAddr,
    shared: &Shared,
    over_limit: bool,
    out: &mut BytesMut,
    rbuf: &mut BytesMut,
) -> Result<LoginOutcome, LoginError> {
    let tls = shared.tls.client();
    // Direct TLS (PostgreSQL 17, "Protocol Flow: SSL Session Encryption"): the client opens
    // with a ClientHello instead of an SSLRequest, and must negotiate ALPN "postgresql" so
    // that a TLS client of another protocol cannot be steered here.
    match &tls.acceptor {
        Some(acceptor) => {
            if opens_with_tls(stream).await? {
                upgrade(stream, acceptor, peer).await?;
                if stream.alpn_protocol() != Some(crate::tls::ALPN_POSTGRESQL) {
                    return Err(LoginError::refused(
                        "08P01",
                        "tls_alpn",
                        "direct TLS connections must negotiate the ALPN protocol \"postgresql\"",
                    ));
                }
            }
        }
        None => {
            // No certificate to answer direct TLS with, and the client cannot read a
            // PostgreSQL error: close. The first read shows it (no peek needed).
            startup::fill(stream, rbuf, 1).await.map_err(gone_or_io)?;
            if rbuf.first() == Some(&TLS_HANDSHAKE_RECORD) {
                return Err(LoginError::Dropped {
                    reason: "direct_tls_disabled",
                });
            }
        }
    }
    let params = loop {
        let packet = startup::read_packet(stream, rbuf).await;
        match packet {
            Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) if stream.is_tls() => {
                return Err(LoginError::refused(
                    "08P01",
                    "protocol",
                    "encryption was requested on a connection that is already encrypted",
                ));
            }
            Ok(StartupPacket::SslRequest) => match &tls.acceptor {
                // Bytes sent before the handshake would be taken as if they came encrypted
                // (PostgreSQL refuses this too: CVE-2021-23214).
                Some(_) if !rbuf.is_empty() => {
                    return Err(LoginError::refused(
                        "08P01",
                        "protocol",
                        "received unencrypted data after SSL request",
                    ));
                }
                Some(acceptor) => {
                    send_all(stream, b"S").await?;
                    upgrade(stream, acceptor, peer).await?;
                }
                // PostgreSQL's answer for "not available".
                None => send_all(stream, b"N").await?,
            },
            Ok(StartupPacket::GssEncRequest) => {
                // GSS encryption never is available.
                send_all(stream, b"N").await?;
            }
            Ok(StartupPacket::Cancel { pid, secret }) => {
                return Ok(LoginOutcome::Cancel { pid, secret });
            }
            Ok(StartupPacket::Startup(p)) => break p,
            Err(StartupError::Eof) => return Err(LoginError::Gone),
            Err(StartupError::Io(e)) => return Err(LoginError::Io(e)),
            Err(e @ StartupError::UnsupportedProtocol { .. }) => {
                return Err(LoginError::refused("0A000", "protocol", e.to_string()));
            }
            Err(e) => return Err(LoginError::refused("08P01", "protocol", e.to_string())),
        }
    };
    if tls.mode == ClientTlsMode::Require && !stream.is_tls() {
        return Err(LoginError::refused(
            "28000",
            "tls_required",
            "pgtenant accepts only TLS connections (client_tls_sslmode = \"require\"): connect \
             with sslmode=require or stronger",
        ));
    }
    if over_limit {
        return Err(LoginError::refused(
            "53300",
            "max_client_conn",
            "sorry, too many clients already (max_client_conn reached)",
        ));
    }
    let request = ClientRequest::from_startup(&params, shared)?;
    if crate::admin::auth::is_admin_database(shared, &request.database) {
        return admin_login(stream, peer, shared, request, out, rbuf).await;
    }
    // One snapshot of the configuration for the whole login, whatever a reload does meanwhile.
    let current = shared.current();
    let pool = current
        .pools
        .get(&request.database)
        .cloned()
        .ok_or_else(|| {
            LoginError::refused(
                "3D000",
                "unknown_database",
                format!("database \"{}\" does not exist", request.database),
            )
        })?;

    if !secret_may_travel(
        peer,
        stream.is_tls(),
        current.config.general.allow_plaintext_token,
    ) {
        return Err(LoginError::refused(
            "28000",
            "plaintext_token",
            "tenant tokens are not accepted over an unencrypted connection from a non-loopback \
             address (set allow_plaintext_token = true to allow it)",
        ));
    }

    let token = match request.token {
        Some(t) => t,
        None => {
            messages::auth_cleartext_password(out);
            send_all(stream, out).await?;
            out.clear();
            read_password(stream, rbuf).await?
        }
    };
    let verified = current.verifier.verify(&token)?;
    drop(token);

    let server_params = pool
        .startup_params()
        .await
        .map_err(|e| LoginError::Refused {
            sqlstate: e.sqlstate(),
            message: e.to_string(),
            reason: "upstream",
        })?;

    out.reserve(LOGIN_REPLY);
    messages::auth_ok(out);
    for (name, encoded) in &server_params.encoded {
        match tracked_index(name).and_then(|i| request.params.get(i)) {
            Some(v) => messages::parameter_status(out, name, v),
            None => out.extend_from_slice(encoded),
        }
    }
    let (cancel_pid, cancel_secret, cancel) = loop {
        let (pid, secret) = cancel_key();
        if let Some(slot) = shared.cancels.register(pid, secret) {
            break (pid, secret, slot);
        }
    };
    messages::backend_key_data(out, cancel_pid, cancel_secret);
    Ok(LoginOutcome::Session(Box::new(LoggedIn {
        pool,
        database: request.database,
        user: request.user,
        tenant: verified.tenant,
        params: shared.recent_params.share(request.params),
        cancel_pid,
        cancel,
    })))
}

/// The admin console's login: the same plaintext rule as for tenant tokens, then an admin
/// password or admin-claim token (see [`crate::admin::auth`]).
async fn admin_login(
    stream: &mut ClientStream,
    peer: SocketAddr,
    shared: &Shared,
    request: ClientRequest,
    out: &mut BytesMut,
    rbuf: &mut BytesMut,
) -> Result<LoginOutcome, LoginError> {
    if !secret_may_travel(
        peer,
        stream.is_tls(),
        shared.config().general.allow_plaintext_token,
    ) {
        return Err(LoginError::refused(
            "28000",
            "plaintext_token",
            "admin credentials are not accepted over an unencrypted connection from a \
             non-loopback address (set allow_plaintext_token = true to allow it)",
        ));
    }
    let secret = match request.token {
        Some(t) => t,
        None => {
            messages::auth_cleartext_password(out);
            send_all(stream, out).await?;
            out.clear();
            read_password(stream, rbuf).await?
        }
    };
    let admin = crate::admin::auth::authenticate(shared, &request.user, &secret).map_err(|e| {
        LoginError::Refused {
            sqlstate: e.sqlstate(),
            message: e.to_string(),
            reason: e.reason(),
        }
    })?;
    drop(secret);
    crate::admin::write_welcome(out);
    Ok(LoginOutcome::Admin(Box::new(admin)))
}

/// Whether a token or password may be sent on this connection: always over TLS; over
/// plaintext only from loopback, unless `allow_plaintext_token`.
fn secret_may_travel(peer: SocketAddr, tls: bool, allow_plaintext: bool) -> bool {
    tls || allow_plaintext || is_loopback(peer)
}

/// Whether the client's first byte starts a TLS handshake (without consuming it).
async fn opens_with_tls(stream: &ClientStream) -> Result<bool, LoginError> {
    let Some(tcp) = stream.tcp() else {
        return Err(LoginError::Gone);
    };
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await? {
        0 => Err(LoginError::Gone),
        _ => Ok(first[0] == TLS_HANDSHAKE_RECORD),
    }
}

/// Runs the TLS handshake on the plain connection and puts the encrypted one in its place.
async fn upgrade(
    stream: &mut ClientStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    peer: SocketAddr,
) -> Result<(), LoginError> {
    let Stream::Plain(tcp) = std::mem::replace(stream, Stream::Detached) else {
        return Err(LoginError::Dropped {
            reason: "tls_handshake",
        });
    };
    match acceptor.accept(tcp).await {
        Ok(tls) => {
            *stream = Stream::Tls(Box::new(tls));
            Ok(())
        }
        Err(e) => {
            tracing::info!(%peer, error = %e, "client TLS handshake failed");
            Err(LoginError::Dropped {
                reason: "tls_handshake",
            })
        }
    }
}

/// Whether a peer address is this machine's loopback (also as an IPv4-mapped IPv6 address):
/// the only place a token may travel over plaintext without `allow_plaintext_token`.
fn is_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A random process id and secret from the OS CSPRNG: the key a client must present to
/// cancel its query, so it must not be guessable.
fn cancel_key() -> (i32, i32) {
    use rand::TryRngCore;
    let mut bytes = [0u8; 8];
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        // Without OS randomness fall back to the thread RNG (itself seeded from the OS).
        rand::fill(&mut bytes);
    }
    let pid = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & 0x7fff_ffff;
    let secret = i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    (pid.max(1), secret)
}

/// What a client asked for in its startup packet.
struct ClientRequest {
    database: String,
    user: String,
    token: Option<String>,
    params: ParamSet,
}

impl ClientRequest {
    fn from_startup(p: &StartupParams, shared: &Shared) -> Result<ClientRequest, LoginError> {
        // One pass for the names that matter; the last of a repeated one counts.
        let (mut user, mut database) = ("", "");
        for (name, value) in p.iter() {
            match name {
                "user" => user = value,
                "database" => database = value,
                _ => {}
            }
        }
        let user = user.to_owned();
        if user.is_empty() {
            return Err(LoginError::refused(
                "28000",
                "protocol",
                "no PostgreSQL user name specified in startup packet",
            ));
        }
        let database = if database.is_empty() {
            user.clone()
        } else {
            database.to_owned()
        };
        let mut token = None;
        let mut params: ParamSet = Default::default();
        let config = shared.config();
        let tenant_setting = config.general.tenant_setting.as_str();
        let mut set = |name: &str,
                       value: &str,
                       token: &mut Option<String>|
         -> Result<(), LoginError> {
            if name == "tenant_token" {
                *token = Some(value.to_owned());
                return Ok(());
            }
            if let Err(refusal) = shared.guard.check_parameter(name, value) {
                shared.stats.guard_refused(refusal.rule);
                return Err(LoginError::Refused {
                    sqlstate: "42501",
                    message: refusal.message,
                    reason: "guard",
                });
            }
            if name.eq_ignore_ascii_case(tenant_setting) {
                return Err(LoginError::refused(
                    "42501",
                    "guard",
                    format!(
                        "setting \"{tenant_setting}\" is managed by pgtenant and cannot be set by a client"
                    ),
                ));
            } else if let Some(i) = tracked_index(name) {
                params.set(i, Some(value));
            } else if name == "replication" {
                return Err(LoginError::refused(
                    "0A000",
                    "protocol",
                    "replication connections are not supported by pgtenant",
                ));
            } else {
                tracing::debug!(parameter = name, "ignoring unsupported startup parameter");
            }
            Ok(())
        };
        for (name, value) in p.iter() {
            match name {
                "user" | "database" => {}
                "options" => {
                    for opt in startup::parse_options(value) {
                        match opt {
                            Ok((n, v)) => set(&n, &v, &mut token)?,
                            Err(_) => {
                                return Err(LoginError::refused(
                                    "08P01",
                                    "protocol",
                                    "unsupported command-line option in \"options\": only -c name=value is accepted",
                                ));
                            }
                        }
                    }
                }
                _ => set(name, value, &mut token)?,
            }
        }
        Ok(ClientRequest {
            database,
            user,
            token,
            params,
        })
    }
}

async fn read_password(
    stream: &mut ClientStream,
    rbuf: &mut BytesMut,
) -> Result<String, LoginError> {
    startup::fill(stream, rbuf, 5).await.map_err(gone_or_io)?;
    if rbuf[0] != b'p' {
        return Err(LoginError::refused(
            "08P01",
            "protocol",
            format!(
                "expected a password message, got message type '{}'",
                char::from(rbuf[0]).escape_default()
            ),
        ));
    }
    let len = i32::from_be_bytes([rbuf[1], rbuf[2], rbuf[3], rbuf[4]]);
    if len < 5 || len as usize > MAX_PASSWORD_MESSAGE {
        return Err(LoginError::refused(
            "08P01",
            "protocol",
            format!("invalid password message length {len}"),
        ));
    }
    startup::fill(stream, rbuf, 1 + len as usize)
        .await
        .map_err(gone_or_io)?;
    let message = rbuf.split_to(1 + len as usize);
    let mut body = message[5..].to_vec();
    if body.last() != Some(&0) {
        return Err(LoginError::refused(
            "08P01",
            "protocol",
            "invalid password message",
        ));
    }
    body.pop();
    if body.is_empty() {
        return Err(LoginError::refused(
            "28P01",
            "missing_token",
            "no tenant token given: pass the token as the password",
        ));
    }
    String::from_utf8(body)
        .map_err(|_| LoginError::refused("28000", "malformed", "tenant token is not valid UTF-8"))
}

/// A read that hit the end of the stream means the client left.
fn gone_or_io(e: std::io::Error) -> LoginError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        LoginError::Gone
    } else {
        LoginError::Io(e)
    }
}

/// Appends the FATAL error for a refused login.
pub fn refusal(out: &mut BytesMut, sqlstate: &str, message: &str) {
    messages::error_response(out, Severity::Fatal, sqlstate, message, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_count_as_loopback() {
        for (addr, expected) in [
            ("127.0.0.1:5000", true),
            ("127.8.9.10:5000", true),
            ("[::1]:5000", true),
            ("[::ffff:127.0.0.1]:5000", true),
            ("10.0.0.7:5000", false),
            ("192.168.1.2:5000", false),
            ("[::ffff:10.0.0.7]:5000", false),
            ("[2001:db8::1]:5000", false),
        ] {
            let peer: SocketAddr = addr.parse().unwrap();
            assert_eq!(is_loopback(peer), expected, "{addr}");
        }
    }

    #[test]
    fn secrets_travel_over_tls_from_anywhere_and_over_plaintext_only_from_loopback() {
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert!(secret_may_travel(remote, true, false));
        assert!(!secret_may_travel(remote, false, false));
        assert!(secret_may_travel(remote, false, true));
        assert!(secret_may_travel(local, false, false));
    }

    #[test]
    fn cancel_keys_are_positive_and_vary() {
        let keys: std::collections::HashSet<(i32, i32)> = (0..64).map(|_| cancel_key()).collect();
        assert!(keys.len() > 60);
        assert!(keys.iter().all(|(pid, _)| *pid > 0));
    }
}
