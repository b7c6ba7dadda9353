//! `pgtenant audit` against real databases: the example schema passes, and every problem
//! planted into a copy of it is found, with the exit status and `--json` output the binary
//! really produces.
//!
//! Roles are shared by the whole cluster, so a test that changes the pool role's attributes or
//! memberships audits a role of its own ([`TestDb::create_app_role`], a member of `api_user`)
//! instead of `api_user` itself.

mod support;

use std::process::Command;

use pgtenant::cluster::PasswordHash;
use serde_json::Value;
use support::*;

/// What one run of `pgtenant audit` produced.
struct AuditRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl AuditRun {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|err| {
            panic!(
                "--json output does not parse: {err}\nstdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// `(severity, check, object)` of every finding.
    fn findings(&self) -> Vec<(String, String, String)> {
        self.json()["findings"]
            .as_array()
            .unwrap_or_else(|| panic!("no findings array in {}", self.stdout))
            .iter()
            .map(|f| {
                let field = |name: &str| f[name].as_str().unwrap_or_default().to_owned();
                (field("severity"), field("check"), field("object"))
            })
            .collect()
    }

    /// The finding of `check` on `object`, panicking with the whole report if there is none.
    fn finding(&self, check: &str, object: &str) -> Value {
        let report = self.json();
        report["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["check"] == check && f["object"] == object)
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "no {check} finding on {object}; findings: {:#?}",
                    self.findings()
                )
            })
    }

    /// Failing findings (critical and error) only.
    fn failures(&self) -> Vec<(String, String, String)> {
        self.findings()
            .into_iter()
            .filter(|(severity, _, _)| severity != "warning")
            .collect()
    }
}

