//! TEMP stub
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    Begin,
    Commit { chain: bool },
    Rollback { chain: bool },
    PrepareTransaction,
    NoTransactionBlock,
    Deallocate,
    Discard,
    Empty,
    Other,
}
impl StatementKind {
    pub fn ends_transaction(&self) -> bool {
        matches!(
            self,
            StatementKind::Commit { .. }
                | StatementKind::Rollback { .. }
                | StatementKind::PrepareTransaction
        )
    }
}
pub struct Statement<'a> {
    pub text: &'a str,
    pub start: usize,
    pub end: usize,
    pub kind: StatementKind,
}
pub fn statements(sql: &str) -> std::vec::IntoIter<Statement<'_>> {
    vec![Statement {
        text: sql,
        start: 0,
        end: sql.len(),
        kind: StatementKind::Other,
    }]
    .into_iter()
}
pub fn classify(_sql: &str) -> StatementKind {
    StatementKind::Other
}
