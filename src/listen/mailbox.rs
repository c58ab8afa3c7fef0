//! A listening client's notifications, waiting for its session to pass
//! them on between transactions. Bounded: a client that does not read its
//! socket is cut off once its backlog passes the limit, rather than
//! holding sluice's memory.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

/// Why a client's notifications stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// More than `max_notification_backlog` bytes waited for it.
    Overflow,
    /// The listener connection to PostgreSQL was lost: notifications sent
    /// meanwhile are gone.
    ListenerLost,
}

impl Closed {
    /// SQLSTATE and message of the FATAL that ends the session.
    pub fn fatal(self) -> (&'static str, &'static str) {
        match self {
            Self::Overflow => (
                "53400",
                "too many notifications waiting for this client (max_notification_backlog): it does not read them",
            ),
            Self::ListenerLost => (
                "57P01",
                "sluice lost its LISTEN connection to the server: notifications may have been missed; reconnect and LISTEN again",
            ),
        }
    }
}

#[derive(Debug, Default)]
pub struct Mailbox(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    frames: VecDeque<Bytes>,
    bytes: usize,
    closed: Option<Closed>,
}

impl Mailbox {
    /// Queues a NotificationResponse; false when the backlog would pass
    /// `limit` bytes (the mailbox is then closed with Overflow).
    pub fn push(&self, frame: Bytes, limit: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.closed.is_some() {
            return false;
        }
        if m.bytes + frame.len() > limit {
            m.closed = Some(Closed::Overflow);
            m.frames.clear();
            m.bytes = 0;
            return false;
        }
        m.bytes += frame.len();
        m.frames.push_back(frame);
        true
    }

    pub fn close(&self, why: Closed) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.closed.get_or_insert(why);
    }

    /// Why it was closed, if it was.
    pub fn closed(&self) -> Option<Closed> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).closed
    }

    /// What waits, to send now; or why the session must end.
    pub fn take(&self) -> Result<VecDeque<Bytes>, Closed> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.closed {
            return Err(c);
        }
        m.bytes = 0;
        Ok(std::mem::take(&mut m.frames))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_past_its_limit_closes_the_mailbox() {
        let m = Mailbox::default();
        assert!(m.push(Bytes::from_static(b"12345"), 8));
        assert_eq!(m.take().unwrap().len(), 1);
        assert!(m.push(Bytes::from_static(b"12345"), 8));
        assert!(!m.push(Bytes::from_static(b"12345"), 8));
        assert_eq!(m.take(), Err(Closed::Overflow));
    }
}
