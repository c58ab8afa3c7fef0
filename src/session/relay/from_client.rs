//! The client's side of the relay: scanning client frames, tracking what
//! the server will owe, and what transaction pooling and routing do with
//! each frame before it goes to the server.

use bytes::BytesMut;
use tokio::time::Instant;

use super::{Pipe, RelayEnd};
use crate::protocol::build::{self, Severity};
use crate::protocol::frame::{HEADER_LEN, peek_header};
use crate::protocol::inspect;
use crate::protocol::sqlstate;
use crate::protocol::tags::{FrontendTag, TxnStatus};
use crate::server::ServerConn;
use crate::session::multiplex::{Action, Multiplex};
use crate::session::routing::Step;

/// Client messages that start a request (and its timing) when none is in flight.
fn starts_request(tag: FrontendTag) -> bool {
    matches!(
        tag,
        FrontendTag::Query
            | FrontendTag::Parse
            | FrontendTag::Bind
            | FrontendTag::Execute
            | FrontendTag::Sync
            | FrontendTag::FunctionCall
    )
}

/// Client messages transaction pooling reads whole (their SQL or names).
fn read_whole(tag: FrontendTag) -> bool {
    matches!(
        tag,
        FrontendTag::Query
            | FrontendTag::Parse
            | FrontendTag::Bind
            | FrontendTag::Describe
            | FrontendTag::Close
            | FrontendTag::FunctionCall
    )
}

/// What routing lets `take_client` do with a frame.
enum Gate {
    Pass,
    /// The frame was rewritten: scan from the start again.
    Rescan,
    Stop,
    End(RelayEnd),
}

impl Pipe {
    /// Queues `err` and, for a simple Query, the ReadyForQuery after it.
    pub(super) fn reject(&mut self, server: &ServerConn, tag: FrontendTag, message: &str) {
        let mut out = BytesMut::new();
        build::error(
            &mut out,
            Severity::Error,
            sqlstate::FEATURE_NOT_SUPPORTED,
            message,
        );
        if tag == FrontendTag::Query {
            build::ready_for_query(&mut out, server.state.txn());
        }
        self.to_client.push(out.freeze());
    }

