//! Transaction pooling's handling of extended-protocol statements: renames
//! client statements to their sluice-wide names, prepares them lazily on
//! whichever server the client lands on, answers what it can itself (Parse
//! of a statement the server already has, Close), and keeps the replies the
//! client sees exactly those of a direct connection.

use bytes::{Bytes, BytesMut};

use super::expect::{Act, Entry, ExpectQueue, FrameAction, Kind, OnFail, Verdict};
use super::prepared::{ClientStatements, ServerStatements, StmtDef, define};
use crate::protocol::build::{self, Severity};
use crate::protocol::extended as ext;
use crate::protocol::tags::{FrontendTag, TxnStatus};
use std::sync::Arc;

mod replay;
pub use replay::Replay;

/// What to send the server instead of a client message.
#[derive(Debug)]
pub enum ClientAction {
    Forward,
    /// Send these bytes in place of the message.
    Replace(BytesMut),
    /// Send nothing; sluice answers (or has answered) it.
    Drop,
    /// Send these bytes (a statement prepared again and described, to
    /// check its row shape after a schema change) and hold the message
    /// and the rest of the client's batch until the verdict.
    Verify(BytesMut),
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
    /// The client's current batch, kept to run it again after a stale
    /// statement error.
    pub replay: Replay,
    /// The client's statement (name, definition in the current schema
    /// generation) whose row shape a `Verify` checks.
    /// The client's name, the statement under its new name, and whether
    /// the check ended with a Sync of its own.
    pub verifying: Option<(Vec<u8>, Arc<StmtDef>, bool)>,
    /// The replica refused the request in flight (why): its replies are
    /// dropped, and it runs on the primary (`Multiplex::refused_by_replica`).
    pub moving: Option<crate::protocol::inspect::Refusal>,
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

/// Global statement names that parsed successfully on some server of a
/// pool, and the pool's schema generation: a schema change (DDL through
/// sluice, or a server's "cached plan must not change result type") bumps
/// it, and every statement then gets a new global name, so each server
/// prepares it afresh at its next use.
#[derive(Debug, Default)]
pub struct KnownStatements {
    names: std::sync::Mutex<std::collections::HashSet<String>>,
    generation: std::sync::atomic::AtomicU64,
    /// Functions by name: whether calling one may change a session setting
    /// (read from pg_proc once; see `functions::body_may_change_settings`).
    /// Forgotten with every schema change sluice sees.
    functions: std::sync::Mutex<std::collections::HashMap<String, bool>>,
}

impl KnownStatements {
    pub fn contains(&self, global: &str) -> bool {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(global)
    }

    pub fn insert(&self, global: String) {
        let mut set = self.names.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: forgetting only costs a round trip to a server later.
        if set.len() >= 10_000 {
            set.clear();
        }
        set.insert(global);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the pool learnt of function `name`: whether it may change a
    /// setting, if known.
    pub fn function_may_set(&self, name: &str) -> Option<bool> {
        let f = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        f.get(name).copied()
    }

    pub fn learn_function(&self, name: String, may_set: bool) {
        let mut f = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() >= 10_000 {
            f.clear();
        }
        f.insert(name, may_set);
    }

    /// The schema changed: statements prepared before are stale everywhere.
    pub fn bump(&self) {
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!("schema changed: prepared statements are prepared again at their next use");
    }
}

/// Whether the client frames in `later`, up to the next Sync, include a
/// Describe: the client then learns the row shape from the reply.
fn describes_rows(later: &[u8]) -> bool {
    let mut off = 0;
    while let Ok(Some(h)) = crate::protocol::frame::peek_header(&later[off..], usize::MAX) {
        match FrontendTag::from_byte(h.tag) {
            FrontendTag::Describe => return true,
            FrontendTag::Sync => return false,
            _ => off += h.total,
        }
        if off >= later.len() {
            break;
        }
    }
    false
}

fn frame(f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::new();
    f(&mut b);
    b.freeze()
}

impl Statements {
    /// The pool's schema generation (0 without a shared set).
    fn generation(&self) -> u64 {
        self.known.as_ref().map_or(0, |k| k.generation())
    }

