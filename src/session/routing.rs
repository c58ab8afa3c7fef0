//! One transaction-pooled client's routing: which class its next request
//! has, whether the server it holds may run each message, and what it
//! needs of a replica to read its own writes. No IO: the relay asks
//! `check` before forwarding a message, the pool loop asks `decide`
//! before a checkout.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::prepared::ClientStatements;
use crate::protocol::frame::{HEADER_LEN, peek_header};
use crate::protocol::inspect::take_cstr;
use crate::protocol::tags::FrontendTag;
use crate::route::{
    Class, Classifier, Decision, Hint, Need, Reason, Route, SessionRoute, Target, Topology,
    TxnEffect,
};

/// A batch still incomplete after this many buffered bytes is not
/// routed to a replica.
const MAX_SCAN: usize = 1024 * 1024;

/// What the relay does with the next client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Forward,
    /// More bytes are needed to see the whole batch.
    Wait,
    /// The message needs the primary: stop here and switch when the
    /// replica is idle.
    Leave,
    /// A write in the middle of a batch begun on a replica that has only
    /// prepared and described statements so far (asyncpg's Parse,
    /// Describe, Flush): sluice ends that batch with a Sync of its own
    /// (nothing ran, so splitting it changes nothing the client can see)
    /// and switches when the replica is idle.
    SyncFirst,
    /// A write in the middle of a batch that has bound or run a statement
    /// on a replica.
    Stuck,
}

pub struct ClientRouting {
    pub topo: Arc<Topology>,
    classifier: Arc<Classifier>,
    /// The role of the server held now.
    pub on: Target,
    pub need: Need,
    /// Something not a read ran on the primary during this checkout.
    pub wrote: bool,
    /// A read-only transaction is open on the replica held.
    ro_open: bool,
    /// The rest of the current extended batch was checked.
    batch_ok: bool,
    /// Extended messages went out since the last Sync.
    mid_batch: bool,
    /// A Bind or Execute went out since the last Sync.
    ran: bool,
    /// Anything forwarded since the checkout.
    forwarded: bool,
    /// The last replica checkout was wrong about its first message.
    force_primary: bool,
    /// Reused for every decision: no allocation per checkout.
    views: Vec<crate::route::replicas::ReplicaView>,
    /// The class `decide` found for the request at the front of the
    /// client's buffer, and its length: the first `check` on the replica it
    /// chose is about that same request, and need not classify it again.
    decided: Option<(Class, usize)>,
    /// The database's result cache, when it has cache rules (kept here,
    /// in the box, as it needs the routing's view of the primary).
    pub cache: Option<super::caching::ClientCache>,
}

impl std::fmt::Debug for ClientRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRouting")
            .field("database", &self.topo.database)
            .field("on", &self.on)
            .field("need", &self.need)
            .finish_non_exhaustive()
    }
}

const UNKNOWN: Class = Class {
    route: Route::Primary(Reason::Unparsed),
    txn: TxnEffect::None,
    hint: Hint::None,
};

fn ok_on_replica(c: &Class, session: SessionRoute) -> bool {
    match c.route {
        Route::Primary(_) => false,
        Route::Neutral => true,
        Route::Read => {
            c.hint != Hint::Primary && (session != SessionRoute::Primary || c.hint == Hint::Replica)
        }
    }
}

fn sql_of(body: &[u8]) -> Option<&str> {
    take_cstr(body).and_then(|(q, _)| std::str::from_utf8(q).ok())
}

/// Statements a batch parses before binding them, which the client's
/// statement list does not hold yet. The unnamed one, much the commonest,
/// needs no map (nor its hashing and allocation).
#[derive(Default)]
struct BatchParsed<'b> {
    unnamed: Option<Class>,
    named: HashMap<&'b [u8], Class>,
}

impl<'b> BatchParsed<'b> {
    fn insert(&mut self, name: &'b [u8], c: Class) {
        if name.is_empty() {
            self.unnamed = Some(c);
        } else {
            self.named.insert(name, c);
        }
    }

    fn get(&self, name: &[u8]) -> Option<Class> {
        if name.is_empty() {
            self.unnamed
        } else {
            self.named.get(name).copied()
        }
    }
}

impl ClientRouting {
    pub fn new(topo: Arc<Topology>, classifier: Arc<Classifier>) -> Self {
        Self {
            topo,
            classifier,
            on: Target::Primary,
            need: Need::None,
            wrote: false,
            ro_open: false,
            batch_ok: false,
            mid_batch: false,
            ran: false,
            forwarded: false,
            force_primary: false,
            views: Vec::new(),
            decided: None,
            cache: None,
        }
    }

