//! Transaction pooling's handling of extended-protocol statements: renames
//! client statements to their sluice-wide names, prepares them lazily on
//! whichever server the client lands on, answers what it can itself (Parse
//! of a statement the server already has, Close), and keeps the replies the
//! client sees exactly those of a direct connection.

use bytes::{Bytes, BytesMut};

use super::expect::{Act, Entry, ExpectQueue, FrameAction, Kind, OnFail};
use super::prepared::{ClientStatements, ServerStatements, StmtDef, define};
use crate::protocol::build::{self, Severity};
use crate::protocol::extended as ext;
use crate::protocol::tags::{FrontendTag, TxnStatus};
use std::sync::Arc;

/// What to send the server instead of a client message.
#[derive(Debug)]
pub enum ClientAction {
    Forward,
    /// Send these bytes in place of the message.
    Replace(BytesMut),
    /// Send nothing; sluice answers (or has answered) it.
    Drop,
}

/// Bytes of an answerable batch sluice waits for before it takes a server
/// anyway (a client may stream known Parses without a Sync).
const PENDING_BATCH_MAX: usize = 64 * 1024;

/// Whether sluice can answer the client's next batch itself.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The replies; the batch has been consumed.
    Reply(BytesMut),
    /// So far answerable, but its Sync is not buffered yet.
    NeedMore,
    NeedServer,
}

#[derive(Debug, Default)]
pub struct Statements {
    pub client: ClientStatements,
    pub expect: ExpectQueue,
    /// Per-server cache bound (max_prepared_statements).
    pub cap: usize,
    /// Statements prepared on a server on the client's behalf.
    pub reprepares: u64,
    pub evictions: u64,
    /// Statements of this pool known to parse: a client's Parse of one can
    /// be answered without a server.
    pub known: Option<Arc<KnownStatements>>,
    /// The statement the last Bind executes, when its text may change
    /// session state (`StmtDef::session`): the caller scans it.
    pub bound: Option<Arc<StmtDef>>,
}

/// Where a client's statement lives on servers: the unnamed slot, or a
/// named statement under its global name.
enum Global {
    Unnamed,
    Named(Arc<StmtDef>),
}

impl Global {
    fn name(&self) -> &[u8] {
        match self {
            Global::Unnamed => b"",
            Global::Named(def) => def.global.as_bytes(),
        }
    }
}

/// Global statement names that parsed successfully on some server of a pool.
#[derive(Debug, Default)]
pub struct KnownStatements(std::sync::Mutex<std::collections::HashSet<String>>);

impl KnownStatements {
    pub fn contains(&self, global: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(global)
    }

    pub fn insert(&self, global: String) {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: forgetting only costs a round trip to a server later.
        if set.len() >= 10_000 {
            set.clear();
        }
        set.insert(global);
    }
}

fn frame(f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::new();
    f(&mut b);
    b.freeze()
}

impl Statements {
    fn push(&mut self, e: Entry) {
        if let Some(undo) = self.expect.push(e) {
            self.undo(undo, None);
        }
    }

    fn undo(&mut self, f: OnFail, server: Option<&mut ServerStatements>) {
        if let (Some(g), Some(s)) = (f.unprepare, server) {
            s.remove(&g);
        }
        if let Some(n) = f.forget_client {
            self.client.named.remove(&n);
        }
    }

    /// Makes sure `def` is prepared on the server: appends Close + Parse
    /// (replies swallowed) to `out` when the server does not have it.
    fn ensure(&mut self, def: &StmtDef, server: &mut ServerStatements, out: &mut BytesMut) {
        if server.touch(&def.global) {
            return;
        }
        self.prepare_into(def, server, out, Act::Swallow, None);
        self.reprepares += 1;
    }

