//! What the primary's changes say about cached results: a decoder of the
//! logical replication stream (`pgoutput`, protocol version 1) that turns
//! each committed transaction into the tables it changed and, where the
//! rows tell, the key values of the rows it changed. Pure: the stream
//! (`super::stream`) feeds it CopyData bodies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::protocol::inspect::take_cstr;

/// A committed transaction's effect on cached results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Rows of these tables (schema, name) changed: INSERT, UPDATE,
    /// DELETE or TRUNCATE, committed; `lsn` is the end of its commit.
    Tables {
        tables: BTreeMap<(String, String), Rows>,
        lsn: u64,
    },
    /// A table's definition changed (columns, name): nothing cached can be
    /// trusted.
    Schema { lsn: u64 },
}

/// Which rows of a table a transaction changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rows {
    /// Any (TRUNCATE, or too many rows to list).
    All,
    /// Rows whose replica identity columns (`columns`: names and type
    /// oids) had these values (column index, text) before or after the
    /// change. Every row changed is among them: its old identity comes
    /// with an UPDATE that changes it, and with every DELETE.
    Keys {
        columns: Arc<[(String, u32)]>,
        values: BTreeSet<(usize, Vec<u8>)>,
    },
}

/// Past this many key values in one table, a transaction counts as
/// changing all its rows (a bulk write drops the table's entries at once).
const MAX_KEYS: usize = 1000;

