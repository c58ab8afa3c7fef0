//! One stream type for clients and servers, so pooled server connections and
//! client connections share the relay code. TLS variants join here later.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug)]
pub enum PgStream {
    Plain(TcpStream),
    /// TLS with a client (sluice is the TLS server).
    ClientTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS with a PostgreSQL server (sluice is the TLS client).
    ServerTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Calls `$f` on whichever stream `$s` holds.
macro_rules! each {
    ($s:expr, $v:ident => $f:expr) => {
        match $s {
            PgStream::Plain($v) => $f,
            PgStream::ClientTls($v) => $f,
            PgStream::ServerTls($v) => $f,
        }
    };
}

impl PgStream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, PgStream::Plain(_))
    }

    /// Whether tokio has seen nothing to read on a plaintext socket since
    /// its readiness was last cleared: a peek at one atomic, which neither
    /// reads nor registers a waker. Always false for TLS.
    #[inline]
    pub fn nothing_to_read(&self) -> bool {
        match self {
            PgStream::Plain(s) => s.try_io(tokio::io::Interest::READABLE, || Ok(())).is_err(),
            _ => false,
        }
    }
}

impl AsyncRead for PgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }
}