    /// Close (in case a stale copy exists) and Parse `def` under its global name.
    fn prepare_into(
        &mut self,
        def: &StmtDef,
        server: &mut ServerStatements,
        out: &mut BytesMut,
        parse_act: Act,
        client_name: Option<Vec<u8>>,
    ) {
        if let Some(evicted) = server.insert(&def.global, self.cap) {
            ext::build_close(out, b'S', evicted.as_bytes());
            self.push(Entry {
                kind: Kind::Close,
                act: Act::Swallow,
                on_fail: OnFail::default(),
            });
            self.evictions += 1;
        }
        ext::build_close(out, b'S', def.global.as_bytes());
        self.push(Entry {
            kind: Kind::Close,
            act: Act::Swallow,
            on_fail: OnFail::default(),
        });
        ext::build_parse(out, def.global.as_bytes(), &def.rest);
        let on_fail = OnFail {
            unprepare: Some(def.global.clone()),
            forget_client: client_name,
        };
        self.push(Entry {
            kind: Kind::Parse,
            act: parse_act,
            on_fail,
        });
    }

    /// The client's statement for a Bind/Describe name, prepared on the
    /// server; `Global::name` is its server-side name. None: pass the
    /// message through.
    fn resolve(
        &mut self,
        name: &[u8],
        server: &mut ServerStatements,
        out: &mut BytesMut,
    ) -> Option<Global> {
        if name.is_empty() {
            let def = self.client.unnamed.clone()?;
            if server.unnamed.as_ref().is_none_or(|s| s.rest != def.rest) {
                ext::build_parse(out, b"", &def.rest);
                self.push(Entry {
                    kind: Kind::Parse,
                    act: Act::Swallow,
                    on_fail: OnFail::default(),
                });
                server.unnamed = Some(def);
                self.reprepares += 1;
            }
            return Some(Global::Unnamed);
        }
        let def = self.client.named.get(name)?.clone();
        self.ensure(&def, server, out);
        Some(Global::Named(def))
    }

