//! What transaction and statement pooling track per client while frames
//! pass: settings to carry between servers, pins, and statement mode's ban
//! on transaction blocks. The relay feeds it tags and bodies; it does no IO.

use std::collections::BTreeMap;

use bytes::BytesMut;

use super::expect::FrameAction;
use super::listening::{self, ClientListen};
use super::pins::Pins;
use super::prepared::ServerStatements;
use super::routing::{ClientRouting, Step};
use super::statements::{Answer, ClientAction, Statements};
use super::vars::{SessionVars, Setting};
use crate::protocol::inspect::{self, take_cstr};
use crate::protocol::tags::{BackendTag, FrontendTag, TxnStatus};
use crate::route::{Decision, SessionRoute};
use crate::sql::lex::statements;
use crate::sql::session_cmd::{Effect, effects};

mod replay;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Forward,
    Reject(String),
}

/// What the relay does with a client message.
#[derive(Debug)]
pub enum Action {
    Forward,
    /// Send these bytes to the server instead.
    Replace(BytesMut),
    /// Send nothing: sluice answers it.
    Drop,
    /// Answer with this error instead of sending the message to the server.
    Reject(String),
    /// Send these bytes, and hold the message and what follows until the
    /// server's reply gives a verdict (`Statements::verify_first`).
    Verify(BytesMut),
}

#[derive(Debug, Default)]
pub struct Multiplex {
    pub vars: SessionVars,
    pub pins: Pins,
    /// Setting changes sent but not yet known to have committed.
    /// (Boxed when there are any: every idle client keeps the Multiplex,
    /// and a Vec is 24 bytes inline.)
    #[allow(clippy::box_collection)]
    pending: Option<Box<Vec<Effect>>>,
    failed: bool,
    rolled_back: bool,
    /// `on_session_state = "error"`: refuse what would pin.
    pub reject_pins: bool,
    pub statement_mode: bool,
    /// Statement mode saw a transaction block open.
    pub txn_violation: bool,
    /// Where pinned clients are counted.
    pub stats: Option<std::sync::Arc<crate::stats::Stats>>,
    /// Prepared-statement renaming; None when max_prepared_statements = 0.
    /// Boxed: idle clients keep the Multiplex inline in their task.
    pub statements: Option<Box<Statements>>,
    /// Read/write routing, for a database with replicas.
    pub routing: Option<Box<ClientRouting>>,
    /// Whether the server held may have session settings sluice did not
    /// follow from the text: read them before it goes back.
    pub watch: SettingsWatch,
    /// LISTEN through the pool's hub (transaction pooling).
    pub listen: Option<Box<ClientListen>>,
}

/// What the server held ran that may change session settings, from the
/// time it was checked out until it goes back.
#[derive(Debug, Default)]
pub struct SettingsWatch {
    /// A statement sluice cannot follow ran: an unrecognised SET spelling,
    /// set_config, a DO block, a function sluice does not know.
    pub dirty: bool,
    /// DDL that may make prepared statements stale ran: at its commit the
    /// pool's schema generation is bumped.
    ddl: bool,
    /// More custom settings were named than the watch keeps: the server's
    /// state cannot be read back whole, so it is not reused.
    pub overflow: bool,
    /// `trust_functions`: calls of unknown functions are not checked.
    pub trust_functions: bool,
    /// SET/RESET statements sluice followed from the text, and the `SET`
    /// and `RESET` command tags the server sent: more tags than followed
    /// statements means a change came some other way.
    understood: u16,
    tags: u16,
    /// Names it met. Boxed: every idle client holds a watch.
    names: Option<Box<WatchedNames>>,
}

#[derive(Debug, Default)]
struct WatchedNames {
    /// Custom (dotted) settings named in set_config calls, which
    /// pg_settings does not list.
    custom: Names,
    /// Functions sluice does not know that ran: unless the pool has learnt
    /// that none of them can change a setting, the settings are read.
    functions: Names,
}

/// Setting or function names.
#[derive(Debug, Default)]
struct Names(Vec<String>);

/// Names kept per hold: a client cannot grow the watch (or the lookup
/// query built from it) without bound.
const MAX_NAMES: usize = 64;

impl Names {
    /// False when the list is full and `name` was not kept.
    fn add(&mut self, name: String) -> bool {
        if self.0.contains(&name) {
            return true;
        }
        if self.0.len() >= MAX_NAMES {
            return false;
        }
        self.0.push(name);
        true
    }
}