    /// The class of one message's SQL; None for messages without any.
    /// `parsed` holds this batch's Parses not yet seen by `statements`.
    fn class_of(
        &self,
        tag: FrontendTag,
        body: &[u8],
        statements: Option<&ClientStatements>,
        parsed: &BatchParsed<'_>,
    ) -> Option<Class> {
        match tag {
            FrontendTag::Query => {
                Some(sql_of(body).map_or(UNKNOWN, |s| self.classifier.classify(s)))
            }
            FrontendTag::Parse => {
                let text = take_cstr(body).and_then(|(_, rest)| sql_of(rest));
                Some(text.map_or(UNKNOWN, |s| self.classifier.classify(s)))
            }
            FrontendTag::Bind => {
                let name = take_cstr(body)
                    .and_then(|(_, rest)| take_cstr(rest))
                    .map(|(n, _)| n);
                let Some(name) = name else {
                    return Some(UNKNOWN);
                };
                if let Some(c) = parsed.get(name) {
                    return Some(c);
                }
                let def = statements.and_then(|s| {
                    if name.is_empty() {
                        s.unnamed.as_ref()
                    } else {
                        s.named.get(name)
                    }
                });
                Some(
                    def.and_then(|d| sql_of(&d.rest))
                        .map_or(UNKNOWN, |s| self.classifier.classify(s)),
                )
            }
            FrontendTag::FunctionCall => Some(Class {
                route: Route::Primary(Reason::Write),
                ..UNKNOWN
            }),
            _ => None,
        }
    }

    /// The combined class of the request at the start of `buf`: a Query,
    /// or an extended batch up to Sync or Flush. None: incomplete.
    /// Also its length in bytes.
    fn request_class(
        &self,
        buf: &[u8],
        statements: Option<&ClientStatements>,
    ) -> Option<(Class, usize)> {
        let mut parsed = BatchParsed::default();
        let mut out = Class {
            route: Route::Neutral,
            ..UNKNOWN
        };
        let mut off = 0;
        loop {
            let h = peek_header(&buf[off..], usize::MAX).ok()??;
            if buf.len() - off < h.total {
                return None;
            }
            let tag = FrontendTag::from_byte(h.tag);
            let body = &buf[off + HEADER_LEN..off + h.total];
            if let Some(c) = self.class_of(tag, body, statements, &parsed) {
                if tag == FrontendTag::Parse
                    && let Some((name, _)) = take_cstr(body)
                {
                    parsed.insert(name, c);
                }
                out.route = match (out.route, c.route) {
                    (Route::Primary(r), _) | (_, Route::Primary(r)) => Route::Primary(r),
                    (Route::Read, _) | (_, Route::Read) => Route::Read,
                    _ => Route::Neutral,
                };
                if out.hint == Hint::None || c.hint == Hint::Primary {
                    out.hint = c.hint;
                }
                if c.txn != TxnEffect::None {
                    out.txn = c.txn;
                }
            }
            off += h.total;
            if matches!(
                tag,
                FrontendTag::Query
                    | FrontendTag::Sync
                    | FrontendTag::Flush
                    | FrontendTag::FunctionCall
            ) {
                return Some((out, off));
            }
        }
    }

    /// Where the request buffered in `buf` goes.
    pub fn decide(
        &mut self,
        buf: &[u8],
        statements: Option<&ClientStatements>,
        session: SessionRoute,
    ) -> Decision {
        self.decided = None;
        if std::mem::take(&mut self.force_primary) {
            return Decision {
                target: Target::Primary,
                reason: "reroute",
            };
        }
        self.decided = self.request_class(buf, statements);
        let class = self.decided.map_or(UNKNOWN, |(c, _)| c);
        self.need.resolve(&self.topo);
        let s = &self.topo.settings;
        let views = &mut self.views;
        self.topo.views_into(views);
        let rr = self.topo.next_round_robin();
        crate::route::decide::decide(
            &class,
            session,
            s.consistency,
            self.need,
            views,
            s.balance,
            rr,
        )
    }

    /// A server of role `on` was checked out.
    pub fn checked_out(&mut self, on: Target) {
        if !matches!(on, Target::Replica(_)) {
            self.decided = None;
        }
        self.on = on;
        self.wrote = false;
        self.ro_open = false;
        self.batch_ok = false;
        self.mid_batch = false;
        self.ran = false;
        self.forwarded = false;
    }

    /// The server goes back: a client that wrote needs a replica to have
    /// replayed past this moment before it reads there.
    /// The next request (one given up on a replica) goes to the primary.
    pub fn reroute(&mut self) {
        self.force_primary = true;
    }

