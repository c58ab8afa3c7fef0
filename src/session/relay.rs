//! The session-mode relay: one task moves frames both ways between a client
//! and its server without decoding them. Only headers are read, plus the
//! bodies of the few server messages sluice tracks (ReadyForQuery,
//! ParameterStatus, ErrorResponse). Large messages stream through in pieces,
//! so memory stays bounded by the queues, not by message size.
//!
//! Backpressure: a side is read only while the queue towards the other side
//! is below `HIGH_WATER`, so a client that pipelines faster than its server
//! answers is slowed down instead of buffered without bound.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::outq::OutQueue;
use crate::error::{Error, ServerError};
use crate::net::Conn;
use crate::protocol::frame::{FrameError, peek_header};
use crate::protocol::inspect::{self, ErrorFields};
use crate::protocol::tags::{BackendTag, FrontendTag};
use crate::server::ServerConn;

/// Bytes queued towards one peer before sluice stops reading the other.
const HIGH_WATER: usize = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// Why the relay stopped.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client sent Terminate.
    Terminated,
    /// The client's socket closed or failed.
    ClientGone,
    /// The client sent something malformed or oversized.
    ClientProtocol(FrameError),
    /// The server closed or failed; `told` says whether it sent a FATAL first.
    ServerGone { error: ServerError, told: bool },
}

/// Progress through the frames of one direction.
#[derive(Debug, Default)]
struct Cursor {
    /// Bytes of the current frame still to forward.
    skip: usize,
}

enum Event {
    ClientData,
    ServerData,
    ClientClosed,
    ServerClosed(Option<std::io::Error>),
    ClientWriteFailed,
}

pub struct Relay<'a> {
    client: &'a mut Conn,
    server: &'a mut ServerConn,
    max_packet: usize,
    to_server: OutQueue,
    to_client: OutQueue,
    client_cur: Cursor,
    server_cur: Cursor,
    server_said_fatal: bool,
}

fn poll_read<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    poll_read_buf(Pin::new(s), cx, buf)
}

impl<'a> Relay<'a> {
    pub fn new(client: &'a mut Conn, server: &'a mut ServerConn, max_packet: usize) -> Self {
        Self {
            client,
            server,
            max_packet,
            to_server: OutQueue::default(),
            to_client: OutQueue::default(),
            client_cur: Cursor::default(),
            server_cur: Cursor::default(),
            server_said_fatal: false,
        }
    }

    /// Queues bytes sluice made itself (greeting, notices) for the client.
    pub fn send_client(&mut self, b: bytes::Bytes) {
        self.to_client.push(b);
    }

    pub async fn run(mut self) -> RelayEnd {
        loop {
            let ev = poll_fn(|cx| self.poll_event(cx)).await;
            let step = match ev {
                Event::ClientData => self.take_client(),
                Event::ServerData => self.take_server(),
                Event::ClientClosed | Event::ClientWriteFailed => Err(RelayEnd::ClientGone),
                Event::ServerClosed(e) => Err(self.server_gone(e)),
            };
            if let Err(end) = step {
                return self.finish(end).await;
            }
        }
    }

