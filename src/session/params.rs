//! Session-level settings that belong to a client and must follow it from server to server —
//! and never linger for the next client.
//!
//! Two kinds: the connection parameters drivers send at startup (`application_name`,
//! `client_encoding`, `DateStyle`, `TimeZone`, `IntervalStyle`, `extra_float_digits`,
//! `search_path`; [`TRACKED`]), compared against what each server has applied; and any other
//! setting a client changed with a session-level `SET`/`set_config`, captured from
//! `pg_settings` when its transaction ends and replayed on its next server. This module owns
//! those records and the SQL that moves a server from one state to another; it never runs
//! anything itself. Values are always applied with `set_config(name, value, false)`, which
//! parses them like the startup packet does (a list such as `a, b` stays a list).

use std::sync::{Arc, Mutex};

use bytes::BytesMut;

use crate::protocol;

/// The startup parameters carried between servers, with PostgreSQL's canonical spelling.
pub const TRACKED: [&str; 7] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "search_path",
];

/// A value per tracked parameter; `None` means the server's default.
///
/// Shared copy-on-write: a session's current and startup parameters and the servers it ran
/// on usually hold the same values, so they share one allocation (none at all while nothing
/// is set), and comparing two copies of it reads no string. Thousands of idle clients keep
/// two of these each: a pointer apiece.
#[derive(Clone, Default, Debug)]
pub struct ParamSet(Option<Arc<[Option<Box<str>>; TRACKED.len()]>>);

impl ParamSet {
    /// The value of `TRACKED[i]`.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.0.as_ref().and_then(|v| v[i].as_deref())
    }

    /// Sets `TRACKED[i]` (copying the values first if another holder shares them).
    pub fn set(&mut self, i: usize, value: Option<&str>) {
        if self.get(i) == value {
            return;
        }
        let values = self.0.get_or_insert_with(Default::default);
        Arc::make_mut(values)[i] = value.map(Box::from);
    }
}

impl PartialEq for ParamSet {
    fn eq(&self, other: &ParamSet) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => true,
            _ => (0..TRACKED.len()).all(|i| self.get(i) == other.get(i)),
        }
    }
}

impl Eq for ParamSet {}

/// The startup parameters of the latest login that sent any, for the next logins to share:
/// the clients of one application usually send the same ones, and then all of them hold one
/// copy. Taken once per login, never per transaction.
#[derive(Debug, Default)]
pub struct RecentParams(Mutex<ParamSet>);

impl RecentParams {
    /// `params`, or an equal set an earlier login holds.
    pub fn share(&self, params: ParamSet) -> ParamSet {
        if params.0.is_none() {
            return params;
        }
        // A plain value: consistent after any panic.
        let mut recent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if *recent == params {
            return recent.clone();
        }
        *recent = params.clone();
        params
    }
}

/// Settings a client changed at session level that are not in [`TRACKED`].
pub type ExtraSettings = Vec<(String, String)>;

/// Reads the session-level settings of a server session; sent (with `RESET ALL`) when a
/// client that changed settings releases its server.
pub const CAPTURE_SQL: &str =
    "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session';RESET ALL";

/// Settings never captured or replayed: who the session runs as is not the client's to
/// carry (and the tenant is pgtenant's).
fn never_replayed(name: &str, tenant_setting: &str) -> bool {
    name.eq_ignore_ascii_case(tenant_setting)
        || ["role", "session_authorization", "is_superuser"]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
}

/// Index of a tracked parameter, matched case-insensitively as PostgreSQL does.
pub fn tracked_index(name: &str) -> Option<usize> {
    TRACKED.iter().position(|t| t.eq_ignore_ascii_case(name))
}

/// Appends one simple Query that makes a server with `applied` match `wanted` and applies
/// `extra`; updates `applied`. Returns false when there is nothing to do (nothing appended).
pub fn append_apply_query(
    out: &mut BytesMut,
    wanted: &ParamSet,
    applied: &mut ParamSet,
    extra: &[(String, String)],
) -> bool {
    let mut sets: Vec<(&str, &str)> = Vec::new();
    let mut resets = String::new();
    if wanted != applied {
        for (i, name) in TRACKED.iter().enumerate() {
            if wanted.get(i) == applied.get(i) {
                continue;
            }
            match wanted.get(i) {
                Some(v) => sets.push((name, v)),
                None => {
                    resets.push_str("RESET ");
                    resets.push_str(name);
                    resets.push(';');
                }
            }
        }
        *applied = wanted.clone();
    }
    sets.extend(extra.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    if sets.is_empty() && resets.is_empty() {
        return false;
    }
    let mut sql = String::new();
    if !sets.is_empty() {
        sql.push_str("SELECT ");
        for (i, (name, value)) in sets.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("pg_catalog.set_config(");
            push_literal(&mut sql, name);
            sql.push_str(", ");
            push_literal(&mut sql, value);
            sql.push_str(", false)");
        }
        sql.push(';');
    }
    sql.push_str(&resets);
    protocol::put_message(out, b'Q', |b| protocol::put_cstr(b, sql.as_bytes()));
    true
}

