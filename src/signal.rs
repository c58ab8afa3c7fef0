//! A client's signals from the rest of sluice: KILL from the console and the
//! start of a graceful shutdown. A session polls them on every wake of its
//! task, so they cost an atomic load there, where a CancellationToken or a
//! watch channel takes a lock.

use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// Which signal: a bit in `Signals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Signal {
    /// The session ends at once.
    Kill = 1,
    /// sluice is shutting down: the session ends at its next boundary.
    Drain = 2,
}

/// The signals raised for one client, and the one task that waits for them.
#[derive(Debug, Default)]
pub struct Signals {
    raised: AtomicU8,
    /// Every poll comes from the client's own task, so one waker suffices.
    waker: AtomicWaker,
}

impl Signals {
    pub fn raise(&self, s: Signal) {
        self.raised.fetch_or(s as u8, Ordering::AcqRel);
        self.waker.wake();
    }

    pub fn is_raised(&self, s: Signal) -> bool {
        self.raised.load(Ordering::Acquire) & s as u8 != 0
    }

    /// Ready once `s` is raised; otherwise the task is woken when it is.
    pub fn poll_raised(&self, s: Signal, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_raised(s) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Raised between the check and the registration: its wake may have
        // found no waker.
        if self.is_raised(s) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_waiting_task_wakes_for_its_signal_only() {
        let sig = Arc::new(Signals::default());
        let waiter = {
            let sig = sig.clone();
            tokio::spawn(async move {
                std::future::poll_fn(|cx| sig.poll_raised(Signal::Drain, cx)).await;
                sig.is_raised(Signal::Kill)
            })
        };
        sig.raise(Signal::Kill);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "Kill does not end a wait for Drain");
        sig.raise(Signal::Drain);
        assert!(waiter.await.expect("the waiter ran"));
    }
}
