//! A transaction-pooled client's use of its database's result cache: the
//! request at the front of its buffer answered from the store (no server),
//! or, on a miss, its reply recorded as the client receives it and stored
//! once the server goes back. What may be cached and when an entry stops
//! being true is `crate::cache`'s; this file knows the wire.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::prepared::{ClientStatements, StmtDef};
use super::vars::{SessionVars, Setting};
use crate::cache::live::DbCache;
use crate::cache::reads::{KeyValue, RowKey, integer};
use crate::cache::rules::Candidate;
use crate::cache::store::{Key, Read, Scope};
use crate::protocol::extended as ext;
use crate::protocol::frame::{HEADER_LEN, peek_header};
use crate::protocol::inspect::take_cstr;
use crate::route::{Need, Target, Topology};

/// A client's handle on the cache, and the miss it is recording.
#[derive(Debug)]
pub struct ClientCache {
    pub db: Arc<DbCache>,
    user: String,
    pending: Option<Box<Pending>>,
}

/// A cacheable request gone to a server: what its stored reply needs.
#[derive(Debug)]
struct Pending {
    key: Key,
    candidate: Arc<Candidate>,
    scope: Option<Scope>,
    applied: u64,
    epoch: u64,
    began: Instant,
    /// Set at checkout, from where the read runs.
    read: Option<Read>,
}

/// What one cached read recorded of the client's replies: zero-copy
/// slices, up to `max` bytes (`over` past it: nothing is kept).
#[derive(Debug, Default)]
pub struct Recording {
    pub chunks: Vec<Bytes>,
    pub len: usize,
    pub max: usize,
    pub over: bool,
}

impl Recording {
    pub fn push(&mut self, b: &Bytes) {
        if self.over {
            return;
        }
        self.len += b.len();
        if self.len > self.max {
            self.over = true;
            self.chunks = Vec::new();
        } else {
            self.chunks.push(b.clone());
        }
    }
}

/// The request at the front of a client's buffer, as the cache keys it.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'b> {
    pub len: usize,
    /// A Query's text, or the statement's Parse body after its name (text
    /// and parameter types).
    pub text: &'b [u8],
    /// The messages' kinds, with the Bind's formats and values.
    pub shape: Vec<u8>,
    /// The statement the batch parses (name, rest).
    pub parse: Option<(&'b [u8], &'b [u8])>,
    /// The Bind's formats and values.
    pub bind: Option<&'b [u8]>,
    pub simple: bool,
}

impl Request<'_> {
    pub fn sql(&self) -> Option<&str> {
        let text = if self.simple {
            self.text
        } else {
            ext::parse_query(self.text)
        };
        std::str::from_utf8(text).ok()
    }
}

/// The one request `buf` holds, when it is a shape the cache answers: a
/// simple Query, or Parse? Bind Describe? Execute Sync of one statement
/// into the unnamed portal, run to completion. Nothing may follow it (a
/// pipelined request's reply would be recorded with it).
pub fn request<'b>(buf: &'b [u8], statements: Option<&'b ClientStatements>) -> Option<Request<'b>> {
    let h = peek_header(buf, usize::MAX).ok()??;
    if h.tag == b'Q' {
        let (text, _) = take_cstr(&buf[HEADER_LEN..h.total.min(buf.len())])?;
        return (buf.len() == h.total).then_some(Request {
            len: h.total,
            text,
            shape: vec![b'Q'],
            parse: None,
            bind: None,
            simple: true,
        });
    }
    let mut off = 0;
    let mut shape = Vec::new();
    let mut parse: Option<(&[u8], &[u8])> = None;
    let mut text: Option<&[u8]> = None;
    let mut bound: Option<&[u8]> = None;
    let mut values: Option<&[u8]> = None;
    let mut executed = false;
    loop {
        let h = peek_header(&buf[off..], usize::MAX).ok()??;
        if buf.len() - off < h.total {
            return None;
        }
        let body = &buf[off + HEADER_LEN..off + h.total];
        off += h.total;
        shape.push(h.tag);
        match h.tag {
            b'P' if parse.is_none() && bound.is_none() => {
                let v = ext::parse_view(body)?;
                parse = Some((v.name, v.rest));
            }
            b'B' if bound.is_none() => {
                let v = ext::bind_view(body)?;
                if !v.portal.is_empty() {
                    return None;
                }
                text = match parse {
                    Some((name, rest)) if name == v.statement => Some(rest),
                    Some(_) => return None,
                    None => {
                        let s = statements?;
                        let def: &Arc<StmtDef> = if v.statement.is_empty() {
                            s.unnamed.as_ref()?
                        } else {
                            s.named.get(v.statement)?
                        };
                        Some(&def.rest[..])
                    }
                };
                bound = Some(v.statement);
                values = Some(v.rest);
                shape.extend_from_slice(&(v.rest.len() as u32).to_be_bytes());
                shape.extend_from_slice(v.rest);
            }
            b'D' => match (ext::target_view(body)?, bound) {
                ((b'P', b""), Some(_)) => shape.push(b'P'),
                ((b'S', name), Some(s)) if name == s => shape.push(b'S'),
                _ => return None,
            },
            // The unnamed portal, all rows.
            b'E' if bound.is_some() && !executed && body == b"\0\0\0\0\0" => executed = true,
            b'S' if executed && off == buf.len() => {
                return Some(Request {
                    len: off,
                    text: text?,
                    shape,
                    parse,
                    bind: values,
                    simple: false,
                });
            }
            _ => return None,
        }
    }
}