    fn server_gone(&self, e: Option<std::io::Error>) -> RelayEnd {
        let addr = self.server.addr.clone();
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
    async fn finish(mut self, end: RelayEnd) -> RelayEnd {
        if matches!(
            end,
            RelayEnd::ServerGone { .. } | RelayEnd::Terminated | RelayEnd::ClientProtocol(_)
        ) {
            let client = &mut self.client.stream;
            let q = &mut self.to_client;
            let flush = poll_fn(|cx| q.poll_flush(client, cx));
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), flush).await;
        }
        end
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Poll::Ready(Err(e)) = self.to_server.poll_flush(&mut self.server.conn.stream, cx) {
            return Poll::Ready(Event::ServerClosed(Some(e)));
        }
        if let Poll::Ready(Err(_)) = self.to_client.poll_flush(&mut self.client.stream, cx) {
            return Poll::Ready(Event::ClientWriteFailed);
        }
        if self.to_server.len() < HIGH_WATER {
            match poll_read(&mut self.client.stream, &mut self.client.rbuf, cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(Event::ClientClosed);
                }
                Poll::Ready(Ok(_)) => return Poll::Ready(Event::ClientData),
                Poll::Pending => {}
            }
        }
        if self.to_client.len() < HIGH_WATER {
            match poll_read(&mut self.server.conn.stream, &mut self.server.conn.rbuf, cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Event::ServerClosed(None)),
                Poll::Ready(Err(e)) => return Poll::Ready(Event::ServerClosed(Some(e))),
                Poll::Ready(Ok(_)) => return Poll::Ready(Event::ServerData),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Scans newly read client bytes, tracks what the server will owe, and
    /// queues every complete or partial frame for the server.
    fn take_client(&mut self) -> Result<(), RelayEnd> {
        let buf = &self.client.rbuf;
        let mut off = 0;
        let mut terminated = false;
        loop {
            if self.client_cur.skip > 0 {
                let n = self.client_cur.skip.min(buf.len() - off);
                off += n;
                self.client_cur.skip -= n;
                if self.client_cur.skip > 0 {
                    break;
                }
            }
            let h = match peek_header(&buf[off..], self.max_packet) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Err(RelayEnd::ClientProtocol(e)),
            };
            let tag = FrontendTag::from_byte(h.tag);
            if tag == FrontendTag::Terminate {
                terminated = true;
                break;
            }
            self.server.state.on_frontend(tag);
            self.client_cur.skip = h.total;
        }
        if off > 0 {
            let chunk = self.client.rbuf.split_to(off).freeze();
            self.to_server.push(chunk);
        }
        if terminated {
            Err(RelayEnd::Terminated)
        } else {
            Ok(())
        }
    }

    /// Scans newly read server bytes, reading the bodies sluice tracks, and
    /// queues them for the client.
    fn take_server(&mut self) -> Result<(), RelayEnd> {
        let mut off = 0;
        loop {
            let buf = &self.server.conn.rbuf;
            if self.server_cur.skip > 0 {
                let n = self.server_cur.skip.min(buf.len() - off);
                off += n;
                self.server_cur.skip -= n;
                if self.server_cur.skip > 0 {
                    break;
                }
            }
            let h = match peek_header(&buf[off..], self.max_packet) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    let addr = self.server.addr.clone();
                    let error = ServerError::Protocol {
                        addr,
                        detail: e.to_string(),
                    };
                    return Err(RelayEnd::ServerGone { error, told: false });
                }
            };
            let tag = BackendTag::from_byte(h.tag);
            let needs_body = matches!(
                tag,
                BackendTag::ReadyForQuery | BackendTag::ParameterStatus | BackendTag::ErrorResponse
            );
            if needs_body && buf.len() - off < h.total {
                let want = off + h.total - buf.len();
                self.server.conn.rbuf.reserve(want);
                break;
            }
            let body = &buf[off + 5..(off + h.total).min(buf.len())];
            match tag {
                BackendTag::ReadyForQuery => self
                    .server
                    .state
                    .on_backend(tag, inspect::ready_status(body)),
                BackendTag::ParameterStatus => {
                    if let Some((k, v)) = inspect::parameter_status(body) {
                        self.server.params.insert(k, v);
                    }
                }
                BackendTag::ErrorResponse => {
                    let sev = ErrorFields::parse(body).severity;
                    self.server_said_fatal |=
                        matches!(sev.as_deref(), Some("FATAL") | Some("PANIC"));
                }
                _ => self.server.state.on_backend(tag, None),
            }
            self.server_cur.skip = h.total;
        }
        if off > 0 {
            let chunk = self.server.conn.rbuf.split_to(off).freeze();
            self.to_client.push(chunk);
        }
        Ok(())
    }
}

/// Writes `bytes` to a stream with a time bound; used for last words.
pub async fn write_with_timeout<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> Result<(), Error> {
    use tokio::io::AsyncWriteExt;
    match tokio::time::timeout(std::time::Duration::from_secs(5), w.write_all(bytes)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::Io(std::io::ErrorKind::TimedOut.into())),
    }
}
