//! The queue of replies a bound server still owes, in order, and who each belongs to.
//!
//! Every message pgtenant forwards or injects that PostgreSQL will answer gets an entry here.
//! Server replies are matched against the front entry: replies to the client's messages are
//! forwarded, replies to pgtenant's own (the tenant injection, parameter SETs) are swallowed,
//! and a reply that fits no entry is a desync, which ends the session rather than risk
//! handing one client's rows to another. This module decides nothing about transactions.

use std::collections::VecDeque;

/// What kind of reply sequence an entry waits for (protocol docs, "Extended Query" and
/// "Simple Query").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// ParseComplete.
    Parse,
    /// BindComplete.
    Bind,
    /// ParameterDescription, then RowDescription or NoData.
    DescribeStatement,
    /// RowDescription or NoData.
    DescribePortal,
    /// DataRow* / COPY, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// CloseComplete.
    Close,
    /// ReadyForQuery.
    Sync,
    /// Anything up to ReadyForQuery.
    Query,
    /// FunctionCallResponse, then ReadyForQuery.
    FunctionCall,
}

impl Reply {
    /// True for entries that end with ReadyForQuery.
    pub fn ends_with_ready(self) -> bool {
        matches!(self, Reply::Sync | Reply::Query | Reply::FunctionCall)
    }
}

/// Who a reply belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The client sent the message; its replies are forwarded.
    Client,
    /// pgtenant injected the message; its replies are swallowed.
    Proxy,
    /// A simple-Query piece of a client's query that pgtenant split: replies forwarded, but
    /// the ReadyForQuery is swallowed unless `last`.
    Piece { last: bool },
    /// Nothing was sent to the server; pgtenant itself answers with an empty message of this
    /// tag (ParseComplete, CloseComplete) when the entry reaches the front.
    Synthetic(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub reply: Reply,
    pub owner: Owner,
    /// For a Describe of a statement: the ParameterDescription has arrived.
    pub described_params: bool,
    /// An ErrorResponse arrived inside this entry (Query/FunctionCall).
    pub failed: bool,
    /// For a Parse: the id of the shared statement it prepares (0 for none).
    pub stmt: u64,
    /// For pgtenant's own Query: its rows are the client's session settings to keep.
    pub capture: bool,
    /// Order of the entry among all pushed (set by the queue).
    pub seq: u64,
    /// The error this entry draws stands for PostgreSQL's "cached plan must not change
    /// result type", and is reported exactly as PostgreSQL words it (drivers recognise it by
    /// its routine field and re-prepare).
    pub stale_plan: bool,
}

impl Expected {
    pub fn client(reply: Reply) -> Expected {
        Expected {
            reply,
            owner: Owner::Client,
            described_params: false,
            failed: false,
            stmt: 0,
            capture: false,
            stale_plan: false,
            seq: 0,
        }
    }

    pub fn proxy(reply: Reply) -> Expected {
        Expected {
            owner: Owner::Proxy,
            ..Expected::client(reply)
        }
    }

    /// pgtenant's query that reads the client's session settings back (and resets them).
    pub fn capture() -> Expected {
        Expected {
            capture: true,
            ..Expected::proxy(Reply::Query)
        }
    }

    pub fn synthetic(tag: u8) -> Expected {
        Expected {
            owner: Owner::Synthetic(tag),
            ..Expected::client(Reply::Parse)
        }
    }

    pub fn with_stmt(mut self, stmt: u64) -> Expected {
        self.stmt = stmt;
        self
    }

    pub fn piece(last: bool) -> Expected {
        Expected {
            owner: Owner::Piece { last },
            ..Expected::client(Reply::Query)
        }
    }
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it to the client.
    Forward,
    /// Drop it: it answers a message pgtenant injected.
    Swallow,
    /// It does not fit what the server owes: the connection is out of step.
    Desync,
}

/// Outcome of feeding one message to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub verdict: Verdict,
    /// The entry this message completed, if any.
    pub completed: Option<Expected>,
    /// An ErrorResponse hit an entry pgtenant injected.
    pub proxy_error: bool,
}