impl SettingsWatch {
    /// Whether the server's settings must be read before it goes back,
    /// unless only `functions` ask for it and they are known harmless.
    pub fn needs_check(&self) -> bool {
        !self.function_names().is_empty() || self.needs_settings()
    }

    /// Whether something besides calls of unknown functions asks for the
    /// settings to be read.
    pub fn needs_settings(&self) -> bool {
        self.dirty || self.tags > self.understood
    }

    /// The unknown functions that ran.
    pub fn function_names(&self) -> &[String] {
        self.names
            .as_deref()
            .map_or(&[], |n| n.functions.0.as_slice())
    }

    /// The custom settings set_config calls named.
    pub fn custom_names(&self) -> &[String] {
        self.names.as_deref().map_or(&[], |n| n.custom.0.as_slice())
    }

    /// The server went back: a new hold starts clean.
    pub fn reset(&mut self) {
        let trust = self.trust_functions;
        *self = Self {
            trust_functions: trust,
            ..Self::default()
        };
    }
}

impl Drop for Multiplex {
    fn drop(&mut self) {
        if self.pins.is_pinned()
            && let Some(s) = &self.stats
        {
            s.unpinned();
        }
    }
}

const TRIGGERS: &[&str] = &[
    "alter",
    "do",
    "set",
    "reset",
    "discard",
    "listen",
    "unlisten",
    "prepare",
    "deallocate",
    "declare",
    "close",
    "create",
    "drop",
];

fn session_route_of(vars: &SessionVars) -> SessionRoute {
    match vars.extra.get("sluice.route") {
        Some(Setting::Text(v) | Setting::Sql(v)) => SessionRoute::parse(v),
        // A replica cannot run a serializable transaction (0A000): a
        // client whose transactions default to it reads on the primary.
        None if serializable_by_default(vars) => SessionRoute::Primary,
        None => SessionRoute::Auto,
    }
}

fn serializable_by_default(vars: &SessionVars) -> bool {
    matches!(
        vars.extra.get("default_transaction_isolation"),
        Some(Setting::Text(v) | Setting::Sql(v))
            if v.trim().trim_matches('\'').eq_ignore_ascii_case("serializable")
    )
}

/// What one cheap pass over a statement's bytes finds, so that ordinary
/// queries are not tokenized, nor even checked as UTF-8.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Glance {
    /// A trigger word first, `pg_advisory`, or a second statement: the
    /// statement is read for its session effects.
    pub matters: bool,
    /// `set_config` (any case) occurs, even inside a string.
    pub set_config: bool,
    /// A `(` occurs: maybe a function call.
    pub parens: bool,
    /// NOTIFY first, or `pg_notify` (any case) occurs.
    pub notify: bool,
}

pub(crate) fn glance(sql: &[u8]) -> Glance {
    let first = crate::sql::lex::strip_leading_comments_bytes(sql);
    let word_end = first
        .iter()
        .position(|c| !c.is_ascii_alphabetic())
        .unwrap_or(first.len());
    let word = &first[..word_end];
    let mut g = Glance {
        matters: TRIGGERS
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(word)),
        notify: word.eq_ignore_ascii_case(b"notify"),
        ..Glance::default()
    };
    // One pass for all. A `;` before the last byte that is neither
    // whitespace nor `;` separates two statements.
    let mut last_text = None;
    for i in memchr::memchr3_iter(b'_', b';', b'(', sql) {
        match sql[i] {
            b'(' => g.parens = true,
            b';' if !g.matters => {
                let end = *last_text.get_or_insert_with(|| {
                    sql.iter()
                        .rposition(|c| !crate::sql::lex::is_space(*c) && *c != b';')
                });
                g.matters = end.is_some_and(|end| i < end);
            }
            b';' => {}
            _ => {
                g.matters |= advisory_at(sql, i);
                g.set_config |= set_config_at(sql, i);
                g.notify |= pg_notify_at(sql, i);
            }
        }
    }
    g
}

/// `glance(sql).matters`.
pub(crate) fn might_matter(sql: &[u8]) -> bool {
    glance(sql).matters
}

