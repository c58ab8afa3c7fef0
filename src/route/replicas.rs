//! What sluice knows about one database's servers for routing: the
//! primary's recent WAL positions and each replica's replay position, lag,
//! health and ban. The monitor writes it; sessions read it without locks
//! (atomics), except the lag computation, which only the monitor does.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Balance, Config, Consistency, Database, HostPort, LagBound};
use crate::protocol::inspect::Refusal;

/// Routing settings of one database; a change restarts its monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub primary: HostPort,
    pub replicas: Vec<HostPort>,
    pub dbname: String,
    pub poll_interval: Duration,
    pub max_lag: LagBound,
    pub ban_time: Duration,
    /// How long a replica may leave the monitor unanswered.
    pub read_timeout: Duration,
    pub balance: Balance,
    pub consistency: Consistency,
    /// The [users] entry the monitor logs in as.
    pub monitor_user: Option<String>,
}

impl Settings {
    pub fn from_config(config: &Config, db: &Database) -> Self {
        let r = &config.general.routing;
        Self {
            primary: db.primary.clone(),
            replicas: db.replicas.clone(),
            dbname: db.dbname.clone(),
            poll_interval: r.lsn_poll_interval,
            max_lag: r.max_replica_lag,
            ban_time: r.replica_ban_time,
            read_timeout: r.replica_read_timeout,
            balance: r.load_balance,
            consistency: r.consistency,
            monitor_user: super::monitor::monitor_user(config).map(str::to_string),
        }
    }
}

/// The primary's WAL insert position as sampled at a moment: the query
/// was sent at `at`, so any commit acknowledged before `at` is <= `lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: Instant,
    pub lsn: u64,
}

/// Every reason a routing decision can give (`Decision::reason`); the last
/// catches anything else.
const REASONS: [&str; 18] = [
    "read",
    "write",
    "locking_read",
    "writable_cte",
    "select_into",
    "write_function",
    "transaction",
    "unparsed",
    "too_large",
    "learned",
    "neutral",
    "hint",
    "session_route",
    "read_your_writes",
    "no_replica",
    "replica_failed",
    "reroute",
    "other",
];

/// How many primary samples are kept to turn a replay LSN into a lag in time.
const HISTORY: usize = 4096;

#[derive(Debug)]
pub struct ReplicaState {
    pub addr: HostPort,
    replay_lsn: AtomicU64,
    /// Connected, in recovery, and answering the monitor.
    healthy: AtomicBool,
    /// Within max_replica_lag.
    caught_up: AtomicBool,
    /// Nanoseconds since the topology's epoch; 0: not banned.
    banned_until: AtomicU64,
    lag_ms: AtomicU64,
    lag_bytes: AtomicU64,
    /// Servers of this replica checked out right now (least_outstanding).
    pub outstanding: AtomicUsize,
    pub bans: AtomicU64,
    /// When the monitor last had an answer (nanoseconds since the epoch).
    last_answer: AtomicU64,
    /// Out of recovery: a primary now, not a replica until it is a standby
    /// again.
    promoted: AtomicBool,
    /// Promoted, and its pooled servers not yet closed (the janitor's job).
    close_servers: AtomicBool,
    /// Reads abandoned on it because it stopped answering, run again on
    /// the primary.
    pub read_retries: AtomicU64,
}

pub struct Topology {
    pub database: String,
    pub settings: Settings,
    pub replicas: Vec<ReplicaState>,
    epoch: Instant,
    latest: Mutex<Option<Sample>>,
    history: Mutex<VecDeque<Sample>>,
    rr: AtomicUsize,
    /// A client's write ended: sample the primary now (see monitor).
    pub kick_primary: tokio::sync::Notify,
    /// A new primary sample: replicas poll now.
    pub kick_replicas: tokio::sync::Notify,
    /// Routing decisions by destination (primary, replica) and reason.
    decisions: [[AtomicU64; REASONS.len()]; 2],
    /// Requests a replica refused and the primary ran, by `Refusal`.
    route_retries: [AtomicU64; Refusal::ALL.len()],
}

/// A replica as `decide` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaView {
    pub usable: bool,
    pub replay_lsn: u64,
    pub outstanding: usize,
}

/// "16/B374D848" to a number.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