/// Records one `(name, setting)` row of [`CAPTURE_SQL`] as the client's own state.
pub fn record_captured(
    name: &str,
    value: &str,
    tenant_setting: &str,
    params: &mut ParamSet,
    extra: &mut ExtraSettings,
) {
    if never_replayed(name, tenant_setting) {
        return;
    }
    match tracked_index(name) {
        Some(i) => params.set(i, Some(value)),
        None => extra.push((name.to_owned(), value.to_owned())),
    }
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

    fn text(out: &BytesMut) -> &str {
        std::str::from_utf8(&out[5..out.len() - 1]).unwrap()
    }

    #[test]
    fn differing_parameters_are_set_and_defaults_reset() {
        let mut wanted: ParamSet = Default::default();
        wanted.set(3, Some("Europe/Paris"));
        let mut applied: ParamSet = Default::default();
        applied.set(6, Some("other_tenant_schema"));
        let mut out = BytesMut::new();
        assert!(append_apply_query(
            &mut out,
            &wanted,
            &mut applied,
            &Vec::new()
        ));
        assert_eq!(
            text(&out),
            "SELECT pg_catalog.set_config('TimeZone', 'Europe/Paris', false);RESET search_path;"
        );
        assert_eq!(applied, wanted);
    }

    #[test]
    fn changing_a_copy_leaves_the_other_holders_alone() {
        let mut startup: ParamSet = Default::default();
        startup.set(1, Some("UTF8"));
        let mut current = startup.clone();
        current.set(1, Some("LATIN1"));
        assert_eq!(startup.get(1), Some("UTF8"));
        assert_eq!(current.get(1), Some("LATIN1"));
        assert_ne!(startup, current);
        current.set(1, Some("UTF8"));
        assert_eq!(startup, current);
    }

    #[test]
    fn logins_with_equal_parameters_share_one_copy() {
        let recent = RecentParams::default();
        let login = |zone: &str| {
            let mut p: ParamSet = Default::default();
            p.set(3, Some(zone));
            recent.share(p)
        };
        let first = login("UTC");
        let second = login("UTC");
        let other = login("Europe/Paris");
        let (Some(a), Some(b), Some(c)) = (&first.0, &second.0, &other.0) else {
            panic!("parameters were lost");
        };
        assert!(Arc::ptr_eq(a, b), "equal parameters were copied");
        assert!(!Arc::ptr_eq(a, c));
        assert_eq!(other.get(3), Some("Europe/Paris"));
    }

    #[test]
    fn matching_parameters_send_nothing() {
        let wanted: ParamSet = Default::default();
        let mut applied: ParamSet = Default::default();
        let mut out = BytesMut::new();
        assert!(!append_apply_query(
            &mut out,
            &wanted,
            &mut applied,
            &Vec::new()
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn extra_settings_are_always_applied() {
        let wanted: ParamSet = Default::default();
        let mut applied: ParamSet = Default::default();
        let mut out = BytesMut::new();
        let extra = vec![("statement_timeout".to_owned(), "5000".to_owned())];
        assert!(append_apply_query(&mut out, &wanted, &mut applied, &extra));
        assert_eq!(
            text(&out),
            "SELECT pg_catalog.set_config('statement_timeout', '5000', false);"
        );
    }

    #[test]
    fn quotes_in_values_cannot_end_the_literal() {
        let mut wanted: ParamSet = Default::default();
        wanted.set(0, Some("x'; DROP TABLE invoices; --"));
        let mut applied: ParamSet = Default::default();
        let mut out = BytesMut::new();
        append_apply_query(&mut out, &wanted, &mut applied, &Vec::new());
        assert_eq!(
            text(&out),
            "SELECT pg_catalog.set_config('application_name', 'x''; DROP TABLE invoices; --', false);"
        );
    }

    #[test]
    fn captured_settings_split_into_tracked_and_extra_and_skip_identity() {
        let mut params: ParamSet = Default::default();
        let mut extra = Vec::new();
        for (n, v) in [
            ("search_path", "custom"),
            ("work_mem", "8192"),
            ("role", "postgres"),
            ("app.current_tenant_id", "x"),
        ] {
            record_captured(n, v, "app.current_tenant_id", &mut params, &mut extra);
        }
        assert_eq!(params.get(6), Some("custom"));
        assert_eq!(extra, vec![("work_mem".to_owned(), "8192".to_owned())]);
    }
}
