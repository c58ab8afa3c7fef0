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

use super::multiplex::Multiplex;
use super::outq::OutQueue;
use crate::clients::ClientEntry;
use crate::error::{Error, ServerError};
use crate::net::Conn;
use crate::protocol::frame::{FrameError, peek_header};
use crate::protocol::tags::{FrontendTag, TxnStatus};
use crate::server::ServerConn;
use crate::signal::Signal;

mod from_client;
mod from_server;
mod read;
mod stamp;

use read::{arming_is_safe, poll_read_armed, poll_read_idle};

/// Bytes queued towards one peer before sluice stops reading the other.
const HIGH_WATER: usize = 256 * 1024;
/// Read buffers hold this much (see `read::renew`).
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
    /// Routing: the replica held stopped answering with a request in
    /// flight. `retry` holds the request when it can run on the primary
    /// (nothing of its reply went out, outside a transaction, kept whole);
    /// it is back at the head of the client's buffer.
    ReplicaSilent { retry: bool },
    /// The client's notifications stopped (its backlog overflowed, or the
    /// LISTEN connection was lost).
    Listen(crate::listen::Closed),
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
    /// The client's notifications stopped (`RelayEnd::Listen`).
    Listen(crate::listen::Closed),
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

/// How often a request waiting on a replica checks that the replica
/// still answers the monitor.
const REPLICA_CHECK: Duration = Duration::from_millis(250);

/// The next timer of a relay, and what it does.
type Deadline = (Instant, Fire);

#[derive(Debug, Clone, Copy)]
enum Fire {
    /// Ends the relay: SQLSTATE, message.
    End(&'static str, &'static str),
    /// Looks whether the replica held still answers.
    CheckReplica,
}

enum Event {
    ClientData,
    ServerData,
    ClientClosed,
    ServerClosed(Option<std::io::Error>),
    /// A graceful shutdown started.
    Draining,
    /// Notifications came for a client between transactions.
    Mail,
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
    /// The client sent a message type the protocol does not have (the
    /// frame at the head of its buffer): nothing more is read or forwarded,
    /// and the session ends with FATAL once the server has answered what
    /// went before it.
    refused: bool,
    /// The request at the head of the client's buffer was seen by the
    /// DROP DATABASE check (`RelayEnd::ClearDatabase`).
    database_checked: bool,
    /// Some of the reply to the request in flight went to the client.
    reply_started: bool,
    /// A batch failed on a stale statement and runs again: its replies
    /// are dropped up to its ReadyForQuery (`Replay`).
    swallowing: bool,
    /// The failed batch is back in the client's buffer, to be sent again.
    replayed: bool,
    /// The request in flight is such a batch: it is not run a third time.
    retrying: bool,
    /// When the request and the transaction in flight began (pool stats).
    query_start: Option<stamp::Stamp>,
    xact_start: Option<stamp::Stamp>,
    /// Bytes forwarded since the last flush into the pool's stats.
    received: u64,
    sent: u64,
    /// The client's registry entry; the relay acts on its graceful-shutdown
    /// signal.
    pub client_entry: Option<Arc<ClientEntry>>,
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
            refused: false,
            database_checked: false,
            reply_started: false,
            swallowing: false,
            replayed: false,
            retrying: false,
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

    /// Records what the client is sent from now on (a cacheable read's
    /// reply), up to `max` bytes.
    pub fn start_recording(&mut self, max: usize) {
        self.to_client.record = Some(Box::new(super::caching::Recording {
            max,
            ..Default::default()
        }));
    }

    pub fn take_recording(&mut self) -> Option<Box<super::caching::Recording>> {
        self.to_client.record.take()
    }

    /// Queues bytes sluice made itself (greeting, notices, errors) for the client.
    pub fn send_client(&mut self, b: bytes::Bytes) {
        self.to_client.push(b);
    }