/// Replies still owed by the bound server.
#[derive(Debug, Default)]
pub struct ExpectQueue {
    q: VecDeque<Expected>,
    next_seq: u64,
    /// Entries dropped because PostgreSQL skipped their messages after an error: the
    /// session must undo what it assumed they would do (a statement being prepared).
    skipped: Vec<Expected>,
    /// An extended-protocol message failed and no Sync was queued behind it: PostgreSQL
    /// ignores every message up to the client's next Sync, including those the client sends
    /// after the error already came back (protocol docs, "Extended Query").
    skipping_to_sync: bool,
}

impl ExpectQueue {
    /// Queues the reply a message just sent will draw. While the server skips to Sync, only
    /// a Sync draws one: the other entries are dropped as if the error had arrived after
    /// them, so the outcome does not depend on whether the client's message or the server's
    /// error reached pgtenant first.
    ///
    /// Every message gets its `seq`, a skipped one too (the session tells its own messages
    /// apart by it).
    pub fn push(&mut self, mut e: Expected) {
        e.seq = self.next_seq;
        self.next_seq += 1;
        if self.skipping_to_sync {
            if e.reply != Reply::Sync {
                if e.stmt != 0 {
                    self.skipped.push(e);
                }
                return;
            }
            self.skipping_to_sync = false;
        }
        self.q.push_back(e);
    }

    /// Whether the latest Parse of statement `stmt` still unanswered was sent before a Sync
    /// that is also queued: the next message belongs to a later batch, and whether that
    /// Parse is skipped (an error earlier in its batch) is not known yet.
    pub fn parse_awaits_earlier_sync(&self, stmt: u64) -> bool {
        self.q
            .iter()
            .rposition(|e| e.reply == Reply::Parse && e.stmt == stmt)
            .is_some_and(|at| self.q.iter().skip(at + 1).any(|e| e.reply == Reply::Sync))
    }

    /// Whether a Parse of statement `stmt` is still unanswered.
    pub fn parse_pending(&self, stmt: u64) -> bool {
        self.q
            .iter()
            .any(|e| e.reply == Reply::Parse && e.stmt == stmt)
    }

    /// Entries with a statement id skipped since the last call.
    pub fn take_skipped(&mut self) -> Vec<Expected> {
        std::mem::take(&mut self.skipped)
    }

    /// Whether any entries were skipped since the last `take_skipped`.
    pub fn has_skipped(&self) -> bool {
        !self.skipped.is_empty()
    }

