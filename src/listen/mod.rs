//! LISTEN/NOTIFY in transaction pooling without pinning: one listener
//! connection per (database, user) pool LISTENs to the union of the
//! channels its clients listen to, and passes each notification to the
//! clients listening on its channel (their `Mailbox`, emptied by their
//! session between transactions).
//!
//! A client's LISTEN still runs on its own server (it gets PostgreSQL's
//! answer, errors included), which sluice UNLISTENs before the server goes
//! back; before that, the listener is made to listen (`Hub::want`), so no
//! notification committed after the client's LISTEN is missed. The client's
//! set changes when its transaction commits, as PostgreSQL's does.

pub mod mailbox;
pub mod senders;
mod task;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};

pub use mailbox::{Closed, Mailbox};

use crate::clients::ClientEntry;
use crate::server::ServerTarget;
use crate::signal::Signal;

/// Every pool's hub, by pool.
#[derive(Default)]
pub struct Listens {
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
}

impl Listens {
    /// The hub of the pool of `database` and `user` (made on first use; its
    /// listener connects only once a client listens).
    pub fn hub(
        self: &Arc<Self>,
        database: &str,
        user: &str,
        target: &ServerTarget,
        backlog: usize,
    ) -> Arc<Hub> {
        let key = format!("{database}/{user}");
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = hubs.get(&key) {
            // The pool's login as it is now (a reload, a SCRAM key learnt
            // from a client): the next LISTEN connection uses it.
            *h.target.lock().unwrap_or_else(|p| p.into_inner()) = target.clone();
            return h.clone();
        }
        let hub = Arc::new(Hub {
            database: database.to_string(),
            user: user.to_string(),
            target: Mutex::new(target.clone()),
            backlog,
            counters: self.clone(),
            state: Mutex::default(),
            poke: tokio::sync::Notify::new(),
        });
        hubs.insert(key, hub.clone());
        hub
    }

    pub fn all(&self) -> Vec<Arc<Hub>> {
        let hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.values().cloned().collect()
    }
}

/// One pool's listener and its clients.
pub struct Hub {
    pub database: String,
    pub user: String,
    target: Mutex<ServerTarget>,
    /// Bytes of notifications a client may have waiting.
    backlog: usize,
    counters: Arc<Listens>,
    state: Mutex<State>,
    /// Wakes the listener task: what it should listen to changed.
    poke: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// Clients that listen, by channel (their committed LISTENs).
    clients: HashMap<String, HashMap<u64, Arc<ClientEntry>>>,
    /// Channels the listener should listen to, with how many clients want
    /// each (listening, or about to).
    wanted: HashMap<String, usize>,
    /// Channels the listener listens to now.
    listening: BTreeSet<String>,
    /// Clients waiting for a channel to be listened to.
    waiters: Vec<(String, tokio::sync::oneshot::Sender<()>)>,
    /// Whether the listener task runs.
    running: bool,
    senders: senders::Senders,
}

impl Hub {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client is about to LISTEN on `channel`: the listener listens to it
    /// too. The receiver completes once it does.
    pub fn want(self: &Arc<Self>, channel: &str) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut s = self.state();
        *s.wanted.entry(channel.to_string()).or_default() += 1;
        if s.listening.contains(channel) {
            let _ = tx.send(());
        } else {
            s.waiters.push((channel.to_string(), tx));
        }
        if !std::mem::replace(&mut s.running, true) {
            tokio::spawn(task::run(self.clone()));
        }
        drop(s);
        self.poke.notify_one();
        rx
    }

    /// A client no longer wants `channel` (its LISTEN rolled back, or it
    /// stopped listening).
    pub fn unwant(&self, channel: &str) {
        let mut s = self.state();
        if let Some(n) = s.wanted.get_mut(channel) {
            *n -= 1;
            if *n == 0 {
                s.wanted.remove(channel);
            }
        }
        drop(s);
        self.poke.notify_one();
    }

    /// The client's LISTEN committed: it gets the channel's notifications.
    pub fn subscribe(&self, channel: &str, client: &Arc<ClientEntry>) {
        let mut s = self.state();
        let c = s.clients.entry(channel.to_string()).or_default();
        c.insert(client.id, client.clone());
    }

    /// The client's UNLISTEN committed (or it left).
    pub fn unsubscribe(&self, channel: &str, client: u64) {
        let mut s = self.state();
        if let Some(c) = s.clients.get_mut(channel) {
            c.remove(&client);
            if c.is_empty() {
                s.clients.remove(channel);
            }
        }
    }

    /// A client's transaction that may notify runs on the server `pid`:
    /// its notifications wait for the marker that names the client.
    /// Whether anyone listens (only then is a marker sent).
    pub fn expect_marker(&self, pid: i32) -> bool {
        let mut s = self.state();
        if s.clients.is_empty() {
            return false;
        }
        s.senders.expect(pid, std::time::Instant::now());
        true
    }

    /// (listening clients, channels) for the console and metrics.
    pub fn counts(&self) -> (usize, usize) {
        let s = self.state();
        let clients: BTreeSet<u64> = s.clients.values().flat_map(|c| c.keys().copied()).collect();
        (clients.len(), s.clients.len())
    }

    /// Passes notifications to the clients listening on their channels.
    fn deliver(&self, ready: Vec<senders::Notification>) {
        if ready.is_empty() {
            return;
        }
        let s = self.state();
        for n in ready {
            let Some(clients) = s.clients.get(&n.channel) else {
                continue;
            };
            let frame = notification_frame(&n);
            for c in clients.values() {
                if c.mail.push(frame.clone(), self.backlog) {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                c.signals.raise(Signal::Mail);
            }
        }
    }

    /// The listener connection was lost: every listening client is told
    /// (its session ends), since notifications may have been missed.
    fn lost(&self) {
        let mut s = self.state();
        s.listening.clear();
        for clients in s.clients.values() {
            for c in clients.values() {
                c.mail.close(Closed::ListenerLost);
                c.signals.raise(Signal::Mail);
            }
        }
        s.clients.clear();
    }
}

/// A NotificationResponse.
fn notification_frame(n: &senders::Notification) -> bytes::Bytes {
    let mut out = BytesMut::with_capacity(n.channel.len() + n.payload.len() + 16);
    crate::protocol::build::typed(&mut out, b'A', |b| {
        b.put_i32(n.pid);
        for s in [&n.channel, &n.payload] {
            b.put_slice(s.as_bytes());
            b.put_u8(0);
        }
    });
    out.freeze()
}

/// A channel name as an SQL identifier (LISTEN "name").
pub fn quote(channel: &str) -> String {
    format!("\"{}\"", channel.replace('"', "\"\""))
}
