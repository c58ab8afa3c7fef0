//! A client's signals from the rest of sluice: KILL from the console and the
//! start of a graceful shutdown. A session polls them on every wake of its
//! task, so they cost an atomic load there, where a CancellationToken or a
//! watch channel takes a lock.

use std::pin::Pin;
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
    /// Notifications wait in the client's mailbox (or it was closed).
    Mail = 4,
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

    /// Takes `s` back (for signals that can come again).
    pub fn clear(&self, s: Signal) {
        self.raised.fetch_and(!(s as u8), Ordering::AcqRel);
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

    /// Runs `future` until it ends or `signal` is raised.
    pub fn unless<F: Future>(&self, signal: Signal, future: F) -> Unless<'_, F> {
        Unless {
            future,
            signals: self,
            signal,
        }
    }
}

pin_project_lite::pin_project! {
    /// `future`, unless `signal` is raised first: then None, and the future
    /// is dropped unfinished. Its own state is one reference and the signal,
    /// where `select!` keeps a second future and its bookkeeping (this wraps
    /// a client's whole session, the state every idle client keeps).
    pub struct Unless<'a, F> {
        #[pin]
        future: F,
        signals: &'a Signals,
        signal: Signal,
    }
}

impl<F: Future> Future for Unless<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.signals.poll_raised(*this.signal, cx).is_ready() {
            return Poll::Ready(None);
        }
        this.future.poll(cx).map(Some)
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

    #[tokio::test]
    async fn unless_ends_a_future_when_its_signal_is_raised() {
        let sig = Signals::default();
        assert_eq!(sig.unless(Signal::Kill, async { 7 }).await, Some(7));

        let mut waiting = std::pin::pin!(sig.unless(Signal::Kill, std::future::pending::<()>()));
        sig.raise(Signal::Drain);
        assert!(
            futures_util::poll!(waiting.as_mut()).is_pending(),
            "Drain does not end a wait unless Kill"
        );
        sig.raise(Signal::Kill);
        assert_eq!(waiting.await, None);
    }
}
