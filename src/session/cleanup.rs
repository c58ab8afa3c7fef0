//! Handing a server back: settle what the client left unfinished, roll back
//! an open transaction, run server_reset_query, then release. Anything that
//! fails or takes too long discards the server instead.

use std::time::Duration;

use crate::pool::Checkout;
use crate::protocol::tags::TxnStatus;

/// How long cleanup may take before the server is discarded.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn check_in(mut checkout: Checkout, reset_query: &str) {
    let server = checkout.server();
    let clean = tokio::time::timeout(CLEANUP_TIMEOUT, async {
        // A Sync would commit the implicit transaction of a batch the client
        // never finished, so such a server is closed instead.
        if !server.state.at_boundary() {
            return Ok(false);
        }
        if server.state.txn() != TxnStatus::Idle {
            server.simple_query("ROLLBACK").await?;
        }
        if !reset_query.is_empty() {
            server.simple_query(reset_query).await?;
            let q = reset_query.to_ascii_lowercase();
            if q.starts_with("discard all") || q.starts_with("reset all") {
                server.extra.clear();
            }
            if q.starts_with("discard all") || q.starts_with("deallocate all") {
                server.statements.clear();
            }
        }
        Ok::<bool, crate::error::ServerError>(server.state.is_idle())
    })
    .await;
    match clean {
        Ok(Ok(true)) => checkout.release(),
        Ok(Ok(false)) => {
            tracing::debug!("server left mid-request: discarding");
            checkout.discard()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "server reset failed: discarding");
            checkout.discard()
        }
        Err(_) => {
            tracing::warn!("server reset timed out: discarding");
            checkout.discard()
        }
    }
}
