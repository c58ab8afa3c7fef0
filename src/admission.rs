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

/// Failed logins per client address within a sliding window.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthThrottle {
    /// Records a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr, window: Duration) {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let e = m.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) > window {
            *e = (0, now);
        }
        e.0 += 1;
        // Keep the table small: forget addresses whose window has passed.
        if m.len() > 10_000 {
            m.retain(|_, (_, start)| now.duration_since(*start) <= window);
        }
    }

    /// Whether `ip` has failed `limit` times (0: never throttle) within `window`.
    pub fn blocked(&self, ip: IpAddr, limit: u32, window: Duration) -> bool {
        if limit == 0 {
            return false;
        }
        let m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&ip)
            .is_some_and(|(n, start)| *n >= limit && start.elapsed() <= window)
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
            assert!(!t.blocked(ip, 3, w));
            t.failed(ip, w);
        }
        assert!(t.blocked(ip, 3, w));
        assert!(!t.blocked("127.0.0.1".parse().unwrap(), 3, w));
        assert!(!t.blocked(ip, 0, w));
    }
}
