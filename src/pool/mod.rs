//! Pools of server connections, one per (database, user), on deadpool.
//!
//! A `Checkout` is the only way to hold a server. Dropping it without
//! `release` discards the connection: a server in an unknown state is never
//! handed to another client.

mod manager;
pub mod stats;
mod welcome;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{Object, Pool, PoolError, TimeoutType, Timeouts};
use tokio::sync::Semaphore;

use crate::config::{Config, Database, User};
use crate::error::Error;
use crate::protocol::sqlstate;
use crate::route::Target;
use crate::server::{ServerConn, ServerPassword, ServerTarget};
pub use manager::{Limit, ServerManager};

pub type ServerPool = Pool<ServerManager>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
    /// The primary or one of the database's replicas.
    pub role: Target,
}

impl PoolKey {
    pub fn primary(database: &str, user: &str) -> Self {
        Self {
            database: database.to_string(),
            user: user.to_string(),
            role: Target::Primary,
        }
    }

    /// "primary" or "replica", as the console and metrics label it.
    pub fn role_name(&self) -> &'static str {
        match self.role {
            Target::Primary => "primary",
            Target::Replica(_) => "replica",
        }
    }
}

/// Every pool of one sluice instance, and the limits they share; no globals.
#[derive(Default)]
pub struct PoolSet {
    pools: Mutex<HashMap<PoolKey, ServerPool>>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Histograms of every pool, for /metrics.
    pub histograms: stats::Histograms,
    pub pauses: Arc<Pauses>,
}

/// Databases paused by the console: checkouts wait until RESUME.
#[derive(Debug, Default)]
pub struct Pauses {
    paused: Mutex<std::collections::HashSet<String>>,
    /// Whether any database is paused: lets a checkout skip the lock.
    any: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
}

