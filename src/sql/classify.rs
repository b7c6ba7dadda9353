//! Per-statement state fed token by token: where the statement may end (parenthesis depth, the
//! `BEGIN ATOMIC … END` body of an SQL-standard routine) and what kind of statement it is, read
//! from its leading keywords. It never looks past what deciding the kind requires, so the common
//! `SELECT`/`INSERT`/`UPDATE`/`DELETE` costs one keyword lookup.

use super::StatementKind;
use super::lexer::{Token, TokenKind};

/// The keywords the classification rules mention. Anything else is an ordinary word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kw {
    Abort,
    Add,
    All,
    Alter,
    And,
    As,
    Atomic,
    Begin,
    Case,
    Chain,
    Cluster,
    Commit,
    Concurrently,
    Create,
    Database,
    Deallocate,
    Detach,
    Discard,
    Drop,
    End,
    Function,
    Index,
    No,
    Or,
    Plans,
    Prepare,
    Prepared,
    Procedure,
    Publication,
    Refresh,
    Reindex,
    Replace,
    Rollback,
    Schema,
    Sequences,
    Set,
    Start,
    Subscription,
    System,
    Table,
    Tablespace,
    Temp,
    Temporary,
    To,
    Transaction,
    Unique,
    Vacuum,
    Verbose,
    Work,
}

/// Length of the longest keyword in [`Kw`] ("concurrently", "subscription").
const LONGEST_KEYWORD: usize = 12;

/// Keywords are matched ASCII case-insensitively, like PostgreSQL's keyword lookup.
pub(super) fn keyword(word: &[u8]) -> Option<Kw> {
    if !(2..=LONGEST_KEYWORD).contains(&word.len()) {
        return None;
    }
    let mut buf = [0u8; LONGEST_KEYWORD];
    let lower = &mut buf[..word.len()];
    lower.copy_from_slice(word);
    lower.make_ascii_lowercase();
    Some(match &*lower {
        b"abort" => Kw::Abort,
        b"add" => Kw::Add,
        b"all" => Kw::All,
        b"alter" => Kw::Alter,
        b"and" => Kw::And,
        b"as" => Kw::As,
        b"atomic" => Kw::Atomic,
        b"begin" => Kw::Begin,
        b"case" => Kw::Case,
        b"chain" => Kw::Chain,
        b"cluster" => Kw::Cluster,
        b"commit" => Kw::Commit,
        b"concurrently" => Kw::Concurrently,
        b"create" => Kw::Create,
        b"database" => Kw::Database,
        b"deallocate" => Kw::Deallocate,
        b"detach" => Kw::Detach,
        b"discard" => Kw::Discard,
        b"drop" => Kw::Drop,
        b"end" => Kw::End,
        b"function" => Kw::Function,
        b"index" => Kw::Index,
        b"no" => Kw::No,
        b"or" => Kw::Or,
        b"plans" => Kw::Plans,
        b"prepare" => Kw::Prepare,
        b"prepared" => Kw::Prepared,
        b"procedure" => Kw::Procedure,
        b"publication" => Kw::Publication,
        b"refresh" => Kw::Refresh,
        b"reindex" => Kw::Reindex,
        b"replace" => Kw::Replace,
        b"rollback" => Kw::Rollback,
        b"schema" => Kw::Schema,
        b"sequences" => Kw::Sequences,
        b"set" => Kw::Set,
        b"start" => Kw::Start,
        b"subscription" => Kw::Subscription,
        b"system" => Kw::System,
        b"table" => Kw::Table,
        b"tablespace" => Kw::Tablespace,
        b"temp" => Kw::Temp,
        b"temporary" => Kw::Temporary,
        b"to" => Kw::To,
        b"transaction" => Kw::Transaction,
        b"unique" => Kw::Unique,
        b"vacuum" => Kw::Vacuum,
        b"verbose" => Kw::Verbose,
        b"work" => Kw::Work,
        _ => return None,
    })
}

/// One token at parenthesis depth 0; a parenthesised group counts as a single item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Key(Kw),
    /// Any other unquoted word.
    Word,
    QuotedIdent,
    /// An `Sconst`: `'…'`, `E'…'`, `U&'…'`, `$$…$$`.
    String,
    /// `( … )`; `concurrently` records a `CONCURRENTLY` option inside a `REINDEX` option list.
    Group {
        concurrently: bool,
    },
    Other,
}

/// The most leading items any rule needs (`ALTER DATABASE d SET TABLESPACE` is 5).
const MAX_ITEMS: usize = 6;

