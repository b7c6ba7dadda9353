//! Extended-protocol edge cases through the proxy, spoken by hand: several Syncs in one write,
//! Flush without Sync, an error in the middle of a batch, Describe of a statement or a portal
//! on its own, Execute with a row limit (PortalSuspended), empty queries, and FunctionCall.
//! Every reply must be exactly what PostgreSQL sends, in order, in the client's own tenant.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use support::*;

use support::wire::*;

const CURRENT_TENANT: &str = "current_setting('app.current_tenant_id')";

fn proxy_with_pool(db: &TestDb, pool_size: i64) -> Proxy {
    Proxy::start(ProxyConfig::for_db(db).general("default_pool_size", pool_size))
}

/// The payload of a ReadyForQuery: the transaction status byte.
fn status(msgs: &[Msg]) -> u8 {
    let last = msgs.last().expect("no replies");
    assert_eq!(last.tag, b'Z', "{msgs:?}");
    last.body[0]
}

/// The field names of a RowDescription payload.
fn field_names(row_description: &Msg) -> Vec<String> {
    assert_eq!(row_description.tag, b'T');
    let count = i16::from_be_bytes([row_description.body[0], row_description.body[1]]);
    let mut rest = &row_description.body[2..];
    (0..count)
        .map(|_| {
            let end = rest.iter().position(|&b| b == 0).unwrap();
            let name = String::from_utf8_lossy(&rest[..end]).into_owned();
            // name, then table oid (4), column (2), type oid (4), size (2), modifier (4),
            // format (2).
            rest = &rest[end + 1 + 18..];
            name
        })
        .collect()
}

/// A FunctionCall message: binary int4 arguments (`Some`) or text arguments, result format.
fn function_call(buf: &mut BytesMut, oid: u32, args: &[FnArg], result_format: i16) {
    let mut body = Vec::new();
    body.extend_from_slice(&oid.to_be_bytes());
    body.extend_from_slice(&(args.len() as i16).to_be_bytes());
    for arg in args {
        let format: i16 = match arg {
            FnArg::Int4(_) => 1,
            FnArg::Text(_) => 0,
        };
        body.extend_from_slice(&format.to_be_bytes());
    }
    body.extend_from_slice(&(args.len() as i16).to_be_bytes());
    for arg in args {
        let value = match arg {
            FnArg::Int4(n) => n.to_be_bytes().to_vec(),
            FnArg::Text(s) => s.as_bytes().to_vec(),
        };
        body.extend_from_slice(&(value.len() as i32).to_be_bytes());
        body.extend_from_slice(&value);
    }
    body.extend_from_slice(&result_format.to_be_bytes());
    buf.extend_from_slice(b"F");
    buf.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    buf.extend_from_slice(&body);
}

enum FnArg {
    Int4(i32),
    Text(&'static str),
}

/// The value of a FunctionCallResponse payload (`None` for NULL).
fn function_result(msg: &Msg) -> Option<Vec<u8>> {
    assert_eq!(msg.tag, b'V', "{msg:?}");
    let len = i32::from_be_bytes([msg.body[0], msg.body[1], msg.body[2], msg.body[3]]);
    (len >= 0).then(|| msg.body[4..4 + len as usize].to_vec())
}

#[tokio::test]
async fn several_syncs_in_one_write_are_answered_in_order_in_own_tenant() {
    let db = TestDb::new();
    // One server for two pipelining clients: the proxy must keep each batch with its client.
    let proxy = proxy_with_pool(&db, 1);
    let mut acme = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    let mut globex = Raw::login(proxy.port(), &token_for(TENANT_GLOBEX)).await;
    let sql = format!("SELECT $1::text, {CURRENT_TENANT}, (SELECT count(*) FROM invoices)::text");
    let pipeline = |named: &str| {
        let mut buf = BytesMut::new();
        // Batch 1 prepares a named statement that batches 2 and 3 bind.
        parse(&mut buf, named, &sql);
        for batch in ["batch 1", "batch 2", "batch 3"] {
            bind(&mut buf, "", named, &[batch]);
            execute(&mut buf, "", 0);
            sync(&mut buf);
        }
        buf
    };
    acme.send(&pipeline("acme_pipe")).await;
    globex.send(&pipeline("globex_pipe")).await;
    for (client, tenant, invoices) in [
        (&mut acme, TENANT_ACME, ACME_INVOICES),
        (&mut globex, TENANT_GLOBEX, GLOBEX_INVOICES),
    ] {
        for batch in 1..=3 {
            let replies = client.until_ready().await;
            let expected = if batch == 1 { "12DCZ" } else { "2DCZ" };
            assert_eq!(
                tags(&replies),
                expected,
                "{tenant} batch {batch}: {:?}",
                first_error(&replies)
            );
            assert_eq!(
                rows(&replies),
                [[
                    Some(format!("batch {batch}")),
                    Some(tenant.to_owned()),
                    Some(invoices.to_string())
                ]]
            );
            assert_eq!(status(&replies), b'I');
        }
    }
}

#[tokio::test]
async fn flush_without_sync_keeps_the_server_until_sync() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    let other = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();

