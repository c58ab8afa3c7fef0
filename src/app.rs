//! The testable entry point: `run` serves clients on a listener with a
//! config until `shutdown` resolves. Everything an instance needs lives in
//! `Shared`, created here, so many instances can run in one process.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::pool::PoolSet;
use crate::session::{self, cancel::CancelRegistry};

/// State shared by every session of one sluice instance.
pub struct Shared {
    config: ArcSwap<Config>,
    pub pools: PoolSet,
    /// Every connected client (SHOW CLIENTS, KILL).
    pub registry: Arc<crate::clients::Clients>,
    /// Read/write routing: classifier and replica state per database.
    pub routes: crate::route::Routes,
    /// LISTEN hubs of transaction-pooled pools.
    pub listens: Arc<crate::listen::Listens>,
    /// Result caches of databases with cache rules.
    pub caches: crate::cache::live::Caches,
    pub cancels: CancelRegistry,
    /// One permit per connected client (max_client_conn).
    pub clients: Arc<Semaphore>,
    /// Console places past max_client_conn for operators
    /// (admin_reserved_connections).
    pub operator_clients: Arc<Semaphore>,
    pub stats: Arc<crate::stats::Stats>,
    pub client_counts: Arc<crate::admission::ClientCounts>,
    pub auth_throttle: crate::admission::AuthThrottle,
    pub auth_cache: crate::auth::query::AuthCache,
    pub connect_rate: crate::admission::ConnectRate,
    /// True once a graceful shutdown started: sessions end at their next idle moment.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// The file RELOAD re-reads, when sluice was started from one.
    pub config_path: std::sync::Mutex<Option<std::path::PathBuf>>,
    /// The admin console's SHUTDOWN: a graceful drain, as SIGTERM.
    pub shutdown_request: tokio::sync::Notify,
    /// A new process taking this one's clients over (`takeover_socket`).
    pub takeover: crate::takeover::give::Giving,
    /// Every client session, accepted or handed over: a drain waits for them.
    pub sessions: tokio_util::task::TaskTracker,
}

/// How to stop: let clients finish their transactions, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Stop accepting; close each client when it is between transactions
    /// (up to shutdown_timeout).
    Graceful,
    /// Stop now.
    Immediate,
}

/// Gives a client-count semaphore `now` permits instead of `was`.
fn resize(places: &Arc<Semaphore>, was: usize, now: usize) {
    if now > was {
        places.add_permits(now - was);
    } else if was > now {
        // Permits in use are taken back as clients leave.
        let places = places.clone();
        tokio::spawn(async move {
            if let Ok(p) = places.acquire_many_owned((was - now) as u32).await {
                p.forget();
            }
        });
    }
}

impl Shared {
    pub fn new(config: Config) -> Self {
        let max = config.general.max_client_conn;
        let operators = config.general.admin_reserved_connections;
        let peer_id = config.peering.id;
        Self {
            config: ArcSwap::from_pointee(config),
            pools: PoolSet::default(),
            routes: crate::route::Routes::default(),
            listens: Arc::default(),
            caches: Default::default(),
            registry: Arc::default(),
            cancels: CancelRegistry::for_peer(peer_id),
            takeover: Default::default(),
            sessions: tokio_util::task::TaskTracker::new(),
            clients: Arc::new(Semaphore::new(max)),
            operator_clients: Arc::new(Semaphore::new(operators)),
            stats: Arc::default(),
            client_counts: Arc::default(),
            auth_throttle: Default::default(),
            auth_cache: Default::default(),
            connect_rate: Default::default(),
            draining: tokio::sync::watch::channel(false).0,
            config_path: std::sync::Mutex::new(None),
            shutdown_request: tokio::sync::Notify::new(),
        }
    }

    /// Switches to `new`: later logins and checkouts use it; connected
    /// clients stay. TLS certificates and keys come from the new config, so
    /// they are re-read. listen_addr cannot change without a restart.
    pub fn reload(&self, new: Config) {
        let old = self.config();
        let (g, h) = (&old.general, &new.general);
        resize(&self.clients, g.max_client_conn, h.max_client_conn);
        resize(
            &self.operator_clients,
            g.admin_reserved_connections,
            h.admin_reserved_connections,
        );
        if old.general.worker_threads != new.general.worker_threads {
            tracing::warn!("worker_threads changes only at restart");
        }
        self.pools.reload(&old, &new);
        self.routes.apply(&new);
        self.caches.apply(&new);
        self.config.store(Arc::new(new));
        tracing::info!("configuration reloaded");
    }

    /// The current configuration snapshot.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }
}

/// Accepts clients until `shutdown` completes. Sessions already running are
/// left to finish on the runtime.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = Drain> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, Arc::new(Shared::new(config)), shutdown).await
}

/// `run` with state the caller keeps a handle on (tests read its stats).
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = Drain> + Send + 'static,
) -> std::io::Result<()> {
    tokio::spawn(janitor(Arc::downgrade(&shared)));
    shared.routes.apply(&shared.config());
    shared.caches.apply(&shared.config());
    // The accept loop polls every branch each time it wakes. `shutdown` (OS
    // signal streams) costs ~550 instructions a poll, so it is awaited in a
    // task of its own that reports through a oneshot, which is cheap to poll.
    let (tx, mut signalled) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(async move {
        let _ = tx.send(shutdown.await);
    });
    let _watcher = AbortOnDrop(watcher);
    let requested = shared.shutdown_request.notified();
    tokio::pin!(requested);
    tracing::info!(addr = %listener.local_addr()?, "sluice listening");
    let sessions = shared.sessions.clone();
    loop {
        tokio::select! {
            how = &mut signalled => {
                drop(listener);
                let how = how.unwrap_or(Drain::Immediate);
                return drain(&shared, &sessions, how).await;
            }
            _ = &mut requested => {
                drop(listener);
                return drain(&shared, &sessions, Drain::Graceful).await;
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    sessions.spawn(session::run(tcp, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Aborts a helper task when its owner ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stops: with `Drain::Graceful`, sessions end between transactions and
/// this waits for them, up to shutdown_timeout.
async fn drain(
    shared: &Shared,
    sessions: &tokio_util::task::TaskTracker,
    how: Drain,
) -> std::io::Result<()> {
    sessions.close();
    if how == Drain::Immediate {
        tracing::info!(clients = sessions.len(), "shutting down now");
        return Ok(());
    }
    // send_replace: send would not store it while no session subscribes.
    shared.draining.send_replace(true);
    shared.registry.drain_all();
    let limit = shared.config().general.shutdown_timeout;
    tracing::info!(
        clients = sessions.len(),
        ?limit,
        "shutting down: waiting for clients to finish their transactions"
    );
    match tokio::time::timeout(limit, sessions.wait()).await {
        Ok(()) => tracing::info!("all clients done"),
        Err(_) => tracing::warn!(
            clients = sessions.len(),
            "shutdown_timeout reached: closing the rest"
        ),
    }
    // A takeover's last clients reach the new process before this exits.
    if shared.takeover.active() {
        shared.takeover.finish().await;
    }
    Ok(())
}

/// Periodic pool upkeep: keeps min_pool_size connections open, and closes
/// the servers of replicas the monitor found promoted.
async fn janitor(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let config = shared.config();
        for t in shared.routes.all() {
            for i in t.take_promoted() {
                shared.pools.close_replica(&t.database, i);
            }
        }
        shared.pools.maintain(&config).await;
    }
}