    /// The replica refused `request` (`why`): its statements are marked
    /// primary-only when every replica would refuse them, and logged; when
    /// it `moved`, it runs on the primary next, counted. `statements`: the
    /// client's, for the statements a Bind names.
    pub fn refused(
        &mut self,
        request: &[u8],
        statements: Option<&ClientStatements>,
        why: crate::protocol::inspect::Refusal,
        moved: bool,
    ) {
        if moved {
            self.force_primary = true;
            self.topo.count_retry(why);
        }
        for (tag, body) in crate::protocol::frame::whole_frames(request) {
            let text = match FrontendTag::from_byte(tag) {
                FrontendTag::Query => sql_of(body),
                FrontendTag::Parse => take_cstr(body).and_then(|(_, rest)| sql_of(rest)),
                FrontendTag::Bind => take_cstr(body)
                    .and_then(|(_, rest)| take_cstr(rest))
                    .and_then(|(name, _)| {
                        let s = statements?;
                        let def = if name.is_empty() {
                            s.unnamed.as_ref()
                        } else {
                            s.named.get(name)
                        };
                        sql_of(&def?.rest)
                    }),
                _ => None,
            };
            let Some(text) = text else {
                continue;
            };
            let learnt = why.is_lasting() && self.classifier.learn_primary(text);
            tracing::info!(
                database = %self.topo.database,
                reason = why.as_str(),
                retried = moved,
                learnt,
                statement = %crate::sql::fingerprint::fingerprint(text),
                "a replica refused a statement that only a primary runs"
            );
        }
    }

    pub fn released(&mut self) {
        if self.on == Target::Primary && self.wrote {
            self.need = Need::Pending(Instant::now());
            self.topo.kick_primary.notify_one();
        }
    }

    /// Whether the held server may run the message at the start of `rest`.
    pub fn check(
        &mut self,
        tag: FrontendTag,
        body: &[u8],
        rest: &[u8],
        statements: Option<&ClientStatements>,
        session: SessionRoute,
    ) -> Step {
        let none = BatchParsed::default();
        if self.on == Target::Primary {
            if !self.wrote
                && let Some(c) = self.class_of(tag, body, statements, &none)
            {
                self.wrote = matches!(c.route, Route::Primary(_));
            }
            return self.forward(tag);
        }
        if self.ro_open {
            if let Some(c) = self.class_of(tag, body, statements, &none)
                && c.txn == TxnEffect::Ends
            {
                self.ro_open = false;
            }
            return self.forward(tag);
        }
        let extended = !matches!(tag, FrontendTag::Query | FrontendTag::FunctionCall);
        // What `decide` found, when this is the request it decided on.
        let decided = self
            .decided
            .take()
            .filter(|(_, len)| !self.forwarded && *len <= rest.len());
        // The class is computed once: for a batch, at its first message.
        let (ok, class) = if extended && self.batch_ok {
            (true, None)
        } else if extended && !self.mid_batch {
            match decided.or_else(|| self.request_class(rest, statements)) {
                None if rest.len() < MAX_SCAN => return Step::Wait,
                None => (false, None),
                Some((c, _)) => {
                    self.batch_ok = ok_on_replica(&c, session);
                    (self.batch_ok, Some(c))
                }
            }
        } else {
            let c = match decided {
                Some((c, _)) if tag == FrontendTag::Query => Some(c),
                _ => self.class_of(tag, body, statements, &none),
            };
            (c.is_none_or(|c| ok_on_replica(&c, session)), c)
        };
        if !ok {
            if self.mid_batch && self.ran {
                return Step::Stuck;
            }
            if self.mid_batch {
                self.force_primary = true;
                return Step::SyncFirst;
            }
            if !self.forwarded {
                self.force_primary = true;
            }
            return Step::Leave;
        }
        match class.map(|c| c.txn) {
            Some(TxnEffect::OpensReadOnly) => self.ro_open = true,
            Some(TxnEffect::Ends) => self.ro_open = false,
            _ => {}
        }
        self.forward(tag)
    }

    fn forward(&mut self, tag: FrontendTag) -> Step {
        self.forwarded = true;
        match tag {
            FrontendTag::Sync => {
                self.mid_batch = false;
                self.batch_ok = false;
                self.ran = false;
            }
            FrontendTag::Flush => self.batch_ok = false,
            FrontendTag::Bind | FrontendTag::Execute => {
                self.mid_batch = true;
                self.ran = true;
            }
            FrontendTag::Parse | FrontendTag::Describe | FrontendTag::Close => {
                self.mid_batch = true;
            }
            _ => {}
        }
        Step::Forward
    }
}

