//! The new process's side (`sluice --takeover`): asks the running process
//! for its listening socket, then resumes each client it hands over.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use super::HELLO;
use super::fdmsg::recv;
use super::moved::Moved;
use crate::app::Shared;

/// Connects to the running process at `path`: its listening socket, and
/// the connection its clients will come on.
pub fn connect(path: &Path) -> io::Result<(std::net::TcpListener, UnixStream)> {
    let mut conn = UnixStream::connect(path).map_err(|e| {
        io::Error::new(e.kind(), format!("takeover_socket {}: {e}", path.display()))
    })?;
    conn.write_all(HELLO)?;
    match recv(&conn)? {
        (b'L', _, Some(fd)) => Ok((std::net::TcpListener::from(fd), conn)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the running process sent no listening socket",
        )),
    }
}

/// Resumes the clients that come on `conn` until the old process is done
/// (on a thread of its own; the sessions run on `runtime`).
pub fn receive(conn: UnixStream, shared: Arc<Shared>, runtime: tokio::runtime::Handle) {
    let spawned = std::thread::Builder::new()
        .name("takeover-receive".into())
        .spawn(move || {
            let mut resumed = 0u64;
            loop {
                match recv(&conn) {
                    Ok((b'C', state, Some(fd))) => {
                        let tcp = std::net::TcpStream::from(fd);
                        let Some(moved) = Moved::decode(&state) else {
                            tracing::warn!("a client's state came damaged: its connection is closed");
                            continue;
                        };
                        if tcp.set_nonblocking(true).is_err() {
                            continue;
                        }
                        resumed += 1;
                        let sessions = shared.sessions.clone();
                        let shared = shared.clone();
                        // Tracked like an accepted session: a later drain
                        // (or takeover) of this process waits for it.
                        runtime.spawn(sessions.track_future(async move {
                            if let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) {
                                crate::session::resume(tcp, moved, shared).await;
                            }
                        }));
                    }
                    Ok((b'D', _, _)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "the old process's takeover connection ended early");
                        break;
                    }
                }
            }
            tracing::info!(clients = resumed, "took over the old process's clients");
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot receive the old process's clients");
    }
}
