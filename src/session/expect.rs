//! The replies a transaction-pooled client is owed, in order. Every message
//! forwarded to the server gets an entry; so do messages sluice adds (whose
//! replies it swallows) and messages it answers itself (whose replies it
//! injects at the right place). Pure: fed with server tags, it says which
//! server frames to drop or replace and which injected replies are due.

use std::collections::VecDeque;

use bytes::Bytes;

/// The kind of message an entry stands for, which decides the reply that completes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    /// Query or FunctionCall: ends at ReadyForQuery, errors do not skip.
    Simple,
    /// No reply: where the client ended a COPY FROM STDIN (CopyDone or
    /// CopyFail) before the server's CopyInResponse came.
    CopyEnd,
}

impl Kind {
    fn completed_by(self, tag: u8) -> bool {
        match self {
            Kind::Parse => tag == b'1',
            Kind::Bind => tag == b'2',
            Kind::Close => tag == b'3',
            Kind::DescribeStatement | Kind::DescribePortal => matches!(tag, b'T' | b'n'),
            Kind::Execute => matches!(tag, b'C' | b'I' | b's'),
            Kind::Sync | Kind::Simple => tag == b'Z',
            Kind::CopyEnd => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// A client message: its replies go to the client.
    Reply,
    /// A message sluice added: its success reply is dropped.
    Swallow,
    /// A client message sluice answered itself: these bytes are its reply.
    Inject(Bytes),
    /// The server's error for this message is replaced by sluice's.
    ReplaceError(Bytes),
    /// A client's Describe of this statement: the row shape of its reply
    /// is noted in the statement (to check it after a schema change).
    ReplyShape(std::sync::Arc<super::prepared::StmtDef>),
    /// A Describe sluice added to check a statement prepared before a
    /// schema change: its replies are dropped, and the row shape compared
    /// with this one.
    Verify(u64),
}

/// What a `Verify` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The statement returns rows of the shape its client was told.
    Same,
    /// It does not: the client gets PostgreSQL's "cached plan must not
    /// change result type", as a direct connection would.
    Changed,
    /// Preparing it again failed; the server's error goes to the client.
    Failed,
}

/// Bookkeeping to undo when the message fails or the server skips it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnFail {
    /// A statement recorded as prepared on the server that is not.
    pub unprepare: Option<String>,
    /// A client statement name that does not exist after all.
    pub forget_client: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub act: Act,
    pub on_fail: OnFail,
}

impl Entry {
    pub fn reply(kind: Kind) -> Self {
        Self {
            kind,
            act: Act::Reply,
            on_fail: OnFail::default(),
        }
    }
}

/// What to do with one server frame.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FrameAction {
    /// Drop the frame (a swallowed reply).
    pub drop: bool,
    /// Send these bytes instead of the frame.
    pub replace: Option<Bytes>,
    /// Bookkeeping of messages that failed or were skipped.
    pub failed: Vec<OnFail>,
    /// Syncs sent that the server ignores (they came during COPY FROM
    /// STDIN): no ReadyForQuery answers them.
    pub void_syncs: u32,
    /// A statement that just parsed successfully on the server.
    pub parsed: Option<String>,
    /// A `Verify` ended.
    pub verdict: Option<Verdict>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExpectQueue {
    q: VecDeque<Entry>,
    /// The server hit an error and skips messages until the next Sync.
    skipping: bool,
    /// The server is in COPY FROM STDIN and the client has not ended it:
    /// PostgreSQL ignores a Sync then (drivers send one after Execute
    /// without knowing the statement is a COPY).
    copy_in: bool,
}

impl ExpectQueue {
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Adds an entry for a message just sent (or answered). While the server
    /// skips to Sync, entries other than Sync are void at once; their undo is
    /// returned.
    pub fn push(&mut self, e: Entry) -> Option<OnFail> {
        if self.skipping {
            if e.kind == Kind::Sync && e.act == Act::Reply {
                self.skipping = false;
            } else {
                return Some(e.on_fail);
            }
        }
        self.q.push_back(e);
        None
    }

