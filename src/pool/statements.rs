//! Server-side names for clients' prepared statements, shared by all clients of one pool.
//!
//! A client's named statement (`Parse` with a name) may run on any server of the pool, and
//! two clients may use the same name for different queries. Each distinct (query text,
//! parameter types) gets one pgtenant name, `pgt_<n>`, prepared lazily on each server that
//! needs it; clients with the same query share it. Names come from a counter, not a hash, so
//! two different queries can never share a name. This module only names statements; it does
//! not know which server has which.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use crate::protocol;

/// One distinct statement and the Parse message that prepares it under pgtenant's name.
#[derive(Debug)]
pub struct StmtDef {
    pub id: u64,
    pub name: String,
    pub parse: Bytes,
}

/// Distinct statements remembered before unused ones are forgotten.
const MAX_REGISTERED: usize = 50_000;

/// The server-side name of shared statement `id`.
pub fn server_name(id: u64) -> String {
    format!("pgt_{id}")
}

#[derive(Debug, Default)]
pub struct StatementRegistry {
    next: AtomicU64,
    by_body: Mutex<HashMap<Bytes, Arc<StmtDef>>>,
}

impl StatementRegistry {
    /// The shared definition for a Parse whose payload after the statement name is `body`
    /// (query text, NUL, parameter type list).
    pub fn register(&self, body: &[u8]) -> Arc<StmtDef> {
        let mut map = self.by_body.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(def) = map.get(body) {
            return Arc::clone(def);
        }
        if map.len() >= MAX_REGISTERED {
            // Forget statements no client holds any more (servers close theirs through
            // their own LRU; an id is never reused), so distinct query texts cannot grow
            // this map without bound.
            map.retain(|_, def| Arc::strong_count(def) > 1);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let name = server_name(id);
        let mut parse = BytesMut::with_capacity(body.len() + name.len() + 6);
        protocol::put_message(&mut parse, b'P', |b| {
            protocol::put_cstr(b, name.as_bytes());
            b.extend_from_slice(body);
        });
        let def = Arc::new(StmtDef {
            id,
            name,
            parse: parse.freeze(),
        });
        map.insert(Bytes::copy_from_slice(body), Arc::clone(&def));
        def
    }

    pub fn len(&self) -> usize {
        self.by_body.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_query_shares_a_name_and_different_queries_never_do() {
        let r = StatementRegistry::default();
        let a = r.register(b"SELECT 1\0\0\0");
        let b = r.register(b"SELECT 1\0\0\0");
        let c = r.register(b"SELECT 2\0\0\0");
        assert_eq!(a.id, b.id);
        assert_ne!(a.name, c.name);
    }

    #[test]
    fn parse_message_carries_the_shared_name() {
        let r = StatementRegistry::default();
        let d = r.register(b"SELECT $1\0\0\x01\0\0\0\x17");
        assert_eq!(d.parse[0], b'P');
        assert!(d.parse[5..].starts_with(d.name.as_bytes()));
        let len = i32::from_be_bytes([d.parse[1], d.parse[2], d.parse[3], d.parse[4]]) as usize;
        assert_eq!(len + 1, d.parse.len());
    }
}