    let mut buf = BytesMut::new();
    run_unnamed(
        &mut buf,
        &format!("SELECT {CURRENT_TENANT}, $1::text"),
        &["flushed"],
    );
    frontend::flush(&mut buf);
    client.send(&buf).await;
    let replies = client.recv_n(4).await;
    assert_eq!(tags(&replies), "12DC", "{:?}", first_error(&replies));
    assert_eq!(
        rows(&replies),
        [[Some(TENANT_ACME.to_owned()), Some("flushed".to_owned())]]
    );

    // Another client wants the only server meanwhile. A simple query would also destroy the
    // unnamed statement, so if it ran on that server now, the Bind below would fail.
    let waiting = tokio::spawn(async move {
        other
            .simple_query(&format!("SELECT {CURRENT_TENANT}"))
            .await
            .map(|messages| messages.len())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "another client ran a query on the server of an unsynced batch"
    );

    let mut buf = BytesMut::new();
    bind(&mut buf, "", "", &["after flush"]);
    execute(&mut buf, "", 0);
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "2DCZ", "{:?}", first_error(&replies));
    assert_eq!(
        rows(&replies),
        [[Some(TENANT_ACME.to_owned()), Some("after flush".to_owned())]]
    );
    assert_eq!(status(&replies), b'I');

    let other_result = tokio::time::timeout(READ_BOUND, waiting)
        .await
        .expect("the waiting client never got the server")
        .unwrap();
    assert!(other_result.is_ok(), "{other_result:?}");
}

#[tokio::test]
async fn error_mid_batch_skips_to_sync_and_the_next_batch_works() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    let failing_batch = || {
        let mut buf = BytesMut::new();
        run_unnamed(&mut buf, "SELECT 1", &[]);
        // Not folded at plan time: fails in Execute.
        run_unnamed(&mut buf, "SELECT 1 / g FROM generate_series(0, 0) g", &[]);
        run_unnamed(&mut buf, "SELECT 3", &[]);
        sync(&mut buf);
        buf
    };
    let next_batch = || {
        let mut buf = BytesMut::new();
        run_unnamed(&mut buf, &format!("SELECT {CURRENT_TENANT}"), &[]);
        sync(&mut buf);
        buf
    };

    // Autocommit, with the next batch already in the same write.
    let mut buf = failing_batch();
    buf.extend_from_slice(&next_batch());
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "12DC12EZ");
    assert_eq!(first_error(&replies).unwrap().0, "22012");
    assert_eq!(rows(&replies), [[Some("1".to_owned())]]);
    assert_eq!(status(&replies), b'I');
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "12DCZ", "{:?}", first_error(&replies));
    assert_eq!(rows(&replies), [[Some(TENANT_ACME.to_owned())]]);

    // Inside a transaction block: the block is failed until ROLLBACK.
    assert_eq!(status(&client.simple("BEGIN").await), b'T');
    client.send(&failing_batch()).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "12DC12EZ");
    assert_eq!(status(&replies), b'E');
    client.send(&next_batch()).await;
    let replies = client.until_ready().await;
    assert_eq!(first_error(&replies).unwrap().0, "25P02");
    assert_eq!(status(&client.simple("ROLLBACK").await), b'I');
    client.send(&next_batch()).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "12DCZ", "{:?}", first_error(&replies));
    assert_eq!(rows(&replies), [[Some(TENANT_ACME.to_owned())]]);
}