    /// Marks every statement of the pool stale (see `KnownStatements`).
    pub fn schema_changed(&self) {
        if let Some(k) = &self.known {
            k.bump();
        }
    }

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
        let mut def = self.client.named.get(name)?.clone();
        let generation = self.generation();
        // Prepared before a schema change: a server that still has it
        // checks it as PostgreSQL does; elsewhere it gets a fresh name
        // (`verify_first` has dealt with clients that need its shape).
        if def.generation != generation && !server.contains(&def.global) {
            def = def.regenerate(generation);
            self.client.named.insert(name.to_vec(), def.clone());
        }
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
        later: &[u8],
        at_boundary: bool,
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
                if let Some(out) = self.verify_first(v.statement, later, at_boundary, server) {
                    return ClientAction::Verify(out);
                }
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
                    let global = self.resolve(name, server, &mut out);
                    let entry = match &global {
                        Some(Global::Named(def)) => Entry {
                            kind: Kind::DescribeStatement,
                            act: Act::ReplyShape(def.clone()),
                            on_fail: OnFail::default(),
                        },
                        _ => Entry::reply(Kind::DescribeStatement),
                    };
                    let action = match global {
                        Some(g) if g.name() != name || !out.is_empty() => {
                            ext::build_describe(&mut out, b'S', g.name());
                            ClientAction::Replace(out)
                        }
                        _ => ClientAction::Forward,
                    };
                    self.push(entry);
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
        let def = define(v.rest, search_path(), self.generation());
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

    /// A Bind of a statement the client prepared before a schema change,
    /// on a server that does not have it (where PostgreSQL would check
    /// it), in a batch that does not describe its rows again: the client
    /// relies on the row shape it was told. Returns the bytes that prepare
    /// it again under its new name and describe it (`Act::Verify`); the
    /// Bind waits for the verdict (`verdict`).
    ///
    /// A Describe starts a transaction, and the client's messages wait a
    /// round trip behind it: at the start of a batch, a Sync ends it, so the
    /// client's statement starts its own (`now()` is its Bind's time, as on
    /// a direct connection). Mid-batch, a Sync would commit what the client
    /// sent before, so a Flush asks for the reply instead.
    fn verify_first(
        &mut self,
        name: &[u8],
        later: &[u8],
        at_boundary: bool,
        server: &mut ServerStatements,
    ) -> Option<BytesMut> {
        let def = self.client.named.get(name)?;
        let generation = self.generation();
        if def.generation == generation
            || server.contains(&def.global)
            || self.expect.is_skipping()
            || describes_rows(later)
        {
            return None;
        }
        let shape = *def.shape.get()?;
        let fresh = def.regenerate(generation);
        let mut out = BytesMut::new();
        self.prepare_into(&fresh, server, &mut out, Act::Swallow, None);
        self.reprepares += 1;
        ext::build_describe(&mut out, b'S', fresh.global.as_bytes());
        self.push(Entry {
            kind: Kind::DescribeStatement,
            act: Act::Verify(shape),
            on_fail: OnFail::default(),
        });
        if at_boundary {
            build::sync(&mut out);
            self.push(Entry {
                kind: Kind::Sync,
                act: Act::Swallow,
                on_fail: OnFail::default(),
            });
        } else {
            build::flush(&mut out);
        }
        self.verifying = Some((name.to_vec(), fresh, at_boundary));
        Some(out)
    }

    /// A Sync sluice sends on its own, its ReadyForQuery swallowed.
    pub fn own_sync(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        build::sync(&mut out);
        self.push(Entry {
            kind: Kind::Sync,
            act: Act::Swallow,
            on_fail: OnFail::default(),
        });
        out
    }

