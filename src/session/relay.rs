//! The relay: one task moves frames both ways between a client and a server
//! without decoding them. Only headers are read, plus the bodies of the few
//! messages sluice tracks. Large messages stream through in pieces, so
//! memory stays bounded by the queues, not by message size.
//!
//! Backpressure: a side is read only while the queue towards the other side
//! is below `HIGH_WATER`, so a client that pipelines faster than its server
//! answers is slowed down instead of buffered without bound.
//!
//! `Pipe` lives as long as the client; a server is lent to `Pipe::relay`
//! for as long as the pool mode lets the client keep it.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use super::multiplex::{Action, Multiplex};
use super::outq::OutQueue;
use super::routing::Step;
use crate::clients::ClientEntry;
use crate::error::{Error, ServerError};
use crate::net::{Conn, PgStream};
use crate::protocol::build::{self, Severity};
use crate::protocol::frame::{FrameError, HEADER_LEN, peek_header};
use crate::protocol::inspect::{self, ErrorFields};
use crate::protocol::sqlstate;
use crate::protocol::tags::{BackendTag, FrontendTag, TxnStatus};
use crate::server::ServerConn;
use crate::signal::Signal;

/// Bytes queued towards one peer before sluice stops reading the other.
const HIGH_WATER: usize = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// Why `relay` returned.
#[derive(Debug)]
pub enum RelayEnd {
    /// Transaction/statement mode: the server is idle and may go back.
    Release,
    /// The client sent Terminate.
    Terminated,
    /// The client's socket closed or failed.
    ClientGone,
    /// The client sent something malformed or oversized.
    ClientProtocol(FrameError),
    /// The server closed or failed; `told` says whether it sent a FATAL first.
    ServerGone { error: ServerError, told: bool },
    /// A timer fired: the SQLSTATE and message for the client.
    Timeout {
        code: &'static str,
        message: &'static str,
    },
    /// Statement mode: the client opened a transaction block.
    TxnBlockInStatementMode,
    /// sluice is shutting down and the client is between transactions.
    Shutdown,
    /// Routing: a write arrived in the middle of an extended-protocol
    /// batch that a replica has begun.
    CannotReroute,
    /// The client's next request (not yet forwarded) needs this
    /// server-side database free of other sessions (DROP DATABASE ...):
    /// the caller closes sluice's idle servers to it and relays on.
    ClearDatabase(String),
}

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

/// What the client did while it held no server.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    /// At least one message header is buffered: time to get a server.
    Request,
    Terminated,
    Gone,
    IdleTimeout,
    Malformed(FrameError),
    /// sluice is shutting down.
    Shutdown,
}

/// Timers that apply while a server is held.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timers {
    pub query_timeout: Option<Duration>,
    pub idle_transaction_timeout: Option<Duration>,
    /// Session mode: the client sent nothing this long while its server was idle.
    pub client_idle_timeout: Option<Duration>,
}

impl Timers {
    pub fn from_config(g: &crate::config::General) -> Self {
        let nz = |d: Duration| (!d.is_zero()).then_some(d);
        Self {
            query_timeout: nz(g.query_timeout),
            idle_transaction_timeout: nz(g.idle_transaction_timeout),
            client_idle_timeout: nz(g.client_idle_timeout),
        }
    }
}

/// A timer that ended a relay: when, SQLSTATE, message.
type Deadline = (Instant, &'static str, &'static str);

enum Event {
    ClientData,
    ServerData,
    ClientClosed,
    ServerClosed(Option<std::io::Error>),
    /// A graceful shutdown started.
    Draining,
}