    /// Scans client bytes, tracks what the server will owe, and queues every
    /// complete or partial frame for the server.
    pub(super) fn take_client(
        &mut self,
        server: &mut ServerConn,
        mut mux: Option<&mut Multiplex>,
    ) -> Result<(), RelayEnd> {
        let mut off = 0;
        loop {
            if self.hold || self.refused {
                break;
            }
            if self.skip_batch && (off > 0 || !self.skip_to_sync(server)) {
                break;
            }
            let buf = &self.client.rbuf;
            if self.client_skip > 0 {
                let n = (self.client_skip as usize).min(buf.len() - off);
                off += n;
                self.client_skip -= n as u32;
                if self.client_skip > 0 {
                    break;
                }
            }
            let h = match peek_header(&buf[off..], self.max_packet()) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Err(RelayEnd::ClientProtocol(e)),
            };
            let tag = FrontendTag::from_byte(h.tag);
            if !tag.valid_in_session() {
                self.refused = true;
                break;
            }
            if tag == FrontendTag::Terminate {
                self.forward_client(off);
                return Err(RelayEnd::Terminated);
            }
            if let Some(end) = self.database_gate(tag, off) {
                return Err(end);
            }
            if let Some(m) = mux.as_deref_mut() {
                let needs_body = read_whole(tag);
                if needs_body && self.client.rbuf.len() - off < h.total {
                    break; // the message is needed whole
                }
                match self.route_gate(server, m, tag, off, h.total) {
                    Gate::Pass => {}
                    Gate::Rescan => {
                        off = 0;
                        continue;
                    }
                    Gate::Stop => break,
                    Gate::End(end) => return Err(end),
                }
                let buf = &self.client.rbuf;
                let body = if needs_body {
                    &buf[off + HEADER_LEN..off + h.total]
                } else {
                    &[][..]
                };
                // Refusals happen only with nothing in flight, so the error
                // keeps its place in the reply stream.
                let at_boundary = server.state.at_boundary();
                let whole = buf.get(off..off + h.total);
                m.record(
                    tag,
                    whole,
                    at_boundary,
                    server.state.txn() == TxnStatus::Idle,
                );
                let later = &buf[(off + h.total).min(buf.len())..];
                let txn = server.state.txn();
                let action =
                    m.on_client(tag, body, later, at_boundary, &mut server.statements, txn);
                m.notify_went(server.key.0);
                match action {
                    Action::Forward => {}
                    Action::Verify(bytes) => {
                        self.take_verify(server, m, tag, off, bytes);
                        off = 0;
                        break;
                    }
                    other => {
                        self.take_answered(server, m, tag, off, h.total, other);
                        off = 0;
                        continue;
                    }
                }
            }
            self.request_started(tag);
            server.state.on_frontend(tag);
            self.client_skip = h.total as u32;
        }
        self.forward_client(off);
        if let Some(m) = mux.filter(|m| m.injection_due()) {
            self.push_due(m);
        }
        Ok(())
    }

    /// A client frame (at `off`) whose statement sluice checks first
    /// (`Action::Verify`): the check goes out, and the frame stays
    /// buffered until the verdict.
    fn take_verify(
        &mut self,
        server: &mut ServerConn,
        m: &mut Multiplex,
        tag: FrontendTag,
        off: usize,
        bytes: BytesMut,
    ) {
        m.record(tag, None, false, false);
        self.forward_client(off);
        // The check ends in a Sync at a batch's start.
        let last = if bytes.last_chunk::<5>() == Some(b"S\0\0\0\x04") {
            FrontendTag::Sync
        } else {
            FrontendTag::Flush
        };
        self.to_server.push(bytes.freeze());
        server.state.on_frontend(FrontendTag::Parse);
        server.state.on_frontend(last);
        self.hold = true;
    }

    /// A client frame (at `off`, `len` bytes) that sluice replaces,
    /// answers or refuses (`Action`), taken out of the buffer.
    pub(super) fn take_answered(
        &mut self,
        server: &mut ServerConn,
        m: &mut Multiplex,
        tag: FrontendTag,
        off: usize,
        len: usize,
        action: Action,
    ) {
        self.forward_client(off);
        let _ = self.client.rbuf.split_to(len);
        match action {
            Action::Replace(bytes) => {
                self.to_server.push(bytes.freeze());
                server.state.on_frontend(tag);
            }
            Action::Drop => m.answered_by_sluice(len),
            Action::Reject(msg) => {
                self.reject(server, tag, &msg);
                self.skip_batch = tag == FrontendTag::Parse;
            }
            Action::Forward | Action::Verify(_) => {}
        }
    }

    /// Whether the request at `off` needs a database free of sessions
    /// (DROP DATABASE ...) and the caller must clear it first; once
    /// cleared, it goes on.
    pub(super) fn database_gate(&mut self, tag: FrontendTag, off: usize) -> Option<RelayEnd> {
        if !matches!(tag, FrontendTag::Query | FrontendTag::Parse) {
            return None;
        }
        if std::mem::take(&mut self.database_checked) {
            return None;
        }
        let db = crate::session::database_ddl::target(&self.client.rbuf[off..])?;
        self.forward_client(off);
        self.database_checked = true;
        Some(RelayEnd::ClearDatabase(db))
    }

    /// After a refused Parse: drops the client's frames up to its Sync and
    /// answers that with ReadyForQuery, as a server skips after an error.
    /// Returns false when more bytes are needed.
    pub(super) fn skip_to_sync(&mut self, server: &ServerConn) -> bool {
        while let Ok(Some(h)) = peek_header(&self.client.rbuf, self.max_packet()) {
            if self.client.rbuf.len() < h.total {
                return false;
            }
            let _ = self.client.rbuf.split_to(h.total);
            if FrontendTag::from_byte(h.tag) == FrontendTag::Sync {
                let mut out = BytesMut::new();
                build::ready_for_query(&mut out, server.state.txn());
                self.to_client.push(out.freeze());
                self.skip_batch = false;
                return true;
            }
        }
        false
    }

    /// Routing's say on the client frame at `off` (`len` bytes, whole when
    /// it has SQL): forward it, wait, or leave it for another server.
    fn route_gate(
        &mut self,
        server: &mut ServerConn,
        m: &mut Multiplex,
        tag: FrontendTag,
        off: usize,
        len: usize,
    ) -> Gate {
        let buf = &self.client.rbuf;
        let body = buf.get(off + HEADER_LEN..off + len).unwrap_or(&[]);
        if tag == FrontendTag::Query
            && let Some(sql) = inspect::take_cstr(body)
                .and_then(|(q, _)| crate::session::routing::quote_route_setting(q))
        {
            self.replace_client_frame(off, len, &sql);
            return Gate::Rescan;
        }
        match m.route_step(tag, body, &buf[off..]) {
            Step::Forward => Gate::Pass,
            Step::Wait => Gate::Stop,
            Step::Leave => {
                // Sent to another server once this one is idle.
                self.hold = true;
                Gate::Stop
            }
            Step::SyncFirst => {
                self.forward_client(off);
                let Some(sync) = m.own_sync() else {
                    return Gate::End(RelayEnd::CannotReroute);
                };
                self.to_server.push(sync.freeze());
                server.state.on_frontend(FrontendTag::Sync);
                self.hold = true;
                Gate::Stop
            }
            Step::Stuck => {
                self.forward_client(off);
                Gate::End(RelayEnd::CannotReroute)
            }
        }
    }

    /// Replaces the client frame at `off` with a Query of `sql`, after
    /// queueing the frames before it for the server.
    pub(super) fn replace_client_frame(&mut self, off: usize, len: usize, sql: &str) {
        self.forward_client(off);
        let _ = self.client.rbuf.split_to(len);
        let mut b = BytesMut::new();
        build::query(&mut b, sql);
        b.extend_from_slice(&self.client.rbuf);
        self.client.rbuf = b;
    }

    pub(super) fn forward_client(&mut self, n: usize) {
        self.received += n as u64;
        if n > 0 {
            let chunk = self.client.rbuf.split_to(n).freeze();
            self.to_server.push(chunk);
        }
    }

    /// Starts timing a request (and a transaction) when none is in flight.
    pub(super) fn request_started(&mut self, tag: FrontendTag) {
        if self.query_start.is_none() && starts_request(tag) {
            let now = super::stamp::Stamp::at(Instant::now());
            self.query_start = Some(now);
            self.xact_start.get_or_insert(now);
        }
    }
}
