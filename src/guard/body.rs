//! The rule for routine bodies: the text of a `DO` block or of a `CREATE FUNCTION|PROCEDURE …
//! AS '…'` (after the literal's own escapes are decoded). PL/pgSQL and SQL bodies are code the
//! guard does not parse statement by statement, so it reads them as text and refuses a body
//! that mentions anything the guard protects, or that builds SQL at run time:
//!
//! - anywhere, ignoring case: each part of the tenant setting's name after the first
//!   (`current_tenant_id`, so `"app"."current_tenant_id"` and `app . current_tenant_id` are
//!   found too), `set_config`, `pg_settings`, `query_to_xml`, `ts_stat`, `ts_rewrite`, and
//!   `U&"`/`U&'` (escapes could spell any of those);
//! - as whole words, ignoring case: `execute` (PL/pgSQL's dynamic SQL: `EXECUTE`, `RETURN
//!   QUERY EXECUTE`, `FOR … IN EXECUTE`, `OPEN … FOR EXECUTE`, whatever the text), `reset`,
//!   `discard`, `role` and `authorization` (`SET ROLE`, `SET SESSION AUTHORIZATION`),
//!   `row_security`, `client_encoding`, `names` (`SET NAMES`) and
//!   `standard_conforming_strings`.
//!
//! This errs towards refusing (a column called `role` refuses the body); creating routines
//! through the pooler is rare, and a migration role can always connect directly. What the
//! rule cannot see is a routine that already exists in the database: that is the seal's job.

use super::Guard;

const ANYWHERE: &[&str] = &[
    "set_config",
    "pg_settings",
    "query_to_xml",
    "ts_stat",
    "ts_rewrite",
    "u&\"",
    "u&'",
];

const WORDS: &[&str] = &[
    "execute",
    "reset",
    "discard",
    "role",
    "authorization",
    "row_security",
    "client_encoding",
    "names",
    "standard_conforming_strings",
];

/// What a body mentions that it must not, if anything.
pub(super) fn forbidden_mention<'g>(guard: &'g Guard, body: &str) -> Option<&'g str> {
    let lower = body.to_ascii_lowercase();
    if let Some(part) = guard
        .tenant_name_parts
        .iter()
        .find(|part| lower.contains(part.as_str()))
    {
        return Some(part.as_str());
    }
    if let Some(name) = ANYWHERE.iter().find(|name| lower.contains(*name)) {
        return Some(name);
    }
    lower
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()))
        .find_map(|word| WORDS.iter().find(|w| **w == word).copied())
}
