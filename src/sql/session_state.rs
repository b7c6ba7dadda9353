//! What a piece of SQL does to its session beyond its transaction.
//!
//! In transaction mode a server is shared between clients, so two things matter:
//! - settings a statement may change at session level (`SET`, `RESET`, `DISCARD`,
//!   `set_config(…, false)`): the session reads them back and resets the server;
//! - features that only work while the client keeps the same server session (`LISTEN`,
//!   session advisory locks, `WITH HOLD` cursors, temporary tables, SQL-level `PREPARE`):
//!   the session refuses them with a clear error instead of letting them half-work.
//!
//! Temporary objects are found as `CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP …`,
//! `SELECT … INTO TEMP …` and anything qualified with `pg_temp`. Dynamic SQL inside a function
//! body can still create one; the `audit` command reports a pool role allowed to.
//!
//! The detector answers "maybe" generously for settings (any `set_config` call counts,
//! since a false positive costs one `RESET ALL` and a false negative would leak), and
//! precisely for features (a false positive refuses a valid statement). It never allocates.

use super::lexer::{Lexer, TokenKind};

/// The session-level effects of one query string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionEffects {
    /// Some statement may change session-level settings.
    pub changes_settings: bool,
    /// Some statement needs a dedicated server session; names the feature.
    pub needs_session: Option<&'static str>,
    /// Some statement runs a prepared statement by name with SQL `EXECUTE` (also inside
    /// `EXPLAIN` or `CREATE TABLE … AS`): server-side names are pgtenant's, not the
    /// client's, so this is refused.
    pub executes_prepared: bool,
}

/// True when `sql` (one or more statements) may change session-level settings.
pub fn changes_session_state(sql: &str) -> bool {
    session_effects(sql).changes_settings
}

/// Scans `sql` (one or more statements) for session-level effects.
pub fn session_effects(sql: &str) -> SessionEffects {
    // Without a `;` there is one statement.
    session_effects_of(sql, !sql.as_bytes().contains(&b';'))
}

/// [`session_effects`] when the caller already knows whether `sql` is one statement (a
/// trailing `;` included): one statement stops being scanned as soon as its leading words
/// decided.
pub fn session_effects_of(sql: &str, single: bool) -> SessionEffects {
    let b = sql.as_bytes();
    let names = NamesFound::in_text(b);
    let mut fx = SessionEffects {
        changes_settings: names.set_config,
        needs_session: if names.advisory_lock {
            Some("session-level advisory locks (pg_advisory_lock; pg_advisory_xact_lock works)")
        } else if names.temp_schema {
            Some(TEMPORARY_TABLES)
        } else {
            None
        },
        executes_prepared: false,
    };
    let mut into = IntoLetters {
        text: b,
        found: None,
    };
    let mut lexer = Lexer::new(b);
    let mut stmt = StatementWords::default();
    while let Some(tok) = lexer.next_token() {
        if tok.kind == TokenKind::Semicolon {
            stmt.finish(&mut fx);
            stmt = StatementWords::default();
            continue;
        }
        let word = (tok.kind == TokenKind::Word).then(|| &b[tok.start..tok.end]);
        if !stmt.feed(word, &mut fx, &mut into) && single {
            return fx;
        }
    }
    stmt.finish(&mut fx);
    fx
}

const TEMPORARY_TABLES: &str = "temporary tables";

/// The leading words of one statement, as far as they matter.
#[derive(Default)]
struct StatementWords<'a> {
    count: usize,
    first: Option<&'a [u8]>,
    second: Option<&'a [u8]>,
    /// Inside `DECLARE …` before `FOR`: whether the previous word was WITH.
    declare_saw_with: bool,
    decided: bool,
    /// `EXPLAIN …`/`CREATE …`: look for an inner `EXECUTE` to the end of the statement.
    scan_for_execute: bool,
    /// `SELECT …`: look for `INTO TEMP` to the end of the statement.
    scan_for_into: bool,
    into: IntoClause,
    /// The previous word was INSERT or MERGE, whose INTO names an existing table.
    after_insert: bool,
}

