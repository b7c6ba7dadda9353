//! Table-driven tests: every rule, every spelling, and what ordinary drivers send.

use super::*;

fn guard() -> Guard {
    Guard::default()
}

fn refusal_rule(sql: &str) -> Option<&'static str> {
    match guard().check(sql) {
        Verdict::Refuse(r) => Some(r.rule),
        _ => None,
    }
}

#[track_caller]
fn assert_refused(cases: &[(&str, &str)]) {
    for (sql, expected) in cases {
        match guard().check(sql) {
            Verdict::Refuse(r) => {
                assert_eq!(r.rule, *expected, "wrong rule for {sql:?}: {}", r.message);
                assert!(
                    r.message.contains(expected),
                    "message names the rule: {sql:?}"
                );
            }
            other => panic!("{sql:?} should be refused by {expected}, got {other:?}"),
        }
    }
}

#[test]
fn changing_the_tenant_setting_is_refused_however_it_is_spelled() {
    use rule::TENANT_SETTING as T;
    assert_refused(&[
        ("SET app.current_tenant_id = 'b'", T),
        ("set app.current_tenant_id to 'b'", T),
        ("SET SESSION app.current_tenant_id = 'b'", T),
        ("SET APP.CURRENT_TENANT_ID = 'b'", T),
        ("SET \"app\".\"current_tenant_id\" = 'b'", T),
        ("SET \"app.current_tenant_id\" = 'b'", T),
        ("SET app . current_tenant_id = 'b'", T),
        ("SET /*x*/ app.current_tenant_id = 'b'", T),
        ("SET -- comment\napp.current_tenant_id = 'b'", T),
        (
            "/* a /* nested */ comment */ SET app.current_tenant_id = 'b'",
            T,
        ),
        ("SET U&\"app.current_\\0074enant_id\" = 'b'", T),
        ("SET U&\"app.current_!0074enant_id\" UESCAPE '!' = 'b'", T),
        ("RESET app.current_tenant_id", T),
        ("reset \"APP\".current_tenant_id", T),
        ("SET app.current_tenant_id TO DEFAULT", T),
        ("SET LOCAL app.current_tenant_id TO DEFAULT", T),
        ("SET LOCAL app.current_tenant_id = 'a', 'b'", T),
        ("SELECT 1; SET app.current_tenant_id = 'b'", T),
        ("SELECT ';'; SET app.current_tenant_id = 'b'", T),
        ("BEGIN; SET SESSION app.current_tenant_id = 'b'; COMMIT", T),
        ("SELECT set_config('app.current_tenant_id', 'b', false)", T),
        ("SELECT set_config('app.current_tenant_id', 'b', $3)", T),
        (
            "SELECT set_config('app.current_tenant_id', 'b' || '', true)",
            T,
        ),
        ("SELECT set_config('APP.Current_Tenant_Id', 'b', false)", T),
        (
            "SELECT set_config(E'app.current\\x5ftenant_id', 'b', false)",
            T,
        ),
        (
            "SELECT set_config(U&'app.current\\005ftenant_id', 'b', false)",
            T,
        ),
        (
            "SELECT set_config($$app.current_tenant_id$$, 'b', false)",
            T,
        ),
        (
            "SELECT pg_catalog.set_config('app.current_tenant_id', 'b', false)",
            T,
        ),
        (
            "SELECT \"pg_catalog\".\"set_config\"('app.current_tenant_id', 'b', 'off')",
            T,
        ),
        (
            "SELECT PG_CATALOG . /* */ SET_CONFIG('app.current_tenant_id', 'b', false)",
            T,
        ),
        (
            "SELECT U&\"set\\005fconfig\"('app.current_tenant_id', 'b', false)",
            T,
        ),
        (
            "SELECT set_config(new_value => 'b', is_local => false, setting_name => 'app.current_tenant_id')",
            T,
        ),
        (
            "SELECT 1 WHERE set_config('app.current_tenant_id', 'b', false) IS NOT NULL",
            T,
        ),
        (
            "WITH x AS (SELECT set_config('app.current_tenant_id', 'b', false)) SELECT * FROM x",
            T,
        ),
        // Only a top-level SELECT or SET may set it, even to the client's own tenant.
        (
            "INSERT INTO t SELECT set_config('app.current_tenant_id', 'a', true)",
            T,
        ),
        (
            "EXPLAIN ANALYZE SELECT set_config('app.current_tenant_id', 'b', true)",
            T,
        ),
        (
            "PREPARE p AS SELECT set_config('app.current_tenant_id', $1, true)",
            T,
        ),
        (
            "CREATE VIEW v AS SELECT set_config('app.current_tenant_id', 'b', true)",
            T,
        ),
        (
            "DECLARE c CURSOR FOR SELECT set_config('app.current_tenant_id', 'b', true)",
            T,
        ),
        ("ALTER ROLE api_user SET app.current_tenant_id = 'b'", T),
        (
            "ALTER ROLE CURRENT_USER IN DATABASE app SET app.current_tenant_id TO 'b'",
            T,
        ),
        ("ALTER USER api_user RESET app.current_tenant_id", T),
        ("ALTER DATABASE app SET app.current_tenant_id = 'b'", T),
        ("ALTER SYSTEM SET app.current_tenant_id = 'b'", T),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.current_tenant_id = 'b' AS 'SELECT 1'",
            T,
        ),
        ("ALTER FUNCTION f() SET app.current_tenant_id = 'b'", T),
        (
            "ALTER FUNCTION f() SET app.current_tenant_id FROM CURRENT",
            T,
        ),
    ]);
}

