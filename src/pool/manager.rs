//! deadpool's Manager for server connections. `recycle` runs at checkout on
//! the client's path, so it makes no round trip: it only rejects connections
//! that are dirty, dead or too old. Reset happens before check-in.

use std::time::Duration;

use deadpool::managed::{Manager, Metrics, RecycleError, RecycleResult};

use crate::error::ServerError;
use crate::server::{ServerConn, ServerTarget};

#[derive(Debug)]
pub struct ServerManager {
    pub target: ServerTarget,
    pub lifetime: Duration,
}

impl Manager for ServerManager {
    type Type = ServerConn;
    type Error = ServerError;

    async fn create(&self) -> Result<ServerConn, ServerError> {
        let conn = ServerConn::connect(&self.target).await;
        match &conn {
            Ok(c) => tracing::debug!(server = %c.addr, pid = c.pid(), "server connection opened"),
            Err(e) => tracing::warn!(error = %e, "server connection failed"),
        }
        conn
    }

    async fn recycle(&self, conn: &mut ServerConn, _m: &Metrics) -> RecycleResult<ServerError> {
        if !conn.state.is_idle() {
            return Err(RecycleError::message(
                "server was returned in an unknown state",
            ));
        }
        if conn.is_dead() {
            return Err(RecycleError::message("server connection closed while idle"));
        }
        if !self.lifetime.is_zero() && conn.created.elapsed() > self.lifetime {
            return Err(RecycleError::message("server_lifetime reached"));
        }
        Ok(())
    }
}