/// Where a `SELECT`'s words stand with respect to `INTO TEMP name`.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum IntoClause {
    /// Not scanning, or no INTO seen yet.
    #[default]
    None,
    /// Scanning: after INTO (and any LOCAL/GLOBAL).
    AfterInto,
    /// After INTO TEMP: the next word tells a temporary table (`TABLE`, a name) from a
    /// permanent table named `temp` (`FROM`, `WHERE`, … or nothing).
    AfterTemp,
}

/// Whether the query has the letters `into` anywhere, looked for once and only when a
/// statement could be a `SELECT … INTO`: without them a SELECT is decided by its first words.
struct IntoLetters<'a> {
    text: &'a [u8],
    found: Option<bool>,
}

impl IntoLetters<'_> {
    fn present(&mut self) -> bool {
        let text = self.text;
        *self
            .found
            .get_or_insert_with(|| contains_ignoring_case(text, b"into"))
    }
}

impl<'a> StatementWords<'a> {
    /// Feeds the next token (`None` for a non-word). Returns false once nothing more about
    /// this statement can change the answer.
    fn feed(
        &mut self,
        word: Option<&'a [u8]>,
        fx: &mut SessionEffects,
        into: &mut IntoLetters<'_>,
    ) -> bool {
        if self.scan_for_execute && word.is_some_and(|w| eq(w, b"execute")) {
            fx.executes_prepared = true;
            self.scan_for_execute = false;
        }
        if self.scan_for_into {
            self.feed_into(word, fx);
        }
        if self.decided {
            return self.scan_for_execute || self.scan_for_into;
        }
        self.count += 1;
        if self.count == 1
            && word.is_none_or(|w| eq(w, b"select") || eq(w, b"with"))
            && into.present()
        {
            // `(SELECT …)` starts with a non-word: read to its end for
            // `INTO [LOCAL|GLOBAL] TEMP[ORARY]`.
            self.scan_for_into = true;
        }
        let undecided = self.feed_leading(word, fx);
        undecided || self.scan_for_execute || self.scan_for_into
    }

    /// `SELECT … INTO [LOCAL|GLOBAL] TEMP|TEMPORARY [TABLE] name`.
    fn feed_into(&mut self, word: Option<&'a [u8]>, fx: &mut SessionEffects) {
        let Some(w) = word else {
            self.into = IntoClause::None;
            self.after_insert = false;
            return;
        };
        self.into = match self.into {
            IntoClause::AfterInto if is_temp(w) => IntoClause::AfterTemp,
            IntoClause::AfterInto if eq(w, b"local") || eq(w, b"global") => IntoClause::AfterInto,
            IntoClause::AfterTemp if eq(w, b"table") || !ends_select_target(w) => {
                fx.needs_session = Some(TEMPORARY_TABLES);
                self.scan_for_into = false;
                IntoClause::None
            }
            _ if eq(w, b"into") && !self.after_insert => IntoClause::AfterInto,
            _ => IntoClause::None,
        };
        self.after_insert = eq(w, b"insert") || eq(w, b"merge");
    }