/// Whether `pg_notify` (in any case) has its `_` at `i`.
fn pg_notify_at(sql: &[u8], i: usize) -> bool {
    i >= 2
        && sql[i - 2..i].eq_ignore_ascii_case(b"pg")
        && sql
            .get(i + 1..i + 7)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"notify"))
}

/// Whether `set_config` (in any case) has its `_` at `i`.
fn set_config_at(sql: &[u8], i: usize) -> bool {
    const NEEDLE: &[u8] = b"set_config";
    i >= 3
        && sql
            .get(i - 3..i - 3 + NEEDLE.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(NEEDLE))
}

/// Whether `pg_advisory` (in any case) has its `_` at `i`. Every query is
/// checked, so it compares only around each `_` (found with SIMD).
fn advisory_at(sql: &[u8], i: usize) -> bool {
    const NEEDLE: &[u8] = b"pg_advisory";
    i >= 2
        && sql
            .get(i - 2..i - 2 + NEEDLE.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(NEEDLE))
}

impl Multiplex {
    pub fn new(vars: SessionVars, reject_pins: bool, statement_mode: bool) -> Self {
        Self {
            vars,
            pins: Pins::default(),
            pending: None,
            failed: false,
            rolled_back: false,
            reject_pins,
            statement_mode,
            txn_violation: false,
            stats: None,
            statements: None,
            routing: None,
            watch: SettingsWatch::default(),
            listen: None,
        }
    }

    /// `SET sluice.route`, as committed.
    pub fn session_route(&self) -> SessionRoute {
        session_route_of(&self.vars)
    }

    /// Whether the server held may run the message at the start of `rest`.
    pub fn route_step(&mut self, tag: FrontendTag, body: &[u8], rest: &[u8]) -> Step {
        let Some(r) = self.routing.as_mut() else {
            return Step::Forward;
        };
        // Only a replica's gate reads the session route: no lookup per
        // message on the primary.
        let session = if r.on == crate::route::Target::Primary {
            SessionRoute::Auto
        } else {
            session_route_of(&self.vars)
        };
        let statements = self.statements.as_ref().map(|s| &s.client);
        r.check(tag, body, rest, statements, session)
    }

    /// Where the request buffered in `buf` goes.
    pub fn route_decision(&mut self, buf: &[u8]) -> Option<Decision> {
        let session = self.session_route();
        let statements = self.statements.as_ref().map(|s| &s.client);
        Some(self.routing.as_mut()?.decide(buf, statements, session))
    }

    /// After a client message went to the server `pid`: a statement that
    /// may notify makes the hub wait for the marker naming this client.
    #[inline]
    pub fn notify_went(&mut self, pid: i32) {
        if let Some(l) = self.listen.as_deref_mut()
            && l.notify_seen
        {
            l.notify_went(pid);
        }
    }

    /// Handles one client message: session effects of its SQL, pins, and
    /// (with statement tracking) renaming of prepared statements.
    pub fn on_client(
        &mut self,
        tag: FrontendTag,
        body: &[u8],
        later: &[u8],
        at_boundary: bool,
        server: &mut ServerStatements,
        txn: TxnStatus,
    ) -> Action {
        let (verdict, found, count) = self.scan_sql(tag, body, at_boundary);
        if let Verdict::Reject(m) = verdict {
            return Action::Reject(m);
        }
        let Some(st) = self.statements.as_mut() else {
            return Action::Forward;
        };
        if tag == FrontendTag::Query {
            if found
                .iter()
                .any(|e| matches!(e, Effect::DeallocateAll | Effect::DiscardAll))
            {
                st.forget_all(server);
            }
            if let ([Effect::Deallocate(name)], 1) = (found.as_slice(), count)
                && st.deallocate(name, txn)
            {
                return Action::Drop;
            }
        }
        let before = (st.reprepares, st.evictions);
        // Borrowed, and looked up only for a named statement.
        let vars = &self.vars;
        let action = st.on_client(tag, body, later, at_boundary, || search_path(vars), server);
        if let Some(stats) = &self.stats {
            stats.prepared(st.reprepares - before.0, st.evictions - before.1);
        }
        // A statement that may change session state runs now: its effects
        // count as a Query's would (a cached Parse was never scanned).
        if let Some(def) = st.bound.take() {
            self.scan_text(def.text(), false, true);
        }
        match action {
            ClientAction::Forward => Action::Forward,
            ClientAction::Replace(b) => Action::Replace(b),
            ClientAction::Drop => Action::Drop,
            ClientAction::Verify(b) => Action::Verify(b),
        }
    }