#[test]
fn seed_style_local_assignments_are_allowed_only_for_the_caller_to_compare() {
    let lit = |v: &str| TenantValue::Literal(v.to_owned());
    let cases: &[(&str, Vec<TenantValue>)] = &[
        ("SET LOCAL app.current_tenant_id = 'a'", vec![lit("a")]),
        ("set local APP.current_tenant_id to 'a'", vec![lit("a")]),
        (
            "SET LOCAL U&\"app.current_\\0074enant_id\" = 'a'",
            vec![lit("a")],
        ),
        ("SET LOCAL app.current_tenant_id = E'\\x61'", vec![lit("a")]),
        ("SET LOCAL app.current_tenant_id = 42", vec![lit("42")]),
        (
            "SET LOCAL app.current_tenant_id = $1",
            vec![TenantValue::Param(1)],
        ),
        (
            "SELECT set_config('app.current_tenant_id', 'a', true)",
            vec![lit("a")],
        ),
        (
            "SELECT set_config('app.current_tenant_id', $1, true)",
            vec![TenantValue::Param(1)],
        ),
        (
            "SELECT set_config('app.current_tenant_id', $2, 'on')",
            vec![TenantValue::Param(2)],
        ),
        (
            "SELECT pg_catalog.set_config(setting_name => 'app.current_tenant_id', new_value => $1, is_local => true)",
            vec![TenantValue::Param(1)],
        ),
        (
            "BEGIN; SET LOCAL app.current_tenant_id = 'a'; SELECT set_config('app.current_tenant_id', 'b', true)",
            vec![lit("a"), lit("b")],
        ),
    ];
    for (sql, expected) in cases {
        assert_eq!(
            guard().check(sql),
            Verdict::AllowIfOwnTenant(expected.clone()),
            "{sql}"
        );
    }
}

