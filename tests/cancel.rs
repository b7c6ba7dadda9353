//! Query cancel through the proxy: a CancelRequest with the key pgtenant gave a client cancels
//! that client's running query; a wrong key does nothing; and a key used after its client's
//! transaction ended never reaches the query another client now runs on the same server.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

use raw::*;

/// Polls of `pg_stat_activity` before giving up (50 ms apart).
const POLLS: usize = 200;

/// Waits until an `api_user` backend of `db` is running a query containing `marker`.
async fn wait_until_running(superuser: &Client, db: &TestDb, marker: &str) {
    let pattern = format!("%{marker}%");
    for _ in 0..POLLS {
        let running: i64 = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2 \
                 AND state = 'active' AND query LIKE $3",
                &[&API_USER, &db.name(), &pattern],
            )
            .await
            .unwrap()
            .get(0);
        if running > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the query {marker:?} never showed up as running");
}

/// Sends a CancelRequest to the proxy and waits until the proxy has handled it (it closes
/// the connection afterwards).
async fn send_cancel(port: u16, pid: i32, secret: i32) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = BytesMut::new();
    frontend::cancel_request(pid, secret, &mut buf);
    stream.write_all(&buf).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(READ_BOUND, stream.read_to_end(&mut rest))
        .await
        .expect("the proxy kept a cancel connection open")
        .ok();
    assert!(
        rest.is_empty(),
        "the proxy answered a CancelRequest: {rest:?}"
    );
}

#[tokio::test]
async fn cancel_token_cancels_the_running_query() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 2));
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let superuser = db.superuser().await;
    let token = client.cancel_token();
    let sleeping = tokio::spawn(async move {
        let result = client
            .simple_query("SELECT pg_sleep(10) /* cancel-me */")
            .await;
        (client, result)
    });
    wait_until_running(&superuser, &db, "cancel-me").await;
    token.cancel_query(NoTls).await.unwrap();
    let (client, result) = tokio::time::timeout(Duration::from_secs(5), sleeping)
        .await
        .expect("the query was not cancelled")
        .unwrap();
    let err = result.unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    // The connection goes on, in its tenant.
    let tenant: String = client
        .query_one("SELECT current_setting('app.current_tenant_id')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tenant, TENANT_ACME);
}

#[tokio::test]
async fn cancel_with_a_wrong_key_does_nothing() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 2));
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_GLOBEX)).await;
    let superuser = db.superuser().await;

    let mut buf = BytesMut::new();
    frontend::query("SELECT 'slept' /* wrong-key */ FROM pg_sleep(2)", &mut buf).unwrap();
    client.send(&buf).await;
    wait_until_running(&superuser, &db, "wrong-key").await;
    send_cancel(proxy.port(), client.pid, client.secret.wrapping_add(1)).await;
    send_cancel(proxy.port(), client.pid, !client.secret).await;
    send_cancel(proxy.port(), client.pid.wrapping_add(1), client.secret).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "TDCZ", "{:?}", first_error(&replies));
    assert_eq!(rows(&replies), [[Some("slept".to_owned())]]);

    // The right key does cancel (so the key above was the one that mattered).
    client.send(&buf).await;
    wait_until_running(&superuser, &db, "wrong-key").await;
    send_cancel(proxy.port(), client.pid, client.secret).await;
    let replies = client.until_ready().await;
    assert_eq!(first_error(&replies).map(|e| e.0).as_deref(), Some("57014"));
}

#[tokio::test]
async fn stale_cancel_does_not_cancel_another_clients_query_on_the_same_server() {
    let db = TestDb::new();
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", 1));
    let superuser = db.superuser().await;

    let mut first = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    let replies = first.simple("SELECT pg_backend_pid()").await;
    let first_server = rows(&replies)[0][0].clone().unwrap();

    let second = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    let sleeping = tokio::spawn(async move {
        second
            .query_one(
                "SELECT pg_backend_pid()::text FROM pg_sleep(2) /* not-yours */",
                &[],
            )
            .await
            .map(|row| row.get::<_, String>(0))
    });
    wait_until_running(&superuser, &db, "not-yours").await;
    // The first client's key, after its transaction ended.
    send_cancel(proxy.port(), first.pid, first.secret).await;
    let second_server = tokio::time::timeout(READ_BOUND, sleeping)
        .await
        .expect("the second client's query never ended")
        .unwrap()
        .unwrap_or_else(|err| panic!("a stale cancel reached another client's query: {err}"));
    assert_eq!(
        second_server, first_server,
        "both clients should share the one server"
    );

    // The first client still works and was not disturbed either.
    let replies = first
        .simple("SELECT current_setting('app.current_tenant_id')")
        .await;
    assert_eq!(rows(&replies), [[Some(TENANT_ACME.to_owned())]]);
}
// ------------------------------------------------------------------ raw protocol helpers

/// Hand-built protocol messages for what tokio-postgres cannot express, and a reader for the
/// proxy's replies.
#[allow(dead_code)]
mod raw {
    use std::time::Duration;

    use bytes::BytesMut;
    use postgres_protocol::IsNull;
    use postgres_protocol::message::frontend;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use crate::support::{CLIENT_USER, PROXY_DBNAME};

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
                        let code = i32::from_be_bytes([
                            msg.body[0],
                            msg.body[1],
                            msg.body[2],
                            msg.body[3],
                        ]);
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
                        raw.pid = i32::from_be_bytes([
                            msg.body[0],
                            msg.body[1],
                            msg.body[2],
                            msg.body[3],
                        ]);
                        raw.secret = i32::from_be_bytes([
                            msg.body[4],
                            msg.body[5],
                            msg.body[6],
                            msg.body[7],
                        ]);
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
}
