//! Just enough SQL understanding to know where transactions begin and end: splits the text of a
//! simple-protocol Query into its `;`-separated statements and classifies each by its leading
//! keywords (`BEGIN`, `COMMIT AND CHAIN`, `VACUUM`, …), so the session can set the tenant in every
//! transaction. It runs on every query: one linear pass, no allocation, and for the usual text
//! without a `;` it stops reading once the first keywords have decided the kind. It must never
//! rewrite SQL, never fail and never panic; for malformed text (which PostgreSQL rejects as a
//! whole before running any of it) its answer only has to be safe, not meaningful.
//!
//! The lexer follows PostgreSQL's `scan.l` for everything that can hide a `;` or a keyword:
//! `--` and nested `/* */` comments, `'…'`, `E'…'`, `U&'…'`, `B'…'`, `X'…'`, `N'…'` strings
//! (including continuation across a newline), `$tag$…$tag$` dollar quotes, `$1` parameters and
//! `"…"`/`U&"…"` identifiers. Like the server's grammar, it does not end a statement at a `;`
//! inside parentheses (`CREATE RULE … DO (a; b)`) or inside the `BEGIN ATOMIC … END` body of a
//! `CREATE FUNCTION`/`PROCEDURE`.
//!
//! Assumptions the session must enforce: `standard_conforming_strings = on` (with it off, a
//! plain `'…'` takes backslash escapes and a quote could hide from this scanner), and an
//! ASCII-safe client encoding (not SJIS, BIG5, GBK, UHC, GB18030 or JOHAB, whose multi-byte
//! characters can contain the byte `\`).

mod classify;
mod lexer;
mod session_state;
#[cfg(test)]
mod tests;

use classify::StatementScanner;
use lexer::{Lexer, TokenKind};
pub use session_state::{
    SessionCommand, SessionEffects, begin_has_characteristics, changes_session_state,
    session_command, session_effects, session_effects_of, sets_transaction_characteristics,
};

/// What a statement means for transaction boundaries, read from its leading keywords.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// `BEGIN [WORK|TRANSACTION] …`, `START TRANSACTION …`.
    Begin,
    /// `COMMIT`/`END [WORK|TRANSACTION] [AND [NO] CHAIN]`.
    Commit { chain: bool },
    /// `ROLLBACK`/`ABORT [WORK|TRANSACTION] [AND [NO] CHAIN]`. Not `ROLLBACK TO [SAVEPOINT]`
    /// (that is [`StatementKind::Other`]) nor `ROLLBACK PREPARED`.
    Rollback { chain: bool },
    /// `PREPARE TRANSACTION 'gid'`: ends the transaction, handing it to two-phase commit.
    PrepareTransaction,
    /// A statement PostgreSQL refuses to run inside a transaction block (so also inside a
    /// multi-statement Query): `VACUUM`, `CREATE|DROP DATABASE`, `CREATE|DROP TABLESPACE`,
    /// `ALTER SYSTEM`, `ALTER DATABASE … SET TABLESPACE`, `CREATE [UNIQUE] INDEX CONCURRENTLY`,
    /// `DROP INDEX CONCURRENTLY`, `REINDEX … CONCURRENTLY`, `REINDEX SCHEMA|DATABASE|SYSTEM`,
    /// `CLUSTER` without a table, `DISCARD ALL`, `COMMIT|ROLLBACK PREPARED`,
    /// `CREATE|DROP SUBSCRIPTION`, `ALTER SUBSCRIPTION … REFRESH|SET|ADD|DROP PUBLICATION`,
    /// `ALTER TABLE … DETACH PARTITION … CONCURRENTLY`. Where PostgreSQL refuses only under an
    /// option (a subscription's slot, `refresh = false`), this errs towards refusing: sending such
    /// a statement on its own is always safe.
    NoTransactionBlock,
    /// `DEALLOCATE [PREPARE] name|ALL`.
    Deallocate,
    /// `DISCARD PLANS|SEQUENCES|TEMP|TEMPORARY` (`DISCARD ALL` is
    /// [`StatementKind::NoTransactionBlock`]).
    Discard,
    /// Nothing but whitespace and comments.
    Empty,
    /// Everything else, including `CALL` and `DO` (whose bodies may commit: that only works when
    /// they are sent alone, outside a transaction block).
    Other,
}

