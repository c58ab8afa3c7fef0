//! Prepared statements in transaction pooling: each distinct statement
//! (query text, parameter types, search_path) gets one sluice-wide name; a
//! client's own names map to it; each server keeps an LRU set of the
//! statements prepared on it.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Looked up on every Bind: foldhash's seeded hash costs less than the
/// standard SipHash on these short names, and its random seed still keeps
/// a client from choosing names that collide.
type Hasher = foldhash::quality::RandomState;

/// One distinct statement.
#[derive(Debug, PartialEq, Eq)]
pub struct StmtDef {
    /// The name it has on every server: `sluice_` + 32 hex digits.
    pub global: String,
    /// The Parse body after the name: query text and parameter types.
    pub rest: Bytes,
    /// Its text may change session state (`touches_session`): each
    /// execution is scanned like a Query is.
    pub session: bool,
}

impl StmtDef {
    /// A statement that lives only in a client's unnamed slot.
    pub fn unnamed(rest: &[u8]) -> Arc<Self> {
        Arc::new(StmtDef {
            global: String::new(),
            rest: Bytes::copy_from_slice(rest),
            session: touches_session(rest),
        })
    }

    /// The query text.
    pub fn text(&self) -> &[u8] {
        crate::protocol::inspect::take_cstr(&self.rest).map_or(&[][..], |(q, _)| q)
    }
}

/// Whether executing the statement whose Parse body is `rest` may pin the
/// client or change its settings: a session command, or a call that may
/// set a GUC (checked once, when the statement is defined).
fn touches_session(rest: &[u8]) -> bool {
    let text = crate::protocol::inspect::take_cstr(rest).map_or(&[][..], |(q, _)| q);
    super::multiplex::might_matter(text)
        || std::str::from_utf8(text)
            .is_ok_and(|t| crate::sql::functions::may_change_settings(t, false))
}

/// The definition for a Parse body `rest` under `search_path` (statements
/// resolve table names when parsed, so the path is part of their identity).
pub fn define(rest: &[u8], search_path: Option<&str>) -> Arc<StmtDef> {
    let mut h = Sha256::new();
    h.update(rest);
    h.update([0]);
    h.update(search_path.unwrap_or("").as_bytes());
    let digest = h.finalize();
    let mut global = String::with_capacity(39);
    global.push_str("sluice_");
    for b in &digest[..16] {
        let _ = write!(global, "{b:02x}");
    }
    Arc::new(StmtDef {
        global,
        rest: Bytes::copy_from_slice(rest),
        session: touches_session(rest),
    })
}

/// A client's view: its statement names and its unnamed statement.
#[derive(Debug, Default)]
pub struct ClientStatements {
    pub named: HashMap<Vec<u8>, Arc<StmtDef>, Hasher>,
    pub unnamed: Option<Arc<StmtDef>>,
}

/// What one server has prepared, least recently used first out.
#[derive(Debug, Default)]
pub struct ServerStatements {
    used: HashMap<String, u64, Hasher>,
    tick: u64,
    /// The client statement currently in the server's unnamed slot, if known.
    pub unnamed: Option<Arc<StmtDef>>,
}

impl ServerStatements {
    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// True (and marks it used) when `global` is prepared here.
    pub fn touch(&mut self, global: &str) -> bool {
        self.tick += 1;
        match self.used.get_mut(global) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `global` as prepared; returns the statement evicted to stay
    /// within `cap`, which the caller must close on the server.
    pub fn insert(&mut self, global: &str, cap: usize) -> Option<String> {
        self.tick += 1;
        let evicted = if self.used.len() >= cap.max(1) && !self.used.contains_key(global) {
            let oldest = self
                .used
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(g, _)| g.clone());
            oldest.inspect(|g| {
                self.used.remove(g);
            })
        } else {
            None
        };
        self.used.insert(global.to_string(), self.tick);
        evicted
    }

    pub fn remove(&mut self, global: &str) {
        self.used.remove(global);
    }

    /// Forget everything (after DISCARD ALL / DEALLOCATE ALL, or when unsure).
    pub fn clear(&mut self) {
        self.used.clear();
        self.unnamed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_depend_on_text_types_and_search_path() {
        let a = define(b"SELECT 1\0\0\0", None);
        assert_eq!(a.global.len(), 39);
        assert_eq!(a, define(b"SELECT 1\0\0\0", None));
        assert_ne!(a.global, define(b"SELECT 2\0\0\0", None).global);
        assert_ne!(a.global, define(b"SELECT 1\0\0\x01\0\0\0\x17", None).global);
        assert_ne!(a.global, define(b"SELECT 1\0\0\0", Some("s")).global);
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut s = ServerStatements::default();
        assert_eq!(s.insert("a", 2), None);
        assert_eq!(s.insert("b", 2), None);
        assert!(s.touch("a"));
        assert_eq!(s.insert("c", 2), Some("b".to_string()));
        assert!(s.touch("a") && s.touch("c") && !s.touch("b"));
        s.clear();
        assert!(s.is_empty());
    }
}