/// The rows a read by key depends on, with its parameter's value when the
/// key is one: an integer in text, or a binary int2/int4/int8 (when the
/// statement leaves the parameter's type to PostgreSQL or makes it one of
/// those). Anything else: None, and the read counts as one of its table.
pub fn scope_of(row: &RowKey, req: &Request<'_>) -> Option<Scope> {
    let value = match row.value {
        KeyValue::Int(i) => i,
        KeyValue::Param(n) => {
            let (binary, v) = ext::bind_param(req.bind?, n)?;
            if !binary {
                integer(v)?
            } else {
                let declared = ext::parse_param_type(req.text, n);
                if !matches!(declared, None | Some(0 | 20 | 21 | 23)) {
                    return None;
                }
                match v.len() {
                    2 => i64::from(i16::from_be_bytes([v[0], v[1]])),
                    4 => i64::from(i32::from_be_bytes([v[0], v[1], v[2], v[3]])),
                    8 => i64::from_be_bytes(v.try_into().ok()?),
                    _ => return None,
                }
            }
        }
    };
    Some(Scope {
        column: row.column.clone(),
        value: value.to_string(),
    })
}

/// The settings a result can depend on, as one key part: every reported
/// parameter but application_name, and every other setting the client
/// made (search_path, role, extra_float_digits, bytea_output, ...).
pub fn settings_key(vars: &SessionVars) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    for (k, v) in vars.reported.iter() {
        if k.eq_ignore_ascii_case("application_name") {
            continue;
        }
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out.push(0);
    for (k, s) in &vars.extra {
        let (Setting::Text(v) | Setting::Sql(v)) = s;
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Whether a recorded reply is one clean answer: only the messages of a
/// successful read, ending in its one ReadyForQuery, outside a transaction.
pub fn clean_reply(reply: &[u8]) -> bool {
    let mut off = 0;
    while let Ok(Some(h)) = peek_header(&reply[off..], usize::MAX) {
        if reply.len() - off < h.total {
            return false;
        }
        match h.tag {
            b'1' | b'2' | b't' | b'n' | b'T' | b'D' | b'C' => {}
            b'Z' => {
                return off + h.total == reply.len()
                    && reply[off + HEADER_LEN..off + h.total] == *b"I";
            }
            _ => return false,
        }
        off += h.total;
    }
    false
}

impl ClientCache {
    pub fn new(db: Arc<DbCache>, user: &str) -> Self {
        Self {
            db,
            user: user.to_string(),
            pending: None,
        }
    }

    /// The cached answer to the request `buf` holds, consuming it; None
    /// (and, for a cacheable request, a miss to record) otherwise.
    pub fn answer(
        &mut self,
        buf: &mut BytesMut,
        vars: &SessionVars,
        statements: Option<&mut ClientStatements>,
        routing: Option<(&Topology, &mut Need)>,
        new_def: impl Fn(&[u8]) -> Arc<StmtDef>,
    ) -> Option<Bytes> {
        self.pending = None;
        if !self.db.streaming() {
            return None;
        }
        let req = request(buf, statements.as_deref())?;
        let candidate = self.db.verdict(req.sql()?)?;
        let key = Key {
            database: self.db.database.clone(),
            user: self.user.clone(),
            text: req.text.to_vec(),
            bind: req.shape.clone(),
            settings: settings_key(vars),
        };
        let len = req.len;
        let parse = req.parse.map(|(n, r)| (n.to_vec(), r.to_vec()));
        let (applied, epoch) = self.db.position();
        let began = Instant::now();
        // A client that wrote reads its writes: the store must have applied
        // past them. Others read what is at most max_cache_lag old.
        let (min, topo) = match routing {
            Some((topo, need)) => {
                need.resolve(topo);
                let min = match *need {
                    Need::None => Some(0),
                    Need::Lsn(l) => Some(l),
                    Need::Pending(_) => None,
                };
                (min, Some(topo))
            }
            None => (None, None),
        };
        let max_lag = self.db.settings.max_lag;
        let fresh = |at: u64| {
            topo.is_some_and(|t| t.latest().is_some() && t.lag_of(at, began).0 <= max_lag)
        };
        let hit = min.and_then(|m| self.db.get(&key, m, fresh));
        // A named statement the batch parses must be new to the client (or
        // PostgreSQL would have refused it), and followed by sluice.
        let parse_ok = match (&parse, &statements) {
            (Some((name, _)), Some(s)) if !name.is_empty() => !s.named.contains_key(name),
            (Some((name, _)), None) => name.is_empty(),
            _ => true,
        };
        if let Some(e) = hit.filter(|_| parse_ok) {
            if let (Some((name, rest)), Some(s)) = (parse, statements) {
                if name.is_empty() {
                    s.unnamed = Some(StmtDef::unnamed(&rest));
                } else {
                    s.named.insert(name, new_def(&rest));
                }
            }
            let _ = buf.split_to(len);
            self.db.count_hit(true);
            return Some(e.reply.clone());
        }
        self.db.count_hit(false);
        // Which rows the miss read: worked out for a miss only (a hit needs
        // no scope, and hits are most requests).
        let scope = candidate.row.as_ref().and_then(|r| scope_of(r, &req));
        self.pending = Some(Box::new(Pending {
            key,
            candidate,
            scope,
            applied,
            epoch,
            began,
            read: None,
        }));
        None
    }

    /// The request is to be recorded: the largest reply to keep.
    pub fn recording(&self) -> Option<usize> {
        self.pending.as_ref().map(|p| p.candidate.max_entry_size)
    }

    /// The recorded read runs on `on`: what it will have seen.
    pub fn checked_out(&mut self, on: Target, topo: Option<&Topology>) {
        let Some(p) = self.pending.as_deref_mut() else {
            return;
        };
        p.read = match on {
            Target::Primary => Some(Read {
                as_of: p.applied,
                epoch: p.epoch,
                began: p.began,
                settle: Some(self.db.settings.settle),
            }),
            // A replica has replayed at least as far as the monitor last saw.
            Target::Replica(i) => topo
                .and_then(|t| t.views().get(i).map(|v| v.replay_lsn))
                .map(|replay| Read {
                    as_of: p.applied.min(replay),
                    epoch: p.epoch,
                    began: p.began,
                    settle: None,
                }),
        };
    }

    /// The server went back after the recorded request (`released`: in a
    /// clean state): its reply is stored when it is one clean answer.
    /// Anything else the client sent while the server was held would have
    /// held the server until its own ReadyForQuery, which `clean_reply`
    /// refuses: the reply recorded is the request's alone.
    pub fn finish(&mut self, recording: Option<Box<Recording>>, released: bool) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let Some(r) = recording.filter(|r| released && !r.over) else {
            self.db.count_not_stored();
            return;
        };
        let mut reply = BytesMut::with_capacity(r.len);
        for c in &r.chunks {
            reply.extend_from_slice(c);
        }
        let (true, Some(read)) = (clean_reply(&reply), p.read) else {
            self.db.count_not_stored();
            return;
        };
        let mut entry = crate::cache::store::entry(
            reply.freeze(),
            p.candidate.tables.clone(),
            Instant::now(),
            p.candidate.ttl,
        );
        entry.scope = p.scope;
        self.db.insert(p.key, entry, read);
    }

    /// DDL committed through this client: nothing cached is trusted.
    pub fn schema_changed(&self) {
        self.db.schema_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn batch(frames: &[(u8, &[u8])]) -> Vec<u8> {
        frames.iter().flat_map(|(t, b)| frame(*t, b)).collect()
    }

    const PARSE: &[u8] = b"\0SELECT v FROM t WHERE k = $1\0\0\0";
    const BIND: &[u8] = b"\0\0\0\0\0\x01\0\0\0\x011\0\0";
    const EXEC: &[u8] = b"\0\0\0\0\0";

    #[test]
    fn requests_the_cache_answers() {
        let q = frame(b'Q', b"SELECT 1\0");
        let r = request(&q, None).expect("a query");
        assert_eq!((r.sql(), r.simple), (Some("SELECT 1"), true));
        let mut two = q.clone();
        two.extend_from_slice(&q);
        assert!(request(&two, None).is_none(), "a pipelined request follows");
        let b = batch(&[
            (b'P', PARSE),
            (b'B', BIND),
            (b'D', b"P\0"),
            (b'E', EXEC),
            (b'S', b""),
        ]);
        let r = request(&b, None).expect("a batch");
        assert_eq!(r.sql(), Some("SELECT v FROM t WHERE k = $1"));
        assert_eq!(r.parse.map(|p| p.0), Some(&b""[..]));
        // Another parameter value: another key.
        let other = batch(&[
            (b'P', PARSE),
            (b'B', b"\0\0\0\0\0\x01\0\0\0\x012\0\0"),
            (b'D', b"P\0"),
            (b'E', EXEC),
            (b'S', b""),
        ]);
        assert_ne!(
            request(&other, None).map(|r| r.shape),
            Some(r.shape.clone())
        );
        // Partial fetches, named portals, no Sync: not cached.
        let partial = batch(&[
            (b'P', PARSE),
            (b'B', BIND),
            (b'E', b"\0\0\0\0\x05"),
            (b'S', b""),
        ]);
        assert!(request(&partial, None).is_none());
        let portal = batch(&[
            (b'P', PARSE),
            (b'B', b"p\0\0\0\0\0\0\0\0"),
            (b'E', b"p\0\0\0\0\0"),
            (b'S', b""),
        ]);
        assert!(request(&portal, None).is_none());
        let flush = batch(&[(b'P', PARSE), (b'B', BIND), (b'E', EXEC), (b'H', b"")]);
        assert!(request(&flush, None).is_none());
        // A Bind of a statement the client prepared earlier.
        let mut s = ClientStatements::default();
        s.named
            .insert(b"s1".to_vec(), StmtDef::unnamed(&PARSE[1..]));
        let bind_only = batch(&[
            (b'B', b"\0s1\0\0\0\0\x01\0\0\0\x011\0\0"),
            (b'E', EXEC),
            (b'S', b""),
        ]);
        let r = request(&bind_only, Some(&s)).expect("bound");
        assert_eq!(r.text, &PARSE[1..]);
        assert!(request(&bind_only, None).is_none(), "unknown statement");
    }

    #[test]
    fn a_read_by_key_takes_its_value_from_the_bind() {
        let row = RowKey {
            column: "k".into(),
            value: KeyValue::Param(0),
        };
        let scope = |frames: &[(u8, &[u8])]| {
            let b = batch(frames);
            let r = request(&b, None).expect("a batch");
            scope_of(&row, &r).map(|s| s.value)
        };
        let run = |parse: &[u8], bind: &[u8]| {
            scope(&[(b'P', parse), (b'B', bind), (b'E', EXEC), (b'S', b"")])
        };
        assert_eq!(run(PARSE, BIND), Some("1".into()), "text");
        let binary = b"\0\0\0\x01\0\x01\0\x01\0\0\0\x04\xff\xff\xff\xfe\0\0";
        assert_eq!(run(PARSE, binary), Some("-2".into()), "binary int4");
        let numeric = b"\0SELECT v FROM t WHERE k = $1\0\0\x01\0\0\x06\xa4";
        assert_eq!(run(numeric, binary), None, "binary numeric");
        let int8 = b"\0SELECT v FROM t WHERE k = $1\0\0\x01\0\0\0\x14";
        let eight = b"\0\0\0\x01\0\x01\0\x01\0\0\0\x08\0\0\0\0\0\0\0\x07\0\0";
        assert_eq!(run(int8, eight), Some("7".into()), "binary int8");
        let spaced = b"\0\0\0\0\0\x01\0\0\0\x02 1\0\0";
        assert_eq!(run(PARSE, spaced), None, "not written plainly");
        let null = b"\0\0\0\0\0\x01\xff\xff\xff\xff\0\0";
        assert_eq!(run(PARSE, null), None);
        let literal = RowKey {
            column: "k".into(),
            value: KeyValue::Int(3),
        };
        let q = frame(b'Q', b"SELECT v FROM t WHERE k = 3\0");
        let r = request(&q, None).unwrap();
        assert_eq!(scope_of(&literal, &r).map(|s| s.value), Some("3".into()));
    }

    #[test]
    fn only_clean_replies_are_stored() {
        let ok = batch(&[
            (b'T', b"x"),
            (b'D', b"y"),
            (b'C', b"SELECT 1\0"),
            (b'Z', b"I"),
        ]);
        assert!(clean_reply(&ok));
        let err = batch(&[(b'E', b"x"), (b'Z', b"I")]);
        assert!(!clean_reply(&err));
        let in_txn = batch(&[(b'C', b"SELECT 1\0"), (b'Z', b"T")]);
        assert!(!clean_reply(&in_txn));
        let notice = batch(&[(b'N', b"x"), (b'C', b"SELECT 1\0"), (b'Z', b"I")]);
        assert!(!clean_reply(&notice));
        let mut twice = ok.clone();
        twice.extend_from_slice(&ok);
        assert!(!clean_reply(&twice));
        assert!(!clean_reply(&ok[..ok.len() - 1]));
    }
}
