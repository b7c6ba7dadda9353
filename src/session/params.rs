//! Client-chosen session parameters that pgtenant carries from server to server.
//!
//! A client's `application_name`, `client_encoding`, `DateStyle`, `TimeZone`,
//! `IntervalStyle`, `extra_float_digits` and `search_path` (from its startup packet or its
//! own later changes) must be in effect on whichever server runs its transaction, and must
//! never linger for the next client. This module owns the per-client wish list, the
//! per-server record of what is applied, and the SQL that moves a server from one to the
//! other. It never runs anything itself.

use bytes::BytesMut;

use crate::protocol;

/// The parameters carried between servers, with PostgreSQL's canonical spelling.
pub const TRACKED: [&str; 7] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "search_path",
];

/// Value per tracked parameter; `None` means the server's default.
pub type ParamSet = [Option<String>; TRACKED.len()];

/// Index of a tracked parameter, matched case-insensitively as PostgreSQL does.
pub fn tracked_index(name: &str) -> Option<usize> {
    TRACKED.iter().position(|t| t.eq_ignore_ascii_case(name))
}

/// Appends a simple Query that makes a server with `applied` match `wanted`, and updates
/// `applied`. Returns false when they already match (nothing appended).
pub fn append_sync_query(out: &mut BytesMut, wanted: &ParamSet, applied: &mut ParamSet) -> bool {
    let mut sql = String::new();
    for (i, name) in TRACKED.iter().enumerate() {
        if wanted[i] == applied[i] {
            continue;
        }
        match &wanted[i] {
            Some(v) => {
                sql.push_str("SET ");
                sql.push_str(name);
                sql.push_str(" TO ");
                push_literal(&mut sql, v);
                sql.push(';');
            }
            None => {
                sql.push_str("RESET ");
                sql.push_str(name);
                sql.push(';');
            }
        }
        applied[i] = wanted[i].clone();
    }
    if sql.is_empty() {
        return false;
    }
    protocol::put_message(out, b'Q', |b| protocol::put_cstr(b, sql.as_bytes()));
    true
}

/// A single-quoted SQL literal. pgtenant keeps `standard_conforming_strings` on, so doubling
/// quotes is the whole escaping; values never contain NUL (they came from C strings).
fn push_literal(sql: &mut String, v: &str) {
    sql.push('\'');
    for c in v.chars() {
        if c == '\'' {
            sql.push('\'');
        }
        sql.push(c);
    }
    sql.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_parameters_are_set_and_defaults_reset() {
        let mut wanted: ParamSet = Default::default();
        wanted[3] = Some("Europe/Paris".into());
        let mut applied: ParamSet = Default::default();
        applied[6] = Some("other_tenant_schema".into());
        let mut out = BytesMut::new();
        assert!(append_sync_query(&mut out, &wanted, &mut applied));
        let text = std::str::from_utf8(&out[5..out.len() - 1]).unwrap();
        assert_eq!(text, "SET TimeZone TO 'Europe/Paris';RESET search_path;");
        assert_eq!(applied, wanted);
    }

    #[test]
    fn matching_parameters_send_nothing() {
        let wanted: ParamSet = Default::default();
        let mut applied: ParamSet = Default::default();
        let mut out = BytesMut::new();
        assert!(!append_sync_query(&mut out, &wanted, &mut applied));
        assert!(out.is_empty());
    }

    #[test]
    fn quotes_in_values_cannot_end_the_literal() {
        let mut wanted: ParamSet = Default::default();
        wanted[0] = Some("x'; DROP TABLE invoices; --".into());
        let mut applied: ParamSet = Default::default();
        let mut out = BytesMut::new();
        append_sync_query(&mut out, &wanted, &mut applied);
        let text = std::str::from_utf8(&out[5..out.len() - 1]).unwrap();
        assert_eq!(
            text,
            "SET application_name TO 'x''; DROP TABLE invoices; --';"
        );
    }
}
