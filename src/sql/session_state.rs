//! Does a piece of SQL change session state that would outlive its transaction?
//!
//! In transaction mode a server is shared between clients, so a session-level `SET`, a
//! `RESET`, a `DISCARD` or a `set_config(…, false)` made by one client must not reach the
//! next one. This detector answers "maybe" generously (any `set_config` call, even with
//! `is_local = true`, counts) because a false positive only costs one `RESET ALL`, while a
//! false negative would leak settings. It never allocates.

use super::lexer::{Lexer, TokenKind};

/// True when `sql` (one or more statements) may change session-level settings.
pub fn changes_session_state(sql: &str) -> bool {
    let b = sql.as_bytes();
    if mentions_set_config(b) {
        return true;
    }
    // Without a `;` there is one statement and only its first two words matter.
    let single = !b.contains(&b';');
    let mut lexer = Lexer::new(b);
    // Position within the current statement: the first two words decide.
    let mut first: Option<&[u8]> = None;
    let mut index = 0usize;
    while let Some(tok) = lexer.next_token() {
        if tok.kind == TokenKind::Semicolon {
            if first.is_some_and(|w| is_session_verb(w, None)) {
                return true;
            }
            first = None;
            index = 0;
            continue;
        }
        let word = &b[tok.start..tok.end];
        match index {
            0 => {
                if tok.kind != TokenKind::Word {
                    // Not a statement that starts with a keyword; skip to its end.
                    first = Some(b"");
                } else {
                    first = Some(word);
                }
            }
            1 => {
                if let Some(f) = first {
                    let second = (tok.kind == TokenKind::Word).then_some(word);
                    if is_session_verb(f, Some(second.unwrap_or(b""))) {
                        return true;
                    }
                }
                first = Some(b"");
            }
            _ if single => break,
            _ => {}
        }
        index += 1;
    }
    first.is_some_and(|w| is_session_verb(w, None))
}

/// `SET x …` (but not `SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`, which end with the
/// transaction), `RESET …`, `DISCARD …`.
fn is_session_verb(first: &[u8], second: Option<&[u8]>) -> bool {
    if first.eq_ignore_ascii_case(b"reset") || first.eq_ignore_ascii_case(b"discard") {
        return true;
    }
    if !first.eq_ignore_ascii_case(b"set") {
        return false;
    }
    match second {
        None => true,
        Some(w) => {
            !(w.eq_ignore_ascii_case(b"local")
                || w.eq_ignore_ascii_case(b"transaction")
                || w.eq_ignore_ascii_case(b"constraints"))
        }
    }
}

/// Any occurrence of `set_config`, in any case, anywhere (also in strings and comments:
/// dynamic SQL hides there).
fn mentions_set_config(b: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"set_config";
    b.iter().enumerate().any(|(i, &c)| {
        c == b'_' && i >= 3 && b.len() >= i + 7 && b[i - 3..i + 7].eq_ignore_ascii_case(NEEDLE)
    })
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
    first.eq_ignore_ascii_case(b"set")
        && (second.eq_ignore_ascii_case(b"transaction") || second.eq_ignore_ascii_case(b"session"))
}

#[cfg(test)]
mod transaction_characteristics_tests {
    use super::*;

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
