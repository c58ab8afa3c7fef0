//! Frame splitting: the only code in sluice that reads a message length.
//!
//! Sans-IO. Every length is checked against a cap before any memory is
//! reserved for the body, so a hostile peer cannot make us allocate more than
//! `max_packet_size` per connection.

use bytes::{Bytes, BytesMut};

/// Tag byte plus the 4-byte length word.
pub const HEADER_LEN: usize = 5;
/// PostgreSQL refuses startup packets longer than this (src/include/libpq/pqcomm.h).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Smallest valid untyped packet: length word plus a 4-byte code.
pub const MIN_STARTUP_LEN: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(u32),
    #[error("message length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// A type byte the protocol does not have (or a login-only message)
    /// after login; PostgreSQL ends the session with the same words.
    #[error("invalid frontend message type {0}")]
    UnknownType(u8),
}

/// The 5-byte header of a typed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Whole frame length on the wire: tag + length word + body.
    pub total: usize,
}

/// Reads the header of the typed message at the start of `buf`.
/// `Ok(None)` means fewer than five bytes are buffered.
/// The whole, well-formed frames at the start of `buf` (type, body), in
/// order; stops at the first incomplete or malformed one. For requests
/// sluice kept or buffered whole.
pub fn whole_frames(buf: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let h = peek_header(&buf[off..], usize::MAX).ok()??;
        let body = buf.get(off + HEADER_LEN..off + h.total)?;
        off += h.total;
        Some((h.tag, body))
    })
}

pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len > i32::MAX as u32 {
        return Err(FrameError::BadLength(len));
    }
    let len = len as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(Some(Header {
        tag: buf[0],
        total: len + 1,
    }))
}

/// A complete typed message: tag and the whole frame (header included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub bytes: Bytes,
}

impl Frame {
    /// The message body after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }
}

/// Splits one complete typed message off the front of `buf` without copying.
/// `Ok(None)` means more bytes are needed; capacity is reserved for at most
/// the (already validated) frame.
pub fn split(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    let Some(h) = peek_header(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < h.total {
        buf.reserve(h.total - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame {
        tag: h.tag,
        bytes: buf.split_to(h.total).freeze(),
    }))
}

/// Length of the untyped packet (StartupMessage, SSLRequest, CancelRequest)
/// at the start of `buf`, validated against PostgreSQL's own limits.
pub fn peek_startup_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if (len as usize) < MIN_STARTUP_LEN {
        return Err(FrameError::BadLength(len));
    }
    if len as usize > MAX_STARTUP_LEN {
        return Err(FrameError::TooLarge {
            len: len as usize,
            max: MAX_STARTUP_LEN,
        });
    }
    Ok(Some(len as usize))
}

#[cfg(test)]
mod tests;