#[tokio::test]
async fn messages_sent_after_an_error_came_back_are_skipped_until_sync() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    // "fresh" is parsed between transactions and reaches a server only when first bound;
    // "described" is prepared and described on the server.
    let mut buf = BytesMut::new();
    parse(
        &mut buf,
        "fresh",
        &format!("SELECT $1::text, {CURRENT_TENANT}"),
    );
    parse(
        &mut buf,
        "described",
        &format!("SELECT $1::text AS v, {CURRENT_TENANT} AS t"),
    );
    frontend::describe(b'S', "described", &mut buf).unwrap();
    sync(&mut buf);
    client.send(&buf).await;
    assert_eq!(tags(&client.until_ready().await), "11tTZ");
    // pgtenant takes DISCARD as dropping the server's statements: the next Bind of
    // "described" would first prepare and describe it afresh, to compare shapes.
    assert_eq!(tags(&client.simple("DISCARD PLANS").await), "CZ");

    // A pipelining driver reads results between sends: here the error has reached the
    // client (Flush) before the rest of its batch leaves.
    let mut buf = BytesMut::new();
    run_unnamed(&mut buf, "SELECT 1", &[]);
    run_unnamed(&mut buf, "SELECT 1 / g FROM generate_series(0, 0) g", &[]);
    frontend::flush(&mut buf);
    client.send(&buf).await;
    let replies = client.recv_n(7).await;
    assert_eq!(tags(&replies), "12DC12E");
    assert_eq!(first_error(&replies).unwrap().0, "22012");

    // PostgreSQL ignores all of the rest up to the Sync, and answers the Sync alone: Binds
    // of both statements (the preparing pgtenant sends ahead is ignored too, and comparing
    // shapes would wait forever), a statement, a Close.
    let mut buf = BytesMut::new();
    for statement in ["fresh", "described"] {
        bind(&mut buf, "", statement, &["skipped"]);
        execute(&mut buf, "", 0);
    }
    run_unnamed(&mut buf, &format!("SELECT {CURRENT_TENANT}"), &[]);
    frontend::close(b'S', "never_prepared", &mut buf).unwrap();
    sync(&mut buf);
    // In the same write, the next batch: "fresh" was never prepared on the server, so it
    // must be now, before its Bind.
    for statement in ["fresh", "described"] {
        bind(&mut buf, "", statement, &[statement]);
        execute(&mut buf, "", 0);
    }
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "Z", "{:?}", first_error(&replies));
    assert_eq!(status(&replies), b'I');
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "2DC2DCZ", "{:?}", first_error(&replies));
    assert_eq!(
        rows(&replies),
        [
            [Some("fresh".to_owned()), Some(TENANT_ACME.to_owned())],
            [Some("described".to_owned()), Some(TENANT_ACME.to_owned())]
        ]
    );
}

