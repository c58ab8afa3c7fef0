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
    pub cancels: CancelRegistry,
    /// One permit per connected client (max_client_conn).
    pub clients: Arc<Semaphore>,
    pub stats: Arc<crate::stats::Stats>,
    pub client_counts: Arc<crate::admission::ClientCounts>,
    pub auth_throttle: crate::admission::AuthThrottle,
    pub auth_cache: crate::auth::query::AuthCache,
    pub connect_rate: crate::admission::ConnectRate,
}

impl Shared {
    pub fn new(config: Config) -> Self {
        let max = config.general.max_client_conn;
        Self {
            config: ArcSwap::from_pointee(config),
            pools: PoolSet::default(),
            cancels: CancelRegistry::default(),
            clients: Arc::new(Semaphore::new(max)),
            stats: Arc::default(),
            client_counts: Arc::default(),
            auth_throttle: Default::default(),
            auth_cache: Default::default(),
            connect_rate: Default::default(),
        }
    }

    /// Switches to `new`: later logins and checkouts use it; connected
    /// clients stay. TLS certificates and keys come from the new config, so
    /// they are re-read. listen_addr cannot change without a restart.
    pub fn reload(&self, new: Config) {
        let old = self.config();
        let (was, now) = (old.general.max_client_conn, new.general.max_client_conn);
        if now > was {
            self.clients.add_permits(now - was);
        } else if was > now {
            // Permits in use are taken back as clients leave.
            let clients = self.clients.clone();
            tokio::spawn(async move {
                if let Ok(p) = clients.acquire_many_owned((was - now) as u32).await {
                    p.forget();
                }
            });
        }
        self.pools.reload(&old, &new);
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
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve(listener, Arc::new(Shared::new(config)), shutdown).await
}

/// `run` with state the caller keeps a handle on (tests read its stats).
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::spawn(janitor(Arc::downgrade(&shared)));
    tokio::pin!(shutdown);
    tracing::info!(addr = %listener.local_addr()?, "sluice listening");
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    tokio::spawn(session::run(tcp, shared.clone()));
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

/// Periodic pool upkeep: keeps min_pool_size connections open.
async fn janitor(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let config = shared.config();
        shared.pools.maintain(&config).await;
    }
}