impl Pauses {
    pub fn pause(&self, database: &str) {
        let mut p = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        p.insert(database.to_string());
        self.any.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn resume(&self, database: Option<&str>) {
        let mut p = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        match database {
            Some(d) => {
                p.remove(d);
            }
            None => p.clear(),
        }
        self.any
            .store(!p.is_empty(), std::sync::atomic::Ordering::SeqCst);
        drop(p);
        self.resumed.notify_waiters();
    }

    pub fn is_paused(&self, database: &str) -> bool {
        if !self.any.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(database)
    }

    /// Returns once `database` is not paused.
    pub async fn wait(&self, database: &str) {
        loop {
            let resumed = self.resumed.notified();
            if !self.is_paused(database) {
                return;
            }
            resumed.await;
        }
    }
}

/// How sluice logs in to PostgreSQL as `user`.
pub fn server_password(user: Option<&User>) -> ServerPassword {
    use crate::auth::secret::Secret;
    let Some(u) = user else {
        return ServerPassword::None;
    };
    if let Some(p) = &u.server_password {
        return ServerPassword::Plain(p.clone());
    }
    match &u.secret {
        Secret::Plain { password, .. } => ServerPassword::Plain(password.clone()),
        Secret::Md5(h) if u.server_user.is_none() => ServerPassword::Md5Hash(h.clone()),
        Secret::Scram(v) if u.server_user.is_none() => {
            ServerPassword::PassThrough(Arc::new(crate::server::login::PassThrough::new(v.clone())))
        }
        _ => ServerPassword::None,
    }
}

impl PoolSet {
    fn limit(&self, key: String, max: usize, what: String) -> Option<Limit> {
        if max == 0 {
            return None;
        }
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let semaphore = limits
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(max)))
            .clone();
        Some(Limit { semaphore, what })
    }

    /// The pool for (database, user), created on first use.
    pub fn get_or_create(
        &self,
        config: &Config,
        key: &PoolKey,
        db: &Database,
        user: Option<&User>,
    ) -> ServerPool {
        if let Some(p) = self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return p.clone();
        }
        let g = &config.general;
        let max_db = config.max_db_connections(db);
        let max_user = config.max_user_connections(user);
        let limits = [
            self.limit(
                format!("db:{}", key.database),
                max_db,
                format!(
                    "max_db_connections ({max_db}) for database \"{}\"",
                    key.database
                ),
            ),
            self.limit(
                format!("user:{}", key.user),
                max_user,
                format!(
                    "max_user_connections ({max_user}) for user \"{}\"",
                    key.user
                ),
            ),
        ];
        let addr = match key.role {
            Target::Replica(i) => db.replicas.get(i).unwrap_or(&db.primary),
            Target::Primary => &db.primary,
        };
        let target = ServerTarget {
            addr: addr.clone(),
            dbname: db.dbname.clone(),
            user: user
                .and_then(|u| u.server_user.clone())
                .unwrap_or_else(|| key.user.clone()),
            password: server_password(user),
            connect_timeout: g.server_connect_timeout,
            tls: g.server_tls.clone(),
            application_name: g.default_application_name.clone(),
            replication: false,
        };
        let mut target = target;
        if key.role != Target::Primary
            && let Some(p) = self
                .pools
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&PoolKey::primary(&key.database, &key.user))
        {
            // Replica pools log in as the primary's does, including a
            // SCRAM pass-through key learnt from a client.
            target.password = p.manager().target.password.clone();
        }
        let manager = ServerManager {
            target,
            lifetime: g.server_lifetime,
            limits: limits.into_iter().flatten().collect(),
            limit_wait: g.query_wait_timeout,
            base_size: config.pool_size(db).into(),
            reserve_size: g.reserve_pool_size,
            reserve_timeout: g.reserve_pool_timeout,
            known: Arc::default(),
            database: key.database.as_str().into(),
            user: key.user.as_str().into(),
            pauses: self.pauses.clone(),
            generation: Default::default(),
            logins: Default::default(),
            stats: Arc::new(stats::PoolStats::new(
                &self.histograms,
                &[&key.database, &key.user, key.role_name()],
            )),
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size(db))
            .wait_timeout(Some(g.query_wait_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build();
        // build() fails only when no runtime is set, and one always is.
        let pool = pool.expect("deadpool runtime is set");
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.entry(key.clone()).or_insert(pool).clone()
    }

    /// Applies a reloaded config: pools whose database or user changed or
    /// went away are closed (their idle servers at once, busy ones when
    /// returned), the others take the new pool size.
    pub fn reload(&self, old: &Config, new: &Config) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|key, pool| {
            let db = new.databases.get(&key.database);
            let same_db = db.is_some_and(|d| {
                old.databases
                    .get(&key.database)
                    .is_some_and(|o| same_servers(o, d))
            });
            let same_user = match (new.users.get(&key.user), old.users.get(&key.user)) {
                (Some(a), Some(b)) => same_login(a, b),
                (None, None) => true,
                _ => false,
            };
            match db {
                Some(db) if same_db && same_user => {
                    let size = new.pool_size(db);
                    pool.manager()
                        .base_size
                        .store(size, std::sync::atomic::Ordering::Relaxed);
                    pool.resize(size);
                    true
                }
                _ => {
                    pool.close();
                    false
                }
            }
        });
        self.limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn all(&self) -> Vec<(PoolKey, ServerPool)> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.iter().map(|(k, p)| (k.clone(), p.clone())).collect()
    }

    /// Prepared statements held by each idle server, per pool (transaction pooling).
    pub fn prepared_per_server(&self) -> Vec<(PoolKey, Vec<usize>)> {
        self.all()
            .into_iter()
            .map(|(key, pool)| {
                let mut counts = Vec::new();
                pool.retain(|c, _| {
                    counts.push(c.statements.len());
                    true
                });
                (key, counts)
            })
            .collect()
    }

    /// Periodic upkeep: closes idle servers past server_idle_timeout or
    /// server_lifetime, gives back reserve capacity nobody waits for, and
    /// opens connections up to min_pool_size.
    pub async fn maintain(&self, config: &Config) {
        let g = &config.general;
        for (key, pool) in self.all() {
            pool.manager().stats.roll(STATS_PERIOD);
            let (idle, life) = (g.server_idle_timeout, g.server_lifetime);
            pool.retain(|c, _| {
                (idle.is_zero() || c.idle_since.elapsed() < idle)
                    && (life.is_zero() || c.created.elapsed() < life)
            });
            let m = pool.manager();
            let status = pool.status();
            let base = m.base();
            if status.max_size > base && status.waiting == 0 {
                pool.resize(base);
            }
            let Some(db) = config.databases.get(&key.database) else {
                continue;
            };
            let missing = config.min_pool_size(db).saturating_sub(pool.status().size);
            let mut held = Vec::new();
            for _ in 0..missing {
                let t = Timeouts {
                    wait: Some(Duration::ZERO),
                    ..pool.timeouts()
                };
                match pool.timeout_get(&t).await {
                    Ok(c) => held.push(c),
                    Err(_) => break,
                }
            }
        }
    }
}