    /// Handles one client message of the extended protocol (and Query's
    /// effect on the unnamed statement). `search_path` is asked only when a
    /// named statement is defined, since it is part of its identity.
    pub fn on_client<'p>(
        &mut self,
        tag: FrontendTag,
        body: &[u8],
        search_path: impl Fn() -> Option<&'p str>,
        server: &mut ServerStatements,
    ) -> ClientAction {
        match tag {
            FrontendTag::Parse => self.parse(body, search_path, server),
            FrontendTag::Bind => {
                let Some(v) = ext::bind_view(body) else {
                    self.push(Entry::reply(Kind::Bind));
                    return ClientAction::Forward;
                };
                let mut out = BytesMut::new();
                // resolve() queues any Parse it inserts ahead of the Bind's own entry.
                let global = self.resolve(v.statement, server, &mut out);
                self.bound = match &global {
                    Some(Global::Named(def)) if def.session => Some(def.clone()),
                    Some(Global::Unnamed) => self.client.unnamed.clone().filter(|d| d.session),
                    _ => None,
                };
                let action = match global {
                    Some(g) if g.name() != v.statement || !out.is_empty() => {
                        ext::build_bind(&mut out, v.portal, g.name(), v.rest);
                        ClientAction::Replace(out)
                    }
                    _ => ClientAction::Forward,
                };
                self.push(Entry::reply(Kind::Bind));
                action
            }
            FrontendTag::Describe => match ext::target_view(body) {
                Some((b'S', name)) => {
                    let mut out = BytesMut::new();
                    let action = match self.resolve(name, server, &mut out) {
                        Some(g) if g.name() != name || !out.is_empty() => {
                            ext::build_describe(&mut out, b'S', g.name());
                            ClientAction::Replace(out)
                        }
                        _ => ClientAction::Forward,
                    };
                    self.push(Entry::reply(Kind::DescribeStatement));
                    action
                }
                _ => {
                    self.push(Entry::reply(Kind::DescribePortal));
                    ClientAction::Forward
                }
            },
            FrontendTag::Close => match ext::target_view(body) {
                Some((b'S', name))
                    if !name.is_empty() && self.client.named.remove(name).is_some() =>
                {
                    // Other clients may share the server's statement: only the client's name goes.
                    let reply = frame(ext::close_complete);
                    self.push(Entry {
                        kind: Kind::Close,
                        act: Act::Inject(reply),
                        on_fail: OnFail::default(),
                    });
                    ClientAction::Drop
                }
                Some((b'S', [])) => {
                    self.client.unnamed = None;
                    server.unnamed = None;
                    self.push(Entry::reply(Kind::Close));
                    ClientAction::Forward
                }
                _ => {
                    self.push(Entry::reply(Kind::Close));
                    ClientAction::Forward
                }
            },
            FrontendTag::Execute => {
                self.push(Entry::reply(Kind::Execute));
                ClientAction::Forward
            }
            // PostgreSQL ignores a Sync during COPY FROM STDIN: sluice
            // does not send it, and no ReadyForQuery is owed for it.
            FrontendTag::Sync if self.expect.in_copy_in() => ClientAction::Drop,
            FrontendTag::Sync => {
                self.push(Entry::reply(Kind::Sync));
                ClientAction::Forward
            }
            FrontendTag::CopyDone | FrontendTag::CopyFail => {
                self.expect.copy_end();
                ClientAction::Forward
            }
            FrontendTag::Query | FrontendTag::FunctionCall => {
                // A simple query replaces the server's unnamed statement.
                server.unnamed = None;
                self.push(Entry::reply(Kind::Simple));
                ClientAction::Forward
            }
            _ => ClientAction::Forward,
        }
    }

    fn parse<'p>(
        &mut self,
        body: &[u8],
        search_path: impl Fn() -> Option<&'p str>,
        server: &mut ServerStatements,
    ) -> ClientAction {
        let Some(v) = ext::parse_view(body) else {
            self.push(Entry::reply(Kind::Parse));
            return ClientAction::Forward;
        };
        if v.name.is_empty() {
            // Drivers re-parse the same unnamed statement on every execution:
            // keep the copy already held when the text has not changed.
            let def = match &self.client.unnamed {
                Some(d) if d.rest == v.rest => d.clone(),
                _ => StmtDef::unnamed(v.rest),
            };
            self.client.unnamed = Some(def.clone());
            server.unnamed = Some(def);
            self.push(Entry::reply(Kind::Parse));
            return ClientAction::Forward;
        }
        if self.client.named.contains_key(v.name) {
            // As PostgreSQL would: 42P05, and the server skips to Sync. A
            // Parse that cannot parse makes the server fail and skip too.
            let mut err = BytesMut::new();
            let msg = format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(v.name)
            );
            build::error(&mut err, Severity::Error, "42P05", &msg);
            let mut out = BytesMut::new();
            ext::build_parse(&mut out, b"", b"sluice duplicate prepared statement\0\0\0");
            server.unnamed = None;
            self.push(Entry {
                kind: Kind::Parse,
                act: Act::ReplaceError(err.freeze()),
                on_fail: OnFail::default(),
            });
            return ClientAction::Replace(out);
        }
        let def = define(v.rest, search_path());
        self.client.named.insert(v.name.to_vec(), def.clone());
        if server.touch(&def.global) {
            let reply = frame(ext::parse_complete);
            let on_fail = OnFail {
                unprepare: None,
                forget_client: Some(v.name.to_vec()),
            };
            self.push(Entry {
                kind: Kind::Parse,
                act: Act::Inject(reply),
                on_fail,
            });
            return ClientAction::Drop;
        }
        let mut out = BytesMut::new();
        self.prepare_into(&def, server, &mut out, Act::Reply, Some(v.name.to_vec()));
        ClientAction::Replace(out)
    }

    /// Accounts for a server frame; undoes the bookkeeping of failed or skipped messages.
    pub fn on_server(&mut self, tag: u8, server: &mut ServerStatements) -> FrameAction {
        let mut action = self.expect.on_server(tag);
        if let (Some(g), Some(k)) = (action.parsed.take(), &self.known) {
            tracing::trace!(global = %g, "statement known");
            k.insert(g);
        }
        for f in std::mem::take(&mut action.failed) {
            self.undo(f, Some(server));
        }
        action
    }

    /// Answers a batch of Parse (of known statements), Close (statement)
    /// and Flush messages ending in Sync without a server, when that is all
    /// `buf` holds up to its first Sync. Consumes the batch only when it
    /// answers; `NeedMore` when the batch could be answered but its end is
    /// not buffered yet (so a batch split across reads takes no server).
    pub fn answer_without_server<'p>(
        &mut self,
        buf: &mut BytesMut,
        search_path: impl Fn() -> Option<&'p str>,
        max: usize,
    ) -> Answer {
        // Asked before every request: a Query (most often) leaves at once.
        if !matches!(buf.first(), Some(b'P' | b'C' | b'H')) {
            return Answer::NeedServer;
        }
        let Some(known) = self.known.as_ref() else {
            return Answer::NeedServer;
        };
        let mut off = 0;
        let mut flushed = false;
        let mut plan: Vec<(u8, Vec<u8>, Option<Arc<StmtDef>>)> = Vec::new();
        loop {
            // The client may wait for replies after a Flush, and a batch is
            // only held back while it stays small.
            let incomplete = if flushed || off > PENDING_BATCH_MAX {
                Answer::NeedServer
            } else {
                Answer::NeedMore
            };
            let h = match crate::protocol::frame::peek_header(&buf[off..], max) {
                Ok(Some(h)) if buf.len() - off >= h.total => h,
                Ok(_) => return incomplete,
                Err(_) => return Answer::NeedServer,
            };
            let body = &buf[off + crate::protocol::frame::HEADER_LEN..off + h.total];
            off += h.total;
            match FrontendTag::from_byte(h.tag) {
                FrontendTag::Parse => {
                    let Some(v) = ext::parse_view(body) else {
                        return Answer::NeedServer;
                    };
                    if v.name.is_empty() || self.client.named.contains_key(v.name) {
                        return Answer::NeedServer;
                    }
                    let def = define(v.rest, search_path());
                    if !known.contains(&def.global) {
                        tracing::trace!(global = %def.global, "not known yet");
                        return Answer::NeedServer;
                    }
                    plan.push((b'P', v.name.to_vec(), Some(def)));
                }
                FrontendTag::Close => match ext::target_view(body) {
                    Some((b'S', name)) if !name.is_empty() => {
                        plan.push((b'C', name.to_vec(), None))
                    }
                    _ => return Answer::NeedServer,
                },
                FrontendTag::Flush => flushed = true,
                FrontendTag::Sync => break,
                _ => return Answer::NeedServer,
            }
        }
        let _ = buf.split_to(off);
        let mut out = BytesMut::new();
        for (kind, name, def) in plan {
            match (kind, def) {
                (b'P', Some(def)) => {
                    self.client.named.insert(name, def);
                    ext::parse_complete(&mut out);
                }
                _ => {
                    self.client.named.remove(&name);
                    ext::close_complete(&mut out);
                }
            }
        }
        build::ready_for_query(&mut out, TxnStatus::Idle);
        Answer::Reply(out)
    }

    /// DEALLOCATE ALL / DISCARD ALL from the client: its names go, and the
    /// server's statements are gone too.
    pub fn forget_all(&mut self, server: &mut ServerStatements) {
        self.client = ClientStatements::default();
        server.clear();
    }

    /// `DEALLOCATE name` of a protocol-level statement, answered by sluice.
    pub fn deallocate(&mut self, name: &str, status: TxnStatus) -> bool {
        if self.client.named.remove(name.as_bytes()).is_none() {
            return false;
        }
        let mut out = BytesMut::new();
        build::command_complete(&mut out, "DEALLOCATE");
        build::ready_for_query(&mut out, status);
        self.push(Entry {
            kind: Kind::Simple,
            act: Act::Inject(out.freeze()),
            on_fail: OnFail::default(),
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::split;

    fn tags(b: &BytesMut) -> Vec<(u8, Vec<u8>)> {
        let mut b = b.clone();
        let mut out = Vec::new();
        while let Ok(Some(f)) = split(&mut b, 1 << 20) {
            out.push((f.tag, f.body().to_vec()));
        }
        out
    }

    fn st() -> Statements {
        Statements {
            cap: 10,
            ..Default::default()
        }
    }

    const PARSE_S1: &[u8] = b"s1\0SELECT 1\0\0\0";

    #[test]
    fn first_parse_prepares_under_the_global_name() {
        let (mut s, mut server) = (st(), ServerStatements::default());
        let ClientAction::Replace(out) =
            s.on_client(FrontendTag::Parse, PARSE_S1, || None, &mut server)
        else {
            panic!("expected a rewrite")
        };
        let sent = tags(&out);
        let global = define(b"SELECT 1\0\0\0", None).global.clone();
        assert_eq!(sent.iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"CP");
        assert!(sent[1].1.starts_with(global.as_bytes()));
        // The Close's CloseComplete is swallowed; the ParseComplete reaches the client.
        assert!(s.on_server(b'3', &mut server).drop);
        assert!(!s.on_server(b'1', &mut server).drop);
        assert!(s.expect.is_empty());
    }

    #[test]
    fn bind_on_another_server_reprepares_and_swallows() {
        let (mut s, mut a) = (st(), ServerStatements::default());
        s.on_client(FrontendTag::Parse, PARSE_S1, || None, &mut a);
        s.on_server(b'3', &mut a);
        s.on_server(b'1', &mut a);
        let mut b = ServerStatements::default();
        let ClientAction::Replace(out) =
            s.on_client(FrontendTag::Bind, b"\0s1\0\0\0\0\0\0\0", || None, &mut b)
        else {
            panic!("expected a rewrite")
        };
        assert_eq!(
            tags(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            b"CPB"
        );
        assert!(s.on_server(b'3', &mut b).drop);
        assert!(s.on_server(b'1', &mut b).drop);
        assert!(!s.on_server(b'2', &mut b).drop);
        assert_eq!(s.reprepares, 1);
        // A second Bind on the same server needs nothing inserted.
        let ClientAction::Replace(out) =
            s.on_client(FrontendTag::Bind, b"\0s1\0\0\0\0\0\0\0", || None, &mut b)
        else {
            panic!("expected the name to be rewritten")
        };
        assert_eq!(tags(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"B");
    }

    #[test]
    fn parse_of_a_cached_statement_is_answered_by_sluice() {
        let (mut s, mut server) = (st(), ServerStatements::default());
        server.insert(&define(b"SELECT 1\0\0\0", None).global, 10);
        assert!(matches!(
            s.on_client(FrontendTag::Parse, PARSE_S1, || None, &mut server),
            ClientAction::Drop
        ));
        assert_eq!(s.expect.due_injections().len(), 1);
        // Close of the client's name is answered too, and the name is gone.
        assert!(matches!(
            s.on_client(FrontendTag::Close, b"Ss1\0", || None, &mut server),
            ClientAction::Drop
        ));
        assert_eq!(s.expect.due_injections().len(), 1);
        assert!(s.client.named.is_empty());
    }

    #[test]
    fn a_failed_parse_is_not_cached_and_the_name_not_kept() {
        let (mut s, mut server) = (st(), ServerStatements::default());
        s.on_client(
            FrontendTag::Parse,
            b"s1\0SELEC 1\0\0\0",
            || None,
            &mut server,
        );
        s.on_client(FrontendTag::Sync, b"", || None, &mut server);
        s.on_server(b'3', &mut server);
        s.on_server(b'E', &mut server);
        s.on_server(b'Z', &mut server);
        assert!(server.is_empty());
        assert!(s.client.named.is_empty());
        assert!(s.expect.is_empty());
    }

    #[test]
    fn duplicate_names_fail_like_postgres() {
        let (mut s, mut server) = (st(), ServerStatements::default());
        s.on_client(FrontendTag::Parse, PARSE_S1, || None, &mut server);
        s.on_client(FrontendTag::Sync, b"", || None, &mut server);
        for t in [b'3', b'1', b'Z'] {
            s.on_server(t, &mut server);
        }
        s.on_client(FrontendTag::Parse, PARSE_S1, || None, &mut server);
        s.on_client(FrontendTag::Sync, b"", || None, &mut server);
        let a = s.on_server(b'E', &mut server);
        let replaced = a.replace.expect("sluice's own error");
        assert!(String::from_utf8_lossy(&replaced).contains("42P05"));
    }

    #[test]
    fn unnamed_statements_follow_the_client() {
        let (mut s, mut a) = (st(), ServerStatements::default());
        s.on_client(FrontendTag::Parse, b"\0SELECT 2\0\0\0", || None, &mut a);
        let mut b = ServerStatements::default();
        let ClientAction::Replace(out) =
            s.on_client(FrontendTag::Bind, b"\0\0\0\0\0\0\0\0", || None, &mut b)
        else {
            panic!("expected the unnamed statement to be re-parsed")
        };
        assert_eq!(
            tags(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            b"PB"
        );
        assert!(matches!(
            s.on_client(FrontendTag::Bind, b"\0\0\0\0\0\0\0\0", || None, &mut b),
            ClientAction::Forward
        ));
    }

    #[test]
    fn eviction_closes_the_oldest_statement() {
        let (mut s, mut server) = (
            Statements {
                cap: 1,
                ..Default::default()
            },
            ServerStatements::default(),
        );
        s.on_client(FrontendTag::Parse, PARSE_S1, || None, &mut server);
        let ClientAction::Replace(out) = s.on_client(
            FrontendTag::Parse,
            b"s2\0SELECT 2\0\0\0",
            || None,
            &mut server,
        ) else {
            panic!("expected a rewrite")
        };
        assert_eq!(
            tags(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            b"CCP"
        );
        assert_eq!(s.evictions, 1);
        assert_eq!(server.len(), 1);
    }
}

#[cfg(test)]
mod known_tests {
    use super::*;

    /// A client's statements, sharing `known` with the pool's other clients.
    fn sharing(known: Arc<KnownStatements>) -> Statements {
        Statements {
            cap: 10,
            known: Some(known),
            ..Default::default()
        }
    }

    #[test]
    fn a_statement_parsed_once_is_answered_without_a_server_for_others() {
        let known = Arc::new(KnownStatements::default());
        let mut a = sharing(known.clone());
        let mut server = ServerStatements::default();
        a.on_client(
            FrontendTag::Parse,
            b"P_0\0BEGIN;\0\0\0",
            || None,
            &mut server,
        );
        a.on_client(FrontendTag::Sync, b"", || None, &mut server);
        for t in [b'3', b'1', b'Z'] {
            a.on_server(t, &mut server);
        }
        let mut b = sharing(known);
        let mut buf = BytesMut::new();
        ext::build_parse(&mut buf, b"P_0", b"BEGIN;\0\0\0");
        crate::protocol::build::sync(&mut buf);
        let whole = buf.clone();
        for cut in 1..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(
                b.answer_without_server(&mut part, || None, 1 << 20),
                Answer::NeedMore,
                "cut at {cut}"
            );
            assert_eq!(&part[..], &whole[..cut], "nothing consumed");
        }
        let Answer::Reply(reply) = b.answer_without_server(&mut buf, || None, 1 << 20) else {
            panic!("answered locally")
        };
        assert_eq!(&reply[..], b"1\0\0\0\x04Z\0\0\0\x05I");
        assert!(buf.is_empty());
        assert!(b.client.named.contains_key(&b"P_0"[..]));
    }

    #[test]
    fn an_unfinished_batch_after_a_flush_or_too_long_needs_a_server() {
        let known = Arc::new(KnownStatements::default());
        known.insert(define(b"BEGIN;\0\0\0", None).global.clone());
        let mut b = sharing(known);
        // After a Flush the client may be waiting for the replies so far.
        let mut buf = BytesMut::new();
        ext::build_parse(&mut buf, b"a", b"BEGIN;\0\0\0");
        buf.extend_from_slice(b"H\0\0\0\x04");
        assert_eq!(
            b.answer_without_server(&mut buf, || None, 1 << 20),
            Answer::NeedServer
        );
        // A Sync never comes: sluice stops waiting for it.
        let mut buf = BytesMut::new();
        for i in 0..10_000 {
            ext::build_parse(&mut buf, format!("s{i}").as_bytes(), b"BEGIN;\0\0\0");
        }
        assert_eq!(
            b.answer_without_server(&mut buf, || None, 1 << 20),
            Answer::NeedServer
        );
    }
}
