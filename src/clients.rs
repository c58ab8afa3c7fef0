//! Every connected client, for SHOW CLIENTS / SHOW SERVERS and for the
//! console's KILL. A session registers when it starts and is removed when
//! its `Registered` guard drops; it updates its own state with atomics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::signal::{Signal, Signals};

/// What a client is doing, as SHOW CLIENTS says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    Login = 0,
    /// Holds no server and wants none.
    Idle = 1,
    /// Waiting for a server.
    Waiting = 2,
    /// Holds a server.
    Active = 3,
}

impl ClientState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Idle => "idle",
            Self::Waiting => "waiting",
            Self::Active => "active",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Idle,
            2 => Self::Waiting,
            3 => Self::Active,
            _ => Self::Login,
        }
    }
}

/// Who the client is, known once it logged in.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub user: Arc<str>,
    pub database: Arc<str>,
    pub application_name: String,
}

#[derive(Debug)]
pub struct ClientEntry {
    pub id: u64,
    pub addr: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub connect_time: SystemTime,
    pub tls: std::sync::atomic::AtomicBool,
    identity: Mutex<Identity>,
    state: AtomicU8,
    /// Unix microseconds of the client's last request.
    request_time: AtomicU64,
    /// Unix microseconds since the client started waiting for a server.
    wait_since: AtomicU64,
    /// The server it holds: pid (0: none) and its role ("primary"/"replica").
    server_pid: AtomicI32,
    pub server_addr: Mutex<String>,
    /// KILL and graceful shutdown, for the session to act on. Inline: one
    /// allocation less per client.
    pub signals: Signals,
    /// Notifications for the session to pass on (LISTEN in transaction
    /// pooling).
    pub mail: crate::listen::Mailbox,
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl ClientEntry {
    pub fn identity(&self) -> Identity {
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn logged_in(&self, id: Identity) {
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = id;
        self.set_state(ClientState::Idle);
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn set_state(&self, s: ClientState) {
        match s {
            ClientState::Waiting => {
                let now = unix_us(SystemTime::now());
                self.wait_since.store(now, Ordering::Relaxed);
                self.request_time.store(now, Ordering::Relaxed);
            }
            ClientState::Active | ClientState::Idle | ClientState::Login => {
                self.wait_since.store(0, Ordering::Relaxed);
            }
        }
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// The server now held (pid 0: none).
    pub fn hold(&self, pid: i32, addr: &str) {
        self.server_pid.store(pid, Ordering::Relaxed);
        if pid != 0 {
            let mut a = self.server_addr.lock().unwrap_or_else(|p| p.into_inner());
            if *a != addr {
                *a = addr.to_string();
            }
        }
    }

    pub fn server_pid(&self) -> i32 {
        self.server_pid.load(Ordering::Relaxed)
    }

    pub fn request_time(&self) -> u64 {
        self.request_time.load(Ordering::Relaxed)
    }

    /// Microseconds this client has been waiting for a server (0: not waiting).
    pub fn waited_us(&self) -> u64 {
        match self.wait_since.load(Ordering::Relaxed) {
            0 => 0,
            since => unix_us(SystemTime::now()).saturating_sub(since),
        }
    }
}

#[derive(Default)]
pub struct Clients {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    /// Set (under the map's lock) once a graceful shutdown starts.
    draining: AtomicBool,
}

/// Removes its client from the registry when dropped.
pub struct Registered {
    clients: Arc<Clients>,
    pub entry: Arc<ClientEntry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.clients
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.entry.id);
    }
}

impl Clients {
    pub fn register(
        self: &Arc<Self>,
        addr: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ClientEntry {
            id,
            addr,
            local,
            connect_time: SystemTime::now(),
            tls: Default::default(),
            identity: Mutex::default(),
            state: AtomicU8::new(ClientState::Login as u8),
            request_time: AtomicU64::new(unix_us(SystemTime::now())),
            wait_since: AtomicU64::new(0),
            server_pid: AtomicI32::new(0),
            server_addr: Mutex::default(),
            signals: Signals::default(),
            mail: crate::listen::Mailbox::default(),
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(id, entry.clone());
        // A client that arrives as the shutdown starts still hears of it.
        if self.draining.load(Ordering::Relaxed) {
            entry.signals.raise(Signal::Drain);
        }
        drop(map);
        Registered {
            clients: self.clone(),
            entry,
        }
    }

    /// Every client, oldest first.
    pub fn all(&self) -> Vec<Arc<ClientEntry>> {
        let mut v: Vec<_> = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Ends every session of `database` at once (the console's KILL).
    pub fn kill_database(&self, database: &str) -> usize {
        let mut n = 0;
        for c in self.all() {
            if &*c.identity().database == database {
                c.signals.raise(Signal::Kill);
                n += 1;
            }
        }
        n
    }

    /// A graceful shutdown starts: every session, and any that registers
    /// from now on, ends at its next boundary.
    pub fn drain_all(&self) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        self.draining.store(true, Ordering::Relaxed);
        for c in map.values() {
            c.signals.raise(Signal::Drain);
        }
    }
}

/// Formats Unix microseconds as PgBouncer shows times: "2026-11-27 22:38:14 UTC".
pub fn timestamp(us: u64) -> String {
    let secs = us / 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn unix_micros(t: SystemTime) -> u64 {
    unix_us(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_like_pgbouncer() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(1_795_732_694_000_000), "2026-11-26 22:38:14 UTC");
        assert_eq!(timestamp(951_782_400_000_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn registry_tracks_and_kills_by_database() {
        let c = Arc::new(Clients::default());
        let a = c.register(None, None);
        let b = c.register(None, None);
        a.entry.logged_in(Identity {
            user: "u".into(),
            database: "app".into(),
            application_name: String::new(),
        });
        assert_eq!(a.entry.state(), ClientState::Idle);
        assert_eq!(c.all().len(), 2);
        assert_eq!(c.kill_database("app"), 1);
        assert!(a.entry.signals.is_raised(Signal::Kill));
        assert!(!b.entry.signals.is_raised(Signal::Kill));
        drop(a);
        assert_eq!(c.all().len(), 1);
    }

    #[test]
    fn a_shutdown_reaches_present_and_later_clients() {
        let c = Arc::new(Clients::default());
        let before = c.register(None, None);
        c.drain_all();
        let after = c.register(None, None);
        assert!(before.entry.signals.is_raised(Signal::Drain));
        assert!(after.entry.signals.is_raised(Signal::Drain));
        assert!(!after.entry.signals.is_raised(Signal::Kill));
    }
}