#[tokio::test]
async fn describe_of_a_statement_alone_and_of_a_portal_alone() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_GLOBEX)).await;
    let other = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let sql = format!("SELECT $1::int4 AS n, {CURRENT_TENANT} AS tenant");

    let mut buf = BytesMut::new();
    parse(&mut buf, "described", &sql);
    sync(&mut buf);
    client.send(&buf).await;
    assert_eq!(tags(&client.until_ready().await), "1Z");
    other.simple_query("SELECT 1").await.unwrap();

    // Describe of a named statement, in a transaction of its own.
    let mut buf = BytesMut::new();
    frontend::describe(b'S', "described", &mut buf).unwrap();
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "tTZ", "{:?}", first_error(&replies));
    let params = &replies[0].body;
    assert_eq!(i16::from_be_bytes([params[0], params[1]]), 1);
    assert_eq!(
        u32::from_be_bytes([params[2], params[3], params[4], params[5]]),
        23
    );
    assert_eq!(field_names(&replies[1]), ["n", "tenant"]);

    // Describe of the unnamed statement right after its Parse.
    let mut buf = BytesMut::new();
    parse(&mut buf, "", "SELECT 1 AS one");
    frontend::describe(b'S', "", &mut buf).unwrap();
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "1tTZ");
    assert_eq!(field_names(&replies[2]), ["one"]);

    // Describe of a portal in a batch of its own, then its Execute in another.
    assert_eq!(status(&client.simple("BEGIN").await), b'T');
    let mut buf = BytesMut::new();
    parse(
        &mut buf,
        "",
        "SELECT amount::text AS amount, tenant_id::text AS tenant FROM invoices ORDER BY amount",
    );
    bind(&mut buf, "p", "", &[]);
    sync(&mut buf);
    client.send(&buf).await;
    assert_eq!(tags(&client.until_ready().await), "12Z");
    let mut buf = BytesMut::new();
    frontend::describe(b'P', "p", &mut buf).unwrap();
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "TZ", "{:?}", first_error(&replies));
    assert_eq!(field_names(&replies[0]), ["amount", "tenant"]);
    let mut buf = BytesMut::new();
    execute(&mut buf, "p", 0);
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "DDCZ", "{:?}", first_error(&replies));
    for row in rows(&replies) {
        assert_eq!(row[1].as_deref(), Some(TENANT_GLOBEX));
    }
    assert_eq!(status(&client.simple("COMMIT").await), b'I');

    // Describe of a portal that is never executed (autocommit).
    let mut buf = BytesMut::new();
    parse(&mut buf, "", "SELECT 2 AS two");
    bind(&mut buf, "", "", &[]);
    frontend::describe(b'P', "", &mut buf).unwrap();
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "12TZ");
    assert_eq!(field_names(&replies[2]), ["two"]);
}

#[tokio::test]
async fn execute_with_a_row_limit_suspends_the_portal_and_resumes() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    let other = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    let sql = "SELECT tenant_id::text, amount::text FROM invoices ORDER BY amount, status";

    assert_eq!(status(&client.simple("BEGIN").await), b'T');
    let mut buf = BytesMut::new();
    parse(&mut buf, "", sql);
    bind(&mut buf, "cursor", "", &[]);
    execute(&mut buf, "cursor", 2);
    sync(&mut buf);
    client.send(&buf).await;
    let first = client.until_ready().await;
    assert_eq!(tags(&first), "12DDsZ", "{:?}", first_error(&first));
    assert_eq!(status(&first), b'T');
    let mut buf = BytesMut::new();
    execute(&mut buf, "cursor", 0);
    sync(&mut buf);
    client.send(&buf).await;
    let rest = client.until_ready().await;
    assert_eq!(tags(&rest), "DCZ", "{:?}", first_error(&rest));
    let all: Vec<_> = rows(&first).into_iter().chain(rows(&rest)).collect();
    assert_eq!(all.len(), ACME_INVOICES as usize);
    assert!(
        all.iter().all(|row| row[0].as_deref() == Some(TENANT_ACME)),
        "{all:?}"
    );
    assert_eq!(status(&client.simple("COMMIT").await), b'I');

    // Between the two transactions another client uses the server.
    other.simple_query("SELECT 1").await.unwrap();

    // All in one batch.
    assert_eq!(status(&client.simple("BEGIN").await), b'T');
    let mut buf = BytesMut::new();
    parse(&mut buf, "", sql);
    bind(&mut buf, "c2", "", &[]);
    execute(&mut buf, "c2", 1);
    execute(&mut buf, "c2", 1);
    execute(&mut buf, "c2", 0);
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "12DsDsDCZ", "{:?}", first_error(&replies));
    assert_eq!(rows(&replies), all);
    assert_eq!(status(&client.simple("COMMIT").await), b'I');
}

#[tokio::test]
async fn empty_query_gets_empty_query_response_in_both_protocols() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;

    let replies = client.simple("").await;
    assert_eq!(tags(&replies), "IZ");
    assert_eq!(status(&replies), b'I');

    let mut buf = BytesMut::new();
    run_unnamed(&mut buf, "", &[]);
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "12IZ", "{:?}", first_error(&replies));

    // Inside a transaction block, and the connection goes on.
    assert_eq!(status(&client.simple("BEGIN").await), b'T');
    let replies = client.simple("").await;
    assert_eq!(tags(&replies), "IZ");
    assert_eq!(status(&replies), b'T');
    assert_eq!(status(&client.simple("COMMIT").await), b'I');
    let replies = client.simple(&format!("SELECT {CURRENT_TENANT}")).await;
    assert_eq!(rows(&replies), [[Some(TENANT_ACME.to_owned())]]);
}