/// Whether a query starts with SET or with a comment, on its raw bytes.
fn may_set_something(sql: &[u8]) -> bool {
    let head = sql.trim_ascii_start();
    head.get(..3)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"set"))
        || head.starts_with(b"/*")
        || head.starts_with(b"--")
}

/// `SET sluice.route TO primary`: PostgreSQL reads an unquoted `primary`
/// as a keyword and refuses it, so sluice sends the value quoted. Returns
/// the statement to send instead, or None when nothing needs quoting.
pub fn quote_route_setting(sql: &[u8]) -> Option<String> {
    use crate::sql::lex::{Token, spanned_tokens, statements, strip_leading_comments};
    // Called for every Query: reject anything that is not a SET without
    // validating, splitting or tokenizing it.
    if !may_set_something(sql) {
        return None;
    }
    let sql = std::str::from_utf8(sql).ok()?;
    let head = strip_leading_comments(sql).as_bytes();
    if !head
        .get(..3)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"set"))
    {
        return None;
    }
    let stmts = statements(sql);
    let [stmt] = stmts.as_slice() else {
        return None;
    };
    let t = spanned_tokens(stmt);
    let w = |i: usize| match t.get(i) {
        Some((Token::Word(w), _)) => w.as_ref(),
        Some((Token::Punct('='), _)) => "=",
        Some((Token::Punct('.'), _)) => ".",
        _ => "",
    };
    let scope = match w(1) {
        "session" | "local" => Some(w(1)),
        _ => None,
    };
    let i = if scope.is_some() { 2 } else { 1 };
    let value = w(i + 4);
    let matches = w(0) == "set"
        && (w(i), w(i + 1), w(i + 2)) == ("sluice", ".", "route")
        && matches!(w(i + 3), "to" | "=")
        && matches!(value, "primary" | "replica" | "auto")
        && t.len() == i + 5;
    matches.then(|| {
        format!(
            "SET {}sluice.route TO '{value}'",
            scope.map_or(String::new(), |s| format!("{s} "))
        )
    })
}

/// Counts a checked-out replica server for least_outstanding while it lives.
pub struct Outstanding(Arc<Topology>, usize);

