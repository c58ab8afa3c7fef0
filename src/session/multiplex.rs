//! What transaction and statement pooling track per client while frames
//! pass: settings to carry between servers, pins, and statement mode's ban
//! on transaction blocks. The relay feeds it tags and bodies; it does no IO.

use std::collections::BTreeMap;

use super::pins::Pins;
use super::vars::{SessionVars, Setting};
use crate::protocol::inspect::{self, take_cstr};
use crate::protocol::tags::{BackendTag, FrontendTag, TxnStatus};
use crate::sql::lex::statements;
use crate::sql::session_cmd::{Effect, effects};

/// What to do with a client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// Answer with this error instead of sending the message to the server.
    Reject(String),
}

#[derive(Debug, Default)]
pub struct Multiplex {
    pub vars: SessionVars,
    pub pins: Pins,
    /// Setting changes sent but not yet known to have committed.
    pending: Vec<Effect>,
    failed: bool,
    rolled_back: bool,
    /// `on_session_state = "error"`: refuse what would pin.
    pub reject_pins: bool,
    pub statement_mode: bool,
    /// Statement mode saw a transaction block open.
    pub txn_violation: bool,
    /// Where pinned clients are counted.
    pub stats: Option<std::sync::Arc<crate::stats::Stats>>,
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

/// Cheap pre-check so ordinary queries are not tokenized.
fn might_matter(sql: &str) -> bool {
    let first = crate::sql::lex::strip_leading_comments(sql);
    let word_end = first
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(first.len());
    let word = &first[..word_end];
    TRIGGERS.iter().any(|t| t.eq_ignore_ascii_case(word))
        || sql
            .as_bytes()
            .windows(11)
            .any(|w| w.eq_ignore_ascii_case(b"pg_advisory"))
        || sql.trim_end().trim_end_matches(';').contains(';')
}

impl Multiplex {
    pub fn new(vars: SessionVars, reject_pins: bool, statement_mode: bool) -> Self {
        Self {
            vars,
            pins: Pins::default(),
            pending: Vec::new(),
            failed: false,
            rolled_back: false,
            reject_pins,
            statement_mode,
            txn_violation: false,
            stats: None,
        }
    }

    pub fn on_client(&mut self, tag: FrontendTag, body: &[u8], at_boundary: bool) -> Verdict {
        let text = match tag {
            FrontendTag::Query => take_cstr(body).map(|(q, _)| q),
            FrontendTag::Parse => take_cstr(body)
                .and_then(|(_, rest)| take_cstr(rest))
                .map(|(q, _)| q),
            _ => None,
        };
        let Some(sql) = text.and_then(|t| std::str::from_utf8(t).ok()) else {
            return Verdict::Forward;
        };
        if !might_matter(sql) {
            return Verdict::Forward;
        }
        let found: Vec<Effect> = statements(sql).into_iter().flat_map(effects).collect();
        if self.reject_pins
            && at_boundary
            && let Some(what) = found.iter().find_map(Pins::pins)
        {
            return Verdict::Reject(format!(
                "{what} cannot be used with transaction pooling (on_session_state = \"error\")"
            ));
        }
        let was_pinned = self.pins.is_pinned();
        for e in found {
            self.pins.apply(&e);
            if matches!(
                e,
                Effect::Set { .. } | Effect::Reset(_) | Effect::ResetAll | Effect::DiscardAll
            ) {
                self.pending.push(e);
            }
        }
        if let Some(s) = &self.stats {
            match (was_pinned, self.pins.is_pinned()) {
                (false, true) => s.pinned(),
                (true, false) => s.unpinned(),
                _ => {}
            }
        }
        Verdict::Forward
    }

    pub fn on_server(
        &mut self,
        tag: BackendTag,
        body: &[u8],
        server_extra: &mut BTreeMap<String, Setting>,
    ) {
        match tag {
            BackendTag::ParameterStatus => {
                if let Some((k, v)) = inspect::parameter_status(body) {
                    self.vars.reported.insert(k, v);
                }
            }
            BackendTag::ErrorResponse => self.failed = true,
            BackendTag::Other(b'C') => self.rolled_back = body.starts_with(b"ROLLBACK"),
            BackendTag::ReadyForQuery => match inspect::ready_status(body) {
                Some(TxnStatus::Idle) => {
                    if !self.failed && !self.rolled_back {
                        for e in std::mem::take(&mut self.pending) {
                            apply(&mut self.vars.extra, &self.vars.reported, &e);
                            apply(server_extra, &self.vars.reported, &e);
                        }
                    }
                    self.pending.clear();
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
        m.on_server(BackendTag::ReadyForQuery, status, extra);
    }

    #[test]
    fn set_commits_at_idle_and_rolls_back_with_the_transaction() {
        let mut m = Multiplex::default();
        let mut server = BTreeMap::new();
        m.on_client(FrontendTag::Query, &q("SET search_path TO a"), true);
        ready(&mut m, &mut server, b"I");
        assert_eq!(
            m.vars.extra.get("search_path"),
            Some(&Setting::Sql("a".into()))
        );
        assert_eq!(server, m.vars.extra);

        m.on_client(FrontendTag::Query, &q("BEGIN; SET search_path TO b"), true);
        ready(&mut m, &mut server, b"T");
        m.on_client(FrontendTag::Query, &q("ROLLBACK"), true);
        m.on_server(BackendTag::Other(b'C'), b"ROLLBACK\0", &mut server);
        ready(&mut m, &mut server, b"I");
        assert_eq!(
            m.vars.extra.get("search_path"),
            Some(&Setting::Sql("a".into()))
        );

        m.on_client(
            FrontendTag::Query,
            &q("SET search_path TO c; SELECT 1/0"),
            true,
        );
        m.on_server(BackendTag::ErrorResponse, b"", &mut server);
        ready(&mut m, &mut server, b"I");
        assert_eq!(
            m.vars.extra.get("search_path"),
            Some(&Setting::Sql("a".into()))
        );

        m.on_client(FrontendTag::Query, &q("RESET ALL"), true);
        ready(&mut m, &mut server, b"I");
        assert!(m.vars.extra.is_empty() && server.is_empty());
    }

    #[test]
    fn reported_parameters_come_from_parameter_status() {
        let mut m = Multiplex::default();
        let mut server = BTreeMap::new();
        m.on_server(BackendTag::ParameterStatus, b"TimeZone\0UTC\0", &mut server);
        m.on_client(FrontendTag::Query, &q("SET TimeZone = 'Asia/Tokyo'"), true);
        m.on_server(
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
        m.on_client(FrontendTag::Query, &q("LISTEN x"), true);
        assert!(m.pins.is_pinned());
        let mut m = Multiplex::new(SessionVars::default(), true, false);
        assert!(matches!(
            m.on_client(FrontendTag::Query, &q("LISTEN x"), true),
            Verdict::Reject(_)
        ));
        assert!(!m.pins.is_pinned());
        assert_eq!(
            m.on_client(FrontendTag::Query, &q("SELECT 1"), true),
            Verdict::Forward
        );
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
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        ));
        assert!(!might_matter("SELECT 1;"));
        assert!(might_matter("/* c */ set x = 1"));
        assert!(might_matter("SELECT 1; SELECT 2"));
        assert!(might_matter("select PG_ADVISORY_LOCK(1)"));
    }
}
