//! The extended protocol by hand, for tests that need what tokio-postgres cannot express
//! (several Syncs in one write, Flush without Sync, row-limited Execute, the proxy-issued
//! BackendKeyData): [`Raw`] logs in through the proxy and sends raw bytes, the free functions
//! frame Parse/Bind/Execute/Sync, and [`Msg`] decodes DataRow and ErrorResponse fields of the
//! replies. Shared by the pipeline, prepared, cancel and copy tests. It never hides a hang:
//! every read panics after [`READ_BOUND`].

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::IsNull;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{CLIENT_USER, PROXY_DBNAME};

/// Bound on any single read from the proxy, so that a stuck proxy fails the test.
pub const READ_BOUND: Duration = Duration::from_secs(15);

/// One backend message: its type byte and payload.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// A field (`b'C'` SQLSTATE, `b'M'` message) of an ErrorResponse or NoticeResponse.
    pub fn field(&self, field: u8) -> Option<String> {
        let mut rest = &self.body[..];
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

    pub fn sqlstate(&self) -> String {
        self.field(b'C').unwrap_or_default()
    }

    /// The columns of a DataRow, as text (`None` for NULL).
    pub fn columns(&self) -> Vec<Option<String>> {
        assert_eq!(self.tag, b'D', "not a DataRow: {self:?}");
        let count = i16::from_be_bytes([self.body[0], self.body[1]]);
        let mut rest = &self.body[2..];
        (0..count)
            .map(|_| {
                let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                rest = &rest[4..];
                if len < 0 {
                    return None;
                }
                let (value, tail) = rest.split_at(len as usize);
                rest = tail;
                Some(String::from_utf8_lossy(value).into_owned())
            })
            .collect()
    }
}

/// The type bytes of `msgs` as a string (`"12DCZ"`), for asserting reply sequences.
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| char::from(m.tag)).collect()
}

/// The text columns of every DataRow in `msgs`.
pub fn rows(msgs: &[Msg]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(Msg::columns)
        .collect()
}

/// The first ErrorResponse in `msgs`: (SQLSTATE, message).
pub fn first_error(msgs: &[Msg]) -> Option<(String, String)> {
    msgs.iter()
        .find(|m| m.tag == b'E')
        .map(|m| (m.sqlstate(), m.field(b'M').unwrap_or_default()))
}

/// A client speaking the wire protocol by hand, logged in through the proxy.
pub struct Raw {
    pub stream: TcpStream,
    /// The BackendKeyData the proxy issued (its own key, not a server's).
    pub pid: i32,
    pub secret: i32,
}

impl Raw {
    /// Startup with user/database, the token as the cleartext password, up to ReadyForQuery.
    pub async fn login(port: u16, token: &str) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut raw = Raw {
            stream,
            pid: 0,
            secret: 0,
        };
        let mut buf = BytesMut::new();
        frontend::startup_message(
            [("user", CLIENT_USER), ("database", PROXY_DBNAME)],
            &mut buf,
        )
        .unwrap();
        raw.send(&buf).await;
        loop {
            let msg = raw.recv().await;
            match msg.tag {
                b'R' => {
                    let code =
                        i32::from_be_bytes([msg.body[0], msg.body[1], msg.body[2], msg.body[3]]);
                    match code {
                        0 => {}
                        3 => {
                            let mut buf = BytesMut::new();
                            frontend::password_message(token.as_bytes(), &mut buf).unwrap();
                            raw.send(&buf).await;
                        }
                        other => panic!("unexpected authentication request {other}"),
                    }
                }
                b'K' => {
                    raw.pid =
                        i32::from_be_bytes([msg.body[0], msg.body[1], msg.body[2], msg.body[3]]);
                    raw.secret =
                        i32::from_be_bytes([msg.body[4], msg.body[5], msg.body[6], msg.body[7]]);
                }
                b'E' => panic!("login failed: {:?}", msg.field(b'M')),
                b'Z' => return raw,
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next message; panics at EOF or when nothing comes within [`READ_BOUND`].
    pub async fn recv(&mut self) -> Msg {
        let read = async {
            let mut header = [0u8; 5];
            self.stream.read_exact(&mut header).await.ok()?;
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            let mut body = vec![0u8; usize::try_from(len).ok()?.checked_sub(4)?];
            self.stream.read_exact(&mut body).await.ok()?;
            Some(Msg {
                tag: header[0],
                body,
            })
        };
        match tokio::time::timeout(READ_BOUND, read).await {
            Ok(Some(msg)) => msg,
            Ok(None) => panic!("the proxy closed the connection"),
            Err(_) => panic!("no message from the proxy within {READ_BOUND:?}"),
        }
    }

    /// Reads `n` messages.
    pub async fn recv_n(&mut self, n: usize) -> Vec<Msg> {
        let mut msgs = Vec::with_capacity(n);
        for _ in 0..n {
            msgs.push(self.recv().await);
        }
        msgs
    }

    /// Reads messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut msgs = Vec::new();
        loop {
            let msg = self.recv().await;
            let done = msg.tag == b'Z';
            msgs.push(msg);
            if done {
                return msgs;
            }
        }
    }

    /// Sends a simple Query and reads its replies up to ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf).unwrap();
        self.send(&buf).await;
        self.until_ready().await
    }
}

/// Parse of `statement` (no declared parameter types).
pub fn parse(buf: &mut BytesMut, statement: &str, sql: &str) {
    frontend::parse(statement, sql, [], buf).unwrap();
}

/// Bind of `statement` to `portal` with text parameters, text results.
pub fn bind(buf: &mut BytesMut, portal: &str, statement: &str, params: &[&str]) {
    let serialized = frontend::bind(
        portal,
        statement,
        [],
        params.iter(),
        |param, buf| {
            buf.extend_from_slice(param.as_bytes());
            Ok(IsNull::No)
        },
        [],
        buf,
    );
    assert!(serialized.is_ok(), "could not build a Bind message");
}

pub fn execute(buf: &mut BytesMut, portal: &str, max_rows: i32) {
    frontend::execute(portal, max_rows, buf).unwrap();
}

pub fn sync(buf: &mut BytesMut) {
    frontend::sync(buf);
}

/// Parse (unnamed) + Bind + Execute of `sql`, without Sync.
pub fn run_unnamed(buf: &mut BytesMut, sql: &str, params: &[&str]) {
    parse(buf, "", sql);
    bind(buf, "", "", params);
    execute(buf, "", 0);
}