    /// Forgets everything owed (the server is given up); returns the undo
    /// of each message it had not answered.
    pub fn drain(&mut self) -> Vec<OnFail> {
        self.skipping = false;
        self.copy_in = false;
        self.q.drain(..).map(|e| e.on_fail).collect()
    }

    /// Whether a client's Sync now would be ignored by the server (it is in
    /// COPY FROM STDIN): such a Sync is not sent, and owes nothing.
    pub fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    /// The client sent CopyDone or CopyFail.
    pub fn copy_end(&mut self) {
        if self.copy_in {
            self.copy_in = false;
        } else {
            // Before the CopyInResponse (or with no COPY at all): marks
            // where the Syncs the server will ignore stop.
            self.q.push_back(Entry::reply(Kind::CopyEnd));
        }
    }

    /// A CopyInResponse: the Syncs sent after the Execute that began the
    /// COPY and before its end are ignored by the server; they leave the
    /// queue, and `void_syncs` says how many.
    fn copy_in_began(&mut self, action: &mut FrameAction) {
        self.copy_in = true;
        if self.q.front().is_some_and(|h| h.kind != Kind::Execute) {
            return;
        }
        let mut i = 1;
        while i < self.q.len() {
            match self.q[i].kind {
                Kind::Sync if self.q[i].act == Act::Reply => {
                    let _ = self.q.remove(i);
                    action.void_syncs += 1;
                }
                Kind::CopyEnd => {
                    let _ = self.q.remove(i);
                    self.copy_in = false;
                    break;
                }
                _ => i += 1,
            }
        }
    }

    /// Drops COPY-end marks that reached the head: they owe nothing.
    fn pop_marks(&mut self) {
        while self.q.front().is_some_and(|e| e.kind == Kind::CopyEnd) {
            self.q.pop_front();
        }
    }

    /// Injected replies now at the head: everything before them is answered.
    pub fn due_injections(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(Entry {
            act: Act::Inject(_),
            ..
        }) = self.q.front()
        {
            if let Some(Entry {
                act: Act::Inject(b),
                ..
            }) = self.q.pop_front()
            {
                out.push(b);
            }
        }
        out
    }

    /// Whether a server frame with this tag changes anything here (it
    /// completes the oldest entry, or fails it): most frames of a reply do
    /// not, and skip `on_server`.
    #[inline]
    pub fn cares(&self, tag: u8) -> bool {
        self.q.front().is_some_and(|h| {
            tag == b'E'
                || h.kind.completed_by(tag)
                || (tag == b'G' && matches!(h.kind, Kind::Execute | Kind::Simple))
                || (tag == b't' && matches!(h.act, Act::Verify(_)))
        })
    }

    /// Whether `due_injections` has anything to give.
    #[inline]
    pub fn injection_due(&self) -> bool {
        matches!(
            self.q.front(),
            Some(Entry {
                act: Act::Inject(_),
                ..
            })
        )
    }

    /// Whether the server skips messages until the next Sync (after an error).
    pub fn is_skipping(&self) -> bool {
        self.skipping
    }

