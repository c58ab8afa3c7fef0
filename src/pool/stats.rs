//! Per-pool counters and histograms: what SHOW STATS and /metrics report.
//! Sessions update them with relaxed atomics (no locks on the query path;
//! the waiter list and the error classes take a short lock, off the hot path).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, HistogramVec};

/// The histograms of every pool, labelled database, user, role.
#[derive(Clone)]
pub struct Histograms {
    pub wait: HistogramVec,
    pub query: HistogramVec,
    pub xact: HistogramVec,
}

const BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

fn vec(name: &str, help: &str) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
    // Only invalid options fail, and these are constants.
    HistogramVec::new(opts, &["database", "user", "role"]).expect("valid histogram options")
}

impl Default for Histograms {
    fn default() -> Self {
        Self {
            wait: vec(
                "sluice_client_wait_seconds",
                "Time clients waited for a server connection",
            ),
            query: vec(
                "sluice_query_duration_seconds",
                "Time from a request to its ReadyForQuery",
            ),
            xact: vec(
                "sluice_transaction_duration_seconds",
                "Time from a transaction's first request to its end",
            ),
        }
    }
}

/// Totals since start, as SHOW STATS names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub xact_count: u64,
    pub query_count: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
    pub waits: u64,
}

pub struct PoolStats {
    xacts: AtomicU64,
    queries: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    xact_us: AtomicU64,
    query_us: AtomicU64,
    wait_us: AtomicU64,
    waits: AtomicU64,
    wait_h: Histogram,
    query_h: Histogram,
    xact_h: Histogram,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Waiting clients by arrival (ids only grow, so the queue is sorted):
    /// the first is the longest waiting (maxwait). Clients mostly leave in
    /// arrival order (the pool's semaphore is fair), so leaving is usually
    /// a pop at the front; a deque costs a fraction of a tree per wait.
    waiters: Mutex<VecDeque<(u64, Instant)>>,
    next_waiter: AtomicU64,
    /// How many clients wait now (the deque's length, read without a lock).
    waiting_now: AtomicU64,
    /// (when, totals) at the start of the current and the last stats period.
    periods: Mutex<(Instant, Totals, Totals, Duration)>,
}

impl std::fmt::Debug for PoolStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolStats")
            .field("totals", &self.totals())
            .finish_non_exhaustive()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A client waiting for a server; counted in maxwait until dropped.
pub struct Waiter<'a> {
    stats: &'a PoolStats,
    id: u64,
    pub since: Instant,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let waited = self.since.elapsed();
        {
            let mut w = self.stats.waiters.lock().unwrap_or_else(|p| p.into_inner());
            if w.front().is_some_and(|(id, _)| *id == self.id) {
                w.pop_front();
            } else if let Ok(i) = w.binary_search_by_key(&self.id, |(id, _)| *id) {
                w.remove(i);
            }
            self.stats
                .waiting_now
                .store(w.len() as u64, Ordering::Relaxed);
        }
        self.stats.waits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .wait_us
            .fetch_add(micros(waited), Ordering::Relaxed);
        self.stats.wait_h.observe(waited.as_secs_f64());
    }
}

impl PoolStats {
    pub fn new(h: &Histograms, labels: &[&str; 3]) -> Self {
        Self {
            xacts: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            xact_us: AtomicU64::new(0),
            query_us: AtomicU64::new(0),
            wait_us: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            wait_h: h.wait.with_label_values(labels),
            query_h: h.query.with_label_values(labels),
            xact_h: h.xact.with_label_values(labels),
            errors: Mutex::default(),
            waiters: Mutex::default(),
            next_waiter: AtomicU64::new(0),
            waiting_now: AtomicU64::new(0),
            periods: Mutex::new((
                Instant::now(),
                Totals::default(),
                Totals::default(),
                Duration::ZERO,
            )),
        }
    }