pub struct Pipe {
    pub client: Conn,
    /// u32 here and in the skips (frames are at most 2^31 bytes): the pipe
    /// is in every idle client's task.
    max_packet: u32,
    to_client: OutQueue,
    to_server: OutQueue,
    /// Bytes of the current client frame still to forward.
    client_skip: u32,
    server_skip: u32,
    server_said_fatal: bool,
    /// This task's waker is registered to read the socket and nothing has
    /// come since (see `poll_read_armed`); reset when a relay begins.
    client_armed: bool,
    server_armed: bool,
    /// Whether sockets may be armed (`arming_is_safe`): fixed for the
    /// client's task, which never leaves the runtime it was opened on.
    may_arm: bool,
    /// After a refused Parse: the client's batch is dropped up to its Sync.
    skip_batch: bool,
    /// Routing: the next client message waits for another server.
    hold: bool,
    /// The request at the head of the client's buffer was seen by the
    /// DROP DATABASE check (`RelayEnd::ClearDatabase`).
    database_checked: bool,
    /// When the request and the transaction in flight began (pool stats).
    query_start: Option<Instant>,
    xact_start: Option<Instant>,
    /// Bytes forwarded since the last flush into the pool's stats.
    received: u64,
    sent: u64,
    /// The client's registry entry; the relay acts on its graceful-shutdown
    /// signal.
    pub client_entry: Option<Arc<ClientEntry>>,
}

fn poll_read<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        renew(buf);
    }
    poll_read_buf(Pin::new(s), cx, buf)
}

/// Gives a read buffer that is nearly full room again. The unread bytes
/// (a partial frame, usually short) move to a spare or a new buffer, and the
/// old one becomes a spare if nothing shares it any more. (`reserve` would
/// grow a buffer that nothing shares by reallocating it, copying every byte
/// it ever held: a 1,000-row reply paid ~3,000 instructions of copying.)
fn renew(buf: &mut BytesMut) {
    // A long message being gathered whole (a big Query, say) grows in place
    // by doubling: moving it on every read would copy it over and over.
    if buf.len() >= READ_CHUNK / 2 {
        buf.reserve(buf.len().max(READ_CHUNK));
        return;
    }
    // Spares hold READ_CHUNK, more than twice this partial frame; a new
    // buffer gets a whole chunk of room after it, so reads stay full size.
    let mut fresh = super::spare::take(READ_CHUNK)
        .unwrap_or_else(|| BytesMut::with_capacity(buf.len() + READ_CHUNK));
    fresh.extend_from_slice(buf);
    let mut old = std::mem::replace(buf, fresh);
    // Only a buffer that could hold a whole chunk again is worth offering.
    if old.capacity() + old.len() >= READ_CHUNK {
        old.clear();
        super::spare::give(old, READ_CHUNK);
    }
}

/// `poll_read` for the relay, which polls both sockets on every wake-up
/// though only one of them woke it. `armed` says the last poll of this
/// socket registered this task's waker; tokio keeps it until readiness
/// arrives, and readiness stays set until a read clears it. So while
/// nothing is readable, the waker is still there and registering it again
/// (a lock and a waker comparison, ~200 instructions) can be skipped.
/// Only when `may_arm` (see `arming_is_safe`) does a poll arm the socket.
fn poll_read_armed(
    s: &mut PgStream,
    buf: &mut BytesMut,
    armed: &mut bool,
    may_arm: bool,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if *armed && s.nothing_to_read() {
        return Poll::Pending;
    }
    let r = poll_read(s, buf, cx);
    // Out of coop budget, tokio returns Pending without registering.
    *armed = may_arm && r.is_pending() && tokio::task::coop::has_budget_remaining();
    r
}

/// Whether an armed socket's registration is sure to stand: only on the
/// current-thread runtime, where the I/O driver runs between task polls.
/// The driver sets a socket's readiness, then takes its waker. On a
/// multi-thread runtime another worker can do so while this task runs: the
/// task reads the new bytes and registers again in between, and the late
/// wake then takes that fresh registration. An armed socket would be only
/// peeked at from then on, and its next bytes would wake nobody (clients
/// hung mid-transaction with `worker_threads = 0`).
fn arming_is_safe() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// `poll_read` for a client between requests. An idle client holds no read
/// buffer (it would be most of its memory): a buffer that read nothing goes
/// back to this thread's spares, and the next read takes one from there.
/// TLS keeps its buffers, since rustls holds its own anyway.
fn poll_read_idle(
    s: &mut PgStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    let r = poll_read(s, buf, cx);
    if r.is_pending() && buf.is_empty() && matches!(s, PgStream::Plain(_)) {
        super::spare::give(std::mem::take(buf), READ_CHUNK);
    }
    r
}

