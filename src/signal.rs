//! A client's signals from the rest of sluice: KILL from the console and the
//! start of a graceful shutdown. A session polls them on every wake of its
//! task, so a poll that finds nothing new costs one atomic load and a
//! pointer comparison, where a CancellationToken or a watch channel takes a
//! lock.

use std::sync::atomic::{AtomicU32, Ordering};
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

/// Bits below this count raised signals; the bits above count raises.
const RAISE: u32 = 1 << 8;

/// The signals raised for one client, and the one task that waits for them.
#[derive(Debug, Default)]
pub struct Signals {
    /// Signal bits, plus a count of raises (each raise takes the waker).
    state: AtomicU32,
    /// Every poll comes from the client's own task, so one waker suffices.
    waker: AtomicWaker,
}

/// What one poller registered last: which waker, and the state then. While
/// both still hold, the waker is still registered and need not be again.
#[derive(Debug, Default)]
pub struct Watch {
    /// The waker's data and vtable addresses; (0, 0) before the first.
    waker: (usize, usize),
    seen: u32,
}

impl Signals {
    pub fn raise(&self, s: Signal) {
        self.state.fetch_add(RAISE, Ordering::AcqRel);
        self.state.fetch_or(s as u32, Ordering::AcqRel);
        self.waker.wake();
    }

    pub fn is_raised(&self, s: Signal) -> bool {
        self.state.load(Ordering::Acquire) & s as u32 != 0
    }

    /// Ready once `s` is raised; otherwise the task is woken when it is.
    pub fn poll_raised(&self, s: Signal, cx: &mut Context<'_>, watch: &mut Watch) -> Poll<()> {
        let state = self.state.load(Ordering::Acquire);
        if state & s as u32 != 0 {
            return Poll::Ready(());
        }
        // The task's waker, as two addresses (a Waker clone would cost a
        // reference count both ways).
        let w = cx.waker();
        let id = (w.data() as usize, w.vtable() as *const _ as usize);
        // No raise since this poller registered this waker: a raise would
        // have bumped the count, so the registration still stands.
        if watch.waker == id && watch.seen == state {
            return Poll::Pending;
        }
        self.waker.register(w);
        // Raised between the check and the registration: its wake may have
        // found no waker.
        let state = self.state.load(Ordering::Acquire);
        if state & s as u32 != 0 {
            return Poll::Ready(());
        }
        *watch = Watch {
            waker: id,
            seen: state,
        };
        Poll::Pending
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
                let mut watch = Watch::default();
                std::future::poll_fn(|cx| sig.poll_raised(Signal::Drain, cx, &mut watch)).await;
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
    async fn a_kill_wakes_a_task_that_also_watches_a_drain_raised_twice() {
        let sig = Arc::new(Signals::default());
        let waiter = {
            let sig = sig.clone();
            tokio::spawn(async move {
                let (mut drain, mut kill) = (Watch::default(), Watch::default());
                std::future::poll_fn(|cx| {
                    // A drained session keeps running, still watching both.
                    let _ = sig.poll_raised(Signal::Drain, cx, &mut drain);
                    sig.poll_raised(Signal::Kill, cx, &mut kill)
                })
                .await;
            })
        };
        for _ in 0..2 {
            sig.raise(Signal::Drain);
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished());
        }
        sig.raise(Signal::Kill);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the kill woke the task")
            .expect("the waiter ran");
    }
}
