//! The unauthenticated start of a connection: SSLRequest, GSSENCRequest, CancelRequest and
//! the StartupMessage (protocol docs, "Start-up" and "Message Formats").
//!
//! This module reads exactly one startup-phase packet with a hard size cap and turns it into
//! a typed value. It never authenticates anything and never logs parameter values (the
//! `tenant_token` parameter and `options` may carry a token).

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// PostgreSQL's own cap on startup-phase packets (pqcomm.h MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET: usize = 10_000;

const CANCEL_REQUEST_CODE: i32 = 80_877_102;
const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;

/// One startup-phase packet.
#[derive(Debug)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup(StartupParams),
}

/// Parameters of a StartupMessage. `Debug` does not print values: they may hold a token.
///
/// Read in place rather than with pgwire's `Startup` decoder: that builds a map of owned
/// strings, a dozen allocations per login, and logins are a hot path for clients that
/// connect per request (about 3k of ~50k instructions per `pgbench -C` connection).
pub struct StartupParams {
    pub minor_version: u16,
    /// The packet's `name\0value\0…` list without its final terminator; checked on receipt
    /// to hold complete pairs.
    list: String,
}

impl std::fmt::Debug for StartupParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartupParams")
            .field("minor_version", &self.minor_version)
            .field("names", &self.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .finish()
    }
}

impl StartupParams {
    /// Checks the layout PostgreSQL requires: NUL-terminated UTF-8 name and value pairs,
    /// ended by an empty name that is the packet's last byte.
    fn parse(minor_version: u16, list: &[u8]) -> Result<StartupParams, StartupError> {
        let Some((&0, pairs)) = list.split_last() else {
            return Err(StartupError::Malformed);
        };
        let pairs = std::str::from_utf8(pairs).map_err(|_| StartupError::Malformed)?;
        let params = StartupParams {
            minor_version,
            list: pairs.to_owned(),
        };
        // Complete pairs only: every string terminated, an even number of them, and no
        // empty name (an empty name ends the list early).
        let mut strings = 0;
        let mut ended = 0;
        for (i, piece) in params.strings().enumerate() {
            if i % 2 == 0 && piece.is_empty() {
                return Err(StartupError::Malformed);
            }
            strings += 1;
            ended += piece.len() + 1;
        }
        if strings % 2 != 0 || ended != pairs.len() {
            return Err(StartupError::Malformed);
        }
        Ok(params)
    }

    /// The NUL-terminated strings of the list. A byte loop: the strings are short, and
    /// both a `char` pattern split and a memchr call per string cost several times more on
    /// this path, which every login takes.
    fn strings(&self) -> impl Iterator<Item = &str> {
        let list = self.list.as_str();
        let mut at = 0;
        std::iter::from_fn(move || {
            let rest = list.get(at..)?;
            let end = rest.bytes().position(|b| b == 0)?;
            at += end + 1;
            rest.get(..end)
        })
    }

    /// The parameters in the order the client sent them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut strings = self.strings();
        std::iter::from_fn(move || Some((strings.next()?, strings.next()?)))
    }

    /// A parameter's value; the last one if the client sent it more than once (as PostgreSQL
    /// takes it).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .filter(|(n, _)| *n == name)
            .last()
            .map(|(_, v)| v)
    }
}

/// Why a startup packet was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid startup packet length {0}")]
    BadLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout")]
    Malformed,
    #[error("connection closed during startup")]
    Eof,
    #[error("i/o error during startup: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes asked of the socket at a time during the login: a startup packet or a token-bearing
/// password message normally fits, so it arrives in one read.
const LOGIN_READ: usize = 1024;

/// Reads until `buf` holds at least `n` bytes, taking whatever the peer has sent in each
/// read (so a message usually costs one read, not one for its length and one for its body).
/// Bytes past `n` stay in `buf` for the next message.
pub async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    n: usize,
) -> std::io::Result<()> {
    while buf.len() < n {
        buf.reserve((n - buf.len()).max(LOGIN_READ));
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Reads one startup-phase packet. `buf` holds bytes read before and keeps those read past
/// the packet.
pub async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<StartupPacket, StartupError> {
    let eof = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            StartupError::Eof
        } else {
            StartupError::Io(e)
        }
    };
    fill(stream, buf, 4).await.map_err(eof)?;
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(StartupError::BadLength(i64::from(len)));
    }
    fill(stream, buf, len as usize).await.map_err(eof)?;
    let packet = buf.split_to(len as usize);
    let body = &packet[4..];
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    match code {
        SSL_REQUEST_CODE if len == 8 => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if len == 8 => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE if len == 16 => {
            let pid = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            let secret = i32::from_be_bytes([body[8], body[9], body[10], body[11]]);
            Ok(StartupPacket::Cancel { pid, secret })
        }
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => {
            Err(StartupError::Malformed)
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupPacket::Startup(StartupParams::parse(
                minor,
                &body[4..],
            )?))
        }
    }
}