impl Topology {
    pub fn new(database: &str, settings: Settings) -> Self {
        let replicas = settings
            .replicas
            .iter()
            .map(|addr| ReplicaState {
                addr: addr.clone(),
                replay_lsn: AtomicU64::new(0),
                healthy: AtomicBool::new(false),
                caught_up: AtomicBool::new(false),
                banned_until: AtomicU64::new(0),
                lag_ms: AtomicU64::new(0),
                lag_bytes: AtomicU64::new(0),
                outstanding: AtomicUsize::new(0),
                bans: AtomicU64::new(0),
                last_answer: AtomicU64::new(0),
                promoted: AtomicBool::new(false),
                close_servers: AtomicBool::new(false),
                read_retries: AtomicU64::new(0),
            })
            .collect();
        Self {
            database: database.to_string(),
            settings,
            replicas,
            epoch: Instant::now(),
            latest: Mutex::new(None),
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            rr: AtomicUsize::new(0),
            kick_primary: tokio::sync::Notify::new(),
            kick_replicas: tokio::sync::Notify::new(),
            decisions: Default::default(),
            route_retries: Default::default(),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The monitor's newest primary sample.
    pub fn record_primary(&self, s: Sample) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(s);
    }

    pub fn latest(&self) -> Option<Sample> {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest primary sample taken after `t`, if one exists yet.
    pub fn sample_after(&self, t: Instant) -> Option<Sample> {
        let latest = *self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.filter(|s| s.at > t)
    }

    /// How far `replay` is behind: the time since the primary first passed
    /// it (by the samples kept), and the bytes to the newest sample.
    pub fn lag_of(&self, replay: u64, now: Instant) -> (Duration, u64) {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let Some(newest) = h.back() else {
            return (Duration::ZERO, 0);
        };
        if newest.lsn <= replay {
            return (Duration::ZERO, 0);
        }
        let passed = h.iter().find(|s| s.lsn > replay).map_or(now, |s| s.at);
        (now.saturating_duration_since(passed), newest.lsn - replay)
    }

    /// The monitor's view of replica `i` after a successful poll.
    pub fn record_replica(&self, i: usize, replay: u64, in_recovery: bool, now: Instant) {
        let r = &self.replicas[i];
        r.last_answer
            .store(self.nanos(now).max(1), Ordering::Relaxed);
        if !in_recovery {
            // Its replay position stands still while its own WAL grows:
            // not a lag but a promotion.
            r.healthy.store(false, Ordering::Relaxed);
            r.lag_ms.store(0, Ordering::Relaxed);
            r.lag_bytes.store(0, Ordering::Relaxed);
            if !r.promoted.swap(true, Ordering::Relaxed) {
                r.close_servers.store(true, Ordering::Relaxed);
                tracing::warn!(database = %self.database, replica = %r.addr, "replica was promoted (no longer in recovery): out of rotation while it is not a standby, its pooled servers closed");
            }
            return;
        }
        if r.promoted.swap(false, Ordering::Relaxed) {
            tracing::info!(database = %self.database, replica = %r.addr, "the promoted replica is a standby again");
        }
        r.replay_lsn.fetch_max(replay, Ordering::Relaxed);
        let (lag, bytes) = self.lag_of(replay, now);
        r.lag_ms.store(
            u64::try_from(lag.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        r.lag_bytes.store(bytes, Ordering::Relaxed);
        let within = match self.settings.max_lag {
            LagBound::Time(d) => lag <= d,
            LagBound::Bytes(b) => bytes <= b,
        };
        let was = r.caught_up.swap(within, Ordering::Relaxed);
        let back = !r.healthy.swap(true, Ordering::Relaxed);
        let lag_ms = lag.as_millis() as u64;
        match (was, within, back) {
            (false, true, _) => {
                tracing::info!(database = %self.database, replica = %r.addr, lag_ms, lag_bytes = bytes, "replica is within max_replica_lag: in rotation")
            }
            (true, false, _) => {
                tracing::info!(database = %self.database, replica = %r.addr, lag_ms, lag_bytes = bytes, "replica fell behind max_replica_lag: out of rotation until it catches up")
            }
            (false, false, true) => {
                tracing::info!(database = %self.database, replica = %r.addr, lag_ms, lag_bytes = bytes, "replica answers again but is behind max_replica_lag: out of rotation until it catches up")
            }
            _ => {}
        }
    }

    /// Whether replica `i` stopped answering: the monitor marked it failed
    /// or promoted, or has had no answer from it for read_timeout.
    pub fn silent(&self, i: usize) -> bool {
        let r = &self.replicas[i];
        if !r.healthy.load(Ordering::Relaxed) {
            return true;
        }
        let last = r.last_answer.load(Ordering::Relaxed);
        let now = self.nanos(Instant::now());
        now.saturating_sub(last)
            > u64::try_from(self.settings.read_timeout.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Resolves once replica `i` is `silent` (looked at every 250 ms).
    pub async fn silence(&self, i: usize) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if self.silent(i) {
                return;
            }
        }
    }

    pub fn promoted(&self, i: usize) -> bool {
        self.replicas[i].promoted.load(Ordering::Relaxed)
    }

    /// Replicas promoted since the last call, whose pooled servers are to
    /// be closed.
    pub fn take_promoted(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|i| {
                self.replicas[*i]
                    .close_servers
                    .swap(false, Ordering::Relaxed)
            })
            .collect()
    }

    /// The monitor could not reach replica `i`.
    pub fn replica_failed(&self, i: usize) {
        if self.replicas[i].healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(database = %self.database, replica = %self.replicas[i].addr, "replica failed its health check: out of rotation");
        }
        self.ban(i);
    }

    /// Takes replica `i` out of rotation for replica_ban_time.
    pub fn ban(&self, i: usize) {
        let until = self.nanos(Instant::now() + self.settings.ban_time).max(1);
        let r = &self.replicas[i];
        if r.banned_until.swap(until, Ordering::Relaxed) == 0 {
            r.bans.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn banned(&self, i: usize, now: u64) -> bool {
        let r = &self.replicas[i];
        let until = r.banned_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if now < until {
            return true;
        }
        r.banned_until.store(0, Ordering::Relaxed);
        false
    }

    pub fn views(&self) -> Vec<ReplicaView> {
        let mut v = Vec::with_capacity(self.replicas.len());
        self.views_into(&mut v);
        v
    }

    /// `views`, into a buffer the caller reuses.
    pub fn views_into(&self, out: &mut Vec<ReplicaView>) {
        out.clear();
        let now = self.nanos(Instant::now());
        out.extend(self.replicas.iter().enumerate().map(|(i, r)| ReplicaView {
            usable: r.healthy.load(Ordering::Relaxed)
                && r.caught_up.load(Ordering::Relaxed)
                && !self.banned(i, now),
            replay_lsn: r.replay_lsn.load(Ordering::Relaxed),
            outstanding: r.outstanding.load(Ordering::Relaxed),
        }));
    }

    /// Counts one routing decision (no lock: one atomic per destination and reason).
    pub fn count(&self, d: super::Decision) {
        let dest = usize::from(matches!(d.target, super::Target::Replica(_)));
        let i = REASONS
            .iter()
            .position(|r| *r == d.reason)
            .unwrap_or(REASONS.len() - 1);
        self.decisions[dest][i].fetch_add(1, Ordering::Relaxed);
    }

    /// Routing decisions so far: (destination, reason, count).
    pub fn decisions(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut v = Vec::new();
        for (dest, row) in ["primary", "replica"].into_iter().zip(&self.decisions) {
            for (reason, n) in REASONS.iter().zip(row) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    v.push((dest, *reason, n));
                }
            }
        }
        v
    }

    /// Counts a request a replica refused that runs on the primary.
    pub fn count_retry(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.route_retries[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests moved to the primary so far, by reason (every reason, zero
    /// or not, so that a dashboard's series exist from the start).
    pub fn route_retries(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .zip(&self.route_retries)
            .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn next_round_robin(&self) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }

    /// (lag in ms, lag in bytes, usable) of replica `i`, for the console and metrics.
    pub fn report(&self, i: usize) -> (u64, u64, bool) {
        let r = &self.replicas[i];
        let usable = self.views()[i].usable;
        (
            r.lag_ms.load(Ordering::Relaxed),
            r.lag_bytes.load(Ordering::Relaxed),
            usable,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        Topology::new(
            "app",
            Settings {
                primary: HostPort {
                    host: "p".into(),
                    port: 1,
                },
                replicas: vec![HostPort {
                    host: "r".into(),
                    port: 2,
                }],
                dbname: "app".into(),
                poll_interval: Duration::from_millis(20),
                max_lag: LagBound::Time(Duration::from_secs(1)),
                ban_time: Duration::from_secs(5),
                read_timeout: Duration::from_secs(1),
                balance: Balance::RoundRobin,
                consistency: Consistency::Session,
                monitor_user: None,
            },
        )
    }

    #[test]
    fn decisions_are_counted_by_destination_and_reason() {
        use crate::route::classify::Reason;
        let t = topo();
        let d = |target, reason| crate::route::Decision { target, reason };
        t.count(d(crate::route::Target::Replica(0), "read"));
        t.count(d(crate::route::Target::Replica(0), "read"));
        t.count(d(crate::route::Target::Primary, "read_your_writes"));
        assert_eq!(
            t.decisions(),
            vec![("primary", "read_your_writes", 1), ("replica", "read", 2)]
        );
        // Every reason classify gives has its own counter.
        for r in [
            Reason::Write,
            Reason::LockingRead,
            Reason::WritableCte,
            Reason::SelectInto,
            Reason::WriteFunction,
            Reason::Transaction,
            Reason::Unparsed,
            Reason::TooLarge,
            Reason::Learned,
        ] {
            assert!(REASONS[..REASONS.len() - 1].contains(&r.as_str()), "{r:?}");
        }
    }

    #[test]
    fn lsn_text_parses() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("x"), None);
    }

    #[test]
    fn lag_is_the_time_since_the_primary_passed_the_replay_position() {
        let t = topo();
        let t0 = Instant::now();
        for (ms, lsn) in [(0, 100), (100, 200), (200, 300)] {
            t.record_primary(Sample {
                at: t0 + Duration::from_millis(ms),
                lsn,
            });
        }
        let now = t0 + Duration::from_millis(300);
        assert_eq!(t.lag_of(300, now), (Duration::ZERO, 0));
        assert_eq!(t.lag_of(150, now), (Duration::from_millis(200), 150));
        assert_eq!(t.lag_of(50, now), (Duration::from_millis(300), 250));
    }

    #[test]
    fn a_replica_is_usable_only_when_healthy_caught_up_and_not_banned() {
        let t = topo();
        assert!(!t.views()[0].usable, "unknown until the monitor reports");
        t.record_replica(0, 10, true, Instant::now());
        assert!(t.views()[0].usable);
        t.ban(0);
        assert!(!t.views()[0].usable);
        assert_eq!(t.replicas[0].bans.load(Ordering::Relaxed), 1);
        t.record_replica(0, 10, false, Instant::now());
        t.replicas[0].banned_until.store(0, Ordering::Relaxed);
        assert!(!t.views()[0].usable, "a promoted replica is out");
        assert!(t.promoted(0));
        assert_eq!(t.take_promoted(), vec![0], "its servers are to close");
        assert_eq!(t.take_promoted(), Vec::<usize>::new(), "once");
        // Back in recovery (a rewound old primary): it is used again.
        t.record_replica(0, 10, true, Instant::now());
        assert!(t.views()[0].usable && !t.promoted(0));
        assert_eq!(t.report(0).0, 0, "no lag reported for it");
    }

    #[test]
    fn a_replica_is_silent_when_failed_or_unanswered_for_read_timeout() {
        let mut t = topo();
        // A topology started 10 s ago, so an answer can be 2 s old.
        t.epoch -= Duration::from_secs(10);
        assert!(t.silent(0), "never answered");
        t.record_replica(0, 10, true, Instant::now());
        assert!(!t.silent(0));
        t.record_replica(0, 10, true, Instant::now() - Duration::from_secs(2));
        assert!(t.silent(0), "last answer 2 s ago, over 1 s");
        t.record_replica(0, 10, true, Instant::now());
        t.replica_failed(0);
        assert!(t.silent(0));
    }

    #[test]
    fn samples_count_only_when_taken_after_the_write() {
        let t = topo();
        let t0 = Instant::now();
        t.record_primary(Sample { at: t0, lsn: 5 });
        assert_eq!(t.sample_after(t0), None);
        let later = t0 + Duration::from_millis(1);
        t.record_primary(Sample { at: later, lsn: 7 });
        assert_eq!(t.sample_after(t0), Some(Sample { at: later, lsn: 7 }));
    }
}
