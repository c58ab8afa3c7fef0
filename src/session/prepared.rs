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
    /// The pool's schema generation it was named in (`KnownStatements`).
    pub generation: u64,
    /// Its row shape as its client was told it (`inspect::row_shape` of the
    /// reply to the client's Describe), once known.
    pub shape: std::sync::OnceLock<u64>,
}

impl StmtDef {
    /// A statement that lives only in a client's unnamed slot.
    pub fn unnamed(rest: &[u8]) -> Arc<Self> {
        Arc::new(StmtDef {
            global: String::new(),
            rest: Bytes::copy_from_slice(rest),
            session: touches_session(rest),
            generation: 0,
            shape: Default::default(),
        })
    }

    /// The same statement under its name for schema `generation`.
    pub fn regenerate(&self, generation: u64) -> Arc<Self> {
        Arc::new(StmtDef {
            global: global_name(&self.global[..HASHED_LEN], generation),
            rest: self.rest.clone(),
            session: self.session,
            generation,
            shape: self.shape.clone(),
        })
    }

    /// A statement another process defined (`global`, its name there,
    /// without a generation), under this pool's `generation`.
    pub fn moved(global: &str, rest: &[u8], generation: u64, shape: Option<u64>) -> Arc<Self> {
        let hashed = global.get(..HASHED_LEN).unwrap_or(global);
        let def = StmtDef {
            global: global_name(hashed, generation),
            rest: Bytes::copy_from_slice(rest),
            session: touches_session(rest),
            generation,
            shape: Default::default(),
        };
        if let Some(s) = shape {
            let _ = def.shape.set(s);
        }
        Arc::new(def)
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

/// Length of a global name without its generation: `sluice_` + 32 hex digits.
const HASHED_LEN: usize = 39;

/// `hashed` (HASHED_LEN long), with the schema generation after it when
/// there was a schema change.
fn global_name(hashed: &str, generation: u64) -> String {
    if generation == 0 {
        hashed.to_string()
    } else {
        format!("{hashed}_{generation}")
    }
}

/// The definition for a Parse body `rest` under `search_path` (statements
/// resolve table names when parsed, so the path is part of their identity)
/// in schema `generation`.
pub fn define(rest: &[u8], search_path: Option<&str>, generation: u64) -> Arc<StmtDef> {
    let mut h = Sha256::new();
    h.update(rest);
    h.update([0]);
    h.update(search_path.unwrap_or("").as_bytes());
    let digest = h.finalize();
    let mut hashed = String::with_capacity(HASHED_LEN);
    hashed.push_str("sluice_");
    for b in &digest[..16] {
        let _ = write!(hashed, "{b:02x}");
    }
    Arc::new(StmtDef {
        global: global_name(&hashed, generation),
        rest: Bytes::copy_from_slice(rest),
        session: touches_session(rest),
        generation,
        shape: Default::default(),
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

    /// Whether `global` is prepared here.
    pub fn contains(&self, global: &str) -> bool {
        self.used.contains_key(global)
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
        let a = define(b"SELECT 1\0\0\0", None, 0);
        assert_eq!(a.global.len(), 39);
        assert_eq!(a, define(b"SELECT 1\0\0\0", None, 0));
        assert_ne!(a.global, define(b"SELECT 2\0\0\0", None, 0).global);
        assert_ne!(
            a.global,
            define(b"SELECT 1\0\0\x01\0\0\0\x17", None, 0).global
        );
        assert_ne!(a.global, define(b"SELECT 1\0\0\0", Some("s"), 0).global);
        // After a schema change: a new name, and the same as a fresh define.
        let b = a.regenerate(3);
        assert_eq!(b.global, format!("{}_3", a.global));
        assert_eq!(b, define(b"SELECT 1\0\0\0", None, 3));
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