    fn feed_leading(&mut self, word: Option<&'a [u8]>, fx: &mut SessionEffects) -> bool {
        match self.count {
            1 => {
                self.first = word;
                if word.is_none() {
                    self.decided = true;
                }
                if let Some(w) = word {
                    if eq(w, b"execute") {
                        fx.executes_prepared = true;
                        self.decided = true;
                    } else if eq(w, b"explain") || eq(w, b"create") {
                        // Scanned to the end for an inner EXECUTE (below).
                        self.scan_for_execute = true;
                    }
                    if eq(w, b"listen") {
                        fx.needs_session = Some("LISTEN");
                        self.decided = true;
                    } else if eq(w, b"reset") || eq(w, b"discard") {
                        fx.changes_settings = true;
                        self.decided = true;
                    }
                }
                !self.decided
            }
            2 => {
                self.second = word;
                let first = self.first.unwrap_or_default();
                let second = word.unwrap_or_default();
                if eq(first, b"set") {
                    if !(eq(second, b"local")
                        || eq(second, b"transaction")
                        || eq(second, b"constraints"))
                    {
                        fx.changes_settings = true;
                    }
                    self.decided = true;
                } else if eq(first, b"prepare") {
                    if !eq(second, b"transaction") {
                        fx.needs_session =
                            Some("SQL-level PREPARE (use protocol-level prepared statements)");
                    }
                    self.decided = true;
                } else if eq(first, b"create") {
                    self.decided = create_decided(second, fx);
                } else if !eq(first, b"declare") {
                    self.decided = true;
                }
                !self.decided
            }
            _ => {
                let first = self.first.unwrap_or_default();
                let w = word.unwrap_or_default();
                if eq(first, b"create") {
                    self.decided = create_decided(w, fx);
                } else {
                    // DECLARE name … {WITH|WITHOUT} HOLD … FOR query
                    if eq(w, b"for") {
                        self.decided = true;
                    } else if self.declare_saw_with && eq(w, b"hold") {
                        fx.needs_session = Some("WITH HOLD cursors");
                        self.decided = true;
                    }
                    self.declare_saw_with = eq(w, b"with");
                }
                !self.decided
            }
        }
    }

    fn finish(&self, fx: &mut SessionEffects) {
        // A lone `SET` (a syntax error) or `SET x` cut short: treat as a settings change.
        if self.count == 1 && self.first.is_some_and(|w| eq(w, b"set")) {
            fx.changes_settings = true;
        }
    }
}

/// One word after CREATE: `CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP[ORARY] …` makes a
/// temporary object. Returns whether the statement is decided.
fn create_decided(w: &[u8], fx: &mut SessionEffects) -> bool {
    if is_temp(w) {
        fx.needs_session = Some(TEMPORARY_TABLES);
        return true;
    }
    !(eq(w, b"or") || eq(w, b"replace") || eq(w, b"global") || eq(w, b"local"))
}

/// Words that may follow `SELECT … INTO temp` when `temp` is the name of a permanent table:
/// the clauses after a SELECT's INTO.
fn ends_select_target(w: &[u8]) -> bool {
    const CLAUSES: [&[u8]; 13] = [
        b"from",
        b"where",
        b"group",
        b"having",
        b"window",
        b"order",
        b"limit",
        b"offset",
        b"fetch",
        b"for",
        b"union",
        b"intersect",
        b"except",
    ];
    CLAUSES.iter().any(|c| eq(w, c))
}

/// `needle` (lowercase letters) anywhere in `b`, in any case.
fn contains_ignoring_case(b: &[u8], needle: &[u8]) -> bool {
    let Some((&first, tail)) = needle.split_first() else {
        return true;
    };
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), b).any(|i| {
        b.get(i + 1..i + needle.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(tail))
    })
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn is_temp(w: &[u8]) -> bool {
    eq(w, b"temp") || eq(w, b"temporary")
}

/// Names that matter wherever they appear, also in strings and comments, where dynamic SQL
/// hides: all contain a `_`, so one pass from underscore to underscore finds them (this runs
/// on every query).
#[derive(Default)]
struct NamesFound {
    /// `set_config`, in any case.
    set_config: bool,
    /// `advisory_lock` (as in `pg_advisory_lock`, `pg_try_advisory_lock_shared`).
    advisory_lock: bool,
    /// An object qualified with the temporary schema: `pg_temp.t`, `pg_temp_3.t`,
    /// `"pg_temp".t`.
    temp_schema: bool,
}

impl NamesFound {
    fn in_text(b: &[u8]) -> NamesFound {
        let mut found = NamesFound::default();
        for i in memchr::memchr_iter(b'_', b) {
            found.set_config |= has_at(b, i, 3, b"set_config");
            found.advisory_lock |= has_at(b, i, 8, b"advisory_lock");
            found.temp_schema |= qualifies_with_temp_schema(b, i);
        }
        found
    }
}