    /// Session effects of a Query's or Parse's SQL; how many statements it has.
    fn scan_sql(
        &mut self,
        tag: FrontendTag,
        body: &[u8],
        at_boundary: bool,
    ) -> (Verdict, Vec<Effect>, usize) {
        let text = match tag {
            FrontendTag::Query => take_cstr(body).map(|(q, _)| q),
            FrontendTag::Parse => take_cstr(body)
                .and_then(|(_, rest)| take_cstr(rest))
                .map(|(q, _)| q),
            _ => None,
        };
        let Some(text) = text else {
            if tag == FrontendTag::FunctionCall {
                self.watch.dirty = true; // a function sluice cannot see
            }
            return (Verdict::Forward, Vec::new(), 0);
        };
        self.scan_text(text, at_boundary, tag == FrontendTag::Query)
    }

    /// `scan_sql` for a statement text; `executes` when it runs now (a
    /// Query, or the Bind of a prepared statement) rather than is parsed.
    fn scan_text(
        &mut self,
        text: &[u8],
        at_boundary: bool,
        executes: bool,
    ) -> (Verdict, Vec<Effect>, usize) {
        let g = glance(text);
        if executes {
            self.watch_functions(text, g);
            if g.notify
                && let Some(l) = self.listen.as_deref_mut()
            {
                l.notify_seen = true;
            }
        }
        if !g.matters {
            return (Verdict::Forward, Vec::new(), 1);
        }
        let Ok(sql) = std::str::from_utf8(text) else {
            return (Verdict::Forward, Vec::new(), 0);
        };
        let stmts = statements(sql);
        let count = stmts.len();
        let mut found: Vec<Effect> = Vec::new();
        for stmt in stmts {
            let before = found.len();
            found.extend(effects(stmt));
            if executes {
                self.watch_set(stmt, &found[before..]);
                self.watch.ddl |= changes_schema(stmt, &found[before..], &self.pins);
                self.watch.dirty |= first_word_is(stmt, "do");
            }
        }
        // With a hub, LISTEN does not pin: the hub listens for the client.
        let hub = self.listen.is_some();
        let pins = |e: &&Effect| !(hub && listening::is_listen_effect(e));
        if self.reject_pins
            && at_boundary
            && let Some(what) = found.iter().filter(pins).find_map(Pins::pins)
        {
            let msg = format!(
                "{what} cannot be used with transaction pooling (on_session_state = \"error\")"
            );
            return (Verdict::Reject(msg), Vec::new(), count);
        }
        let was_pinned = self.pins.is_pinned();
        for e in &found {
            if let Some(l) = self.listen.as_deref_mut()
                && listening::is_listen_effect(e)
            {
                if executes {
                    l.ran(e);
                } else if let Effect::Listen(c) = e {
                    let _ = l.want(c); // parsed now, run later
                }
                if !matches!(e, Effect::DiscardAll) {
                    continue;
                }
            }
            self.pins.apply(e);
            if matches!(
                e,
                Effect::Set { .. } | Effect::Reset(_) | Effect::ResetAll | Effect::DiscardAll
            ) {
                self.pending.get_or_insert_default().push(e.clone());
            }
        }
        if let Some(s) = &self.stats {
            match (was_pinned, self.pins.is_pinned()) {
                (false, true) => s.pinned(),
                (true, false) => s.unpinned(),
                _ => {}
            }
        }
        (Verdict::Forward, found, count)
    }

    /// Set_config calls, DO blocks and unknown functions in a statement
    /// that runs now.
    fn watch_functions(&mut self, text: &[u8], g: Glance) {
        use crate::sql::functions;
        let calls = g.parens && !self.watch.trust_functions;
        if !g.set_config && !calls {
            return; // most statements, without reading them as text
        }
        let Ok(sql) = std::str::from_utf8(text) else {
            return;
        };
        if g.set_config {
            self.watch.dirty = true;
            for name in functions::set_config_names(sql) {
                if name.contains('.') {
                    // Past the bound, custom settings are named nowhere
                    // (pg_settings does not list them): the server is closed.
                    self.watch.overflow |=
                        !self.watch.names.get_or_insert_default().custom.add(name);
                }
            }
        } else {
            for name in functions::unknown_functions(sql) {
                // Too many to look up: read the settings instead.
                self.watch.dirty |= !self.watch.names.get_or_insert_default().functions.add(name);
            }
        }
    }