/// Runs the binary with a configuration serving `db` as `[databases.app]` with `user` (and
/// `password`) as the pool credentials.
fn audit_as(db: &TestDb, user: &str, password: &str, args: &[&str]) -> AuditRun {
    let config = ProxyConfig::for_db(db)
        .app_db("user", user)
        .app_db("password", password);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgtenant.toml");
    std::fs::write(&path, config.to_toml(6432)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .arg("audit")
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    AuditRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Audits `db` with `api_user` as the pool role, JSON output.
fn audit(db: &TestDb) -> AuditRun {
    audit_as(db, API_USER, db.pg().api_password(), &["--json"])
}

/// A login role of this test only, a member of `api_user`; returns (name, password).
fn own_pool_role(db: &TestDb) -> (String, String) {
    let password = "audit-pool-role-password";
    let role = db.create_app_role("pool", password, PasswordHash::ScramSha256);
    (role, password.to_owned())
}

fn assert_fails_with(run: &AuditRun, severity: &str, check: &str, object: &str) {
    let finding = run.finding(check, object);
    assert_eq!(finding["severity"], severity, "{finding:#}");
    assert!(
        !finding["fix"].as_str().unwrap_or_default().is_empty(),
        "a finding without a fix: {finding:#}"
    );
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert_eq!(run.json()["passed"], false);
}

/// The warning the example schema is allowed: one role shared by every tenant sees its own
/// sessions' query text.
const EXAMPLE_WARNINGS: [&str; 1] = ["same_role_sessions_visible"];

#[test]
fn the_example_schema_passes_with_only_the_shared_role_warnings() {
    let db = TestDb::new();
    let run = audit(&db);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["passed"], true);
    assert_eq!(run.failures(), vec![]);
    let warnings: Vec<String> = run.findings().into_iter().map(|(_, c, _)| c).collect();
    assert_eq!(warnings, EXAMPLE_WARNINGS);
    assert_eq!(
        report["tenant_tables"],
        serde_json::json!(["public.invoices", "public.tenants", "public.users"])
    );
    assert_eq!(report["pool_role"], API_USER);
    assert_eq!(report["tenant_setting"], TENANT_SETTING);
}

#[test]
fn strict_fails_on_warnings_and_passes_once_they_are_fixed() {
    let db = TestDb::new();
    let (role, password) = own_pool_role(&db);
    let strict = audit_as(&db, &role, &password, &["--json", "--strict"]);
    assert_eq!(strict.code, Some(1), "{}", strict.stdout);
    assert_eq!(strict.failures(), vec![]);

    db.psql(&format!(
        "ALTER ROLE \"{role}\" SET track_activities = off;"
    ));
    let fixed = audit_as(&db, &role, &password, &["--json", "--strict"]);
    assert_eq!(fixed.findings(), vec![]);
    assert_eq!(fixed.code, Some(0), "{}", fixed.stdout);
}

#[test]
fn revoking_the_activity_view_and_functions_silences_the_same_role_warning() {
    let db = TestDb::new();
    db.psql(
        "REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC;\n\
         REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer), \
             pg_catalog.pg_stat_get_backend_activity(integer) FROM PUBLIC;",
    );
    let run = audit(&db);
    let checks: Vec<String> = run.findings().into_iter().map(|(_, c, _)| c).collect();
    assert_eq!(checks, Vec::<String>::new());
}

#[test]
fn a_pool_role_allowed_temporary_tables_is_warned_about() {
    let db = TestDb::new();
    db.psql(&format!(
        "GRANT TEMPORARY ON DATABASE \"{}\" TO PUBLIC;",
        db.name()
    ));
    let run = audit(&db);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let checks: Vec<String> = run.findings().into_iter().map(|(_, c, _)| c).collect();
    assert_eq!(
        checks,
        [
            "pool_role_can_create_temp_tables",
            "same_role_sessions_visible"
        ]
    );
}

#[test]
fn the_text_report_names_each_problem_and_its_fix() {
    let db = TestDb::new();
    db.psql("ALTER TABLE invoices NO FORCE ROW LEVEL SECURITY;");
    let run = audit_as(&db, API_USER, db.pg().api_password(), &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        serde_json::from_str::<Value>(&run.stdout).is_err(),
        "the default output is text"
    );
    assert!(
        run.stdout
            .contains("ERROR     table public.invoices  [rls_not_forced]")
    );
    assert!(
        run.stdout
            .contains("ALTER TABLE public.invoices FORCE ROW LEVEL SECURITY;")
    );
    assert!(
        run.stdout
            .contains("FAILED: 0 critical, 1 error, 1 warning")
    );
}

#[test]
fn an_admin_dsn_audits_the_configured_pool_role() {
    let db = TestDb::new();
    db.psql("ALTER TABLE users DISABLE ROW LEVEL SECURITY;");
    let dsn = db.cluster().superuser_dsn_for(db.name());
    let run = audit_as(&db, API_USER, "not-used", &["--json", "--dsn", &dsn]);
    let report = run.json();
    assert_eq!(report["connected_as"], pgtenant::cluster::SUPERUSER);
    assert_eq!(report["pool_role"], API_USER);
    assert_fails_with(&run, "critical", "rls_disabled", "table public.users");
    assert!(
        !run.stdout.contains(db.cluster().superuser_password()),
        "the DSN's password must not be echoed"
    );
}

#[test]
fn an_unknown_database_entry_is_exit_status_two() {
    let db = TestDb::new();
    let run = audit_as(
        &db,
        API_USER,
        db.pg().api_password(),
        &["--database", "nope"],
    );
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("no database \"nope\""),
        "{}",
        run.stderr
    );
}

#[test]
fn a_wrong_password_is_exit_status_two_without_the_password() {
    let db = TestDb::new();
    let run = audit_as(&db, API_USER, "wrong-password-4711", &["--json"]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("28P01"), "{}", run.stderr);
    assert!(!run.stderr.contains("wrong-password-4711"));
}

#[test]
fn a_table_without_force_row_level_security_is_found() {
    let db = TestDb::new();
    db.psql("ALTER TABLE invoices NO FORCE ROW LEVEL SECURITY;");
    assert_fails_with(
        &audit(&db),
        "error",
        "rls_not_forced",
        "table public.invoices",
    );
}

#[test]
fn a_table_without_row_level_security_is_found() {
    let db = TestDb::new();
    db.psql("ALTER TABLE users DISABLE ROW LEVEL SECURITY;");
    assert_fails_with(
        &audit(&db),
        "critical",
        "rls_disabled",
        "table public.users",
    );
}

#[test]
fn a_tenant_table_without_any_rls_setup_is_still_audited() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE notes (tenant_id uuid NOT NULL, body text);\n\
         CREATE INDEX ON notes (tenant_id);\n\
         GRANT SELECT ON notes TO api_user;",
    );
    let run = audit(&db);
    assert_fails_with(&run, "critical", "rls_disabled", "table public.notes");
    run.finding("command_without_policy", "table public.notes (SELECT)");
}

