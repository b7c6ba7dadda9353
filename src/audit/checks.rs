//! Judges the catalog facts: every way the schema lets one tenant reach another's data, each
//! as a [`Finding`] with a severity, the object, the problem and SQL that fixes it.
//!
//! Pure functions over [`Facts`]: no I/O, so every rule is unit-tested without a database. It
//! must never weaken a rule to make a schema pass: a finding that cannot be fixed in SQL (one
//! role shared by every tenant sees its own sessions' query text) is still reported, as a
//! warning.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::catalog::{Facts, PolicyCommand, PolicyFacts, TableFacts};
use super::{Finding, Severity};

/// What the checks compare against.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// The custom setting the proxy fills with the tenant (`pgtenant.tenant_setting`).
    pub tenant_setting: String,
    /// The column that holds the tenant in tenant tables.
    pub tenant_column: String,
}

/// The commands RLS distinguishes, in the order findings list them.
const COMMANDS: [PolicyCommand; 4] = [
    PolicyCommand::Select,
    PolicyCommand::Insert,
    PolicyCommand::Update,
    PolicyCommand::Delete,
];

fn command_name(command: PolicyCommand) -> &'static str {
    match command {
        PolicyCommand::All => "ALL",
        PolicyCommand::Select => "SELECT",
        PolicyCommand::Insert => "INSERT",
        PolicyCommand::Update => "UPDATE",
        PolicyCommand::Delete => "DELETE",
    }
}

/// Runs every check. Findings come back sorted: most severe first, then by check and object.
pub fn run_checks(facts: &Facts, expect: &Expectations) -> Vec<Finding> {
    let reads_setting = SettingMatcher::new(&expect.tenant_setting);
    let tenant_tables = tenant_tables(facts, &reads_setting);
    let mut findings = Vec::new();
    check_role(facts, &mut findings);
    for table in &tenant_tables {
        // Queries through the partitioned parent use the parent's policies; a partition
        // matters on its own only if the pool role may name it directly.
        if table.partition && table.pool_privileges.is_empty() {
            continue;
        }
        check_rls(table, facts, &mut findings);
        check_policies(table, facts, &reads_setting, expect, &mut findings);
        check_tenant_column(table, facts, expect, &mut findings);
    }
    check_views(facts, &tenant_tables, &mut findings);
    check_definer_functions(facts, &tenant_tables, &mut findings);
    check_activity(facts, &mut findings);
    check_large_objects(facts, &mut findings);
    findings
        .sort_by(|a, b| (a.severity, a.check, &a.object).cmp(&(b.severity, b.check, &b.object)));
    findings
}

/// The tables the audit treats as holding tenant data: those with the tenant column, those
/// with a policy that reads the tenant setting (`tenants` itself, keyed by `id`), and those
/// with RLS enabled that the pool role can touch (a tenant table whose policies were all
/// dropped still counts).
pub fn tenant_tables<'a>(facts: &'a Facts, reads_setting: &SettingMatcher) -> Vec<&'a TableFacts> {
    let with_setting_policy: HashSet<u32> = facts
        .policies
        .iter()
        .filter(|p| reads_setting.policy(p))
        .map(|p| p.table_oid)
        .collect();
    facts
        .tables
        .iter()
        .filter(|t| {
            t.tenant_column.is_some()
                || with_setting_policy.contains(&t.oid)
                || (t.rls_enabled && !t.pool_privileges.is_empty())
        })
        .collect()
}

/// Recognises an expression that reads the tenant setting.
pub struct SettingMatcher {
    /// `current_setting('name'`, lowercased: pg_get_expr deparses every call the same way
    /// (`current_setting('app.current_tenant_id'::text[, true])`), and setting names are
    /// case-insensitive.
    call: String,
    name: String,
}

impl SettingMatcher {
    pub fn new(setting: &str) -> SettingMatcher {
        let name = setting.to_lowercase();
        SettingMatcher {
            call: format!("current_setting('{name}'"),
            name,
        }
    }

