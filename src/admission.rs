//! Who gets in: per-user and per-database client caps, and throttling of
//! addresses that keep failing authentication. Plain data behind std
//! mutexes, never held across an await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts connected clients per key ("user:x", "db:y"). Admitted clients
/// share their key with the map rather than each keeping a copy. The counts
/// are atomics only so that a lookup that finds the key can bump it through
/// `get_key_value` (one hash); the mutex still orders every change.
#[derive(Debug, Default)]
pub struct ClientCounts {
    counts: Mutex<HashMap<Arc<str>, AtomicUsize>>,
}

/// One admitted client; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    counts: Arc<ClientCounts>,
    key: Arc<str>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut m = self.counts.counts.lock().unwrap_or_else(|p| p.into_inner());
        let last = m
            .get(&self.key)
            .is_some_and(|n| n.fetch_sub(1, Relaxed) <= 1);
        if last {
            m.remove(&self.key);
        }
    }
}

impl ClientCounts {
    /// Clients currently admitted under `key`.
    pub fn count(&self, key: &str) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .map_or(0, |n| n.load(Relaxed))
    }

    /// Admits one more client under `key` unless `max` (0: no limit) is reached.
    pub fn admit(self: &Arc<Self>, key: &str, max: usize) -> Option<Admitted> {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key = match m.get_key_value(key) {
            Some((_, n)) if max > 0 && n.load(Relaxed) >= max => return None,
            Some((k, n)) => {
                n.fetch_add(1, Relaxed);
                k.clone()
            }
            None => {
                let k: Arc<str> = Arc::from(key);
                m.insert(k.clone(), AtomicUsize::new(1));
                k
            }
        };
        Some(Admitted {
            counts: self.clone(),
            key,
        })
    }
}

/// Failed logins per client address within a sliding window, and the
/// logins from it in progress. An attempt counts from when it begins, not
/// from when it fails: of 250 wrong passwords sent at once with a limit of
/// 20, only 20 are ever checked. Attempts past the limit's room wait for
/// those in progress to settle, so a burst of good logins from one address
/// (an application starting its pool) is only queued, never refused.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    entries: Mutex<HashMap<IpAddr, Tally>>,
    /// Woken whenever an attempt ends.
    settled: tokio::sync::Notify,
}

#[derive(Debug)]
struct Tally {
    failures: u32,
    since: Instant,
    in_flight: u32,
}

/// What `AuthThrottle::begin` says to a new login attempt.
#[derive(Debug)]
pub enum Begin<'a> {
    Go(Attempt<'a>),
    /// The address has failed `limit` times within the window.
    Blocked,
    /// Attempts in progress may still reach the limit.
    Wait,
}

/// A login attempt in progress, counted against its address. Dropped, it
/// counts as nothing; `failed` makes it a failure.
#[derive(Debug)]
pub struct Attempt<'a> {
    throttle: &'a AuthThrottle,
    ip: IpAddr,
}

impl Attempt<'_> {
    pub fn failed(self, window: Duration) {
        let mut m = self.throttle.lock();
        let now = Instant::now();
        if let Some(t) = m.get_mut(&self.ip) {
            if now.duration_since(t.since) > window {
                (t.failures, t.since) = (0, now);
            }
            t.failures += 1;
        }
        // Keep the table small: forget addresses whose window has passed.
        if m.len() > 10_000 {
            m.retain(|_, t| t.in_flight > 0 || now.duration_since(t.since) <= window);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut m = self.throttle.lock();
        if let Some(t) = m.get_mut(&self.ip) {
            t.in_flight = t.in_flight.saturating_sub(1);
            if t.in_flight == 0 && t.failures == 0 {
                m.remove(&self.ip);
            }
        }
        drop(m);
        self.throttle.settled.notify_waiters();
    }
}

