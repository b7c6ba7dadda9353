//! The breach suite: tenant B (Globex) tries every way we know to forge, clear or shadow
//! `app.current_tenant_id` while tenant A (Acme) has rows, and must never read a row of A.
//!
//! One table of attack forms, each tried in four modes — sent on its own, inside an explicit
//! transaction, inside a multi-statement query, and through the extended protocol (with the
//! value or name as a bound parameter where the form allows one) — once without and once
//! with the tenant seal (config/sql/seal.sql, `tenant_seal = true`). Every form must be
//! refused by the guard (42501 "pgtenant refuses …"); inside a transaction the refusal
//! aborts the block as any PostgreSQL error would; afterwards B sees exactly its own rows
//! on the same connection and on a fresh one. The pool has one server, so a fresh
//! connection runs on the very backend the attack ran on. Forms that need the raw protocol
//! (binding pgtenant's own statements by name, `FunctionCall`) and startup parameters have
//! their own tests below. The suite prints its whole table (`--nocapture`) and fails with
//! every broken row at once, not just the first.

mod support;

use std::fmt::Write as _;

use bytes::BytesMut;
use postgres_protocol::IsNull;
use postgres_protocol::message::frontend;
use support::raw::{error_field, raw_login, read_login, read_msg, send_startup, token_params};
use support::*;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

/// The prefix of every guard refusal message.
const GUARD_PREFIX: &str = "pgtenant refuses";

/// `SELECT tenant_id FROM invoices`, each row tagged so that it cannot be mistaken for what
/// an attack statement returned in the same reply (`set_config` returns Acme's id).
const TENANT_IDS: &str = "SELECT 'invoice ' || tenant_id FROM invoices";

/// The tenant ids of the tagged rows among `values`.
fn invoice_tenants(values: impl IntoIterator<Item = String>) -> Vec<String> {
    values
        .into_iter()
        .filter_map(|v| v.strip_prefix("invoice ").map(str::to_owned))
        .collect()
}

/// How the guard must answer a form.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Refused in every mode.
    Refused,
    /// Sent on its own (simple protocol, outside a transaction), pgtenant emulates it for
    /// the client's own session instead of forwarding it (`RESET ALL`, `DISCARD ALL`);
    /// refused everywhere else.
    EmulatedAlone,
}