#[test]
fn tenant_values_match_only_the_callers_own_tenant() {
    let own = "aaaaaaaa-0000-0000-0000-000000000001";
    assert!(TenantValue::Literal(own.to_owned()).is_own_tenant(own, |_| None));
    assert!(!TenantValue::Literal("other".to_owned()).is_own_tenant(own, |_| None));
    assert!(TenantValue::Param(1).is_own_tenant(own, |n| (n == 1).then_some(own.as_bytes())));
    assert!(!TenantValue::Param(2).is_own_tenant(own, |n| (n == 1).then_some(own.as_bytes())));
    assert!(!TenantValue::Param(1).is_own_tenant(own, |_| None));
}

#[test]
fn a_configured_tenant_setting_name_is_guarded_instead_of_the_default() {
    let g = Guard::new("Tenant.Id");
    assert!(matches!(g.check("SET tenant.id = 'x'"), Verdict::Refuse(_)));
    assert!(matches!(
        g.check("SET LOCAL TENANT.ID = 'x'"),
        Verdict::AllowIfOwnTenant(_)
    ));
    assert_eq!(g.check("SET app.current_tenant_id = 'x'"), Verdict::Allow);
    assert!(matches!(
        g.check("DO $$BEGIN PERFORM 1 FROM t WHERE x = current_setting('tenant.id'); END$$"),
        Verdict::Refuse(Refusal {
            rule: rule::ROUTINE_BODY,
            ..
        })
    ));
}

#[test]
fn set_config_with_a_name_that_is_not_a_literal_is_refused() {
    use rule::SET_CONFIG_DYNAMIC as D;
    assert_refused(&[
        ("SELECT set_config($1, $2, true)", D),
        ("SELECT set_config($1, 'x', false)", D),
        (
            "SELECT set_config('app.' || 'current_tenant_id', 'b', true)",
            D,
        ),
        ("SELECT set_config(concat('app.', 'x'), 'b', true)", D),
        (
            "SELECT set_config((SELECT 'app.current_tenant_id'), 'b', true)",
            D,
        ),
        ("SELECT set_config('jit'::text, 'off', false)", D),
        ("SELECT set_config(name, 'b', true) FROM t", D),
        ("SELECT pg_catalog.set_config(VARIADIC ARRAY['a'])", D),
        ("SELECT set_config('jit', 'off')", D),
        (
            "SELECT set_config(setting => 'jit', new_value => 'off', is_local => false)",
            D,
        ),
        (
            "SELECT \"set_config\"(lower('APP.CURRENT_TENANT_ID'), 'b', true)",
            D,
        ),
    ]);
}

#[test]
fn reset_all_and_discard_all_are_refused() {
    assert_refused(&[
        ("RESET ALL", rule::RESET_ALL),
        ("reset /* x */ all", rule::RESET_ALL),
        ("SELECT 1; RESET ALL", rule::RESET_ALL),
        ("ALTER ROLE api_user RESET ALL", rule::RESET_ALL),
        ("ALTER DATABASE app RESET ALL", rule::RESET_ALL),
        ("DISCARD ALL", rule::DISCARD_ALL),
        ("discard all;", rule::DISCARD_ALL),
    ]);
    for sql in [
        "DISCARD PLANS",
        "DISCARD SEQUENCES",
        "DISCARD TEMP",
        "DISCARD TEMPORARY",
    ] {
        assert_eq!(guard().check(sql), Verdict::Allow, "{sql}");
    }
}

#[test]
fn role_switches_and_row_security_off_are_refused() {
    use rule::{ROLE_CHANGE as R, ROW_SECURITY as S};
    assert_refused(&[
        ("SET ROLE other", R),
        ("SET LOCAL ROLE other", R),
        ("SET SESSION ROLE other", R),
        ("set role none", R),
        ("RESET ROLE", R),
        ("SET SESSION AUTHORIZATION other", R),
        ("SET SESSION AUTHORIZATION DEFAULT", R),
        ("RESET SESSION AUTHORIZATION", R),
        ("SET \"role\" = 'other'", R),
        ("SELECT set_config('role', 'other', false)", R),
        (
            "SELECT set_config('session_authorization', 'other', true)",
            R,
        ),
        ("ALTER ROLE api_user SET role = 'other'", R),
        ("SET row_security = off", S),
        ("SET row_security TO false", S),
        ("SET LOCAL row_security = 'of'", S),
        ("SET row_security = 0", S),
        ("SELECT set_config('row_security', 'off', true)", S),
        ("SELECT set_config('row_security', $1, true)", S),
        ("ALTER ROLE api_user SET row_security = off", S),
    ]);
    for sql in [
        "SET row_security = on",
        "SET row_security TO true",
        "RESET row_security",
    ] {
        assert_eq!(guard().check(sql), Verdict::Allow, "{sql}");
    }
}

