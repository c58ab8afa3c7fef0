//! Socket reads for the relay: read buffers that stay small, and the
//! armed-socket skip that saves re-registering a waker on every wake-up.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio_util::io::poll_read_buf;

use super::READ_CHUNK;
use crate::net::PgStream;

pub(super) fn poll_read<S: tokio::io::AsyncRead + Unpin>(
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
pub(super) fn renew(buf: &mut BytesMut) {
    // A long message being gathered whole (a big Query, say) grows in place
    // by doubling: moving it on every read would copy it over and over.
    if buf.len() >= READ_CHUNK / 2 {
        buf.reserve(buf.len().max(READ_CHUNK));
        return;
    }
    // Spares hold READ_CHUNK, more than twice this partial frame; a new
    // buffer gets a whole chunk of room after it, so reads stay full size.
    let mut fresh = crate::session::spare::take(READ_CHUNK)
        .unwrap_or_else(|| BytesMut::with_capacity(buf.len() + READ_CHUNK));
    fresh.extend_from_slice(buf);
    let mut old = std::mem::replace(buf, fresh);
    // Only a buffer that could hold a whole chunk again is worth offering.
    if old.capacity() + old.len() >= READ_CHUNK {
        old.clear();
        crate::session::spare::give(old, READ_CHUNK);
    }
}

/// `poll_read` for the relay, which polls both sockets on every wake-up
/// though only one of them woke it. `armed` says the last poll of this
/// socket registered this task's waker; tokio keeps it until readiness
/// arrives, and readiness stays set until a read clears it. So while
/// nothing is readable, the waker is still there and registering it again
/// (a lock and a waker comparison, ~200 instructions) can be skipped.
/// Only when `may_arm` (see `arming_is_safe`) does a poll arm the socket.
pub(super) fn poll_read_armed(
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
pub(super) fn arming_is_safe() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// `poll_read` for a client between requests. An idle client holds no read
/// buffer (it would be most of its memory): a buffer that read nothing goes
/// back to this thread's spares, and the next read takes one from there.
/// TLS keeps its buffers, since rustls holds its own anyway.
pub(super) fn poll_read_idle(
    s: &mut PgStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    let r = poll_read(s, buf, cx);
    if r.is_pending() && buf.is_empty() && matches!(s, PgStream::Plain(_)) {
        crate::session::spare::give(std::mem::take(buf), READ_CHUNK);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;
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