/// One attack form. `{A}` is Acme's id, `{B}` Globex's, `{DB}` the database name.
struct Form {
    name: &'static str,
    sql: &'static str,
    /// The extended-protocol variant: statement text and text parameters. `None`: the
    /// same text, no parameters.
    bound: Option<(&'static str, &'static [&'static str])>,
    expect: Expect,
}

const fn form(name: &'static str, sql: &'static str) -> Form {
    Form {
        name,
        sql,
        bound: None,
        expect: Expect::Refused,
    }
}

const fn bound(
    name: &'static str,
    sql: &'static str,
    ext_sql: &'static str,
    params: &'static [&'static str],
) -> Form {
    Form {
        name,
        sql,
        bound: Some((ext_sql, params)),
        expect: Expect::Refused,
    }
}

const fn emulated_alone(name: &'static str, sql: &'static str) -> Form {
    Form {
        name,
        sql,
        bound: None,
        expect: Expect::EmulatedAlone,
    }
}

/// Every forging form of issue 5, item 1, and a few more.
const FORMS: &[Form] = &[
    // SET / SET LOCAL / SET SESSION / RESET in many spellings.
    form("SET =", "SET app.current_tenant_id = '{A}'"),
    form("SET TO", "SET app.current_tenant_id TO '{A}'"),
    form("SET SESSION", "SET SESSION app.current_tenant_id = '{A}'"),
    form("SET LOCAL", "SET LOCAL app.current_tenant_id = '{A}'"),
    form(
        "SET LOCAL mixed case",
        "set LOCAL App.Current_Tenant_ID = '{A}'",
    ),
    form(
        "SET LOCAL quoted parts",
        "SET LOCAL \"app\".\"current_tenant_id\" = '{A}'",
    ),
    form(
        "SET LOCAL quoted whole name",
        "SET LOCAL \"app.current_tenant_id\" = '{A}'",
    ),
    form(
        "SET LOCAL U& whole name",
        "SET LOCAL U&\"app.current_\\0074enant_id\" = '{A}'",
    ),
    form(
        "SET LOCAL U& part",
        "SET LOCAL app.U&\"current_\\0074enant_id\" = '{A}'",
    ),
    form(
        "SET LOCAL U& UESCAPE",
        "SET LOCAL app.U&\"current_!0074enant_id\" UESCAPE '!' = '{A}'",
    ),
    form(
        "SET LOCAL block comments between tokens",
        "/* x */ SET /* x */ LOCAL /* x */ app /* x */ . /* x */ current_tenant_id /* x */ = /* x */ '{A}'",
    ),
    form(
        "SET LOCAL line comments between tokens",
        "SET -- x\nLOCAL -- x\napp.current_tenant_id -- x\n= '{A}'",
    ),
    form(
        "SET LOCAL nested comment",
        "SET /* a /* b */ c */ LOCAL app.current_tenant_id = '{A}'",
    ),
    form(
        "SET LOCAL E'' value",
        "SET LOCAL app.current_tenant_id = E'\\x61aaaaaaa-0000-0000-0000-000000000001'",
    ),
    form(
        "SET LOCAL $$ value",
        "SET LOCAL app.current_tenant_id = $$aaaaaaaa-0000-0000-0000-000000000001$$",
    ),
    form(
        "SET LOCAL U&'' value",
        "SET LOCAL app.current_tenant_id = U&'\\0061aaaaaaa-0000-0000-0000-000000000001'",
    ),
    form(
        "SET LOCAL empty value",
        "SET LOCAL app.current_tenant_id = ''",
    ),
    form(
        "SET LOCAL TO DEFAULT",
        "SET LOCAL app.current_tenant_id TO DEFAULT",
    ),
    form("SET TO DEFAULT", "SET app.current_tenant_id TO DEFAULT"),
    form(
        "SET LOCAL list value",
        "SET LOCAL app.current_tenant_id = '{A}', '{B}'",
    ),
    form("RESET", "RESET app.current_tenant_id"),
    form("RESET quoted", "RESET \"app\".\"current_tenant_id\""),
    form("RESET U&", "RESET U&\"app.current_\\0074enant_id\""),
    emulated_alone("RESET ALL", "RESET ALL"),
    // set_config, every spelling and argument shape.
    bound(
        "set_config is_local false",
        "SELECT set_config('app.current_tenant_id', '{A}', false)",
        "SELECT set_config('app.current_tenant_id', $1, false)",
        &["{A}"],
    ),
    bound(
        "set_config is_local true",
        "SELECT set_config('app.current_tenant_id', '{A}', true)",
        "SELECT set_config('app.current_tenant_id', $1, true)",
        &["{A}"],
    ),
    bound(
        "set_config NULL value",
        "SELECT set_config('app.current_tenant_id', NULL, true)",
        "SELECT set_config('app.current_tenant_id', $1, true)",
        &[""],
    ),
    bound(
        "set_config ($1, $2)",
        "SELECT set_config(current_user || '', '{A}', true)",
        "SELECT set_config($1, $2, true)",
        &["app.current_tenant_id", "{A}"],
    ),
    bound(
        "set_config ($1, literal)",
        "SELECT set_config('app.' || 'current_tenant_id', '{A}', true)",
        "SELECT set_config($1, '{A}', true)",
        &["app.current_tenant_id"],
    ),
    bound(
        "set_config ($1::text, $2::text)",
        "SELECT set_config(concat('app.', 'current_tenant_id'), '{A}', true)",
        "SELECT pg_catalog.set_config($1::text, $2::text, true)",
        &["app.current_tenant_id", "{A}"],
    ),
    bound(
        "set_config is_local bound",
        "SELECT set_config('app.current_tenant_id', '{A}', 't'::bool)",
        "SELECT set_config('app.current_tenant_id', $1, $2::bool)",
        &["{A}", "true"],
    ),
    bound(
        "pg_catalog.set_config",
        "SELECT pg_catalog.set_config('app.current_tenant_id', '{A}', true)",
        "SELECT pg_catalog.set_config('app.current_tenant_id', $1, true)",
        &["{A}"],
    ),
    form(
        "\"set_config\" quoted",
        "SELECT \"set_config\"('app.current_tenant_id', '{A}', true)",
    ),
    form(
        "pg_catalog.\"set_config\"",
        "SELECT \"pg_catalog\".\"set_config\"('app.current_tenant_id', '{A}', true)",
    ),
    form(
        "U&\"set_\\0063onfig\"",
        "SELECT U&\"set_\\0063onfig\"('app.current_tenant_id', '{A}', true)",
    ),
    form(
        "SET_CONFIG upper-case name",
        "SELECT SET_CONFIG('APP.CURRENT_TENANT_ID', '{A}', TRUE)",
    ),
    form(
        "set_config U&'' name",
        "SELECT set_config(U&'app.current_\\0074enant_id', '{A}', true)",
    ),
    form(
        "set_config E'' name",
        "SELECT set_config(E'app.current_\\x74enant_id', '{A}', true)",
    ),
    form(
        "set_config name from a subquery",
        "SELECT set_config((SELECT 'app.current_tenant_id'), '{A}', true)",
    ),
    form(
        "set_config name from a column",
        "SELECT set_config(n, '{A}', true) FROM (VALUES ('app.current_tenant_id')) v(n)",
    ),
    form(
        "set_config value from a subquery",
        "SELECT set_config('app.current_tenant_id', (SELECT '{A}'), true)",
    ),
    form(
        "set_config named arguments",
        "SELECT set_config(setting_name => 'app.current_tenant_id', new_value => '{A}', is_local => true)",
    ),
    form(
        "set_config VARIADIC-free cast chain",
        "SELECT set_config('app.current_tenant_id'::text::varchar::text, '{A}', true)",
    ),
    form(
        "set_config in a CTE",
        "WITH f AS (SELECT set_config('app.current_tenant_id', '{A}', true)) SELECT * FROM f",
    ),
    form(
        "set_config in WHERE",
        "SELECT 1 WHERE set_config('app.current_tenant_id', '{A}', true) IS NOT NULL",
    ),
    form(
        "set_config in a comment-split name",
        "SELECT set_config/**/('app.current_tenant_id', '{A}', true)",
    ),
    form(
        "PREPARE set_config + EXECUTE",
        "PREPARE forge_p(text) AS SELECT set_config('app.current_tenant_id', $1, true); EXECUTE forge_p('{A}')",
    ),
    form(
        "DECLARE cursor over set_config",
        "DECLARE forge_c CURSOR FOR SELECT set_config('app.current_tenant_id', '{A}', true)",
    ),
    form(
        "query_to_xml running set_config",
        "SELECT query_to_xml('SELECT set_config(''app.current_tenant_id'', ''{A}'', true)', true, false, '')",
    ),
    bound(
        "query_to_xml with bound SQL",
        "SELECT query_to_xml('SELECT 1' || '', true, false, '')",
        "SELECT query_to_xml($1, true, false, '')",
        &["SELECT set_config('app.current_tenant_id', '{A}', true)"],
    ),
    form(
        "UPDATE pg_settings tenant",
        "UPDATE pg_settings SET setting = '{A}' WHERE name = 'app.current_tenant_id'",
    ),
    // pgtenant's own injection statements, called by their server-side names.
    // (EXECUTE is a utility statement: PostgreSQL takes no bound parameters in it, so the
    // extended-protocol mode sends the same literals.)
    form(
        "EXECUTE pgtenant's injection statement",
        "EXECUTE __pgtenant_set_tenant('app.current_tenant_id', '{A}')",
    ),
    form(
        "EXECUTE pgtenant's sealed injection statement",
        "EXECUTE __pgtenant_set_sealed_tenant('app.current_tenant_id', '{A}', 'app.current_tenant_id_seal', 'forged')",
    ),
    // DISCARD.
    emulated_alone("DISCARD ALL", "DISCARD ALL"),
    // ALTER ROLE / DATABASE / SYSTEM … SET.
    form(
        "ALTER ROLE SET",
        "ALTER ROLE api_user SET app.current_tenant_id = '{A}'",
    ),
    form(
        "ALTER ROLE CURRENT_USER SET",
        "ALTER ROLE CURRENT_USER SET app.current_tenant_id = '{A}'",
    ),
    form(
        "ALTER ROLE IN DATABASE SET",
        "ALTER ROLE api_user IN DATABASE \"{DB}\" SET app.current_tenant_id = '{A}'",
    ),
    form(
        "ALTER ROLE RESET",
        "ALTER ROLE api_user RESET app.current_tenant_id",
    ),
    form("ALTER ROLE RESET ALL", "ALTER ROLE CURRENT_USER RESET ALL"),
    form(
        "ALTER DATABASE SET",
        "ALTER DATABASE \"{DB}\" SET app.current_tenant_id = '{A}'",
    ),
    form(
        "ALTER DATABASE RESET",
        "ALTER DATABASE \"{DB}\" RESET app.current_tenant_id",
    ),
    form(
        "ALTER SYSTEM SET",
        "ALTER SYSTEM SET app.current_tenant_id = '{A}'",
    ),
    // DO blocks and routine bodies.
    form(
        "DO PERFORM set_config",
        "DO $$BEGIN PERFORM set_config('app.current_tenant_id', '{A}', true); END$$",
    ),
    form(
        "DO EXECUTE SET LOCAL",
        "DO $$BEGIN EXECUTE 'SET LOCAL app.current_tenant_id = ''{A}'''; END$$",
    ),
    form(
        "DO EXECUTE built from pieces",
        "DO $$BEGIN EXECUTE format('SE' || 'T LOCAL %s.%s = %L', 'app', 'current_' || 'tenant_id', '{A}'); END$$",
    ),
    form(
        "DO plain SET LOCAL",
        "DO LANGUAGE plpgsql $body$BEGIN SET LOCAL app.current_tenant_id = '{A}'; END$body$",
    ),
    form(
        "DO U& escaped name",
        "DO $$BEGIN SET LOCAL U&\"app.current_\\0074enant_id\" = '{A}'; END$$",
    ),
    form("DO unknown language", "DO LANGUAGE plperl $$ 1; $$"),
    form(
        "CREATE FUNCTION sql body set_config",
        "CREATE FUNCTION pg_temp.forge_sql() RETURNS text LANGUAGE sql AS $$SELECT set_config('app.current_tenant_id', '{A}', true)$$; SELECT pg_temp.forge_sql()",
    ),
    form(
        "CREATE FUNCTION plpgsql EXECUTE",
        "CREATE FUNCTION pg_temp.forge_dyn(t text) RETURNS void LANGUAGE plpgsql AS $$BEGIN EXECUTE 'SELECT 1'; END$$",
    ),
    form(
        "CREATE FUNCTION SET clause",
        "CREATE FUNCTION pg_temp.forge_set() RETURNS int LANGUAGE sql SET app.current_tenant_id = '{A}' AS 'SELECT 1'",
    ),
    form(
        "CREATE OR REPLACE PROCEDURE body",
        "CREATE OR REPLACE PROCEDURE pg_temp.forge_proc() LANGUAGE plpgsql AS $$BEGIN PERFORM set_config('app.current_tenant_id', '{A}', true); END$$",
    ),
    form(
        "CREATE FUNCTION BEGIN ATOMIC",
        "CREATE FUNCTION pg_temp.forge_atomic() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT set_config('app.current_tenant_id', '{A}', true); END",
    ),
    form(
        "CREATE AGGREGATE over set_config",
        "CREATE AGGREGATE pg_temp.forge_agg(text, boolean) (SFUNC = set_config, STYPE = text)",
    ),
    // Role and row security.
    form("SET ROLE", "SET ROLE api_user"),
    form("SET LOCAL ROLE", "SET LOCAL ROLE api_user"),
    form("SET ROLE NONE", "SET ROLE NONE"),
    form("RESET ROLE", "RESET ROLE"),
    form(
        "SET SESSION AUTHORIZATION",
        "SET SESSION AUTHORIZATION api_user",
    ),
    form(
        "SET SESSION AUTHORIZATION DEFAULT",
        "SET SESSION AUTHORIZATION DEFAULT",
    ),
    form(
        "set_config role",
        "SELECT set_config('role', 'api_user', true)",
    ),
    form("SET row_security off", "SET row_security = off"),
    form(
        "SET LOCAL row_security off",
        "SET LOCAL row_security TO off",
    ),
    form(
        "set_config row_security",
        "SELECT set_config('row_security', 'off', false)",
    ),
    form(
        "UPDATE pg_settings row_security",
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'row_security'",
    ),
    // What would blind pgtenant's own SQL scanner.
    form("SET client_encoding SJIS", "SET client_encoding = 'SJIS'"),
    form("SET client_encoding BIG5", "SET client_encoding TO 'BIG5'"),
    form("SET NAMES GBK", "SET NAMES 'GBK'"),
    form(
        "set_config client_encoding",
        "SELECT set_config('client_encoding', 'SJIS', false)",
    ),
    form(
        "SET standard_conforming_strings off",
        "SET standard_conforming_strings = off",
    ),
    form(
        "SET LOCAL standard_conforming_strings off",
        "SET LOCAL standard_conforming_strings TO off",
    ),
    form(
        "set_config standard_conforming_strings",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Alone,
    InTransaction,
    MultiStatement,
    Extended,
}

const MODES: [Mode; 4] = [
    Mode::Alone,
    Mode::InTransaction,
    Mode::MultiStatement,
    Mode::Extended,
];

/// What one attempt produced.
struct Outcome {
    /// SQLSTATE and message of the error the attack got, if any.
    error: Option<(String, String)>,
    /// Tenant ids B read while the attack's effect could still be in force (inside the
    /// same transaction or multi-statement query), if the attack was not refused.
    read_during: Option<Vec<String>>,
    /// After the attack, on the same connection: the tenant ids B sees.
    after_same: Vec<String>,
    /// On a fresh connection (the same backend: the pool has one server).
    after_fresh: Vec<String>,
}

impl Outcome {
    fn refused(&self) -> bool {
        self.error
            .as_ref()
            .is_some_and(|(code, msg)| code == "42501" && msg.starts_with(GUARD_PREFIX))
    }

    fn summary(&self) -> String {
        let answer = match &self.error {
            Some((code, _)) if self.refused() => format!("refused {code}"),
            Some((code, msg)) => format!("ERROR {code} {msg}"),
            None => "ACCEPTED".to_owned(),
        };
        let during = match &self.read_during {
            Some(ids) => format!(" read_during={}", describe_ids(ids)),
            None => String::new(),
        };
        format!(
            "{answer}{during} same={} fresh={}",
            describe_ids(&self.after_same),
            describe_ids(&self.after_fresh)
        )
    }
}

/// `2 (Acme 0, Globex 2)`.
fn describe_ids(ids: &[String]) -> String {
    let acme = ids.iter().filter(|t| *t == TENANT_ACME).count();
    let globex = ids.iter().filter(|t| *t == TENANT_GLOBEX).count();
    format!("{} (Acme {acme}, Globex {globex})", ids.len())
}

/// Exactly Globex's two invoices.
fn only_globex(ids: &[String]) -> bool {
    ids.len() == GLOBEX_INVOICES as usize && ids.iter().all(|t| t == TENANT_GLOBEX)
}

fn fill(template: &str, db: &str) -> String {
    template
        .replace("{A}", TENANT_ACME)
        .replace("{B}", TENANT_GLOBEX)
        .replace("{DB}", db)
}

fn db_error(err: &tokio_postgres::Error) -> (String, String) {
    match err.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => (String::new(), err.to_string()),
    }
}

/// Tenant ids of every row of a simple-protocol reply (the query's last column of text).
async fn tenant_ids(client: &Client) -> Vec<String> {
    let messages = client
        .simple_query(TENANT_IDS)
        .await
        .unwrap_or_else(|err| panic!("{TENANT_IDS}: {err}"));
    invoice_tenants(simple_column(&messages))
}

/// A sealed or unsealed database with its proxy (one server, so every connection of the
/// test shares the backend an attack ran on).
fn setup(sealed: bool) -> (TestDb, Proxy) {
    let db = TestDb::new();
    let mut config = ProxyConfig::for_db(&db).general("default_pool_size", 1);
    if sealed {
        install_seal(&db);
        config = config.app_db("tenant_seal", true);
    }
    let proxy = Proxy::start(config);
    (db, proxy)
}

fn install_seal(db: &TestDb) {
    db.psql(include_str!("../config/sql/seal.sql"));
    db.psql(include_str!("../config/sql/seal_policies.sql"));
}

async fn globex(proxy: &Proxy) -> Client {
    proxy.connect(&token_for(TENANT_GLOBEX)).await.unwrap()
}

async fn attempt(proxy: &Proxy, db: &str, form: &Form, mode: Mode) -> Outcome {
    let client = globex(proxy).await;
    let sql = fill(form.sql, db);
    let mut read_during = None;
    let error = match mode {
        Mode::Alone => client.simple_query(&sql).await.err().map(|e| db_error(&e)),
        Mode::InTransaction => {
            client.simple_query("BEGIN").await.unwrap();
            let error = client.simple_query(&sql).await.err().map(|e| db_error(&e));
            match client.simple_query(TENANT_IDS).await {
                Ok(messages) => read_during = Some(invoice_tenants(simple_column(&messages))),
                // The refusal aborted the block, as an error there would.
                Err(err) => assert_eq!(
                    sqlstate(&err),
                    Some("25P02"),
                    "{}: after the attack inside a transaction: {err}",
                    form.name
                ),
            }
            client.simple_query("ROLLBACK").await.unwrap();
            error
        }
        Mode::MultiStatement => {
            let multi = format!("SELECT 'before'; {sql}; {TENANT_IDS}");
            match client.simple_query(&multi).await {
                Ok(messages) => {
                    read_during = Some(invoice_tenants(simple_column(&messages)));
                    None
                }
                Err(err) => Some(db_error(&err)),
            }
        }
        Mode::Extended => {
            let (text, params) = match form.bound {
                Some((text, params)) => (
                    fill(text, db),
                    params.iter().map(|p| fill(p, db)).collect::<Vec<_>>(),
                ),
                None => (sql.clone(), Vec::new()),
            };
            let params: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            client.simple_query("BEGIN").await.unwrap();
            let error = client
                .query(text.as_str(), &params)
                .await
                .err()
                .map(|e| db_error(&e));
            match client.query(TENANT_IDS, &[]).await {
                Ok(rows) => read_during = Some(invoice_tenants(rows.iter().map(|r| r.get(0)))),
                Err(err) => assert_eq!(
                    sqlstate(&err),
                    Some("25P02"),
                    "{}: after the extended-protocol attack: {err}",
                    form.name
                ),
            }
            client.simple_query("ROLLBACK").await.unwrap();
            error
        }
    };
    let after_same = tenant_ids(&client).await;
    drop(client);
    let fresh = globex(proxy).await;
    let after_fresh = tenant_ids(&fresh).await;
    Outcome {
        error,
        read_during,
        after_same,
        after_fresh,
    }
}

/// Runs the whole table; returns the printed report and the broken rows.
async fn run_table(sealed: bool) -> (String, Vec<String>) {
    let (db, proxy) = setup(sealed);
    let label = if sealed { "sealed" } else { "unsealed" };
    let mut report = String::new();
    let mut broken = Vec::new();
    for form in FORMS {
        for mode in MODES {
            let outcome = attempt(&proxy, db.name(), form, mode).await;
            let line = format!(
                "[{label}] {:<45} {:<15} {}",
                form.name,
                format!("{mode:?}"),
                outcome.summary()
            );
            let _ = writeln!(report, "{line}");
            let emulated = form.expect == Expect::EmulatedAlone && mode == Mode::Alone;
            let answer_ok = if emulated {
                outcome.error.is_none()
            } else {
                outcome.refused()
            };
            let leaked = outcome
                .read_during
                .as_ref()
                .is_some_and(|ids| ids.iter().any(|t| t == TENANT_ACME));
            if !answer_ok
                || leaked
                || !only_globex(&outcome.after_same)
                || !only_globex(&outcome.after_fresh)
            {
                broken.push(format!("{line}\n    sql: {}", fill(form.sql, db.name())));
            }
        }
    }
    // Acme still has its rows, and sees them: the attacks changed nothing.
    let acme = proxy.connect(&token_for(TENANT_ACME)).await.unwrap();
    assert_eq!(invoice_count(&acme).await, ACME_INVOICES);
    (report, broken)
}

async fn assert_table_holds(sealed: bool) {
    let (report, broken) = run_table(sealed).await;
    println!("{report}");
    assert!(
        broken.is_empty(),
        "{} attack rows broke isolation or were not refused:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[tokio::test]
async fn every_forging_form_is_refused_and_b_sees_only_its_rows_without_the_seal() {
    assert_table_holds(false).await;
}

#[tokio::test]
async fn every_forging_form_is_refused_and_b_sees_only_its_rows_with_the_seal() {
    assert_table_holds(true).await;
}

/// The seed's own ways of setting the tenant keep working with the client's own tenant (a
/// no-op) and are refused with any other.
async fn seed_style_accepts_own_tenant_only(sealed: bool) {
    let (_db, proxy) = setup(sealed);
    let client = globex(&proxy).await;

    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query(&format!(
            "SET LOCAL app.current_tenant_id = '{TENANT_GLOBEX}'"
        ))
        .await
        .unwrap();
    assert_eq!(invoice_count(&client).await, GLOBEX_INVOICES);
    client.simple_query("COMMIT").await.unwrap();

    let seed = "SELECT set_config('app.current_tenant_id', $1, true)";
    client.simple_query("BEGIN").await.unwrap();
    let row = client.query_one(seed, &[&TENANT_GLOBEX]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), TENANT_GLOBEX);
    assert_eq!(invoice_count(&client).await, GLOBEX_INVOICES);
    client.simple_query("COMMIT").await.unwrap();

    // The same two with Acme's id: refused, the block aborted.
    client.simple_query("BEGIN").await.unwrap();
    let err = client
        .simple_query(&format!(
            "SET LOCAL app.current_tenant_id = '{TENANT_ACME}'"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    client.simple_query("ROLLBACK").await.unwrap();

    client.simple_query("BEGIN").await.unwrap();
    let err = client.query_one(seed, &[&TENANT_ACME]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    let err = client.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("25P02"), "{err}");
    client.simple_query("ROLLBACK").await.unwrap();

    assert!(only_globex(&tenant_ids(&client).await));
}

#[tokio::test]
async fn seed_style_setting_accepts_own_tenant_and_refuses_another_without_the_seal() {
    seed_style_accepts_own_tenant_only(false).await;
}

#[tokio::test]
async fn seed_style_setting_accepts_own_tenant_and_refuses_another_with_the_seal() {
    seed_style_accepts_own_tenant_only(true).await;
}

// ---------------------------------------------------------------------------------------
// The raw protocol: what no driver sends.

/// The replies to one batch, up to ReadyForQuery.
struct Replies {
    errors: Vec<(String, String)>,
    /// Every column of every DataRow, as text.
    values: Vec<String>,
    status: u8,
}

async fn batch(stream: &mut TcpStream, buf: &BytesMut) -> Replies {
    stream.write_all(buf).await.unwrap();
    let mut replies = Replies {
        errors: Vec::new(),
        values: Vec::new(),
        status: 0,
    };
    loop {
        let msg = read_msg(stream)
            .await
            .unwrap_or_else(|| panic!("the proxy closed the connection"));
        match msg.tag {
            b'E' => replies.errors.push((
                error_field(&msg.body, b'C').unwrap_or_default(),
                error_field(&msg.body, b'M').unwrap_or_default(),
            )),
            b'D' => {
                let count = i16::from_be_bytes([msg.body[0], msg.body[1]]);
                let mut rest = &msg.body[2..];
                for _ in 0..count {
                    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    rest = &rest[4..];
                    if len >= 0 {
                        let (value, tail) = rest.split_at(len as usize);
                        replies
                            .values
                            .push(String::from_utf8_lossy(value).into_owned());
                        rest = tail;
                    }
                }
            }
            b'Z' => {
                replies.status = msg.body[0];
                return replies;
            }
            _ => {}
        }
    }
}

fn bind(buf: &mut BytesMut, statement: &str, params: &[&str]) {
    let built = frontend::bind(
        "",
        statement,
        [],
        params.iter(),
        |param, out| {
            out.extend_from_slice(param.as_bytes());
            Ok(IsNull::No)
        },
        [],
        buf,
    );
    assert!(built.is_ok(), "could not build a Bind");
}

/// Bind + Execute of `statement` (by name, never parsed by this client), then B's tenant
/// ids in the same batch, then Sync.
fn bind_then_read(statement: &str, params: &[&str]) -> BytesMut {
    let mut buf = BytesMut::new();
    bind(&mut buf, statement, params);
    frontend::execute("", 0, &mut buf).unwrap();
    frontend::parse("", TENANT_IDS, [], &mut buf).unwrap();
    bind(&mut buf, "", &[]);
    frontend::execute("", 0, &mut buf).unwrap();
    frontend::sync(&mut buf);
    buf
}

async fn raw_globex(proxy: &Proxy) -> TcpStream {
    raw_login(proxy.port(), &token_for(TENANT_GLOBEX), &[])
        .await
        .0
}

/// The refusal a raw batch must get, and no row of Acme in it: the guard's 42501, or —
/// for a Bind or Describe of a statement name the client never prepared (pgtenant's own
/// names on the server) — PostgreSQL's 26000 for an unknown statement, without the name
/// ever reaching the server.
fn assert_refused_without_leak(what: &str, replies: &Replies) {
    assert!(
        !invoice_tenants(replies.values.clone())
            .iter()
            .any(|v| v == TENANT_ACME),
        "CRITICAL: {what} let Globex read Acme's rows: {:?}",
        replies.values
    );
    let first = replies.errors.first();
    let refused = first.is_some_and(|(code, msg)| {
        (code == "42501" && msg.starts_with(GUARD_PREFIX))
            || (code == "26000" && msg.ends_with("\" does not exist"))
    });
    assert!(
        refused,
        "{what} was not refused: {:?} (rows {:?})",
        replies.errors, replies.values
    );
}

/// pgtenant prepares `__pgtenant_set_tenant` (and, sealed, `__pgtenant_set_sealed_tenant`)
/// on every server; a client that binds them by name without parsing them must not reach
/// them.
async fn binding_injection_statements_by_name(sealed: bool) {
    let (_db, proxy) = setup(sealed);
    let mut stream = raw_globex(&proxy).await;
    let attacks: [(&str, Vec<&str>); 2] = [
        ("__pgtenant_set_tenant", vec![TENANT_SETTING, TENANT_ACME]),
        (
            "__pgtenant_set_sealed_tenant",
            vec![
                TENANT_SETTING,
                TENANT_ACME,
                "app.current_tenant_id_seal",
                "forged",
            ],
        ),
    ];
    for (statement, params) in attacks {
        let replies = batch(&mut stream, &bind_then_read(statement, &params)).await;
        assert_refused_without_leak(&format!("Bind of {statement}"), &replies);
        assert_eq!(replies.status, b'I');
    }
    let client = globex(&proxy).await;
    assert!(only_globex(&tenant_ids(&client).await));
}

#[tokio::test]
async fn binding_pgtenants_injection_statements_by_name_is_refused_without_the_seal() {
    binding_injection_statements_by_name(false).await;
}

#[tokio::test]
async fn binding_pgtenants_injection_statements_by_name_is_refused_with_the_seal() {
    binding_injection_statements_by_name(true).await;
}

/// A seed-style named statement (`set_config('app.current_tenant_id', $1, true)`) is
/// checked at Bind for the client's own tenant; it runs on the server under a shared name
/// (`pgt_<n>`) that a client can learn and bind, or `EXECUTE`, directly.
async fn reaching_a_shared_statement_by_its_server_name(sealed: bool) {
    let (_db, proxy) = setup(sealed);
    let mut stream = raw_globex(&proxy).await;
    let mut buf = BytesMut::new();
    frontend::parse(
        "seed",
        "SELECT set_config('app.current_tenant_id', $1, true)",
        [],
        &mut buf,
    )
    .unwrap();
    bind(&mut buf, "seed", &[TENANT_GLOBEX]);
    frontend::execute("", 0, &mut buf).unwrap();
    frontend::sync(&mut buf);
    let replies = batch(&mut stream, &buf).await;
    assert!(replies.errors.is_empty(), "{:?}", replies.errors);

    // Its server-side name, as any client of the same backend can read it.
    let mut buf = BytesMut::new();
    frontend::query(
        "SELECT name FROM pg_prepared_statements WHERE strpos(statement, 'set_' || 'config(''app.') > 0",
        &mut buf,
    )
    .unwrap();
    let names = batch(&mut stream, &buf).await.values;
    assert_eq!(names.len(), 1, "{names:?}");
    let server_name = names[0].clone();

    let replies = batch(&mut stream, &bind_then_read(&server_name, &[TENANT_ACME])).await;
    assert_refused_without_leak(&format!("Bind of shared statement {server_name}"), &replies);

    let sql = format!("EXECUTE {server_name}('{TENANT_ACME}'); {TENANT_IDS}");
    let mut buf = BytesMut::new();
    frontend::query(&sql, &mut buf).unwrap();
    let replies = batch(&mut stream, &buf).await;
    assert_refused_without_leak(&format!("simple Query {sql:?}"), &replies);

    let client = globex(&proxy).await;
    assert!(only_globex(&tenant_ids(&client).await));
}

#[tokio::test]
async fn binding_or_executing_a_shared_statement_by_server_name_is_refused_without_the_seal() {
    reaching_a_shared_statement_by_its_server_name(false).await;
}

#[tokio::test]
async fn binding_or_executing_a_shared_statement_by_server_name_is_refused_with_the_seal() {
    reaching_a_shared_statement_by_its_server_name(true).await;
}

/// A FunctionCall message (type, length, function OID, text arguments, text result).
fn function_call(oid: u32, args: &[&str]) -> BytesMut {
    let mut body = Vec::new();
    body.extend_from_slice(&oid.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(args.len() as i16).to_be_bytes());
    for arg in args {
        body.extend_from_slice(&(arg.len() as i32).to_be_bytes());
        body.extend_from_slice(arg.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    let mut buf = BytesMut::new();
    buf.extend_from_slice(b"F");
    buf.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    buf.extend_from_slice(&body);
    buf
}

fn simple(sql: &str) -> BytesMut {
    let mut buf = BytesMut::new();
    frontend::query(sql, &mut buf).unwrap();
    buf
}

/// `set_config` called by OID (2078) with the FunctionCall message: alone, and inside a
/// transaction block, whose next statement must then see the block aborted.
async fn set_config_by_oid(sealed: bool) {
    let (_db, proxy) = setup(sealed);
    let mut stream = raw_globex(&proxy).await;
    let oid = batch(
        &mut stream,
        &simple("SELECT 'pg_catalog.set_config(text,text,boolean)'::regprocedure::oid"),
    )
    .await
    .values;
    let oid: u32 = oid[0].parse().unwrap();
    for is_local in ["false", "true"] {
        let call = function_call(oid, &[TENANT_SETTING, TENANT_ACME, is_local]);
        let replies = batch(&mut stream, &call).await;
        assert_refused_without_leak("FunctionCall of set_config", &replies);
        assert_eq!(replies.status, b'I');

        assert_eq!(batch(&mut stream, &simple("BEGIN")).await.status, b'T');
        let replies = batch(&mut stream, &call).await;
        assert_refused_without_leak("FunctionCall of set_config in a block", &replies);
        assert_eq!(replies.status, b'E');
        let replies = batch(&mut stream, &simple(TENANT_IDS)).await;
        assert_eq!(replies.errors.first().map(|e| e.0.as_str()), Some("25P02"));
        assert_eq!(batch(&mut stream, &simple("ROLLBACK")).await.status, b'I');

        let ids = invoice_tenants(batch(&mut stream, &simple(TENANT_IDS)).await.values);
        assert!(only_globex(&ids), "{ids:?}");
    }
    let client = globex(&proxy).await;
    assert!(only_globex(&tenant_ids(&client).await));
}

#[tokio::test]
async fn set_config_by_oid_through_function_call_is_refused_without_the_seal() {
    set_config_by_oid(false).await;
}

#[tokio::test]
async fn set_config_by_oid_through_function_call_is_refused_with_the_seal() {
    set_config_by_oid(true).await;
}

/// Startup parameters and `options` that would forge the tenant, switch role, turn row
/// security off or blind the scanner: the login is refused (42501), and a normal login
/// afterwards sees only its own rows. (`-c\\ name=…` makes PostgreSQL read a setting name
/// with a leading space, which it rejects as invalid; pgtenant may refuse it or ignore it,
/// but if it logs the client in, that client must still be Globex alone.)
async fn forging_startup_parameters(sealed: bool) {
    let (_db, proxy) = setup(sealed);
    let options_acme = format!("-c app.current_tenant_id={TENANT_ACME}");
    let options_glued = format!("-capp.current_tenant_id={TENANT_ACME}");
    let options_long = format!("--app.current-tenant-id={TENANT_ACME}");
    let options_escaped = format!("-c\\ app.current_tenant_id={TENANT_ACME}");
    let options_second = format!("-c application_name=x -c APP.current_tenant_id={TENANT_ACME}");
    let mut cases: Vec<(&str, String)> = vec![
        ("options", options_acme),
        ("options", options_glued),
        ("options", options_long),
        ("options", options_second),
        ("app.current_tenant_id", TENANT_ACME.to_owned()),
        ("App.Current_Tenant_Id", TENANT_ACME.to_owned()),
        ("options", "-c role=api_user".to_owned()),
        ("role", "api_user".to_owned()),
        ("options", "-c session_authorization=api_user".to_owned()),
        ("options", "-c row_security=off".to_owned()),
        ("row_security", "off".to_owned()),
        ("client_encoding", "SJIS".to_owned()),
        ("options", "-c client_encoding=BIG5".to_owned()),
        ("options", "-c standard_conforming_strings=off".to_owned()),
        ("standard_conforming_strings", "off".to_owned()),
    ];
    let must_refuse = cases.len();
    cases.push(("options", options_escaped));
    let token = token_for(TENANT_GLOBEX);
    for (i, (name, value)) in cases.iter().enumerate() {
        let mut params = token_params(&token);
        params.push((name, value));
        let mut stream = send_startup(proxy.port(), &params).await;
        let reply = read_login(&mut stream).await;
        let refused = reply
            .error
            .as_ref()
            .is_some_and(|(code, _)| code == "42501");
        if !refused {
            // Logged in after all: it must still be Globex, and only Globex.
            assert!(reply.ready, "{name}={value:?}: {reply:?}");
            let mut buf = BytesMut::new();
            frontend::query(TENANT_IDS, &mut buf).unwrap();
            let ids = invoice_tenants(batch(&mut stream, &buf).await.values);
            assert!(
                i >= must_refuse,
                "startup {name}={value:?} was not refused ({:?}); it then read {ids:?}",
                reply.error
            );
            assert!(
                only_globex(&ids),
                "startup {name}={value:?} then read {ids:?}"
            );
        }
        let client = globex(&proxy).await;
        assert!(
            only_globex(&tenant_ids(&client).await),
            "after {name}={value:?}"
        );
    }
}

#[tokio::test]
async fn forging_startup_parameters_are_refused_without_the_seal() {
    forging_startup_parameters(false).await;
}

#[tokio::test]
async fn forging_startup_parameters_are_refused_with_the_seal() {
    forging_startup_parameters(true).await;
}

/// `RESET ALL` is allowed at the very end of a query outside a transaction block (pools send
/// `…; RESET ALL` when they hand a connection back): there it clears nothing that outlives
/// the query. A query that opens a block first (`BEGIN; RESET ALL`) leaves the block open
/// with the tenant cleared, so it must be refused like any other `RESET ALL`.
async fn reset_all_after_begin_in_one_query(sealed: bool) {
    let (_db, proxy) = setup(sealed);
    let client = globex(&proxy).await;
    let result = client.simple_query("BEGIN; RESET ALL").await;
    let setting = client
        .simple_query("SELECT current_setting('app.current_tenant_id', true)")
        .await
        .map(|m| simple_column(&m));
    client.simple_query("ROLLBACK").await.unwrap();
    let err = result.err().unwrap_or_else(|| {
        panic!("BEGIN; RESET ALL was accepted; the block then had the tenant {setting:?}")
    });
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    assert!(only_globex(&tenant_ids(&client).await));
}

#[tokio::test]
async fn reset_all_after_begin_in_one_query_is_refused_without_the_seal() {
    reset_all_after_begin_in_one_query(false).await;
}

#[tokio::test]
async fn reset_all_after_begin_in_one_query_is_refused_with_the_seal() {
    reset_all_after_begin_in_one_query(true).await;
}