/// Whether two entries of a database reach the same servers the same way:
/// if so, its pools are kept (and resized) across a reload.
fn same_servers(a: &Database, b: &Database) -> bool {
    a.primary == b.primary && a.replicas == b.replicas && a.dbname == b.dbname
}

/// Whether sluice logs in to the servers the same way for both entries.
/// (A plain password's SCRAM verifier gets a new salt at every load, so
/// the entries themselves differ.)
fn same_login(a: &User, b: &User) -> bool {
    use crate::auth::secret::Secret;
    let secret = match (&a.secret, &b.secret) {
        (Secret::Plain { password: x, .. }, Secret::Plain { password: y, .. }) => x == y,
        (x, y) => x == y,
    };
    secret && a.server_user == b.server_user && a.server_password == b.server_password
}

/// SHOW STATS averages cover this long, as PgBouncer's stats_period.
pub const STATS_PERIOD: Duration = Duration::from_secs(15);

impl PoolSet {
    /// The pools of `database` (all pools when None).
    pub fn of(&self, database: Option<&str>) -> Vec<(PoolKey, ServerPool)> {
        self.all()
            .into_iter()
            .filter(|(k, _)| database.is_none_or(|d| k.database == d))
            .collect()
    }

    /// RECONNECT: servers of `database` close now when idle, else when returned.
    pub fn reconnect(&self, database: Option<&str>) {
        for (_, pool) in self.of(database) {
            pool.manager()
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            pool.retain(|_, _| false);
        }
    }

    /// Closes the servers of `database` to replica `i` (idle ones now, the
    /// others when returned): it was promoted.
    pub fn close_replica(&self, database: &str, i: usize) {
        for (key, pool) in self.of(Some(database)) {
            if key.role == Target::Replica(i) {
                pool.manager()
                    .generation
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                pool.retain(|_, _| false);
            }
        }
    }

    /// Servers of `database` checked out now.
    pub fn in_use(&self, database: Option<&str>) -> usize {
        self.of(database)
            .iter()
            .map(|(_, p)| {
                let s = p.status();
                s.size.saturating_sub(s.available)
            })
            .sum()
    }
}

/// A server connection checked out of its pool.
pub struct Checkout {
    obj: Option<Object<ServerManager>>,
}

fn pool_error(pool: &ServerPool, database: &str, e: PoolError<crate::error::ServerError>) -> Error {
    match e {
        PoolError::Timeout(TimeoutType::Wait) => Error::refuse(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "query_wait_timeout: no server connection for database \"{database}\" became free in time (pool size {})",
                pool.status().max_size
            ),
        ),
        PoolError::Timeout(_) => Error::refuse(
            sqlstate::UNABLE_TO_CONNECT,
            format!("timed out connecting to the server for database \"{database}\""),
        ),
        PoolError::Backend(e) => {
            let (code, msg) = e.client_message();
            Error::refuse(code, format!("{msg} (database \"{database}\")"))
        }
        e => Error::refuse(
            sqlstate::CONNECTION_FAILURE,
            format!("pool for database \"{database}\": {e}"),
        ),
    }
}