    /// A SET or RESET statement sluice follows counts against the server's
    /// tags; one it does not understand (SET SCHEMA, SET SESSION
    /// CHARACTERISTICS, ...) needs the settings read back.
    fn watch_set(&mut self, stmt: &str, found: &[Effect]) {
        let followed = found
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Set { .. } | Effect::Reset(_) | Effect::ResetAll | Effect::LocalSet
                )
            })
            .count();
        self.watch.understood = self
            .watch
            .understood
            .saturating_add(u16::try_from(followed).unwrap_or(u16::MAX));
        let first = crate::sql::lex::strip_leading_comments(stmt);
        let word = first
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .unwrap_or("");
        if followed == 0 && (word.eq_ignore_ascii_case("set") || word.eq_ignore_ascii_case("reset"))
        {
            self.watch.dirty = true;
        }
    }

    pub fn on_server(
        &mut self,
        tag: BackendTag,
        raw_tag: u8,
        body: &[u8],
        server_extra: &mut BTreeMap<String, Setting>,
        server_statements: &mut ServerStatements,
    ) -> FrameAction {
        self.track_server(tag, body, server_extra);
        match self.statements.as_mut() {
            Some(st) if st.expect.cares(raw_tag) => st.on_server(raw_tag, body, server_statements),
            _ => FrameAction::default(),
        }
    }

    /// The cached reply to the request `buf` holds, consumed; None when
    /// it needs a server (a cacheable one is then recorded).
    pub fn answer_from_cache(&mut self, buf: &mut BytesMut) -> Option<bytes::Bytes> {
        if self.pins.is_pinned() {
            return None;
        }
        let r = self.routing.as_deref_mut()?;
        let c = r.cache.as_mut()?;
        let vars = &self.vars;
        let (statements, known) = match self.statements.as_deref_mut() {
            Some(st) => (Some(&mut st.client), st.known.as_ref()),
            None => (None, None),
        };
        let generation = known.map_or(0, |k| k.generation());
        let path = search_path(vars);
        let routing = Some((&*r.topo, &mut r.need));
        c.answer(buf, vars, statements, routing, |rest| {
            super::prepared::define(rest, path, generation)
        })
    }

    /// Answers a batch of known Parses / Closes ending in Sync without a
    /// server (see `Statements::answer_without_server`).
    pub fn answer_without_server(&mut self, buf: &mut BytesMut, max: usize) -> Answer {
        let vars = &self.vars;
        match self.statements.as_mut() {
            Some(st) => st.answer_without_server(buf, || search_path(vars), max),
            None => Answer::NeedServer,
        }
    }

    /// Whether replies are still owed for messages sluice rewrote or answered.
    pub fn owes_replies(&self) -> bool {
        self.statements
            .as_ref()
            .is_some_and(|s| !s.expect.is_empty())
    }

    /// Whether replies sluice made up are due now (checked first: most
    /// server frames leave none, and then no list is built or dropped).
    #[inline]
    pub fn injection_due(&self) -> bool {
        self.statements
            .as_ref()
            .is_some_and(|s| s.expect.injection_due())
    }

    /// Replies sluice owes the client that are due now.
    pub fn due_injections(&mut self) -> Vec<bytes::Bytes> {
        match self.statements.as_mut() {
            Some(s) => s.expect.due_injections(),
            None => Vec::new(),
        }
    }

    fn track_server(
        &mut self,
        tag: BackendTag,
        body: &[u8],
        server_extra: &mut BTreeMap<String, Setting>,
    ) {
        match tag {
            BackendTag::ParameterStatus => {
                if let Some((k, v)) = inspect::parameter_status(body) {
                    crate::server::set_param(&mut self.vars.reported, k, v);
                }
            }
            BackendTag::ErrorResponse => self.failed = true,
            BackendTag::Other(b'C') => {
                self.rolled_back = body.starts_with(b"ROLLBACK");
                if body == b"SET\0" || body == b"RESET\0" {
                    self.watch.tags = self.watch.tags.saturating_add(1);
                }
            }
            BackendTag::ReadyForQuery => match inspect::ready_status(body) {
                Some(TxnStatus::Idle) => {
                    if std::mem::take(&mut self.watch.ddl) && !self.failed && !self.rolled_back {
                        if let Some(st) = &self.statements {
                            st.schema_changed();
                        }
                        if let Some(c) = self.routing.as_ref().and_then(|r| r.cache.as_ref()) {
                            c.schema_changed();
                        }
                    }
                    if let Some(l) = self.listen.as_deref_mut() {
                        l.ended(!self.failed && !self.rolled_back);
                    }
                    if !self.failed && !self.rolled_back {
                        for e in self.pending.take().map(|b| *b).unwrap_or_default() {
                            apply(&mut self.vars.extra, &self.vars.reported, &e);
                            apply(server_extra, &self.vars.reported, &e);
                        }
                    }
                    self.pending = None;
                    self.failed = false;
                    self.rolled_back = false;
                }
                Some(TxnStatus::InTransaction) if self.statement_mode => self.txn_violation = true,
                _ => {}
            },
            _ => {}
        }
    }
}

