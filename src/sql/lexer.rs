//! Token scanner for SQL text, faithful to PostgreSQL's `src/backend/parser/scan.l` for every
//! construct that can hide a `;` or a keyword: comments, the string and identifier quoting forms,
//! dollar quotes and parameters. It never allocates and never fails: an unterminated construct
//! swallows the rest of the input (PostgreSQL would raise a syntax error for the whole message).
//! It must never be used to interpret token *contents*; it only finds where tokens are.
//!
//! Assumes `standard_conforming_strings = on` (a plain `'…'` has no backslash escapes) and an
//! ASCII-safe client encoding (UTF-8, LATIN*, EUC_*): in SJIS, BIG5, GBK, UHC, GB18030 and JOHAB
//! the second byte of a character can be `\`, which would make `E'…'` scanning diverge.

/// What kind of token was found. Only the distinctions the statement scanner needs are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TokenKind {
    /// An unquoted identifier or keyword.
    Word,
    /// `"…"` or `U&"…"`.
    QuotedIdent,
    /// A literal the grammar calls `Sconst`: `'…'`, `E'…'`, `U&'…'` or `$tag$…$tag$`.
    String,
    /// `B'…'`, `X'…'` and `N'…'`: quoted like strings but not an `Sconst` in the grammar.
    TypedString,
    Number,
    /// `$1`, `$2`, …
    Param,
    Semicolon,
    LParen,
    RParen,
    Dot,
    /// Any other character; multi-character operators come out one byte at a time.
    Operator,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

/// Scans tokens left to right, skipping whitespace and comments.
#[derive(Clone, Debug)]
pub(super) struct Lexer<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Lexer { bytes, pos: 0 }
    }

    /// Byte offset of the next unscanned byte; the input length once `next_token` returned `None`.
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn next_token(&mut self) -> Option<Token> {
        let b = self.bytes;
        let start = skip_whitespace_and_comments(b, self.pos);
        self.pos = start;
        let &first = b.get(start)?;
        let (kind, end) = match first {
            b';' => (TokenKind::Semicolon, start + 1),
            b'(' => (TokenKind::LParen, start + 1),
            b')' => (TokenKind::RParen, start + 1),
            b'.' => (TokenKind::Dot, start + 1),
            b'\'' => (
                TokenKind::String,
                quoted_end(b, start + 1, Escapes::Doubling),
            ),
            b'"' => (TokenKind::QuotedIdent, quoted_ident_end(b, start + 1)),
            b'$' => dollar(b, start),
            b'0'..=b'9' => (TokenKind::Number, number_end(b, start + 1)),
            c if is_ident_start(c) => word_or_prefixed_literal(b, start),
            _ => (TokenKind::Operator, start + 1),
        };
        // Every arm consumes at least one byte, so the scan always advances.
        self.pos = end.min(b.len());
        Some(Token {
            kind,
            start,
            end: self.pos,
        })
    }
}

/// `ident_start` in scan.l: letters, `_` and every byte of a multi-byte character.
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// `ident_cont` in scan.l: an identifier may contain digits and `$` after its first character.
/// A table: words are most of what every query's scan reads, one byte at a time.
fn is_ident_cont(c: u8) -> bool {
    const TABLE: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let c = i as u8;
            t[i] = c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
            i += 1;
        }
        t
    };
    TABLE[usize::from(c)]
}

/// `dolq_cont` in scan.l: like `ident_cont` but without `$`, which ends the tag.
fn is_dollar_tag_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// `space` in scan.l (PostgreSQL 16 added `\v`).
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn skip_while(b: &[u8], from: usize, pred: impl Fn(u8) -> bool) -> usize {
    b[from.min(b.len())..]
        .iter()
        .position(|&c| !pred(c))
        .map_or(b.len(), |off| from + off)
}

/// Offset of the next `byte` at or after `from`.
fn find_byte(b: &[u8], from: usize, byte: u8) -> Option<usize> {
    b.get(from..)?
        .iter()
        .position(|&c| c == byte)
        .map(|off| from + off)
}

pub(super) fn skip_whitespace_and_comments(b: &[u8], mut i: usize) -> usize {
    loop {
        match b.get(i) {
            Some(&c) if is_space(c) => i += 1,
            Some(b'-') if b.get(i + 1) == Some(&b'-') => i = line_comment_end(b, i + 2),
            Some(b'/') if b.get(i + 1) == Some(&b'*') => i = block_comment_end(b, i + 2),
            _ => return i,
        }
    }
}

/// A `--` comment runs up to, not including, the next `\n` or `\r`.
fn line_comment_end(b: &[u8], from: usize) -> usize {
    skip_while(b, from, |c| c != b'\n' && c != b'\r')
}

/// `/* … */` comments nest. `from` is just past the opening `/*`.
fn block_comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 1usize;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            _ => i += 1,
        }
    }
    b.len()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Escapes {
    /// `''` is the only escape (standard strings, `U&'…'`, `B'…'`, `X'…'`, `N'…'`).
    Doubling,
    /// `E'…'`: a backslash also escapes the byte after it.
    Backslash,
}