impl Checkout {
    /// Waits for a server. With a reserve pool, a client that waited
    /// reserve_pool_timeout lets the pool grow by reserve_pool_size.
    pub async fn get(pool: &ServerPool, database: &str) -> Result<Self, Error> {
        let m = pool.manager();
        // Fast path: a free permit means nobody is queued (tokio's semaphore
        // hands released permits to waiters first), so taking it is fair and
        // needs neither a timer nor a place in the waiter list. With clients
        // already waiting it would fail: straight to the line.
        if !m.stats.anyone_waiting() && !m.pauses.is_paused(&m.database) {
            let now = Timeouts {
                wait: Some(Duration::ZERO),
                ..pool.timeouts()
            };
            match pool.timeout_get(&now).await {
                Ok(obj) => {
                    m.stats.waited_none();
                    return Ok(Self { obj: Some(obj) });
                }
                Err(PoolError::Timeout(TimeoutType::Wait)) => {}
                Err(e) => return Err(pool_error(pool, database, e)),
            }
        }
        // Boxed: the wait takes no room in the future of a checkout that
        // needs none (each transaction allocates that future).
        Box::pin(Self::wait(pool, database)).await
    }

    /// `get` when no server is free at once: waits in line, growing the pool
    /// by its reserve once a client has waited reserve_pool_timeout.
    async fn wait(pool: &ServerPool, database: &str) -> Result<Self, Error> {
        let m = pool.manager();
        let waiting = m.stats.waiting();
        // query_wait_timeout counts from the end of a PAUSE.
        let paused = m.pauses.is_paused(&m.database);
        let started = if paused {
            m.pauses.wait(&m.database).await;
            Instant::now()
        } else {
            waiting.since
        };
        let wait = pool.timeouts().wait.unwrap_or(Duration::ZERO);
        let reserve = m.reserve_size > 0 && m.reserve_timeout < wait;
        if reserve {
            let t = Timeouts {
                wait: Some(m.reserve_timeout),
                ..pool.timeouts()
            };
            match pool.timeout_get(&t).await {
                Ok(obj) => return Ok(Self { obj: Some(obj) }),
                Err(PoolError::Timeout(TimeoutType::Wait)) => {
                    if pool.status().max_size < m.base() + m.reserve_size {
                        tracing::info!(
                            database,
                            "clients waited reserve_pool_timeout: opening the reserve pool"
                        );
                        pool.resize(m.base() + m.reserve_size);
                    }
                }
                Err(e) => return Err(pool_error(pool, database, e)),
            }
        }
        // Without a PAUSE or a reserve wait, the wait has only just begun:
        // no clock read for what is left of it.
        let left = match reserve || paused {
            true => wait.saturating_sub(started.elapsed()),
            false => wait,
        };
        let t = Timeouts {
            wait: Some(left),
            ..pool.timeouts()
        };
        match pool.timeout_get(&t).await {
            Ok(obj) => Ok(Self { obj: Some(obj) }),
            Err(e) => Err(pool_error(pool, database, e)),
        }
    }

    pub fn server(&mut self) -> &mut ServerConn {
        // `obj` is None only after release/discard, which consume self.
        self.obj.as_mut().expect("checkout holds a server")
    }

    /// Returns a clean server to its pool. The caller has reset it. (Its
    /// idle_since is the time of its last ReadyForQuery, already read.)
    pub fn release(mut self) {
        match self.obj.take() {
            // After a RECONNECT: closed now, so an idle server of an old
            // generation never lingers (DROP DATABASE waits for none).
            Some(o) if o.is_stale() => drop(Object::take(o)),
            o => drop(o),
        }
    }

    /// Closes the server connection instead of returning it.
    pub fn discard(mut self) {
        if let Some(o) = self.obj.take() {
            drop(Object::take(o));
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(o) = self.obj.take() {
            tracing::debug!("server checkout dropped without release: discarding");
            drop(Object::take(o));
        }
    }
}
