//! Cached results and when they stop being true. Pure: the caller says
//! what a read saw (`as_of`, the position up to which the changes stream
//! had been applied when the read began) and the stream says what changed.
//!
//! Never stale: an entry is dropped when a table it read changes; one
//! whose read may not have seen a change that has already been applied
//! (a change of its tables past its `as_of`) is never stored; and a lookup
//! says how fresh the store must be (`min_applied`: a writer's commit
//! position, or the primary's position max_cache_lag ago).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::reads::Table;
use super::wal::Change;

/// What a cached result is found by: everything that can change it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub database: String,
    pub user: String,
    /// The statement's text.
    pub text: Vec<u8>,
    /// Parameter formats and values, and result formats, as the client's
    /// Bind sent them (empty for a simple Query).
    pub bind: Vec<u8>,
    /// The session settings that can change a result (search_path,
    /// TimeZone, DateStyle, ...), as `name=value` pairs.
    pub settings: Vec<u8>,
}

#[derive(Debug)]
pub struct Entry {
    /// The reply as PostgreSQL sent it (RowDescription, DataRows,
    /// CommandComplete).
    pub reply: Bytes,
    pub tables: BTreeSet<Table>,
    pub expires: Instant,
}

#[derive(Debug)]
pub struct Store {
    entries: HashMap<Key, Arc<Entry>>,
    /// By table name (any schema): the keys of entries that read it.
    readers: HashMap<String, HashSet<Key>>,
    /// Oldest first, for eviction (keys may be gone already).
    order: VecDeque<Key>,
    bytes: usize,
    max_bytes: usize,
    /// Changes applied up to this position.
    applied: u64,
    /// By table name: the position of its last change applied, and when.
    changed: HashMap<String, (u64, Instant)>,
    /// The position of the last schema change (or loss of the stream).
    reset: u64,
    /// Bumped by every `clear`: a read begun before it is not stored.
    epoch: u64,
}

/// What a read that is to be stored saw.
#[derive(Debug, Clone, Copy)]
pub struct Read {
    /// Changes applied up to here were visible to it.
    pub as_of: u64,
    /// `Store::epoch` when it began.
    pub epoch: u64,
    pub began: Instant,
    /// On the primary: a change applied this shortly before the read
    /// began may not have been visible to it yet.
    pub settle: Option<Duration>,
}

impl Store {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            readers: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
            applied: 0,
            changed: HashMap::new(),
            reset: 0,
            epoch: 0,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Up to where changes are applied: what a read beginning now sees at
    /// least (its `as_of`).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Applies what the stream says changed; how many entries went.
    pub fn apply(&mut self, change: &Change, now: Instant) -> usize {
        let before = self.entries.len();
        match change {
            Change::Tables { tables, lsn } => {
                for (_, name) in tables {
                    self.changed.insert(name.clone(), (*lsn, now));
                    for key in self.readers.remove(name).unwrap_or_default() {
                        self.remove(&key);
                    }
                }
                self.applied = self.applied.max(*lsn);
            }
            Change::Schema { lsn } => {
                self.clear(*lsn);
                self.applied = self.applied.max(*lsn);
            }
        }
        before - self.entries.len()
    }

    /// Nothing in store is known good any more (a schema change, the
    /// stream lost): everything goes, and no read begun before `lsn` is
    /// stored.
    pub fn clear(&mut self, lsn: u64) {
        self.entries.clear();
        self.readers.clear();
        self.order.clear();
        self.bytes = 0;
        self.reset = self.reset.max(lsn);
        self.epoch += 1;
    }

    /// The stream moved on without changes the publication covers.
    pub fn caught_up(&mut self, lsn: u64) {
        self.applied = self.applied.max(lsn);
    }

