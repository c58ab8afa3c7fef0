//! One transaction-pooled client's LISTENs: the channels it listens to (as
//! committed), those it asked the pool's hub for, and what its open
//! transaction would change. See `crate::listen`.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::clients::ClientEntry;
use crate::listen::Hub;
use crate::sql::session_cmd::Effect;

pub struct ClientListen {
    pub hub: Arc<Hub>,
    entry: Arc<ClientEntry>,
    /// The pid the client was given (a notification it sent carries it).
    pub pid: i32,
    /// Committed: the channels whose notifications it gets.
    channels: BTreeSet<String>,
    /// Asked of the hub: committed, or LISTENed in the open transaction.
    wanted: BTreeSet<String>,
    /// LISTEN, UNLISTEN and DISCARD ALL since the transaction began.
    pending: Vec<Effect>,
    /// A LISTEN or UNLISTEN ran on the server held (or sluice ran LISTENs
    /// there for pg_listening_channels): UNLISTEN * before it goes back.
    pub on_server: bool,
    /// A statement that may notify ran on the server held, and a listener
    /// waits for the marker that names this client.
    pub marker_due: bool,
    /// A statement that may notify went out (`Multiplex::scan_text`).
    pub notify_seen: bool,
}

impl std::fmt::Debug for ClientListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientListen")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

/// Whether an effect is about LISTEN (DISCARD ALL ends them too).
pub fn is_listen_effect(e: &Effect) -> bool {
    matches!(
        e,
        Effect::Listen(_) | Effect::Unlisten(_) | Effect::UnlistenAll | Effect::DiscardAll
    )
}

impl ClientListen {
    pub fn new(hub: Arc<Hub>, entry: Arc<ClientEntry>, pid: i32) -> Self {
        Self {
            hub,
            entry,
            pid,
            channels: BTreeSet::new(),
            wanted: BTreeSet::new(),
            pending: Vec::new(),
            on_server: false,
            marker_due: false,
            notify_seen: false,
        }
    }

    /// A LISTEN the client is about to run: the hub listens to its channel
    /// from now (the receiver completes once it does).
    pub fn want(&mut self, channel: &str) -> Option<tokio::sync::oneshot::Receiver<()>> {
        if self.wanted.contains(channel) {
            return None;
        }
        self.wanted.insert(channel.to_string());
        Some(self.hub.want(channel))
    }

    /// A LISTEN-related statement ran on the server held.
    pub fn ran(&mut self, e: &Effect) {
        if let Effect::Listen(c) = e {
            let _ = self.want(c);
        }
        self.on_server |= !matches!(e, Effect::DiscardAll);
        self.pending.push(e.clone());
    }

    /// The client's transaction ended: committed, or not.
    #[inline]
    pub fn ended(&mut self, committed: bool) {
        // Most transactions: nothing about LISTEN, nothing to do.
        if !self.pending.is_empty() || self.wanted.len() != self.channels.len() {
            self.settle(committed);
        }
    }

    fn settle(&mut self, committed: bool) {
        let pending = std::mem::take(&mut self.pending);
        if committed {
            for e in pending {
                match e {
                    Effect::Listen(c) if self.channels.insert(c.clone()) => {
                        self.hub.subscribe(&c, &self.entry);
                    }
                    Effect::Unlisten(c) => self.stop(&c),
                    Effect::UnlistenAll | Effect::DiscardAll => self.stop_all(),
                    _ => {}
                }
            }
        }
        // What was wanted for a LISTEN that did not commit goes back.
        let stale: Vec<String> = self
            .wanted
            .iter()
            .filter(|c| !self.channels.contains(*c))
            .cloned()
            .collect();
        for c in stale {
            self.wanted.remove(&c);
            self.hub.unwant(&c);
        }
    }

    fn stop(&mut self, channel: &str) {
        if self.channels.remove(channel) {
            self.hub.unsubscribe(channel, self.entry.id);
        }
    }

    fn stop_all(&mut self) {
        for c in std::mem::take(&mut self.channels) {
            self.hub.unsubscribe(&c, self.entry.id);
        }
    }