    /// A request is taken back to run on another server after it ran to
    /// its end on this one: the statements its Parses named are forgotten,
    /// so that its Parses define them there instead of failing as
    /// duplicates. (Had a name existed before the request, its Parse would
    /// have failed first, and the request would not move.)
    pub fn forget_defined_by(&mut self, request: &[u8]) {
        for (tag, body) in crate::protocol::frame::whole_frames(request) {
            if FrontendTag::from_byte(tag) == FrontendTag::Parse
                && let Some(v) = ext::parse_view(body)
                && !v.name.is_empty()
            {
                self.client.named.remove(v.name);
            }
        }
    }

    /// The server is given up with the request in flight unanswered: what
    /// it still owed is forgotten (and what the request defined undone), and
    /// the request comes back to run elsewhere, when it is kept whole.
    pub fn abandon(&mut self) -> Option<BytesMut> {
        for f in self.expect.drain() {
            self.undo(f, None);
        }
        self.verifying = None;
        self.replay.held.clear();
        self.replay.retry_ready().then(|| self.replay.take())
    }

    /// A `Verify` ended. Same shape: the client's statement takes its new
    /// name. Changed: returns what ends what sluice sent while the client
    /// is told the error: a Sync for the server (its reply swallowed), or
    /// nothing when the check ended with one.
    pub fn verdict(&mut self, v: Verdict) -> Option<BytesMut> {
        let (name, fresh, synced) = self.verifying.take()?;
        match v {
            Verdict::Same => {
                self.client.named.insert(name, fresh);
                None
            }
            Verdict::Changed if synced => Some(BytesMut::new()),
            Verdict::Changed => Some(self.own_sync()),
            Verdict::Failed => None,
        }
    }

    /// Accounts for a server frame; undoes the bookkeeping of failed or skipped messages.
    pub fn on_server(
        &mut self,
        tag: u8,
        body: &[u8],
        server: &mut ServerStatements,
    ) -> FrameAction {
        let mut action = self.expect.on_server(tag, body);
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
                    let def = define(v.rest, search_path(), known.generation());
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

    /// Statements sharing `known`, as clients of one pool do.
    fn in_pool(known: &Arc<KnownStatements>) -> Statements {
        Statements {
            cap: 10,
            known: Some(known.clone()),
            ..Default::default()
        }
    }

    /// A client message with nothing after it, at a batch boundary.
    pub(super) fn client(
        s: &mut Statements,
        tag: FrontendTag,
        body: &[u8],
        server: &mut ServerStatements,
    ) -> ClientAction {
        s.on_client(tag, body, &[], true, || None, server)
    }
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
        let ClientAction::Replace(out) = client(&mut s, FrontendTag::Parse, PARSE_S1, &mut server)
        else {
            panic!("expected a rewrite")
        };
        let sent = tags(&out);
        let global = define(b"SELECT 1\0\0\0", None, 0).global.clone();
        assert_eq!(sent.iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"CP");
        assert!(sent[1].1.starts_with(global.as_bytes()));
        // The Close's CloseComplete is swallowed; the ParseComplete reaches the client.
        assert!(s.on_server(b'3', b"", &mut server).drop);
        assert!(!s.on_server(b'1', b"", &mut server).drop);
        assert!(s.expect.is_empty());
    }