/// End of a single-quoted literal; `i` is just past the opening quote.
///
/// A closing quote followed by whitespace containing a newline and another quote continues the
/// same literal in the same mode (`quotecontinue` in scan.l): `E'a'`⏎`'\';'` is one E-string.
fn quoted_end(b: &[u8], mut i: usize, escapes: Escapes) -> usize {
    loop {
        let quote = match escapes {
            Escapes::Doubling => find_byte(b, i, b'\''),
            Escapes::Backslash => backslash_string_quote(b, i),
        };
        let Some(quote) = quote else {
            return b.len();
        };
        if b.get(quote + 1) == Some(&b'\'') {
            i = quote + 2;
            continue;
        }
        match continuation_quote(b, quote + 1) {
            Some(next) => i = next + 1,
            None => return quote + 1,
        }
    }
}

/// Next quote in an `E'…'` body that is not escaped by a backslash.
fn backslash_string_quote(b: &[u8], mut i: usize) -> Option<usize> {
    while let Some(&c) = b.get(i) {
        match c {
            b'\'' => return Some(i),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// `{whitespace_with_newline}{quote}` in scan.l: spaces and `--` comments including at least one
/// newline, then a quote. Block comments do not qualify. Returns the offset of that quote.
fn continuation_quote(b: &[u8], mut i: usize) -> Option<usize> {
    let mut newline = false;
    loop {
        match *b.get(i)? {
            b'\n' | b'\r' => {
                newline = true;
                i += 1;
            }
            c if is_space(c) => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => i = line_comment_end(b, i + 2),
            b'\'' if newline => return Some(i),
            _ => return None,
        }
    }
}

/// End of `"…"`; `i` is just past the opening quote. `""` stands for one `"`.
fn quoted_ident_end(b: &[u8], mut i: usize) -> usize {
    loop {
        let Some(quote) = find_byte(b, i, b'"') else {
            return b.len();
        };
        if b.get(quote + 1) == Some(&b'"') {
            i = quote + 2;
        } else {
            return quote + 1;
        }
    }
}

/// A token starting with `$`: a parameter `$1`, a dollar quote `$tag$…$tag$` (the tag follows
/// identifier rules but cannot start with a digit and cannot contain `$`), or a lone `$`.
fn dollar(b: &[u8], start: usize) -> (TokenKind, usize) {
    match b.get(start + 1) {
        Some(c) if c.is_ascii_digit() => (
            TokenKind::Param,
            skip_while(b, start + 1, |c| c.is_ascii_digit()),
        ),
        Some(b'$') => (TokenKind::String, dollar_body_end(b, start, start + 2)),
        Some(&c) if is_ident_start(c) => {
            let tag_end = skip_while(b, start + 2, is_dollar_tag_cont);
            if b.get(tag_end) == Some(&b'$') {
                (TokenKind::String, dollar_body_end(b, start, tag_end + 1))
            } else {
                // `dolqfailed` in scan.l: the `$` stands alone and the rest is rescanned.
                (TokenKind::Operator, start + 1)
            }
        }
        _ => (TokenKind::Operator, start + 1),
    }
}

/// The body ends at the first exact (case-sensitive) repetition of the opening delimiter
/// `b[open..body]`.
fn dollar_body_end(b: &[u8], open: usize, body: usize) -> usize {
    let delimiter = &b[open..body];
    let mut i = body;
    while let Some(dollar) = find_byte(b, i, b'$') {
        if b[dollar..].starts_with(delimiter) {
            return dollar + delimiter.len();
        }
        i = dollar + 1;
    }
    b.len()
}

/// Numbers, including the malformed ones PostgreSQL rejects (`123abc`): digits, letters, `_`
/// and `.`. Never `$`, quotes, `-` or `/`, so a number cannot swallow a quote or comment start.
fn number_end(b: &[u8], from: usize) -> usize {
    skip_while(b, from, |c| is_dollar_tag_cont(c) || c == b'.')
}

/// An identifier, or one of the literals whose prefix looks like one: `E'…'`, `B'…'`, `X'…'`,
/// `N'…'`, `U&'…'` and `U&"…"`. A prefix counts only at the start of a token: `somee'x'` is the
/// identifier `somee` followed by a standard string.
fn word_or_prefixed_literal(b: &[u8], start: usize) -> (TokenKind, usize) {
    let next = b.get(start + 1).copied();
    match (b[start].to_ascii_lowercase(), next) {
        (b'e', Some(b'\'')) => (
            TokenKind::String,
            quoted_end(b, start + 2, Escapes::Backslash),
        ),
        (b'b' | b'x' | b'n', Some(b'\'')) => (
            TokenKind::TypedString,
            quoted_end(b, start + 2, Escapes::Doubling),
        ),
        (b'u', Some(b'&')) => match b.get(start + 2) {
            Some(b'\'') => (
                TokenKind::String,
                quoted_end(b, start + 3, Escapes::Doubling),
            ),
            Some(b'"') => (TokenKind::QuotedIdent, quoted_ident_end(b, start + 3)),
            _ => (TokenKind::Word, start + 1),
        },
        _ => (TokenKind::Word, skip_while(b, start + 1, is_ident_cont)),
    }
}