    /// A statement that may notify went to the server `pid`: the hub
    /// waits for a marker from it (once per checkout), when anyone listens.
    pub fn notify_went(&mut self, pid: i32) {
        if std::mem::take(&mut self.notify_seen) && !self.marker_due {
            self.marker_due = self.hub.expect_marker(pid);
        }
    }

    /// Before a request goes out (what `scan_request` found in it): the hub
    /// listens to the channels it LISTENs to (waiting at most
    /// server_connect_timeout). Whether it calls pg_listening_channels().
    pub async fn before_request(
        &mut self,
        (channels, lists): (Vec<String>, bool),
        config: &crate::config::Config,
    ) -> bool {
        let waits: Vec<_> = channels.iter().filter_map(|c| self.want(c)).collect();
        let limit = config.general.server_connect_timeout;
        for w in waits {
            if !matches!(tokio::time::timeout(limit, w).await, Ok(Ok(()))) {
                // The hub could not listen: the session ends at once, as
                // after a lost listener.
                self.entry.mail.close(crate::listen::Closed::ListenerLost);
                self.entry.signals.raise(crate::signal::Signal::Mail);
            }
        }
        lists
    }

    /// Makes `server` listen to the client's channels, so that its
    /// pg_listening_channels() answers them (UNLISTENed before it goes back).
    pub async fn show_channels(&mut self, server: &mut crate::server::ServerConn) {
        let sql: Vec<String> = self
            .channels
            .iter()
            .map(|c| format!("LISTEN {}", crate::listen::quote(c)))
            .collect();
        self.on_server = true;
        if let Err(e) = server.simple_query(&sql.join("; ")).await {
            tracing::warn!(error = %e, "could not LISTEN on a server for pg_listening_channels()");
        }
    }

    /// Before the server held goes back (`cleanup_sql`). Whether it may:
    /// one whose LISTENs could not be undone is discarded.
    pub async fn cleanup(&mut self, server: &mut crate::server::ServerConn) -> bool {
        let Some(sql) = self.cleanup_sql() else {
            return true;
        };
        server
            .simple_query(&sql)
            .await
            .inspect_err(
                |e| tracing::warn!(error = %e, "could not UNLISTEN on a server: discarding it"),
            )
            .is_ok()
    }

    /// What the request at the start of `buf` asks of LISTEN
    /// (`scan_request`); pg_listening_channels() matters only to a client
    /// that listens (others get the empty set any server gives).
    pub fn scan(
        &self,
        buf: &[u8],
        statements: Option<&crate::session::prepared::ClientStatements>,
    ) -> (Vec<String>, bool) {
        if self.channels.is_empty() {
            let (channels, _) = scan_request(buf, None, false);
            return (channels, false);
        }
        scan_request(buf, statements, true)
    }

    /// Whether the client listens, or has asked to (then it cannot move to
    /// another process: its channels are this one's hub's).
    pub fn is_listening(&self) -> bool {
        !self.channels.is_empty() || !self.wanted.is_empty()
    }

    /// Whether something must run on the server held before it goes back.
    #[inline]
    pub fn owes_cleanup(&self) -> bool {
        self.on_server || self.marker_due
    }

    /// What to run on the server held before it goes back: UNLISTEN what
    /// the client's statements left there, and send the marker that names
    /// the client as the sender of what its transaction notified.
    pub fn cleanup_sql(&mut self) -> Option<String> {
        let mut sql = Vec::new();
        if std::mem::take(&mut self.on_server) {
            sql.push("UNLISTEN *".to_string());
        }
        if std::mem::take(&mut self.marker_due) {
            sql.push(format!(
                "NOTIFY {}, '{}'",
                crate::listen::quote(crate::listen::senders::MARKER),
                self.pid
            ));
        }
        (!sql.is_empty()).then(|| sql.join("; "))
    }
}

impl Drop for ClientListen {
    fn drop(&mut self) {
        self.stop_all();
        for c in std::mem::take(&mut self.wanted) {
            self.hub.unwant(&c);
        }
    }
}

