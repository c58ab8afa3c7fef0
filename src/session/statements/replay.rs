//! The copy of a client's request kept to run it again: on the same
//! server after a stale statement, or on the primary after its replica
//! stopped answering or refused it.

use bytes::{Bytes, BytesMut};

use crate::protocol::tags::FrontendTag;

/// Batches longer than this are not kept for a replay.
const MAX_REPLAY: usize = 64 * 1024;

/// A copy of the client's batch that began outside a transaction with
/// nothing in flight, up to its Sync. When the server fails it because a
/// statement it held was prepared against an older schema, and nothing of
/// the reply reached the client, sluice runs the batch again under new
/// statement names: the client sees only the good answer.
///
/// Frames sluice answered itself at the batch's start (a Parse of a
/// statement the server has) are not sent again: their replies went out.
/// A batch that executes without describing its rows is not run again
/// either: its client relies on the row shape it was told before, which
/// the schema change may have changed, so it gets the error, as a direct
/// connection would give it (asyncpg and libpq's callers re-prepare).
#[derive(Debug, Default)]
pub struct Replay {
    buf: BytesMut,
    state: ReplayState,
    /// Bytes at the start of `buf` that sluice answered itself.
    answered: usize,
    described: bool,
    /// An Execute came with no Describe before it.
    blind: bool,
    /// A simple Query, kept only to run again elsewhere (`retry`).
    simple: bool,
    /// Recorded on a replica: the request may run on the primary instead.
    elsewhere: bool,
    /// Sluice answered a frame that is not among those at the start.
    answered_inside: bool,
    /// Reply frames held back until the request's fate is known: the
    /// ParameterDescription of a Describe that a stale statement may fail
    /// right after, or, on a replica, everything before the first row,
    /// completion or error (a replica's refusal sends the request to the
    /// primary, and the client must see only the primary's reply).
    pub held: Vec<Bytes>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ReplayState {
    #[default]
    Off,
    Recording,
    /// Its Sync was seen.
    Complete,
}

impl Replay {
    /// A client frame (None: not whole in the buffer) about to go to the
    /// server; `at_boundary` when nothing is in flight, and then `idle`
    /// outside a transaction: only such a batch is kept. With
    /// `keep_query` (a read on a replica, which may have to run on the
    /// primary), a simple Query is kept too.
    pub fn record(
        &mut self,
        tag: FrontendTag,
        frame: Option<&[u8]>,
        at_boundary: bool,
        idle: bool,
        keep_query: bool,
    ) {
        if at_boundary {
            self.buf.clear();
            (self.answered, self.described, self.blind, self.simple) = (0, false, false, false);
            self.elsewhere = keep_query;
            self.answered_inside = false;
            self.state = if idle {
                ReplayState::Recording
            } else {
                ReplayState::Off
            };
        }
        match tag {
            FrontendTag::Describe => self.described = true,
            FrontendTag::Execute => self.blind |= !self.described,
            _ => {}
        }
        match (self.state, frame) {
            (ReplayState::Off, _) => {}
            (ReplayState::Recording, Some(f))
                if tag == FrontendTag::Query
                    && keep_query
                    && self.buf.is_empty()
                    && f.len() <= MAX_REPLAY =>
            {
                self.buf.extend_from_slice(f);
                self.simple = true;
                self.state = ReplayState::Complete;
            }
            // A simple Query never fails on a stale statement (it is parsed
            // anew): not kept.
            _ if tag == FrontendTag::Query => self.state = ReplayState::Off,
            (ReplayState::Recording, Some(f)) if self.buf.len() + f.len() <= MAX_REPLAY => {
                self.buf.extend_from_slice(f);
                if tag == FrontendTag::Sync {
                    self.state = ReplayState::Complete;
                }
            }
            // Too long, not whole, or a second batch pipelined after it.
            _ => self.state = ReplayState::Off,
        }
    }

    /// The frame of `len` bytes just recorded was answered by sluice: when
    /// everything before it was too, it is not sent again.
    pub fn answered_by_sluice(&mut self, len: usize) {
        if self.state == ReplayState::Recording && self.answered + len == self.buf.len() {
            self.answered = self.buf.len();
        } else {
            self.answered_inside = true;
        }
    }

    /// Whether a whole batch up to its Sync is kept, and may run again
    /// after a stale statement.
    pub fn ready(&self) -> bool {
        self.state == ReplayState::Complete && !self.blind && !self.simple
    }

    /// Whether the whole request (a batch up to its Sync, or a Query) is
    /// kept, to run on another server when this one stopped answering
    /// before any of its reply: the schema is the same there, so a batch
    /// that does not describe its rows may go too.
    pub fn retry_ready(&self) -> bool {
        self.state == ReplayState::Complete
    }