#[test]
fn settings_that_blind_the_scanner_are_refused() {
    use rule::{CLIENT_ENCODING as E, STANDARD_CONFORMING_STRINGS as S};
    assert_refused(&[
        ("SET client_encoding = 'SJIS'", E),
        ("SET client_encoding TO 'big5'", E),
        ("SET CLIENT_ENCODING = gbk", E),
        ("SET client_encoding = 'GB18030'", E),
        ("SET client_encoding = 'UHC'", E),
        ("SET client_encoding = 'JOHAB'", E),
        ("SET client_encoding = 'Shift-JIS_2004'", E),
        ("SET client_encoding = 'win932'", E),
        ("SET NAMES 'sjis'", E),
        ("SET LOCAL client_encoding = 'mskanji'", E),
        ("SELECT set_config('client_encoding', 'SJIS', false)", E),
        ("SELECT set_config('client_encoding', $1, false)", E),
        ("ALTER ROLE api_user SET client_encoding = 'SJIS'", E),
        ("SET standard_conforming_strings = off", S),
        ("SET standard_conforming_strings TO 'false'", S),
        ("SET LOCAL standard_conforming_strings = no", S),
        (
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            S,
        ),
        (
            "ALTER DATABASE app SET standard_conforming_strings = off",
            S,
        ),
    ]);
    for sql in [
        "SET client_encoding = 'UTF8'",
        "SET client_encoding TO 'LATIN1'",
        "SET NAMES 'EUC_JP'",
        "SET client_encoding TO DEFAULT",
        "RESET client_encoding",
        "SET standard_conforming_strings = on",
        "SET standard_conforming_strings = 'true'",
    ] {
        assert_eq!(guard().check(sql), Verdict::Allow, "{sql}");
    }
}

#[test]
fn routine_bodies_that_mention_guarded_things_are_refused() {
    use rule::{ROUTINE_BODY as B, ROUTINE_LANGUAGE as L};
    assert_refused(&[
        (
            "DO $$BEGIN PERFORM set_config('app.current_tenant_id', 'b', false); END$$",
            B,
        ),
        ("DO $$BEGIN SET LOCAL app.current_tenant_id = 'b'; END$$", B),
        (
            "DO $$BEGIN SET LOCAL \"app\".\"current_tenant_id\" = 'b'; END$$",
            B,
        ),
        ("do 'begin reset all; end'", B),
        ("DO E'BEGIN PERFORM set\\x5fconfig(1); END'", B),
        (
            "DO $$BEGIN EXECUTE 'SELECT set_' || 'config(''a'', ''b'', true)'; END$$",
            B,
        ),
        ("DO $$BEGIN EXECUTE format('SELECT %s', 1); END$$", B),
        (
            "DO $$DECLARE r record; BEGIN FOR r IN EXECUTE 'SELECT 1' LOOP END LOOP; END$$",
            B,
        ),
        ("DO $$BEGIN SET ROLE other; END$$", B),
        ("DO $$BEGIN SET SESSION AUTHORIZATION other; END$$", B),
        ("DO $$BEGIN SET row_security = off; END$$", B),
        (
            "DO $$BEGIN PERFORM U&\"set\\005fconfig\"('a', 'b', true); END$$",
            B,
        ),
        ("DO $$BEGIN UPDATE pg_settings SET setting = 'b'; END$$", B),
        (
            "DO LANGUAGE plpgsql $body$BEGIN PERFORM set_config('x.y', 'b', true); END$body$",
            B,
        ),
        ("DO LANGUAGE plperl $$ spi_exec_query('SELECT 1') $$", L),
        (
            "CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $$BEGIN RETURN set_config('app.current_tenant_id', 'b', true); END$$",
            B,
        ),
        (
            "create or replace function f(t text) returns void language plpgsql as 'begin execute t; end'",
            B,
        ),
        (
            "CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT pg_catalog.set_config('x.y', '1', true) $$",
            B,
        ),
        (
            "CREATE FUNCTION f() RETURNS text LANGUAGE internal AS 'set_config_by_name'",
            L,
        ),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'lib', 'sym'",
            L,
        ),
    ]);
}