    /// Sends what the client is still owed, within a time bound; whether
    /// all of it went.
    pub async fn flush_client(&mut self) -> bool {
        let (client, q) = (&mut self.client.stream, &mut self.to_client);
        let flush = poll_fn(|cx| q.poll_flush(client, cx));
        matches!(
            tokio::time::timeout(Duration::from_secs(5), flush).await,
            Ok(Ok(()))
        )
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
            if let Err(closed) = self.take_mail() {
                return Poll::Ready(Waited::Listen(closed));
            }
            match peek_header(&self.client.rbuf, self.max_packet()) {
                Err(e) => return Poll::Ready(Waited::Malformed(e)),
                Ok(Some(h)) if !FrontendTag::from_byte(h.tag).valid_in_session() => {
                    return Poll::Ready(Waited::Malformed(FrameError::UnknownType(h.tag)));
                }
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
        // Requests on a replica: when to look whether it still answers.
        let on_replica = mux.as_deref().is_some_and(|m| m.replica_held().is_some());
        let mut replica_check: Option<Instant> = None;
        loop {
            if let Some(end) = self.refusal_point(server) {
                return self.finish(end).await;
            }
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
                (false, None) if timers.query_timeout.is_some() || on_replica => {
                    Some(Instant::now())
                }
                (false, s) => s,
            };
            replica_check = match busy_since {
                Some(since) if on_replica && !self.reply_started => {
                    Some(replica_check.unwrap_or(since + REPLICA_CHECK))
                }
                _ => None,
            };
            let mut deadline = self.deadline(server, timers, last_client, busy_since);
            if let Some(at) = replica_check
                && deadline.is_none_or(|(d, _)| at < d)
            {
                deadline = Some((at, Fire::CheckReplica));
            }
            // Once draining, the check above runs after every event instead.
            let fut = poll_fn(|cx| self.poll_event(server, !draining, cx));
            let waited = match deadline {
                Some((at, fire)) => tokio::time::timeout_at(at, fut).await.map_err(|_| fire),
                None => Ok(fut.await),
            };
            let ev = match waited {
                Ok(ev) => ev,
                Err(Fire::End(code, message)) => {
                    return self.finish(RelayEnd::Timeout { code, message }).await;
                }
                Err(Fire::CheckReplica) => {
                    if let Some(m) = mux.as_deref_mut()
                        && m.replica_silent()
                    {
                        return self.give_up_replica(m).await;
                    }
                    replica_check = Some(Instant::now() + REPLICA_CHECK);
                    continue;
                }
            };
            let step = match ev {
                Event::ClientData => {
                    if client_timers {
                        last_client = Some(Instant::now());
                    }
                    self.take_client(server, mux.as_deref_mut())
                }
                Event::ServerData => self.take_server(server, mux.as_deref_mut()).and_then(|()| {
                    if std::mem::take(&mut self.replayed) {
                        self.take_client(server, mux.as_deref_mut())
                    } else {
                        Ok(())
                    }
                }),
                Event::ClientClosed => Err(RelayEnd::ClientGone),
                Event::ServerClosed(e) => Err(self.server_gone(server, e)),
                Event::Mail => self.take_mail().map_err(RelayEnd::Listen),
                // The check at the top of the loop acts on it.
                Event::Draining => Ok(()),
            };
            if let Err(end) = step {
                return self.finish(end).await;
            }
        }
    }

    /// Whether notifications wait for the client (an atomic load).
    #[inline]
    fn mail_waiting(&self) -> bool {
        self.client_entry
            .as_ref()
            .is_some_and(|c| c.signals.is_raised(Signal::Mail))
    }

    /// Queues the notifications waiting for the client; Err when they
    /// stopped and the session must end.
    #[inline]
    fn take_mail(&mut self) -> Result<(), crate::listen::Closed> {
        if !self.mail_waiting() {
            return Ok(());
        }
        self.take_waiting_mail()
    }

    fn take_waiting_mail(&mut self) -> Result<(), crate::listen::Closed> {
        // A client that does not read its socket leaves its notifications
        // in its mailbox, which is bounded (max_notification_backlog).
        let Some(entry) = self.client_entry.as_ref() else {
            return Ok(());
        };
        if self.to_client.len() >= HIGH_WATER {
            return entry.mail.closed().map_or(Ok(()), Err);
        }
        entry.signals.clear(Signal::Mail);
        for frame in entry.mail.take()? {
            self.to_client.push(frame);
        }
        Ok(())
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

    /// After a message of unknown type: the session ends once the server
    /// has answered the requests before it, so that it can be reused (a
    /// client's bytes must not cost a backend). A batch or COPY the client
    /// left open would never end; that server is not reused.
    fn refusal_point(&self, server: &ServerConn) -> Option<RelayEnd> {
        if !self.refused {
            return None;
        }
        let settled = server.state.at_boundary() || server.state.left_open();
        let tag = self.client.rbuf.first().copied().unwrap_or_default();
        settled.then_some(RelayEnd::ClientProtocol(FrameError::UnknownType(tag)))
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
                Fire::End(
                    "57014",
                    "query_timeout: the query ran too long and was abandoned",
                ),
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
                        Fire::End(
                            "25P03",
                            "idle_transaction_timeout: the transaction was idle too long",
                        ),
                    )
                }),
            (true, false) => t.client_idle_timeout.zip(last_client).map(|(d, last)| {
                (
                    last + d,
                    Fire::End(
                        "57P05",
                        "client_idle_timeout: the connection was idle too long",
                    ),
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

    /// The replica held stopped answering with a request in flight. When
    /// nothing of its reply went out and the request is kept whole (which
    /// it is only when it began outside a transaction), it goes back to the
    /// head of the client's buffer for the primary; the caller gives up
    /// the server.
    async fn give_up_replica(&mut self, m: &mut Multiplex) -> RelayEnd {
        let retry = (!self.reply_started && !self.swallowing)
            .then(|| m.abandon_replica())
            .flatten();
        let retry = match retry {
            Some(mut request) => {
                request.extend_from_slice(&self.client.rbuf);
                self.client.rbuf = request;
                (self.client_skip, self.server_skip) = (0, 0);
                self.to_server = OutQueue::default();
                (self.query_start, self.xact_start) = (None, None);
                true
            }
            None => false,
        };
        self.finish(RelayEnd::ReplicaSilent { retry }).await
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
        // Between transactions (a pinned client), as PostgreSQL delivers.
        if self.mail_waiting()
            && self.to_client.len() < HIGH_WATER
            && self.quiet(server)
            && server.state.txn() == TxnStatus::Idle
        {
            return Poll::Ready(Event::Mail);
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
        if !self.hold
            && !self.refused
            && self.to_server.len() < HIGH_WATER
            && self.to_client.len() < HIGH_WATER
        {
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
}