    /// Whether the request, kept whole (its Sync or Query went to the
    /// server), may yet run on the primary instead of the replica it was
    /// recorded on: its reply is held back until its fate is known.
    /// (Before its Sync, a client that sent Flush waits for replies.) Not
    /// when sluice answered a frame after the start of the request: that
    /// reply goes out when its turn comes, and the request, sent again,
    /// would have it answered twice.
    pub fn may_move(&self) -> bool {
        self.elsewhere && self.state == ReplayState::Complete && !self.answered_inside
    }

    /// The request kept so far.
    pub fn kept(&self) -> &[u8] {
        &self.buf
    }

    /// The batch (less what sluice answered), to run again; nothing is
    /// kept after.
    pub fn take(&mut self) -> BytesMut {
        self.state = ReplayState::Off;
        let mut b = std::mem::take(&mut self.buf);
        b.split_off(self.answered.min(b.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_kept_up_to_its_sync_and_only_alone() {
        let mut r = Replay::default();
        r.record(FrontendTag::Parse, Some(b"P.."), true, true, false);
        r.answered_by_sluice(3);
        r.record(FrontendTag::Bind, Some(b"B..."), false, true, false);
        r.record(FrontendTag::Describe, Some(b"D."), false, true, false);
        r.record(FrontendTag::Execute, Some(b"E..."), false, true, false);
        r.answered_by_sluice(4); // not at the start: sent again
        assert!(!r.ready());
        r.record(FrontendTag::Sync, Some(b"S...."), false, true, false);
        assert!(r.ready());
        assert_eq!(&r.take()[..], b"B...D.E...S....");
        assert!(!r.ready());
        // Rows the client was not told the shape of again: no replay.
        r.record(FrontendTag::Bind, Some(b"B"), true, true, false);
        r.record(FrontendTag::Execute, Some(b"E"), false, true, false);
        r.record(FrontendTag::Sync, Some(b"S"), false, true, false);
        assert!(!r.ready());
        // A second batch sent before the first's reply: nothing is kept.
        r.record(FrontendTag::Bind, Some(b"B"), true, true, false);
        r.record(FrontendTag::Sync, Some(b"S"), false, true, false);
        r.record(FrontendTag::Bind, Some(b"B"), false, true, false);
        assert!(!r.ready());
        // Nor a batch begun inside a transaction (after BEGIN), nor a
        // partial frame.
        r.record(FrontendTag::Query, Some(b"Q"), true, true, false);
        r.record(FrontendTag::Bind, Some(b"B"), true, false, false);
        r.record(FrontendTag::Sync, Some(b"S"), false, false, false);
        assert!(!r.ready());
        r.record(FrontendTag::Bind, None, true, true, false);
        r.record(FrontendTag::Sync, Some(b"S"), false, true, false);
        assert!(!r.ready());
        // A Query is kept only to run on another server (a read given up
        // on a replica), never for a stale-statement replay.
        r.record(FrontendTag::Query, Some(b"Q.."), true, true, true);
        assert!(r.retry_ready() && !r.ready());
        assert_eq!(&r.take()[..], b"Q..");
        // A blind batch may run elsewhere (the schema is the same).
        r.record(FrontendTag::Bind, Some(b"B"), true, true, true);
        r.record(FrontendTag::Execute, Some(b"E"), false, true, true);
        r.record(FrontendTag::Sync, Some(b"S"), false, true, true);
        assert!(r.retry_ready() && !r.ready());
        // Not a Query inside a transaction, nor one after other frames.
        r.record(FrontendTag::Query, Some(b"Q"), true, false, true);
        assert!(!r.retry_ready());
        r.record(FrontendTag::Parse, Some(b"P"), true, true, true);
        r.record(FrontendTag::Query, Some(b"Q"), false, true, true);
        assert!(!r.retry_ready());
    }

    #[test]
    fn a_request_on_a_replica_may_move_once_whole_and_not_after_an_inside_answer() {
        let mut r = Replay::default();
        r.record(FrontendTag::Parse, Some(b"P.."), true, true, true);
        assert!(!r.may_move(), "a client that flushed waits for replies");
        r.record(FrontendTag::Sync, Some(b"S"), false, true, true);
        assert!(r.may_move());
        r.record(FrontendTag::Bind, Some(b"B.."), true, true, true);
        r.record(FrontendTag::Parse, Some(b"P.."), false, true, true);
        r.answered_by_sluice(3);
        r.record(FrontendTag::Sync, Some(b"S"), false, true, true);
        assert!(r.retry_ready());
        assert!(!r.may_move(), "its Parse would be answered twice");
        r.record(FrontendTag::Query, Some(b"Q.."), true, true, false);
        assert!(!r.may_move(), "recorded on the primary");
    }
}
