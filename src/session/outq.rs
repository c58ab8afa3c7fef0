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

    /// Frees the queue's storage when it is empty (for idle clients).
    pub fn release_if_empty(&mut self) {
        if self.chunks.is_empty() && self.chunks.capacity() != 0 {
            self.chunks = VecDeque::new();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_emptied_queue_gives_its_storage_back() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"hello "));
        q.push(Bytes::from_static(b"world"));
        q.release_if_empty();
        assert_eq!(q.len(), 11, "a queue with bytes keeps them");

        let mut out = Vec::new();
        std::future::poll_fn(|cx| q.poll_flush(&mut out, cx))
            .await
            .unwrap();
        assert_eq!(out, b"hello world");
        q.release_if_empty();
        assert_eq!(q.chunks.capacity(), 0);
        assert_eq!(q.len(), 0);
    }
}