/// Whether `name`, whose `_` is `offset` bytes in, sits around the `_` at `underscore`.
fn has_at(b: &[u8], underscore: usize, offset: usize, name: &[u8]) -> bool {
    underscore
        .checked_sub(offset)
        .and_then(|start| b.get(start..start + name.len()))
        .is_some_and(|s| s.eq_ignore_ascii_case(name))
}

/// `pg_temp[_N]["].` around the `_` at `underscore`, not glued to a longer name.
fn qualifies_with_temp_schema(b: &[u8], underscore: usize) -> bool {
    const NAME: &[u8] = b"pg_temp";
    if !has_at(b, underscore, 2, NAME) {
        return false;
    }
    let start = underscore - 2;
    if start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
        return false;
    }
    let rest = &b[start + NAME.len()..];
    let digits = rest
        .iter()
        .take_while(|c| c.is_ascii_digit() || **c == b'_')
        .count();
    let rest = &rest[digits..];
    let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
    rest.first() == Some(&b'.')
}

/// True when the first statement is `SET TRANSACTION …` or `SET SESSION CHARACTERISTICS …`:
/// it must run before anything in its transaction takes a snapshot.
pub fn sets_transaction_characteristics(sql: &str) -> bool {
    let b = sql.as_bytes();
    let mut lexer = Lexer::new(b);
    let mut words = std::iter::from_fn(|| lexer.next_token())
        .take(2)
        .map(|t| (t.kind == TokenKind::Word).then(|| &b[t.start..t.end]));
    let (Some(Some(first)), Some(Some(second))) = (words.next(), words.next()) else {
        return false;
    };
    eq(first, b"set") && (eq(second, b"transaction") || eq(second, b"session"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_level_changes_are_detected() {
        for sql in [
            "SET search_path = custom",
            "set search_path to a,b",
            "SET SESSION statement_timeout = 0",
            "/* c */ SET TimeZone TO 'UTC'",
            "RESET ALL",
            "reset search_path",
            "DISCARD ALL",
            "SELECT 1; SET work_mem = '1MB'",
            "SELECT pg_catalog.set_config('jit', 'off', false)",
            "select SET_CONFIG('a.b', 'c', true)",
            "DO $$BEGIN PERFORM set_config('x.y','z',false); END$$",
            "SET",
        ] {
            assert!(changes_session_state(sql), "{sql}");
        }
    }

    #[test]
    fn transaction_scoped_and_ordinary_statements_are_not() {
        for sql in [
            "SELECT 1",
            "SET LOCAL statement_timeout = 1000",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "set constraints all deferred",
            "BEGIN; SET LOCAL search_path = x; COMMIT",
            "SELECT 'SET search_path = x'",
            "UPDATE t SET a = 1",
            "INSERT INTO settings(reset) VALUES (1)",
        ] {
            assert!(!changes_session_state(sql), "{sql}");
        }
    }

    #[test]
    fn features_that_need_a_session_are_named() {
        for (sql, feature) in [
            ("LISTEN jobs", "LISTEN"),
            ("select pg_advisory_lock(1)", "advisory"),
            ("SELECT pg_try_advisory_lock_shared(7)", "advisory"),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "WITH HOLD"),
            (
                "declare c binary no scroll cursor with hold for select 1",
                "WITH HOLD",
            ),
            ("CREATE TEMP TABLE t (a int)", "temporary"),
            ("create global temporary table t (a int)", "temporary"),
            ("CREATE LOCAL TEMP VIEW v AS SELECT 1", "temporary"),
            ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", "temporary"),
            (
                "create or replace temporary recursive view v(a) as select 1",
                "temporary",
            ),
            ("SELECT 1 AS a INTO TEMP t", "temporary"),
            ("select * into temporary table t from invoices", "temporary"),
            ("SELECT 1 AS a INTO LOCAL TEMP TABLE t", "temporary"),
            ("(SELECT 1 AS a INTO TEMP t)", "temporary"),
            (
                "WITH x AS (SELECT 2 AS a) SELECT * INTO TEMP t FROM x",
                "temporary",
            ),
            ("SELECT 1; SELECT 2 AS a INTO TEMP t", "temporary"),
            ("CREATE TABLE pg_temp.t (a int)", "temporary"),
            ("create view \"pg_temp\".v as select 1", "temporary"),
            ("SELECT * INTO pg_temp_3.t FROM invoices", "temporary"),
            (
                "DO $$BEGIN EXECUTE 'CREATE TABLE pg_temp.t (a int)'; END$$",
                "temporary",
            ),
            ("PREPARE q AS SELECT 1", "PREPARE"),
            ("SELECT 1; LISTEN x", "LISTEN"),
        ] {
            let got = session_effects(sql).needs_session;
            assert!(got.is_some_and(|g| g.contains(feature)), "{sql}: {got:?}");
        }
    }

    #[test]
    fn sql_execute_of_prepared_statements_is_noticed() {
        for sql in [
            "EXECUTE pgt_1('x')",
            "execute __pgtenant_set_tenant('app.current_tenant_id', 'x'); SELECT 1",
            "EXPLAIN ANALYZE EXECUTE pgt_1('x')",
            "CREATE TABLE t AS EXECUTE pgt_1('x')",
            "SELECT 1; EXPLAIN EXECUTE q",
        ] {
            assert!(session_effects(sql).executes_prepared, "{sql}");
        }
        for sql in [
            "SELECT 'EXECUTE x'",
            "EXPLAIN SELECT 1",
            "CREATE TABLE t (a int)",
        ] {
            assert!(!session_effects(sql).executes_prepared, "{sql}");
        }
    }

    #[test]
    fn ordinary_statements_need_no_session() {
        for sql in [
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT pg_advisory_unlock_all()",
            "DECLARE c CURSOR FOR SELECT 1",
            "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 'with hold'",
            "CREATE TABLE temp (a int)",
            "PREPARE TRANSACTION 'x'",
            "UNLISTEN *",
            "SELECT 'LISTEN x'",
            "CREATE INDEX ON t (a)",
            "CREATE OR REPLACE VIEW v AS SELECT 1",
            "SELECT 1 AS a INTO temp FROM invoices",
            "SELECT 1 AS a INTO temp",
            "SELECT 1 AS a INTO reports",
            "SELECT 'INTO TEMP t'",
            "INSERT INTO temp VALUES (1)",
            "WITH x AS (SELECT 1) INSERT INTO temp SELECT * FROM x",
            "SELECT * FROM pg_temperature.readings",
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pg_temp%'",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = app, pg_temp AS 'SELECT 1'",
        ] {
            assert_eq!(session_effects(sql).needs_session, None, "{sql}");
        }
    }

    #[test]
    fn set_transaction_is_recognised() {
        assert!(sets_transaction_characteristics(
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"
        ));
        assert!(sets_transaction_characteristics(
            "set session characteristics as transaction read only"
        ));
        assert!(!sets_transaction_characteristics("SET search_path = a"));
        assert!(!sets_transaction_characteristics("SELECT 1"));
    }
}

/// A client statement pgtenant answers itself because it concerns the client's own view
/// of its session, not the shared server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// `DEALLOCATE [PREPARE] name`: the name as PostgreSQL resolves it (unquoted names fold
    /// to lower case).
    Deallocate(String),
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `RESET ALL`.
    ResetAll,
}

