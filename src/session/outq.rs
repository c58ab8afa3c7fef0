//! A bounded queue of bytes waiting to be written to one peer. Chunks are
//! zero-copy slices of the other side's read buffer.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl OutQueue {
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.chunks.push_back(b);
        }
    }

    pub fn extend(&mut self, b: Option<Bytes>) {
        if let Some(b) = b {
            self.push(b);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes as much as the peer accepts. Ready(Ok) once empty.
    pub fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.chunks.is_empty() {
            let n = if self.chunks.len() > 1 {
                let mut slices = [io::IoSlice::new(&[]); 16];
                let k = self.chunks.len().min(16);
                for (s, c) in slices.iter_mut().zip(&self.chunks) {
                    *s = io::IoSlice::new(c);
                }
                std::task::ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..k]))?
            } else {
                std::task::ready!(Pin::new(&mut *w).poll_write(cx, &self.chunks[0]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        // TLS streams may hold encrypted records back until flushed.
        Pin::new(&mut *w).poll_flush(cx)
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}
