//! The running process's side: `takeover_socket` waits for a new process;
//! when one asks, it gets the listening socket, this process drains as for
//! SIGTERM, and each transaction-pooled client that comes to rest is handed
//! over (`Giving::client`) instead of being closed.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::HELLO;
use super::fdmsg::send;
use super::moved::Moved;
use crate::app::Shared;

/// Clients on their way to the thread that sends them: a socket and state.
type Outbox = mpsc::Sender<(OwnedFd, Vec<u8>)>;

/// A takeover under way: clients go to the thread that sends them.
#[derive(Debug, Default)]
pub struct Giving {
    to_new: Mutex<Option<Outbox>>,
    sender: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Giving {
    /// Whether clients at rest are to be handed over rather than closed.
    pub fn active(&self) -> bool {
        self.lock_tx().is_some()
    }

    fn lock_tx(&self) -> std::sync::MutexGuard<'_, Option<Outbox>> {
        self.to_new.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a client over: a descriptor of its socket and its state.
    /// False when no takeover runs or the new process is gone.
    pub fn client(&self, socket: OwnedFd, moved: &Moved) -> bool {
        let state = moved.encode();
        let tx = self.lock_tx();
        tx.as_ref()
            .is_some_and(|tx| tx.send((socket, state)).is_ok())
    }

    /// No more clients: the new process is told once all of them went.
    /// Returns when it has been (without blocking the runtime's thread).
    pub async fn finish(&self) {
        self.lock_tx().take();
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = sender {
            while !t.is_finished() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let _ = t.join();
        }
    }
}

/// Listens on `path` (owner only) for the process that takes over; gives
/// it `listener` and starts handing clients over. A stale socket file is
/// replaced.
pub fn listen(path: &Path, listener: OwnedFd, shared: Arc<Shared>) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let socket = UnixListener::bind(path).map_err(|e| {
        io::Error::new(e.kind(), format!("takeover_socket {}: {e}", path.display()))
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("takeover".into())
        .spawn(move || {
            for conn in socket.incoming() {
                let Ok(conn) = conn else { continue };
                match give(conn, &listener, &shared) {
                    Ok(()) => return,
                    // A probe that connects and leaves: nothing to say.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                    Err(e) => tracing::warn!(socket = %path.display(), error = %e, "a takeover failed: still serving"),
                }
            }
        })?;
    Ok(())
}

/// One takeover: the listener, then every client handed over, then done.
fn give(mut conn: UnixStream, listener: &OwnedFd, shared: &Arc<Shared>) -> io::Result<()> {
    let mut hello = [0u8; 4];
    conn.read_exact(&mut hello)?;
    if &hello != HELLO {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a takeover request",
        ));
    }
    send(&conn, b'L', b"", Some(listener))?;
    tracing::info!("a new process takes over: handing clients over as they come to rest");
    let (tx, rx) = mpsc::channel::<(OwnedFd, Vec<u8>)>();
    *shared.takeover.lock_tx() = Some(tx);
    let thread = std::thread::Builder::new()
        .name("takeover-send".into())
        .spawn(move || {
            let mut moved = 0u64;
            for (fd, state) in rx {
                match send(&conn, b'C', &state, Some(&fd)) {
                    Ok(()) => moved += 1,
                    Err(e) => tracing::warn!(error = %e, "a client could not be handed over"),
                }
            }
            let _ = send(&conn, b'D', b"", None);
            tracing::info!(clients = moved, "takeover done");
        })?;
    *shared
        .takeover
        .sender
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(thread);
    // Drain as for SIGTERM: no more accepts here, clients move at rest.
    shared.shutdown_request.notify_one();
    Ok(())
}