/// What one CopyData of the replication stream asks of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Changes, decoded.
    Changes(Vec<Change>),
    /// A keepalive: the server's WAL end, and whether it wants an answer now.
    Keepalive { wal_end: u64, reply: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Relation {
    schema: String,
    name: String,
    /// The columns' names and types, to see a definition change.
    columns: Vec<(String, u32)>,
    /// Indexes of the replica identity columns, and their names and types.
    key: Vec<usize>,
    key_columns: Arc<[(String, u32)]>,
}

#[derive(Debug, Default)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
    /// In the transaction being decoded: by relation id, its rows changed.
    touched: BTreeMap<u32, Rows>,
    schema_changed: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed replication message: {0}")]
pub struct Malformed(&'static str);

fn u32_at(b: &[u8], at: usize) -> Result<u32, Malformed> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(Malformed("short message"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, Malformed> {
    b.get(at..at + 8)
        .map(|s| u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
        .ok_or(Malformed("short message"))
}

impl Decoder {
    /// One CopyData body of the stream.
    pub fn copy_data(&mut self, body: &[u8]) -> Result<Frame, Malformed> {
        match body.first() {
            // XLogData: start, end, send time, then a pgoutput message.
            Some(b'w') => {
                let msg = body.get(25..).ok_or(Malformed("short XLogData"))?;
                Ok(Frame::Changes(self.message(msg)?.into_iter().collect()))
            }
            Some(b'k') => Ok(Frame::Keepalive {
                wal_end: u64_at(body, 1)?,
                reply: body.get(17).is_some_and(|r| *r == 1),
            }),
            _ => Err(Malformed("unknown CopyData")),
        }
    }

    /// One pgoutput message; a Commit gives what its transaction changed.
    fn message(&mut self, m: &[u8]) -> Result<Option<Change>, Malformed> {
        match m.first() {
            Some(b'B') => {
                self.touched.clear();
                self.schema_changed = false;
                Ok(None)
            }
            Some(b'R') => {
                self.relation(&m[1..])?;
                Ok(None)
            }
            Some(b'I' | b'U' | b'D') => {
                self.row_change(m)?;
                Ok(None)
            }
            Some(b'T') => {
                let n = u32_at(m, 1)? as usize;
                for i in 0..n {
                    self.touched.insert(u32_at(m, 6 + 4 * i)?, Rows::All);
                }
                Ok(None)
            }
            Some(b'C') => {
                let lsn = u64_at(m, 10)?;
                // A change to a table not described (never expected from
                // pgoutput): nothing can be trusted either.
                let unknown = self
                    .touched
                    .keys()
                    .any(|id| !self.relations.contains_key(id));
                if std::mem::take(&mut self.schema_changed) || unknown {
                    self.touched.clear();
                    return Ok(Some(Change::Schema { lsn }));
                }
                let mut tables = BTreeMap::new();
                for (id, rows) in std::mem::take(&mut self.touched) {
                    let Some(r) = self.relations.get(&id) else {
                        continue;
                    };
                    let name = (r.schema.clone(), r.name.clone());
                    // Two tables of one name and schema in one transaction
                    // (dropped and created again): all rows.
                    tables
                        .entry(name)
                        .and_modify(|e| *e = Rows::All)
                        .or_insert(rows);
                }
                Ok((!tables.is_empty()).then_some(Change::Tables { tables, lsn }))
            }
            // A logical decoding message with sluice's prefix: the DDL
            // event trigger the README describes says a definition
            // changed (at its transaction's commit, or now).
            Some(b'M') => {
                let transactional = m.get(1).is_some_and(|f| *f & 1 == 1);
                let lsn = u64_at(m, 2)?;
                let (prefix, _) = take_cstr(&m[10..]).ok_or(Malformed("message prefix"))?;
                if prefix != DDL_PREFIX.as_bytes() {
                    return Ok(None);
                }
                if transactional {
                    self.schema_changed = true;
                    return Ok(None);
                }
                Ok(Some(Change::Schema { lsn }))
            }
            // Type, origin: nothing cached.
            Some(b'Y' | b'O') => Ok(None),
            _ => Err(Malformed("unknown pgoutput message")),
        }
    }

    /// A Relation message: the table's id, names and columns. One already
    /// known that comes with another definition is a schema change.
    fn relation(&mut self, b: &[u8]) -> Result<(), Malformed> {
        let id = u32_at(b, 0)?;
        let rest = &b[4..];
        let (schema, rest) = take_cstr(rest).ok_or(Malformed("relation schema"))?;
        let (name, rest) = take_cstr(rest).ok_or(Malformed("relation name"))?;
        let n = rest.get(1..3).ok_or(Malformed("relation columns"))?;
        let n = u16::from_be_bytes([n[0], n[1]]) as usize;
        let mut rest = &rest[3..];
        let mut columns = Vec::with_capacity(n);
        let mut key = Vec::new();
        for i in 0..n {
            let flags = *rest.first().ok_or(Malformed("column"))?;
            let (col, after) = take_cstr(&rest[1..]).ok_or(Malformed("column name"))?;
            let ty = u32_at(after, 0)?;
            if flags & 1 == 1 {
                key.push(i);
            }
            columns.push((String::from_utf8_lossy(col).into_owned(), ty));
            rest = after.get(8..).ok_or(Malformed("column type"))?;
        }
        let key_columns = key.iter().map(|i| columns[*i].clone()).collect();
        let r = Relation {
            schema: String::from_utf8_lossy(schema).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            columns,
            key,
            key_columns,
        };
        if self.relations.get(&id).is_some_and(|old| *old != r) {
            self.schema_changed = true;
        }
        self.relations.insert(id, r);
        Ok(())
    }

    /// An INSERT, UPDATE or DELETE: the key values of its row, old and new.
    fn row_change(&mut self, m: &[u8]) -> Result<(), Malformed> {
        let id = u32_at(m, 1)?;
        let mut rest = m.get(5..).ok_or(Malformed("short row change"))?;
        let mut tuples = Vec::with_capacity(2);
        while let Some((&kind, after)) = rest.split_first() {
            match kind {
                b'K' | b'O' | b'N' => {
                    let (tuple, next) = tuple(after)?;
                    tuples.push(tuple);
                    rest = next;
                }
                _ => return Err(Malformed("row change tuple")),
            }
        }
        if tuples.is_empty() {
            return Err(Malformed("row change without a tuple"));
        }
        let keys = self.relations.get(&id).and_then(|r| {
            let mut values = Vec::with_capacity(r.key.len() * tuples.len());
            for t in &tuples {
                for &i in &r.key {
                    match t.get(i)? {
                        Datum::Null => {}
                        Datum::Value(v) => values.push((i, v.to_vec())),
                        // An identity value left out: the row is not known.
                        Datum::Unchanged => return None,
                    }
                }
            }
            (tuples.iter().all(|t| t.len() == r.columns.len()) && !r.key.is_empty())
                .then(|| (r.key_columns.clone(), r.key.clone(), values))
        });
        let entry = self.touched.entry(id).or_insert_with(|| match &keys {
            Some((columns, _, _)) => Rows::Keys {
                columns: columns.clone(),
                values: BTreeSet::new(),
            },
            None => Rows::All,
        });
        match (&mut *entry, keys) {
            (Rows::Keys { values, .. }, Some((_, key, found))) => {
                // Indexes into the relation's columns, as positions among
                // its identity columns.
                for (i, v) in found {
                    let at = key.iter().position(|k| *k == i).unwrap_or_default();
                    values.insert((at, v));
                }
                if values.len() > MAX_KEYS {
                    *entry = Rows::All;
                }
            }
            (e, _) => *e = Rows::All,
        }
        Ok(())
    }
}

/// A column's value in a TupleData.
enum Datum<'a> {
    Null,
    Unchanged,
    Value(&'a [u8]),
}

/// One TupleData: its columns, and what follows it.
fn tuple(b: &[u8]) -> Result<(Vec<Datum<'_>>, &[u8]), Malformed> {
    let n = b.get(..2).ok_or(Malformed("tuple columns"))?;
    let n = u16::from_be_bytes([n[0], n[1]]) as usize;
    let mut rest = &b[2..];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (&kind, after) = rest.split_first().ok_or(Malformed("tuple column"))?;
        match kind {
            b'n' => {
                out.push(Datum::Null);
                rest = after;
            }
            b'u' => {
                out.push(Datum::Unchanged);
                rest = after;
            }
            b't' | b'b' => {
                let len = u32_at(after, 0)? as usize;
                let v = after
                    .get(4..4 + len)
                    .ok_or(Malformed("tuple value length"))?;
                out.push(Datum::Value(v));
                rest = &after[4 + len..];
            }
            _ => return Err(Malformed("tuple column kind")),
        }
    }
    Ok((out, rest))
}

/// The prefix of the logical decoding messages (`pg_logical_emit_message`)
/// that announce DDL.
pub const DDL_PREFIX: &str = "sluice_cache";

/// A Standby Status Update: everything up to `lsn` is applied; with
/// `reply`, the server answers at once with a keepalive carrying how far
/// it has sent (a ping).
pub fn status_update(lsn: u64, reply: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(34);
    b.push(b'r');
    for _ in 0..3 {
        b.extend_from_slice(&lsn.to_be_bytes());
    }
    b.extend_from_slice(&0i64.to_be_bytes());
    b.push(u8::from(reply));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Relation message; its first column is its replica identity.
    fn relation(id: u32, schema: &str, name: &str, cols: &[(&str, u32)]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&id.to_be_bytes());
        for s in [schema, name] {
            m.extend_from_slice(s.as_bytes());
            m.push(0);
        }
        m.push(b'd');
        m.extend_from_slice(&(cols.len() as u16).to_be_bytes());
        for (i, (c, ty)) in cols.iter().enumerate() {
            m.push(u8::from(i == 0));
            m.extend_from_slice(c.as_bytes());
            m.push(0);
            m.extend_from_slice(&ty.to_be_bytes());
            m.extend_from_slice(&(-1i32).to_be_bytes());
        }
        m
    }

    /// An INSERT/UPDATE/DELETE of relation `id`: its tuples, each a kind
    /// (`K`, `O`, `N`) and values (None: NULL, Some("\u{0}"): unchanged).
    fn row(tag: u8, id: u32, tuples: &[(u8, &[Option<&str>])]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&id.to_be_bytes());
        for (kind, vals) in tuples {
            m.push(*kind);
            m.extend_from_slice(&(vals.len() as u16).to_be_bytes());
            for v in *vals {
                match v {
                    None => m.push(b'n'),
                    Some("\u{0}") => m.push(b'u'),
                    Some(v) => {
                        m.push(b't');
                        m.extend_from_slice(&(v.len() as u32).to_be_bytes());
                        m.extend_from_slice(v.as_bytes());
                    }
                }
            }
        }
        m
    }

    fn keys(col: &str, values: &[&str]) -> Rows {
        Rows::Keys {
            columns: vec![(col.to_string(), 23)].into(),
            values: values.iter().map(|v| (0, v.as_bytes().to_vec())).collect(),
        }
    }

    fn one(schema: &str, name: &str, rows: Rows, lsn: u64) -> Vec<Change> {
        let tables = [((schema.to_string(), name.to_string()), rows)].into();
        vec![Change::Tables { tables, lsn }]
    }

    fn xlog(msg: &[u8]) -> Vec<u8> {
        let mut b = vec![b'w'];
        b.extend_from_slice(&[0; 24]);
        b.extend_from_slice(msg);
        b
    }

    fn commit(lsn: u64) -> Vec<u8> {
        let mut m = vec![b'C', 0];
        m.extend_from_slice(&(lsn - 8).to_be_bytes());
        m.extend_from_slice(&lsn.to_be_bytes());
        m.extend_from_slice(&0i64.to_be_bytes());
        m
    }

    fn changes(d: &mut Decoder, msg: &[u8]) -> Vec<Change> {
        match d.copy_data(&xlog(msg)).unwrap() {
            Frame::Changes(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_commit_names_the_tables_its_transaction_changed() {
        let mut d = Decoder::default();
        assert!(changes(&mut d, b"B").is_empty());
        changes(
            &mut d,
            &relation(7, "public", "orders", &[("id", 23), ("n", 25)]),
        );
        changes(&mut d, &relation(8, "app", "items", &[("id", 23)]));
        changes(&mut d, &row(b'I', 7, &[(b'N', &[Some("1"), Some("a")])]));
        let mut truncate = vec![b'T', 0, 0, 0, 1, 0];
        truncate.extend_from_slice(&8u32.to_be_bytes());
        changes(&mut d, &truncate);
        let got = changes(&mut d, &commit(100));
        let tables = [
            (("app".into(), "items".into()), Rows::All),
            (("public".into(), "orders".into()), keys("id", &["1"])),
        ]
        .into();
        assert_eq!(got, vec![Change::Tables { tables, lsn: 100 }]);
        // A transaction that changed nothing cached says nothing.
        changes(&mut d, b"B");
        assert!(changes(&mut d, &commit(200)).is_empty());
        // The same table with another column: everything goes.
        changes(&mut d, b"B");
        changes(
            &mut d,
            &relation(7, "public", "orders", &[("id", 23), ("n", 25), ("z", 23)]),
        );
        changes(
            &mut d,
            &row(b'U', 7, &[(b'N', &[Some("1"), Some("b"), None])]),
        );
        assert_eq!(
            changes(&mut d, &commit(300)),
            vec![Change::Schema { lsn: 300 }]
        );
    }

    #[test]
    fn row_changes_name_their_identity_before_and_after() {
        let mut d = Decoder::default();
        changes(
            &mut d,
            &relation(7, "public", "kv", &[("id", 23), ("v", 20)]),
        );
        changes(&mut d, b"B");
        // An UPDATE that moves the key gives the old one (K) and the new.
        let moved = row(
            b'U',
            7,
            &[(b'K', &[Some("1"), None]), (b'N', &[Some("2"), Some("9")])],
        );
        changes(&mut d, &moved);
        changes(&mut d, &row(b'U', 7, &[(b'N', &[Some("3"), Some("9")])]));
        changes(&mut d, &row(b'D', 7, &[(b'K', &[Some("4"), None])]));
        assert_eq!(
            changes(&mut d, &commit(10)),
            one("public", "kv", keys("id", &["1", "2", "3", "4"]), 10)
        );
        // An identity value not sent: any row.
        changes(&mut d, b"B");
        changes(
            &mut d,
            &row(b'U', 7, &[(b'N', &[Some("\u{0}"), Some("1")])]),
        );
        changes(&mut d, &row(b'I', 7, &[(b'N', &[Some("5"), Some("1")])]));
        assert_eq!(
            changes(&mut d, &commit(20)),
            one("public", "kv", Rows::All, 20)
        );
        // A bulk write: any row.
        changes(&mut d, b"B");
        for i in 0..=MAX_KEYS {
            let id = i.to_string();
            changes(&mut d, &row(b'I', 7, &[(b'N', &[Some(&id), None])]));
        }
        assert_eq!(
            changes(&mut d, &commit(30)),
            one("public", "kv", Rows::All, 30)
        );
        // A tuple of another width than the relation's: malformed or not,
        // nothing is known of its rows.
        changes(&mut d, b"B");
        changes(&mut d, &row(b'I', 7, &[(b'N', &[Some("5")])]));
        assert_eq!(
            changes(&mut d, &commit(40)),
            one("public", "kv", Rows::All, 40)
        );
    }

    #[test]
    fn ddl_messages_with_sluices_prefix_reset_the_cache() {
        let message = |transactional: bool, prefix: &str, lsn: u64| {
            let mut m = vec![b'M', u8::from(transactional)];
            m.extend_from_slice(&lsn.to_be_bytes());
            m.extend_from_slice(prefix.as_bytes());
            m.push(0);
            m.extend_from_slice(&3u32.to_be_bytes());
            m.extend_from_slice(b"DDL");
            m
        };
        let mut d = Decoder::default();
        // Not transactional: at once.
        assert_eq!(
            changes(&mut d, &message(false, DDL_PREFIX, 5)),
            vec![Change::Schema { lsn: 5 }]
        );
        // Another prefix: someone else's message.
        assert!(changes(&mut d, &message(false, "other", 6)).is_empty());
        // Transactional: at its transaction's commit.
        changes(&mut d, b"B");
        assert!(changes(&mut d, &message(true, DDL_PREFIX, 7)).is_empty());
        assert_eq!(changes(&mut d, &commit(8)), vec![Change::Schema { lsn: 8 }]);
        assert!(d.copy_data(&xlog(b"M\x01")).is_err());
    }

    #[test]
    fn keepalives_and_bad_input() {
        let mut d = Decoder::default();
        let mut k = vec![b'k'];
        k.extend_from_slice(&42u64.to_be_bytes());
        k.extend_from_slice(&0i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            d.copy_data(&k),
            Ok(Frame::Keepalive {
                wal_end: 42,
                reply: true
            })
        );
        assert!(d.copy_data(b"w").is_err());
        assert!(d.copy_data(&xlog(b"I\0")).is_err());
        assert!(d.copy_data(&xlog(b"I\0\0\0\x07")).is_err(), "no tuple");
        assert!(
            d.copy_data(&xlog(b"I\0\0\0\x07N\0\x01t\0\0\0\x09ab"))
                .is_err()
        );
        assert!(d.copy_data(&xlog(b"I\0\0\0\x07N\0\x01x")).is_err());
        assert!(d.copy_data(&xlog(b"R\0\0\0\x07public")).is_err());
        assert!(d.copy_data(b"").is_err());
        assert_eq!(status_update(5, false).len(), 34);
    }
}
