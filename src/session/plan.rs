//! What pgtenant needs to know about a client's SQL before forwarding it: whether the tenant
//! must be set first, where a multi-statement query has to be split because a statement in
//! the middle ends its transaction, and whether it may drop pgtenant's prepared statement.
//!
//! Built on [`crate::sql`]'s scanner; this module never rewrites SQL text, it only finds
//! byte offsets.

use crate::sql::{self, StatementKind};

/// The facts about one simple-protocol Query or one Parse.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SqlPlan {
    /// Non-empty statements.
    pub statements: usize,
    /// A lone statement that PostgreSQL refuses inside a transaction block (VACUUM,
    /// CREATE INDEX CONCURRENTLY, …): sent without the tenant, see the README.
    pub no_transaction_block: bool,
    /// Some statement commits or rolls back the transaction.
    pub ends_transaction: bool,
    /// Some statement may deallocate prepared statements (DEALLOCATE, DISCARD).
    pub drops_prepared: bool,
    /// The query only opens a transaction block or sets its characteristics (`BEGIN
    /// ISOLATION LEVEL …`, `SET TRANSACTION …`): nothing before it may take a snapshot, so
    /// it gets no tenant; the next statement does.
    pub opens_block: bool,
    /// The first split point follows such leading statements: the first part runs without
    /// the tenant, the rest with it.
    pub begin_split: bool,
    /// Some statement may change session-level settings (`SET`, `RESET`, `DISCARD`,
    /// `set_config`): the server must be reset before another client uses it.
    pub changes_session: bool,
    /// Some statement uses a feature that needs a dedicated server session (LISTEN,
    /// session advisory locks, WITH HOLD cursors, temporary tables, SQL PREPARE).
    pub needs_session: Option<&'static str>,
    /// Some statement runs a prepared statement with SQL `EXECUTE`.
    pub executes_prepared: bool,
    /// Byte offsets just after each transaction-ending statement that is followed by more
    /// statements: the query is split there so that each part gets the tenant.
    pub splits: Vec<usize>,
}

impl SqlPlan {
    pub fn of_query(text: &str) -> SqlPlan {
        SqlPlan::of_data_statement(text).unwrap_or_else(|| SqlPlan::of_any_query(text))
    }

    /// The plan of one SELECT/INSERT/UPDATE/DELETE (nearly every transaction): only its
    /// session effects need a look. `None` for anything else.
    fn of_data_statement(text: &str) -> Option<SqlPlan> {
        if !sql::is_one_data_statement(text) {
            return None;
        }
        let mut plan = SqlPlan {
            statements: 1,
            ..SqlPlan::default()
        };
        plan.note_effects(text, true);
        Some(plan)
    }

    fn of_any_query(text: &str) -> SqlPlan {
        // Fast path: one statement (the common case) needs only its leading keywords.
        let shape = sql::shape(text);
        if shape.statements <= 1 {
            let mut plan = SqlPlan {
                statements: shape.statements,
                no_transaction_block: shape.first == StatementKind::NoTransactionBlock,
                opens_block: opens_block(shape.first, text),
                ..SqlPlan::default()
            };
            plan.note(&shape.first);
            plan.note_effects(text, true);
            return plan;
        }
        let mut plan = SqlPlan {
            statements: shape.statements,
            ..SqlPlan::default()
        };
        plan.note_effects(text, false);
        // Leading BEGIN / SET TRANSACTION statements must run before anything takes a
        // snapshot, so the tenant cannot be set ahead of them: the query is split after
        // them and the rest gets the tenant.
        let mut leading_block_end = None;
        let mut leading = true;
        let mut more_after_leading = false;
        let mut characteristics = false;
        for stmt in sql::statements(text) {
            if stmt.kind == StatementKind::Empty {
                continue;
            }
            plan.note(&stmt.kind);
            if leading && opens_block(stmt.kind, stmt.text) {
                leading_block_end = Some(stmt.end);
                characteristics |=
                    stmt.kind != StatementKind::Begin || sql::begin_has_characteristics(stmt.text);
            } else {
                more_after_leading |= leading_block_end.is_some();
                leading = false;
            }
        }
        if shape.splits > 0 {
            plan.splits = sql::segments(text).map(|seg| seg.end).collect();
            // The last segment runs to the end of the text: not a split point.
            plan.splits.pop();
        }
        if leading_block_end.is_some() && !more_after_leading {
            // Only BEGIN / SET TRANSACTION: nothing to set the tenant for yet.
            plan.opens_block = true;
        }
        // A plain BEGIN is indifferent to a snapshot taken before it: no split needed.
        if let Some(end) = leading_block_end.filter(|_| more_after_leading && characteristics) {
            if plan.splits.first() != Some(&end) {
                plan.splits.insert(0, end);
            }
            plan.begin_split = true;
        }
        plan
    }

    pub fn of_statement(text: &str) -> SqlPlan {
        SqlPlan::of_data_statement(text).unwrap_or_else(|| SqlPlan::of_any_statement(text))
    }