/// Recognises a single statement that is one of [`SessionCommand`]; `None` otherwise.
pub fn session_command(sql: &str) -> Option<SessionCommand> {
    let b = sql.as_bytes();
    let mut lexer = Lexer::new(b);
    let mut toks =
        std::iter::from_fn(|| lexer.next_token()).filter(|t| t.kind != TokenKind::Semicolon);
    let first = toks.next()?;
    let word = |t: &super::lexer::Token| (t.kind == TokenKind::Word).then(|| &b[t.start..t.end]);
    let first = word(&first)?;
    let cmd = if eq(first, b"reset") {
        let second = toks.next()?;
        if !word(&second).is_some_and(|w| eq(w, b"all")) {
            return None;
        }
        SessionCommand::ResetAll
    } else if eq(first, b"discard") {
        let second = toks.next()?;
        if !word(&second).is_some_and(|w| eq(w, b"all")) {
            return None;
        }
        SessionCommand::DiscardAll
    } else if eq(first, b"deallocate") {
        let mut t = toks.next()?;
        if word(&t).is_some_and(|w| eq(w, b"prepare")) {
            t = toks.next()?;
        }
        match t.kind {
            TokenKind::Word if eq(&b[t.start..t.end], b"all") => SessionCommand::DeallocateAll,
            TokenKind::Word => SessionCommand::Deallocate(
                String::from_utf8_lossy(&b[t.start..t.end]).to_lowercase(),
            ),
            TokenKind::QuotedIdent if b[t.start] == b'"' && t.end >= t.start + 2 => {
                let inner = &sql[t.start + 1..t.end - 1];
                SessionCommand::Deallocate(inner.replace("\"\"", "\""))
            }
            _ => return None,
        }
    } else {
        return None;
    };
    // Anything after it (but a trailing `;`) makes it something else.
    if toks.next().is_some() {
        return None;
    }
    Some(cmd)
}

