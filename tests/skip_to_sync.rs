//! What follows an error in an extended-protocol batch: PostgreSQL skips every message up to
//! the next Sync, including a simple Query, and answers nothing for them (protocol docs,
//! "Extended Query"). Through pgtenant — which prepares statements lazily on whichever
//! server a transaction gets, and answers DEALLOCATE/DISCARD ALL itself — the client must get
//! exactly the replies PostgreSQL gives a direct connection. Every test here runs the same
//! bytes on a direct connection and through the proxy, and compares.

mod support;

use std::pin::Pin;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use support::wire::*;

/// Fails at Execute, not when planned (1 / 0 would be folded at Bind).
const FAILS_AT_EXECUTE: &str = "SELECT 1 / g FROM generate_series(0, 0) g";

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A logged-in raw connection, straight to PostgreSQL or through the proxy.
struct Conn {
    stream: Pin<Box<dyn Duplex>>,
}

impl Conn {
    /// The superuser over the cluster's unix socket (trust): RLS does not apply, so the
    /// scenarios compared here read no tenant data.
    async fn direct(db: &TestDb) -> Conn {
        let path = db
            .cluster()
            .socket_dir()
            .join(format!(".s.PGSQL.{}", db.cluster().port()));
        let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
        raw::write_startup(
            &mut stream,
            &[
                ("user", pgtenant::cluster::SUPERUSER),
                ("database", db.name()),
            ],
        )
        .await;
        let reply = raw::read_login(&mut stream).await;
        assert!(reply.ready && reply.error.is_none(), "{reply:?}");
        Conn {
            stream: Box::pin(stream),
        }
    }

    async fn proxied(proxy: &Proxy) -> Conn {
        let (stream, _) = raw::raw_login(proxy.port(), &token_for(TENANT_ACME), &[]).await;
        Conn {
            stream: Box::pin(stream),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn recv(&mut self) -> Msg {
        let msg = raw::read_msg(&mut self.stream)
            .await
            .expect("the connection closed");
        Msg {
            tag: msg.tag,
            body: msg.body,
        }
    }
}

/// One step of a scenario.
enum Step {
    /// Send these bytes.
    Write(BytesMut),
    /// Read replies up to this many ReadyForQuery.
    Ready(usize),
    /// Read exactly this many messages (replies that come before a ReadyForQuery).
    Messages(usize),
}

/// Replies as compared between PostgreSQL and the proxy: one per read step.
#[derive(Debug, PartialEq, Eq)]
struct Replies {
    tags: String,
    /// (SQLSTATE, message) of every ErrorResponse.
    errors: Vec<(String, String)>,
    rows: Vec<Vec<Option<String>>>,
    /// The transaction status of every ReadyForQuery.
    status: String,
}

impl Replies {
    fn of(msgs: &[Msg]) -> Replies {
        Replies {
            tags: tags(msgs),
            errors: msgs
                .iter()
                .filter(|m| m.tag == b'E')
                .map(|m| (m.sqlstate(), m.field(b'M').unwrap_or_default()))
                .collect(),
            rows: rows(msgs),
            status: msgs
                .iter()
                .filter(|m| m.tag == b'Z')
                .map(|m| char::from(m.body[0]))
                .collect(),
        }
    }
}

async fn run(conn: &mut Conn, steps: &[Step]) -> Vec<Replies> {
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Write(bytes) => conn.send(bytes).await,
            Step::Ready(n) => {
                let mut msgs = Vec::new();
                let mut ready = 0;
                while ready < *n {
                    let msg = conn.recv().await;
                    ready += usize::from(msg.tag == b'Z');
                    msgs.push(msg);
                }
                out.push(Replies::of(&msgs));
            }
            Step::Messages(n) => {
                let mut msgs = Vec::new();
                for _ in 0..*n {
                    msgs.push(conn.recv().await);
                }
                out.push(Replies::of(&msgs));
            }
        }
    }
    out
}

/// Runs `steps` straight on PostgreSQL, then through `proxy`; asserts the proxy's replies
/// are PostgreSQL's and returns them.
async fn same_as_direct(db: &TestDb, proxy: &Proxy, steps: &[Step]) -> Vec<Replies> {
    let direct = run(&mut Conn::direct(db).await, steps).await;
    let proxied = run(&mut Conn::proxied(proxy).await, steps).await;
    assert_eq!(proxied, direct, "through the proxy vs PostgreSQL direct");
    direct
}

fn write(build: impl FnOnce(&mut BytesMut)) -> Step {
    let mut buf = BytesMut::new();
    build(&mut buf);
    Step::Write(buf)
}

fn query(buf: &mut BytesMut, sql: &str) {
    frontend::query(sql, buf).unwrap();
}

fn proxy_with_one_server(db: &TestDb) -> Proxy {
    Proxy::start(ProxyConfig::for_db(db).general("default_pool_size", 1))
}

fn tags_of(replies: &[Replies]) -> Vec<&str> {
    replies.iter().map(|r| r.tags.as_str()).collect()
}

