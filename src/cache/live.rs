//! Each database's cache while sluice runs: its store, the rules, the
//! relations the publication covers, and the task that keeps it fresh
//! from the primary's change stream (restarted, with the store emptied,
//! whenever the stream is lost). `Caches` holds one per database with
//! cache rules and follows reloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::rules::{Candidate, Relations, candidate};
use super::store::{Entry, Key, Read, Store};
use super::stream::{ChangeStream, Event};
use crate::config::cache::{CacheRule, CacheSettings};
use crate::config::{Config, Database};
use crate::server::{ServerConn, ServerTarget};

/// How often the stream is pinged: the store's position follows the
/// primary's within about this long when nothing it covers changes.
const PING_EVERY: Duration = Duration::from_millis(20);
/// After losing the stream, the next attempt comes this much later.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Statement texts whose verdict is kept.
const DECISIONS: usize = 10_000;

/// Counters for SHOW CACHE and /metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stored: AtomicU64,
    /// Results not stored: larger than max_entry_size, not a clean reply,
    /// or a change may have passed them by.
    pub not_stored: AtomicU64,
    /// Entries dropped because a table they read changed.
    pub invalidated: AtomicU64,
    /// Times the whole store was emptied (schema change, stream lost).
    pub resets: AtomicU64,
    /// Changes applied from the stream.
    pub changes: AtomicU64,
    /// Times the stream was lost (or could not start).
    pub stream_losses: AtomicU64,
}

/// What a session is told about a statement it may cache.
pub type Verdict = Option<Arc<Candidate>>;

pub struct DbCache {
    pub database: String,
    pub rules: Vec<CacheRule>,
    pub settings: CacheSettings,
    store: RwLock<Store>,
    /// The stream is running: only then are results stored or served.
    up: AtomicBool,
    relations: ArcSwap<Relations>,
    decisions: quick_cache::sync::Cache<String, Verdict>,
    pub counters: Counters,
    /// When the stream last said something (a change or a keepalive).
    heard: Mutex<Option<Instant>>,
    /// Why caching is off, when it is (for SHOW CACHE).
    pub trouble: Mutex<Option<String>>,
    /// Tells the stream's task to read the relations again (DDL).
    refresh: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for DbCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCache")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// What SHOW CACHE prints for one database.
#[derive(Debug, Clone)]
pub struct Report {
    pub entries: usize,
    pub bytes: usize,
    pub applied: u64,
    pub streaming: bool,
    /// Since the stream was last heard from.
    pub silent_for: Option<Duration>,
}

impl DbCache {
    fn new(database: &str, rules: Vec<CacheRule>, settings: CacheSettings) -> Self {
        Self {
            database: database.to_string(),
            rules,
            store: RwLock::new(Store::new(settings.size)),
            settings,
            up: AtomicBool::new(false),
            relations: ArcSwap::default(),
            decisions: quick_cache::sync::Cache::new(DECISIONS),
            counters: Counters::default(),
            heard: Mutex::new(None),
            trouble: Mutex::new(Some("starting".into())),
            refresh: Arc::default(),
        }
    }

