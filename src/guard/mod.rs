//! The guard: decides, before pgtenant forwards a client's SQL, whether it could change, clear
//! or shadow the tenant setting (`app.current_tenant_id` by default), switch role, turn row
//! security off, or blind pgtenant's own SQL scanner (`client_encoding`,
//! `standard_conforming_strings`). It owns that decision and nothing else: it never rewrites
//! SQL, never talks to a server and never sees the tenant token.
//!
//! Two stages. A byte-level pre-scan ([`prescan`]) reads every statement once, without
//! allocating, and flags the few that could matter: a statement starting with `SET`, `RESET`,
//! `DISCARD`, `DO`, `ALTER`, `CREATE [OR REPLACE] FUNCTION|PROCEDURE`, or text containing
//! `set_config`, `pg_settings`, `query_to_xml`, `ts_stat`, `ts_rewrite` or a `U&` escape
//! anywhere (strings and comments included). Everything else is [`Verdict::Allow`] at once.
//! Suspects go to the PostgreSQL grammar itself (`pg_query`, libpg_query), whose parse tree is
//! the authority ([`tree`]); a suspect it cannot parse is refused.
//!
//! The pre-scan relies on what the rest of pgtenant enforces: `standard_conforming_strings =
//! on` and an ASCII-safe client encoding. [`Guard::check_parameter`] refuses the startup
//! parameters and `-c` options that would break that, and [`Guard::check`] refuses the
//! statements that would.

mod body;
mod prescan;
mod settings;
mod tree;

#[cfg(test)]
mod tests;

/// SQLSTATE of every refusal: `insufficient_privilege`.
pub const SQLSTATE: &str = "42501";

/// Rule names, as they appear in [`Refusal::rule`] (stable: tests and operators match on them).
pub mod rule {
    /// `SET`/`SET SESSION`/`RESET`/`SET … TO DEFAULT` of the tenant setting, a `SET LOCAL` or
    /// `set_config` of it that is not transaction-scoped or whose value is not a plain literal or
    /// bound parameter, any mention of it in `ALTER ROLE|DATABASE|SYSTEM … SET|RESET` or in a
    /// function's `SET` clause, or as a startup parameter.
    pub const TENANT_SETTING: &str = "tenant-setting";
    /// `RESET ALL`, `ALTER ROLE|DATABASE … RESET ALL`: would clear the tenant setting.
    pub const RESET_ALL: &str = "reset-all";
    /// `DISCARD ALL`: resets every setting and the session authorization.
    pub const DISCARD_ALL: &str = "discard-all";
    /// `set_config` whose setting name is not a plain string literal, or whose arguments are
    /// not plain (`VARIADIC`, unknown named arguments).
    pub const SET_CONFIG_DYNAMIC: &str = "set-config-dynamic";
    /// `set_config` or a function that runs SQL text (`query_to_xml`, `ts_stat`, …) named
    /// other than in a direct call: `CREATE AGGREGATE … (SFUNC = set_config)`, `GRANT … ON
    /// FUNCTION set_config`, a column called `set_config`.
    pub const FUNCTION_REFERENCE: &str = "function-reference";
    /// `query_to_xml`, `query_to_xmlschema`, `query_to_xml_and_xmlschema`, `ts_stat`,
    /// `ts_rewrite(tsquery, text)` with SQL text that is not a plain literal (a literal is
    /// checked as SQL in its turn).
    pub const DYNAMIC_SQL: &str = "dynamic-sql";
    /// A `DO` block or `CREATE FUNCTION|PROCEDURE` body mentioning the tenant setting,
    /// `set_config`, dynamic SQL (`EXECUTE`) or another guarded thing; see [`body`].
    pub const ROUTINE_BODY: &str = "routine-body";
    /// A `DO` block or function in a language other than `plpgsql` or `sql`, whose body the
    /// guard cannot read.
    pub const ROUTINE_LANGUAGE: &str = "routine-language";
    /// `SET [LOCAL] ROLE`, `SET SESSION AUTHORIZATION`, `RESET ROLE`, `set_config('role', …)`.
    pub const ROLE_CHANGE: &str = "role-change";
    /// `row_security` set to anything but on.
    pub const ROW_SECURITY: &str = "row-security";
    /// `client_encoding` set to an encoding whose characters can contain an ASCII quote or
    /// backslash byte (SJIS, BIG5, GBK, UHC, GB18030, JOHAB, SHIFT_JIS_2004), or to a value
    /// the guard cannot read.
    pub const CLIENT_ENCODING: &str = "client-encoding";
    /// `standard_conforming_strings` set to anything but on.
    pub const STANDARD_CONFORMING_STRINGS: &str = "standard-conforming-strings";
    /// `UPDATE`/`INSERT`/`DELETE`/`MERGE` on `pg_settings`, or a view or rule over it: its
    /// update rule calls `set_config`, so `UPDATE pg_settings SET setting = 'off' WHERE name =
    /// 'row_security'` turns row security off (a placeholder such as the tenant setting only
    /// appears there once an extension defines it).
    pub const PG_SETTINGS_WRITE: &str = "pg-settings-write";
    /// A suspect statement the PostgreSQL grammar rejects.
    pub const UNPARSABLE: &str = "unparsable";
    /// A protocol `FunctionCall` of anything but a large-object function.
    pub const FUNCTION_CALL_MESSAGE: &str = "function-call-message";
}