/// A named statement parsed between transactions reaches a server only when first used. If
/// that first use is in a batch PostgreSQL skips after an error, the preparing pgtenant sent
/// ahead of it is skipped too: the next batch, in the same write, must still find it.
#[tokio::test]
async fn statement_first_used_in_a_skipped_batch_works_in_the_next_batch() {
    let db = TestDb::new();
    let proxy = proxy_with_one_server(&db);
    let steps = [
        write(|b| {
            parse(b, "by_bind", "SELECT $1::int + 1 AS n");
            parse(b, "by_describe", "SELECT $1::int + 2 AS n");
            parse(b, "by_bad_parameter", "SELECT $1::int + 3 AS n");
            sync(b);
        }),
        Step::Ready(1),
        // First used by a Bind the server skips.
        write(|b| {
            run_unnamed(b, FAILS_AT_EXECUTE, &[]);
            bind(b, "", "by_bind", &["1"]);
            sync(b);
            bind(b, "", "by_bind", &["10"]);
            execute(b, "", 0);
            sync(b);
        }),
        Step::Ready(2),
        // First used by a Describe the server skips.
        write(|b| {
            run_unnamed(b, FAILS_AT_EXECUTE, &[]);
            frontend::describe(b'S', "by_describe", b).unwrap();
            sync(b);
            bind(b, "", "by_describe", &["20"]);
            execute(b, "", 0);
            sync(b);
        }),
        Step::Ready(2),
        // First used by a Bind that fails itself (the preparing ahead of it is not skipped).
        write(|b| {
            bind(b, "", "by_bad_parameter", &["not a number"]);
            execute(b, "", 0);
            sync(b);
            bind(b, "", "by_bad_parameter", &["30"]);
            execute(b, "", 0);
            sync(b);
        }),
        Step::Ready(2),
    ];
    let replies = same_as_direct(&db, &proxy, &steps).await;
    assert_eq!(
        tags_of(&replies),
        ["111Z", "12EZ2DCZ", "12EZ2DCZ", "EZ2DCZ"]
    );
    assert_eq!(replies[1].rows, [[Some("11".to_owned())]]);
    assert_eq!(replies[2].rows, [[Some("22".to_owned())]]);
    assert_eq!(replies[3].rows, [[Some("33".to_owned())]]);
    assert_eq!(replies[3].errors[0].0, "22P02");
}

/// A named Parse in a skipped batch creates nothing: the next batch's Bind fails with
/// PostgreSQL's 26000 naming the client's statement (never pgtenant's server-side name).
#[tokio::test]
async fn statement_parsed_in_a_skipped_batch_does_not_exist_in_the_next_batch() {
    let db = TestDb::new();
    let proxy = proxy_with_one_server(&db);
    let steps = [
        write(|b| {
            run_unnamed(b, FAILS_AT_EXECUTE, &[]);
            parse(b, "never_made", "SELECT 'never made'::text");
            sync(b);
            bind(b, "", "never_made", &[]);
            execute(b, "", 0);
            sync(b);
            // The name is free: preparing it now works.
            parse(b, "never_made", "SELECT 'made now'::text");
            bind(b, "", "never_made", &[]);
            execute(b, "", 0);
            sync(b);
        }),
        Step::Ready(3),
    ];
    let replies = same_as_direct(&db, &proxy, &steps).await;
    assert_eq!(tags_of(&replies), ["12EZEZ12DCZ"]);
    assert_eq!(
        replies[0].errors[1],
        (
            "26000".to_owned(),
            "prepared statement \"never_made\" does not exist".to_owned()
        )
    );
    assert_eq!(replies[0].rows, [[Some("made now".to_owned())]]);
}

/// An unnamed Parse in a skipped batch leaves the server's unnamed statement as it was —
/// through the proxy, possibly another client's. A later Bind of the unnamed statement must
/// fail as on a connection of its own, never run that one.
#[tokio::test]
async fn unnamed_statement_parsed_in_a_skipped_batch_never_binds_another_clients() {
    let db = TestDb::new();
    let proxy = proxy_with_one_server(&db);
    // Another client leaves its unnamed statement on the (only) server.
    let mut other = Raw::login(proxy.port(), &token_for(TENANT_GLOBEX)).await;
    let mut buf = BytesMut::new();
    run_unnamed(&mut buf, "SELECT 'the other client''s query'", &[]);
    sync(&mut buf);
    other.send(&buf).await;
    assert_eq!(tags(&other.until_ready().await), "12DCZ");

    let steps = [
        write(|b| {
            parse(b, "typed", "SELECT $1::int AS n");
            sync(b);
        }),
        Step::Ready(1),
        write(|b| {
            bind(b, "", "typed", &["not a number"]);
            parse(b, "", "SELECT 'skipped'::text");
            sync(b);
            bind(b, "", "", &[]);
            execute(b, "", 0);
            sync(b);
        }),
        Step::Ready(2),
    ];
    let replies = same_as_direct(&db, &proxy, &steps).await;
    assert_eq!(tags_of(&replies), ["1Z", "EZEZ"]);
    assert_eq!(replies[1].errors[1].0, "26000");
    assert!(replies[1].rows.is_empty());
}