enum Decision {
    /// The items so far could still start several kinds.
    NeedMore,
    Kind(StatementKind),
    /// `CREATE [OR REPLACE] FUNCTION|PROCEDURE`: watch for a `BEGIN ATOMIC … END` body.
    Routine,
    /// `ALTER TABLE`: watch for `DETACH PARTITION … CONCURRENTLY`.
    AlterTable,
}

/// Decides the kind from the leading items. `ended` says the statement has no further items;
/// otherwise a kind is returned only once more items could not change it.
fn decide(items: &[Item], ended: bool) -> Decision {
    use Item::Key;
    use Kw::*;
    let more = !ended;
    match items {
        [] if more => Decision::NeedMore,
        [Key(Begin), ..] => Decision::Kind(StatementKind::Begin),
        [Key(Start)] if more => Decision::NeedMore,
        [Key(Start), Key(Transaction), ..] => Decision::Kind(StatementKind::Begin),
        [Key(Commit | Rollback), Key(Prepared), ..] => no_transaction_block(),
        [Key(Commit | End), rest @ ..] => transaction_end(rest, more, false),
        [Key(Rollback | Abort), rest @ ..] => transaction_end(rest, more, true),
        [Key(Prepare)] | [Key(Prepare), Key(Transaction)] if more => Decision::NeedMore,
        [Key(Prepare), Key(Transaction), Item::String, ..] => {
            Decision::Kind(StatementKind::PrepareTransaction)
        }
        [Key(Vacuum), ..] => no_transaction_block(),
        [Key(Create), rest @ ..] => create(rest, more),
        [Key(Drop), rest @ ..] => drop(rest, more),
        [Key(Alter), rest @ ..] => alter(rest, more),
        [Key(Reindex), rest @ ..] => reindex(rest, more),
        [Key(Cluster), rest @ ..] => cluster(rest, more),
        [Key(Discard), rest @ ..] => discard(rest, more),
        [Key(Deallocate), ..] => Decision::Kind(StatementKind::Deallocate),
        _ => other(),
    }
}

fn no_transaction_block() -> Decision {
    Decision::Kind(StatementKind::NoTransactionBlock)
}

fn other() -> Decision {
    Decision::Kind(StatementKind::Other)
}

/// `COMMIT|END|ROLLBACK|ABORT [WORK|TRANSACTION] [AND [NO] CHAIN]`, and `ROLLBACK … TO [SAVEPOINT]`
/// which stays inside the transaction.
fn transaction_end(rest: &[Item], more: bool, rollback: bool) -> Decision {
    use Item::Key;
    use Kw::*;
    let rest = match rest {
        [Key(Work | Transaction), rest @ ..] => rest,
        rest => rest,
    };
    let chain = match rest {
        [] | [Key(And)] | [Key(And), Key(No)] if more => return Decision::NeedMore,
        [Key(To), ..] if rollback => return other(),
        [Key(And), Key(Chain), ..] => true,
        _ => false,
    };
    Decision::Kind(if rollback {
        StatementKind::Rollback { chain }
    } else {
        StatementKind::Commit { chain }
    })
}

fn create(rest: &[Item], more: bool) -> Decision {
    use Item::Key;
    use Kw::*;
    match rest {
        []
        | [Key(Unique)]
        | [Key(Unique), Key(Index)]
        | [Key(Index)]
        | [Key(Or)]
        | [Key(Or), Key(Replace)]
            if more =>
        {
            Decision::NeedMore
        }
        [Key(Database | Tablespace | Subscription), ..]
        | [Key(Index), Key(Concurrently), ..]
        | [Key(Unique), Key(Index), Key(Concurrently), ..] => no_transaction_block(),
        [Key(Function | Procedure), ..]
        | [Key(Or), Key(Replace), Key(Function | Procedure), ..] => Decision::Routine,
        _ => other(),
    }
}

fn drop(rest: &[Item], more: bool) -> Decision {
    use Item::Key;
    use Kw::*;
    match rest {
        [] | [Key(Index)] if more => Decision::NeedMore,
        // DROP SUBSCRIPTION refuses a transaction block only when the subscription has a
        // replication slot; the proxy cannot know, so it is treated as refusing always.
        [Key(Database | Tablespace | Subscription), ..] | [Key(Index), Key(Concurrently), ..] => {
            no_transaction_block()
        }
        _ => other(),
    }
}