impl AuthThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Tally>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a login attempt from `ip` unless it has failed `limit` times
    /// (`limit` > 0) within `window`, or attempts in progress could get it
    /// there.
    pub fn begin(&self, ip: IpAddr, limit: u32, window: Duration) -> Begin<'_> {
        let mut m = self.lock();
        let now = Instant::now();
        let t = m.entry(ip).or_insert(Tally {
            failures: 0,
            since: now,
            in_flight: 0,
        });
        if now.duration_since(t.since) > window {
            (t.failures, t.since) = (0, now);
        }
        if t.failures >= limit {
            return Begin::Blocked;
        }
        if t.failures + t.in_flight >= limit {
            return Begin::Wait;
        }
        t.in_flight += 1;
        Begin::Go(Attempt { throttle: self, ip })
    }

    /// `begin`, waiting (until `deadline`) while the attempts in progress
    /// could still reach the limit. None when the address is blocked;
    /// Err when the deadline passed first.
    pub async fn admit(
        &self,
        ip: IpAddr,
        limit: u32,
        window: Duration,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Attempt<'_>>, tokio::time::error::Elapsed> {
        loop {
            // Registered before the check, so an attempt that ends in
            // between still wakes this one.
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            match self.begin(ip, limit, window) {
                Begin::Go(a) => return Ok(Some(a)),
                Begin::Blocked => return Ok(None),
                Begin::Wait => tokio::time::timeout_at(deadline, settled).await?,
            }
        }
    }
}

/// New connections per user per second, as a token bucket (burst = rate).
#[derive(Debug, Default)]
pub struct ConnectRate {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl ConnectRate {
    /// Takes a token for `user`; false when the user is over `per_second` (0: no limit).
    pub fn allow(&self, user: &str, per_second: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        let rate = f64::from(per_second);
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = m.entry(user.to_string()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_and_release() {
        let c = Arc::new(ClientCounts::default());
        let a = c.admit("user:u", 2).unwrap();
        let _b = c.admit("user:u", 2).unwrap();
        assert!(c.admit("user:u", 2).is_none());
        assert!(c.admit("user:v", 2).is_some());
        drop(a);
        assert!(c.admit("user:u", 2).is_some());
        assert!(c.admit("user:w", 0).is_some());
    }

    #[test]
    fn connect_rate_allows_a_burst_then_refuses() {
        let r = ConnectRate::default();
        assert!((0..5).all(|_| r.allow("u", 5)));
        assert!(!r.allow("u", 5));
        assert!(r.allow("v", 5));
        assert!(r.allow("u", 0));
    }

    #[test]
    fn throttle_after_limit_within_window() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let w = Duration::from_secs(60);
        for _ in 0..3 {
            let Begin::Go(a) = t.begin(ip, 3, w) else {
                panic!("not yet at the limit")
            };
            a.failed(w);
        }
        assert!(matches!(t.begin(ip, 3, w), Begin::Blocked));
        assert!(matches!(
            t.begin("127.0.0.1".parse().unwrap(), 3, w),
            Begin::Go(_)
        ));
        // A window of zero has always passed: the count starts again.
        assert!(matches!(t.begin(ip, 3, Duration::ZERO), Begin::Go(_)));
    }

    #[test]
    fn attempts_in_progress_count_before_they_fail() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "127.0.0.3".parse().unwrap();
        let w = Duration::from_secs(60);
        let a = t.begin(ip, 2, w);
        let b = t.begin(ip, 2, w);
        assert!(matches!((&a, &b), (Begin::Go(_), Begin::Go(_))));
        // Two in progress may both fail: a third waits.
        assert!(matches!(t.begin(ip, 2, w), Begin::Wait));
        // One succeeds (dropped): room again.
        drop(a);
        let c = t.begin(ip, 2, w);
        assert!(matches!(c, Begin::Go(_)));
        // Both others fail: blocked.
        for x in [b, c] {
            let Begin::Go(x) = x else { unreachable!() };
            x.failed(w);
        }
        assert!(matches!(t.begin(ip, 2, w), Begin::Blocked));
    }

    #[tokio::test]
    async fn a_waiting_attempt_goes_when_one_in_progress_succeeds() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "127.0.0.4".parse().unwrap();
        let w = Duration::from_secs(60);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let first = t.admit(ip, 1, w, deadline).await.unwrap().unwrap();
        let (second, ()) = tokio::join!(t.admit(ip, 1, w, deadline), async {
            tokio::task::yield_now().await;
            drop(first);
        });
        assert!(matches!(second, Ok(Some(_))));
    }
}