/// Why a statement, parameter or function call was refused. Reported to the client as an
/// `ErrorResponse` with SQLSTATE [`SQLSTATE`] and `message`; `rule` is one of [`rule`]'s names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub rule: &'static str,
    /// Names the rule; quotes only setting names from the client's own SQL, never values.
    pub message: String,
}

impl Refusal {
    fn new(rule: &'static str, what: impl std::fmt::Display) -> Refusal {
        Refusal {
            rule,
            message: format!("pgtenant refuses {what} (guard rule \"{rule}\")"),
        }
    }
}

/// A value the client sets the tenant setting to, in the seed's own style (`SET LOCAL
/// app.current_tenant_id = '…'`, `SELECT set_config('app.current_tenant_id', $1, true)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantValue {
    /// The literal's value, escapes decoded (`E'…'`, `U&'…'`, `$$…$$`).
    Literal(String),
    /// A bound parameter, as written: `$1` is `Param(1)`. Compare the Bind's value (text or
    /// binary format: a `text` parameter's bytes are the same) with the client's tenant. In a
    /// simple Query there is nothing bound, so it never matches. (`SET LOCAL … = $1` parses
    /// in pg_query's grammar but PostgreSQL itself answers it with a syntax error.)
    Param(usize),
}

impl TenantValue {
    /// Whether this value is `own_tenant`; `param(n)` returns the bytes bound to `$n`
    /// (`None` for NULL or a missing parameter, which never matches).
    pub fn is_own_tenant<'p>(
        &self,
        own_tenant: &str,
        param: impl FnOnce(usize) -> Option<&'p [u8]>,
    ) -> bool {
        match self {
            TenantValue::Literal(v) => v == own_tenant,
            TenantValue::Param(n) => param(*n) == Some(own_tenant.as_bytes()),
        }
    }
}

/// The guard's answer for one piece of SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing suspect, or suspect but harmless (`SET search_path …`).
    Allow,
    /// The text sets the tenant setting with transaction scope, seed-style, to these values
    /// (one per occurrence, in order): allow it only if every one is the client's own tenant
    /// (see [`TenantValue::is_own_tenant`]); refuse it otherwise, with rule
    /// [`rule::TENANT_SETTING`]. Nothing else in the text is suspect.
    AllowIfOwnTenant(Vec<TenantValue>),
    Refuse(Refusal),
}