impl StatementKind {
    /// Whether the transaction the statement runs in is over once it completes (and whatever
    /// follows runs in a new one, without the tenant setting). True for `COMMIT AND CHAIN` too:
    /// the chained transaction keeps its characteristics but not `SET LOCAL` values.
    pub fn ends_transaction(&self) -> bool {
        matches!(
            self,
            StatementKind::Commit { .. }
                | StatementKind::Rollback { .. }
                | StatementKind::PrepareTransaction
        )
    }
}

/// One `;`-separated statement of a Query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statement<'a> {
    /// The statement without its terminating `;`, leading and trailing whitespace trimmed
    /// (comments are kept). For display and logging; forward `start..end` instead.
    pub text: &'a str,
    /// Byte range in the input, including the terminating `;` if any. The ranges of consecutive
    /// statements are adjacent and together cover the whole input.
    pub start: usize,
    pub end: usize,
    pub kind: StatementKind,
}

/// Splits `sql` into statements, lazily and without allocating.
///
/// Empty statements (whitespace and comments only, e.g. between `;;`) are yielded with kind
/// [`StatementKind::Empty`], so the ranges cover the input; PostgreSQL ignores them. Text after
/// the last `;` is yielded only if there is any. An unterminated quote or comment runs to the
/// end of the input.
pub fn statements(sql: &str) -> Statements<'_> {
    Statements {
        sql,
        lexer: Lexer::new(sql.as_bytes()),
    }
}

/// Iterator returned by [`statements`].
#[derive(Clone, Debug)]
pub struct Statements<'a> {
    sql: &'a str,
    lexer: Lexer<'a>,
}

impl<'a> Iterator for Statements<'a> {
    type Item = Statement<'a>;

    fn next(&mut self) -> Option<Statement<'a>> {
        let bytes = self.sql.as_bytes();
        let start = self.lexer.pos();
        if start >= bytes.len() {
            return None;
        }
        let mut scanner = StatementScanner::new();
        let (text_end, end) = loop {
            match self.lexer.next_token() {
                None => break (bytes.len(), bytes.len()),
                Some(token) if token.kind == TokenKind::Semicolon && scanner.at_top_level() => {
                    break (token.start, token.end);
                }
                Some(token) => scanner.feed(token, bytes),
            }
        };
        Some(Statement {
            // Both ends sit next to ASCII bytes (`;`, whitespace) or at the input's ends, so
            // they are character boundaries.
            text: self.sql[start..text_end].trim_matches(is_sql_space),
            start,
            end,
            kind: scanner.finish(),
        })
    }
}

impl std::iter::FusedIterator for Statements<'_> {}

fn is_sql_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// The kind of the first non-empty statement, [`StatementKind::Empty`] if there is none; for an
/// extended-protocol Parse, which PostgreSQL rejects if it holds more than one statement. Leading
/// empty statements count for nothing, as in PostgreSQL (`;;COMMIT` is a `COMMIT`). Reads no
/// further than the kind requires.
pub fn classify(sql: &str) -> StatementKind {
    let bytes = sql.as_bytes();
    let mut lexer = Lexer::new(bytes);
    let mut scanner = StatementScanner::new();
    while let Some(token) = lexer.next_token() {
        if token.kind == TokenKind::Semicolon && scanner.at_top_level() {
            match scanner.finish() {
                StatementKind::Empty => continue,
                kind => return kind,
            }
        }
        scanner.feed(token, bytes);
        if let Some(kind) = scanner.decided() {
            return kind;
        }
    }
    scanner.finish()
}

/// Whether `sql` is one statement (a trailing `;` allowed) led by `SELECT`, `INSERT`,
/// `UPDATE`, `DELETE`, `WITH`, `VALUES` or `TABLE`. Such a statement is
/// [`StatementKind::Other`]: it neither controls the transaction nor sets its
/// characteristics. Reads the first word only, for the per-transaction fast path.
pub fn is_one_data_statement(sql: &str) -> bool {
    const LEADING: [&[u8]; 7] = [
        b"select", b"insert", b"update", b"delete", b"with", b"values", b"table",
    ];
    let Some(body) = one_statement_body(sql) else {
        return false;
    };
    let b = body.as_bytes();
    match Lexer::new(b).next_token() {
        Some(t) if t.kind == TokenKind::Word => {
            let word = &b[t.start..t.end];
            LEADING.iter().any(|k| word.eq_ignore_ascii_case(k))
        }
        _ => false,
    }
}