    fn of_any_statement(text: &str) -> SqlPlan {
        let kind = sql::classify(text);
        let mut plan = SqlPlan {
            statements: usize::from(kind != StatementKind::Empty),
            no_transaction_block: kind == StatementKind::NoTransactionBlock,
            opens_block: opens_block(kind, text),
            ..SqlPlan::default()
        };
        plan.note(&kind);
        plan.note_effects(text, !text.contains(';'));
        plan
    }

    fn note_effects(&mut self, text: &str, single: bool) {
        let fx = sql::session_effects_of(text, single);
        self.changes_session = fx.changes_settings;
        self.needs_session = fx.needs_session;
        self.executes_prepared = fx.executes_prepared;
    }

    fn note(&mut self, kind: &StatementKind) {
        if kind.ends_transaction() {
            self.ends_transaction = true;
        }
        if matches!(
            kind,
            StatementKind::Deallocate | StatementKind::Discard | StatementKind::NoTransactionBlock
        ) {
            // DISCARD ALL is classified as NoTransactionBlock; the others there never touch
            // prepared statements, but re-preparing once is cheaper than telling them apart.
            self.drops_prepared = true;
        }
    }
}

fn opens_block(first: StatementKind, text: &str) -> bool {
    first == StatementKind::Begin
        || (first == StatementKind::Other && sql::sets_transaction_characteristics(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_select_needs_nothing_special() {
        let p = SqlPlan::of_query("SELECT * FROM invoices");
        assert_eq!(p.statements, 1);
        assert!(!p.no_transaction_block && !p.ends_transaction && p.splits.is_empty());
    }

    #[test]
    fn statements_after_commit_split_the_query() {
        let q = "INSERT INTO t VALUES (1); COMMIT; SELECT 1";
        let p = SqlPlan::of_query(q);
        assert_eq!(p.statements, 3);
        assert_eq!(p.splits.len(), 1);
        assert_eq!(q[p.splits[0]..].trim(), "SELECT 1");
    }

    #[test]
    fn trailing_commit_does_not_split() {
        let p = SqlPlan::of_query("BEGIN; SELECT 1; COMMIT;");
        assert!(p.splits.is_empty());
        assert!(p.ends_transaction);
    }

    #[test]
    fn begin_followed_by_statements_still_gets_the_tenant() {
        let p = SqlPlan::of_query("BEGIN; SELECT * FROM invoices; COMMIT");
        assert!(!p.opens_block && !p.begin_split);
        let only = SqlPlan::of_query("BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ");
        assert!(only.opens_block);
    }

    #[test]
    fn leading_begin_is_split_off_so_the_tenant_follows_it() {
        let q = "BEGIN ISOLATION LEVEL SERIALIZABLE; SET TRANSACTION READ ONLY; SELECT 1; COMMIT";
        let p = SqlPlan::of_query(q);
        assert!(p.begin_split);
        assert_eq!(q[p.splits[0]..].trim(), "SELECT 1; COMMIT");
        let alone = SqlPlan::of_query("BEGIN; ");
        assert!(alone.opens_block && !alone.begin_split && alone.splits.is_empty());
    }

    #[test]
    fn session_settings_are_noticed() {
        assert!(SqlPlan::of_query("SET search_path = custom").changes_session);
        assert!(!SqlPlan::of_query("SET LOCAL search_path = custom").changes_session);
        assert!(SqlPlan::of_statement("SELECT set_config('jit', 'off', false)").changes_session);
    }

    #[test]
    fn data_statements_plan_as_the_full_analysis_does() {
        for q in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
            "select 1",
            "  /* c */ WITH x AS (SELECT 1) SELECT * FROM x ;; ",
            "INSERT INTO t VALUES (1) RETURNING *",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "VALUES (1), (2)",
            "TABLE invoices",
            "SELECT set_config('search_path', 'x', false)",
            "SELECT pg_advisory_lock(1)",
            "SELECT 1 AS a INTO TEMP t",
            "SELECT 1 AS a INTO reports",
            "SELECT 'unterminated;",
        ] {
            assert!(SqlPlan::of_data_statement(q).is_some(), "{q}");
            assert_eq!(SqlPlan::of_query(q), SqlPlan::of_any_query(q), "{q}");
            assert_eq!(
                SqlPlan::of_statement(q),
                SqlPlan::of_any_statement(q),
                "{q}"
            );
        }
        for q in [
            "SELECT 1; COMMIT",
            "BEGIN",
            "SET TRANSACTION READ ONLY",
            "selects",
            "(SELECT 1)",
            "",
        ] {
            assert!(SqlPlan::of_data_statement(q).is_none(), "{q}");
        }
    }

    #[test]
    fn lone_vacuum_runs_without_transaction_block() {
        assert!(SqlPlan::of_query("VACUUM invoices").no_transaction_block);
        assert!(!SqlPlan::of_query("VACUUM invoices; SELECT 1").no_transaction_block);
    }
}