/// `FunctionCall` messages are forwarded for the large-object functions drivers call that way
/// (JDBC), in the client's tenant; any other function by OID (`set_config` is 2078) is
/// refused by the guard with 42501, and the connection goes on.
#[tokio::test]
async fn function_call_of_large_object_functions_is_forwarded_and_others_refused() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_GLOBEX)).await;
    let replies = client
        .simple(
            "SELECT 'pg_catalog.int4pl'::regproc::oid, \
             'pg_catalog.set_config(text,text,boolean)'::regprocedure::oid",
        )
        .await;
    let oids = &rows(&replies)[0];
    let int4pl: u32 = oids[0].as_deref().unwrap().parse().unwrap();
    let set_config: u32 = oids[1].as_deref().unwrap().parse().unwrap();

    // lo_creat(-1) (OID 957) creates a large object and returns its OID; lo_unlink (964).
    let mut buf = BytesMut::new();
    function_call(&mut buf, 957, &[FnArg::Int4(-1)], 1);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "VZ", "{:?}", first_error(&replies));
    let lo = function_result(&replies[0]).expect("lo_creat returned an OID");
    let lo = i32::from_be_bytes(lo.try_into().unwrap());
    let mut buf = BytesMut::new();
    function_call(&mut buf, 964, &[FnArg::Int4(lo)], 1);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "VZ", "{:?}", first_error(&replies));
    assert_eq!(
        function_result(&replies[0]),
        Some(1i32.to_be_bytes().to_vec())
    );

    for oid in [int4pl, set_config] {
        let mut buf = BytesMut::new();
        function_call(&mut buf, oid, &[FnArg::Int4(2), FnArg::Int4(40)], 1);
        client.send(&buf).await;
        let replies = client.until_ready().await;
        assert_eq!(tags(&replies), "EZ");
        assert_eq!(first_error(&replies).unwrap().0, "42501");
        assert_eq!(status(&replies), b'I');
    }

    // Inside a transaction block a refused call aborts the block, as an error there would.
    assert_eq!(status(&client.simple("BEGIN").await), b'T');
    let mut buf = BytesMut::new();
    let forged = [
        FnArg::Text("app.current_tenant_id"),
        FnArg::Text(TENANT_ACME),
        FnArg::Text("true"),
    ];
    function_call(&mut buf, set_config, &forged, 0);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(status(&replies), b'E');
    assert_eq!(status(&client.simple("ROLLBACK").await), b'I');
    let replies = client.simple(&format!("SELECT {CURRENT_TENANT}")).await;
    assert_eq!(rows(&replies), [[Some(TENANT_GLOBEX.to_owned())]]);
}

/// On PostgreSQL the unnamed statement lives until the next Parse of it or simple Query,
/// across Syncs, and it is the connection's own: a later Bind must never run another
/// client's unnamed statement.
#[tokio::test]
async fn unnamed_statement_parsed_in_one_batch_binds_in_a_later_one() {
    let db = TestDb::new();
    let proxy = proxy_with_pool(&db, 1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    let mut other = Raw::login(proxy.port(), &token_for(TENANT_GLOBEX)).await;

    let mut buf = BytesMut::new();
    parse(&mut buf, "", &format!("SELECT {CURRENT_TENANT}, $1::text"));
    sync(&mut buf);
    client.send(&buf).await;
    assert_eq!(tags(&client.until_ready().await), "1Z");

    // Another client runs its own unnamed statement on the (only) server meanwhile.
    let mut buf = BytesMut::new();
    run_unnamed(
        &mut buf,
        "SELECT 'the other client''s query', $1::text",
        &["x"],
    );
    sync(&mut buf);
    other.send(&buf).await;
    assert_eq!(tags(&other.until_ready().await), "12DCZ");

    let mut buf = BytesMut::new();
    bind(&mut buf, "", "", &["later"]);
    execute(&mut buf, "", 0);
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "2DCZ", "{:?}", first_error(&replies));
    assert_eq!(
        rows(&replies),
        [[Some(TENANT_ACME.to_owned()), Some("later".to_owned())]]
    );
}
