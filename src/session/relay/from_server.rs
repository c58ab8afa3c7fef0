//! The server's side of the relay: scanning server frames, reading the few
//! bodies sluice tracks, and the replies transaction pooling drops,
//! replaces, holds back or makes up (a batch run again after a stale
//! statement, a statement checked after a schema change).

use std::sync::Arc;

use bytes::BytesMut;
use tokio::time::Instant;

use super::stamp::Stamp;
use super::{Pipe, RelayEnd};
use crate::error::ServerError;
use crate::protocol::build;
use crate::protocol::frame::{HEADER_LEN, peek_header};
use crate::protocol::inspect::{self, ErrorFields};
use crate::protocol::tags::{BackendTag, FrontendTag, TxnStatus};
use crate::server::ServerConn;
use crate::session::multiplex::Multiplex;

impl Pipe {
    /// Scans server bytes, reading the bodies sluice tracks, and queues them
    /// for the client.
    pub(super) fn take_server(
        &mut self,
        server: &mut ServerConn,
        mut mux: Option<&mut Multiplex>,
    ) -> Result<(), RelayEnd> {
        let mut off = 0;
        loop {
            let buf = &server.conn.rbuf;
            if self.server_skip > 0 {
                let n = (self.server_skip as usize).min(buf.len() - off);
                off += n;
                self.server_skip -= n as u32;
                if self.server_skip > 0 {
                    break;
                }
            }
            let h = match peek_header(&buf[off..], self.max_packet()) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    let error = ServerError::Protocol {
                        addr: server.addr.clone(),
                        detail: e.to_string(),
                    };
                    return Err(RelayEnd::ServerGone { error, told: false });
                }
            };
            // Rows and COPY data, the bulk of most replies, neither complete
            // nor fail a request: they pass without any bookkeeping, however
            // many there are.
            if matches!(h.tag, b'D' | b'd') {
                // The first row decides: the reply held back goes out.
                if !self.reply_started
                    && let Some(m) = mux.as_deref_mut()
                    && m.has_held()
                {
                    self.release_held(server, m, off);
                    self.reply_started = true;
                    off = 0;
                    continue;
                }
                self.reply_started = true;
                if off + h.total > buf.len() {
                    self.server_skip = h.total as u32;
                    continue;
                }
                off += h.total;
                // The whole rows that follow, without the loop's other checks
                // (a bad header is left for the loop to report).
                while let Ok(Some(h)) = peek_header(&buf[off..], self.max_packet())
                    && matches!(h.tag, b'D' | b'd')
                    && off + h.total <= buf.len()
                {
                    off += h.total;
                }
                continue;
            }
            // Listening clients get notifications through the pool's hub: a
            // pooled server's own (its client's LISTEN ran there) would
            // come twice.
            if h.tag == b'A' && mux.as_deref().is_some_and(|m| m.listen.is_some()) {
                if buf.len() - off < h.total {
                    let want = off + h.total - buf.len();
                    server.conn.rbuf.reserve(want);
                    break;
                }
                self.forward_server(server, off);
                let _ = server.conn.rbuf.split_to(h.total);
                off = 0;
                continue;
            }
            let tag = BackendTag::from_byte(h.tag);
            // With a Multiplex, replies that complete a request are read whole:
            // one may be dropped, replaced, or followed by injected replies.
            let needs_body = matches!(
                tag,
                BackendTag::ReadyForQuery | BackendTag::ParameterStatus | BackendTag::ErrorResponse
            ) || (mux.is_some()
                && (self.swallowing
                    || matches!(
                        h.tag,
                        b'C' | b'1' | b'2' | b'3' | b'T' | b't' | b'n' | b'I' | b's' | b'N'
                    )));
            if needs_body && buf.len() - off < h.total {
                let want = off + h.total - buf.len();
                server.conn.rbuf.reserve(want);
                break;
            }
            let body = &buf[off + HEADER_LEN..(off + h.total).min(buf.len())];
            match tag {
                BackendTag::ReadyForQuery => {
                    let status = inspect::ready_status(body);
                    self.server_ready(server, status);
                }
                BackendTag::ParameterStatus => {
                    if let Some((k, v)) = inspect::parameter_status(body) {
                        crate::server::set_param(&mut server.params, k, v);
                    }
                }
                BackendTag::ErrorResponse => {
                    let fields = ErrorFields::parse(body);
                    self.server_error(server, mux.as_deref_mut(), &fields);
                }
                _ => server.state.on_backend(tag, None),
            }
            // (Rows and COPY data took the short path above.)
            let Some(m) = mux.as_deref_mut() else {
                self.reply_started |= tag != BackendTag::ReadyForQuery;
                self.server_skip = h.total as u32;
                continue;
            };
            off = self.take_tracked(server, m, tag, h, off);
        }
        self.forward_server(server, off);
        Ok(())
    }

    /// A ReadyForQuery: the request in flight is answered.
    fn server_ready(&mut self, server: &mut ServerConn, status: Option<TxnStatus>) {
        self.reply_started = false;
        self.retrying &= self.swallowing;
        server.state.on_backend(BackendTag::ReadyForQuery, status);
        self.request_done(
            server.stats.as_ref(),
            server.state.is_idle(),
            &mut server.idle_since,
            status,
        );
    }

    /// An ErrorResponse: a FATAL ends the server; a stale statement (a
    /// schema change) makes the pool's statements prepared again, and the
    /// failed batch runs again when nothing of its reply went out; a
    /// replica's refusal of what only a primary runs sends the request to
    /// the primary, on the same terms.
    fn server_error(
        &mut self,
        server: &mut ServerConn,
        mux: Option<&mut Multiplex>,
        fields: &ErrorFields,
    ) {
        self.server_said_fatal |=
            matches!(fields.severity.as_deref(), Some("FATAL") | Some("PANIC"));
        if let Some(st) = &server.stats {
            st.error(fields.code.as_deref().unwrap_or("XX000"));
        }
        let Some(m) = mux else {
            return;
        };
        if let Some(why) = fields.replica_refusal()
            && !self.swallowing
        {
            if !self.reply_started && m.refused_by_replica(why) {
                self.swallowing = true;
            } else {
                m.refused_in_place(why);
            }
            return;
        }
        if fields.is_stale_statement() {
            // What this server holds is suspect: each statement is
            // prepared here again (Close, Parse) at its next use.
            server.statements.clear();
            if m.stale_statement(!self.reply_started && !self.retrying) {
                tracing::debug!("a statement was stale: running the batch again");
                self.swallowing = true;
            }
        }
    }

    /// A frame transaction pooling tracks (`h` at `off`, whole when it
    /// completes a request): forwarded, dropped, replaced, held back, or
    /// followed by replies sluice made up. Returns the new offset.
    fn take_tracked(
        &mut self,
        server: &mut ServerConn,
        m: &mut Multiplex,
        tag: BackendTag,
        h: crate::protocol::frame::Header,
        mut off: usize,
    ) -> usize {
        let rbuf = &server.conn.rbuf;
        let body = &rbuf[off + HEADER_LEN..(off + h.total).min(rbuf.len())];
        let act = m.on_server(tag, h.tag, body, &mut server.extra, &mut server.statements);
        server.state.void_syncs(act.void_syncs);
        // While nothing of the reply went out, what may yet be taken back
        // is held until the frame that decides (`Multiplex::holds_back`).
        let plain = !act.drop && act.replace.is_none() && act.verdict.is_none();
        if plain && !self.reply_started && !self.swallowing && m.holds_back(h.tag) {
            self.forward_server(server, off);
            m.hold_reply(server.conn.rbuf.split_to(h.total).freeze());
            return 0;
        }
        if !self.swallowing && m.has_held() {
            self.release_held(server, m, off);
            off = 0;
        }
        if let Some(v) = act.verdict {
            self.verdict(server, m, v);
        }
        if self.swallowing {
            // The failed batch's replies (read whole: needs_body).
            self.forward_server(server, off);
            let _ = server.conn.rbuf.split_to(h.total);
            if tag == BackendTag::ReadyForQuery {
                match m.take_moved() {
                    Some(request) => self.move_request(request),
                    None => self.replay(m),
                }
            }
            return 0;
        }
        if act.drop || act.replace.is_some() {
            self.forward_server(server, off);
            let _ = server.conn.rbuf.split_to(h.total);
            self.reply_started |= act.replace.is_some();
            self.to_client.extend(act.replace);
            off = 0;
        } else {
            self.reply_started |= tag != BackendTag::ReadyForQuery;
            self.server_skip = h.total as u32;
        }
        if m.injection_due() {
            // The frame that completed a request is whole (needs_body).
            off += self.server_skip as usize;
            self.server_skip = 0;
            self.forward_server(server, off);
            off = 0;
            self.push_due(m);
        }
        off
    }

    /// Queues for the client the replies sluice made up that are due
    /// (callers check `injection_due` first).
    pub(super) fn push_due(&mut self, m: &mut Multiplex) {
        // (Not a started reply: an injection the batch's server replies do
        // not precede answers a frame a replay does not send again; a
        // request with another is not moved, `Replay::may_move`.)
        for b in m.due_injections() {
            self.to_client.push(b);
        }
    }

    /// The reply held back goes to the client, after the `off` bytes
    /// before it in the server's buffer.
    fn release_held(&mut self, server: &mut ServerConn, m: &mut Multiplex, off: usize) {
        self.forward_server(server, off);
        for b in m.take_held() {
            self.to_client.push(b);
        }
    }

    /// The replica refused the request and answered it to its end: the
    /// request goes back to the head of the client's buffer, and the relay
    /// gives up the (idle) replica server, so that the next checkout, the
    /// primary's, runs it.
    fn move_request(&mut self, mut request: BytesMut) {
        self.swallowing = false;
        request.extend_from_slice(&self.client.rbuf);
        self.client.rbuf = request;
    }

    /// A statement prepared before a schema change was checked: the client
    /// frames held for it go on (`replayed`), or, when its row shape
    /// changed, the client gets PostgreSQL's error for them.
    pub(super) fn verdict(
        &mut self,
        server: &mut ServerConn,
        m: &mut Multiplex,
        v: crate::session::expect::Verdict,
    ) {
        self.hold = false;
        self.replayed = true;
        if let Some(sync) = m.verdict(v) {
            if !sync.is_empty() {
                self.to_server.push(sync.freeze());
                server.state.on_frontend(FrontendTag::Sync);
            }
            let mut out = BytesMut::new();
            build::stale_plan_error(&mut out);
            self.to_client.push(out.freeze());
            self.skip_batch = true;
        }
    }

    /// The failed batch's last reply came: the batch goes back to the head
    /// of the client's buffer, to be sent again under new statement names.
    pub(super) fn replay(&mut self, m: &mut Multiplex) {
        self.swallowing = false;
        let _ = m.take_held();
        let mut batch = m.take_replay();
        batch.extend_from_slice(&self.client.rbuf);
        self.client.rbuf = batch;
        self.replayed = true;
        self.retrying = true;
    }

    /// A ReadyForQuery: one request done, and a transaction when idle; an
    /// idle server's `idle_since` is now, whether or not it keeps stats.
    /// (The server's fields one by one: its read buffer is borrowed.)
    pub(super) fn request_done(
        &mut self,
        stats: Option<&Arc<crate::pool::stats::PoolStats>>,
        server_idle: bool,
        idle_since: &mut std::time::Instant,
        status: Option<TxnStatus>,
    ) {
        let now = Instant::now();
        if status == Some(TxnStatus::Idle) {
            // The time the pool would read when the server goes back.
            *idle_since = now.into_std();
        }
        let Some(st) = stats else {
            return;
        };
        if let Some(q) = self.query_start.take() {
            st.query(now - q.instant());
        }
        if !server_idle {
            self.query_start = Some(Stamp::at(now)); // a pipelined request is next
        }
        if status == Some(TxnStatus::Idle)
            && let Some(x) = self.xact_start.take()
        {
            st.xact(now - x.instant());
            if self.query_start.is_some() {
                self.xact_start = Some(Stamp::at(now));
            }
        }
        st.bytes(
            std::mem::take(&mut self.received),
            std::mem::take(&mut self.sent),
        );
    }

    pub(super) fn forward_server(&mut self, server: &mut ServerConn, n: usize) {
        self.sent += n as u64;
        if n > 0 {
            let chunk = server.conn.rbuf.split_to(n).freeze();
            self.to_client.push(chunk);
        }
    }
}