impl Outstanding {
    pub fn new(topo: &Arc<Topology>, role: Target) -> Option<Self> {
        let Target::Replica(i) = role else {
            return None;
        };
        topo.replicas
            .get(i)?
            .outstanding
            .fetch_add(1, Ordering::Relaxed);
        Some(Self(topo.clone(), i))
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.replicas[self.1]
            .outstanding
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::build;
    use crate::route::replicas::Settings;
    use bytes::BytesMut;

    fn routing() -> ClientRouting {
        let settings = Settings {
            primary: crate::config::HostPort {
                host: "p".into(),
                port: 1,
            },
            replicas: vec![],
            dbname: "app".into(),
            poll_interval: std::time::Duration::from_millis(20),
            max_lag: crate::config::LagBound::Time(std::time::Duration::from_secs(1)),
            ban_time: std::time::Duration::from_secs(1),
            read_timeout: std::time::Duration::from_secs(1),
            balance: crate::config::Balance::RoundRobin,
            consistency: crate::config::Consistency::Session,
            monitor_user: None,
        };
        let mut r = ClientRouting::new(
            Arc::new(Topology::new("app", settings)),
            Arc::new(Classifier::new(Default::default())),
        );
        r.checked_out(Target::Replica(0));
        r
    }

    /// Feeds every whole frame of `buf` to `check`, as the relay does;
    /// returns the steps.
    fn feed(r: &mut ClientRouting, buf: &[u8]) -> Vec<Step> {
        let mut off = 0;
        let mut steps = Vec::new();
        while let Ok(Some(h)) = peek_header(&buf[off..], usize::MAX) {
            if buf.len() - off < h.total {
                break;
            }
            let tag = FrontendTag::from_byte(h.tag);
            let body = &buf[off + HEADER_LEN..off + h.total];
            let step = r.check(tag, body, &buf[off..], None, SessionRoute::Auto);
            steps.push(step);
            if step != Step::Forward {
                break;
            }
            off += h.total;
        }
        steps
    }

    fn batch(sqls: &[&str], end: fn(&mut BytesMut)) -> BytesMut {
        let mut b = BytesMut::new();
        for sql in sqls {
            build::parse_unnamed(&mut b, sql);
            build::bind_unnamed_text(&mut b, &[]);
            build::execute_unnamed(&mut b);
        }
        end(&mut b);
        b
    }

    fn flush(b: &mut BytesMut) {
        build::typed(b, b'H', |_| {});
    }

    #[test]
    fn a_batch_of_reads_runs_on_the_replica() {
        let mut r = routing();
        let b = batch(&["SELECT 1", "SELECT 2"], build::sync);
        assert!(feed(&mut r, &b).iter().all(|s| *s == Step::Forward));
    }

    #[test]
    fn a_batch_with_a_write_leaves_the_replica_before_its_first_message() {
        let mut r = routing();
        let b = batch(&["SELECT 1", "INSERT INTO t VALUES (1)"], build::sync);
        assert_eq!(feed(&mut r, &b), [Step::Leave]);
        assert!(
            r.force_primary,
            "nothing ran: the next checkout is the primary's"
        );
        let mut q = BytesMut::new();
        build::query(&mut q, "DELETE FROM t");
        let mut r = routing();
        assert_eq!(feed(&mut r, &q), [Step::Leave]);
    }

    #[test]
    fn an_incomplete_batch_waits_for_its_sync() {
        let mut r = routing();
        let b = batch(&["SELECT 1"], |_| {});
        assert_eq!(feed(&mut r, &b), [Step::Wait]);
    }

    #[test]
    fn a_write_after_a_flush_in_the_same_batch_is_stuck() {
        let mut r = routing();
        let mut b = batch(&["SELECT 1"], flush);
        b.extend_from_slice(&batch(&["UPDATE t SET a = 1"], build::sync));
        let steps = feed(&mut r, &b);
        assert_eq!(steps.last(), Some(&Step::Stuck));
    }

    #[test]
    fn a_write_after_statements_were_only_prepared_ends_their_batch_first() {
        let mut r = routing();
        let mut b = BytesMut::new();
        build::parse_unnamed(&mut b, "SELECT 1");
        crate::protocol::extended::build_describe(&mut b, b'S', b"");
        flush(&mut b);
        build::parse_unnamed(&mut b, "UPDATE t SET a = 1");
        build::sync(&mut b);
        let steps = feed(&mut r, &b);
        assert_eq!(steps.last(), Some(&Step::SyncFirst));
        assert!(r.force_primary, "the write goes to the primary next");
    }

    #[test]
    fn a_read_only_transaction_keeps_its_replica_until_it_ends() {
        let mut r = routing();
        let mut q = BytesMut::new();
        for sql in [
            "BEGIN READ ONLY",
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "COMMIT",
        ] {
            build::query(&mut q, sql);
        }
        // The INSERT fails on the replica as it would on the primary (25006).
        assert_eq!(feed(&mut r, &q), [Step::Forward; 4]);
        let mut w = BytesMut::new();
        build::query(&mut w, "INSERT INTO t VALUES (1)");
        assert_eq!(feed(&mut r, &w), [Step::Leave]);
    }

    #[test]
    fn a_write_on_the_primary_marks_the_client_for_read_your_writes() {
        let mut r = routing();
        r.checked_out(Target::Primary);
        let mut q = BytesMut::new();
        build::query(&mut q, "SELECT 1");
        feed(&mut r, &q);
        r.released();
        assert_eq!(r.need, Need::None, "a read is not a write");
        r.checked_out(Target::Primary);
        let b = batch(&["INSERT INTO t VALUES ($1)"], build::sync);
        feed(&mut r, &b);
        r.released();
        assert!(matches!(r.need, Need::Pending(_)));
    }

    #[test]
    fn route_settings_get_their_value_quoted() {
        assert_eq!(
            quote_route_setting(b"SET sluice.route TO primary").as_deref(),
            Some("SET sluice.route TO 'primary'")
        );
        assert_eq!(
            quote_route_setting(b"set LOCAL sluice.route = Replica;").as_deref(),
            Some("SET local sluice.route TO 'replica'")
        );
        assert_eq!(quote_route_setting(b"SET sluice.route TO 'primary'"), None);
        assert_eq!(quote_route_setting(b"SET search_path TO primary"), None);
        assert_eq!(
            quote_route_setting(b"SET sluice.route TO primary; SELECT 1"),
            None
        );
        for q in [
            "SET sluice.route TO primary",
            "  set x = 1",
            "/* c */ SET sluice.route TO primary",
            "-- c\nSET sluice.route TO primary",
        ] {
            assert!(may_set_something(q.as_bytes()), "{q}");
        }
        assert!(!may_set_something(b"SELECT 1"));
        assert!(!may_set_something(b"se"));
    }
}