    pub fn streaming(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether (and how) `sql` is cached; remembered per text.
    pub fn verdict(&self, sql: &str) -> Verdict {
        if let Some(v) = self.decisions.get(sql) {
            return v;
        }
        let v = candidate(sql, &self.rules, &self.relations.load()).map(Arc::new);
        self.decisions.insert(sql.to_string(), v.clone());
        v
    }

    /// The store's position, and the epoch a read beginning now is in.
    pub fn position(&self) -> (u64, u64) {
        let s = self.store.read().unwrap_or_else(|p| p.into_inner());
        (s.applied(), s.epoch())
    }

    /// The cached reply for `key`, if the store has applied changes up to
    /// `min_applied` and `fresh` accepts its position.
    pub fn get(
        &self,
        key: &Key,
        min_applied: u64,
        fresh: impl Fn(u64) -> bool,
    ) -> Option<Arc<Entry>> {
        if !self.streaming() {
            return None;
        }
        let s = self.store.read().unwrap_or_else(|p| p.into_inner());
        if !fresh(s.applied()) {
            return None;
        }
        s.get(key, Instant::now(), min_applied)
    }

    pub fn count_hit(&self, hit: bool) {
        let c = if hit {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores what `read` saw, if it still holds.
    pub fn insert(&self, key: Key, entry: Entry, read: Read) {
        let stored = self.streaming()
            && self
                .store
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, entry, read);
        let c = if stored {
            &self.counters.stored
        } else {
            &self.counters.not_stored
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A result not stored before reaching the store (too big, not clean).
    pub fn count_not_stored(&self) {
        self.counters.not_stored.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything goes (DDL seen by sluice itself, the stream lost).
    pub fn clear(&self) {
        let mut s = self.store.write().unwrap_or_else(|p| p.into_inner());
        let applied = s.applied();
        s.clear(applied);
        self.counters.resets.fetch_add(1, Ordering::Relaxed);
    }

    /// Definitions changed (DDL seen through sluice, or announced on the
    /// stream): the store is emptied and caching waits until the stream's
    /// task has read which relations are tables again.
    pub fn schema_changed(&self) {
        self.up.store(false, Ordering::Release);
        self.clear();
        self.decisions.clear();
        self.refresh.notify_one();
    }

    pub fn report(&self) -> Report {
        let s = self.store.read().unwrap_or_else(|p| p.into_inner());
        Report {
            entries: s.len(),
            bytes: s.bytes(),
            applied: s.applied(),
            streaming: self.streaming(),
            silent_for: self
                .heard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|t| t.elapsed()),
        }
    }

    /// How long ago the primary was where the store is now (the lag of
    /// the invalidation stream), by the routing monitor's samples.
    pub fn lag(&self, topo: Option<&crate::route::Topology>) -> Option<Duration> {
        let t = topo?;
        t.latest()?;
        Some(t.lag_of(self.position().0, Instant::now()).0)
    }

    fn heard_now(&self) {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn set_trouble(&self, t: Option<String>) {
        *self.trouble.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    fn apply(&self, event: Event) {
        let now = Instant::now();
        self.heard_now();
        let mut s = self.store.write().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Changes(changes) => {
                for c in &changes {
                    let schema = matches!(c, super::wal::Change::Schema { .. });
                    let gone = s.apply(c, now);
                    if schema {
                        self.counters.resets.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.counters
                            .invalidated
                            .fetch_add(gone as u64, Ordering::Relaxed);
                    }
                    self.counters.changes.fetch_add(1, Ordering::Relaxed);
                }
                if changes
                    .iter()
                    .any(|c| matches!(c, super::wal::Change::Schema { .. }))
                {
                    drop(s);
                    // Definitions changed: the relations are read again.
                    self.schema_changed();
                }
            }
            Event::CaughtUp(lsn) => s.caught_up(lsn),
            Event::Nothing => {}
        }
    }
}

/// The caches of every database with cache rules.
#[derive(Default)]
pub struct Caches {
    by_db: Mutex<HashMap<String, Arc<DbCache>>>,
    /// Makes each instance's slot names its own.
    slots: AtomicU64,
}

impl Caches {
    /// Follows `config`: keeps a database's cache whose rules and settings
    /// did not change, starts new ones, and lets the rest stop.
    pub fn apply(&self, config: &Config) {
        let mut started = Vec::new();
        {
            let mut by_db = self.by_db.lock().unwrap_or_else(|p| p.into_inner());
            let mut next = HashMap::new();
            for (name, db) in &config.databases {
                if db.cache.is_empty() {
                    continue;
                }
                let keep = by_db
                    .get(name)
                    .filter(|c| c.rules == db.cache && c.settings == config.general.cache);
                let c = match keep {
                    Some(c) => c.clone(),
                    None => {
                        let c = Arc::new(DbCache::new(
                            name,
                            db.cache.clone(),
                            config.general.cache.clone(),
                        ));
                        started.push((c.clone(), db.clone()));
                        c
                    }
                };
                next.insert(name.clone(), c);
            }
            *by_db = next;
        }
        for (c, db) in started {
            let Some(target) = crate::route::monitor::target(config, &db.primary, &db.dbname)
            else {
                tracing::warn!(database = %c.database, "result cache off: no monitor_user with a password to read the primary's changes as");
                c.set_trouble(Some("no monitor_user with a password".into()));
                continue;
            };
            let n = self.slots.fetch_add(1, Ordering::Relaxed);
            let slot = format!("sluice_cache_{}_{n}", std::process::id());
            tokio::spawn(keep_fresh(Arc::downgrade(&c), target, slot, db));
        }
    }

    pub fn get(&self, database: &str) -> Option<Arc<DbCache>> {
        self.by_db
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(database)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<DbCache>> {
        let by_db = self.by_db.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = by_db.values().cloned().collect();
        v.sort_by(|a, b| a.database.cmp(&b.database));
        v
    }
}

/// The publication's tables, but for tables with inheritance children: a
/// read of one sees its children's rows, whose changes come under their
/// own names.
const PUBLISHED_SQL: &str = "SELECT t.schemaname::text, t.tablename::text FROM pg_catalog.pg_publication_tables t \
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i \
         JOIN pg_catalog.pg_class c ON c.oid = i.inhparent AND c.relkind = 'r' \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = t.schemaname AND c.relname = t.tablename) \
     AND t.pubname = ";
const RELATIONS_SQL: &str = "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// The publication's tables and the database's relations, read on a
/// plain connection to the primary.
async fn relations(target: &ServerTarget, publication: &str) -> Result<Relations, String> {
    let mut conn = ServerConn::connect(target)
        .await
        .map_err(|e| e.to_string())?;
    let pairs = |rows: Vec<Vec<Option<String>>>| {
        rows.into_iter()
            .filter_map(|r| match <[_; 2]>::try_from(r) {
                Ok([Some(s), Some(n)]) => Some((s, n)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let sql = format!(
        "{PUBLISHED_SQL}{}",
        crate::session::vars::literal(publication)
    );
    let published = pairs(conn.query_rows(&sql).await.map_err(|e| e.to_string())?);
    let exists = conn
        .query_rows(&format!(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {}",
            crate::session::vars::literal(publication)
        ))
        .await
        .map_err(|e| e.to_string())?;
    if exists.is_empty() {
        return Err(format!(
            "publication \"{publication}\" does not exist (CREATE PUBLICATION {publication} FOR ALL TABLES)"
        ));
    }
    let all = pairs(
        conn.query_rows(RELATIONS_SQL)
            .await
            .map_err(|e| e.to_string())?,
    );
    Ok(Relations::new(published, all))
}

/// Runs the change stream of `cache` until the cache is dropped; on any
/// loss, empties the store and starts again.
async fn keep_fresh(cache: Weak<DbCache>, target: ServerTarget, slot: String, db: Database) {
    let mut reported: Option<String> = None;
    loop {
        let Some(c) = cache.upgrade() else { return };
        let publication = c.settings.publication.clone();
        drop(c);
        let error = run_stream(&cache, &target, &slot, &publication).await;
        let Some(c) = cache.upgrade() else { return };
        c.up.store(false, Ordering::Release);
        c.clear();
        c.counters.stream_losses.fetch_add(1, Ordering::Relaxed);
        if reported.as_ref() != Some(&error) {
            tracing::warn!(database = %c.database, primary = %db.primary, error = %error, "result cache off: its invalidation stream failed; reads go to servers until it is back");
            reported = Some(error.clone());
        }
        c.set_trouble(Some(error));
        drop(c);
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

/// One life of the stream: reads the relations, starts the stream, turns
/// the cache on and applies changes until something fails (the reason).
async fn run_stream(
    cache: &Weak<DbCache>,
    target: &ServerTarget,
    slot: &str,
    publication: &str,
) -> String {
    let rel = match relations(target, publication).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut stream = match ChangeStream::start(target, slot, publication).await {
        Ok(s) => s,
        Err(e) => return format!("could not start the change stream: {e}"),
    };
    let refresh;
    {
        let Some(c) = cache.upgrade() else {
            return "dropped".into();
        };
        if rel.is_empty() {
            tracing::warn!(database = %c.database, publication, "the cache's publication covers no table: nothing will be cached");
        }
        c.relations.store(Arc::new(rel));
        c.decisions.clear();
        refresh = c.refresh.clone();
        // Nothing from before this stream is trusted.
        c.clear();
        c.up.store(true, Ordering::Release);
        c.set_trouble(None);
        tracing::info!(database = %c.database, publication, "result cache on: invalidations stream from the primary");
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A ping unanswered this long means the primary stopped answering.
    let silent_limit = Duration::from_secs(5).max(PING_EVERY * 50);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            biased;
            e = stream.next() => match e {
                Ok(event) => {
                    let Some(c) = cache.upgrade() else { return "dropped".into() };
                    last_heard = Instant::now();
                    c.apply(event);
                }
                Err(e) => return format!("the change stream ended: {e}"),
            },
            () = refresh.notified() => {
                let rel = match relations(target, publication).await {
                    Ok(r) => r,
                    Err(e) => return e,
                };
                let Some(c) = cache.upgrade() else { return "dropped".into() };
                c.relations.store(Arc::new(rel));
                c.decisions.clear();
                c.up.store(true, Ordering::Release);
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > silent_limit {
                    return format!("the primary did not answer the change stream for {silent_limit:?}");
                }
                if cache.strong_count() == 0 {
                    return "dropped".into();
                }
                if let Err(e) = stream.acknowledge(true).await {
                    return format!("the change stream ended: {e}");
                }
            }
        }
        if stream.owes_reply()
            && let Err(e) = stream.acknowledge(false).await
        {
            return format!("the change stream ended: {e}");
        }
    }
}