#[test]
fn sql_standard_function_bodies_are_read_as_trees() {
    assert_eq!(
        refusal_rule(
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql RETURN set_config('app.current_tenant_id', 'b', true)"
        ),
        Some(rule::TENANT_SETTING)
    );
    assert_eq!(
        refusal_rule(
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT length(set_config($1, 'x', true)); END"
        ),
        Some(rule::SET_CONFIG_DYNAMIC)
    );
    assert_eq!(
        guard().check("CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql RETURN a + 1"),
        Verdict::Allow
    );
}

#[test]
fn harmless_routines_pass() {
    for sql in [
        "DO $$BEGIN PERFORM 1; END$$",
        "DO $$BEGIN RAISE NOTICE 'hello'; END$$",
        "CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b'",
        "CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.updated_at := now(); RETURN NEW; END$$",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path FROM CURRENT AS 'SELECT 1'",
    ] {
        assert_eq!(guard().check(sql), Verdict::Allow, "{sql}");
    }
}

#[test]
fn functions_that_run_sql_text_are_checked_or_refused() {
    use rule::{DYNAMIC_SQL as D, TENANT_SETTING as T};
    assert_refused(&[
        (
            "SELECT query_to_xml('SELECT set_config(''app.current_tenant_id'', ''b'', true)', true, false, '')",
            T,
        ),
        (
            "SELECT query_to_xml('SELECT set_' || 'config(''app.current_tenant_id'', ''b'', true)', true, false, '')",
            D,
        ),
        ("SELECT query_to_xml($1, true, false, '')", D),
        (
            "SELECT pg_catalog.query_to_xmlschema(q, true, false, '') FROM t",
            D,
        ),
        (
            "SELECT query_to_xml_and_xmlschema(query => $1, nulls => true, tableforest => false, targetns => '')",
            D,
        ),
        ("SELECT * FROM ts_stat('SELECT ' || 'v FROM docs')", D),
        ("SELECT ts_rewrite('a'::tsquery, $1)", D),
        (
            "SELECT * FROM ts_stat('SELECT to_tsvector(set_config(''role'', ''x'', true))')",
            rule::ROLE_CHANGE,
        ),
    ]);
    for sql in [
        "SELECT query_to_xml('SELECT 1', true, false, '')",
        "SELECT * FROM ts_stat('SELECT body_tsv FROM docs')",
        "SELECT ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)",
    ] {
        assert_eq!(guard().check(sql), Verdict::Allow, "{sql}");
    }
}

#[test]
fn naming_guarded_functions_outside_a_call_is_refused() {
    use rule::FUNCTION_REFERENCE as F;
    assert_refused(&[
        (
            "CREATE AGGREGATE evil(text, boolean) (SFUNC = set_config, STYPE = text, INITCOND = 'app.current_tenant_id')",
            F,
        ),
        (
            "CREATE AGGREGATE evil(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text)",
            F,
        ),
        (
            "CREATE FUNCTION set_config(text, text, boolean) RETURNS text LANGUAGE sql AS 'SELECT 1'",
            F,
        ),
        (
            "GRANT EXECUTE ON FUNCTION set_config(text, text, boolean) TO public",
            F,
        ),
    ]);
}

