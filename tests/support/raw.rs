//! The wire protocol by hand, for tests that must see exactly what the proxy sends or send what
//! no well-behaved client would: startup and SSL/GSSENC request packets, backend messages read
//! one at a time with a bound on every read, ErrorResponse fields, and a raw login and simple
//! query. It never hides a hang: every read panics after [`READ_BOUND`].

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{CLIENT_USER, PROXY_DBNAME};

/// Upper bound for any single read from the proxy; reaching it means the proxy hung.
pub const READ_BOUND: Duration = Duration::from_secs(30);

/// The request codes of SSLRequest and GSSENCRequest ("Message Formats" in the PostgreSQL
/// protocol documentation).
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;

/// One backend message: its type byte and payload.
#[derive(Debug)]
pub struct BackendMsg {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// Reads one message, or `None` at EOF (or a reset). Panics if the proxy neither sends a
/// whole message nor closes within [`READ_BOUND`].
pub async fn read_msg<S: AsyncRead + Unpin>(stream: &mut S) -> Option<BackendMsg> {
    let read = async {
        let mut header = [0u8; 5];
        if stream.read_exact(&mut header).await.is_err() {
            return None;
        }
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        assert!(len >= 4, "backend message with length {len}");
        let mut body = vec![0u8; len as usize - 4];
        if stream.read_exact(&mut body).await.is_err() {
            return None;
        }
        Some(BackendMsg {
            tag: header[0],
            body,
        })
    };
    match tokio::time::timeout(READ_BOUND, read).await {
        Ok(msg) => msg,
        Err(_) => panic!("the proxy sent nothing and did not close within {READ_BOUND:?}"),
    }
}

/// A field (`b'C'` SQLSTATE, `b'M'` message...) of an ErrorResponse payload.
pub fn error_field(body: &[u8], field: u8) -> Option<String> {
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if kind == field {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = &tail[end + 1..];
    }
    None
}

/// An SSLRequest or GSSENCRequest packet: length 8, then `code`.
pub fn request_packet(code: i32) -> [u8; 8] {
    let mut packet = [0u8; 8];
    packet[..4].copy_from_slice(&8i32.to_be_bytes());
    packet[4..].copy_from_slice(&code.to_be_bytes());
    packet
}

/// The startup parameters of a client that gives `token` as `tenant_token` (no password).
pub fn token_params(token: &str) -> Vec<(&str, &str)> {
    vec![
        ("user", CLIENT_USER),
        ("database", PROXY_DBNAME),
        ("tenant_token", token),
    ]
}

pub async fn raw_connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

pub async fn write_startup<S: AsyncWrite + Unpin>(stream: &mut S, params: &[(&str, &str)]) {
    let mut buf = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut buf).unwrap();
    stream.write_all(&buf).await.unwrap();
    stream.flush().await.unwrap();
}

/// Connects and sends a StartupMessage with `params`.
pub async fn send_startup(port: u16, params: &[(&str, &str)]) -> TcpStream {
    let mut stream = raw_connect(port).await;
    write_startup(&mut stream, params).await;
    stream
}

/// What the proxy answered to a raw startup.
#[derive(Debug, Default)]
pub struct LoginReply {
    /// Authentication request codes in order (0 = Ok, 3 = cleartext password...).
    pub auth: Vec<i32>,
    pub params: HashMap<String, String>,
    pub backend_key: bool,
    pub ready: bool,
    /// (SQLSTATE, message) of an ErrorResponse.
    pub error: Option<(String, String)>,
}

/// Reads the login replies until ReadyForQuery, an error, EOF, or a password request.
pub async fn read_login<S: AsyncRead + Unpin>(stream: &mut S) -> LoginReply {
    let mut reply = LoginReply::default();
    while let Some(msg) = read_msg(stream).await {
        match msg.tag {
            b'R' => {
                let code = i32::from_be_bytes([msg.body[0], msg.body[1], msg.body[2], msg.body[3]]);
                reply.auth.push(code);
                if code != 0 {
                    return reply;
                }
            }
            b'S' => {
                let mut parts = msg.body.split(|&b| b == 0);
                let name = String::from_utf8_lossy(parts.next().unwrap_or(&[])).into_owned();
                let value = String::from_utf8_lossy(parts.next().unwrap_or(&[])).into_owned();
                reply.params.insert(name, value);
            }
            b'K' => reply.backend_key = true,
            b'Z' => {
                reply.ready = true;
                return reply;
            }
            b'E' => {
                reply.error = Some((
                    error_field(&msg.body, b'C').unwrap_or_default(),
                    error_field(&msg.body, b'M').unwrap_or_default(),
                ));
                return reply;
            }
            _ => {}
        }
    }
    reply
}

/// A raw connection that sent no token and was asked for a cleartext password (which the
/// proxy expects to be the token); panics if the proxy answered anything else.
pub async fn raw_password_request(port: u16) -> TcpStream {
    let mut stream = send_startup(port, &[("user", CLIENT_USER), ("database", PROXY_DBNAME)]).await;
    let reply = read_login(&mut stream).await;
    assert_eq!(
        reply.auth,
        vec![3],
        "expected a cleartext password request, got {reply:?}"
    );
    stream
}

/// A raw connection logged in with `token` as the `tenant_token` parameter plus `extra`;
/// panics unless the login reaches ReadyForQuery without an error.
pub async fn raw_login(port: u16, token: &str, extra: &[(&str, &str)]) -> (TcpStream, LoginReply) {
    let mut params = token_params(token);
    params.extend_from_slice(extra);
    let mut stream = send_startup(port, &params).await;
    let reply = read_login(&mut stream).await;
    assert_eq!(reply.error, None, "login failed");
    assert!(reply.ready, "login did not finish: {reply:?}");
    (stream, reply)
}

/// Runs a simple query on a raw, logged-in connection; returns the first column of each row.
pub async fn raw_query<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sql: &str,
) -> Vec<String> {
    let mut buf = BytesMut::new();
    frontend::query(sql, &mut buf).unwrap();
    stream.write_all(&buf).await.unwrap();
    stream.flush().await.unwrap();
    let mut rows = Vec::new();
    loop {
        let msg = read_msg(stream)
            .await
            .unwrap_or_else(|| panic!("connection closed during {sql:?}"));
        match msg.tag {
            b'D' => {
                let len = i32::from_be_bytes([msg.body[2], msg.body[3], msg.body[4], msg.body[5]]);
                let value = &msg.body[6..6 + len as usize];
                rows.push(String::from_utf8_lossy(value).into_owned());
            }
            b'E' => panic!(
                "{sql:?} failed: {:?}",
                error_field(&msg.body, b'M').unwrap_or_default()
            ),
            b'Z' => return rows,
            _ => {}
        }
    }
}