/// PostgreSQL discards a simple Query that arrives while it skips to Sync: DEALLOCATE and
/// DISCARD ALL then get no reply and deallocate nothing, whether the error had already come
/// back when they were sent or not.
#[tokio::test]
async fn session_commands_sent_while_the_server_skips_to_sync_are_discarded() {
    let db = TestDb::new();
    let proxy = proxy_with_one_server(&db);
    let kept = |b: &mut BytesMut| {
        bind(b, "", "kept", &["1"]);
        execute(b, "", 0);
        sync(b);
    };
    let steps = [
        write(|b| {
            parse(b, "kept", "SELECT $1::int AS n");
            sync(b);
        }),
        Step::Ready(1),
        // The error has reached the client before the session commands leave.
        write(|b| {
            run_unnamed(b, FAILS_AT_EXECUTE, &[]);
            frontend::flush(b);
        }),
        Step::Messages(3),
        write(|b| {
            query(b, "DEALLOCATE kept");
            query(b, "DISCARD ALL");
            query(b, "DEALLOCATE ALL");
            sync(b);
            kept(b);
        }),
        Step::Ready(2),
        // In the same write as the failing batch.
        write(|b| {
            run_unnamed(b, FAILS_AT_EXECUTE, &[]);
            query(b, "DEALLOCATE kept");
            query(b, "DISCARD ALL");
            sync(b);
            kept(b);
        }),
        Step::Ready(2),
    ];
    let replies = same_as_direct(&db, &proxy, &steps).await;
    assert_eq!(tags_of(&replies), ["1Z", "12E", "Z2DCZ", "12EZ2DCZ"]);
}

/// A simple Query after extended messages with no Sync runs once they are done: its reply
/// comes after theirs. DEALLOCATE, answered by pgtenant itself, must come in that place too.
#[tokio::test]
async fn session_command_after_an_unsynced_batch_is_answered_after_the_batch() {
    let db = TestDb::new();
    let proxy = proxy_with_one_server(&db);
    let steps = [
        write(|b| {
            parse(b, "dropped", "SELECT $1::int AS n");
            sync(b);
        }),
        Step::Ready(1),
        write(|b| {
            bind(b, "", "dropped", &["1"]);
            execute(b, "", 0);
            query(b, "DEALLOCATE dropped");
            bind(b, "", "dropped", &["2"]);
            execute(b, "", 0);
            sync(b);
        }),
        Step::Ready(2),
    ];
    let replies = same_as_direct(&db, &proxy, &steps).await;
    assert_eq!(tags_of(&replies), ["1Z", "2DCCZEZ"]);
    assert_eq!(replies[1].errors[0].0, "26000");
}

/// In a failed transaction block PostgreSQL refuses everything but ending it, DEALLOCATE
/// included: the statement stays.
#[tokio::test]
async fn deallocate_in_a_failed_transaction_block_fails_and_keeps_the_statement() {
    let db = TestDb::new();
    let proxy = proxy_with_one_server(&db);
    let steps = [
        write(|b| {
            parse(b, "kept", "SELECT $1::int AS n");
            sync(b);
            query(b, "BEGIN");
            query(b, "SELECT 1 / 0");
            query(b, "DEALLOCATE kept");
            query(b, "ROLLBACK");
            bind(b, "", "kept", &["1"]);
            execute(b, "", 0);
            sync(b);
        }),
        Step::Ready(6),
    ];
    let replies = same_as_direct(&db, &proxy, &steps).await;
    assert_eq!(tags_of(&replies), ["1ZCZEZEZCZ2DCZ"]);
    assert_eq!(replies[0].status, "ITEEII");
    assert_eq!(replies[0].errors[1].0, "25P02");
}

/// After a DEALLOCATE ALL on the server, pgtenant prepares its own tenant-setting statement
/// again there, ahead of the next statement that needs the tenant. If that preparing is
/// skipped (a Parse earlier in the batch failed), the next batch must prepare it again: the
/// client sees only PostgreSQL's replies, and keeps its connection.
#[tokio::test]
async fn tenant_setting_prepared_in_a_skipped_batch_is_prepared_again() {
    let db = TestDb::new();
    let proxy = proxy_with_one_server(&db);
    let steps = [
        write(|b| {
            // Not a lone DEALLOCATE (which pgtenant answers itself): it reaches the server.
            query(b, "SELECT 1; DEALLOCATE ALL");
            parse(b, "typed", "SELECT $1::int AS n");
            sync(b);
        }),
        Step::Ready(2),
        write(|b| {
            parse(b, "", "SELEC 1");
            bind(b, "", "typed", &["1"]);
            execute(b, "", 0);
            sync(b);
            bind(b, "", "typed", &["2"]);
            execute(b, "", 0);
            sync(b);
        }),
        Step::Ready(2),
    ];
    let replies = same_as_direct(&db, &proxy, &steps).await;
    assert_eq!(tags_of(&replies), ["TDCCZ1Z", "EZ2DCZ"]);
    assert_eq!(replies[1].errors[0].0, "42601");
    assert_eq!(replies[1].rows, [[Some("2".to_owned())]]);
}