/// Writes `bytes` to a stream with a time bound; used for last words.
pub async fn write_with_timeout<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> Result<(), Error> {
    use tokio::io::AsyncWriteExt;
    match tokio::time::timeout(Duration::from_secs(5), w.write_all(bytes)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

impl Pipe {
    pub fn new(client: Conn, max_packet: usize) -> Self {
        Self {
            client,
            max_packet: u32::try_from(max_packet).unwrap_or(u32::MAX),
            to_client: OutQueue::default(),
            to_server: OutQueue::default(),
            client_skip: 0,
            server_skip: 0,
            server_said_fatal: false,
            client_armed: false,
            server_armed: false,
            may_arm: arming_is_safe(),
            skip_batch: false,
            hold: false,
            database_checked: false,
            query_start: None,
            xact_start: None,
            received: 0,
            sent: 0,
            client_entry: None,
        }
    }

    /// The frame size cap (stored as u32 to keep the pipe small).
    #[inline]
    fn max_packet(&self) -> usize {
        self.max_packet as usize
    }

    /// The client's buffered bytes, for answering without a server.
    pub fn client_buffer(&mut self) -> &mut BytesMut {
        &mut self.client.rbuf
    }

    /// Queues bytes sluice made itself (greeting, notices, errors) for the client.
    pub fn send_client(&mut self, b: bytes::Bytes) {
        self.to_client.push(b);
    }

    /// Sends what the client is still owed, within a time bound.
    pub async fn flush_client(&mut self) {
        let (client, q) = (&mut self.client.stream, &mut self.to_client);
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| q.poll_flush(client, cx)),
        )
        .await;
    }

    /// Without a server: flushes replies and waits for the client's next request.
    /// Kept small, as it is most of an idle client's state: a poll function
    /// over the pipe (not an async fn, whose state would keep its arguments
    /// and locals besides), and a timer on the heap only when
    /// client_idle_timeout is set. With `read_more`, a whole first message is
    /// not enough: the pool loop wants the rest of its batch, so at least one
    /// more read comes first.
    pub fn wait_client(
        &mut self,
        idle_timeout: Option<Duration>,
        mut read_more: bool,
    ) -> impl Future<Output = Waited> + '_ {
        let mut idle = idle_timeout.map(|d| Box::pin(tokio::time::sleep(d)));
        poll_fn(move |cx| self.poll_wait_client(&mut idle, &mut read_more, cx))
    }

    fn poll_wait_client(
        &mut self,
        idle: &mut Option<Pin<Box<tokio::time::Sleep>>>,
        read_more: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Waited> {
        loop {
            if self.draining() {
                return Poll::Ready(Waited::Shutdown);
            }
            match peek_header(&self.client.rbuf, self.max_packet()) {
                Err(e) => return Poll::Ready(Waited::Malformed(e)),
                Ok(Some(h)) if FrontendTag::from_byte(h.tag) == FrontendTag::Terminate => {
                    return Poll::Ready(Waited::Terminated);
                }
                // Whole first message: the pool loop may answer it without a server.
                Ok(Some(h)) if self.client.rbuf.len() >= h.total && !*read_more => {
                    return Poll::Ready(Waited::Request);
                }
                Ok(Some(_)) => {}
                Ok(None) => {}
            }
            // Nothing goes to a server while the client holds none.
            self.to_server.release_if_empty();
            if self.poll_draining(cx) {
                return Poll::Ready(Waited::Shutdown);
            }
            if let Some(t) = idle.as_mut()
                && t.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Waited::IdleTimeout);
            }
            let q = &mut self.to_client;
            match q.poll_send(&mut self.client.stream, cx) {
                Poll::Ready(Err(_)) => return Poll::Ready(Waited::Gone),
                // A client that does not read its replies is not read either.
                Poll::Pending if q.len() >= HIGH_WATER => return Poll::Pending,
                _ => {}
            }
            match poll_read_idle(&mut self.client.stream, &mut self.client.rbuf, cx) {
                Poll::Pending => {
                    self.to_client.release_if_empty();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Waited::Gone),
                Poll::Ready(Ok(_)) => *read_more = false,
            }
        }
    }

    /// Relays between the client and `server` until the client leaves, an
    /// error or timer ends it, or (with `mux`) the server can go back.
    pub async fn relay(
        &mut self,
        server: &mut ServerConn,
        mut mux: Option<&mut Multiplex>,
        timers: Timers,
    ) -> RelayEnd {
        self.server_said_fatal = false;
        self.hold = false;
        // Another task may have read either socket since.
        self.client_armed = false;
        self.server_armed = false;
        // Bytes the client sent while it held no server.
        if let Err(end) = self.take_client(server, mux.as_deref_mut()) {
            return self.finish(end).await;
        }
        let client_timers =
            timers.idle_transaction_timeout.is_some() || timers.client_idle_timeout.is_some();
        // When the client last sent something; read only if a timer needs it.
        let mut last_client = client_timers.then(Instant::now);
        let mut busy_since: Option<Instant> = None;
        loop {
            if let Some(end) = self.release_point(server, mux.as_deref()) {
                return end;
            }
            let draining = self.draining();
            if draining && self.quiet(server) {
                return self.finish(RelayEnd::Shutdown).await;
            }
            // Clock reads only for the timers that are on.
            busy_since = match (server.state.at_boundary(), busy_since) {
                (true, _) => None,
                (false, None) if timers.query_timeout.is_some() => Some(Instant::now()),
                (false, s) => s,
            };
            let deadline = self.deadline(server, timers, last_client, busy_since);
            // Once draining, the check above runs after every event instead.
            let fut = poll_fn(|cx| self.poll_event(server, !draining, cx));
            let waited = match deadline {
                Some((at, code, message)) => tokio::time::timeout_at(at, fut)
                    .await
                    .map_err(|_| RelayEnd::Timeout { code, message }),
                None => Ok(fut.await),
            };
            let ev = match waited {
                Ok(ev) => ev,
                Err(end) => return self.finish(end).await,
            };
            let step = match ev {
                Event::ClientData => {
                    if client_timers {
                        last_client = Some(Instant::now());
                    }
                    self.take_client(server, mux.as_deref_mut())
                }
                Event::ServerData => self.take_server(server, mux.as_deref_mut()),
                Event::ClientClosed => Err(RelayEnd::ClientGone),
                Event::ServerClosed(e) => Err(self.server_gone(server, e)),
                // The check at the top of the loop acts on it.
                Event::Draining => Ok(()),
            };
            if let Err(end) = step {
                return self.finish(end).await;
            }
        }
    }

    fn draining(&self) -> bool {
        self.client_entry
            .as_ref()
            .is_some_and(|c| c.signals.is_raised(Signal::Drain))
    }

    /// `draining`, and otherwise the task is woken when a shutdown starts.
    fn poll_draining(&self, cx: &mut Context<'_>) -> bool {
        self.client_entry
            .as_ref()
            .is_some_and(|c| c.signals.poll_raised(Signal::Drain, cx).is_ready())
    }

    /// In transaction/statement mode: whether the server may go back now.
    fn release_point(&self, server: &ServerConn, mux: Option<&Multiplex>) -> Option<RelayEnd> {
        let mux = mux?;
        if mux.txn_violation {
            return Some(RelayEnd::TxnBlockInStatementMode);
        }
        let free = self.quiet(server) && !mux.pins.is_pinned() && !mux.owes_replies();
        free.then_some(RelayEnd::Release)
    }

    /// Nothing in flight: the server is idle and no client frame is half sent.
    fn quiet(&self, server: &ServerConn) -> bool {
        server.state.is_idle() && self.client_skip == 0 && self.to_server.len() == 0
    }

    fn deadline(
        &self,
        server: &ServerConn,
        t: Timers,
        last_client: Option<Instant>,
        busy_since: Option<Instant>,
    ) -> Option<Deadline> {
        if let (Some(d), Some(since)) = (t.query_timeout, busy_since) {
            return Some((
                since + d,
                "57014",
                "query_timeout: the query ran too long and was abandoned",
            ));
        }
        let idle_txn = server.state.txn() != crate::protocol::tags::TxnStatus::Idle;
        match (server.state.at_boundary(), idle_txn) {
            (true, true) => t
                .idle_transaction_timeout
                .zip(last_client)
                .map(|(d, last)| {
                    (
                        last + d,
                        "25P03",
                        "idle_transaction_timeout: the transaction was idle too long",
                    )
                }),
            (true, false) => t.client_idle_timeout.zip(last_client).map(|(d, last)| {
                (
                    last + d,
                    "57P05",
                    "client_idle_timeout: the connection was idle too long",
                )
            }),
            _ => None,
        }
    }

    fn server_gone(&self, server: &ServerConn, e: Option<std::io::Error>) -> RelayEnd {
        let addr = server.addr.clone();
        let error = match e {
            Some(source) => ServerError::Io { addr, source },
            None => ServerError::Closed { addr },
        };
        RelayEnd::ServerGone {
            error,
            told: self.server_said_fatal,
        }
    }

    /// Flushes what the client is still owed (bounded in time), then ends.
    async fn finish(&mut self, end: RelayEnd) -> RelayEnd {
        if !matches!(end, RelayEnd::ClientGone) {
            self.flush_client().await;
        }
        end
    }

    /// The next thing to act on; with `watch_drain`, the start of a
    /// graceful shutdown too.
    fn poll_event(
        &mut self,
        server: &mut ServerConn,
        watch_drain: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Event> {
        if watch_drain && self.poll_draining(cx) {
            return Poll::Ready(Event::Draining);
        }
        if let Poll::Ready(Err(e)) = self.to_server.poll_send(&mut server.conn.stream, cx) {
            return Poll::Ready(Event::ServerClosed(Some(e)));
        }
        if let Poll::Ready(Err(_)) = self.to_client.poll_send(&mut self.client.stream, cx) {
            return Poll::Ready(Event::ClientClosed);
        }
        // The server first: its reply usually ends the transaction, and then
        // the client's socket (already registered, with nothing new on it)
        // need not be polled again.
        if self.to_client.len() < HIGH_WATER {
            let (s, buf) = (&mut server.conn.stream, &mut server.conn.rbuf);
            match poll_read_armed(s, buf, &mut self.server_armed, self.may_arm, cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Event::ServerClosed(None)),
                Poll::Ready(Err(e)) => return Poll::Ready(Event::ServerClosed(Some(e))),
                Poll::Ready(Ok(_)) => return Poll::Ready(Event::ServerData),
                Poll::Pending => {}
            }
        }
        // Replies sluice answers itself go straight to the client, so a client
        // that stops reading is not read either.
        if !self.hold && self.to_server.len() < HIGH_WATER && self.to_client.len() < HIGH_WATER {
            let (s, buf) = (&mut self.client.stream, &mut self.client.rbuf);
            match poll_read_armed(s, buf, &mut self.client_armed, self.may_arm, cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(Event::ClientClosed);
                }
                Poll::Ready(Ok(_)) => return Poll::Ready(Event::ClientData),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Queues `err` and, for a simple Query, the ReadyForQuery after it.
    fn reject(&mut self, server: &ServerConn, tag: FrontendTag, message: &str) {
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
    fn take_client(
        &mut self,
        server: &mut ServerConn,
        mut mux: Option<&mut Multiplex>,
    ) -> Result<(), RelayEnd> {
        let mut off = 0;
        loop {
            if self.hold {
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
                match self.route_gate(m, tag, off, h.total) {
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
                match m.on_client(
                    tag,
                    body,
                    at_boundary,
                    &mut server.statements,
                    server.state.txn(),
                ) {
                    Action::Forward => {}
                    Action::Replace(bytes) => {
                        self.forward_client(off);
                        let _ = self.client.rbuf.split_to(h.total);
                        self.to_server.push(bytes.freeze());
                        server.state.on_frontend(tag);
                        off = 0;
                        continue;
                    }
                    Action::Drop => {
                        self.forward_client(off);
                        let _ = self.client.rbuf.split_to(h.total);
                        off = 0;
                        continue;
                    }
                    Action::Reject(msg) => {
                        self.forward_client(off);
                        let _ = self.client.rbuf.split_to(h.total);
                        self.reject(server, tag, &msg);
                        off = 0;
                        self.skip_batch = tag == FrontendTag::Parse;
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

    /// Whether the request at `off` needs a database free of sessions
    /// (DROP DATABASE ...) and the caller must clear it first; once
    /// cleared, it goes on.
    fn database_gate(&mut self, tag: FrontendTag, off: usize) -> Option<RelayEnd> {
        if !matches!(tag, FrontendTag::Query | FrontendTag::Parse) {
            return None;
        }
        if std::mem::take(&mut self.database_checked) {
            return None;
        }
        let db = super::database_ddl::target(&self.client.rbuf[off..])?;
        self.forward_client(off);
        self.database_checked = true;
        Some(RelayEnd::ClearDatabase(db))
    }

    /// After a refused Parse: drops the client's frames up to its Sync and
    /// answers that with ReadyForQuery, as a server skips after an error.
    /// Returns false when more bytes are needed.
    fn skip_to_sync(&mut self, server: &ServerConn) -> bool {
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
    fn route_gate(&mut self, m: &mut Multiplex, tag: FrontendTag, off: usize, len: usize) -> Gate {
        let buf = &self.client.rbuf;
        let body = buf.get(off + HEADER_LEN..off + len).unwrap_or(&[]);
        if tag == FrontendTag::Query
            && let Some(sql) =
                inspect::take_cstr(body).and_then(|(q, _)| super::routing::quote_route_setting(q))
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
            Step::Stuck => {
                self.forward_client(off);
                Gate::End(RelayEnd::CannotReroute)
            }
        }
    }

    /// Replaces the client frame at `off` with a Query of `sql`, after
    /// queueing the frames before it for the server.
    fn replace_client_frame(&mut self, off: usize, len: usize, sql: &str) {
        self.forward_client(off);
        let _ = self.client.rbuf.split_to(len);
        let mut b = BytesMut::new();
        build::query(&mut b, sql);
        b.extend_from_slice(&self.client.rbuf);
        self.client.rbuf = b;
    }

    fn forward_client(&mut self, n: usize) {
        self.received += n as u64;
        if n > 0 {
            let chunk = self.client.rbuf.split_to(n).freeze();
            self.to_server.push(chunk);
        }
    }

    /// Scans server bytes, reading the bodies sluice tracks, and queues them
    /// for the client.
    fn take_server(
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
            let tag = BackendTag::from_byte(h.tag);
            // With a Multiplex, replies that complete a request are read whole:
            // one may be dropped, replaced, or followed by injected replies.
            let needs_body = matches!(
                tag,
                BackendTag::ReadyForQuery | BackendTag::ParameterStatus | BackendTag::ErrorResponse
            ) || (mux.is_some()
                && matches!(h.tag, b'C' | b'1' | b'2' | b'3' | b'T' | b'n' | b'I' | b's'));
            if needs_body && buf.len() - off < h.total {
                let want = off + h.total - buf.len();
                server.conn.rbuf.reserve(want);
                break;
            }
            let body = &buf[off + HEADER_LEN..(off + h.total).min(buf.len())];
            match tag {
                BackendTag::ReadyForQuery => {
                    let status = inspect::ready_status(body);
                    server.state.on_backend(tag, status);
                    self.request_done(
                        server.stats.as_ref(),
                        server.state.is_idle(),
                        &mut server.idle_since,
                        status,
                    );
                }
                BackendTag::ParameterStatus => {
                    if let Some((k, v)) = inspect::parameter_status(body) {
                        crate::server::set_param(&mut server.params, k, v);
                    }
                }
                BackendTag::ErrorResponse => {
                    let fields = ErrorFields::parse(body);
                    self.server_said_fatal |=
                        matches!(fields.severity.as_deref(), Some("FATAL") | Some("PANIC"));
                    if let Some(st) = &server.stats {
                        st.error(fields.code.as_deref().unwrap_or("XX000"));
                    }
                }
                _ => server.state.on_backend(tag, None),
            }
            // (Rows and COPY data took the short path above.)
            let Some(m) = mux.as_deref_mut() else {
                self.server_skip = h.total as u32;
                continue;
            };
            let act = m.on_server(tag, h.tag, body, &mut server.extra, &mut server.statements);
            server.state.void_syncs(act.void_syncs);
            if act.drop || act.replace.is_some() {
                self.forward_server(server, off);
                let _ = server.conn.rbuf.split_to(h.total);
                self.to_client.extend(act.replace);
                off = 0;
            } else {
                self.server_skip = h.total as u32;
            }
            if m.injection_due() {
                // The frame that completed a request is whole (needs_body above).
                off += self.server_skip as usize;
                self.server_skip = 0;
                self.forward_server(server, off);
                off = 0;
                self.push_due(m);
            }
        }
        self.forward_server(server, off);
        Ok(())
    }

    /// Queues for the client the replies sluice made up that are due
    /// (callers check `injection_due` first).
    fn push_due(&mut self, m: &mut Multiplex) {
        for b in m.due_injections() {
            self.to_client.push(b);
        }
    }

    /// Starts timing a request (and a transaction) when none is in flight.
    fn request_started(&mut self, tag: FrontendTag) {
        if self.query_start.is_none() && starts_request(tag) {
            let now = Instant::now();
            self.query_start = Some(now);
            self.xact_start.get_or_insert(now);
        }
    }

    /// A ReadyForQuery: one request done, and a transaction when idle; an
    /// idle server's `idle_since` is now, whether or not it keeps stats.
    /// (The server's fields one by one: its read buffer is borrowed.)
    fn request_done(
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
            st.query(now - q);
        }
        if !server_idle {
            self.query_start = Some(now); // a pipelined request is next
        }
        if status == Some(TxnStatus::Idle)
            && let Some(x) = self.xact_start.take()
        {
            st.xact(now - x);
            if self.query_start.is_some() {
                self.xact_start = Some(now);
            }
        }
        st.bytes(
            std::mem::take(&mut self.received),
            std::mem::take(&mut self.sent),
        );
    }

    fn forward_server(&mut self, server: &mut ServerConn, n: usize) {
        self.sent += n as u64;
        if n > 0 {
            let chunk = server.conn.rbuf.split_to(n).freeze();
            self.to_client.push(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn renew_moves_a_short_partial_frame_and_doubles_a_long_one() {
        let mut short = BytesMut::with_capacity(READ_CHUNK);
        short.extend_from_slice(&[7u8; READ_CHUNK - 100]);
        let _sent = short.split_to(READ_CHUNK - 300).freeze();
        renew(&mut short);
        assert_eq!(&short[..], &[7u8; 200][..]);
        assert!(short.capacity() - short.len() >= 1024);

        // A message gathered whole: growing must not copy it per read.
        let mut long = BytesMut::with_capacity(4 * READ_CHUNK);
        long.extend_from_slice(&[9u8; 4 * READ_CHUNK - 10]);
        renew(&mut long);
        assert!(long.capacity() >= 8 * READ_CHUNK - 10, "doubled");
        assert!(long.iter().all(|b| *b == 9));
    }

    async fn socket_pair() -> (tokio::net::TcpStream, PgStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (peer, PgStream::Plain(listener.accept().await.unwrap().0))
    }

    #[tokio::test]
    async fn an_armed_socket_skips_registering_and_still_wakes_the_task() {
        let (mut a_peer, mut a) = socket_pair().await;
        let (mut b_peer, mut b) = socket_pair().await;
        let (mut abuf, mut bbuf) = (BytesMut::new(), BytesMut::new());
        let (mut a_armed, mut b_armed) = (false, false);

        // Both quiet: each poll registers the task and arms its socket.
        poll_fn(|cx| {
            assert!(poll_read_armed(&mut a, &mut abuf, &mut a_armed, true, cx).is_pending());
            assert!(poll_read_armed(&mut b, &mut bbuf, &mut b_armed, true, cx).is_pending());
            Poll::Ready(())
        })
        .await;
        assert!(a_armed && b_armed);

        // B wakes the task; A, armed with nothing to read, is only peeked at.
        b_peer.write_all(b"b").await.unwrap();
        let read_b = poll_fn(|cx| {
            assert!(poll_read_armed(&mut a, &mut abuf, &mut a_armed, true, cx).is_pending());
            poll_read_armed(&mut b, &mut bbuf, &mut b_armed, true, cx)
        });
        let n = tokio::time::timeout(Duration::from_secs(5), read_b)
            .await
            .expect("B's bytes woke the task")
            .unwrap();
        assert_eq!(
            (n, &bbuf[..], a_armed, b_armed),
            (1, &b"b"[..], true, false)
        );

        // A's registration from the first poll still stands: bytes on A
        // wake the task though A was never registered again.
        a_peer.write_all(b"a").await.unwrap();
        let woke = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| poll_read_armed(&mut a, &mut abuf, &mut a_armed, true, cx)),
        )
        .await;
        assert_eq!(woke.expect("A's bytes woke the task").unwrap(), 1);
        assert_eq!((&abuf[..], a_armed), (&b"a"[..], false));
    }

    #[tokio::test]
    async fn sockets_are_armed_on_the_current_thread_runtime() {
        assert!(arming_is_safe());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sockets_are_never_armed_on_a_multi_thread_runtime() {
        let (_peer, mut s) = socket_pair().await;
        let (mut buf, mut armed) = (BytesMut::new(), false);
        let may_arm = arming_is_safe();
        let pending = poll_fn(|cx| {
            Poll::Ready(poll_read_armed(&mut s, &mut buf, &mut armed, may_arm, cx).is_pending())
        })
        .await;
        // Quiet socket, registered, but never armed: every poll registers.
        assert_eq!((may_arm, pending, armed), (false, true, false));
    }

    #[tokio::test]
    async fn an_idle_plaintext_client_holds_no_read_buffer() {
        let (mut peer, mut stream) = socket_pair().await;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);

        // Nothing to read: the wait is pending and the buffer is given back.
        let first = poll_fn(|cx| Poll::Ready(poll_read_idle(&mut stream, &mut buf, cx))).await;
        assert!(first.is_pending());
        assert_eq!(buf.capacity(), 0);

        // Bytes arrive: a buffer is taken and holds them.
        peer.write_all(b"X\0\0\0\x04").await.unwrap();
        let n = poll_fn(|cx| poll_read_idle(&mut stream, &mut buf, cx))
            .await
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(&buf[..], b"X\0\0\0\x04");

        // The peer closes: end of stream, not a wait.
        drop(peer);
        let _ = buf.split();
        let n = poll_fn(|cx| poll_read_idle(&mut stream, &mut buf, cx))
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
}
