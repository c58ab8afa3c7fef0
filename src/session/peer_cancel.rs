//! Cancel requests across sluice instances behind one load balancer: a
//! CancelRequest opens a new connection, which may land on an instance that
//! does not know the key. Each instance writes its `peer_id` into the
//! secrets it hands out (bits 17-30); an instance that gets a key it does
//! not know passes it to the peer the key names (`[peers]`), or to every
//! address `peers_dns` resolves to, as a PeerCancelRequest, which a peer
//! serves or drops but never passes on: forwarding cannot loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::app::Shared;
use crate::config::HostPort;
use crate::config::peering::Peering;
use crate::protocol::build;
use crate::protocol::startup::{self, StartupPacket};

const PEER_SHIFT: u32 = 17;
const PEER_MASK: u32 = 0x3fff << PEER_SHIFT;

/// At most this many cancel requests a second are passed to peers (random
/// keys from a scanner cost one connection each, not a storm).
pub const MAX_FORWARDS_PER_SECOND: u32 = 100;

/// `secret` with `peer` in its peer bits (unchanged when `peer` is 0).
pub fn with_peer(secret: i32, peer: u16) -> i32 {
    if peer == 0 {
        return secret;
    }
    let s = (secret as u32 & !PEER_MASK) | (u32::from(peer) << PEER_SHIFT);
    s as i32
}

/// The peer id a secret names.
pub fn peer_of(secret: i32) -> u16 {
    ((secret as u32 & PEER_MASK) >> PEER_SHIFT) as u16
}

/// Where a cancel request for a key this instance does not know goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The peer the key names.
    Peer(HostPort),
    /// Every address the name resolves to.
    Everyone(HostPort),
    /// Nowhere: no peering, the key names this instance, it came from a
    /// peer, or it names no peer known.
    Drop,
}

/// Pure: where a cancel request for a key this instance does not know
/// goes. With `peers_dns`, a key naming no other known peer (even this
/// one: instances that scale up and down may share an id, or have none)
/// goes to every address.
/// `own` is the id this instance writes into its keys (read at start).
pub fn route(peering: &Peering, own: u16, secret: i32, from_peer: bool) -> Route {
    if from_peer {
        return Route::Drop;
    }
    let peer = peer_of(secret);
    if own != 0
        && peer != own
        && let Some(addr) = peering.peers.get(&peer)
    {
        return Route::Peer(addr.clone());
    }
    match &peering.dns {
        Some(dns) => Route::Everyone(dns.clone()),
        None => Route::Drop,
    }
}

/// Counters of cancel requests, and the forwarding budget.
#[derive(Debug, Default)]
pub struct Forwarding {
    /// (start of the current second, forwards in it).
    window: Mutex<Option<(Instant, u32)>>,
    pub cancelled: AtomicU64,
    pub forwarded: AtomicU64,
    pub ignored: AtomicU64,
    pub rate_limited: AtomicU64,
    pub from_peers: AtomicU64,
}