    /// The `seq` the next pushed entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Drops the Sync entries pushed after `after` and before `before`: PostgreSQL ignores
    /// a Sync that arrives while it is copying in (protocol docs, "COPY Operations").
    pub fn drop_syncs_between(&mut self, after: u64, before: u64) {
        self.q
            .retain(|e| !(e.reply == Reply::Sync && e.seq > after && e.seq < before));
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// The server owes nothing and is not in the middle of the client's batch: the point
    /// where it may be returned to the pool.
    pub fn settled(&self) -> bool {
        self.q.is_empty() && !self.skipping_to_sync
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn last_mut(&mut self) -> Option<&mut Expected> {
        self.q.back_mut()
    }

    pub fn front(&self) -> Option<&Expected> {
        self.q.front()
    }

    pub fn clear(&mut self) {
        self.q.clear();
        self.skipping_to_sync = false;
    }

    /// The server is ignoring messages until the client's next Sync: it is in the middle of
    /// the client's batch, whatever the queue holds.
    pub fn skipping_to_sync(&self) -> bool {
        self.skipping_to_sync
    }

    /// True when nothing is outstanding but pgtenant's own parameter SETs sent at checkout
    /// (which leave the server idle, so its state is known).
    pub fn only_proxy_setup(&self) -> bool {
        self.q
            .iter()
            .all(|e| e.owner == Owner::Proxy && e.reply == Reply::Query)
    }

    /// True when a ReadyForQuery-ending entry is queued for the client (a Query, Sync or
    /// FunctionCall still to be answered).
    pub fn owes_ready(&self) -> bool {
        self.q.iter().any(|e| e.reply.ends_with_ready())
    }

    fn verdict_for(owner: Owner) -> Verdict {
        match owner {
            Owner::Proxy => Verdict::Swallow,
            Owner::Client | Owner::Piece { .. } => Verdict::Forward,
            // Never reaches the server; `take_synthetic` answers it.
            Owner::Synthetic(_) => Verdict::Desync,
        }
    }

    /// Pops a synthetic entry at the front and returns the tag to answer with.
    pub fn take_synthetic(&mut self) -> Option<u8> {
        match self.q.front() {
            Some(Expected {
                owner: Owner::Synthetic(tag),
                ..
            }) => {
                let tag = *tag;
                self.q.pop_front();
                Some(tag)
            }
            _ => None,
        }
    }

    /// Matches one server message (by tag) against the front entry.
    pub fn on_message(&mut self, tag: u8) -> Step {
        let step = |verdict, completed| Step {
            verdict,
            completed,
            proxy_error: false,
        };
        // Asynchronous messages may arrive at any time (protocol docs, "Asynchronous
        // Operations"); they belong to whoever owns the front entry, or to the client when
        // nothing is outstanding.
        if matches!(tag, b'N' | b'A' | b'S') {
            let v = self
                .q
                .front()
                .map_or(Verdict::Forward, |e| Self::verdict_for(e.owner));
            return step(v, None);
        }
        let Some(front) = self.q.front_mut() else {
            return step(Verdict::Desync, None);
        };
        let owner = front.owner;
        let v = Self::verdict_for(owner);
        match (front.reply, tag) {
            (_, b'E') => {
                let proxy_error = owner == Owner::Proxy;
                if front.reply.ends_with_ready() {
                    // Query, Sync or FunctionCall: the ReadyForQuery still follows.
                    front.failed = true;
                    return Step {
                        verdict: v,
                        completed: None,
                        proxy_error,
                    };
                }
                // Extended protocol: PostgreSQL skips every message up to the next Sync
                // (protocol docs, "Extended Query"), so their replies never come.
                let failed = self.q.pop_front();
                while let Some(e) = self.q.front() {
                    if e.reply == Reply::Sync {
                        break;
                    }
                    if let Some(e) = self.q.pop_front().filter(|e| e.stmt != 0) {
                        self.skipped.push(e);
                    }
                }
                match self.q.front_mut() {
                    Some(sync) => sync.failed = true,
                    // The client has not sent that Sync yet.
                    None => self.skipping_to_sync = true,
                }
                Step {
                    verdict: v,
                    completed: failed,
                    proxy_error,
                }
            }
            (Reply::Parse, b'1')
            | (Reply::Bind, b'2')
            | (Reply::Close, b'3')
            | (Reply::DescribePortal, b'T' | b'n') => step(v, self.q.pop_front()),
            (Reply::DescribeStatement, b't') if !front.described_params => {
                front.described_params = true;
                step(v, None)
            }
            (Reply::DescribeStatement, b'T' | b'n') if front.described_params => {
                step(v, self.q.pop_front())
            }
            (Reply::Execute, b'D' | b'G' | b'H' | b'd' | b'c') => step(v, None),
            (Reply::Execute, b'C' | b'I' | b's') => step(v, self.q.pop_front()),
            (Reply::Sync | Reply::Query | Reply::FunctionCall, b'Z') => step(v, self.q.pop_front()),
            (Reply::Query, b'T' | b'D' | b'C' | b'I' | b'G' | b'H' | b'd' | b'c') => step(v, None),
            (Reply::FunctionCall, b'V') => step(v, None),
            _ => step(Verdict::Desync, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_replies_are_swallowed_and_client_replies_forwarded() {
        let mut q = ExpectQueue::default();
        q.push(Expected::proxy(Reply::Bind));
        q.push(Expected::proxy(Reply::Execute));
        q.push(Expected::client(Reply::Query));
        for tag in [b'2', b'D', b'C'] {
            assert_eq!(q.on_message(tag).verdict, Verdict::Swallow);
        }
        for tag in [b'T', b'D', b'C'] {
            assert_eq!(q.on_message(tag).verdict, Verdict::Forward);
        }
        let z = q.on_message(b'Z');
        assert_eq!(z.verdict, Verdict::Forward);
        assert!(q.is_empty());
    }

    #[test]
    fn error_mid_batch_skips_to_sync() {
        let mut q = ExpectQueue::default();
        q.push(Expected::client(Reply::Parse));
        q.push(Expected::client(Reply::Bind));
        q.push(Expected::client(Reply::Execute));
        q.push(Expected::client(Reply::Sync));
        q.push(Expected::client(Reply::Query));
        assert_eq!(q.on_message(b'E').verdict, Verdict::Forward);
        assert_eq!(q.len(), 2);
        let z = q.on_message(b'Z');
        assert!(z.completed.is_some_and(|e| e.failed));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn messages_sent_after_an_error_came_back_expect_nothing_until_sync() {
        let mut q = ExpectQueue::default();
        q.push(Expected::client(Reply::Bind));
        q.push(Expected::client(Reply::Execute));
        assert_eq!(q.on_message(b'2').verdict, Verdict::Forward);
        assert_eq!(q.on_message(b'E').verdict, Verdict::Forward);
        assert!(q.skipping_to_sync());
        // The rest of the client's batch, sent after the error reached pgtenant.
        q.push(Expected::client(Reply::Parse).with_stmt(7));
        q.push(Expected::client(Reply::Bind));
        q.push(Expected::synthetic(b'3'));
        q.push(Expected::client(Reply::Execute));
        assert!(q.is_empty());
        assert_eq!(q.take_skipped().len(), 1);
        q.push(Expected::client(Reply::Sync));
        assert!(!q.skipping_to_sync());
        q.push(Expected::client(Reply::Parse));
        let z = q.on_message(b'Z');
        assert_eq!(z.verdict, Verdict::Forward);
        assert_eq!(z.completed.map(|e| e.reply), Some(Reply::Sync));
        assert_eq!(q.on_message(b'1').verdict, Verdict::Forward);
        assert!(q.is_empty());
    }

    #[test]
    fn a_parse_before_a_queued_sync_is_unsettled_for_the_next_batch_only() {
        let mut q = ExpectQueue::default();
        q.push(Expected::proxy(Reply::Parse).with_stmt(7));
        q.push(Expected::client(Reply::Bind).with_stmt(7));
        // Same batch: skipped together with the Bind if at all.
        assert!(!q.parse_awaits_earlier_sync(7));
        q.push(Expected::client(Reply::Sync));
        assert!(q.parse_awaits_earlier_sync(7));
        assert!(!q.parse_awaits_earlier_sync(8));
        // Prepared again in the next batch: that Parse decides.
        q.push(Expected::proxy(Reply::Parse).with_stmt(7));
        assert!(!q.parse_awaits_earlier_sync(7));
        assert!(q.parse_pending(7));
    }

    #[test]
    fn a_parse_skipped_after_an_error_is_reported_with_its_position() {
        let mut q = ExpectQueue::default();
        q.push(Expected::client(Reply::Execute));
        q.push(Expected::client(Reply::Parse).with_stmt(7));
        q.push(Expected::client(Reply::Sync));
        assert_eq!(q.on_message(b'E').verdict, Verdict::Forward);
        let skipped = q.take_skipped();
        assert_eq!(skipped.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
        assert!(!q.parse_pending(7));
        // Pushed while the server skips: numbered all the same.
        q.push(Expected::client(Reply::Execute));
        q.on_message(b'Z');
        assert_eq!(q.on_message(b'E').verdict, Verdict::Forward);
        q.push(Expected::client(Reply::Parse).with_stmt(9));
        let skipped = q.take_skipped();
        assert_eq!(skipped.iter().map(|e| e.seq).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn error_in_injected_message_is_reported() {
        let mut q = ExpectQueue::default();
        q.push(Expected::proxy(Reply::Bind));
        q.push(Expected::proxy(Reply::Execute));
        q.push(Expected::client(Reply::Bind));
        q.push(Expected::client(Reply::Sync));
        let s = q.on_message(b'E');
        assert!(s.proxy_error);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn reply_without_entry_is_desync() {
        let mut q = ExpectQueue::default();
        assert_eq!(q.on_message(b'D').verdict, Verdict::Desync);
        q.push(Expected::client(Reply::Bind));
        assert_eq!(q.on_message(b'1').verdict, Verdict::Desync);
    }

    #[test]
    fn notices_follow_the_owner_of_the_front_entry() {
        let mut q = ExpectQueue::default();
        assert_eq!(q.on_message(b'N').verdict, Verdict::Forward);
        q.push(Expected::proxy(Reply::Query));
        assert_eq!(q.on_message(b'S').verdict, Verdict::Swallow);
    }

    #[test]
    fn describe_statement_needs_both_messages() {
        let mut q = ExpectQueue::default();
        q.push(Expected::client(Reply::DescribeStatement));
        assert!(q.on_message(b't').completed.is_none());
        assert!(q.on_message(b'T').completed.is_some());
        assert!(q.is_empty());
    }
}