#[test]
fn writing_pg_settings_is_refused() {
    use rule::PG_SETTINGS_WRITE as P;
    assert_refused(&[
        (
            "UPDATE pg_settings SET setting = 'b' WHERE name = 'app.current_tenant_id'",
            P,
        ),
        ("update PG_CATALOG.PG_SETTINGS set setting = 'b'", P),
        ("UPDATE U&\"pg\\005fsettings\" SET setting = 'b'", P),
        (
            "WITH u AS (UPDATE pg_settings SET setting = 'b' RETURNING 1) SELECT * FROM u",
            P,
        ),
        ("INSERT INTO pg_settings (name) VALUES ('x')", P),
        ("CREATE VIEW s AS SELECT * FROM pg_settings", P),
        (
            "CREATE RULE r AS ON UPDATE TO t DO INSTEAD UPDATE pg_settings SET setting = 'b'",
            P,
        ),
    ]);
    assert_eq!(
        guard().check("SELECT name, setting FROM pg_settings WHERE name = 'jit'"),
        Verdict::Allow
    );
}

#[test]
fn suspect_statements_the_grammar_rejects_are_refused() {
    assert_refused(&[
        ("SET app.current_tenant_id = = 'b'", rule::UNPARSABLE),
        ("SELECT set_config('a', 'b', true", rule::UNPARSABLE),
        ("DO", rule::UNPARSABLE),
    ]);
    // Not suspect: left for PostgreSQL to reject with its own error.
    assert_eq!(guard().check("SELEC 1 FROM"), Verdict::Allow);
}

#[test]
fn what_ordinary_drivers_send_is_allowed() {
    for sql in [
        "SELECT 1",
        "SELECT * FROM invoices WHERE id = $1",
        "UPDATE invoices SET amount = $1 WHERE id = $2",
        "update invoices i set amount = 2 from t where t.id = i.id",
        "INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = excluded.id",
        "INSERT INTO t (id) VALUES (1) ON CONFLICT DO NOTHING",
        "SELECT set_config('jit', 'off', false)",
        "SELECT pg_catalog.set_config('search_path', '', false)",
        "SET LOCAL statement_timeout = 5000",
        "SET search_path = app, public",
        "SET application_name = 'api'",
        "SET TIME ZONE 'UTC'",
        "SET datestyle TO ISO, MDY",
        "SET extra_float_digits = 3",
        "RESET statement_timeout",
        "SHOW app.current_tenant_id",
        "SHOW ALL",
        "SELECT current_setting('app.current_tenant_id')",
        "SELECT current_setting('app.current_tenant_id', true)::uuid",
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET CONSTRAINTS ALL DEFERRED",
        "ALTER TABLE t ADD COLUMN c int",
        "CREATE TABLE t (id int)",
        "DISCARD TEMP",
        "COMMIT",
        "",
        ";;",
    ] {
        assert_eq!(guard().check(sql), Verdict::Allow, "{sql}");
    }
}

#[test]
fn literals_and_comments_that_merely_contain_the_words_are_allowed() {
    for sql in [
        "SELECT 'SET app.current_tenant_id = 1'",
        "SELECT 'reset all', 'discard all', 'do', 'alter role'",
        "SELECT $$SET ROLE postgres$$",
        "SELECT E'set\\nrole'",
        "SELECT 1 -- SET app.current_tenant_id = 'b'",
        "SELECT 1 /* RESET ALL */",
        "INSERT INTO notes (body) VALUES ('we call set_config in the seed')",
        "INSERT INTO notes (body) VALUES ('UPDATE pg_settings is dangerous')",
        "SELECT 'a;SET x = 1'",
        "SELECT 1; SELECT 'SET'",
    ] {
        assert!(
            !matches!(guard().check(sql), Verdict::Refuse(_)),
            "{sql} must not be refused"
        );
    }
}

