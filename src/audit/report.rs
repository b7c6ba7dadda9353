//! Renders a [`Report`] for people (plain text, most severe finding first) or for programs
//! (`--json`, the [`Report`] serialised as it is).
//!
//! Rendering only: it must never decide what is wrong or change a finding's text.

use std::fmt::Write as _;

use super::Report;

/// The report as pretty-printed JSON.
pub fn to_json(report: &Report) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(report)
}

/// The report as text: a header saying what was audited, one block per finding, a verdict.
pub fn to_text(report: &Report) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(
        out,
        "pgtenant audit of [databases.{}]: database {} (PostgreSQL {}), connected as {}",
        report.database, report.dbname, report.server_version, report.connected_as
    );
    let _ = writeln!(
        out,
        "pool role {}, tenant setting {}, tenant column {}",
        report.pool_role, report.tenant_setting, report.tenant_column
    );
    let tables = if report.tenant_tables.is_empty() {
        "none found".to_owned()
    } else {
        report.tenant_tables.join(", ")
    };
    let _ = writeln!(out, "tenant tables: {tables}");
    for finding in &report.findings {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<8}  {}  [{}]",
            finding.severity.as_str().to_uppercase(),
            finding.object,
            finding.check
        );
        let _ = writeln!(out, "  problem: {}", finding.problem);
        let _ = writeln!(out, "  fix:     {}", finding.fix);
    }
    let _ = writeln!(out);
    let s = report.summary;
    let verdict = if report.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(
        out,
        "{verdict}: {} critical, {} error{}, {} warning{}{}",
        s.critical,
        s.error,
        if s.error == 1 { "" } else { "s" },
        s.warning,
        if s.warning == 1 { "" } else { "s" },
        if report.strict {
            " (--strict: warnings fail)"
        } else if s.warning > 0 {
            " (warnings do not fail the audit without --strict)"
        } else {
            ""
        }
    );
    out
}
