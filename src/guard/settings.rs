//! The rules for assigning a setting, shared by every way to assign one: `SET`, `RESET`,
//! `set_config`, `ALTER ROLE|DATABASE|SYSTEM … SET|RESET`, a function's `SET` clause and
//! startup parameters. Setting names compare ignoring ASCII case, as PostgreSQL's do.

use super::{Guard, Refusal, TenantValue, rule};

/// A value as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    /// A plain literal (escapes decoded).
    Literal(String),
    /// `$n`.
    Param(usize),
    /// Anything else: an expression, several values, NULL.
    Other,
}

/// What the statement does to the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    Set(Value),
    /// `RESET x`, `SET x TO DEFAULT`.
    Reset,
    /// `SET x FROM CURRENT` (function `SET` clauses).
    FromCurrent,
}

/// How long the assignment lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// `SET LOCAL`, `set_config(…, true)`: until the transaction ends.
    Local,
    /// Session level, or stored for later sessions or calls.
    Session,
    /// `set_config`'s `is_local` is not a literal.
    Unknown,
}

/// Where the assignment is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// A statement the client runs itself: a top-level `SET`, or `set_config` in a top-level
    /// `SELECT`. Only here may the tenant be set to the client's own tenant.
    Direct,
    /// Anywhere else: function `SET` clauses, `ALTER ROLE … SET`, views, nested SQL text.
    Nested,
    /// A startup parameter or `options` `-c`.
    Startup,
}

/// Checks one assignment; a seed-style assignment of the tenant setting adds its value to
/// `tenant_values` (the caller decides whether it is the client's own tenant).
pub(super) fn check_assignment(
    guard: &Guard,
    name: &str,
    action: Action,
    scope: Scope,
    place: Place,
    tenant_values: &mut Vec<TenantValue>,
) -> Result<(), Refusal> {
    let lower = name.to_ascii_lowercase();
    if lower == guard.lowercase_setting {
        return tenant_assignment(name, action, scope, place, tenant_values);
    }
    match lower.as_str() {
        "role" | "session_authorization" => Err(Refusal::new(
            rule::ROLE_CHANGE,
            format!("changing \"{name}\": the pool's role is fixed"),
        )),
        "row_security" => require_on(name, &action, rule::ROW_SECURITY),
        "standard_conforming_strings" => {
            require_on(name, &action, rule::STANDARD_CONFORMING_STRINGS)
        }
        "client_encoding" => match &action {
            Action::Reset => Ok(()),
            Action::Set(Value::Literal(v)) if !is_unsafe_client_encoding(v) => Ok(()),
            Action::Set(Value::Literal(_)) => Err(Refusal::new(
                rule::CLIENT_ENCODING,
                "a client_encoding whose characters can hide a quote or backslash (SJIS, BIG5, GBK, UHC, GB18030, JOHAB, SHIFT_JIS_2004); use UTF8",
            )),
            _ => Err(Refusal::new(
                rule::CLIENT_ENCODING,
                "a client_encoding that is not a plain literal",
            )),
        },
        _ => Ok(()),
    }
}

fn tenant_assignment(
    name: &str,
    action: Action,
    scope: Scope,
    place: Place,
    tenant_values: &mut Vec<TenantValue>,
) -> Result<(), Refusal> {
    if place == Place::Direct && scope == Scope::Local {
        match action {
            Action::Set(Value::Literal(v)) => {
                tenant_values.push(TenantValue::Literal(v));
                return Ok(());
            }
            Action::Set(Value::Param(n)) => {
                tenant_values.push(TenantValue::Param(n));
                return Ok(());
            }
            _ => {}
        }
    }
    let what = match (place, &action, scope) {
        (Place::Startup, _, _) => "as a startup parameter".to_owned(),
        (Place::Nested, _, _) => {
            "in a stored or nested context (ALTER ROLE/DATABASE, a function's SET clause, nested SQL)"
                .to_owned()
        }
        (Place::Direct, Action::Reset, _) => "resetting it".to_owned(),
        (Place::Direct, Action::FromCurrent, _) => "SET … FROM CURRENT".to_owned(),
        (Place::Direct, Action::Set(_), Scope::Local) => {
            "to a value that is not a plain literal or bound parameter".to_owned()
        }
        (Place::Direct, Action::Set(_), _) => {
            "beyond the transaction (only SET LOCAL or set_config(…, true) with the client's own tenant is accepted)"
                .to_owned()
        }
    };
    Err(Refusal::new(
        rule::TENANT_SETTING,
        format!(
            "changing the tenant setting \"{name}\" {what}: pgtenant sets it from the tenant token"
        ),
    ))
}

/// For boolean settings that must stay on: only a literal PostgreSQL reads as true passes,
/// or a reset to the default.
fn require_on(name: &str, action: &Action, rule: &'static str) -> Result<(), Refusal> {
    match action {
        Action::Reset => Ok(()),
        Action::Set(Value::Literal(v)) if parses_as_true(v) => Ok(()),
        _ => Err(Refusal::new(
            rule,
            format!("setting \"{name}\" to anything but on"),
        )),
    }
}

/// PostgreSQL's `parse_bool`, true side: unique prefixes of `true` and `yes`, `on`, `1`,
/// ignoring case, no surrounding spaces.
pub(super) fn parses_as_true(v: &str) -> bool {
    let v = v.to_ascii_lowercase();
    (!v.is_empty() && ("true".starts_with(&v) || "yes".starts_with(&v))) || v == "on" || v == "1"
}

/// The client-only encodings whose second byte can be an ASCII `\` or `'`, under every name
/// PostgreSQL accepts for them. Names compare as PostgreSQL's `clean_encoding_name` does:
/// lowercased, everything but letters and digits dropped (`Shift-JIS_2004` is
/// `shiftjis2004`).
const UNSAFE_ENCODINGS: &[&str] = &[
    "sjis",
    "mskanji",
    "shiftjis",
    "win932",
    "windows932",
    "shiftjis2004",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "gb18030",
    "uhc",
    "win949",
    "windows949",
    "johab",
];

pub(super) fn is_unsafe_client_encoding(value: &str) -> bool {
    let clean: String = value
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    UNSAFE_ENCODINGS.contains(&clean.as_str())
}