#[test]
fn a_dropped_policy_is_found() {
    let db = TestDb::new();
    db.psql("DROP POLICY tenant_isolation_delete ON invoices;");
    let run = audit(&db);
    assert_fails_with(
        &run,
        "error",
        "command_without_policy",
        "table public.invoices (DELETE)",
    );
    assert_eq!(run.failures().len(), 1, "{:#?}", run.failures());
}

#[test]
fn a_policy_that_does_not_read_the_tenant_setting_is_found() {
    let db = TestDb::new();
    db.psql(
        "DROP POLICY tenant_isolation_select ON users;\n\
         CREATE POLICY everyone ON users FOR SELECT USING (true);",
    );
    let run = audit(&db);
    assert_fails_with(
        &run,
        "error",
        "policy_without_tenant_setting",
        "policy everyone on public.users",
    );
}

#[test]
fn an_update_policy_that_lets_rows_move_to_another_tenant_is_found() {
    let db = TestDb::new();
    db.psql(
        "DROP POLICY tenant_isolation_update ON invoices;\n\
         CREATE POLICY movable ON invoices FOR UPDATE \
             USING (tenant_id = current_setting('app.current_tenant_id')::uuid) \
             WITH CHECK (true);",
    );
    let run = audit(&db);
    let finding = run.finding(
        "policy_without_tenant_setting",
        "policy movable on public.invoices",
    );
    assert!(
        finding["problem"]
            .as_str()
            .unwrap_or_default()
            .contains("WITH CHECK"),
        "{finding:#}"
    );
}

#[test]
fn a_policy_reading_another_setting_is_found() {
    let db = TestDb::new();
    db.psql(
        "DROP POLICY tenant_isolation_select ON invoices;\n\
         CREATE POLICY other_setting ON invoices FOR SELECT \
             USING (tenant_id = current_setting('app.tenant')::uuid);",
    );
    assert_fails_with(
        &audit(&db),
        "error",
        "policy_without_tenant_setting",
        "policy other_setting on public.invoices",
    );
}

#[test]
fn a_permissive_true_policy_under_a_restrictive_tenant_policy_passes() {
    let db = TestDb::new();
    db.psql(include_str!("fixtures/audit/restrictive_policy.sql"));
    let run = audit(&db);
    assert_eq!(run.failures(), vec![]);
    assert_eq!(run.code, Some(0));
}

#[test]
fn a_nullable_tenant_column_is_found() {
    let db = TestDb::new();
    db.psql("ALTER TABLE invoices ALTER COLUMN tenant_id DROP NOT NULL;");
    assert_fails_with(
        &audit(&db),
        "error",
        "tenant_column_nullable",
        "column public.invoices.tenant_id",
    );
}

#[test]
fn an_index_not_led_by_the_tenant_column_is_found() {
    let db = TestDb::new();
    db.psql("CREATE INDEX invoices_status ON invoices (status, tenant_id);");
    assert_fails_with(
        &audit(&db),
        "error",
        "index_without_tenant_first",
        "index public.invoices_status",
    );
}

#[test]
fn a_tenant_column_no_index_leads_with_is_found() {
    let db = TestDb::new();
    db.psql(
        "DROP INDEX idx_invoices_tenant_created_at, idx_invoices_tenant_created_by;\n\
         CREATE INDEX invoices_created_at ON invoices (created_at);",
    );
    let run = audit(&db);
    assert_fails_with(
        &run,
        "error",
        "tenant_column_not_indexed_first",
        "column public.invoices.tenant_id",
    );
    run.finding(
        "index_without_tenant_first",
        "index public.invoices_created_at",
    );
}

#[test]
fn a_superuser_pool_role_is_found() {
    let db = TestDb::new();
    let (role, password) = own_pool_role(&db);
    db.psql(&format!("ALTER ROLE \"{role}\" SUPERUSER;"));
    let run = audit_as(&db, &role, &password, &["--json"]);
    assert_fails_with(
        &run,
        "critical",
        "pool_role_superuser",
        &format!("role {role}"),
    );
    // Owning every table, CREATE everywhere, reading every session: all implied, said once.
    assert_eq!(run.findings().len(), 1, "{:#?}", run.findings());
}

