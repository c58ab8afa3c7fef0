//! deadpool's Manager for server connections. `recycle` runs at checkout on
//! the client's path, so it makes no round trip: it only rejects connections
//! that are dirty, dead or too old. Reset happens before check-in.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{Manager, Metrics, RecycleError, RecycleResult};
use tokio::sync::Semaphore;

use crate::error::ServerError;
use crate::server::{ServerConn, ServerTarget};

/// A cap on server connections shared by several pools.
#[derive(Debug, Clone)]
pub struct Limit {
    pub semaphore: Arc<Semaphore>,
    /// e.g. `max_db_connections (10) for database "app"`.
    pub what: String,
}

#[derive(Debug)]
pub struct ServerManager {
    pub target: ServerTarget,
    pub lifetime: Duration,
    /// max_db_connections / max_user_connections, when set.
    pub limits: Vec<Limit>,
    /// How long a new connection may wait for a limit (query_wait_timeout).
    pub limit_wait: Duration,
    /// pool_size, and the reserve it may grow by.
    pub base_size: std::sync::atomic::AtomicUsize,
    pub reserve_size: usize,
    pub reserve_timeout: Duration,
    /// Statements known to parse on this pool's servers (transaction pooling).
    pub known: Arc<crate::session::statements::KnownStatements>,
    pub stats: Arc<super::stats::PoolStats>,
    /// The client-facing database name (PAUSE, KILL, RECONNECT act on it).
    /// Its clients share it, and the user name, rather than each keeping
    /// a copy.
    pub database: Arc<str>,
    pub user: Arc<str>,
    pub pauses: Arc<super::Pauses>,
    /// RECONNECT bumps it: servers from an older generation are closed
    /// when next checked out or returned.
    /// Shared with its servers, which check it when returned.
    pub generation: Arc<std::sync::atomic::AtomicU64>,
    /// The parameters its servers log in with, and what client logins
    /// led to (transaction pooling answers repeated ones from it).
    pub logins: super::welcome::LoginMemory,
}

impl ServerManager {
    /// The pool's configured size, without any reserve.
    pub fn base(&self) -> usize {
        self.base_size.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Manager for ServerManager {
    /// Boxed, so that a checkout (moved at every checkout, and kept in each
    /// client's state) is a pointer rather than the whole connection.
    type Type = Box<ServerConn>;
    type Error = ServerError;

    async fn create(&self) -> Result<Box<ServerConn>, ServerError> {
        // Boxed: deadpool's checkout future embeds this one, and every
        // checkout would otherwise move a multi-KB login state machine.
        Box::pin(self.open()).await.map(Box::new)
    }

    async fn recycle(
        &self,
        conn: &mut Box<ServerConn>,
        _m: &Metrics,
    ) -> RecycleResult<ServerError> {
        self.check_reusable(conn)
    }
}

impl ServerManager {
    async fn open(&self) -> Result<ServerConn, ServerError> {
        let mut permits = Vec::with_capacity(self.limits.len());
        for l in &self.limits {
            match tokio::time::timeout(self.limit_wait, l.semaphore.clone().acquire_owned()).await {
                Ok(Ok(p)) => permits.push(p),
                _ => {
                    return Err(ServerError::Limit {
                        what: l.what.clone(),
                    });
                }
            }
        }
        let conn = ServerConn::connect(&self.target).await.map(|mut c| {
            c.initial_params = self.logins.share(c.initial_params);
            c.params = c.initial_params.clone();
            c.permits = permits;
            c.stats = Some(self.stats.clone());
            c.generation = self.generation.load(std::sync::atomic::Ordering::Relaxed);
            c.pool_generation = Some(self.generation.clone());
            c
        });
        match &conn {
            Ok(c) => tracing::debug!(server = %c.addr, pid = c.pid(), "server connection opened"),
            Err(e) => tracing::warn!(error = %e, "server connection failed"),
        }
        conn
    }

    fn check_reusable(&self, conn: &mut ServerConn) -> RecycleResult<ServerError> {
        if !conn.state.is_idle() {
            return Err(RecycleError::message(
                "server was returned in an unknown state",
            ));
        }
        if conn.is_dead() {
            return Err(RecycleError::message("server connection closed while idle"));
        }
        if conn.is_stale() {
            return Err(RecycleError::message("RECONNECT: closing an older server"));
        }
        // Its age when it last finished a request, so that checkout reads
        // no clock; the janitor closes idle servers that aged since.
        if !self.lifetime.is_zero()
            && conn.idle_since.saturating_duration_since(conn.created) > self.lifetime
        {
            return Err(RecycleError::message("server_lifetime reached"));
        }
        Ok(())
    }
}