/// Whether the first word of `stmt` (after comments) is `word`.
fn first_word_is(stmt: &str, word: &str) -> bool {
    let first = crate::sql::lex::strip_leading_comments(stmt);
    first
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(word))
}

/// Whether `stmt` (with its `found` effects) may change what prepared
/// statements return: ALTER, DROP or CREATE OR REPLACE of anything but the
/// client's own temporary objects.
fn changes_schema(stmt: &str, found: &[Effect], pins: &Pins) -> bool {
    let mut words = crate::sql::lex::Lexer::new(stmt).filter_map(|(t, _)| match t {
        crate::sql::lex::Token::Word(w) => Some(w),
        _ => None,
    });
    match words.next().as_deref() {
        Some("alter") => true,
        Some("drop") => !found
            .iter()
            .any(|e| matches!(e, Effect::Drop(names) if names.iter().all(|n| pins.is_temp(n)))),
        Some("create") => words.next().as_deref() == Some("or"),
        _ => false,
    }
}

/// The client's search_path setting, which is part of a prepared statement's identity.
fn search_path(vars: &SessionVars) -> Option<&str> {
    match vars.extra.get("search_path") {
        Some(Setting::Sql(v)) | Some(Setting::Text(v)) => Some(v),
        None => vars.reported.get("search_path").map(String::as_str),
    }
}

