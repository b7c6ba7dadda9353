//! COPY through the proxy: `FROM STDIN` and `TO STDOUT` in text, CSV and binary, a large
//! `FROM STDIN`, rows of another tenant refused, a client that aborts with CopyFail, and the
//! server staying with its client for the whole COPY, with the tenant in force.
//!
//! PostgreSQL refuses `COPY FROM` into a table with row-level security (0A000, "use INSERT
//! instead"), so the `FROM STDIN` tests load `invoice_imports`, a table created here whose
//! trigger refuses any row that is not the current tenant's: the check RLS would make, so a
//! missing or wrong tenant fails the COPY.

mod support;

use std::error::Error;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt as _, TryStreamExt as _, pin_mut};
use postgres_protocol::message::frontend;
use support::*;
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, SimpleQueryMessage};

use support::wire::*;

const CURRENT_TENANT: &str = "SELECT current_setting('app.current_tenant_id')";

/// A table without RLS (so COPY FROM is allowed) that refuses rows of any tenant but the
/// current one with RLS's own SQLSTATE.
const IMPORTS_TABLE_SQL: &str = "
CREATE TABLE invoice_imports (
    tenant_id uuid NOT NULL,
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL
);
CREATE FUNCTION invoice_imports_tenant_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.tenant_id IS DISTINCT FROM current_setting('app.current_tenant_id')::uuid THEN
        RAISE EXCEPTION 'new row violates the tenant check of \"invoice_imports\"'
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER invoice_imports_tenant_check BEFORE INSERT ON invoice_imports
    FOR EACH ROW EXECUTE FUNCTION invoice_imports_tenant_check();
GRANT SELECT, INSERT ON invoice_imports TO api_user;
";

fn setup(pool_size: i64) -> (TestDb, Proxy) {
    let db = TestDb::new();
    db.psql(IMPORTS_TABLE_SQL);
    let proxy = Proxy::start(ProxyConfig::for_db(&db).general("default_pool_size", pool_size));
    (db, proxy)
}

