//! Read buffers that idle clients gave back, kept per runtime thread for
//! the next client that wakes. An idle client holds no read buffer (most of
//! its memory otherwise), but allocating one per transaction and freeing it
//! again cost two trips through malloc each time; a few spares per thread
//! cost a bounded amount of memory instead.

use std::cell::RefCell;

use bytes::BytesMut;

/// Spares kept per thread: enough for the clients one thread wakes in a
/// burst, at most `SPARES * MAX_SPARE` bytes.
const SPARES: usize = 32;
/// A buffer that grew past this (a client sent one large message) is freed
/// rather than kept.
const MAX_SPARE: usize = 64 * 1024;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A spare buffer with room for `size` bytes, if this thread has one.
pub fn take(size: usize) -> Option<BytesMut> {
    POOL.with(|p| p.borrow_mut().pop())
        .filter(|b| b.capacity() >= size)
}

/// Keeps `buf` as a spare when it is empty and can hold `size` bytes
/// without allocating (no queued chunk still shares its memory); else it
/// is freed.
pub fn give(mut buf: BytesMut, size: usize) {
    if !buf.is_empty() || !buf.try_reclaim(size) || buf.capacity() > MAX_SPARE {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < SPARES {
            p.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_only_when_nothing_shares_it() {
        let mut buf = BytesMut::with_capacity(4096);
        buf.extend_from_slice(b"frame");
        let chunk = buf.split_to(5).freeze();
        give(buf, 4096);
        assert!(take(4096).is_none(), "a queued chunk still shares it");
        drop(chunk);

        let mut buf = BytesMut::with_capacity(4096);
        buf.extend_from_slice(b"frame");
        let chunk = buf.split_to(5).freeze();
        drop(chunk);
        give(buf, 4096);
        let again = take(4096).expect("kept as a spare");
        assert!(again.is_empty() && again.capacity() >= 4096);
        assert!(take(4096).is_none());

        give(BytesMut::with_capacity(4 * MAX_SPARE), 4096);
        assert!(take(4096).is_none(), "a grown buffer is freed, not kept");
    }
}
