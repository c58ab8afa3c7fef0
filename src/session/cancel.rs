//! Cancel keys: the (pid, secret) sluice gave each client, mapped to a slot
//! naming the server that is running that client's work right now (none
//! while a transaction-pooled client holds no server).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::HostPort;
use crate::protocol::build;

/// Where a cancel for one client must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub addr: HostPort,
    pub pid: i32,
    pub secret: i32,
}

/// The client's current target; the session updates it at checkout and release.
#[derive(Debug, Default)]
pub struct CancelSlot(Mutex<Slot>);

/// The last target is kept while disarmed, so that arming it again for a
/// server at the same address (every transaction, in transaction pooling)
/// copies no address.
#[derive(Debug, Default)]
struct Slot {
    target: Option<CancelTarget>,
    armed: bool,
}

impl CancelSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancels now go to backend `pid` at `addr`.
    pub fn arm(&self, addr: &HostPort, pid: i32, secret: i32) {
        let mut slot = self.lock();
        match &mut slot.target {
            Some(t) if t.addr == *addr => {
                t.pid = pid;
                t.secret = secret;
            }
            other => {
                *other = Some(CancelTarget {
                    addr: addr.clone(),
                    pid,
                    secret,
                })
            }
        }
        slot.armed = true;
    }

    /// No query runs: cancels are ignored.
    pub fn disarm(&self) {
        self.lock().armed = false;
    }

    fn get(&self) -> Option<CancelTarget> {
        let slot = self.lock();
        slot.target.clone().filter(|_| slot.armed)
    }
}

/// A client's cancel key (its BackendKeyData), registered while this lives.
#[derive(Debug)]
pub struct CancelKey<'a> {
    registry: &'a CancelRegistry,
    pub pid: i32,
    pub secret: i32,
    /// Where cancels for this key go, armed while a query runs.
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelKey<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&(self.pid, self.secret));
    }
}

#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), Arc<CancelSlot>>>,
    /// This instance's peer id, written into every secret it hands out
    /// (0: none). Set at start.
    pub peer_id: u16,
    /// Cancel requests this instance could not serve, passed to peers.
    pub forwarding: super::peer_cancel::Forwarding,
}

impl CancelRegistry {
    /// A registry whose secrets carry `peer_id` (0: none).
    pub fn for_peer(peer_id: u16) -> Self {
        Self {
            peer_id,
            ..Self::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), Arc<CancelSlot>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a client under `pid` with a fresh random secret, until
    /// the returned key is dropped (also when its session is killed). Its
    /// slot starts disarmed.
    pub fn register(&self, pid: i32) -> CancelKey<'_> {
        loop {
            let secret = super::peer_cancel::with_peer(rand::random(), self.peer_id);
            if let Some(key) = self.claim(pid, secret) {
                return key;
            }
        }
    }

    /// Registers a client under the key another process gave it (handed
    /// over), or a fresh secret if that key is taken here.
    pub fn register_exact(&self, pid: i32, secret: i32) -> CancelKey<'_> {
        self.claim(pid, secret)
            .unwrap_or_else(|| self.register(pid))
    }

    /// The key (pid, secret) for a new client, unless another has it.
    fn claim(&self, pid: i32, secret: i32) -> Option<CancelKey<'_>> {
        let mut map = self.lock();
        let std::collections::hash_map::Entry::Vacant(e) = map.entry((pid, secret)) else {
            return None;
        };
        let slot = Arc::new(CancelSlot::default());
        e.insert(slot.clone());
        Some(CancelKey {
            registry: self,
            pid,
            secret,
            slot,
        })
    }

    /// Whether no key is registered (no pooled session is open).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let slot = self.lock().get(&(pid, secret)).cloned()?;
        slot.get()
    }

    /// Forwards a client's CancelRequest to its server; false when the key
    /// names no running query here. Unknown keys, and clients that hold no
    /// server, are ignored, as PostgreSQL ignores unknown keys, so a late
    /// or forged cancel harms nobody.
    pub async fn cancel(
        &self,
        pid: i32,
        secret: i32,
        connect_timeout: std::time::Duration,
    ) -> bool {
        let Some(t) = self.lookup(pid, secret) else {
            return false;
        };
        send(&t, connect_timeout).await;
        true
    }

    /// Whether the key belongs to a client of this instance (running a
    /// query or not).
    pub fn knows(&self, pid: i32, secret: i32) -> bool {
        self.lock().contains_key(&(pid, secret))
    }
}

/// Sends a CancelRequest for `t` to its server (within `connect_timeout`).
pub async fn send(t: &CancelTarget, connect_timeout: std::time::Duration) {
    let send = async {
        let mut s = TcpStream::connect((t.addr.host.as_str(), t.addr.port)).await?;
        let mut out = BytesMut::new();
        build::cancel_request(&mut out, t.pid, t.secret);
        s.write_all(&out).await?;
        s.shutdown().await
    };
    match tokio::time::timeout(connect_timeout, send).await {
        Ok(Ok(())) => tracing::debug!(server = %t.addr, pid = t.pid, "cancel forwarded"),
        Ok(Err(e)) => {
            tracing::warn!(server = %t.addr, error = %e, "cancel could not be forwarded")
        }
        Err(_) => tracing::warn!(server = %t.addr, "cancel timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_exact_follow_the_slot_and_are_removed_on_logout() {
        let r = CancelRegistry::default();
        let t = CancelTarget {
            addr: HostPort {
                host: "h".into(),
                port: 1,
            },
            pid: 7,
            secret: 8,
        };
        let key = r.register(7);
        let (s, slot) = (key.secret, key.slot.clone());
        assert_eq!(r.lookup(7, s), None, "disarmed at first");
        slot.arm(&t.addr, t.pid, t.secret);
        assert_eq!(r.lookup(7, s), Some(t.clone()));
        assert_eq!(r.lookup(7, s.wrapping_add(1)), None);
        slot.disarm();
        assert_eq!(r.lookup(7, s), None);
        slot.arm(&t.addr, 9, 10);
        let moved = CancelTarget {
            pid: 9,
            secret: 10,
            ..t.clone()
        };
        assert_eq!(r.lookup(7, s), Some(moved));
        drop(key);
        assert_eq!(r.lookup(7, s), None, "the key is gone with its session");
        assert!(r.lock().is_empty());
    }
}