fn alter(rest: &[Item], more: bool) -> Decision {
    use Item::Key;
    use Kw::*;
    match rest {
        [] if more => Decision::NeedMore,
        [Key(System), ..] => no_transaction_block(),
        [Key(Table), ..] => Decision::AlterTable,
        [Key(Database | Subscription)]
        | [Key(Database | Subscription), _]
        | [Key(Database | Subscription), _, Key(Set)]
            if more =>
        {
            Decision::NeedMore
        }
        // Database and subscription names are never schema-qualified: one item.
        [Key(Database), _, Key(Set), Key(Tablespace), ..] => no_transaction_block(),
        // REFRESH PUBLICATION always; SET/ADD/DROP PUBLICATION unless `refresh = false`, which
        // is treated as refusing too (sending such a statement alone is always safe).
        [Key(Subscription), _, Key(Refresh | Add | Drop), ..]
        | [Key(Subscription), _, Key(Set), Key(Publication), ..] => no_transaction_block(),
        _ => other(),
    }
}

/// `REINDEX [(options)] {INDEX|TABLE|SCHEMA|DATABASE|SYSTEM} [CONCURRENTLY] name`.
fn reindex(rest: &[Item], more: bool) -> Decision {
    use Item::Key;
    use Kw::*;
    let rest = match rest {
        [Item::Group { concurrently: true }, ..] => return no_transaction_block(),
        [Item::Group { .. }, rest @ ..] => rest,
        rest => rest,
    };
    match rest {
        [] | [Key(Index | Table)] if more => Decision::NeedMore,
        [Key(Schema | Database | System), ..] | [Key(Index | Table), Key(Concurrently), ..] => {
            no_transaction_block()
        }
        _ => other(),
    }
}

/// `CLUSTER [VERBOSE]` or `CLUSTER (options)` with no table name reclusters every table and
/// refuses a transaction block.
fn cluster(rest: &[Item], more: bool) -> Decision {
    use Item::Key;
    match rest {
        [] | [Key(Kw::Verbose)] | [Item::Group { .. }] if more => Decision::NeedMore,
        [] | [Key(Kw::Verbose)] | [Item::Group { .. }] => no_transaction_block(),
        _ => other(),
    }
}