/// `sql` without its trailing run of `;` and whitespace, when no other `;` is left: then it
/// holds at most one non-empty statement, whether those `;` end it or hide in an unterminated
/// quote.
fn one_statement_body(sql: &str) -> Option<&str> {
    let body = sql.trim_end_matches(|c| c == ';' || is_sql_space(c));
    (!body.as_bytes().contains(&b';')).then_some(body)
}

/// What the session needs to know about a simple-protocol Query before forwarding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryShape {
    /// Number of non-empty statements (what PostgreSQL will execute).
    pub statements: usize,
    /// Kind of the first non-empty statement; [`StatementKind::Empty`] if there is none.
    pub first: StatementKind,
    /// Number of places where the Query must be split because a statement ending the transaction
    /// (see [`StatementKind::ends_transaction`]) is followed by another non-empty statement, which
    /// PostgreSQL runs in a new transaction. Zero for nearly every Query; otherwise [`segments`]
    /// yields the `splits + 1` pieces.
    pub splits: usize,
}

/// Shape of a simple-protocol Query.
///
/// Fast path: when every `;` byte sits in a trailing run of `;` and whitespace (`SELECT …` or
/// `SELECT …;`), there can be at most one non-empty statement, whether those `;` end it or hide
/// in an unterminated quote, and then only its leading keywords are read.
pub fn shape(sql: &str) -> QueryShape {
    if one_statement_body(sql).is_some() {
        let first = classify(sql);
        return QueryShape {
            statements: usize::from(first != StatementKind::Empty),
            first,
            splits: 0,
        };
    }
    let mut shape = QueryShape {
        statements: 0,
        first: StatementKind::Empty,
        splits: 0,
    };
    for (index, segment) in segments(sql).enumerate() {
        if index == 0 {
            shape.first = segment.first;
        } else {
            shape.splits += 1;
        }
        shape.statements += segment.statements;
    }
    shape
}

/// A piece of a Query that runs within one transaction: only its last non-empty statement may
/// end the transaction. (A `BEGIN` inside it continues the transaction already running, as
/// PostgreSQL documents for multi-statement Queries.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// `sql[start..end]`, untrimmed: forward it as the text of its own Query.
    pub text: &'a str,
    /// Byte range in the input. Segments are adjacent and cover the input; every `end` but the
    /// last is a split point, right after a transaction-ending statement's `;`.
    pub start: usize,
    pub end: usize,
    /// Number of non-empty statements in the segment; at least one, except in the only segment
    /// of a Query that has none.
    pub statements: usize,
    /// Kind of the segment's first non-empty statement; [`StatementKind::Empty`] if none.
    pub first: StatementKind,
}

/// Splits a Query at the points counted by [`QueryShape::splits`], lazily and without
/// allocating. Empty statements after a split point belong to the following segment; a
/// transaction-ending statement followed only by empty statements splits nothing.
pub fn segments(sql: &str) -> Segments<'_> {
    Segments {
        sql,
        statements: statements(sql),
        pending: None,
        start: 0,
    }
}

/// Iterator returned by [`segments`].
#[derive(Clone, Debug)]
pub struct Segments<'a> {
    sql: &'a str,
    statements: Statements<'a>,
    /// The first non-empty statement of the next segment, read while looking past a split.
    pending: Option<Statement<'a>>,
    start: usize,
}

impl<'a> Iterator for Segments<'a> {
    type Item = Segment<'a>;

    fn next(&mut self) -> Option<Segment<'a>> {
        let start = self.start;
        if start >= self.sql.len() {
            return None;
        }
        let mut segment = Segment {
            text: "",
            start,
            end: start,
            statements: 0,
            first: StatementKind::Empty,
        };
        let mut split_after = None;
        while let Some(statement) = self.pending.take().or_else(|| self.statements.next()) {
            if statement.kind != StatementKind::Empty {
                if let Some(split) = split_after {
                    self.pending = Some(statement);
                    segment.end = split;
                    break;
                }
                if segment.statements == 0 {
                    segment.first = statement.kind;
                }
                segment.statements += 1;
                if statement.kind.ends_transaction() {
                    split_after = Some(statement.end);
                }
            }
            segment.end = statement.end;
        }
        self.start = segment.end;
        segment.text = &self.sql[start..segment.end];
        Some(segment)
    }
}

impl std::iter::FusedIterator for Segments<'_> {}
