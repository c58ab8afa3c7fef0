//! A hub's listener connection: opened when a client first wants a
//! channel, kept LISTENing to the channels wanted, closed when none is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::senders::{MARKER, Notification};
use super::{Hub, quote};
use crate::net::Conn;
use crate::protocol::build;
use crate::protocol::inspect::{ErrorFields, take_cstr};

/// Notifications are small; this bounds a bad frame.
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// How often markers that did not come are given up while some wait.
const TICK: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("{0}")]
    Io(#[from] crate::error::Error),
    #[error("{0}")]
    Server(#[from] crate::error::ServerError),
    #[error("the server ended the connection: {0}")]
    Fatal(String),
}

pub(super) async fn run(hub: Arc<Hub>) {
    loop {
        {
            let mut s = hub.state();
            if s.wanted.is_empty() {
                s.running = false;
                return;
            }
        }
        let mut target = hub.target.lock().unwrap_or_else(|p| p.into_inner()).clone();
        target.application_name = "sluice listener".into();
        let mut conn = match crate::server::login::connect(&target).await {
            Ok(r) => r.conn,
            Err(e) => {
                tracing::warn!(database = %hub.database, user = %hub.user, error = %e, "could not open the LISTEN connection");
                // The clients waiting are told (their sessions end), and
                // the next LISTEN tries again.
                hub.state().waiters.clear();
                hub.lost();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(database = %hub.database, user = %hub.user, "LISTEN connection open");
        match listen(&hub, &mut conn).await {
            Ok(()) => {
                tracing::info!(database = %hub.database, user = %hub.user, "nobody listens: LISTEN connection closed");
            }
            Err(e) => {
                tracing::warn!(database = %hub.database, user = %hub.user, error = %e, "LISTEN connection lost: listening clients are disconnected");
                hub.lost();
            }
        }
        hub.state().listening.clear();
        conn.close().await;
    }
}

/// Keeps the connection listening to what is wanted, and passes on what
/// comes, until nothing is wanted (Ok) or the connection fails.
async fn listen(hub: &Arc<Hub>, conn: &mut Conn) -> Result<(), Lost> {
    run_sql(hub, conn, &format!("LISTEN {}", quote(MARKER))).await?;
    loop {
        let (add, remove, waiting) = {
            let s = hub.state();
            let add: Vec<String> = s
                .wanted
                .keys()
                .filter(|c| !s.listening.contains(*c))
                .cloned()
                .collect();
            let remove: Vec<String> = s
                .listening
                .iter()
                .filter(|c| !s.wanted.contains_key(*c))
                .cloned()
                .collect();
            if s.wanted.is_empty() && s.clients.is_empty() {
                return Ok(());
            }
            (add, remove, s.senders.waiting())
        };
        for c in add {
            run_sql(hub, conn, &format!("LISTEN {}", quote(&c))).await?;
            let mut s = hub.state();
            s.listening.insert(c.clone());
            let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut s.waiters)
                .into_iter()
                .partition(|(w, _)| *w == c);
            s.waiters = rest;
            for (_, tx) in done {
                let _ = tx.send(());
            }
        }
        for c in remove {
            run_sql(hub, conn, &format!("UNLISTEN {}", quote(&c))).await?;
            hub.state().listening.remove(&c);
        }
        tokio::select! {
            () = hub.poke.notified() => {}
            f = conn.read_frame(MAX_FRAME) => {
                let f = f?;
                on_frame(hub, f.tag, f.body())?;
            }
            () = tokio::time::sleep(TICK), if waiting => {
                let ready = hub.state().senders.tick(Instant::now());
                hub.deliver(ready);
            }
        }
    }
}

/// Runs one statement, passing on the notifications that come meanwhile.
async fn run_sql(hub: &Hub, conn: &mut Conn, sql: &str) -> Result<(), Lost> {
    let mut out = BytesMut::new();
    build::query(&mut out, sql);
    conn.write_all(&out).await?;
    loop {
        let f = conn.read_frame(MAX_FRAME).await?;
        match f.tag {
            b'Z' => return Ok(()),
            b'E' => {
                let e = ErrorFields::parse(f.body());
                if e.severity.as_deref() == Some("FATAL") {
                    return Err(Lost::Fatal(e.message_or_default().to_string()));
                }
                // (A client's own LISTEN, on its server, gets the error.)
                tracing::warn!(
                    statement = sql,
                    error = e.message_or_default(),
                    "the LISTEN connection's statement failed"
                );
            }
            tag => on_frame(hub, tag, f.body())?,
        }
    }
}

/// A frame that came unasked: a notification, or the server's goodbye.
fn on_frame(hub: &Hub, tag: u8, body: &[u8]) -> Result<(), Lost> {
    match tag {
        b'A' => {
            let Some(n) = parse_notification(body) else {
                return Ok(());
            };
            let ready = hub.state().senders.arrived(n, Instant::now());
            hub.deliver(ready);
            Ok(())
        }
        b'E' => Err(Lost::Fatal(
            ErrorFields::parse(body).message_or_default().to_string(),
        )),
        _ => Ok(()),
    }
}

fn parse_notification(body: &[u8]) -> Option<Notification> {
    let (pid, rest) = body.split_first_chunk::<4>()?;
    let (channel, rest) = take_cstr(rest)?;
    let (payload, _) = take_cstr(rest)?;
    Some(Notification {
        pid: i32::from_be_bytes(*pid),
        channel: String::from_utf8_lossy(channel).into_owned(),
        payload: String::from_utf8_lossy(payload).into_owned(),
    })
}
