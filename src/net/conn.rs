//! A stream with its read buffer: whole-frame reads for the startup and
//! authentication phases (small, capped messages), and plain writes.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::PgStream;
use crate::error::Error;
use crate::protocol::frame::{self, Frame};

/// A whole Terminate message.
pub const TERMINATE: &[u8] = b"X\0\0\0\x04";

/// Initial read buffer; it grows only with traffic.
const READ_CHUNK: usize = 8 * 1024;

#[derive(Debug)]
pub struct Conn {
    pub stream: PgStream,
    pub rbuf: BytesMut,
}

impl Conn {
    pub fn new(stream: PgStream) -> Self {
        Self {
            stream,
            rbuf: BytesMut::new(),
        }
    }

    /// Reads more bytes into the buffer; `Error::Eof` when the peer closed.
    async fn fill(&mut self) -> Result<(), Error> {
        if self.rbuf.capacity() - self.rbuf.len() < 512 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.rbuf).await? {
            0 => Err(Error::Eof),
            _ => Ok(()),
        }
    }

    /// Reads one typed message no longer than `max` bytes.
    pub async fn read_frame(&mut self, max: usize) -> Result<Frame, Error> {
        loop {
            if let Some(f) = frame::split(&mut self.rbuf, max)? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Reads one untyped startup-phase packet (length word included). A
    /// Terminate instead (a client that quits before its login finished,
    /// as node-postgres's `connect(); end()` does) is the end of the
    /// connection, not a startup packet 1.4 GB long.
    pub async fn read_startup_packet(&mut self) -> Result<bytes::Bytes, Error> {
        loop {
            if self.rbuf.starts_with(TERMINATE) {
                return Err(Error::Eof);
            }
            if let Some(len) = frame::peek_startup_len(&self.rbuf)? {
                if self.rbuf.len() >= len {
                    return Ok(self.rbuf.split_to(len).freeze());
                }
                self.rbuf.reserve(len - self.rbuf.len());
            }
            self.fill().await?;
        }
    }

    /// Ends a connection whose last message was sent without resetting it:
    /// shuts down the write side (the peer reads end-of-file after that
    /// message), then reads and drops whatever the peer is still sending,
    /// for a bounded time and amount. Closing a socket that holds unread
    /// input makes the kernel send a reset, which can reach a client still
    /// writing (an oversized message, a pipelined batch) before it has read
    /// the ErrorResponse that says why.
    ///
    /// `owed` is the length of a message the client is still sending. It is
    /// read first, before the end-of-file: libpq writes all of a 300 MB
    /// query before it looks at replies, and an end-of-file seen while it
    /// writes is reported as "server closed the connection unexpectedly"
    /// with the error unread.
    pub async fn linger_close(&mut self, owed: usize) {
        use std::time::Duration;
        /// PostgreSQL's own cap on a message is 1 GB.
        const MAX_OWED: usize = 1 << 30;
        let rest = (owed + 1).saturating_sub(self.rbuf.len()).min(MAX_OWED);
        if owed > 0 {
            // As long as the bytes keep coming, up to half a minute.
            self.drain(rest, Duration::from_millis(500), Duration::from_secs(30))
                .await;
        }
        let _ = self.stream.shutdown().await;
        let (gap, total) = (Duration::from_millis(500), Duration::from_millis(500));
        self.drain(16 << 20, gap, total).await;
    }

    /// Reads and drops up to `max` bytes, stopping at end-of-file, at a
    /// pause longer than `gap`, or after `total`.
    async fn drain(&mut self, max: usize, gap: std::time::Duration, total: std::time::Duration) {
        const DRAIN_CHUNK: usize = 64 * 1024;
        let drain = async {
            let mut drained = 0;
            self.rbuf = BytesMut::with_capacity(DRAIN_CHUNK);
            while drained < max {
                self.rbuf.clear();
                match tokio::time::timeout(gap, self.stream.read_buf(&mut self.rbuf)).await {
                    Ok(Ok(0) | Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => drained += n,
                }
            }
        };
        let _ = tokio::time::timeout(total, drain).await;
    }

    /// Ends a TLS connection with a close_notify alert, as PostgreSQL does
    /// (libpq 17 reports a TLS error on a connection closed without one,
    /// its cancel requests included); a plaintext one needs nothing.
    pub async fn close(&mut self) {
        if self.stream.is_tls() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.stream.shutdown())
                .await;
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).await?;
        // A TLS stream may hold the records back until flushed.
        self.stream.flush().await?;
        Ok(())
    }

    /// True when the client opened with a TLS ClientHello (direct TLS) rather
    /// than a startup packet. Peeks: nothing is consumed.
    pub async fn starts_with_tls(&self) -> bool {
        let PgStream::Plain(tcp) = &self.stream else {
            return false;
        };
        let mut b = [0u8; 1];
        matches!(tcp.peek(&mut b).await, Ok(1)) && b[0] == crate::net::tls::TLS_HANDSHAKE_BYTE
    }

    /// The common name of the client's verified TLS certificate, if it sent one.
    pub fn client_cert_cn(&self) -> Option<String> {
        match &self.stream {
            PgStream::ClientTls(t) => {
                crate::net::tls::common_name(t.get_ref().1.peer_certificates()?.first()?)
            }
            _ => None,
        }
    }

    /// The ALPN protocol the TLS client chose, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match &self.stream {
            PgStream::ClientTls(t) => t.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }

    /// Upgrades a plaintext client connection to TLS after answering 'S'.
    /// The read buffer must be empty: bytes a client sent in plaintext after
    /// SSLRequest are never treated as if they came over TLS.
    pub async fn accept_tls(self, acceptor: &tokio_rustls::TlsAcceptor) -> Result<Conn, Error> {
        let PgStream::Plain(tcp) = self.stream else {
            return Err(Error::refuse(
                crate::protocol::sqlstate::PROTOCOL_VIOLATION,
                "TLS requested twice",
            ));
        };
        let tls = acceptor.accept(tcp).await?;
        Ok(Conn::new(PgStream::ClientTls(Box::new(tls))))
    }
}