    /// Reads the setting directly, or through a function whose body mentions it.
    fn expression(&self, expr: &str, helper_sources: &[String]) -> bool {
        expr.to_lowercase().contains(&self.call)
            || helper_sources
                .iter()
                .any(|src| src.to_lowercase().contains(&self.name))
    }

    fn policy(&self, policy: &PolicyFacts) -> bool {
        [&policy.using, &policy.with_check]
            .into_iter()
            .flatten()
            .any(|e| self.expression(e, &policy.helper_sources))
    }

    /// The expressions that decide `command` for this policy, each paired with whether it
    /// reads the setting. An absent expression admits nothing, so it is not listed.
    fn unprotected_clauses(
        &self,
        policy: &PolicyFacts,
        command: PolicyCommand,
    ) -> Vec<&'static str> {
        let reads = |e: &Option<String>| match e {
            Some(e) => self.expression(e, &policy.helper_sources),
            None => true,
        };
        let mut clauses = Vec::new();
        // WITH CHECK falls back to USING for INSERT (ALL policies) and UPDATE.
        let check_or_using = if policy.with_check.is_some() {
            &policy.with_check
        } else {
            &policy.using
        };
        match command {
            PolicyCommand::Select | PolicyCommand::Delete | PolicyCommand::All => {
                if !reads(&policy.using) {
                    clauses.push("USING");
                }
            }
            PolicyCommand::Insert => {
                if !reads(check_or_using) {
                    clauses.push("WITH CHECK");
                }
            }
            PolicyCommand::Update => {
                if !reads(&policy.using) {
                    clauses.push("USING");
                }
                if !reads(check_or_using) {
                    clauses.push("WITH CHECK");
                }
            }
        }
        clauses
    }
}

