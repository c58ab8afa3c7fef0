//! Which client sent a notification. PostgreSQL stamps a notification with
//! the pid of the server that committed it; a transaction-pooled client
//! was told another pid (its BackendKeyData), and its servers change. When
//! a client's transaction that may notify runs on a pooled server, sluice
//! expects a marker from that server: after the transaction, the same
//! server sends `NOTIFY "sluice.sender", '<client pid>'`, which reaches the
//! listener right after the transaction's own notifications (a server's
//! commits are queued in order). Notifications from a server with a marker
//! expected wait for it; every later one waits behind them, so order is
//! kept. Pure: the listener task feeds it and delivers what it returns.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The channel markers come on.
pub const MARKER: &str = "sluice.sender";

/// A marker that does not come within this is given up: the notifications
/// waiting for it go out with their server's pid.
pub const MARKER_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub pid: i32,
    pub channel: String,
    pub payload: String,
}

#[derive(Debug, Default)]
pub struct Senders {
    /// By server pid: markers expected, and when the last was asked for.
    expected: HashMap<i32, (usize, Instant)>,
    /// In arrival order; `resolved` says whether its pid is final.
    queue: VecDeque<(Notification, bool, Instant)>,
}

impl Senders {
    /// A client's transaction that may notify runs on server `pid`.
    pub fn expect(&mut self, pid: i32, now: Instant) {
        let e = self.expected.entry(pid).or_insert((0, now));
        e.0 += 1;
        e.1 = now;
    }

    /// A notification came; returns those now ready, in order.
    pub fn arrived(&mut self, n: Notification, now: Instant) -> Vec<Notification> {
        if n.channel == MARKER {
            let client = n.payload.trim().parse::<i32>().ok();
            if let Some(e) = self.expected.get_mut(&n.pid) {
                e.0 -= 1;
                if e.0 == 0 {
                    self.expected.remove(&n.pid);
                }
            }
            for (q, resolved, _) in &mut self.queue {
                if !*resolved && q.pid == n.pid {
                    if let Some(c) = client {
                        q.pid = c;
                    }
                    *resolved = true;
                }
            }
        } else {
            let waits = self.expected.contains_key(&n.pid);
            self.queue.push_back((n, !waits, now));
        }
        self.ready(now)
    }

    /// Gives up markers that did not come in time; returns what is ready.
    pub fn tick(&mut self, now: Instant) -> Vec<Notification> {
        let late: Vec<i32> = self
            .expected
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= MARKER_WAIT)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in late {
            self.expected.remove(&pid);
            for (q, resolved, _) in &mut self.queue {
                if q.pid == pid {
                    *resolved = true;
                }
            }
        }
        self.ready(now)
    }

    /// Whether anything waits (the task ticks only then).
    pub fn waiting(&self) -> bool {
        !self.expected.is_empty() || !self.queue.is_empty()
    }

    fn ready(&mut self, now: Instant) -> Vec<Notification> {
        let mut out = Vec::new();
        while let Some((_, resolved, at)) = self.queue.front() {
            // A notification waits for its marker at most MARKER_WAIT.
            if !*resolved && now.duration_since(*at) < MARKER_WAIT {
                break;
            }
            if let Some((n, _, _)) = self.queue.pop_front() {
                out.push(n);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(pid: i32, channel: &str, payload: &str) -> Notification {
        Notification {
            pid,
            channel: channel.into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn a_clients_notifications_carry_its_pid_and_keep_their_order() {
        let (mut s, t) = (Senders::default(), Instant::now());
        // Not a sluice client's: out at once, with the server's pid.
        assert_eq!(s.arrived(n(7, "c", "x"), t), vec![n(7, "c", "x")]);
        s.expect(100, t);
        assert!(s.arrived(n(100, "c", "a"), t).is_empty());
        // Behind it, even from another server.
        assert!(s.arrived(n(7, "c", "y"), t).is_empty());
        assert!(s.arrived(n(100, "d", "b"), t).is_empty());
        let out = s.arrived(n(100, MARKER, "1073741825"), t);
        assert_eq!(
            out,
            vec![
                n(1073741825, "c", "a"),
                n(7, "c", "y"),
                n(1073741825, "d", "b")
            ]
        );
        assert!(!s.waiting());
    }

    #[test]
    fn a_marker_that_never_comes_holds_nothing_for_long() {
        let (mut s, t) = (Senders::default(), Instant::now());
        s.expect(100, t);
        assert!(s.arrived(n(100, "c", "a"), t).is_empty());
        assert!(s.tick(t + Duration::from_millis(10)).is_empty());
        assert_eq!(s.tick(t + MARKER_WAIT), vec![n(100, "c", "a")]);
        assert!(!s.waiting());
        // A transaction that sent nothing: its marker resolves nothing.
        s.expect(100, t);
        assert!(s.arrived(n(100, MARKER, "5"), t).is_empty());
        assert_eq!(s.arrived(n(100, "c", "b"), t), vec![n(100, "c", "b")]);
    }
}