#[test]
fn a_bypassrls_pool_role_is_found() {
    let db = TestDb::new();
    let (role, password) = own_pool_role(&db);
    db.psql(&format!("ALTER ROLE \"{role}\" BYPASSRLS;"));
    let run = audit_as(&db, &role, &password, &["--json"]);
    assert_fails_with(
        &run,
        "critical",
        "pool_role_bypassrls",
        &format!("role {role}"),
    );
}

#[test]
fn a_pool_role_that_owns_a_tenant_table_is_found() {
    let db = TestDb::new();
    let (role, password) = own_pool_role(&db);
    db.psql(&format!("ALTER TABLE invoices OWNER TO \"{role}\";"));
    let run = audit_as(&db, &role, &password, &["--json"]);
    assert_fails_with(
        &run,
        "error",
        "pool_role_owns_table",
        "table public.invoices",
    );
}

#[test]
fn a_pool_role_that_owns_a_table_without_force_is_critical() {
    let db = TestDb::new();
    let (role, password) = own_pool_role(&db);
    db.psql(&format!(
        "ALTER TABLE users OWNER TO \"{role}\";\n\
         ALTER TABLE users NO FORCE ROW LEVEL SECURITY;"
    ));
    let run = audit_as(&db, &role, &password, &["--json"]);
    assert_fails_with(&run, "critical", "rls_not_forced", "table public.users");
}

#[test]
fn a_pool_role_that_can_create_in_a_schema_is_found() {
    let db = TestDb::new();
    db.psql("GRANT CREATE ON SCHEMA public TO api_user;");
    assert_fails_with(
        &audit(&db),
        "error",
        "pool_role_can_create_in_schema",
        "schema public",
    );
}

#[test]
fn a_pool_role_that_can_create_schemas_is_found() {
    let db = TestDb::new();
    db.psql(&format!(
        "GRANT CREATE ON DATABASE \"{}\" TO api_user;",
        db.name()
    ));
    assert_fails_with(
        &audit(&db),
        "error",
        "pool_role_can_create_schema",
        &format!("database {}", db.name()),
    );
}

#[test]
fn views_that_run_as_their_owner_are_found_directly_and_through_other_views() {
    let db = TestDb::new();
    db.psql(include_str!("fixtures/audit/definer_view.sql"));
    let run = audit(&db);
    assert_fails_with(
        &run,
        "error",
        "view_runs_as_owner",
        "view public.invoice_totals",
    );
    run.finding("view_runs_as_owner", "view public.big_spenders");
}

#[test]
fn a_security_invoker_view_passes() {
    let db = TestDb::new();
    db.psql(include_str!("fixtures/audit/definer_view.sql"));
    db.psql(
        "ALTER VIEW invoice_totals SET (security_invoker = on);\n\
         ALTER VIEW big_spenders SET (security_invoker);",
    );
    let run = audit(&db);
    assert_eq!(run.failures(), vec![]);
}

#[test]
fn a_materialized_view_over_a_tenant_table_is_found() {
    let db = TestDb::new();
    db.psql(
        "CREATE MATERIALIZED VIEW invoice_snapshot AS SELECT * FROM invoices;\n\
         GRANT SELECT ON invoice_snapshot TO api_user;",
    );
    assert_fails_with(
        &audit(&db),
        "error",
        "materialized_view_over_tenant_table",
        "materialized view public.invoice_snapshot",
    );
}

#[test]
fn security_definer_functions_reading_tenant_tables_are_found() {
    let db = TestDb::new();
    db.psql(include_str!("fixtures/audit/definer_function.sql"));
    let run = audit(&db);
    assert_fails_with(
        &run,
        "error",
        "security_definer_function",
        "function public.invoice_count_for(t uuid)",
    );
    run.finding("security_definer_function", "function public.user_emails()");
    assert!(
        !run.stdout.contains("invoice_count_invoker"),
        "a SECURITY INVOKER function is not a finding"
    );
}

#[test]
fn a_security_definer_function_the_pool_role_cannot_execute_passes() {
    let db = TestDb::new();
    db.psql(include_str!("fixtures/audit/definer_function.sql"));
    db.psql("REVOKE EXECUTE ON FUNCTION invoice_count_for(uuid), user_emails() FROM PUBLIC;");
    assert_eq!(audit(&db).failures(), vec![]);
}