/// Splits a libpq `options` string into `-c name=value` / `--name=value` settings, following
/// PostgreSQL's rules: words are separated by whitespace, a backslash escapes the next byte.
/// Words that are not settings are returned as `Err(word)` so the caller can refuse them.
pub fn parse_options(options: &str) -> Vec<Result<(String, String), String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                cur.push(n);
            }
            in_word = true;
        } else if c.is_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut cur));
                in_word = false;
            }
        } else {
            cur.push(c);
            in_word = true;
        }
    }
    if in_word {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            match it.next() {
                Some(s) => s,
                None => {
                    out.push(Err(w));
                    continue;
                }
            }
        } else if let Some(s) = w.strip_prefix("-c") {
            s.to_owned()
        } else if let Some(s) = w.strip_prefix("--") {
            s.to_owned()
        } else {
            out.push(Err(w));
            continue;
        };
        match setting.split_once('=') {
            Some((name, value)) => out.push(Ok((name.replace('-', "_"), value.to_owned()))),
            None => out.push(Err(setting)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((8 + rest.len()) as i32).to_be_bytes());
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(rest);
        v
    }

    /// The parameters of a protocol 3.0 StartupMessage holding `list`.
    async fn startup_params(list: &[u8]) -> StartupParams {
        let bytes = packet(196_608, list);
        match read_packet(&mut &bytes[..], &mut BytesMut::new()).await {
            Ok(StartupPacket::Startup(p)) => p,
            other => panic!("not a startup message: {other:?}"),
        }
    }

    #[tokio::test]
    async fn ssl_request_is_recognised() {
        let bytes = packet(SSL_REQUEST_CODE, b"");
        let p = read_packet(&mut &bytes[..], &mut BytesMut::new())
            .await
            .unwrap();
        assert!(matches!(p, StartupPacket::SslRequest));
    }

    #[tokio::test]
    async fn startup_parameters_are_parsed() {
        let p = startup_params(b"user\0bob\0database\0app\0\0").await;
        assert_eq!(p.get("user"), Some("bob"));
        assert_eq!(p.get("database"), Some("app"));
    }

    #[tokio::test]
    async fn bytes_read_past_a_packet_stay_for_the_next_one() {
        let mut bytes = packet(SSL_REQUEST_CODE, b"");
        bytes.extend_from_slice(&packet(196_608, b"user\0bob\0\0"));
        let mut buf = BytesMut::new();
        let mut stream = &bytes[..];
        let first = read_packet(&mut stream, &mut buf).await.unwrap();
        assert!(matches!(first, StartupPacket::SslRequest));
        assert_eq!(
            buf.len(),
            bytes.len() - 8,
            "the read took everything available"
        );
        let StartupPacket::Startup(p) = read_packet(&mut stream, &mut buf).await.unwrap() else {
            panic!("not a startup message");
        };
        assert_eq!(p.get("user"), Some("bob"));
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn oversized_startup_packet_is_refused() {
        let bytes = 20_000i32.to_be_bytes();
        assert!(matches!(
            read_packet(&mut &bytes[..], &mut BytesMut::new()).await,
            Err(StartupError::BadLength(20_000))
        ));
    }

    #[tokio::test]
    async fn truncated_startup_packet_is_eof() {
        let mut bytes = packet(196_608, b"user\0bob\0\0");
        bytes.truncate(10);
        assert!(matches!(
            read_packet(&mut &bytes[..], &mut BytesMut::new()).await,
            Err(StartupError::Eof)
        ));
    }

    #[tokio::test]
    async fn unterminated_parameter_list_is_malformed() {
        let bytes = packet(196_608, b"user\0bob");
        assert!(matches!(
            read_packet(&mut &bytes[..], &mut BytesMut::new()).await,
            Err(StartupError::Malformed)
        ));
    }

    #[tokio::test]
    async fn parameter_lists_not_made_of_pairs_are_malformed() {
        for list in [
            &b"user\0bob\0database\0\0"[..],
            b"user\0bob\0\0extra\0\0",
            b"\0bob\0\0",
            b"user\0b\xffb\0\0",
            b"",
        ] {
            let bytes = packet(196_608, list);
            assert!(
                matches!(
                    read_packet(&mut &bytes[..], &mut BytesMut::new()).await,
                    Err(StartupError::Malformed)
                ),
                "{list:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_repeated_parameter_takes_its_last_value() {
        let p = startup_params(b"user\0bob\0user\0alice\0options\0\0\0").await;
        assert_eq!(p.get("user"), Some("alice"));
        assert_eq!(p.get("options"), Some(""));
        assert_eq!(
            p.iter().collect::<Vec<_>>(),
            [("user", "bob"), ("user", "alice"), ("options", "")]
        );
        assert_eq!(p.get("database"), None);
    }

    #[tokio::test]
    async fn protocol_2_is_refused() {
        let bytes = packet(2 << 16, b"user\0bob\0\0");
        assert!(matches!(
            read_packet(&mut &bytes[..], &mut BytesMut::new()).await,
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
    }

    #[test]
    fn options_are_split_like_postgres() {
        let parsed =
            parse_options(r"-c search_path=a\ b --application-name=x -ctenant_token=t junk");
        assert_eq!(
            parsed,
            vec![
                Ok(("search_path".into(), "a b".into())),
                Ok(("application_name".into(), "x".into())),
                Ok(("tenant_token".into(), "t".into())),
                Err("junk".into()),
            ]
        );
    }
}