    /// Accounts for one server frame with tag `tag` (its body is read for
    /// row descriptions only).
    pub fn on_server(&mut self, tag: u8, body: &[u8]) -> FrameAction {
        let mut action = FrameAction::default();
        let Some(head) = self.q.front() else {
            return action;
        };
        if tag == b't' && matches!(head.act, Act::Verify(_)) {
            action.drop = true; // the ParameterDescription of sluice's Describe
            return action;
        }
        if tag == b'G' {
            if matches!(head.kind, Kind::Execute | Kind::Simple) {
                self.copy_in_began(&mut action);
            }
            return action;
        }
        if tag == b'E' {
            if head.kind == Kind::Simple {
                return action;
            }
            if let Some(e) = self.q.pop_front() {
                match e.act {
                    Act::ReplaceError(b) => action.replace = Some(b),
                    Act::Verify(_) => action.verdict = Some(Verdict::Failed),
                    _ => {}
                }
                action.failed.push(e.on_fail);
            }
            // The server now skips every message up to the next Sync.
            while let Some(e) = self.q.front() {
                if e.kind == Kind::Sync && e.act == Act::Reply {
                    break;
                }
                if let Some(e) = self.q.pop_front() {
                    if matches!(e.act, Act::Verify(_)) {
                        action.verdict = Some(Verdict::Failed);
                    }
                    action.failed.push(e.on_fail);
                }
            }
            // A failed COPY leaves copy-in mode.
            self.copy_in = false;
            self.pop_marks();
            self.skipping = self.q.is_empty();
            return action;
        }
        if !head.kind.completed_by(tag) {
            return action;
        }
        if let Some(e) = self.q.pop_front() {
            action.drop = e.act == Act::Swallow;
            if e.kind == Kind::Parse {
                action.parsed = e.on_fail.unprepare;
            }
            match e.act {
                Act::ReplyShape(def) => {
                    let _ = def
                        .shape
                        .set(crate::protocol::inspect::row_shape(tag, body));
                }
                Act::Verify(shape) => {
                    action.drop = true;
                    let same = crate::protocol::inspect::row_shape(tag, body) == shape;
                    action.verdict = Some(if same {
                        Verdict::Same
                    } else {
                        Verdict::Changed
                    });
                }
                _ => {}
            }
        }
        self.pop_marks();
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inject(b: &'static [u8]) -> Entry {
        Entry {
            kind: Kind::Parse,
            act: Act::Inject(Bytes::from_static(b)),
            on_fail: OnFail::default(),
        }
    }

    fn swallow(kind: Kind, unprepare: &str) -> Entry {
        Entry {
            kind,
            act: Act::Swallow,
            on_fail: OnFail {
                unprepare: Some(unprepare.into()),
                forget_client: None,
            },
        }
    }

    #[test]
    fn frames_it_does_not_care_about_change_nothing() {
        let queues = [
            vec![],
            vec![Entry::reply(Kind::Simple)],
            vec![Entry::reply(Kind::Parse), Entry::reply(Kind::Sync)],
            vec![swallow(Kind::Close, "g"), Entry::reply(Kind::Execute)],
            vec![inject(b"1"), Entry::reply(Kind::Sync)],
        ];
        for entries in queues {
            for tag in 0..=u8::MAX {
                let mut q = ExpectQueue::default();
                for e in entries.iter().cloned() {
                    q.push(e);
                }
                let before = q.clone();
                if !q.cares(tag) {
                    assert_eq!(q.on_server(tag, b""), FrameAction::default());
                    assert_eq!(q, before, "tag {}", tag as char);
                }
                assert_eq!(q.injection_due(), !q.clone().due_injections().is_empty());
            }
        }
    }

    #[test]
    fn injections_wait_for_earlier_replies() {
        let mut q = ExpectQueue::default();
        q.push(Entry::reply(Kind::Bind));
        q.push(inject(b"1"));
        q.push(Entry::reply(Kind::Sync));
        assert!(q.due_injections().is_empty());
        assert_eq!(q.on_server(b'2', b""), FrameAction::default());
        assert_eq!(q.due_injections(), vec![Bytes::from_static(b"1")]);
        q.on_server(b'Z', b"");
        assert!(q.is_empty());
    }

    #[test]
    fn swallowed_replies_are_dropped() {
        let mut q = ExpectQueue::default();
        q.push(swallow(Kind::Close, "g"));
        q.push(swallow(Kind::Parse, "g"));
        q.push(Entry::reply(Kind::Bind));
        assert!(q.on_server(b'3', b"").drop);
        assert!(q.on_server(b'1', b"").drop);
        assert!(!q.on_server(b'2', b"").drop);
    }

    #[test]
    fn an_error_voids_everything_up_to_sync() {
        let mut q = ExpectQueue::default();
        q.push(swallow(Kind::Parse, "g1"));
        q.push(Entry::reply(Kind::Bind));
        q.push(inject(b"1"));
        q.push(Entry {
            kind: Kind::Parse,
            act: Act::Reply,
            on_fail: OnFail {
                unprepare: Some("g2".into()),
                forget_client: Some(b"s2".to_vec()),
            },
        });
        q.push(Entry::reply(Kind::Sync));
        let a = q.on_server(b'E', b"");
        assert!(!a.drop);
        assert_eq!(a.failed.len(), 4);
        assert_eq!(a.failed[0].unprepare.as_deref(), Some("g1"));
        assert_eq!(a.failed[3].forget_client.as_deref(), Some(&b"s2"[..]));
        assert!(q.due_injections().is_empty());
        q.on_server(b'Z', b"");
        assert!(q.is_empty());
    }

    #[test]
    fn an_error_before_sync_arrives_voids_what_follows() {
        let mut q = ExpectQueue::default();
        q.push(Entry::reply(Kind::Parse));
        q.on_server(b'E', b"");
        let void = q.push(Entry {
            kind: Kind::Parse,
            act: Act::Reply,
            on_fail: OnFail {
                unprepare: Some("g".into()),
                forget_client: None,
            },
        });
        assert_eq!(void.and_then(|f| f.unprepare).as_deref(), Some("g"));
        assert!(q.push(Entry::reply(Kind::Sync)).is_none());
        q.on_server(b'Z', b"");
        assert!(q.is_empty());
    }

    #[test]
    fn simple_queries_end_at_ready_not_at_errors() {
        let mut q = ExpectQueue::default();
        q.push(Entry::reply(Kind::Simple));
        q.on_server(b'E', b"");
        assert!(!q.is_empty());
        q.on_server(b'Z', b"");
        assert!(q.is_empty());
    }

    /// tokio-postgres's copy_in: Bind, Execute, Sync, then (after the
    /// CopyInResponse) CopyData, CopyDone, Sync. PostgreSQL ignores the
    /// first Sync, so one ReadyForQuery answers the two.
    #[test]
    fn a_sync_sent_during_copy_in_owes_nothing() {
        for done_before_g in [false, true] {
            let mut q = ExpectQueue::default();
            q.push(Entry::reply(Kind::Bind));
            q.push(Entry::reply(Kind::Execute));
            q.push(Entry::reply(Kind::Sync));
            if done_before_g {
                q.copy_end();
                q.push(Entry::reply(Kind::Sync));
            }
            q.on_server(b'2', b"");
            assert!(q.cares(b'G'));
            assert_eq!(q.on_server(b'G', b"").void_syncs, 1);
            if !done_before_g {
                assert!(q.in_copy_in(), "a Sync now is not sent");
                q.copy_end();
                q.push(Entry::reply(Kind::Sync));
            }
            assert!(!q.in_copy_in());
            q.on_server(b'C', b"");
            q.on_server(b'Z', b"");
            assert!(q.is_empty(), "done before G: {done_before_g}");
        }
    }

    #[test]
    fn a_copy_that_fails_to_start_leaves_no_mark() {
        let mut q = ExpectQueue::default();
        q.push(Entry::reply(Kind::Execute));
        q.push(Entry::reply(Kind::Sync));
        q.copy_end();
        q.push(Entry::reply(Kind::Sync));
        q.on_server(b'E', b"");
        q.on_server(b'Z', b"");
        q.on_server(b'Z', b"");
        assert!(q.is_empty());
        // A simple-query COPY: the end comes after the CopyInResponse.
        q.push(Entry::reply(Kind::Simple));
        assert_eq!(q.on_server(b'G', b"").void_syncs, 0);
        q.copy_end();
        q.on_server(b'C', b"");
        q.on_server(b'Z', b"");
        assert!(q.is_empty() && !q.in_copy_in());
    }

    #[test]
    fn replaced_errors() {
        let mut q = ExpectQueue::default();
        q.push(Entry {
            kind: Kind::Parse,
            act: Act::ReplaceError(Bytes::from_static(b"mine")),
            on_fail: OnFail::default(),
        });
        q.push(Entry::reply(Kind::Sync));
        assert_eq!(
            q.on_server(b'E', b"").replace,
            Some(Bytes::from_static(b"mine"))
        );
    }
}