    #[test]
    fn bind_on_another_server_reprepares_and_swallows() {
        let (mut s, mut a) = (st(), ServerStatements::default());
        client(&mut s, FrontendTag::Parse, PARSE_S1, &mut a);
        s.on_server(b'3', b"", &mut a);
        s.on_server(b'1', b"", &mut a);
        let mut b = ServerStatements::default();
        let ClientAction::Replace(out) =
            client(&mut s, FrontendTag::Bind, b"\0s1\0\0\0\0\0\0\0", &mut b)
        else {
            panic!("expected a rewrite")
        };
        assert_eq!(
            tags(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            b"CPB"
        );
        assert!(s.on_server(b'3', b"", &mut b).drop);
        assert!(s.on_server(b'1', b"", &mut b).drop);
        assert!(!s.on_server(b'2', b"", &mut b).drop);
        assert_eq!(s.reprepares, 1);
        // A second Bind on the same server needs nothing inserted.
        let ClientAction::Replace(out) =
            client(&mut s, FrontendTag::Bind, b"\0s1\0\0\0\0\0\0\0", &mut b)
        else {
            panic!("expected the name to be rewritten")
        };
        assert_eq!(tags(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"B");
    }

    #[test]
    fn parse_of_a_cached_statement_is_answered_by_sluice() {
        let (mut s, mut server) = (st(), ServerStatements::default());
        server.insert(&define(b"SELECT 1\0\0\0", None, 0).global, 10);
        assert!(matches!(
            client(&mut s, FrontendTag::Parse, PARSE_S1, &mut server),
            ClientAction::Drop
        ));
        assert_eq!(s.expect.due_injections().len(), 1);
        // Close of the client's name is answered too, and the name is gone.
        assert!(matches!(
            client(&mut s, FrontendTag::Close, b"Ss1\0", &mut server),
            ClientAction::Drop
        ));
        assert_eq!(s.expect.due_injections().len(), 1);
        assert!(s.client.named.is_empty());
    }

    #[test]
    fn a_failed_parse_is_not_cached_and_the_name_not_kept() {
        let (mut s, mut server) = (st(), ServerStatements::default());
        client(
            &mut s,
            FrontendTag::Parse,
            b"s1\0SELEC 1\0\0\0",
            &mut server,
        );
        client(&mut s, FrontendTag::Sync, b"", &mut server);
        s.on_server(b'3', b"", &mut server);
        s.on_server(b'E', b"", &mut server);
        s.on_server(b'Z', b"", &mut server);
        assert!(server.is_empty());
        assert!(s.client.named.is_empty());
        assert!(s.expect.is_empty());
    }

    #[test]
    fn duplicate_names_fail_like_postgres() {
        let (mut s, mut server) = (st(), ServerStatements::default());
        client(&mut s, FrontendTag::Parse, PARSE_S1, &mut server);
        client(&mut s, FrontendTag::Sync, b"", &mut server);
        for t in [b'3', b'1', b'Z'] {
            s.on_server(t, b"", &mut server);
        }
        client(&mut s, FrontendTag::Parse, PARSE_S1, &mut server);
        client(&mut s, FrontendTag::Sync, b"", &mut server);
        let a = s.on_server(b'E', b"", &mut server);
        let replaced = a.replace.expect("sluice's own error");
        assert!(String::from_utf8_lossy(&replaced).contains("42P05"));
    }

    #[test]
    fn unnamed_statements_follow_the_client() {
        let (mut s, mut a) = (st(), ServerStatements::default());
        client(&mut s, FrontendTag::Parse, b"\0SELECT 2\0\0\0", &mut a);
        let mut b = ServerStatements::default();
        let ClientAction::Replace(out) =
            client(&mut s, FrontendTag::Bind, b"\0\0\0\0\0\0\0\0", &mut b)
        else {
            panic!("expected the unnamed statement to be re-parsed")
        };
        assert_eq!(
            tags(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            b"PB"
        );
        assert!(matches!(
            client(&mut s, FrontendTag::Bind, b"\0\0\0\0\0\0\0\0", &mut b),
            ClientAction::Forward
        ));
    }

    #[test]
    fn a_schema_change_renames_statements_on_their_next_use() {
        let known = Arc::new(KnownStatements::default());
        let mut st = in_pool(&known);
        let mut first = ServerStatements::default();
        let mut parse = BytesMut::new();
        ext::build_parse(&mut parse, b"s1", b"SELECT 1\0\0\0");
        client(&mut st, FrontendTag::Parse, &parse[5..], &mut first);
        let before = st.client.named[&b"s1"[..]].global.clone();
        known.bump();
        let mut bind = BytesMut::new();
        ext::build_bind(&mut bind, b"", b"s1", b"\0\0\0\0\0\0");
        // The server that has it checks it itself: the old name is bound.
        let bound = |st: &mut Statements, server: &mut ServerStatements| match client(
            st,
            FrontendTag::Bind,
            &bind[5..],
            server,
        ) {
            ClientAction::Replace(out) => String::from_utf8_lossy(&out).into_owned(),
            other => panic!("{other:?}"),
        };
        assert!(bound(&mut st, &mut first).contains(&before));
        // Another server: prepared anew under the new name (its row shape
        // was never described, so there is nothing to check).
        let sent = bound(&mut st, &mut ServerStatements::default());
        let after = st.client.named[&b"s1"[..]].global.clone();
        assert_eq!(after, format!("{before}_1"));
        assert!(sent.contains(&after), "{sent}");
    }

    #[test]
    fn a_statement_whose_shape_the_client_relies_on_is_checked_first() {
        let known = Arc::new(KnownStatements::default());
        let mut st = in_pool(&known);
        let mut parse = BytesMut::new();
        ext::build_parse(&mut parse, b"s1", b"SELECT 1\0\0\0");
        st.on_client(
            FrontendTag::Parse,
            &parse[5..],
            &[],
            true,
            || None,
            &mut ServerStatements::default(),
        );
        let _ = st.client.named[&b"s1"[..]].shape.set(7);
        known.bump();
        let mut bind = BytesMut::new();
        ext::build_bind(&mut bind, b"", b"s1", b"\0\0\0\0\0\0");
        let mut server = ServerStatements::default();
        let mut sync = BytesMut::new();
        build::sync(&mut sync);
        // A Describe later in the batch: the client learns the new shape.
        let mut describe = BytesMut::new();
        ext::build_describe(&mut describe, b'P', b"");
        let later = [&describe[..], &sync[..]].concat();
        let mut probe = in_pool(&known);
        probe.client.named = st.client.named.clone();
        assert!(matches!(
            probe.on_client(
                FrontendTag::Bind,
                &bind[5..],
                &later,
                true,
                || None,
                &mut server
            ),
            ClientAction::Replace(_)
        ));
        // Blind (Bind, Execute, Sync): prepared again, described, held.
        let mut server = ServerStatements::default();
        let ClientAction::Verify(out) = st.on_client(
            FrontendTag::Bind,
            &bind[5..],
            &sync,
            true,
            || None,
            &mut server,
        ) else {
            panic!("checked first");
        };
        // At a batch's start the check is a transaction of its own (Sync),
        // so the client's statement starts its own, as directly.
        assert_eq!(
            tags(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            b"CPDS".to_vec()
        );
        // Mid-batch, a Sync would commit the client's earlier messages.
        let mut mid = in_pool(&known);
        mid.client.named = st.client.named.clone();
        let ClientAction::Verify(out) = mid.on_client(
            FrontendTag::Bind,
            &bind[5..],
            &sync,
            false,
            || None,
            &mut ServerStatements::default(),
        ) else {
            panic!("checked first");
        };
        assert_eq!(tags(&out).last().map(|(t, _)| *t), Some(b'H'));
        assert_eq!(mid.verdict(Verdict::Changed).map(|b| b.len()), Some(5));
        assert_eq!(st.verdict(Verdict::Same), None);
        assert!(st.client.named[&b"s1"[..]].global.ends_with("_1"));
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
        client(&mut s, FrontendTag::Parse, PARSE_S1, &mut server);
        let ClientAction::Replace(out) = client(
            &mut s,
            FrontendTag::Parse,
            b"s2\0SELECT 2\0\0\0",
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
    use super::tests::client;
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
        client(
            &mut a,
            FrontendTag::Parse,
            b"P_0\0BEGIN;\0\0\0",
            &mut server,
        );
        client(&mut a, FrontendTag::Sync, b"", &mut server);
        for t in [b'3', b'1', b'Z'] {
            a.on_server(t, b"", &mut server);
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
        known.insert(define(b"BEGIN;\0\0\0", None, 0).global.clone());
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