#[test]
fn a_pool_role_with_pg_read_all_stats_is_found() {
    let db = TestDb::new();
    let (role, password) = own_pool_role(&db);
    db.psql(&format!("GRANT pg_read_all_stats TO \"{role}\";"));
    let run = audit_as(&db, &role, &password, &["--json"]);
    assert_fails_with(
        &run,
        "error",
        "pool_role_reads_all_statistics",
        &format!("role {role}"),
    );
}

#[test]
fn a_pool_role_with_pg_monitor_is_found() {
    let db = TestDb::new();
    let (role, password) = own_pool_role(&db);
    db.psql(&format!("GRANT pg_monitor TO \"{role}\";"));
    let run = audit_as(&db, &role, &password, &["--json"]);
    let finding = run.finding("pool_role_reads_all_statistics", &format!("role {role}"));
    assert!(
        finding["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("REVOKE pg_monitor"),
        "{finding:#}"
    );
}

#[test]
fn a_pool_role_that_can_become_a_superuser_is_found() {
    let db = TestDb::new();
    let (role, password) = own_pool_role(&db);
    db.psql(&format!(
        "GRANT {} TO \"{role}\";",
        pgtenant::cluster::SUPERUSER
    ));
    let run = audit_as(&db, &role, &password, &["--json"]);
    assert_fails_with(
        &run,
        "critical",
        "pool_role_member_of_privileged_role",
        &format!("role {role}"),
    );
}

#[test]
fn a_large_object_is_found() {
    let db = TestDb::new();
    db.psql("SELECT lo_from_bytea(0, 'tenant A''s contract'::bytea);");
    assert_fails_with(
        &audit(&db),
        "error",
        "large_objects_present",
        &format!("large objects owned by {}", pgtenant::cluster::SUPERUSER),
    );
}

#[test]
fn a_custom_tenant_column_is_honoured() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE docs (org_id uuid, body text);\n\
         ALTER TABLE docs ENABLE ROW LEVEL SECURITY;\n\
         ALTER TABLE docs FORCE ROW LEVEL SECURITY;\n\
         CREATE POLICY docs_all ON docs \
             USING (org_id = current_setting('app.current_tenant_id')::uuid);\n\
         CREATE INDEX ON docs (org_id);",
    );
    let run = audit_as(
        &db,
        API_USER,
        db.pg().api_password(),
        &["--json", "--tenant-column", "org_id"],
    );
    assert_fails_with(
        &run,
        "error",
        "tenant_column_nullable",
        "column public.docs.org_id",
    );
    assert_eq!(run.failures().len(), 1, "{:#?}", run.failures());
}

#[test]
fn pg_stat_statements_readable_by_the_pool_role_is_a_warning_until_revoked() {
    let db = TestDb::new();
    db.psql("CREATE EXTENSION pg_stat_statements;");
    let run = audit(&db);
    let finding = run.finding("same_role_statements_visible", "public.pg_stat_statements");
    assert_eq!(finding["severity"], "warning");
    assert_eq!(run.code, Some(0));

    let fix = finding["fix"].as_str().unwrap_or_default();
    let revokes: String = fix.split(" -- ").next().unwrap_or_default().to_owned();
    db.psql(&revokes);
    let after = audit(&db);
    let checks: Vec<String> = after.findings().into_iter().map(|(_, c, _)| c).collect();
    assert!(
        !checks.iter().any(|c| c == "same_role_statements_visible"),
        "the printed fix did not close it: {fix}"
    );
}

#[test]
fn partitions_the_pool_role_cannot_name_are_covered_by_their_parent() {
    let db = TestDb::new();
    db.psql(
        "CREATE TABLE events (tenant_id uuid NOT NULL, at timestamptz NOT NULL) \
             PARTITION BY RANGE (at);\n\
         CREATE TABLE events_2025 PARTITION OF events \
             FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');\n\
         CREATE INDEX ON events (tenant_id, at);\n\
         ALTER TABLE events ENABLE ROW LEVEL SECURITY;\n\
         ALTER TABLE events FORCE ROW LEVEL SECURITY;\n\
         CREATE POLICY events_all ON events \
             USING (tenant_id = current_setting('app.current_tenant_id')::uuid);\n\
         GRANT SELECT, INSERT, UPDATE, DELETE ON events TO api_user;",
    );
    assert_eq!(audit(&db).failures(), vec![]);

    db.psql("GRANT SELECT ON events_2025 TO api_user;");
    assert_fails_with(
        &audit(&db),
        "critical",
        "rls_disabled",
        "table public.events_2025",
    );
}