fn discard(rest: &[Item], more: bool) -> Decision {
    use Item::Key;
    use Kw::*;
    match rest {
        [] if more => Decision::NeedMore,
        [Key(All), ..] => no_transaction_block(),
        [Key(Plans | Sequences | Temp | Temporary), ..] => Decision::Kind(StatementKind::Discard),
        _ => other(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Collecting leading items until [`decide`] knows the kind.
    Leading,
    /// The kind is known; only parentheses still matter.
    Decided(StatementKind),
    /// See [`Decision::Routine`].
    Routine,
    /// See [`Decision::AlterTable`].
    AlterTable,
}

/// The token before the current one, as far as routine bodies care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prev {
    Begin,
    Atomic,
    As,
    Dot,
    Semicolon,
    Other,
}

/// Scanning state of one statement.
#[derive(Clone, Debug)]
pub(super) struct StatementScanner {
    mode: Mode,
    items: [Item; MAX_ITEMS],
    len: usize,
    any_token: bool,
    depth: u32,
    group_concurrently: bool,
    /// Open `BEGIN ATOMIC` bodies.
    atomic_depth: u32,
    /// Open `CASE` expressions in the current statement of an atomic body.
    case_depth: u32,
    prev: Prev,
    detach: bool,
    last_is_concurrently: bool,
}

impl StatementScanner {
    pub fn new() -> Self {
        StatementScanner {
            mode: Mode::Leading,
            items: [Item::Other; MAX_ITEMS],
            len: 0,
            any_token: false,
            depth: 0,
            group_concurrently: false,
            atomic_depth: 0,
            case_depth: 0,
            prev: Prev::Other,
            detach: false,
            last_is_concurrently: false,
        }
    }

    /// Whether a `;` here ends the statement. Inside parentheses it cannot (the rule actions of
    /// `CREATE RULE … DO (a; b)`), nor inside a `BEGIN ATOMIC … END` routine body.
    pub fn at_top_level(&self) -> bool {
        self.depth == 0 && self.atomic_depth == 0
    }

    /// Feeds the next token of the statement (`sql` is the whole input the token indexes).
    pub fn feed(&mut self, token: Token, sql: &[u8]) {
        self.any_token = true;
        match token.kind {
            TokenKind::Word => return self.word(&sql[token.start..token.end]),
            TokenKind::LParen => {
                if self.depth == 0 {
                    self.group_concurrently = false;
                }
                self.depth = self.depth.saturating_add(1);
            }
            TokenKind::RParen => match self.depth {
                // Unbalanced: a syntax error in PostgreSQL; keep scanning at depth 0.
                0 => self.top_level_item(Item::Other),
                1 => {
                    self.depth = 0;
                    self.top_level_item(Item::Group {
                        concurrently: self.group_concurrently,
                    });
                }
                _ => self.depth -= 1,
            },
            kind if self.depth == 0 => self.top_level_item(match kind {
                TokenKind::QuotedIdent => Item::QuotedIdent,
                TokenKind::String => Item::String,
                _ => Item::Other,
            }),
            _ => {}
        }
        self.prev = match token.kind {
            TokenKind::Dot => Prev::Dot,
            TokenKind::Semicolon => {
                // Not a statement end, so inside parentheses or an atomic body, where no
                // CASE spans statements.
                self.case_depth = 0;
                Prev::Semicolon
            }
            _ => Prev::Other,
        };
    }

    /// The kind, as soon as the rest of the statement cannot change it.
    pub fn decided(&self) -> Option<StatementKind> {
        match self.mode {
            Mode::Decided(kind) => Some(kind),
            Mode::Routine => Some(StatementKind::Other),
            Mode::Leading | Mode::AlterTable => None,
        }
    }

    /// The kind of the statement, given that every token has been fed.
    pub fn finish(&self) -> StatementKind {
        if !self.any_token {
            return StatementKind::Empty;
        }
        match self.mode {
            Mode::Leading => match decide(&self.items[..self.len], true) {
                Decision::Kind(kind) => kind,
                _ => StatementKind::Other,
            },
            Mode::Decided(kind) => kind,
            Mode::Routine => StatementKind::Other,
            Mode::AlterTable if self.detach && self.last_is_concurrently => {
                StatementKind::NoTransactionBlock
            }
            Mode::AlterTable => StatementKind::Other,
        }
    }

    fn word(&mut self, word: &[u8]) {
        match self.mode {
            Mode::Decided(_) => {}
            Mode::Leading | Mode::AlterTable if self.depth == 0 => {
                self.top_level_item(keyword(word).map_or(Item::Word, Item::Key));
            }
            Mode::Leading => {
                if self.items[0] == Item::Key(Kw::Reindex)
                    && keyword(word) == Some(Kw::Concurrently)
                {
                    self.group_concurrently = true;
                }
            }
            Mode::AlterTable => {}
            Mode::Routine => self.routine_word(keyword(word)),
        }
    }

    /// Tracks `BEGIN ATOMIC … END`. The body is a list of `;`-terminated statements, none of which
    /// can start with `END` (PostgreSQL's grammar keeps `END` out of routine bodies), so an `END`
    /// right after `;` or `ATOMIC` closes the body. Any other unquoted `END` closes a `CASE` (also
    /// reserved), or is a column label (`SELECT 1 end`, `AS end`, `t.end`). `BEGIN` without
    /// `ATOMIC` opens nothing: it is an ordinary name there (`CREATE FUNCTION begin()`).
    fn routine_word(&mut self, kw: Option<Kw>) {
        let prev = self.prev;
        self.prev = match kw {
            Some(Kw::Begin) => Prev::Begin,
            Some(Kw::Atomic) => Prev::Atomic,
            Some(Kw::As) => Prev::As,
            _ => Prev::Other,
        };
        let label = matches!(prev, Prev::As | Prev::Dot);
        match kw {
            Some(Kw::Atomic) if prev == Prev::Begin && self.depth == 0 => {
                self.atomic_depth = self.atomic_depth.saturating_add(1);
                self.case_depth = 0;
            }
            Some(Kw::Case) if self.atomic_depth > 0 && !label => {
                self.case_depth = self.case_depth.saturating_add(1);
            }
            Some(Kw::End) if self.atomic_depth > 0 => {
                if matches!(prev, Prev::Semicolon | Prev::Atomic) {
                    self.atomic_depth -= 1;
                    self.case_depth = 0;
                } else if self.case_depth > 0 && !label {
                    self.case_depth -= 1;
                }
            }
            _ => {}
        }
    }

    fn top_level_item(&mut self, item: Item) {
        match self.mode {
            Mode::Leading => {
                self.items[self.len] = item;
                self.len += 1;
                self.mode = match decide(&self.items[..self.len], false) {
                    Decision::NeedMore if self.len == MAX_ITEMS => {
                        Mode::Decided(StatementKind::Other)
                    }
                    Decision::NeedMore => Mode::Leading,
                    Decision::Kind(kind) => Mode::Decided(kind),
                    Decision::Routine => Mode::Routine,
                    Decision::AlterTable => Mode::AlterTable,
                };
            }
            Mode::AlterTable => {
                self.detach |= item == Item::Key(Kw::Detach);
                self.last_is_concurrently = item == Item::Key(Kw::Concurrently);
            }
            Mode::Decided(_) | Mode::Routine => {}
        }
    }
}