impl Forwarding {
    /// One forward from this second's budget, if any is left.
    fn take(&self, now: Instant) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *w {
            Some((start, n)) if now.duration_since(*start) < Duration::from_secs(1) => {
                if *n >= MAX_FORWARDS_PER_SECOND {
                    return false;
                }
                *n += 1;
            }
            other => *other = Some((now, 1)),
        }
        true
    }

    fn count(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A CancelRequest (or, `from_peer`, a PeerCancelRequest) for (pid,
/// secret): to the query's server when the key is this instance's, else
/// passed on as `route` says.
pub async fn handle(shared: &Shared, pid: i32, secret: i32, from_peer: bool) {
    let config = shared.config();
    let timeout = config.general.server_connect_timeout;
    let f = &shared.cancels.forwarding;
    if from_peer {
        f.count(&f.from_peers);
    }
    if shared.cancels.cancel(pid, secret, timeout).await {
        f.count(&f.cancelled);
        return;
    }
    if shared.cancels.knows(pid, secret) {
        // Ours, with nothing running: as PostgreSQL, nothing to do.
        f.count(&f.ignored);
        return;
    }
    let to = match route(&config.peering, shared.cancels.peer_id, secret, from_peer) {
        Route::Drop => {
            tracing::debug!(pid, from_peer, "cancel request for no query here ignored");
            f.count(&f.ignored);
            return;
        }
        to => to,
    };
    if !f.take(Instant::now()) {
        f.count(&f.rate_limited);
        tracing::debug!(
            pid,
            "cancel request not passed on: over the forwarding budget"
        );
        return;
    }
    f.count(&f.forwarded);
    match to {
        Route::Peer(addr) => forward(&addr.host, addr.port, pid, secret, timeout).await,
        Route::Everyone(dns) => {
            let Ok(addrs) = tokio::net::lookup_host((dns.host.as_str(), dns.port)).await else {
                tracing::warn!(peers_dns = %dns, "peers_dns does not resolve: cancel request dropped");
                return;
            };
            let mut sends = tokio::task::JoinSet::new();
            for a in addrs {
                sends.spawn(async move {
                    forward(&a.ip().to_string(), a.port(), pid, secret, timeout).await;
                });
            }
            while sends.join_next().await.is_some() {}
        }
        Route::Drop => {}
    }
}

/// Serves `peer_listen_addr`, this instance's own address when processes
/// share `listen_addr` (so_reuseport): cancel requests only, a peer's or a
/// client's; anything else is closed.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors, say: not a busy loop.
                tracing::warn!(error = %e, "peer_listen_addr: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(one_request(tcp, shared.clone()));
    }
}

async fn one_request(mut tcp: TcpStream, shared: Arc<Shared>) {
    let timeout = shared.config().general.server_connect_timeout;
    let mut packet = [0u8; 16];
    let Ok(Ok(_)) = tokio::time::timeout(timeout, tcp.read_exact(&mut packet)).await else {
        return;
    };
    if packet[..4] != 16u32.to_be_bytes() {
        return;
    }
    match startup::parse(&packet) {
        Ok(StartupPacket::Cancel { pid, secret }) => handle(&shared, pid, secret, false).await,
        Ok(StartupPacket::PeerCancel { pid, secret }) => handle(&shared, pid, secret, true).await,
        _ => tracing::debug!("peer_listen_addr takes cancel requests only"),
    }
}

/// Sends a PeerCancelRequest to a peer at `host:port`.
async fn forward(host: &str, port: u16, pid: i32, secret: i32, timeout: Duration) {
    let send = async {
        let mut s = TcpStream::connect((host, port)).await?;
        let mut out = BytesMut::with_capacity(16);
        build::peer_cancel_request(&mut out, pid, secret);
        s.write_all(&out).await?;
        s.shutdown().await
    };
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(())) => tracing::debug!(peer = %host, port, pid, "cancel request passed to a peer"),
        Ok(Err(e)) => {
            tracing::warn!(peer = %host, port, error = %e, "cancel request could not reach a peer")
        }
        Err(_) => tracing::warn!(peer = %host, port, "cancel request to a peer timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str) -> HostPort {
        HostPort {
            host: host.into(),
            port: 6432,
        }
    }

    #[test]
    fn a_secret_carries_its_peer_and_random_bits_elsewhere() {
        for (secret, peer) in [(0, 1), (-1, 16383), (0x1234_5678, 42), (i32::MIN, 7)] {
            let s = with_peer(secret, peer);
            assert_eq!(peer_of(s), peer);
            assert_eq!(s as u32 & !PEER_MASK, secret as u32 & !PEER_MASK);
        }
        assert_eq!(with_peer(12345, 0), 12345);
    }

    #[test]
    fn unknown_keys_go_to_the_peer_they_name_and_never_further() {
        let peering = Peering {
            id: 1,
            peers: [(1, hp("a")), (2, hp("b"))].into(),
            ..Peering::default()
        };
        assert_eq!(
            route(&peering, peering.id, with_peer(5, 2), false),
            Route::Peer(hp("b"))
        );
        assert_eq!(
            route(&peering, peering.id, with_peer(5, 2), true),
            Route::Drop,
            "from a peer"
        );
        assert_eq!(
            route(&peering, peering.id, with_peer(5, 1), false),
            Route::Drop,
            "ours"
        );
        assert_eq!(
            route(&peering, peering.id, with_peer(5, 9), false),
            Route::Drop,
            "no such peer"
        );
        let dns = Peering {
            dns: Some(hp("sluice-peers")),
            ..peering.clone()
        };
        let everyone = Route::Everyone(hp("sluice-peers"));
        assert_eq!(route(&dns, dns.id, with_peer(5, 9), false), everyone);
        assert_eq!(
            route(&dns, dns.id, with_peer(5, 1), false),
            everyone,
            "ids may repeat"
        );
        assert_eq!(
            route(&dns, dns.id, with_peer(5, 2), false),
            Route::Peer(hp("b"))
        );
        assert_eq!(route(&dns, dns.id, with_peer(5, 2), true), Route::Drop);
        let anonymous = Peering {
            dns: Some(hp("sluice-peers")),
            ..Peering::default()
        };
        assert_eq!(
            route(&anonymous, anonymous.id, 5, false),
            everyone,
            "no id needed"
        );
        assert_eq!(
            route(&Peering::default(), 0, 5, false),
            Route::Drop,
            "no peering"
        );
    }

    #[test]
    fn forwarding_has_a_budget_per_second() {
        let f = Forwarding::default();
        let now = Instant::now();
        let taken = (0..1000).filter(|_| f.take(now)).count();
        assert_eq!(taken, MAX_FORWARDS_PER_SECOND as usize);
        assert!(f.take(now + Duration::from_secs(1)));
    }
}
