use super::StatementKind::{self, *};
use super::{QueryShape, classify, segments, shape, statements};

const NTB: StatementKind = NoTransactionBlock;

/// Kinds of the non-empty statements, as PostgreSQL would execute them.
fn kinds(sql: &str) -> Vec<StatementKind> {
    statements(sql)
        .map(|s| s.kind)
        .filter(|&k| k != Empty)
        .collect()
}

#[test]
fn quoting_and_comments_hide_semicolons_and_keywords() {
    let cases: &[(&str, &[StatementKind])] = &[
        ("SELECT 'x;COMMIT;'", &[Other]),
        ("SELECT 'it''s; COMMIT'", &[Other]),
        // Standard strings take no backslash escapes: `\` is an ordinary character.
        ("SELECT 'a\\'; COMMIT", &[Other, Commit { chain: false }]),
        ("SELECT E'\\'; COMMIT; '", &[Other]),
        ("SELECT e'\\'; COMMIT; '", &[Other]),
        ("SELECT E'\\\\'; COMMIT", &[Other, Commit { chain: false }]),
        ("SELECT E'a''; COMMIT'", &[Other]),
        // A prefix counts only at the start of a token.
        (
            "SELECT somee'\\'; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        ("SELECT U&'d\\0061t''; COMMIT'", &[Other]),
        ("SELECT u&'\\'; COMMIT", &[Other, Commit { chain: false }]),
        ("SELECT B'01'; COMMIT", &[Other, Commit { chain: false }]),
        ("SELECT X'1F;COMMIT'", &[Other]),
        ("SELECT N'; COMMIT'", &[Other]),
        ("SELECT \"a;COMMIT\"", &[Other]),
        ("SELECT \"a\"\";COMMIT\"", &[Other]),
        ("SELECT U&\"a;\"; COMMIT", &[Other, Commit { chain: false }]),
        ("SELECT $$; COMMIT;$$", &[Other]),
        ("SELECT $fn$ $$; COMMIT; $$ $fn$", &[Other]),
        ("SELECT $_x1$;COMMIT$_x1$", &[Other]),
        ("SELECT $é$;COMMIT$é$", &[Other]),
        // Tags are case-sensitive.
        ("SELECT $a$ $A$; COMMIT $a$", &[Other]),
        // `$a$` inside `$b$…$b$` is body text, and `$x` without a closing `$` is no quote.
        (
            "SELECT $b$ $a$ $b$; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        ("SELECT $x; COMMIT", &[Other, Commit { chain: false }]),
        ("SELECT $1; COMMIT", &[Other, Commit { chain: false }]),
        ("SELECT $1$$; COMMIT $$", &[Other]),
        ("SELECT 1$$; COMMIT $$", &[Other]),
        // `$` continues an identifier, so no dollar quote starts inside one.
        ("SELECT a$$b; COMMIT", &[Other, Commit { chain: false }]),
        (
            "SELECT 1 -- ; COMMIT\n; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        (
            "SELECT 1 -- ; COMMIT\r; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        (
            "SELECT 1 /* ; COMMIT */; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        (
            "SELECT 1 /* /* */ ; COMMIT */; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        ("SELECT 1 /*/ ; COMMIT */", &[Other]),
        ("SELECT 2 --/*\n; COMMIT", &[Other, Commit { chain: false }]),
        (
            "SELECT 2 */* ; */; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        (
            "SELECT 2 +-- ;\n; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        // A string continued across a newline keeps its mode: this is one E-string.
        ("SELECT E'a'\n'\\'; COMMIT; '", &[Other]),
        ("SELECT E'a' -- c\n  '\\'; COMMIT; '", &[Other]),
        ("SELECT E'a'\r\n\n'\\'; COMMIT; '", &[Other]),
        // Without a newline (or across a block comment) the next quote starts a new string.
        (
            "SELECT E'a' '\\'; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        (
            "SELECT E'a'\n/**/'\\'; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        ("SELECT 'a'\n'; COMMIT'", &[Other]),
    ];
    for (sql, expected) in cases {
        assert_eq!(kinds(sql), *expected, "{sql:?}");
    }
}

#[test]
fn semicolons_inside_parentheses_or_atomic_bodies_do_not_end_a_statement() {
    let cases: &[(&str, &[StatementKind])] = &[
        (
            "CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b); COMMIT",
            &[Other, Commit { chain: false }],
        ),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; \
             SELECT CASE WHEN true THEN 2 END; END; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        (
            "create or replace procedure p() begin /* c */ atomic commit; end; select 1",
            &[Other, Other],
        ),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1 AS end; \
             SELECT t.end FROM t; END; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        // `end` as a bare column label, and inside a CASE after a `.`.
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1 end; \
             SELECT CASE WHEN true THEN t.end END FROM t; END; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC END; END",
            &[Other, Commit { chain: false }],
        ),
        // `BEGIN` without `ATOMIC` is just a name here.
        (
            "CREATE FUNCTION begin() RETURNS int AS 'select 1' LANGUAGE sql; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        // Outside CREATE FUNCTION, `BEGIN ATOMIC` opens nothing.
        (
            "SELECT begin atomic FROM t; COMMIT",
            &[Other, Commit { chain: false }],
        ),
        // Bodies in dollar quotes are strings.
        ("DO $$BEGIN COMMIT; END$$; SELECT 1", &[Other, Other]),
        (
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $body$ BEGIN COMMIT; END $body$; \
             ROLLBACK",
            &[Other, Rollback { chain: false }],
        ),
    ];
    for (sql, expected) in cases {
        assert_eq!(kinds(sql), *expected, "{sql:?}");
    }
}

#[test]
fn leading_keywords_decide_the_statement_kind() {
    let cases: &[(&str, StatementKind)] = &[
        ("BEGIN", Begin),
        ("begin work", Begin),
        ("BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE", Begin),
        ("start transaction isolation level serializable", Begin),
        ("START", Other),
        ("COMMIT", Commit { chain: false }),
        ("  \n\tCoMmIt", Commit { chain: false }),
        ("commit and chain", Commit { chain: true }),
        ("COMMIT AND NO CHAIN", Commit { chain: false }),
        ("COMMIT WORK AND CHAIN", Commit { chain: true }),
        ("COMMIT /* x */ AND -- y\n CHAIN", Commit { chain: true }),
        ("END", Commit { chain: false }),
        ("END TRANSACTION", Commit { chain: false }),
        ("end work and chain", Commit { chain: true }),
        ("ROLLBACK", Rollback { chain: false }),
        ("ABORT", Rollback { chain: false }),
        ("rollback transaction and chain", Rollback { chain: true }),
        ("ABORT AND NO CHAIN", Rollback { chain: false }),
        ("ROLLBACK TO SAVEPOINT s", Other),
        ("ROLLBACK TO s", Other),
        ("ROLLBACK WORK TO SAVEPOINT s", Other),
        ("ROLLBACK PREPARED 'x'", NTB),
        ("COMMIT PREPARED 'x'", NTB),
        ("PREPARE TRANSACTION 'x'", PrepareTransaction),
        ("prepare transaction $$x$$", PrepareTransaction),
        ("PREPARE TRANSACTION E'x'", PrepareTransaction),
        ("PREPARE transaction AS SELECT 1", Other),
        ("PREPARE p (int) AS SELECT $1", Other),
        ("SAVEPOINT s", Other),
        ("RELEASE SAVEPOINT s", Other),
        ("VACUUM", NTB),
        ("vacuum (analyze) t", NTB),
        ("VACUUM FULL t", NTB),
        ("ANALYZE t", Other),
        ("CREATE DATABASE d", NTB),
        ("DROP DATABASE IF EXISTS d", NTB),
        ("CREATE TABLESPACE ts LOCATION '/x'", NTB),
        ("DROP TABLESPACE ts", NTB),
        ("ALTER SYSTEM SET work_mem = '1MB'", NTB),
        ("ALTER DATABASE d SET TABLESPACE ts", NTB),
        ("ALTER DATABASE d SET work_mem = '1MB'", Other),
        ("ALTER DATABASE d RENAME TO e", Other),
        ("create unique index concurrently i on t (a)", NTB),
        ("CREATE INDEX CONCURRENTLY i ON t (a)", NTB),
        ("CREATE INDEX i ON t (a)", Other),
        ("CREATE UNIQUE INDEX i ON t (a)", Other),
        ("CREATE TABLE t (a int)", Other),
        ("DROP INDEX CONCURRENTLY i", NTB),
        ("DROP INDEX i", Other),
        ("DROP TABLE t", Other),
        ("REINDEX TABLE CONCURRENTLY t", NTB),
        ("REINDEX INDEX CONCURRENTLY i", NTB),
        ("REINDEX (CONCURRENTLY) TABLE t", NTB),
        ("REINDEX (VERBOSE, CONCURRENTLY true) INDEX i", NTB),
        ("REINDEX (VERBOSE) INDEX i", Other),
        ("REINDEX TABLE t", Other),
        ("REINDEX SYSTEM", NTB),
        ("REINDEX DATABASE d", NTB),
        ("REINDEX SCHEMA s", NTB),
        ("CLUSTER", NTB),
        ("CLUSTER VERBOSE", NTB),
        ("CLUSTER (VERBOSE)", NTB),
        ("CLUSTER t", Other),
        ("CLUSTER (VERBOSE) t USING i", Other),
        ("DISCARD ALL", NTB),
        ("discard temp", Discard),
        ("DISCARD TEMPORARY", Discard),
        ("DISCARD PLANS", Discard),
        ("DISCARD SEQUENCES", Discard),
        ("DEALLOCATE p", Deallocate),
        ("DEALLOCATE PREPARE ALL", Deallocate),
        ("CREATE SUBSCRIPTION s CONNECTION 'c' PUBLICATION p", NTB),
        ("DROP SUBSCRIPTION s", NTB),
        ("ALTER SUBSCRIPTION s REFRESH PUBLICATION", NTB),
        ("ALTER SUBSCRIPTION \"s\" REFRESH PUBLICATION", NTB),
        ("ALTER SUBSCRIPTION s SET PUBLICATION p", NTB),
        ("ALTER SUBSCRIPTION s ENABLE", Other),
        ("ALTER SUBSCRIPTION s SET (slot_name = NONE)", Other),
        ("ALTER TABLE p DETACH PARTITION c CONCURRENTLY", NTB),
        (
            "ALTER TABLE IF EXISTS s.p DETACH PARTITION s.c CONCURRENTLY",
            NTB,
        ),
        ("ALTER TABLE p DETACH PARTITION c", Other),
        ("ALTER TABLE p DETACH PARTITION c FINALIZE", Other),
        ("ALTER TABLE p ADD COLUMN concurrently int", Other),
        ("CREATE FUNCTION f() RETURNS int RETURN 1", Other),
        ("SELECT 1", Other),
        ("WITH x AS (SELECT 1) SELECT * FROM x", Other),
        ("(SELECT 1)", Other),
        // A quoted identifier is never a keyword.
        ("\"BEGIN\"", Other),
        ("\"commit\"", Other),
        ("", Empty),
        ("  -- c\n /* x */ ", Empty),
    ];
    for &(sql, expected) in cases {
        assert_eq!(classify(sql), expected, "classify {sql:?}");
        // The full scan agrees with the early-exit one, with and without a terminating `;`.
        let with_semicolon = format!("{sql};");
        let full: Vec<_> = statements(&with_semicolon).map(|s| s.kind).collect();
        let expected_full = if expected == Empty {
            vec![]
        } else {
            vec![expected]
        };
        let full_non_empty: Vec<_> = full.into_iter().filter(|&k| k != Empty).collect();
        assert_eq!(
            full_non_empty, expected_full,
            "statements {with_semicolon:?}"
        );
    }
}

#[test]
fn only_the_leading_tokens_of_a_statement_count() {
    let cases: &[(&str, StatementKind)] = &[
        ("SELECT 1; COMMIT", Other),
        (";;COMMIT", Commit { chain: false }),
        ("/* c */ ; -- x\n ; BEGIN; SELECT 1", Begin),
        ("SELECT CASE WHEN a THEN b END FROM t", Other),
        ("EXPLAIN COMMIT", Other),
    ];
    for &(sql, expected) in cases {
        assert_eq!(classify(sql), expected, "{sql:?}");
    }
}

#[test]
fn ends_transaction_is_true_exactly_for_commit_rollback_and_prepare_transaction() {
    let ending = [
        Commit { chain: false },
        Commit { chain: true },
        Rollback { chain: false },
        Rollback { chain: true },
        PrepareTransaction,
    ];
    let not_ending = [Begin, NTB, Deallocate, Discard, Empty, Other];
    assert!(ending.iter().all(StatementKind::ends_transaction));
    assert!(!not_ending.iter().any(StatementKind::ends_transaction));
}

#[test]
fn statements_report_trimmed_text_and_adjacent_ranges() {
    let sql = "  SELECT 1 ;\n  COMMIT  ;; /* c */ \n";
    let got: Vec<_> = statements(sql)
        .map(|s| (s.text, s.start, s.end, s.kind))
        .collect();
    assert_eq!(
        got,
        vec![
            ("SELECT 1", 0, 12, Other),
            ("COMMIT", 12, 24, Commit { chain: false }),
            ("", 24, 25, Empty),
            ("/* c */", 25, sql.len(), Empty),
        ]
    );
    assert_eq!(statements("SELECT 1;").count(), 1);
    assert_eq!(statements("").count(), 0);
}

fn shape_of(statements: usize, first: StatementKind, splits: usize) -> QueryShape {
    QueryShape {
        statements,
        first,
        splits,
    }
}

#[test]
fn shape_splits_after_a_transaction_end_followed_by_more_statements() {
    let sql = "BEGIN; INSERT INTO t VALUES (1); COMMIT; SELECT 1";
    assert_eq!(shape(sql), shape_of(4, Begin, 1));
    let pieces: Vec<_> = segments(sql)
        .map(|s| (s.text, s.statements, s.first))
        .collect();
    assert_eq!(
        pieces,
        vec![
            ("BEGIN; INSERT INTO t VALUES (1); COMMIT;", 3, Begin),
            (" SELECT 1", 1, Other),
        ]
    );
}

#[test]
fn shape_does_not_split_when_nothing_or_only_empty_statements_follow() {
    assert_eq!(shape("SELECT 1; COMMIT"), shape_of(2, Other, 0));
    assert_eq!(shape("COMMIT; ;"), shape_of(1, Commit { chain: false }, 0));
    assert_eq!(
        shape("COMMIT; -- bye\n"),
        shape_of(1, Commit { chain: false }, 0)
    );
    assert_eq!(
        shape("ROLLBACK TO SAVEPOINT s; SELECT 1"),
        shape_of(2, Other, 0)
    );
    assert_eq!(segments("COMMIT; ;").count(), 1);
}

#[test]
fn shape_splits_after_every_kind_of_transaction_end() {
    let sql = "COMMIT AND CHAIN; SELECT 1; ROLLBACK; ; PREPARE TRANSACTION 'x'; END; VACUUM";
    assert_eq!(shape(sql), shape_of(6, Commit { chain: true }, 4));
    let pieces: Vec<_> = segments(sql).map(|s| (s.text, s.first)).collect();
    assert_eq!(
        pieces,
        vec![
            ("COMMIT AND CHAIN;", Commit { chain: true }),
            (" SELECT 1; ROLLBACK;", Other),
            (" ; PREPARE TRANSACTION 'x';", PrepareTransaction),
            (" END;", Commit { chain: false }),
            (" VACUUM", NTB),
        ]
    );
}

#[test]
fn shape_counts_only_non_empty_statements() {
    assert_eq!(shape(""), shape_of(0, Empty, 0));
    assert_eq!(shape(" ;; -- x"), shape_of(0, Empty, 0));
    assert_eq!(shape("SELECT 'no semicolon'"), shape_of(1, Other, 0));
    assert_eq!(shape("SELECT ';'"), shape_of(1, Other, 0));
    assert_eq!(shape(";SELECT 1;;SELECT 2;"), shape_of(2, Other, 0));
    assert_eq!(segments("").count(), 0);
    // The trailing-`;` fast path, including a `;` hidden in an unterminated string.
    assert_eq!(
        shape("COMMIT;; \n"),
        shape_of(1, Commit { chain: false }, 0)
    );
    assert_eq!(shape("SELECT 'abc;"), shape_of(1, Other, 0));
    assert_eq!(shape(" ; "), shape_of(0, Empty, 0));
}

#[test]
fn unterminated_constructs_swallow_the_rest_of_the_input() {
    let cases = [
        "SELECT 'abc; COMMIT",
        "SELECT E'abc\\'; COMMIT",
        "SELECT E'abc\\",
        "SELECT \"abc; COMMIT",
        "SELECT U&\"abc; COMMIT",
        "SELECT U&'abc; COMMIT",
        "SELECT B'01; COMMIT",
        "SELECT $$abc; COMMIT",
        "SELECT $a$ abc $a; COMMIT",
        "SELECT /* /* */ ; COMMIT",
        "SELECT -- abc; COMMIT",
        "SELECT ('abc'; COMMIT",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; COMMIT",
        "SELECT 'a'\n",
        "'",
        "E'",
        "U&'",
        "U&\"",
        "\"",
        "$$",
        "$a$",
        "/*",
        "(",
    ];
    for sql in cases {
        let all: Vec<_> = statements(sql).collect();
        assert_eq!(all.len(), 1, "{sql:?}: {all:?}");
        assert_eq!((all[0].start, all[0].end), (0, sql.len()), "{sql:?}");
        assert_eq!(shape(sql).splits, 0, "{sql:?}");
    }
    // Lone prefixes and delimiters are harmless tokens.
    for sql in ["$", "$a", "E", "U&", "-", "/", ")", "\\", "$1"] {
        assert_eq!(statements(sql).count(), 1, "{sql:?}");
        assert_eq!(classify(sql), Other, "{sql:?}");
    }
}

/// xorshift64*: a tiny deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Fragments chosen to collide: every quote opener and closer, comment delimiters, keywords
/// that matter, and multi-byte characters.
const FRAGMENTS: &[&str] = &[
    "'",
    "''",
    "\"",
    "\"\"",
    "E'",
    "e'",
    "U&'",
    "U&\"",
    "B'",
    "X'",
    "N'",
    "\\",
    "\\'",
    "$",
    "$$",
    "$a$",
    "$A$",
    "$1",
    "a$",
    "--",
    "/*",
    "*/",
    "/",
    "*",
    "-",
    ";",
    ";",
    ";",
    "\n",
    "\r",
    " ",
    "\t",
    "(",
    ")",
    ".",
    "1",
    "e",
    "x",
    "é",
    "表",
    "😀",
    "\0",
    "COMMIT",
    "commit ",
    "ROLLBACK ",
    "BEGIN",
    " ATOMIC ",
    "END",
    "CASE",
    " AS ",
    "TO ",
    "AND CHAIN",
    "PREPARE TRANSACTION ",
    "SELECT ",
    "CREATE FUNCTION ",
    "VACUUM",
    "ALTER TABLE ",
    "DETACH ",
    "CONCURRENTLY",
    "CLUSTER",
    "REINDEX ",
    "DISCARD ALL",
];

fn random_sql(rng: &mut Rng) -> String {
    let mut sql = String::new();
    if rng.below(4) == 0 {
        let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        sql.push_str(&String::from_utf8_lossy(&bytes));
    }
    for _ in 0..rng.below(40) {
        sql.push_str(FRAGMENTS[rng.below(FRAGMENTS.len())]);
    }
    sql
}

#[test]
fn random_input_never_panics_and_statements_tile_the_input() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let sql = random_sql(&mut rng);
        let all: Vec<_> = statements(&sql).collect();

        // Adjacent, non-empty, in-bounds ranges covering the input; text inside its range.
        let mut expected_start = 0;
        for s in &all {
            assert_eq!(s.start, expected_start, "{sql:?}");
            assert!(s.start < s.end && s.end <= sql.len(), "{sql:?}");
            let text_at = s.text.as_ptr() as usize - sql.as_ptr() as usize;
            assert!(
                text_at >= s.start && text_at + s.text.len() <= s.end,
                "{sql:?}"
            );
            expected_start = s.end;
        }
        assert_eq!(expected_start, sql.len(), "{sql:?}");

        // Every statement alone scans as one statement of the same kind: the lexer restarts
        // cleanly after each `;`, so forwarding a piece cannot change its meaning.
        for s in &all {
            let alone: Vec<_> = statements(&sql[s.start..s.end]).collect();
            assert_eq!(alone.len(), 1, "{sql:?} piece {s:?}");
            assert_eq!(alone[0].kind, s.kind, "{sql:?} piece {s:?}");
        }

        // shape() and classify() (with their early exits) agree with the full scan.
        let non_empty: Vec<_> = all.iter().filter(|s| s.kind != Empty).collect();
        let first = non_empty.first().map_or(Empty, |s| s.kind);
        let splits = non_empty
            .iter()
            .take(non_empty.len().saturating_sub(1))
            .filter(|s| s.kind.ends_transaction())
            .count();
        assert_eq!(classify(&sql), first, "{sql:?}");
        assert_eq!(
            shape(&sql),
            shape_of(non_empty.len(), first, splits),
            "{sql:?}"
        );

        // Segments tile the input, split right after transaction ends, and each re-shapes to
        // itself with no further split.
        let mut expected_start = 0;
        let mut count = 0;
        for seg in segments(&sql) {
            assert_eq!(seg.start, expected_start, "{sql:?}");
            assert_eq!(seg.text, &sql[seg.start..seg.end], "{sql:?}");
            assert_eq!(
                shape(seg.text),
                shape_of(seg.statements, seg.first, 0),
                "{sql:?} segment {seg:?}"
            );
            if seg.end < sql.len() {
                assert!(
                    all.iter()
                        .any(|s| s.end == seg.end && s.kind.ends_transaction()),
                    "{sql:?} segment {seg:?}"
                );
            }
            expected_start = seg.end;
            count += 1;
        }
        assert_eq!(expected_start, sql.len(), "{sql:?}");
        assert_eq!(
            count,
            if sql.is_empty() { 0 } else { splits + 1 },
            "{sql:?}"
        );
    }
}