#[cfg(test)]
mod session_command_tests {
    use super::*;

    #[test]
    fn deallocate_and_discard_all_are_recognised() {
        assert_eq!(
            session_command("DEALLOCATE ALL"),
            Some(SessionCommand::DeallocateAll)
        );
        assert_eq!(
            session_command("deallocate prepare all;"),
            Some(SessionCommand::DeallocateAll)
        );
        assert_eq!(
            session_command("DEALLOCATE S_1"),
            Some(SessionCommand::Deallocate("s_1".into()))
        );
        assert_eq!(
            session_command("DEALLOCATE \"S_1\""),
            Some(SessionCommand::Deallocate("S_1".into()))
        );
        assert_eq!(
            session_command("/* x */ DISCARD ALL"),
            Some(SessionCommand::DiscardAll)
        );
        assert_eq!(session_command("DISCARD PLANS"), None);
        assert_eq!(
            session_command("reset all;"),
            Some(SessionCommand::ResetAll)
        );
        assert_eq!(session_command("RESET search_path"), None);
        assert_eq!(session_command("DEALLOCATE a; SELECT 1"), None);
        assert_eq!(session_command("SELECT 1"), None);
    }
}

/// True when a `BEGIN`/`START TRANSACTION` statement sets transaction characteristics
/// (`ISOLATION LEVEL`, `READ ONLY`, `DEFERRABLE`, …): they must come before any snapshot.
pub fn begin_has_characteristics(sql: &str) -> bool {
    let b = sql.as_bytes();
    let mut lexer = Lexer::new(b);
    let mut words = std::iter::from_fn(|| lexer.next_token())
        .take_while(|t| t.kind != TokenKind::Semicolon)
        .map(|t| &b[t.start..t.end]);
    let Some(first) = words.next() else {
        return false;
    };
    let mut rest = words.peekable();
    if eq(first, b"start") {
        rest.next(); // TRANSACTION
    } else if rest
        .peek()
        .is_some_and(|w| eq(w, b"work") || eq(w, b"transaction"))
    {
        rest.next();
    }
    rest.next().is_some()
}

#[cfg(test)]
mod begin_tests {
    use super::*;

    #[test]
    fn begin_characteristics_are_recognised() {
        assert!(!begin_has_characteristics("BEGIN"));
        assert!(!begin_has_characteristics("begin work"));
        assert!(!begin_has_characteristics("START TRANSACTION"));
        assert!(begin_has_characteristics(
            "BEGIN ISOLATION LEVEL SERIALIZABLE"
        ));
        assert!(begin_has_characteristics("start transaction read only"));
        assert!(begin_has_characteristics("BEGIN TRANSACTION DEFERRABLE"));
    }
}