fn finding(
    severity: Severity,
    check: &'static str,
    object: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        severity,
        check,
        object: object.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

fn check_role(facts: &Facts, out: &mut Vec<Finding>) {
    let role = &facts.role;
    let r = &role.ident;
    if role.superuser {
        out.push(finding(
            Severity::Critical,
            "pool_role_superuser",
            format!("role {r}"),
            "the pool role is a superuser: RLS never applies to it, FORCE or not, so every tenant reads every row (and every session's query text, and can change any object)",
            format!("ALTER ROLE {r} NOSUPERUSER;"),
        ));
        // Everything else about the role (ownership, CREATE, statistics) follows from this
        // and would only repeat it.
        return;
    }
    if role.bypassrls {
        out.push(finding(
            Severity::Critical,
            "pool_role_bypassrls",
            format!("role {r}"),
            "the pool role has BYPASSRLS: no policy applies to it, so every tenant reads every row",
            format!("ALTER ROLE {r} NOBYPASSRLS;"),
        ));
    }
    for privileged in &role.privileged_memberships {
        let what = if privileged.superuser {
            "a superuser"
        } else {
            "a BYPASSRLS role"
        };
        out.push(finding(
            Severity::Critical,
            "pool_role_member_of_privileged_role",
            format!("role {r}"),
            format!(
                "the pool role is a member of {}, {what}: one SET ROLE {} and RLS no longer applies",
                privileged.ident, privileged.ident
            ),
            format!("REVOKE {} FROM {r};", privileged.ident),
        ));
    }
    for schema in &role.create_schemas {
        let fix = if schema.owned_by_pool {
            format!(
                "ALTER SCHEMA {} OWNER TO <an administrator role>; REVOKE CREATE ON SCHEMA {} FROM PUBLIC, {r};",
                schema.ident, schema.ident
            )
        } else {
            format!("REVOKE CREATE ON SCHEMA {} FROM PUBLIC, {r};", schema.ident)
        };
        out.push(finding(
            Severity::Error,
            "pool_role_can_create_in_schema",
            format!("schema {}", schema.ident),
            format!(
                "the pool role can create objects in schema {}{}: a tenant can plant a table, view, function or operator there that every other tenant's statements then resolve to",
                schema.ident,
                if schema.owned_by_pool { " (it owns it)" } else { "" }
            ),
            fix,
        ));
    }
    if role.create_on_database {
        out.push(finding(
            Severity::Error,
            "pool_role_can_create_schema",
            format!("database {}", facts.database),
            format!(
                "the pool role can CREATE SCHEMA in this database: a schema named {r} comes first in the default search_path (\"$user\", public) of every tenant's session, so one tenant can shadow the real tables for all of them"
            ),
            format!("REVOKE CREATE ON DATABASE {} FROM PUBLIC, {r};", facts.database),
        ));
    }
    if role.temp_on_database {
        out.push(finding(
            Severity::Warning,
            "pool_role_can_create_temp_tables",
            format!("database {}", facts.database),
            "the pool role can create temporary tables: they have no RLS, live as long as the server connection (which the pool hands to other tenants), and pg_temp is searched first, so a tenant's temporary table named like a real one captures the next tenant's unqualified reads and writes on that connection",
            format!("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC, {r};", facts.database),
        ));
    }
}

fn check_rls(table: &TableFacts, facts: &Facts, out: &mut Vec<Finding>) {
    let t = &table.name;
    // A superuser has every owner's privileges; that is reported once, as a superuser.
    let owned_by_pool = table.owned_by_pool && !facts.role.superuser;
    if !table.rls_enabled {
        out.push(finding(
            Severity::Critical,
            "rls_disabled",
            format!("table {t}"),
            "row level security is not enabled: its policies (if any) are ignored and every tenant reads and writes every row",
            format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;"),
        ));
    }
    if !table.rls_forced {
        let owner_note = if owned_by_pool {
            " — and the pool role is its owner, so RLS does not apply to it at all"
        } else {
            ""
        };
        out.push(finding(
            if owned_by_pool {
                Severity::Critical
            } else {
                Severity::Error
            },
            "rls_not_forced",
            format!("table {t}"),
            format!(
                "FORCE ROW LEVEL SECURITY is off: the owner ({}) and anyone with its privileges bypass the policies{owner_note}",
                table.owner
            ),
            format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY;"),
        ));
    }
    if owned_by_pool {
        out.push(finding(
            Severity::Error,
            "pool_role_owns_table",
            format!("table {t}"),
            format!(
                "the pool role {} has the owner's privileges on it (owner {}): it can ALTER TABLE … NO FORCE / DISABLE ROW LEVEL SECURITY, drop or rewrite the policies{}",
                facts.role.ident,
                table.owner,
                if table.rls_forced {
                    ""
                } else {
                    ", and without FORCE the policies do not apply to it"
                }
            ),
            format!(
                "ALTER TABLE {t} OWNER TO <an administrator role>; GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {};",
                facts.role.ident
            ),
        ));
    }
}

fn applies(policy: &PolicyFacts, table: &TableFacts, command: PolicyCommand) -> bool {
    policy.table_oid == table.oid
        && policy.applies_to_pool
        && (policy.command == command || policy.command == PolicyCommand::All)
}

fn check_policies(
    table: &TableFacts,
    facts: &Facts,
    reads_setting: &SettingMatcher,
    expect: &Expectations,
    out: &mut Vec<Finding>,
) {
    let t = &table.name;
    let setting = &expect.tenant_setting;
    let key = table
        .tenant_column
        .as_ref()
        .map_or("id", |_| expect.tenant_column.as_str());
    // Per permissive policy: the commands and clauses it leaves open.
    let mut open: HashMap<&str, (Vec<&'static str>, BTreeSet<&'static str>)> = HashMap::new();
    for command in COMMANDS {
        let name = command_name(command);
        let permissive: Vec<&PolicyFacts> = facts
            .policies
            .iter()
            .filter(|p| p.permissive && applies(p, table, command))
            .collect();
        if permissive.is_empty() {
            out.push(finding(
                Severity::Error,
                "command_without_policy",
                format!("table {t} ({name})"),
                format!(
                    "no permissive policy for {name} applies to the pool role{}: PostgreSQL denies it (SELECT/UPDATE/DELETE see no rows, INSERT fails) — usually a dropped or forgotten policy, and the usual 'fix' (USING (true), or disabling RLS) opens the table",
                    if table.rls_enabled {
                        ""
                    } else {
                        " (once RLS is enabled)"
                    }
                ),
                policy_sql(t, command, key, setting),
            ));
            continue;
        }
        // A restrictive policy that reads the setting is ANDed with the permissive ones, so
        // it isolates the command whatever they say.
        let restricted = facts.policies.iter().any(|p| {
            !p.permissive
                && applies(p, table, command)
                && reads_setting.unprotected_clauses(p, command).is_empty()
                && (p.using.is_some() || p.with_check.is_some())
        });
        if restricted {
            continue;
        }
        for policy in permissive {
            let clauses = reads_setting.unprotected_clauses(policy, command);
            if !clauses.is_empty() {
                let entry = open.entry(policy.name.as_str()).or_default();
                entry.0.push(name);
                entry.1.extend(clauses);
            }
        }
    }
    let mut open: Vec<_> = open.into_iter().collect();
    open.sort();
    for (policy_name, (commands, clauses)) in open {
        let clauses: Vec<&str> = clauses.into_iter().collect();
        let command = match commands.as_slice() {
            [single] => single.to_string(),
            _ => "ALL".to_owned(),
        };
        out.push(finding(
            Severity::Error,
            "policy_without_tenant_setting",
            format!("policy {policy_name} on {t}"),
            format!(
                "its {} for {} does not read current_setting('{setting}'), and no restrictive policy does: it admits rows of every tenant",
                clauses.join(" and "),
                commands.join(", ")
            ),
            format!(
                "DROP POLICY {policy_name} ON {t}; {}",
                policy_sql_named(policy_name, t, &command, key, setting)
            ),
        ));
    }
    // Reads the setting but never compares the tenant column with it
    // (e.g. `current_setting(…) IS NOT NULL`).
    if table.tenant_column.is_some() {
        let column = expect.tenant_column.to_lowercase();
        for policy in facts
            .policies
            .iter()
            .filter(|p| p.table_oid == table.oid && reads_setting.policy(p))
        {
            let mentions = [&policy.using, &policy.with_check]
                .into_iter()
                .flatten()
                .any(|e| identifiers(e).contains(&column));
            if !mentions {
                out.push(finding(
                    Severity::Warning,
                    "policy_ignores_tenant_column",
                    format!("policy {} on {t}", policy.name),
                    format!(
                        "it reads the tenant setting but never mentions {}: check that it compares the row's tenant with the setting",
                        expect.tenant_column
                    ),
                    "-- review the policy: USING/WITH CHECK should compare the tenant column with the setting",
                ));
            }
        }
    }
}

fn tenant_predicate(key: &str, setting: &str) -> String {
    format!("{key} = current_setting('{setting}')::uuid")
}

/// A policy like the example schema's for `command` (`ALL` covers all four).
fn policy_sql(table: &str, command: PolicyCommand, key: &str, setting: &str) -> String {
    let name = format!("tenant_isolation_{}", command_name(command).to_lowercase());
    policy_sql_named(&name, table, command_name(command), key, setting)
}

fn policy_sql_named(name: &str, table: &str, command: &str, key: &str, setting: &str) -> String {
    let predicate = tenant_predicate(key, setting);
    let clauses = match command {
        "SELECT" | "DELETE" => format!("USING ({predicate})"),
        "INSERT" => format!("WITH CHECK ({predicate})"),
        _ => format!("USING ({predicate}) WITH CHECK ({predicate})"),
    };
    format!("CREATE POLICY {name} ON {table} FOR {command} {clauses};")
}

fn check_tenant_column(
    table: &TableFacts,
    facts: &Facts,
    expect: &Expectations,
    out: &mut Vec<Finding>,
) {
    let Some(column) = &table.tenant_column else {
        return;
    };
    let t = &table.name;
    let c = &expect.tenant_column;
    if !column.not_null {
        out.push(finding(
            Severity::Error,
            "tenant_column_nullable",
            format!("column {t}.{c}"),
            format!(
                "{c} is nullable: a row with a NULL tenant belongs to nobody, never matches a policy, and hides from every tenant's own cleanup"
            ),
            format!("ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL;"),
        ));
    }
    let indexes: Vec<_> = facts
        .indexes
        .iter()
        .filter(|i| i.table_oid == table.oid)
        .collect();
    if !indexes
        .iter()
        .any(|i| i.keys.first() == Some(&column.attnum))
    {
        out.push(finding(
            Severity::Error,
            "tenant_column_not_indexed_first",
            format!("column {t}.{c}"),
            format!(
                "no index leads with {c}: every policy-filtered query reads every tenant's rows to find its own"
            ),
            format!("CREATE INDEX ON {t} ({c});"),
        ));
    }
    for index in indexes {
        if index.primary || index.keys.first() == Some(&column.attnum) {
            continue;
        }
        let problem = if index.unique && !index.keys.contains(&column.attnum) {
            format!(
                "unique index without {c}: an INSERT or UPDATE that collides with another tenant's row fails, so a tenant can probe for values other tenants hold"
            )
        } else {
            format!(
                "index does not lead with {c}: it orders and groups rows across tenants, so policy-filtered scans read other tenants' entries"
            )
        };
        out.push(finding(
            Severity::Error,
            "index_without_tenant_first",
            format!("index {}", index.name),
            format!("{problem} ({})", index.definition),
            format!(
                "DROP INDEX {}; -- then recreate it with {c} as its first column",
                index.name
            ),
        ));
    }
}

/// Oids of tenant tables plus every view that reads one, directly or through other views.
fn reaches_tenant_data(facts: &Facts, tenant_tables: &[&TableFacts]) -> HashSet<u32> {
    let mut reached: HashSet<u32> = tenant_tables.iter().map(|t| t.oid).collect();
    loop {
        let before = reached.len();
        for view in &facts.views {
            if view.references.iter().any(|r| reached.contains(r)) {
                reached.insert(view.oid);
            }
        }
        if reached.len() == before {
            return reached;
        }
    }
}

fn check_views(facts: &Facts, tenant_tables: &[&TableFacts], out: &mut Vec<Finding>) {
    let reached = reaches_tenant_data(facts, tenant_tables);
    let pool = &facts.role.ident;
    for view in facts
        .views
        .iter()
        .filter(|v| v.references.iter().any(|r| reached.contains(r)))
    {
        let v = &view.name;
        let severity = if view.pool_can_use {
            Severity::Error
        } else {
            Severity::Warning
        };
        let access = if view.pool_can_use {
            "the pool role can use it"
        } else {
            "the pool role has no privilege on it today"
        };
        if view.materialized {
            out.push(finding(
                severity,
                "materialized_view_over_tenant_table",
                format!("materialized view {v}"),
                format!(
                    "it stores rows of tenant tables as they were at the last REFRESH, with no RLS of its own: every tenant who can read it reads every tenant's rows ({access})"
                ),
                format!("REVOKE ALL ON {v} FROM PUBLIC, {pool};"),
            ));
        } else if !view.security_invoker {
            out.push(finding(
                severity,
                "view_runs_as_owner",
                format!("view {v}"),
                format!(
                    "the view reads tenant tables with its owner's ({}) rights, so RLS is checked against the owner (a superuser or a non-FORCE owner bypasses it) ({access})",
                    view.owner
                ),
                format!("ALTER VIEW {v} SET (security_invoker = true);"),
            ));
        }
    }
}

/// Words of a function body that could be table names (lowercased, quotes stripped).
fn identifiers(source: &str) -> HashSet<String> {
    source
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn check_definer_functions(facts: &Facts, tenant_tables: &[&TableFacts], out: &mut Vec<Finding>) {
    let reached = reaches_tenant_data(facts, tenant_tables);
    let pool = &facts.role.ident;
    let mut names: HashMap<String, Vec<&str>> = HashMap::new();
    for table in tenant_tables {
        names
            .entry(table.relname.to_lowercase())
            .or_default()
            .push(table.name.as_str());
    }
    for view in &facts.views {
        if reached.contains(&view.oid) {
            let bare = view.name.rsplit('.').next().unwrap_or(&view.name);
            names
                .entry(bare.trim_matches('"').to_lowercase())
                .or_default()
                .push(view.name.as_str());
        }
    }
    for function in &facts.definer_functions {
        let words = identifiers(&function.source);
        let mut touched: BTreeSet<&str> = names
            .iter()
            .filter(|(name, _)| words.contains(*name))
            .flat_map(|(_, tables)| tables.iter().copied())
            .collect();
        for table in tenant_tables {
            if function.references.contains(&table.oid) {
                touched.insert(table.name.as_str());
            }
        }
        if touched.is_empty() {
            continue;
        }
        let f = &function.signature;
        out.push(finding(
            Severity::Error,
            "security_definer_function",
            format!("function {f}"),
            format!(
                "SECURITY DEFINER function the pool role can execute that reads {}: it runs with its owner's ({}) rights, so RLS is checked against the owner, not the tenant",
                touched.into_iter().collect::<Vec<_>>().join(", "),
                function.owner
            ),
            format!(
                "ALTER FUNCTION {f} SECURITY INVOKER; -- or, if it must stay a definer: REVOKE EXECUTE ON FUNCTION {f} FROM PUBLIC, {pool};"
            ),
        ));
    }
}

fn check_activity(facts: &Facts, out: &mut Vec<Finding>) {
    let pool = &facts.role.ident;
    let activity = &facts.activity;
    if !facts.role.stats_roles.is_empty() && !facts.role.superuser {
        let mut fix: Vec<String> = facts
            .role
            .stats_roles_granted
            .iter()
            .map(|r| format!("REVOKE {r} FROM {pool};"))
            .collect();
        if fix.len() < facts.role.stats_roles.len() {
            fix.push(format!(
                "-- and revoke the membership through which {pool} inherits {}",
                facts.role.stats_roles.join(" / ")
            ));
        }
        out.push(finding(
            Severity::Error,
            "pool_role_reads_all_statistics",
            format!("role {pool}"),
            format!(
                "the pool role has the privileges of {}: it reads the query text of every session of every role in pg_stat_activity{}",
                facts.role.stats_roles.join(" and "),
                if activity.statements.is_some() {
                    " and every statement in pg_stat_statements"
                } else {
                    ""
                }
            ),
            fix.join(" "),
        ));
    }
    let text_readable = activity.view_selectable
        || activity.activity_function
        || activity.backend_activity_function;
    if text_readable && !activity.track_activities_off && !facts.role.superuser {
        out.push(finding(
            Severity::Warning,
            "same_role_sessions_visible",
            "pg_catalog.pg_stat_activity",
            "every tenant's session runs as the one pool role, and a role sees the query text of its own role's sessions: one tenant can read the SQL (and any literal values in it) other tenants are running",
            format!(
                "ALTER ROLE {pool} SET track_activities = off; -- as a superuser (track_activities is superuser-only, so the pool role cannot turn it back on; its sessions then show no query text to anyone). Or keep tracking and take the text away from the role: REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC; REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer), pg_catalog.pg_stat_get_backend_activity(integer) FROM PUBLIC; GRANT pg_read_all_stats TO <monitoring role>; (per database)"
            ),
        ));
    }
    if let Some(statements) = &activity.statements
        && (statements.view_selectable || !statements.functions.is_empty())
        && !facts.role.superuser
        && facts.role.stats_roles.is_empty()
    {
        let mut fix = Vec::new();
        if statements.view_selectable {
            fix.push(format!("REVOKE SELECT ON {} FROM PUBLIC;", statements.view));
        }
        if !statements.functions.is_empty() {
            fix.push(format!(
                "REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC;",
                statements.functions.join(", ")
            ));
        }
        fix.push(format!(
            "-- and from {pool} if it was granted directly; GRANT pg_read_all_stats TO <monitoring role>;"
        ));
        out.push(finding(
            Severity::Warning,
            "same_role_statements_visible",
            statements.view.clone(),
            "pg_stat_statements shows a role the text of the statements its own role ran: with one pool role, every tenant sees the (normalised) statements of every other tenant",
            fix.join(" "),
        ));
    }
}

fn check_large_objects(facts: &Facts, out: &mut Vec<Finding>) {
    for (owner, count) in &facts.large_objects {
        let owner_note = if *owner == facts.role.ident {
            " — owned by the pool role, so every tenant can open them"
        } else {
            ""
        };
        out.push(finding(
            Severity::Error,
            "large_objects_present",
            format!("large objects owned by {owner}"),
            format!(
                "{count} large object{} exist{}: large objects have no RLS and are addressed by guessable oids{owner_note}",
                if *count == 1 { "" } else { "s" },
                if *count == 1 { "s" } else { "" },
            ),
            format!(
                "-- move the contents into a bytea column of a tenant table, then: SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE lomowner = {}::regrole; -- and stop new ones: REVOKE EXECUTE ON FUNCTION lo_creat(integer), lo_create(oid), lo_from_bytea(oid, bytea) FROM PUBLIC;",
                crate::cluster::quote_literal(owner)
            ),
        ));
    }
    if facts.lo_compat_privileges {
        out.push(finding(
            Severity::Error,
            "lo_compat_privileges_on",
            "setting lo_compat_privileges",
            "lo_compat_privileges is on: every role can read and write every large object, and large objects have no RLS",
            "ALTER SYSTEM SET lo_compat_privileges = off; SELECT pg_reload_conf();",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::catalog::{ColumnFacts, IndexFacts, RoleFacts};

    fn expect() -> Expectations {
        Expectations {
            tenant_setting: "app.current_tenant_id".into(),
            tenant_column: "tenant_id".into(),
        }
    }

    fn isolated_table(oid: u32, name: &str) -> (TableFacts, Vec<PolicyFacts>, IndexFacts) {
        let table = TableFacts {
            oid,
            name: format!("public.{name}"),
            relname: name.into(),
            rls_enabled: true,
            rls_forced: true,
            owner: "postgres".into(),
            pool_privileges: vec!["SELECT".into()],
            tenant_column: Some(ColumnFacts {
                attnum: 2,
                not_null: true,
            }),
            ..TableFacts::default()
        };
        let predicate = "(tenant_id = (current_setting('app.current_tenant_id'::text))::uuid)";
        let policies = COMMANDS
            .iter()
            .map(|&command| PolicyFacts {
                table_oid: oid,
                name: format!("p_{}", command_name(command).to_lowercase()),
                command,
                permissive: true,
                roles: vec!["public".into()],
                applies_to_pool: true,
                using: (command != PolicyCommand::Insert).then(|| predicate.to_owned()),
                with_check: matches!(command, PolicyCommand::Insert | PolicyCommand::Update)
                    .then(|| predicate.to_owned()),
                helper_sources: vec![],
            })
            .collect();
        let index = IndexFacts {
            table_oid: oid,
            name: format!("public.{name}_tenant"),
            keys: vec![2, 1],
            ..IndexFacts::default()
        };
        (table, policies, index)
    }

    fn clean_facts() -> Facts {
        let (table, policies, index) = isolated_table(10, "invoices");
        Facts {
            database: "app".into(),
            role: RoleFacts {
                ident: "api_user".into(),
                ..RoleFacts::default()
            },
            tables: vec![table],
            policies,
            indexes: vec![index],
            ..Facts::default()
        }
    }

    fn checks_of(facts: &Facts) -> Vec<&'static str> {
        run_checks(facts, &expect())
            .iter()
            .map(|f| f.check)
            .collect()
    }

    #[test]
    fn an_isolated_table_has_no_findings() {
        assert_eq!(checks_of(&clean_facts()), Vec::<&str>::new());
    }

    #[test]
    fn a_permissive_using_true_policy_is_reported_with_its_command() {
        let mut facts = clean_facts();
        facts.policies[0].using = Some("true".into());
        let findings = run_checks(&facts, &expect());
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].check, "policy_without_tenant_setting");
        assert!(findings[0].problem.contains("SELECT"), "{findings:?}");
    }

    #[test]
    fn a_restrictive_policy_reading_the_setting_covers_a_permissive_true_one() {
        let mut facts = clean_facts();
        facts.policies[0].using = Some("true".into());
        let mut restrictive = facts.policies[0].clone();
        restrictive.permissive = false;
        restrictive.name = "r".into();
        restrictive.command = PolicyCommand::All;
        restrictive.using =
            Some("(tenant_id = current_setting('app.current_tenant_id', true)::uuid)".into());
        facts.policies.push(restrictive);
        assert_eq!(checks_of(&facts), Vec::<&str>::new());
    }

    #[test]
    fn a_restrictive_policy_alone_does_not_count_as_a_policy_for_the_command() {
        let mut facts = clean_facts();
        facts.policies[0].permissive = false;
        assert_eq!(checks_of(&facts), vec!["command_without_policy"]);
    }

    #[test]
    fn an_all_policy_covers_every_command() {
        let mut facts = clean_facts();
        facts.policies.truncate(1);
        facts.policies[0].command = PolicyCommand::All;
        assert_eq!(checks_of(&facts), Vec::<&str>::new());
    }

    #[test]
    fn a_policy_for_another_role_does_not_cover_the_pool_role() {
        let mut facts = clean_facts();
        facts.policies[3].applies_to_pool = false;
        assert_eq!(checks_of(&facts), vec!["command_without_policy"]);
    }

    #[test]
    fn an_update_policy_whose_with_check_ignores_the_setting_is_reported() {
        let mut facts = clean_facts();
        facts.policies[2].with_check = Some("true".into());
        let findings = run_checks(&facts, &expect());
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(findings[0].problem.contains("WITH CHECK"));
    }

    #[test]
    fn a_helper_function_that_reads_the_setting_counts_as_reading_it() {
        let mut facts = clean_facts();
        for p in &mut facts.policies {
            for e in [&mut p.using, &mut p.with_check].into_iter().flatten() {
                *e = "(tenant_id = app.current_tenant())".into();
            }
            p.helper_sources = vec!["SELECT current_setting('app.current_tenant_id')::uuid".into()];
        }
        assert_eq!(checks_of(&facts), Vec::<&str>::new());
    }

    #[test]
    fn a_unique_index_without_the_tenant_column_is_reported_but_the_primary_key_is_not() {
        let mut facts = clean_facts();
        facts.indexes.push(IndexFacts {
            table_oid: 10,
            name: "public.invoices_pkey".into(),
            primary: true,
            unique: true,
            keys: vec![1],
            ..IndexFacts::default()
        });
        facts.indexes.push(IndexFacts {
            table_oid: 10,
            name: "public.invoices_number".into(),
            unique: true,
            keys: vec![3],
            ..IndexFacts::default()
        });
        let findings = run_checks(&facts, &expect());
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].object, "index public.invoices_number");
        assert!(findings[0].problem.contains("probe"));
    }

    #[test]
    fn findings_are_sorted_most_severe_first() {
        let mut facts = clean_facts();
        facts.role.temp_on_database = true;
        facts.role.bypassrls = true;
        facts.tables[0].rls_forced = false;
        let severities: Vec<Severity> = run_checks(&facts, &expect())
            .iter()
            .map(|f| f.severity)
            .collect();
        let mut sorted = severities.clone();
        sorted.sort();
        assert_eq!(severities, sorted);
        assert_eq!(severities.first(), Some(&Severity::Critical));
        assert_eq!(severities.last(), Some(&Severity::Warning));
    }

    #[test]
    fn function_bodies_match_table_names_as_whole_words_only() {
        let words = identifiers("SELECT * FROM public.\"invoices\" JOIN invoices_archive");
        assert!(words.contains("invoices"));
        assert!(words.contains("invoices_archive"));
        assert!(!identifiers("SELECT 1 FROM invoices_archive").contains("invoices"));
    }
}