    /// Starts timing a client's wait for a server.
    pub fn waiting(&self) -> Waiter<'_> {
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now();
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.push_back((id, since));
        self.waiting_now.store(w.len() as u64, Ordering::Relaxed);
        drop(w);
        Waiter {
            stats: self,
            id,
            since,
        }
    }

    /// Counts a checkout that found a server at once.
    pub fn waited_none(&self) {
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.wait_h.observe(0.0);
    }

    /// How long the oldest client still waiting has waited.
    pub fn maxwait(&self) -> Duration {
        let w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.front()
            .map_or(Duration::ZERO, |(_, since)| since.elapsed())
    }

    /// Whether any client is waiting for a server now.
    pub fn anyone_waiting(&self) -> bool {
        self.waiting_now.load(Ordering::Relaxed) > 0
    }

    pub fn query(&self, took: Duration) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.query_us.fetch_add(micros(took), Ordering::Relaxed);
        self.query_h.observe(took.as_secs_f64());
    }

    pub fn xact(&self, took: Duration) {
        self.xacts.fetch_add(1, Ordering::Relaxed);
        self.xact_us.fetch_add(micros(took), Ordering::Relaxed);
        self.xact_h.observe(took.as_secs_f64());
    }

    pub fn bytes(&self, received: u64, sent: u64) {
        if received > 0 {
            self.received.fetch_add(received, Ordering::Relaxed);
        }
        if sent > 0 {
            self.sent.fetch_add(sent, Ordering::Relaxed);
        }
    }

    /// A server ErrorResponse with this SQLSTATE.
    pub fn error(&self, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("XX").to_string();
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(class)
            .or_default() += 1;
    }

    pub fn errors(&self) -> Vec<(String, u64)> {
        let e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        e.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn totals(&self) -> Totals {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            xact_count: l(&self.xacts),
            query_count: l(&self.queries),
            received: l(&self.received),
            sent: l(&self.sent),
            xact_us: l(&self.xact_us),
            query_us: l(&self.query_us),
            wait_us: l(&self.wait_us),
            waits: l(&self.waits),
        }
    }

    /// Closes a stats period once `period` has passed (called every second).
    pub fn roll(&self, period: Duration) {
        let mut p = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        let took = p.0.elapsed();
        if took >= period {
            let now = self.totals();
            *p = (Instant::now(), now, diff(now, p.1), took);
        }
    }

    /// The last full stats period: its totals and length (PgBouncer's avg_*).
    pub fn last_period(&self) -> (Totals, Duration) {
        let p = self.periods.lock().unwrap_or_else(|p| p.into_inner());
        (p.2, p.3)
    }
}

fn diff(a: Totals, b: Totals) -> Totals {
    Totals {
        xact_count: a.xact_count - b.xact_count,
        query_count: a.query_count - b.query_count,
        received: a.received - b.received,
        sent: a.sent - b.sent,
        xact_us: a.xact_us - b.xact_us,
        query_us: a.query_us - b.query_us,
        wait_us: a.wait_us - b.wait_us,
        waits: a.waits - b.waits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_queries_and_errors_add_up() {
        let s = PoolStats::new(&Histograms::default(), &["app", "u", "primary"]);
        {
            let _w = s.waiting();
            assert!(s.maxwait() < Duration::from_secs(1));
        }
        assert_eq!(s.maxwait(), Duration::ZERO);
        s.query(Duration::from_millis(2));
        s.xact(Duration::from_millis(3));
        s.bytes(10, 20);
        s.error("42P01");
        s.error("42601");
        let t = s.totals();
        assert_eq!(
            (t.query_count, t.xact_count, t.received, t.sent, t.waits),
            (1, 1, 10, 20, 1)
        );
        assert_eq!((t.query_us, t.xact_us), (2000, 3000));
        assert_eq!(s.errors(), vec![("42".to_string(), 2)]);
        s.roll(Duration::ZERO);
        assert_eq!(s.last_period().0, t);
    }
}