/// Applies a committed setting change to a map of non-reported settings.
fn apply(extra: &mut BTreeMap<String, Setting>, reported: &BTreeMap<String, String>, e: &Effect) {
    let reported_name = |n: &str| reported.keys().any(|k| k.eq_ignore_ascii_case(n));
    match e {
        Effect::Set { name, value } if !reported_name(name) => {
            extra.insert(name.clone(), Setting::Sql(value.clone()));
        }
        Effect::Reset(name) => {
            extra.remove(name);
        }
        Effect::ResetAll | Effect::DiscardAll => extra.clear(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(sql: &str) -> Vec<u8> {
        let mut v = sql.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn ready(m: &mut Multiplex, extra: &mut BTreeMap<String, Setting>, status: &[u8]) {
        srv(m, BackendTag::ReadyForQuery, status, extra);
    }

    fn srv(m: &mut Multiplex, tag: BackendTag, body: &[u8], extra: &mut BTreeMap<String, Setting>) {
        let raw = match tag {
            BackendTag::ReadyForQuery => b'Z',
            BackendTag::ParameterStatus => b'S',
            BackendTag::ErrorResponse => b'E',
            BackendTag::Other(b) => b,
            _ => b'?',
        };
        m.on_server(tag, raw, body, extra, &mut ServerStatements::default());
    }

    fn cl(m: &mut Multiplex, sql: &str) -> Action {
        m.on_client(
            FrontendTag::Query,
            &q(sql),
            &[],
            true,
            &mut ServerStatements::default(),
            TxnStatus::Idle,
        )
    }

    #[test]
    fn set_commits_at_idle_and_rolls_back_with_the_transaction() {
        let mut m = Multiplex::default();
        let mut server = BTreeMap::new();
        cl(&mut m, "SET search_path TO a");
        ready(&mut m, &mut server, b"I");
        assert_eq!(
            m.vars.extra.get("search_path"),
            Some(&Setting::Sql("a".into()))
        );
        assert_eq!(server, m.vars.extra);

        cl(&mut m, "BEGIN; SET search_path TO b");
        ready(&mut m, &mut server, b"T");
        cl(&mut m, "ROLLBACK");
        srv(&mut m, BackendTag::Other(b'C'), b"ROLLBACK\0", &mut server);
        ready(&mut m, &mut server, b"I");
        assert_eq!(
            m.vars.extra.get("search_path"),
            Some(&Setting::Sql("a".into()))
        );

        cl(&mut m, "SET search_path TO c; SELECT 1/0");
        srv(&mut m, BackendTag::ErrorResponse, b"", &mut server);
        ready(&mut m, &mut server, b"I");
        assert_eq!(
            m.vars.extra.get("search_path"),
            Some(&Setting::Sql("a".into()))
        );

        cl(&mut m, "RESET ALL");
        ready(&mut m, &mut server, b"I");
        assert!(m.vars.extra.is_empty() && server.is_empty());
    }

    #[test]
    fn reported_parameters_come_from_parameter_status() {
        let mut m = Multiplex::default();
        let mut server = BTreeMap::new();
        srv(
            &mut m,
            BackendTag::ParameterStatus,
            b"TimeZone\0UTC\0",
            &mut server,
        );
        cl(&mut m, "SET TimeZone = 'Asia/Tokyo'");
        srv(
            &mut m,
            BackendTag::ParameterStatus,
            b"TimeZone\0Asia/Tokyo\0",
            &mut server,
        );
        ready(&mut m, &mut server, b"I");
        assert_eq!(
            m.vars.reported.get("TimeZone").map(String::as_str),
            Some("Asia/Tokyo")
        );
        assert!(
            m.vars.extra.is_empty(),
            "reported parameters are not duplicated as extra settings"
        );
    }

    #[test]
    fn pins_and_rejections() {
        let mut m = Multiplex::default();
        cl(&mut m, "LISTEN x");
        assert!(m.pins.is_pinned());
        let mut m = Multiplex::new(SessionVars::default(), true, false);
        assert!(matches!(cl(&mut m, "LISTEN x"), Action::Reject(_)));
        assert!(!m.pins.is_pinned());
        assert!(matches!(cl(&mut m, "SELECT 1"), Action::Forward));
    }

    #[test]
    fn statement_mode_flags_transaction_blocks() {
        let mut m = Multiplex::new(SessionVars::default(), false, true);
        let mut server = BTreeMap::new();
        ready(&mut m, &mut server, b"T");
        assert!(m.txn_violation);
    }

    #[test]
    fn precheck_skips_plain_queries() {
        assert!(!might_matter(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        ));
        assert!(!might_matter(b"SELECT 1;"));
        assert!(!might_matter(b"SELECT 1; ;\n"));
        assert!(!might_matter(b"SELECT x_y FROM t_u"));
        assert!(!might_matter(b"\xff\xfe SELECT 1"));
        assert!(might_matter(b"/* c */ set x = 1"));
        assert!(might_matter(b" -- c\n\tDISCARD ALL"));
        assert!(might_matter(b"SELECT 1; SELECT 2"));
        assert!(might_matter(b"SELECT 1;;SELECT 2;;"));
        assert!(might_matter(b"select PG_ADVISORY_LOCK(1)"));
        assert!(might_matter(b"DO $$ BEGIN NULL; END $$"));
        let mut m = Multiplex::default();
        let many: Vec<String> = (0..100).map(|i| format!("f{i}(1)")).collect();
        cl(&mut m, &format!("SELECT {}", many.join(", ")));
        assert_eq!(m.watch.function_names().len(), MAX_NAMES);
        assert!(
            m.watch.needs_settings(),
            "past the bound, the settings are read"
        );
        let g = glance(b"SELECT Set_Config('a', 'b', false), f(1)");
        assert!(g.set_config && g.parens && !g.matters);
        assert_eq!(
            glance(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;"),
            Glance::default()
        );
        assert!(advisory_at(b"pg_Advisory_unlock_all()", 2));
        // A long run of `;` is scanned once, not once per `;`.
        let mut many = b"SELECT 1".to_vec();
        many.resize(1 << 20, b';');
        assert!(!might_matter(&many));
    }
}
