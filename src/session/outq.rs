//! A bounded queue of bytes waiting to be written to one peer. Chunks are
//! zero-copy slices of the other side's read buffer.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

/// Most requests and replies are one chunk each way: the first chunk is
/// held inline, so such traffic allocates no queue storage (an idle
/// client's queues hold none either).
#[derive(Debug, Default)]
pub struct OutQueue {
    /// The first chunk; empty only when the whole queue is.
    head: Bytes,
    rest: VecDeque<Bytes>,
    len: usize,
    /// A cacheable read's reply being recorded as it is queued.
    pub record: Option<Box<super::caching::Recording>>,
}

impl OutQueue {
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if let Some(r) = self.record.as_deref_mut() {
            r.push(&b);
        }
        self.len += b.len();
        if self.head.is_empty() {
            self.head = b;
        } else {
            self.rest.push_back(b);
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
        if self.rest.is_empty() && self.rest.capacity() != 0 {
            self.rest = VecDeque::new();
        }
    }

    /// `poll_flush` towards a connection, for the relay, which calls it for
    /// both peers on every wake-up: an empty queue towards a plaintext
    /// socket has nothing to do. (TLS may still hold records back.)
    #[inline]
    pub fn poll_send(
        &mut self,
        w: &mut crate::net::PgStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.len == 0 && !w.is_tls() {
            return Poll::Ready(Ok(()));
        }
        self.poll_flush(w, cx)
    }

    /// Writes as much as the peer accepts. Ready(Ok) once empty.
    pub fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.head.is_empty() {
            let n = if self.rest.is_empty() {
                std::task::ready!(Pin::new(&mut *w).poll_write(cx, &self.head))?
            } else {
                let mut slices = [io::IoSlice::new(&[]); 16];
                slices[0] = io::IoSlice::new(&self.head);
                let k = 1 + self.rest.len().min(15);
                for (s, c) in slices[1..k].iter_mut().zip(&self.rest) {
                    *s = io::IoSlice::new(c);
                }
                std::task::ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..k]))?
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
        while n > 0 && !self.head.is_empty() {
            if self.head.len() <= n {
                n -= self.head.len();
                self.head = self.rest.pop_front().unwrap_or_default();
            } else {
                self.head.advance(n);
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
        assert_eq!(q.rest.capacity(), 0);
        assert_eq!(q.len(), 0);
    }

    /// Writes at most `max` bytes per call, like a congested socket.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = b.len().min(self.max);
            self.out.extend_from_slice(&b[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_keep_the_order_of_chunks() {
        let mut q = OutQueue::default();
        let chunks: Vec<String> = (0..40).map(|i| format!("<{i}>")).collect();
        for c in &chunks {
            q.push(Bytes::from(c.clone()));
        }
        q.push(Bytes::new());
        let mut w = Trickle {
            out: Vec::new(),
            max: 3,
        };
        std::future::poll_fn(|cx| q.poll_flush(&mut w, cx))
            .await
            .unwrap();
        assert_eq!(String::from_utf8(w.out).unwrap(), chunks.concat());
        assert_eq!(q.len(), 0);
        assert!(q.head.is_empty() && q.rest.is_empty());
    }
}