#[test]
fn ordinary_statements_never_reach_the_parser() {
    for sql in [
        "SELECT * FROM invoices WHERE tenant_id = $1 AND created_at > now() - interval '1 day'",
        "UPDATE invoices SET amount = 1 WHERE id = 2",
        "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
        "SELECT 1; SELECT 2",
        "SHOW app.current_tenant_id",
        "SELECT current_setting('app.current_tenant_id')",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "CREATE TABLE t (id int)",
    ] {
        assert!(!prescan::is_suspect(sql.as_bytes()), "{sql}");
    }
    for sql in [
        "SET search_path = a",
        "  \n-- c\n/* d */ reset x",
        "SELECT 1;DISCARD PLANS",
        "do $$ $$",
        "ALTER TABLE t ADD c int",
        "create or replace /* x */ procedure p() language sql as ''",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1",
        "SELECT SET_CONFIG('a','b',true)",
        "SELECT * FROM Pg_Settings",
        "SELECT U&'x'",
        "SELECT query_to_xmlschema('', true, true, '')",
        "SELECT 'x' FROM ts_stat('')",
    ] {
        assert!(prescan::is_suspect(sql.as_bytes()), "{sql}");
    }
}

#[test]
fn startup_parameters_that_touch_guarded_settings_are_refused() {
    let g = guard();
    let rule_of = |name: &str, value: &str| g.check_parameter(name, value).err().map(|r| r.rule);
    assert_eq!(
        rule_of("app.current_tenant_id", "b"),
        Some(rule::TENANT_SETTING)
    );
    assert_eq!(
        rule_of("APP.CURRENT-TENANT-ID", "b"),
        Some(rule::TENANT_SETTING)
    );
    assert_eq!(rule_of("role", "postgres"), Some(rule::ROLE_CHANGE));
    assert_eq!(
        rule_of("session_authorization", "x"),
        Some(rule::ROLE_CHANGE)
    );
    assert_eq!(rule_of("row_security", "off"), Some(rule::ROW_SECURITY));
    assert_eq!(
        rule_of("client_encoding", "SJIS"),
        Some(rule::CLIENT_ENCODING)
    );
    assert_eq!(
        rule_of("client_encoding", "big5"),
        Some(rule::CLIENT_ENCODING)
    );
    assert_eq!(
        rule_of("standard_conforming_strings", "off"),
        Some(rule::STANDARD_CONFORMING_STRINGS)
    );
    for (name, value) in [
        ("client_encoding", "UTF8"),
        ("client_encoding", "LATIN1"),
        ("application_name", "psql"),
        ("DateStyle", "ISO, MDY"),
        ("standard_conforming_strings", "on"),
        ("row_security", "on"),
        ("search_path", "app"),
    ] {
        assert_eq!(g.check_parameter(name, value), Ok(()), "{name}={value}");
    }
}

#[test]
fn function_call_messages_reach_only_large_object_functions() {
    let g = guard();
    assert!(g.check_function_call(952).is_ok(), "lo_open");
    assert!(g.check_function_call(955).is_ok(), "lowrite");
    assert_eq!(
        g.check_function_call(2078).err().map(|r| r.rule),
        Some(rule::FUNCTION_CALL_MESSAGE),
        "set_config"
    );
    assert!(g.check_function_call(16_384).is_err(), "a user function");
}

#[test]
fn boolean_literals_follow_postgresql() {
    for v in ["on", "ON", "true", "t", "tr", "yes", "y", "1"] {
        assert!(settings::parses_as_true(v), "{v}");
    }
    for v in ["off", "of", "o", "false", "f", "no", "0", "", " on", "2"] {
        assert!(!settings::parses_as_true(v), "{v}");
    }
}
