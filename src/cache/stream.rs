//! The primary's changes, as the result cache needs them: a logical
//! replication connection (a temporary slot with the built-in `pgoutput`
//! plugin, on a publication the DBA created) whose committed transactions
//! come out as the tables they changed (`wal::Change`).

use bytes::BytesMut;

use super::wal::{Change, Decoder, Frame, status_update};
use crate::net::Conn;
use crate::protocol::build;
use crate::protocol::inspect::ErrorFields;
use crate::server::ServerTarget;

/// A replication message is at most a row's worth; this bounds a bad one.
const MAX_FRAME: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Server(#[from] crate::error::ServerError),
    #[error(transparent)]
    Io(#[from] crate::error::Error),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Malformed(#[from] super::wal::Malformed),
}

pub struct ChangeStream {
    conn: Conn,
    decoder: Decoder,
    /// The end of the last commit decoded (what the cache is fresh up to).
    pub applied: u64,
    owes_reply: bool,
}

impl ChangeStream {
    /// Logs in for logical replication, makes a temporary slot named
    /// `slot` and starts streaming the changes of `publication`.
    pub async fn start(
        target: &ServerTarget,
        slot: &str,
        publication: &str,
    ) -> Result<Self, StreamError> {
        let mut t = target.clone();
        t.replication = true;
        t.application_name = "sluice cache".into();
        let mut conn = crate::server::login::connect(&t).await?.conn;
        let slot = crate::listen::quote(slot);
        command(
            &mut conn,
            &format!(
                "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing')"
            ),
            false,
        )
        .await?;
        let publication = publication.replace('\'', "''");
        command(
            &mut conn,
            &format!(
                "START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '1', publication_names '{publication}', messages 'true')"
            ),
            true,
        )
        .await?;
        Ok(Self {
            conn,
            decoder: Decoder::default(),
            applied: 0,
            owes_reply: false,
        })
    }

    /// The next frame's meaning. Its one await is the read, so it may be
    /// dropped unfinished (raced against a timer) without losing a byte.
    pub async fn next(&mut self) -> Result<Event, StreamError> {
        let f = self.conn.read_frame(MAX_FRAME).await?;
        match f.tag {
            b'd' => match self.decoder.copy_data(f.body())? {
                Frame::Changes(c) if c.is_empty() => Ok(Event::Nothing),
                Frame::Changes(c) => {
                    if let Some(lsn) = c.iter().map(change_lsn).max() {
                        self.applied = self.applied.max(lsn);
                    }
                    Ok(Event::Changes(c))
                }
                Frame::Keepalive { wal_end, reply } => {
                    // Everything the server decoded up to its send position
                    // came before this: the cache is that fresh.
                    self.applied = self.applied.max(wal_end);
                    self.owes_reply |= reply;
                    Ok(Event::CaughtUp(self.applied))
                }
            },
            b'E' => {
                let e = ErrorFields::parse(f.body());
                Err(StreamError::Refused(e.message_or_default().to_string()))
            }
            _ => Ok(Event::Nothing),
        }
    }

    /// Tells the server what was applied (so it can let go of its WAL),
    /// asking for a keepalive back with `ping`; also answers a keepalive
    /// that asked for a reply.
    pub async fn acknowledge(&mut self, ping: bool) -> Result<(), StreamError> {
        self.owes_reply = false;
        let mut out = BytesMut::new();
        build::typed(&mut out, b'd', |b| {
            b.extend_from_slice(&status_update(self.applied, ping))
        });
        self.conn.write_all(&out).await?;
        Ok(())
    }

    /// A keepalive asked for an answer that has not gone yet.
    pub fn owes_reply(&self) -> bool {
        self.owes_reply
    }
}

/// What one frame of the stream says.
#[derive(Debug)]
pub enum Event {
    /// Transactions committed, in commit order.
    Changes(Vec<Change>),
    /// Nothing more the publication covers up to this position.
    CaughtUp(u64),
    Nothing,
}

fn change_lsn(c: &Change) -> u64 {
    match c {
        Change::Tables { lsn, .. } | Change::Schema { lsn } => *lsn,
    }
}

/// Runs a replication command; with `copy`, until the CopyBothResponse
/// that starts streaming, else until ReadyForQuery.
async fn command(conn: &mut Conn, sql: &str, copy: bool) -> Result<(), StreamError> {
    let mut out = BytesMut::new();
    build::query(&mut out, sql);
    conn.write_all(&out).await?;
    let mut error = None;
    loop {
        let f = conn.read_frame(MAX_FRAME).await?;
        match f.tag {
            b'E' => {
                let e = ErrorFields::parse(f.body());
                error = Some(e.message_or_default().to_string());
            }
            b'W' if copy => return Ok(()),
            b'Z' => {
                return match error {
                    Some(e) => Err(StreamError::Refused(e)),
                    None => Ok(()),
                };
            }
            _ => {}
        }
    }
}
