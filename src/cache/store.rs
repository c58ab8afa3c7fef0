//! Cached results and when they stop being true. Pure: the caller says
//! what a read saw (`as_of`, the position up to which the changes stream
//! had been applied when the read began) and the stream says what changed.
//!
//! Never stale: an entry is dropped when a table it read changes (or, for
//! a read of one table by its key, when a row with that key changes); one
//! whose read may not have seen a change that has already been applied
//! (a change of its tables, or its row, past its `as_of`) is never stored;
//! and a lookup says how fresh the store must be (`min_applied`: a
//! writer's commit position, or the primary's position max_cache_lag ago).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::reads::Table;
use super::wal::{Change, Rows};

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

/// A read of one table that only saw rows whose `column` is `value` (an
/// integer, as PostgreSQL writes it): only a change to such a row drops it,
/// once the stream has shown that column to be part of the table's
/// replica identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub column: String,
    pub value: String,
}

#[derive(Debug)]
pub struct Entry {
    /// The reply as PostgreSQL sent it (RowDescription, DataRows,
    /// CommandComplete).
    pub reply: Bytes,
    pub tables: BTreeSet<Table>,
    /// Set (by `insert`) only when the read is of one table and the scope
    /// is usable: then it is dropped by its row's changes alone.
    pub scope: Option<Scope>,
    pub expires: Instant,
}

/// The row changes remembered, for reads in flight: past this many, they
/// are forgotten at once (and reads begun before then are not stored).
const MAX_ROW_CHANGES: usize = 100_000;

/// PostgreSQL's integer types (int8, int2, int4): their text is canonical.
const INTEGER_TYPES: [u32; 3] = [20, 21, 23];

/// A position in the stream, and when the store applied it.
type Mark = (u64, Instant);

