//! Tenant identifiers: the one place a raw tenant string becomes a [`TenantId`].
//!
//! A `TenantId` can only be built by [`TenantId::parse`], which checks the configured
//! [`TenantFormat`]; everything downstream (the injected `set_config(..., true)`, logs, metrics)
//! may therefore treat it as safe. This module must never hand out a `TenantId` for a string it
//! has not validated, and its errors must never echo the rejected value: it comes from a client
//! token and may be an injection attempt.

use std::fmt;
use std::sync::Arc;

use crate::config::TenantFormat;

/// Longest tenant id accepted under [`TenantFormat::Pattern`], in characters.
pub const MAX_TENANT_ID_CHARS: usize = 128;

/// A tenant id that passed validation; safe to put in SQL as a bound parameter or quoted literal.
/// Cloning shares the text (see [`crate::stats::Stats::tenant`]).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TenantId(Arc<str>);

/// Why a tenant id was refused. Never contains the rejected value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is longer than {MAX_TENANT_ID_CHARS} characters")]
    TooLong,
    #[error("tenant id is not a hyphenated UUID (8-4-4-4-12 hexadecimal digits)")]
    NotUuid,
    #[error("tenant id contains a quote, backslash, NUL or control character")]
    ForbiddenCharacter,
    #[error("tenant id does not match the configured tenant_pattern")]
    PatternMismatch,
}

impl TenantId {
    /// Validates `raw` against `format` and returns the normalised id.
    ///
    /// `Uuid` accepts the 36-character hyphenated form in any case and normalises it to lowercase
    /// (braced, URN and unhyphenated spellings are refused so one tenant has one spelling).
    /// `Pattern` requires 1..=128 characters, no NUL, quote, backslash or control character, and
    /// a whole-string match of the configured regex.
    pub fn parse(raw: &str, format: &TenantFormat) -> Result<TenantId, TenantError> {
        if raw.is_empty() {
            return Err(TenantError::Empty);
        }
        match format {
            TenantFormat::Uuid => parse_hyphenated_uuid(raw).map(|id| TenantId(id.into())),
            TenantFormat::Pattern(regex) => {
                if raw.chars().count() > MAX_TENANT_ID_CHARS {
                    return Err(TenantError::TooLong);
                }
                if raw
                    .chars()
                    .any(|c| c == '\'' || c == '"' || c == '\\' || c.is_control())
                {
                    return Err(TenantError::ForbiddenCharacter);
                }
                if !regex.is_match(raw) {
                    return Err(TenantError::PatternMismatch);
                }
                Ok(TenantId(raw.into()))
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Accepts exactly `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex digits, any case); returns lowercase.
fn parse_hyphenated_uuid(raw: &str) -> Result<String, TenantError> {
    const HYPHENS: [usize; 4] = [8, 13, 18, 23];
    if raw.len() != 36 {
        return Err(TenantError::NotUuid);
    }
    let well_formed = raw.bytes().enumerate().all(|(i, b)| {
        if HYPHENS.contains(&i) {
            b == b'-'
        } else {
            b.is_ascii_hexdigit()
        }
    });
    if !well_formed {
        return Err(TenantError::NotUuid);
    }
    Ok(raw.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> TenantFormat {
        TenantFormat::Pattern(regex::Regex::new(&format!("^(?:{p})$")).unwrap())
    }

    #[test]
    fn uuid_is_normalised_to_lowercase() {
        let id =
            TenantId::parse("0E1D7C3A-5B6F-4A2B-9C8D-1234567890AB", &TenantFormat::Uuid).unwrap();
        assert_eq!(id.as_str(), "0e1d7c3a-5b6f-4a2b-9c8d-1234567890ab");
    }

    #[test]
    fn uuid_format_refuses_other_spellings_and_injection() {
        for raw in [
            "0e1d7c3a5b6f4a2b9c8d1234567890ab",
            "{0e1d7c3a-5b6f-4a2b-9c8d-1234567890ab}",
            "urn:uuid:0e1d7c3a-5b6f-4a2b-9c8d-1234567890ab",
            "0e1d7c3a-5b6f-4a2b-9c8d-1234567890ag",
            "0e1d7c3a-5b6f-4a2b-9c8d-1234567890a'",
            "x'; DROP TABLE accounts; --",
        ] {
            assert_eq!(
                TenantId::parse(raw, &TenantFormat::Uuid),
                Err(TenantError::NotUuid),
                "{raw}"
            );
        }
    }

    #[test]
    fn pattern_refuses_quotes_even_when_the_regex_would_allow_them() {
        let any = pattern(".+");
        for raw in ["x'; DROP TABLE t; --", "a\"b", "a\\b", "a\0b", "a\nb"] {
            assert_eq!(
                TenantId::parse(raw, &any),
                Err(TenantError::ForbiddenCharacter),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn pattern_bounds_length_and_requires_a_match() {
        let slug = pattern("[a-z0-9-]+");
        assert_eq!(TenantId::parse("acme-1", &slug).unwrap().as_str(), "acme-1");
        assert_eq!(TenantId::parse("", &slug), Err(TenantError::Empty));
        assert_eq!(
            TenantId::parse("Acme", &slug),
            Err(TenantError::PatternMismatch)
        );
        let long = "a".repeat(MAX_TENANT_ID_CHARS + 1);
        assert_eq!(TenantId::parse(&long, &slug), Err(TenantError::TooLong));
        let max = "a".repeat(MAX_TENANT_ID_CHARS);
        assert!(TenantId::parse(&max, &slug).is_ok());
    }
}
