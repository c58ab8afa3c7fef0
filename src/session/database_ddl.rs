//! DROP DATABASE, CREATE DATABASE ... TEMPLATE and ALTER DATABASE ...
//! RENAME through sluice: PostgreSQL refuses them while other sessions are
//! connected to the database, and sluice's idle pooled servers are such
//! sessions. Before such a statement goes to the server, sluice closes its
//! idle servers to that database and holds new checkouts to it until the
//! statement is over; a DBA needs no PAUSE or KILL first.

use std::sync::Arc;

use crate::app::Shared;
use crate::pool::Pauses;
use crate::protocol::frame::{HEADER_LEN, peek_header};
use crate::protocol::inspect::take_cstr;
use crate::protocol::tags::FrontendTag;

/// The server-side database the request at the head of `buf` needs free of
/// other sessions, if any. Most requests leave at the first word.
pub fn target(buf: &[u8]) -> Option<String> {
    let h = peek_header(buf, usize::MAX).ok()??;
    let body = buf.get(HEADER_LEN..h.total)?;
    let text = match FrontendTag::from_byte(h.tag) {
        FrontendTag::Query => body,
        FrontendTag::Parse => take_cstr(body)?.1,
        _ => return None,
    };
    // Every request passes here: most leave at their first byte (a
    // comment or whitespace may come before the word).
    if !matches!(
        text.first(),
        Some(b'd' | b'D' | b'a' | b'A' | b'c' | b'C' | b'/' | b'-' | b' ' | b'\t' | b'\n' | b'\r')
    ) {
        return None;
    }
    let text = take_cstr(text)?.0;
    let first = crate::sql::lex::strip_leading_comments_bytes(text);
    let word = first.get(
        ..first
            .iter()
            .position(|c| !c.is_ascii_alphabetic())
            .unwrap_or(first.len()),
    )?;
    if ![&b"drop"[..], b"alter", b"create"]
        .iter()
        .any(|w| w.eq_ignore_ascii_case(word))
    {
        return None;
    }
    crate::sql::database_cmd::target_database(std::str::from_utf8(text).ok()?)
}

/// The sluice databases on `primary` whose server-side name is `dbname`:
/// their idle servers are closed and checkouts wait while it lives.
pub struct Clearing {
    pauses: Arc<Pauses>,
    /// Only those this statement paused: a console PAUSE stays.
    paused: Vec<String>,
}

impl Drop for Clearing {
    fn drop(&mut self) {
        for db in &self.paused {
            self.pauses.resume(Some(db));
        }
    }
}

/// Closes the idle servers to `dbname` on `primary` of every sluice
/// database but `own` (the client's: PostgreSQL refuses the statement for
/// the database a session is connected to anyway), and holds checkouts
/// to them until the returned guard is dropped.
pub fn clear(
    shared: &Shared,
    own: &str,
    primary: &crate::config::HostPort,
    dbname: &str,
) -> Clearing {
    let pauses = shared.pools.pauses.clone();
    let mut paused = Vec::new();
    for name in close_idle(shared, own, primary, dbname) {
        if !pauses.is_paused(&name) {
            pauses.pause(&name);
            paused.push(name);
        }
    }
    Clearing { pauses, paused }
}

/// `clear` without holding checkouts (session pooling, where the client
/// keeps its server and nothing marks the statement's end): PostgreSQL
/// waits up to 5 s for the closed sessions to exit. Returns the sluice
/// databases concerned.
pub fn close_idle(
    shared: &Shared,
    own: &str,
    primary: &crate::config::HostPort,
    dbname: &str,
) -> Vec<String> {
    let config = shared.config();
    let names: Vec<String> = config
        .databases
        .iter()
        .filter(|(name, db)| *name != own && db.dbname == dbname && db.primary == *primary)
        .map(|(name, _)| name.clone())
        .collect();
    for name in &names {
        shared.pools.reconnect(Some(name));
    }
    shared.stats.database_cleared();
    tracing::info!(
        database = dbname,
        pools = names.len(),
        "closing idle servers to a database for a statement that needs it free (DROP/CREATE ... TEMPLATE/ALTER ... RENAME DATABASE)"
    );
    names
}