/// Functions a client may call with the protocol's `FunctionCall` message: the large-object
/// functions libpq and JDBC call that way (OIDs fixed in PostgreSQL's `pg_proc.dat`).
/// `set_config` (2078) can be called this way too, which is why this is an allow list.
const FUNCTION_CALL_ALLOWED: &[u32] = &[
    715,  // lo_create(oid)
    764,  // lo_import(text)
    765,  // lo_export(oid, text)
    767,  // lo_import(text, oid)
    952,  // lo_open
    953,  // lo_close
    954,  // loread
    955,  // lowrite
    956,  // lo_lseek
    957,  // lo_creat
    958,  // lo_tell
    964,  // lo_unlink
    1004, // lo_truncate
    3170, // lo_lseek64
    3171, // lo_tell64
    3172, // lo_truncate64
    3457, // lo_from_bytea
    3458, // lo_get(oid)
    3459, // lo_get(oid, bigint, integer)
    3460, // lo_put
];

/// The guard for one tenant setting name. Cheap to share (`&Guard` from any task).
#[derive(Debug, Clone)]
pub struct Guard {
    /// The tenant setting as configured: what sessions set and name in their messages.
    tenant_setting: String,
    /// The tenant setting, ASCII-lowercased (PostgreSQL compares setting names ignoring case).
    lowercase_setting: String,
    /// The parts of the name a routine body cannot hide (see [`body`]): every dot-separated
    /// part but the first, or the whole name if it has no dot.
    tenant_name_parts: Vec<String>,
}

/// Default tenant setting name.
pub const DEFAULT_TENANT_SETTING: &str = "app.current_tenant_id";

/// How deep literal SQL handed to `query_to_xml` and friends is followed.
const MAX_NESTING: usize = 4;

impl Guard {
    pub fn new(tenant_setting: &str) -> Guard {
        let lowercase_setting = tenant_setting.to_ascii_lowercase();
        let parts: Vec<String> = lowercase_setting
            .split('.')
            .skip(1)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        let tenant_name_parts = if parts.is_empty() {
            vec![lowercase_setting.clone()]
        } else {
            parts
        };
        Guard {
            tenant_setting: tenant_setting.to_owned(),
            lowercase_setting,
            tenant_name_parts,
        }
    }

    /// The guarded setting name, spelled as configured. Sessions take it from here rather
    /// than each keeping a copy (it cannot change without a restart).
    pub fn tenant_setting(&self) -> &str {
        &self.tenant_setting
    }

    /// Checks SQL text: a simple Query (one or more statements) or a Parse's statement.
    /// Ordinary statements take the pre-scan only: no allocation, one pass.
    pub fn check(&self, sql: &str) -> Verdict {
        if !prescan::is_suspect(sql.as_bytes()) {
            return Verdict::Allow;
        }
        let mut tenant_values = Vec::new();
        match tree::check_parsed(self, sql, 0, &mut tenant_values) {
            Err(refusal) => Verdict::Refuse(refusal),
            Ok(()) if tenant_values.is_empty() => Verdict::Allow,
            Ok(()) => Verdict::AllowIfOwnTenant(tenant_values),
        }
    }

    /// Checks a startup parameter or an `options` `-c name=value` (also `--name=value`,
    /// where PostgreSQL turns `-` into `_` in the name). Refuses the tenant setting, `role`,
    /// `session_authorization`, `row_security` and `standard_conforming_strings` other than
    /// on, and an unsafe `client_encoding`.
    pub fn check_parameter(&self, name: &str, value: &str) -> Result<(), Refusal> {
        let name = name.replace('-', "_");
        settings::check_assignment(
            self,
            &name,
            settings::Action::Set(settings::Value::Literal(value.into())),
            settings::Scope::Session,
            settings::Place::Startup,
            &mut Vec::new(),
        )
    }

    /// Checks a protocol `FunctionCall` message's function OID: only large-object functions
    /// pass (`set_config` could be called this way, by OID).
    pub fn check_function_call(&self, function_oid: u32) -> Result<(), Refusal> {
        if FUNCTION_CALL_ALLOWED.contains(&function_oid) {
            Ok(())
        } else {
            Err(Refusal::new(
                rule::FUNCTION_CALL_MESSAGE,
                format!(
                    "a FunctionCall message for function OID {function_oid}: only large-object functions may be called that way"
                ),
            ))
        }
    }
}

impl Default for Guard {
    fn default() -> Guard {
        Guard::new(DEFAULT_TENANT_SETTING)
    }
}