/// Imported rows per tenant, counted by the superuser: `(tenant, rows)` sorted.
async fn imported(db: &TestDb) -> Vec<(String, i64)> {
    db.superuser()
        .await
        .query(
            "SELECT tenant_id::text, count(*) FROM invoice_imports GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

async fn current_tenant(client: &Client) -> String {
    client.query_one(CURRENT_TENANT, &[]).await.unwrap().get(0)
}

/// Runs `COPY … FROM STDIN` with tokio-postgres, sending `chunks`; the row count.
async fn copy_in_chunks(
    client: &Client,
    sql: &str,
    chunks: impl IntoIterator<Item = Bytes>,
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in::<_, Bytes>(sql).await?;
    pin_mut!(sink);
    for chunk in chunks {
        sink.send(chunk).await?;
    }
    sink.as_mut().finish().await
}

/// Runs `COPY … TO STDOUT`; everything it sent.
async fn copy_out_bytes(client: &Client, sql: &str) -> Vec<u8> {
    let stream = client.copy_out(sql).await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    chunks.concat()
}

/// A `uuid` for binary COPY (tokio-postgres has no uuid support without a feature).
#[derive(Debug)]
struct Uuid16([u8; 16]);

impl Uuid16 {
    fn of(tenant: &str) -> Uuid16 {
        Uuid16(*uuid::Uuid::parse_str(tenant).unwrap().as_bytes())
    }
}

impl ToSql for Uuid16 {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }

    to_sql_checked!();
}

/// A whole number below 10 000 as a binary `numeric` (one base-10000 digit).
#[derive(Debug)]
struct SmallNumeric(i16);

impl ToSql for SmallNumeric {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        // ndigits, weight, sign (positive), dscale, digits.
        for word in [1i16, 0, 0, 0, self.0] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

/// Any column as its raw wire bytes.
struct RawValue(Vec<u8>);

impl<'a> FromSql<'a> for RawValue {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(RawValue(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

#[tokio::test]
async fn copy_from_stdin_into_an_rls_table_is_refused_as_postgresql_refuses_it() {
    let (db, proxy) = setup(2);
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let sql = "COPY invoices (tenant_id, amount) FROM STDIN";
    let through_proxy = client.simple_query(sql).await.unwrap_err();

    let direct = db.api_user().await;
    direct
        .batch_execute(&format!("SET app.current_tenant_id = '{TENANT_ACME}'"))
        .await
        .unwrap();
    let from_postgres = direct.simple_query(sql).await.unwrap_err();
    assert_eq!(
        sqlstate(&through_proxy),
        sqlstate(&from_postgres),
        "{through_proxy}"
    );
    assert_eq!(sqlstate(&through_proxy), Some("0A000"));
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
}

#[tokio::test]
async fn copy_from_stdin_in_text_csv_and_binary_loads_own_tenant_rows() {
    let (db, proxy) = setup(2);
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();

    let text = format!("{TENANT_ACME}\t10.50\ttext-1\n{TENANT_ACME}\t11\ttext-2\n");
    let copied = copy_in_chunks(
        &client,
        "COPY invoice_imports (tenant_id, amount, status) FROM STDIN",
        [Bytes::from(text)],
    )
    .await
    .unwrap();
    assert_eq!(copied, 2);
    assert_eq!(current_tenant(&client).await, TENANT_ACME);

    let csv = format!(
        "{TENANT_ACME},12.25,\"csv, quoted\"\n{TENANT_ACME},13,csv-2\n{TENANT_ACME},14,csv-3\n"
    );
    let copied = copy_in_chunks(
        &client,
        "COPY invoice_imports (tenant_id, amount, status) FROM STDIN (FORMAT csv)",
        [Bytes::from(csv)],
    )
    .await
    .unwrap();
    assert_eq!(copied, 3);
    assert_eq!(current_tenant(&client).await, TENANT_ACME);

    let sink = client
        .copy_in("COPY invoice_imports (tenant_id, amount, status) FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    let writer = BinaryCopyInWriter::new(sink, &[Type::UUID, Type::NUMERIC, Type::TEXT]);
    pin_mut!(writer);
    let tenant = Uuid16::of(TENANT_ACME);
    for n in 1..=4i16 {
        let status = format!("binary-{n}");
        writer
            .as_mut()
            .write(&[&tenant, &SmallNumeric(n * 100), &status])
            .await
            .unwrap();
    }
    assert_eq!(writer.finish().await.unwrap(), 4);
    assert_eq!(current_tenant(&client).await, TENANT_ACME);

    assert_eq!(imported(&db).await, [(TENANT_ACME.to_owned(), 9)]);
    let statuses: Vec<String> = db
        .superuser()
        .await
        .query("SELECT status FROM invoice_imports ORDER BY amount", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        statuses,
        [
            "text-1",
            "text-2",
            "csv, quoted",
            "csv-2",
            "csv-3",
            "binary-1",
            "binary-2",
            "binary-3",
            "binary-4"
        ]
    );
}

#[tokio::test]
async fn large_copy_from_stdin_arrives_whole() {
    let (db, proxy) = setup(2);
    let client = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();
    const ROWS: usize = 20_000;
    const ROWS_PER_CHUNK: usize = 200;
    // ~1 kB per row: ~20 MB in all.
    let padding = "x".repeat(1000);
    let chunks = (0..ROWS / ROWS_PER_CHUNK).map(|chunk| {
        let mut data = String::with_capacity(ROWS_PER_CHUNK * 1100);
        for row in 0..ROWS_PER_CHUNK {
            let n = chunk * ROWS_PER_CHUNK + row;
            data.push_str(&format!("{TENANT_GLOBEX}\t{n}\t{padding}\n"));
        }
        Bytes::from(data)
    });
    let copied = tokio::time::timeout(
        Duration::from_secs(60),
        copy_in_chunks(
            &client,
            "COPY invoice_imports (tenant_id, amount, status) FROM STDIN",
            chunks,
        ),
    )
    .await
    .expect("a 20 MB COPY did not finish")
    .unwrap();
    assert_eq!(copied, ROWS as u64);
    assert_eq!(
        imported(&db).await,
        [(TENANT_GLOBEX.to_owned(), ROWS as i64)]
    );
    let row = db
        .superuser()
        .await
        .query_one(
            "SELECT sum(length(status))::int8, count(DISTINCT amount) FROM invoice_imports",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), (ROWS * padding.len()) as i64);
    assert_eq!(row.get::<_, i64>(1), ROWS as i64);
    assert_eq!(current_tenant(&client).await, TENANT_GLOBEX);
}

#[tokio::test]
async fn copy_with_a_row_of_another_tenant_fails_with_42501_and_inserts_nothing() {
    let (db, proxy) = setup(2);
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let data =
        format!("{TENANT_ACME}\t1\tmine\n{TENANT_GLOBEX}\t2\ttheirs\n{TENANT_ACME}\t3\tmine too\n");
    let err = copy_in_chunks(
        &client,
        "COPY invoice_imports (tenant_id, amount, status) FROM STDIN",
        [Bytes::from(data)],
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    assert_eq!(imported(&db).await, []);
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
}

#[tokio::test]
async fn copy_to_stdout_in_text_csv_and_binary_returns_only_own_rows() {
    let (_db, proxy) = setup(2);
    for (tenant, invoices) in [
        (TENANT_ACME, ACME_INVOICES),
        (TENANT_GLOBEX, GLOBEX_INVOICES),
    ] {
        let client = proxy.connect(&token_for(tenant)).await.unwrap();

        let text = copy_out_bytes(&client, "COPY invoices (tenant_id, amount) TO STDOUT").await;
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), invoices as usize, "{text}");
        assert!(
            lines.iter().all(|l| l.starts_with(&format!("{tenant}\t"))),
            "{text}"
        );

        let csv = copy_out_bytes(
            &client,
            "COPY (SELECT tenant_id, amount FROM invoices) TO STDOUT (FORMAT csv, HEADER)",
        )
        .await;
        let csv = String::from_utf8(csv).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "tenant_id,amount");
        assert_eq!(lines.len(), invoices as usize + 1, "{csv}");
        assert!(
            lines[1..]
                .iter()
                .all(|l| l.starts_with(&format!("{tenant},"))),
            "{csv}"
        );

        let stream = client
            .copy_out("COPY invoices (tenant_id, amount) TO STDOUT (FORMAT binary)")
            .await
            .unwrap();
        let rows: Vec<_> = BinaryCopyOutStream::new(stream, &[Type::UUID, Type::NUMERIC])
            .try_collect()
            .await
            .unwrap();
        assert_eq!(rows.len(), invoices as usize);
        let own = uuid::Uuid::parse_str(tenant).unwrap();
        for row in &rows {
            assert_eq!(row.get::<RawValue>(0).0, own.as_bytes());
        }
        assert_eq!(current_tenant(&client).await, tenant);
    }
}

/// The same loads as above with the simple protocol (a Query, then CopyData and CopyDone),
/// where no Sync is involved.
#[tokio::test]
async fn copy_from_stdin_with_the_simple_protocol_loads_own_rows_and_refuses_others() {
    let (db, proxy) = setup(1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    let copy = async |client: &mut Raw, sql: &str, data: String| {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf).unwrap();
        client.send(&buf).await;
        let start = client.recv().await;
        assert_eq!(start.tag, b'G', "{:?}", start.field(b'M'));
        let mut buf = BytesMut::new();
        frontend::CopyData::new(data.as_bytes())
            .unwrap()
            .write(&mut buf);
        frontend::copy_done(&mut buf);
        client.send(&buf).await;
        client.until_ready().await
    };
    let replies = copy(
        &mut client,
        "COPY invoice_imports (tenant_id, amount, status) FROM STDIN",
        format!("{TENANT_ACME}\t1\ttext\n{TENANT_ACME}\t2\ttext\n"),
    )
    .await;
    assert_eq!(tags(&replies), "CZ", "{:?}", first_error(&replies));
    let replies = copy(
        &mut client,
        "COPY invoice_imports (tenant_id, amount, status) FROM STDIN (FORMAT csv)",
        format!("{TENANT_ACME},3,\"csv, quoted\"\n"),
    )
    .await;
    assert_eq!(tags(&replies), "CZ", "{:?}", first_error(&replies));
    let replies = copy(
        &mut client,
        "COPY invoice_imports (tenant_id, amount, status) FROM STDIN",
        format!("{TENANT_ACME}\t4\tmine\n{TENANT_GLOBEX}\t5\ttheirs\n"),
    )
    .await;
    assert_eq!(tags(&replies), "EZ");
    assert_eq!(first_error(&replies).unwrap().0, "42501");
    let replies = client.simple(CURRENT_TENANT).await;
    assert_eq!(rows(&replies), [[Some(TENANT_ACME.to_owned())]]);
    assert_eq!(imported(&db).await, [(TENANT_ACME.to_owned(), 3)]);
}

#[tokio::test]
async fn copy_fail_from_the_client_aborts_the_copy_and_the_connection_goes_on() {
    let (db, proxy) = setup(1);
    let mut client = Raw::login(proxy.port(), &token_for(TENANT_ACME)).await;
    let copy = "COPY invoice_imports (tenant_id, amount, status) FROM STDIN";
    let row = format!("{TENANT_ACME}\t1\tnever\n");
    let data_and_fail = || {
        let mut buf = BytesMut::new();
        frontend::CopyData::new(row.as_bytes())
            .unwrap()
            .write(&mut buf);
        frontend::copy_fail("the client gave up", &mut buf).unwrap();
        buf
    };

    // Simple protocol, autocommit.
    let mut buf = BytesMut::new();
    frontend::query(copy, &mut buf).unwrap();
    client.send(&buf).await;
    assert_eq!(client.recv().await.tag, b'G');
    client.send(&data_and_fail()).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "EZ");
    let (code, message) = first_error(&replies).unwrap();
    assert_eq!(code, "57014", "{message}");
    assert!(message.contains("the client gave up"), "{message}");
    assert_eq!(replies.last().unwrap().body, b"I");
    let replies = client.simple(CURRENT_TENANT).await;
    assert_eq!(rows(&replies), [[Some(TENANT_ACME.to_owned())]]);

    // Inside a transaction block: the block fails, ROLLBACK ends it.
    assert_eq!(tags(&client.simple("BEGIN").await), "CZ");
    let mut buf = BytesMut::new();
    frontend::query(copy, &mut buf).unwrap();
    client.send(&buf).await;
    assert_eq!(client.recv().await.tag, b'G');
    client.send(&data_and_fail()).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "EZ");
    assert_eq!(replies.last().unwrap().body, b"E");
    assert_eq!(client.simple("ROLLBACK").await.last().unwrap().body, b"I");

    // Extended protocol, as drivers send it: Bind/Execute/Sync, then the data, CopyFail
    // and another Sync (PostgreSQL ignores a Sync received in copy-in mode).
    let mut buf = BytesMut::new();
    run_unnamed(&mut buf, copy, &[]);
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.recv_n(3).await;
    assert_eq!(tags(&replies), "12G", "{:?}", first_error(&replies));
    let mut buf = data_and_fail();
    sync(&mut buf);
    client.send(&buf).await;
    let replies = client.until_ready().await;
    assert_eq!(tags(&replies), "EZ");
    assert_eq!(first_error(&replies).unwrap().0, "57014");
    let replies = client.simple(CURRENT_TENANT).await;
    assert_eq!(rows(&replies), [[Some(TENANT_ACME.to_owned())]]);

    assert_eq!(imported(&db).await, []);
}

#[tokio::test]
async fn server_stays_with_its_client_for_the_whole_copy() {
    let (db, proxy) = setup(1);
    let client = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    let other = proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap();

    let sink = client
        .copy_in::<_, Bytes>("COPY invoice_imports (tenant_id, amount, status) FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(Bytes::from(format!("{TENANT_ACME}\t1\tfirst half\n")))
        .await
        .unwrap();
    sink.flush().await.unwrap();

    let waiting = tokio::spawn(async move {
        let messages = other.simple_query(CURRENT_TENANT).await?;
        Ok::<_, tokio_postgres::Error>(
            messages
                .into_iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
                .unwrap_or_default(),
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "another client got the server in the middle of a COPY"
    );

    sink.send(Bytes::from(format!("{TENANT_ACME}\t2\tsecond half\n")))
        .await
        .unwrap();
    assert_eq!(sink.as_mut().finish().await.unwrap(), 2);
    let other_tenant = tokio::time::timeout(READ_BOUND, waiting)
        .await
        .expect("the waiting client never got the server")
        .unwrap()
        .unwrap();
    assert_eq!(other_tenant, TENANT_GLOBEX);
    assert_eq!(imported(&db).await, [(TENANT_ACME.to_owned(), 2)]);
    assert_eq!(current_tenant(&client).await, TENANT_ACME);
}