/// What the request at the start of `buf` (a Query, or a batch up to its
/// Sync) asks of LISTEN before it runs: the channels of statements that
/// begin with LISTEN (the hub listens to them before the request goes
/// out), and whether it calls pg_listening_channels().
pub fn scan_request(
    buf: &[u8],
    statements: Option<&crate::session::prepared::ClientStatements>,
    channels_asked: bool,
) -> (Vec<String>, bool) {
    use crate::protocol::inspect::take_cstr;
    let (mut channels, mut lists) = (Vec::new(), false);
    for (tag, body) in crate::protocol::frame::whole_frames(buf) {
        let bound;
        // Without the channels asked for, only a statement that begins with
        // LISTEN matters: its text is not searched for its end.
        let text = match tag {
            b'Q' if !channels_asked && !begins_with_listen(body) => None,
            b'Q' => take_cstr(body).map(|(q, _)| q),
            // (The name is short, and most often empty: no memchr call.)
            b'P' => skip_name(body).and_then(|rest| {
                if !channels_asked && !begins_with_listen(rest) {
                    return None;
                }
                take_cstr(rest).map(|(q, _)| q)
            }),
            // A statement prepared earlier runs now (its LISTEN was seen
            // when it was parsed).
            b'B' if channels_asked => {
                bound = take_cstr(body)
                    .and_then(|(_, rest)| take_cstr(rest))
                    .and_then(|(name, _)| {
                        let s = statements?;
                        if name.is_empty() {
                            s.unnamed.clone()
                        } else {
                            s.named.get(name).cloned()
                        }
                    });
                bound.as_deref().map(|d| d.text())
            }
            b'S' => break,
            _ => None,
        };
        let Some(text) = text else {
            if channels_asked {
                continue;
            }
            break;
        };
        lists |= channels_asked && calls_listening_channels(text);
        if begins_with_listen(text)
            && let Ok(sql) = std::str::from_utf8(text)
        {
            for stmt in crate::sql::lex::statements(sql) {
                for e in crate::sql::session_cmd::effects(stmt) {
                    if let Effect::Listen(c) = e {
                        channels.push(c);
                    }
                }
            }
        }
        // Without the channels asked for, a LISTEN that begins the request
        // is what the hub must see first (one later in a batch is seen as
        // it goes out).
        if tag == b'Q' || !channels_asked {
            break;
        }
    }
    (channels, lists)
}

/// What follows the NUL-terminated name at the start of `body`.
fn skip_name(body: &[u8]) -> Option<&[u8]> {
    let end = body.iter().position(|&b| b == 0)?;
    Some(&body[end + 1..])
}

/// Whether the statement text at the start of `sql` begins with LISTEN.
fn begins_with_listen(sql: &[u8]) -> bool {
    // Most statements begin with another letter.
    if sql
        .first()
        .is_some_and(|c| c.is_ascii_alphabetic() && (c | 0x20) != b'l')
    {
        return false;
    }
    crate::sql::lex::strip_leading_comments_bytes(sql)
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"listen"))
}

/// Whether `pg_listening_channels` (any case) occurs in `sql`.
fn calls_listening_channels(sql: &[u8]) -> bool {
    const NAME: &[u8] = b"listening_channels";
    memchr::memchr_iter(b'_', sql).any(|i| {
        i >= 2
            && sql[i - 2..i].eq_ignore_ascii_case(b"pg")
            && sql
                .get(i + 1..i + 1 + NAME.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(NAME))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::build;

    #[test]
    fn a_request_that_listens_is_seen_before_it_runs() {
        let mut b = bytes::BytesMut::new();
        build::query(&mut b, "/* x */ LISTEN \"Jobs\"; LISTEN more");
        assert_eq!(
            scan_request(&b, None, true),
            (vec!["Jobs".to_string(), "more".to_string()], false)
        );
        let mut b = bytes::BytesMut::new();
        build::parse_unnamed(&mut b, "listen jobs");
        build::sync(&mut b);
        build::query(&mut b, "LISTEN later");
        assert_eq!(
            scan_request(&b, None, true),
            (vec!["jobs".to_string()], false)
        );
        let mut b = bytes::BytesMut::new();
        build::query(&mut b, "SELECT * FROM PG_LISTENING_CHANNELS()");
        assert_eq!(scan_request(&b, None, true), (vec![], true));
        let mut b = bytes::BytesMut::new();
        build::query(&mut b, "SELECT 'listen'");
        assert_eq!(scan_request(&b, None, true), (vec![], false));
    }
}
