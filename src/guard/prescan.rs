//! The guard's cheap first stage: one pass over the bytes of SQL text, no allocation, deciding
//! whether the text is *suspect* and must go to the parser. It must never miss a statement the
//! parser stage would refuse or restrict; flagging a harmless one only costs a parse.
//!
//! Why a byte scan is enough (and errs only towards "suspect"):
//! - Statements that can change settings start with `SET`, `RESET`, `DISCARD`, `DO`, `ALTER`
//!   or `CREATE [OR REPLACE] FUNCTION|PROCEDURE` (whose `SET` clauses and bodies matter).
//!   Keywords cannot be quoted or escaped, and a statement starts at the beginning of the text
//!   or after a `;`, separated from it only by whitespace and comments; so the first word
//!   after *every* `;` byte is looked at, also those inside strings (a false alarm at worst).
//! - Everything else that matters is a function or relation name (`set_config`,
//!   `pg_settings`, `query_to_xml…`, `ts_stat`, `ts_rewrite`) and may sit anywhere, also in a
//!   string that one of those functions runs; such names are found as substrings anywhere,
//!   ignoring case. An identifier can only hide its letters behind `U&"…"` escapes, so any
//!   `U&"` or `U&'` is suspect too.
//! - `UPDATE t SET …` and `ON CONFLICT DO …` are not suspect: their `SET`/`DO` follow other
//!   words.
//!
//! Like `crate::sql`'s lexer it assumes `standard_conforming_strings = on` and an ASCII-safe
//! client encoding; it only reads comments to skip them (nested `/* */`, `--` to end of line).

/// Whether `sql` needs the parser.
pub(super) fn is_suspect(b: &[u8]) -> bool {
    if statement_start_is_suspect(b, 0) {
        return true;
    }
    // Only three bytes can start a finding; memchr skips the rest with SIMD.
    memchr::memchr3_iter(b';', b'_', b'&', b).any(|i| match b[i] {
        b';' => statement_start_is_suspect(b, i + 1),
        b'_' => names_a_guarded_function(b, i),
        _ => starts_unicode_escape(b, i),
    })
}

/// Names found anywhere, by the (lowercased) byte after their first `_`, with the offset of
/// that `_` in the name. `_` is common in identifiers; the byte after it rules most out.
fn names_a_guarded_function(b: &[u8], underscore: usize) -> bool {
    let candidates: &[(&[u8], usize)] = match b.get(underscore + 1).map(u8::to_ascii_lowercase) {
        Some(b'c') => &[(b"set_config", 3)],
        Some(b's') => &[(b"pg_settings", 2), (b"ts_stat", 2)],
        Some(b't') => &[(b"query_to_xml", 5)],
        Some(b'r') => &[(b"ts_rewrite", 2)],
        _ => return false,
    };
    candidates.iter().any(|&(name, offset)| {
        underscore >= offset
            && b.get(underscore - offset..underscore - offset + name.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(name))
    })
}

/// `U&"` or `U&'` (the `&` at `amp`): an identifier or string with Unicode escapes.
fn starts_unicode_escape(b: &[u8], amp: usize) -> bool {
    amp >= 1
        && b[amp - 1].eq_ignore_ascii_case(&b'u')
        && matches!(b.get(amp + 1), Some(b'"' | b'\''))
}

/// Whether the statement that may start at `from` begins with a suspect keyword.
fn statement_start_is_suspect(b: &[u8], from: usize) -> bool {
    let (word, next) = next_word(b, from);
    let is = |keyword: &[u8]| word.eq_ignore_ascii_case(keyword);
    let suspect = match word.len() {
        2 => is(b"do"),
        3 => is(b"set"),
        5 => is(b"reset") || is(b"alter"),
        7 => is(b"discard"),
        _ => false,
    };
    if suspect {
        return true;
    }
    if !is(b"create") {
        return false;
    }
    let (mut word, mut next) = next_word(b, next);
    if word.eq_ignore_ascii_case(b"or") {
        (word, next) = next_word(b, next);
        if !word.eq_ignore_ascii_case(b"replace") {
            return false;
        }
        (word, _) = next_word(b, next);
    }
    word.eq_ignore_ascii_case(b"function") || word.eq_ignore_ascii_case(b"procedure")
}

/// The identifier-like word after whitespace and comments at `from` (empty if something else
/// comes first), and the offset just past it.
fn next_word(b: &[u8], from: usize) -> (&[u8], usize) {
    let start = skip_whitespace_and_comments(b, from);
    let end = b
        .get(start..)
        .and_then(|rest| rest.iter().position(|&c| !is_ident_cont(c)))
        .map_or(b.len(), |n| start + n);
    (b.get(start..end).unwrap_or_default(), end)
}

/// `ident_cont` in PostgreSQL's scan.l: letters, digits, `_`, `$` and every non-ASCII byte.
fn is_ident_cont(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Skips scan.l's `whitespace`: spaces (with `\v` and `\f`), `--` comments up to a newline and
/// nested `/* */` comments. An unterminated comment runs to the end.
fn skip_whitespace_and_comments(b: &[u8], mut i: usize) -> usize {
    loop {
        match b.get(i) {
            Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) => i += 1,
            Some(b'-') if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n' || c == b'\r')
                    .map_or(b.len(), |n| i + n);
            }
            Some(b'/') if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1usize;
                i += 2;
                while depth > 0 && i < b.len() {
                    match (b[i], b.get(i + 1)) {
                        (b'*', Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                        }
                        (b'/', Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        _ => i += 1,
                    }
                }
                i = i.min(b.len());
            }
            _ => return i,
        }
    }
}
