//! What a client's Multiplex does to run a request again: the copy kept
//! of it (`Replay`), the reply held back until its fate is known, and the
//! replica it may leave: after a stale statement (same server), a replica
//! that stopped answering, or a replica's refusal of what only a primary
//! runs (both on the primary).

use bytes::BytesMut;

use super::Multiplex;
use crate::protocol::inspect::Refusal;
use crate::protocol::tags::FrontendTag;

impl Multiplex {
    /// A client frame about to go to the server, kept for a replay
    /// (`Replay::record`).
    pub fn record(
        &mut self,
        tag: FrontendTag,
        frame: Option<&[u8]>,
        at_boundary: bool,
        idle: bool,
    ) {
        let on_replica = self.replica_held().is_some();
        if let Some(st) = self.statements.as_mut() {
            st.replay.record(tag, frame, at_boundary, idle, on_replica);
        }
    }

    /// The server said a statement it held is stale: every statement of the
    /// pool is prepared afresh at its next use. Whether the failed batch can
    /// run again (`replayable`: nothing of its reply reached the client).
    pub fn stale_statement(&mut self, replayable: bool) -> bool {
        let Some(st) = self.statements.as_mut() else {
            return false;
        };
        st.schema_changed();
        replayable && st.replay.ready()
    }

    /// The client frame of `len` bytes just recorded was answered by sluice.
    pub fn answered_by_sluice(&mut self, len: usize) {
        if let Some(st) = self.statements.as_mut() {
            st.replay.answered_by_sluice(len);
        }
    }

    /// The replica held (its index), when routing put the client on one.
    pub fn replica_held(&self) -> Option<usize> {
        match self.routing.as_deref()?.on {
            crate::route::Target::Replica(i) => Some(i),
            crate::route::Target::Primary => None,
        }
    }

    /// Whether the replica held stopped answering (`Topology::silent`).
    pub fn replica_silent(&self) -> bool {
        let Some(r) = self.routing.as_deref() else {
            return false;
        };
        match r.on {
            crate::route::Target::Replica(i) => r.topo.silent(i),
            crate::route::Target::Primary => false,
        }
    }

    /// The replica held stopped answering and is given up: it is banned,
    /// what it owed forgotten, and the request in flight, when it is kept
    /// whole, comes back to run on the primary.
    pub fn abandon_replica(&mut self) -> Option<BytesMut> {
        let r = self.routing.as_deref_mut()?;
        let crate::route::Target::Replica(i) = r.on else {
            return None;
        };
        r.topo.ban(i);
        let retry = self.statements.as_mut()?.abandon()?;
        r.reroute();
        r.topo.replicas[i]
            .read_retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(retry)
    }

    /// A `Verify` ended: what to send the server, if anything.
    pub fn verdict(&mut self, v: crate::session::expect::Verdict) -> Option<BytesMut> {
        self.statements.as_mut()?.verdict(v)
    }

    /// Whether the batch in flight could run again (`Replay::ready`).
    pub fn replay_ready(&self) -> bool {
        self.statements.as_ref().is_some_and(|st| st.replay.ready())
    }

    /// Whether a reply frame of type `tag`, coming before anything of the
    /// reply went out, is held back until the request's fate is known: a
    /// ParameterDescription a stale statement may fail right after, or, on
    /// a replica, whatever precedes the first row, completion or error.
    pub fn holds_back(&self, tag: u8) -> bool {
        let Some(st) = self.statements.as_deref() else {
            return false;
        };
        (tag == b't' && st.replay.ready())
            || (matches!(tag, b'1' | b'2' | b'3' | b't' | b'T' | b'n' | b'N')
                && st.replay.may_move())
    }

    /// Keeps a reply frame back until the request's fate is known.
    pub fn hold_reply(&mut self, frame: bytes::Bytes) {
        if let Some(st) = self.statements.as_mut() {
            st.replay.held.push(frame);
        }
    }

    /// The frames held back, in order (empty when none: no allocation).
    pub fn take_held(&mut self) -> Vec<bytes::Bytes> {
        match self.statements.as_mut() {
            Some(st) => std::mem::take(&mut st.replay.held),
            None => Vec::new(),
        }
    }

    /// Whether reply frames are held back.
    #[inline]
    pub fn has_held(&self) -> bool {
        self.statements
            .as_deref()
            .is_some_and(|st| !st.replay.held.is_empty())
    }

    /// The replica held refused the request in flight as only a primary
    /// would run it (`reason`). True when it can run on the primary: it
    /// began outside a transaction and is kept whole (the caller knows
    /// nothing of its reply went out). The replica's remaining replies are
    /// then dropped, and `take_moved` gives the request back.
    pub fn refused_by_replica(&mut self, reason: Refusal) -> bool {
        let movable = self.replica_held().is_some()
            && !self.pins.is_pinned()
            && self
                .statements
                .as_deref()
                .is_some_and(|st| st.replay.may_move() && st.replay.retry_ready());
        if movable && let Some(st) = self.statements.as_mut() {
            st.replay.held.clear();
            st.moving = Some(reason);
        }
        movable
    }

    /// Whether the request in flight was refused by the replica and moves
    /// to the primary (`refused_by_replica`).
    pub fn moving(&self) -> bool {
        self.statements
            .as_deref()
            .is_some_and(|st| st.moving.is_some())
    }

    /// The replica answered the refused request to its end: the request, to
    /// run on the primary. Its statements are marked primary-only (unless
    /// the refusal was transient), and the next checkout is the primary's.
    pub fn take_moved(&mut self) -> Option<BytesMut> {
        let st = self.statements.as_mut()?;
        let reason = st.moving.take()?;
        let request = st.replay.take();
        // What the request defines is defined again on the primary.
        st.forget_defined_by(&request);
        let r = self.routing.as_deref_mut()?;
        let statements = self.statements.as_deref().map(|s| &s.client);
        r.refused(&request, statements, reason, true);
        Some(request)
    }

    /// The replica held refused the request in flight, which cannot move
    /// (some of its reply went out, or a statement before the refused one
    /// ran): the client gets the error, and the statements are learnt so
    /// that their next run goes to the primary. Nothing is learnt of a
    /// request inside a transaction (not kept).
    pub fn refused_in_place(&mut self, why: Refusal) {
        if self.replica_held().is_none() {
            return;
        }
        let (Some(st), Some(r)) = (self.statements.as_deref(), self.routing.as_deref_mut()) else {
            return;
        };
        if st.replay.retry_ready() {
            r.refused(st.replay.kept(), Some(&st.client), why, false);
        }
    }

    /// A Sync to end the client's batch on the server held, its reply
    /// swallowed; None without statement tracking.
    pub fn own_sync(&mut self) -> Option<BytesMut> {
        Some(self.statements.as_mut()?.own_sync())
    }

    /// The failed batch, to run again.
    pub fn take_replay(&mut self) -> bytes::BytesMut {
        self.statements
            .as_mut()
            .map(|st| st.replay.take())
            .unwrap_or_default()
    }
}