    /// Stores the result of `read`. Not when a table it read changed past
    /// what it saw (or, on the primary, just before it began), nor when the
    /// store was cleared since it began, nor when it alone passes the budget.
    pub fn insert(&mut self, key: Key, entry: Entry, read: Read) -> bool {
        let size = size_of(&key, &entry.reply);
        let unsettled = |at: Instant| read.settle.is_some_and(|s| at + s > read.began);
        let seen = self.epoch == read.epoch
            && self.reset <= read.as_of
            && entry.tables.iter().all(|t| {
                self.changed
                    .get(&t.name)
                    .is_none_or(|(lsn, at)| *lsn <= read.as_of && !unsettled(*at))
            });
        if !seen || size > self.max_bytes {
            return false;
        }
        self.remove(&key);
        while self.bytes + size > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.remove(&old);
        }
        for t in &entry.tables {
            self.readers
                .entry(t.name.clone())
                .or_default()
                .insert(key.clone());
        }
        self.bytes += size;
        self.order.push_back(key.clone());
        self.entries.insert(key, Arc::new(entry));
        true
    }

    /// The cached result for `key`, when the store has applied changes up
    /// to `min_applied` and the entry has not expired.
    pub fn get(&self, key: &Key, now: Instant, min_applied: u64) -> Option<Arc<Entry>> {
        if self.applied < min_applied {
            return None;
        }
        self.entries.get(key).filter(|e| e.expires > now).cloned()
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= size_of(key, &e.reply);
            for t in &e.tables {
                if let Some(r) = self.readers.get_mut(&t.name) {
                    r.remove(key);
                    if r.is_empty() {
                        self.readers.remove(&t.name);
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What an entry counts against the budget: its bytes, and a bound on
/// the bookkeeping around them.
fn size_of(key: &Key, reply: &Bytes) -> usize {
    reply.len() + 2 * (key.text.len() + key.bind.len() + key.settings.len()) + 256
}

/// An entry for `reply`, reading `tables`, good for `ttl` from `now`.
pub fn entry(reply: Bytes, tables: BTreeSet<Table>, now: Instant, ttl: Duration) -> Entry {
    Entry {
        reply,
        tables,
        expires: now + ttl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Key {
        Key {
            database: "app".into(),
            user: "u".into(),
            text: text.as_bytes().to_vec(),
            bind: Vec::new(),
            settings: b"TimeZone=UTC".to_vec(),
        }
    }

    fn tables(names: &[&str]) -> BTreeSet<Table> {
        names
            .iter()
            .map(|n| Table {
                schema: None,
                name: n.to_string(),
            })
            .collect()
    }

    fn changed(names: &[&str], lsn: u64) -> Change {
        Change::Tables {
            tables: names
                .iter()
                .map(|n| ("public".to_string(), n.to_string()))
                .collect(),
            lsn,
        }
    }

    fn at(s: &Store, as_of: u64) -> Read {
        Read {
            as_of,
            epoch: s.epoch(),
            began: Instant::now(),
            settle: None,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_change_drops_what_read_its_table_and_nothing_else() {
        let (mut s, now) = (Store::new(1 << 20), Instant::now());
        let reply = Bytes::from_static(b"rows");
        assert!(s.insert(
            key("a"),
            entry(reply.clone(), tables(&["orders"]), now, HOUR),
            at(&s, 0)
        ));
        assert!(s.insert(
            key("b"),
            entry(reply.clone(), tables(&["items"]), now, HOUR),
            at(&s, 0)
        ));
        assert!(s.get(&key("a"), now, 0).is_some());
        s.apply(&changed(&["orders"], 10), Instant::now());
        assert!(s.get(&key("a"), now, 0).is_none());
        assert!(s.get(&key("b"), now, 0).is_some());
        // Other settings, another entry.
        let mut other = key("b");
        other.settings = b"TimeZone=Europe/Paris".to_vec();
        assert!(s.get(&other, now, 0).is_none());
        // A schema change drops everything.
        s.apply(&Change::Schema { lsn: 20 }, Instant::now());
        assert!(s.is_empty());
    }

    #[test]
    fn a_read_that_may_have_missed_a_change_is_not_stored() {
        let (mut s, now) = (Store::new(1 << 20), Instant::now());
        let as_of = s.applied();
        // A write to `orders` is applied while the read runs.
        s.apply(&changed(&["orders"], 10), Instant::now());
        let e = entry(
            Bytes::from_static(b"old rows"),
            tables(&["orders"]),
            now,
            HOUR,
        );
        assert!(
            !s.insert(key("a"), e, at(&s, as_of)),
            "it may predate the write"
        );
        let e = entry(
            Bytes::from_static(b"new rows"),
            tables(&["orders"]),
            now,
            HOUR,
        );
        assert!(s.insert(key("a"), e, at(&s, s.applied())));
        let begun = at(&s, 40);
        s.clear(30);
        let e = entry(Bytes::from_static(b"rows"), tables(&["items"]), now, HOUR);
        assert!(!s.insert(key("b"), e, begun), "begun before the reset");
        // On the primary, a change applied just before the read began may
        // not have been visible to it yet.
        s.apply(&changed(&["items"], 50), Instant::now());
        let mut primary = at(&s, s.applied());
        primary.settle = Some(Duration::from_secs(60));
        let e = entry(Bytes::from_static(b"rows"), tables(&["items"]), now, HOUR);
        assert!(!s.insert(key("b"), e, primary), "not settled");
        primary.settle = None;
        let e = entry(Bytes::from_static(b"rows"), tables(&["items"]), now, HOUR);
        assert!(
            s.insert(key("b"), e, primary),
            "a replica at that position saw it"
        );
    }

    #[test]
    fn lookups_need_the_store_fresh_enough_and_the_entry_alive() {
        let (mut s, now) = (Store::new(1 << 20), Instant::now());
        let e = entry(
            Bytes::from_static(b"rows"),
            tables(&["orders"]),
            now,
            Duration::from_secs(5),
        );
        assert!(s.insert(key("a"), e, at(&s, 0)));
        // A writer whose commit ended at 50: not until the store is there.
        assert!(s.get(&key("a"), now, 50).is_none());
        s.caught_up(50);
        assert!(s.get(&key("a"), now, 50).is_some());
        assert!(s.get(&key("a"), now + Duration::from_secs(5), 0).is_none());
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest() {
        let (mut s, now) = (Store::new(800), Instant::now());
        let reply = Bytes::from(vec![0u8; 100]);
        for k in ["a", "b", "c"] {
            assert!(s.insert(
                key(k),
                entry(reply.clone(), tables(&["t"]), now, HOUR),
                at(&s, 0)
            ));
        }
        assert_eq!(s.len(), 2, "two fit in 800 bytes");
        assert!(s.get(&key("a"), now, 0).is_none());
        let big = Bytes::from(vec![0u8; 1000]);
        assert!(!s.insert(key("d"), entry(big, tables(&["t"]), now, HOUR), at(&s, 0)));
        s.apply(&changed(&["t"], 5), Instant::now());
        assert!(s.is_empty());
        assert_eq!(s.bytes, 0);
    }
}
