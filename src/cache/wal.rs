//! What the primary's changes say about cached results: a decoder of the
//! logical replication stream (`pgoutput`, protocol version 1) that turns
//! each committed transaction into the tables it changed. Pure: the stream
//! (`super::stream`) feeds it CopyData bodies.

use std::collections::{BTreeSet, HashMap};

use crate::protocol::inspect::take_cstr;

/// A committed transaction's effect on cached results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Rows of these tables (schema, name) changed: INSERT, UPDATE,
    /// DELETE or TRUNCATE, committed; `lsn` is the end of its commit.
    Tables {
        tables: BTreeSet<(String, String)>,
        lsn: u64,
    },
    /// A table's definition changed (columns, name): nothing cached can be
    /// trusted.
    Schema { lsn: u64 },
}

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
}

#[derive(Debug, Default)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
    /// In the transaction being decoded.
    touched: BTreeSet<u32>,
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
                self.touched.insert(u32_at(m, 1)?);
                Ok(None)
            }
            Some(b'T') => {
                let n = u32_at(m, 1)? as usize;
                for i in 0..n {
                    self.touched.insert(u32_at(m, 6 + 4 * i)?);
                }
                Ok(None)
            }
            Some(b'C') => {
                let lsn = u64_at(m, 10)?;
                // A change to a table not described (never expected from
                // pgoutput): nothing can be trusted either.
                let unknown = self
                    .touched
                    .iter()
                    .any(|id| !self.relations.contains_key(id));
                if std::mem::take(&mut self.schema_changed) || unknown {
                    self.touched.clear();
                    return Ok(Some(Change::Schema { lsn }));
                }
                let tables: BTreeSet<(String, String)> = std::mem::take(&mut self.touched)
                    .into_iter()
                    .filter_map(|id| self.relations.get(&id))
                    .map(|r| (r.schema.clone(), r.name.clone()))
                    .collect();
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
        for _ in 0..n {
            let (col, after) = take_cstr(rest.get(1..).ok_or(Malformed("column"))?)
                .ok_or(Malformed("column name"))?;
            let ty = u32_at(after, 0)?;
            columns.push((String::from_utf8_lossy(col).into_owned(), ty));
            rest = after.get(8..).ok_or(Malformed("column type"))?;
        }
        let r = Relation {
            schema: String::from_utf8_lossy(schema).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            columns,
        };
        if self.relations.get(&id).is_some_and(|old| *old != r) {
            self.schema_changed = true;
        }
        self.relations.insert(id, r);
        Ok(())
    }
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

    fn relation(id: u32, schema: &str, name: &str, cols: &[(&str, u32)]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&id.to_be_bytes());
        for s in [schema, name] {
            m.extend_from_slice(s.as_bytes());
            m.push(0);
        }
        m.push(b'd');
        m.extend_from_slice(&(cols.len() as u16).to_be_bytes());
        for (c, ty) in cols {
            m.push(0);
            m.extend_from_slice(c.as_bytes());
            m.push(0);
            m.extend_from_slice(&ty.to_be_bytes());
            m.extend_from_slice(&(-1i32).to_be_bytes());
        }
        m
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
        changes(&mut d, &relation(7, "public", "orders", &[("id", 23)]));
        changes(&mut d, &relation(8, "app", "items", &[("id", 23)]));
        changes(&mut d, &[b'I', 0, 0, 0, 7, b'N']);
        let mut truncate = vec![b'T', 0, 0, 0, 1, 0];
        truncate.extend_from_slice(&8u32.to_be_bytes());
        changes(&mut d, &truncate);
        let got = changes(&mut d, &commit(100));
        let tables = [("app", "items"), ("public", "orders")]
            .map(|(s, n)| (s.to_string(), n.to_string()))
            .into_iter()
            .collect();
        assert_eq!(got, vec![Change::Tables { tables, lsn: 100 }]);
        // A transaction that changed nothing cached says nothing.
        changes(&mut d, b"B");
        assert!(changes(&mut d, &commit(200)).is_empty());
        // The same table with another column: everything goes.
        changes(&mut d, b"B");
        changes(
            &mut d,
            &relation(7, "public", "orders", &[("id", 23), ("note", 25)]),
        );
        changes(&mut d, &[b'U', 0, 0, 0, 7, b'N']);
        assert_eq!(
            changes(&mut d, &commit(300)),
            vec![Change::Schema { lsn: 300 }]
        );
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
        assert!(d.copy_data(&xlog(b"R\0\0\0\x07public")).is_err());
        assert!(d.copy_data(b"").is_err());
        assert_eq!(status_update(5, false).len(), 34);
    }
}
