//! What a server connection owes: a pure tracker fed with the tags of the
//! frames that pass in each direction. It decides whether the connection is
//! at a clean boundary (nothing in flight) and whether it is idle (no
//! transaction open), which is what the release rule and reset need.

use crate::protocol::tags::{BackendTag, FrontendTag, TxnStatus};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerState {
    /// Query or Sync messages sent whose ReadyForQuery has not come back.
    pending_ready: u32,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// Inside COPY FROM STDIN (client sends data) or COPY TO STDOUT.
    copy: bool,
    /// Status from the last ReadyForQuery.
    txn: TxnStatus,
}

impl ServerState {
    pub fn on_frontend(&mut self, tag: FrontendTag) {
        match tag {
            FrontendTag::Query => self.pending_ready += 1,
            FrontendTag::Sync => {
                self.pending_ready += 1;
                self.unsynced = false;
            }
            FrontendTag::Parse
            | FrontendTag::Bind
            | FrontendTag::Execute
            | FrontendTag::Describe
            | FrontendTag::Close
            | FrontendTag::Flush
            | FrontendTag::FunctionCall => self.unsynced = true,
            _ => {}
        }
    }

    pub fn on_backend(&mut self, tag: BackendTag, ready: Option<TxnStatus>) {
        match tag {
            BackendTag::ReadyForQuery => {
                self.pending_ready = self.pending_ready.saturating_sub(1);
                self.copy = false;
                if let Some(s) = ready {
                    self.txn = s;
                }
            }
            BackendTag::CopyInResponse
            | BackendTag::CopyOutResponse
            | BackendTag::CopyBothResponse => self.copy = true,
            _ => {}
        }
    }

    /// `n` Syncs sent will get no ReadyForQuery (the server ignored them
    /// during COPY FROM STDIN).
    pub fn void_syncs(&mut self, n: u32) {
        self.pending_ready = self.pending_ready.saturating_sub(n);
    }

    /// Nothing in flight in either direction: every request has been answered.
    pub fn at_boundary(&self) -> bool {
        self.pending_ready == 0 && !self.unsynced && !self.copy
    }

    /// The client began an extended-protocol batch (no Sync yet) or a COPY
    /// that only the client's own messages can end.
    pub fn left_open(&self) -> bool {
        self.unsynced || self.copy
    }

    /// At a boundary and outside any transaction block.
    pub fn is_idle(&self) -> bool {
        self.at_boundary() && self.txn == TxnStatus::Idle
    }

    pub fn txn(&self) -> TxnStatus {
        self.txn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendTag as B;
    use FrontendTag as F;

    #[test]
    fn simple_query_round_trip() {
        let mut s = ServerState::default();
        s.on_frontend(F::Query);
        assert!(!s.at_boundary());
        s.on_backend(B::Other(b'T'), None);
        s.on_backend(B::ReadyForQuery, Some(TxnStatus::InTransaction));
        assert!(s.at_boundary());
        assert!(!s.is_idle());
        s.on_frontend(F::Query);
        s.on_backend(B::ReadyForQuery, Some(TxnStatus::Idle));
        assert!(s.is_idle());
    }

    #[test]
    fn extended_batch_needs_sync_and_ready() {
        let mut s = ServerState::default();
        s.on_frontend(F::Parse);
        s.on_frontend(F::Bind);
        assert!(!s.at_boundary());
        s.on_frontend(F::Sync);
        assert!(!s.at_boundary());
        s.on_backend(B::ReadyForQuery, Some(TxnStatus::Idle));
        assert!(s.is_idle());
    }

    #[test]
    fn pipelined_queries_count_every_ready() {
        let mut s = ServerState::default();
        for _ in 0..3 {
            s.on_frontend(F::Query);
        }
        s.on_backend(B::ReadyForQuery, Some(TxnStatus::Idle));
        s.on_backend(B::ReadyForQuery, Some(TxnStatus::Idle));
        assert!(!s.at_boundary());
        s.on_backend(B::ReadyForQuery, Some(TxnStatus::Idle));
        assert!(s.at_boundary());
    }

    #[test]
    fn copy_in_is_not_a_boundary_until_ready() {
        let mut s = ServerState::default();
        s.on_frontend(F::Query);
        s.on_backend(B::CopyInResponse, None);
        s.on_frontend(F::CopyData);
        assert!(!s.at_boundary());
        s.on_frontend(F::CopyDone);
        s.on_backend(B::ReadyForQuery, Some(TxnStatus::Idle));
        assert!(s.is_idle());
    }

    #[test]
    fn failed_transaction_is_not_idle() {
        let mut s = ServerState::default();
        s.on_frontend(F::Query);
        s.on_backend(B::ErrorResponse, None);
        s.on_backend(B::ReadyForQuery, Some(TxnStatus::Failed));
        assert!(s.at_boundary());
        assert_eq!(s.txn(), TxnStatus::Failed);
        assert!(!s.is_idle());
    }
}