#[derive(Debug)]
pub struct Store {
    entries: HashMap<Key, Arc<Entry>>,
    /// By table name (any schema): the keys of entries that read it.
    readers: HashMap<String, HashSet<Key>>,
    /// By table name, column and value: the keys of entries scoped to it.
    row_readers: HashMap<String, HashMap<Scope, HashSet<Key>>>,
    /// Oldest first, for eviction (keys may be gone already).
    order: VecDeque<Key>,
    bytes: usize,
    max_bytes: usize,
    /// Changes applied up to this position.
    applied: u64,
    /// By table name: its last change applied.
    changed: HashMap<String, Mark>,
    /// By table name: its last change not told by row (TRUNCATE, bulk).
    changed_all: HashMap<String, Mark>,
    /// By table name: its replica identity columns, as the stream said.
    identity: HashMap<String, Arc<[(String, u32)]>>,
    /// By table name and scope: the last change of such a row.
    changed_rows: HashMap<(String, Scope), Mark>,
    /// When `changed_rows` was last emptied to stay bounded.
    rows_forgotten: Option<Mark>,
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

impl Read {
    /// Whether a change applied at `mark` may have been invisible to it.
    fn missed(&self, mark: Option<&Mark>) -> bool {
        mark.is_some_and(|(lsn, at)| {
            *lsn > self.as_of || self.settle.is_some_and(|s| *at + s > self.began)
        })
    }
}

impl Store {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            readers: HashMap::new(),
            row_readers: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
            applied: 0,
            changed: HashMap::new(),
            changed_all: HashMap::new(),
            identity: HashMap::new(),
            changed_rows: HashMap::new(),
            rows_forgotten: None,
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
                for ((_, name), rows) in tables {
                    let mark = (*lsn, now);
                    self.changed.insert(name.clone(), mark);
                    for key in self.readers.remove(name).unwrap_or_default() {
                        self.remove(&key);
                    }
                    self.apply_rows(name, rows, mark);
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

    /// Drops the entries scoped to the rows `rows` names (all of the
    /// table's, when it cannot tell).
    fn apply_rows(&mut self, name: &str, rows: &Rows, mark: Mark) {
        let columns = match rows {
            Rows::Keys { columns, .. }
                if self.identity.get(name).is_none_or(|known| known == columns) =>
            {
                columns
            }
            // All rows, or another identity under the same name (another
            // schema's table): none of its scoped entries is known good.
            _ => {
                self.changed_all.insert(name.to_string(), mark);
                for key in self.scoped_keys(name, |_| true) {
                    self.remove(&key);
                }
                if let Rows::Keys { columns, .. } = rows {
                    self.identity.insert(name.to_string(), columns.clone());
                }
                return;
            }
        };
        let Rows::Keys { values, .. } = rows else {
            return;
        };
        self.identity.insert(name.to_string(), columns.clone());
        if self.changed_rows.len() + values.len() > MAX_ROW_CHANGES {
            self.changed_rows.clear();
            self.rows_forgotten = Some(mark);
        }
        for (i, v) in values {
            let scope = Scope {
                column: columns[*i].0.clone(),
                value: String::from_utf8_lossy(v).into_owned(),
            };
            let keys = self
                .row_readers
                .get_mut(name)
                .and_then(|by| by.remove(&scope));
            for key in keys.unwrap_or_default() {
                self.remove(&key);
            }
            self.changed_rows.insert((name.to_string(), scope), mark);
        }
    }

    fn scoped_keys(&self, name: &str, pick: impl Fn(&Scope) -> bool) -> Vec<Key> {
        self.row_readers
            .get(name)
            .into_iter()
            .flat_map(|by| by.iter())
            .filter(|(s, _)| pick(s))
            .flat_map(|(_, keys)| keys.iter().cloned())
            .collect()
    }

    /// Nothing in store is known good any more (a schema change, the
    /// stream lost): everything goes, and no read begun before `lsn` is
    /// stored.
    pub fn clear(&mut self, lsn: u64) {
        self.entries.clear();
        self.readers.clear();
        self.row_readers.clear();
        self.identity.clear();
        self.changed_rows.clear();
        self.order.clear();
        self.bytes = 0;
        self.reset = self.reset.max(lsn);
        self.epoch += 1;
    }

    /// The stream moved on without changes the publication covers.
    pub fn caught_up(&mut self, lsn: u64) {
        self.applied = self.applied.max(lsn);
    }

    /// Whether `scope` can stand for what a read of `table` depends on:
    /// the stream has shown its column to be an integer identity column.
    fn usable(&self, table: &str, scope: &Scope) -> bool {
        self.identity.get(table).is_some_and(|cols| {
            cols.iter()
                .any(|(c, ty)| *c == scope.column && INTEGER_TYPES.contains(ty))
        })
    }

    /// Stores the result of `read`. Not when a table (or row) it read
    /// changed past what it saw (or, on the primary, just before it
    /// began), nor when the store was cleared since it began, nor when it
    /// alone passes the budget.
    pub fn insert(&mut self, key: Key, mut entry: Entry, read: Read) -> bool {
        let size = size_of(&key, &entry.reply);
        let table = match (&entry.scope, entry.tables.first()) {
            (Some(s), Some(t)) if entry.tables.len() == 1 && self.usable(&t.name, s) => {
                Some(t.name.clone())
            }
            _ => None,
        };
        let seen = self.epoch == read.epoch
            && self.reset <= read.as_of
            && match (&table, &entry.scope) {
                (Some(t), Some(scope)) => {
                    !read.missed(self.changed_all.get(t))
                        && !read.missed(self.rows_forgotten.as_ref())
                        && !read.missed(self.changed_rows.get(&(t.clone(), scope.clone())))
                }
                _ => entry
                    .tables
                    .iter()
                    .all(|t| !read.missed(self.changed.get(&t.name))),
            };
        if !seen || size > self.max_bytes {
            return false;
        }
        if table.is_none() {
            entry.scope = None;
        }
        self.remove(&key);
        while self.bytes + size > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.remove(&old);
        }
        match (table, &entry.scope) {
            (Some(t), Some(scope)) => {
                self.row_readers
                    .entry(t)
                    .or_default()
                    .entry(scope.clone())
                    .or_default()
                    .insert(key.clone());
            }
            _ => {
                for t in &entry.tables {
                    self.readers
                        .entry(t.name.clone())
                        .or_default()
                        .insert(key.clone());
                }
            }
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
        let Some(e) = self.entries.remove(key) else {
            return;
        };
        self.bytes -= size_of(key, &e.reply);
        if let (Some(scope), Some(t)) = (&e.scope, e.tables.first()) {
            if let Some(by) = self.row_readers.get_mut(&t.name) {
                if let Some(keys) = by.get_mut(scope) {
                    keys.remove(key);
                    if keys.is_empty() {
                        by.remove(scope);
                    }
                }
                if by.is_empty() {
                    self.row_readers.remove(&t.name);
                }
            }
            return;
        }
        for t in &e.tables {
            if let Some(r) = self.readers.get_mut(&t.name) {
                r.remove(key);
                if r.is_empty() {
                    self.readers.remove(&t.name);
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
        scope: None,
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
                .map(|n| (("public".to_string(), n.to_string()), Rows::All))
                .collect(),
            lsn,
        }
    }

    /// Rows of `table` with these `id` values (int4 identity) changed.
    fn rows_changed(table: &str, ids: &[i64], lsn: u64) -> Change {
        let rows = Rows::Keys {
            columns: vec![("id".to_string(), 23)].into(),
            values: ids
                .iter()
                .map(|i| (0, i.to_string().into_bytes()))
                .collect(),
        };
        Change::Tables {
            tables: [(("public".to_string(), table.to_string()), rows)].into(),
            lsn,
        }
    }

    fn by_id(table: &str, id: i64, now: Instant) -> Entry {
        let mut e = entry(Bytes::from_static(b"row"), tables(&[table]), now, HOUR);
        e.scope = Some(Scope {
            column: "id".into(),
            value: id.to_string(),
        });
        e
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
    fn a_read_by_key_is_dropped_by_its_rows_changes_alone() {
        let (mut s, now) = (Store::new(1 << 20), Instant::now());
        // Before the stream has shown kv's identity, a scoped read is
        // kept as a read of the table.
        assert!(s.insert(key("one"), by_id("kv", 1, now), at(&s, 0)));
        s.apply(&rows_changed("kv", &[9], 10), now);
        assert!(s.get(&key("one"), now, 0).is_none(), "table-wide at first");
        for (k, id) in [("one", 1), ("two", 2)] {
            assert!(s.insert(key(k), by_id("kv", id, now), at(&s, s.applied())));
        }
        assert!(s.insert(
            key("all"),
            entry(Bytes::from_static(b"rows"), tables(&["kv"]), now, HOUR),
            at(&s, s.applied())
        ));
        s.apply(&rows_changed("kv", &[2, 3], 20), now);
        assert!(s.get(&key("one"), now, 0).is_some(), "row 1 did not change");
        assert!(s.get(&key("two"), now, 0).is_none());
        assert!(s.get(&key("all"), now, 0).is_none(), "a read of all rows");
        // A read of row 3 begun before its change was applied.
        assert!(!s.insert(key("three"), by_id("kv", 3, now), at(&s, 10)));
        assert!(s.insert(key("four"), by_id("kv", 4, now), at(&s, 10)));
        // Only integer identity columns scope reads.
        let mut text = by_id("kv", 5, now);
        text.scope = Some(Scope {
            column: "name".into(),
            value: "5".into(),
        });
        assert!(s.insert(key("name"), text, at(&s, s.applied())));
        s.apply(&rows_changed("kv", &[5], 30), now);
        assert!(s.get(&key("name"), now, 0).is_none(), "kept table-wide");
        // TRUNCATE: every row.
        s.apply(&changed(&["kv"], 40), now);
        assert!(s.get(&key("one"), now, 0).is_none());
        assert!(!s.insert(key("one"), by_id("kv", 1, now), at(&s, 30)));
        assert!(s.insert(key("one"), by_id("kv", 1, now), at(&s, 40)));
        // Another identity under the same name (another schema): every row.
        let other = Change::Tables {
            tables: [(
                ("app".to_string(), "kv".to_string()),
                Rows::Keys {
                    columns: vec![("k".to_string(), 23)].into(),
                    values: [(0, b"8".to_vec())].into(),
                },
            )]
            .into(),
            lsn: 50,
        };
        s.apply(&other, now);
        assert!(s.get(&key("one"), now, 0).is_none());
        assert!(s.is_empty());
        assert!(s.row_readers.is_empty() && s.readers.is_empty());
    }

    #[test]
    fn row_changes_remembered_stay_bounded() {
        let (mut s, now) = (Store::new(1 << 20), Instant::now());
        s.apply(&rows_changed("kv", &[0], 1), now);
        for lsn in 2..(2 + MAX_ROW_CHANGES as u64 / 1000 + 1) {
            let base = lsn as i64 * 1000;
            let ids: Vec<i64> = (base..base + 1000).collect();
            s.apply(&rows_changed("kv", &ids, lsn), now);
        }
        assert!(s.changed_rows.len() <= MAX_ROW_CHANGES);
        // A read begun before they were forgotten is not stored.
        assert!(!s.insert(key("x"), by_id("kv", 5000, now), at(&s, 1)));
        assert!(s.insert(key("x"), by_id("kv", 5000, now), at(&s, s.applied())));
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
