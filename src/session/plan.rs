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
    /// The first statement opens a transaction block or sets its characteristics (`BEGIN
    /// ISOLATION LEVEL …`, `SET TRANSACTION …`): nothing before it may take a snapshot. Alone,
    /// it gets no tenant (the next statement does); followed by more statements in the same
    /// query, the tenant is set before it with a snapshot-free `SET LOCAL`.
    pub opens_block: bool,
    /// Some statement may change session-level settings (`SET`, `RESET`, `DISCARD`,
    /// `set_config`): the server must be reset before another client uses it.
    pub changes_session: bool,
    /// Some statement uses a feature that needs a dedicated server session (LISTEN,
    /// session advisory locks, WITH HOLD cursors, temporary tables, SQL PREPARE).
    pub needs_session: Option<&'static str>,
    /// Byte offsets just after each transaction-ending statement that is followed by more
    /// statements: the query is split there so that each part gets the tenant.
    pub splits: Vec<usize>,
}

impl SqlPlan {
    pub fn of_query(text: &str) -> SqlPlan {
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
            plan.note_effects(text);
            return plan;
        }
        let mut plan = SqlPlan {
            statements: shape.statements,
            opens_block: opens_block(shape.first, text),
            ..SqlPlan::default()
        };
        plan.note_effects(text);
        for stmt in sql::statements(text) {
            plan.note(&stmt.kind);
        }
        if shape.splits > 0 {
            plan.splits = sql::segments(text).map(|seg| seg.end).collect();
            // The last segment runs to the end of the text: not a split point.
            plan.splits.pop();
        }
        plan
    }

    pub fn of_statement(text: &str) -> SqlPlan {
        let kind = sql::classify(text);
        let mut plan = SqlPlan {
            statements: usize::from(kind != StatementKind::Empty),
            no_transaction_block: kind == StatementKind::NoTransactionBlock,
            opens_block: opens_block(kind, text),
            ..SqlPlan::default()
        };
        plan.note(&kind);
        plan.note_effects(text);
        plan
    }

    fn note_effects(&mut self, text: &str) {
        let fx = sql::session_effects(text);
        self.changes_session = fx.changes_settings;
        self.needs_session = fx.needs_session;
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
    fn session_settings_are_noticed() {
        assert!(SqlPlan::of_query("SET search_path = custom").changes_session);
        assert!(!SqlPlan::of_query("SET LOCAL search_path = custom").changes_session);
        assert!(SqlPlan::of_statement("SELECT set_config('jit', 'off', false)").changes_session);
    }

    #[test]
    fn lone_vacuum_runs_without_transaction_block() {
        assert!(SqlPlan::of_query("VACUUM invoices").no_transaction_block);
        assert!(!SqlPlan::of_query("VACUUM invoices; SELECT 1").no_transaction_block);
    }
}
