//! One PostgreSQL connection as the pool holds it: the socket, the
//! parameters the server reported, its cancel key and its protocol state.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

use super::login::{self, ServerTarget};
use super::state::ServerState;
use crate::error::ServerError;
use crate::net::Conn;
use crate::protocol::build;
use crate::protocol::inspect::{self, ErrorFields};
use crate::protocol::tags::BackendTag;

/// The parameters a server reports (ParameterStatus). Shared: most servers
/// of a pool and their clients hold the same values, so they hold one map,
/// compare by pointer, and copy it only when a value changes.
pub type Params = std::sync::Arc<BTreeMap<String, String>>;

/// Sets `name` to `value` in `params`, copying a shared map only on a change.
pub fn set_param(params: &mut Params, name: String, value: String) {
    if params.get(&name) != Some(&value) {
        std::sync::Arc::make_mut(params).insert(name, value);
    }
}

/// Which (server map, client map) pair was last found to need no setting,
/// so that a checkout by a client sharing that map skips the comparison. A
/// replica's parameters never equal the primary's (read-only ones differ),
/// so without it every checkout there would walk both maps. It holds both
/// maps, so a change to either (a copy on write) ends the match.
#[derive(Debug, Default)]
pub struct InLine(Option<(Params, Params)>);

impl InLine {
    pub fn holds(&self, server: &Params, client: &Params) -> bool {
        self.0.as_ref().is_some_and(|(s, c)| {
            std::sync::Arc::ptr_eq(s, server) && std::sync::Arc::ptr_eq(c, client)
        })
    }

    pub fn note(&mut self, server: &Params, client: &Params) {
        self.0 = Some((server.clone(), client.clone()));
    }
}

/// Replies to sluice's own queries (reset, settings) are small.
const MAX_INTERNAL_REPLY: usize = 1 << 20;

/// A DataRow body as text columns (None for NULL); malformed input ends the row early.
fn decode_text_row(body: &[u8]) -> Vec<Option<String>> {
    let mut cols = Vec::new();
    let Some(n) = body.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]])) else {
        return cols;
    };
    let mut rest = &body[2..];
    for _ in 0..n.max(0) {
        let Some((len, tail)) = inspect::take_i32(rest) else {
            break;
        };
        if len < 0 {
            cols.push(None);
            rest = tail;
            continue;
        }
        let Some(v) = tail.get(..len as usize) else {
            break;
        };
        cols.push(Some(String::from_utf8_lossy(v).into_owned()));
        rest = &tail[len as usize..];
    }
    cols
}

#[derive(Debug)]
pub struct ServerConn {
    pub conn: Conn,
    pub addr: String,
    /// The server's current values of every parameter it reports.
    pub params: Params,
    /// The parameters as the server reported them at login: what a new
    /// transaction-pooled client starts from.
    pub initial_params: Params,
    /// (pid, secret) as the server sent them in BackendKeyData.
    pub key: (i32, i32),
    pub state: ServerState,
    /// Settings sluice knows were applied beyond the reported parameters
    /// (transaction pooling keeps them in line with each client's).
    pub extra: BTreeMap<String, crate::session::vars::Setting>,
    /// The client map these `params` were last found in line with.
    pub in_line: InLine,
    /// Statements transaction pooling prepared here under sluice-wide names.
    pub statements: crate::session::prepared::ServerStatements,
    pub created: Instant,
    /// When the server last finished a request (its last ReadyForQuery):
    /// in the pool, since when it has been idle (server_idle_timeout).
    pub idle_since: Instant,
    /// Held for the connection's life: max_db/max_user_connections.
    pub permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// The stats of the pool this server belongs to.
    pub stats: Option<std::sync::Arc<crate::pool::stats::PoolStats>>,
    /// The pool's generation when this server was opened (RECONNECT).
    pub generation: u64,
    /// The pool's current generation.
    pub pool_generation: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl ServerConn {
    pub async fn connect(t: &ServerTarget) -> Result<Self, ServerError> {
        let r = login::connect(t).await?;
        let params = Params::new(r.params);
        Ok(Self {
            conn: r.conn,
            addr: t.addr.to_string(),
            initial_params: params.clone(),
            params,
            key: r.key,
            state: ServerState::default(),
            extra: BTreeMap::new(),
            in_line: InLine::default(),
            statements: Default::default(),
            created: Instant::now(),
            idle_since: Instant::now(),
            permits: Vec::new(),
            stats: None,
            generation: 0,
            pool_generation: None,
        })
    }

    /// A RECONNECT (or a statement that needs its database free) came
    /// after this server was opened: it is closed, not reused.
    pub fn is_stale(&self) -> bool {
        self.pool_generation
            .as_ref()
            .is_some_and(|g| g.load(std::sync::atomic::Ordering::Relaxed) != self.generation)
    }

    pub fn pid(&self) -> i32 {
        self.key.0
    }

    /// True when the socket is closed, errored or holds unsolicited bytes
    /// (a FATAL from pg_terminate_backend, say). Costs no round trip.
    pub fn is_dead(&mut self) -> bool {
        if !self.conn.rbuf.is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        // Plain TCP: a readiness check, and a read only when the socket is
        // readable; unlike a poll, it leaves the task's waker registered.
        if let crate::net::PgStream::Plain(tcp) = &self.conn.stream {
            return match tcp.try_read(&mut probe) {
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                Ok(_) => true, // bytes nobody asked for, or the end
            };
        }
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.conn.stream)
            .poll_read(&mut cx, &mut buf)
            .is_ready()
    }

    fn io_err(&self, e: crate::error::Error) -> ServerError {
        ServerError::from_io(&self.addr, e)
    }

    /// Sends `out` and reads replies up to ReadyForQuery, keeping only the
    /// first row (as text). Notices are handed to `notices`; ParameterStatus
    /// updates the cache. The first ErrorResponse is returned after the
    /// server is ready again, so the connection stays usable.
    async fn exchange(
        &mut self,
        out: &[u8],
        notices: Option<&mut Vec<Bytes>>,
    ) -> Result<Option<Vec<Option<String>>>, ServerError> {
        let rows = self.exchange_rows(out, notices, 1).await?;
        Ok(rows.into_iter().next())
    }

    /// `exchange`, keeping up to `max_rows` rows.
    async fn exchange_rows(
        &mut self,
        out: &[u8],
        mut notices: Option<&mut Vec<Bytes>>,
        max_rows: usize,
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        self.conn.write_all(out).await.map_err(|e| self.io_err(e))?;
        let (mut first_error, mut rows) = (None, Vec::new());
        loop {
            let f = self
                .conn
                .read_frame(MAX_INTERNAL_REPLY)
                .await
                .map_err(|e| self.io_err(e))?;
            match BackendTag::from_byte(f.tag) {
                BackendTag::ReadyForQuery => {
                    if let Some(s) = inspect::ready_status(f.body()) {
                        self.state.on_backend(BackendTag::ReadyForQuery, Some(s));
                    }
                    self.idle_since = Instant::now();
                    return match first_error {
                        None => Ok(rows),
                        Some(fields) => Err(ServerError::Refused {
                            addr: self.addr.clone(),
                            fields,
                        }),
                    };
                }
                BackendTag::Other(b'D') if rows.len() < max_rows => {
                    rows.push(decode_text_row(f.body()));
                }
                BackendTag::ErrorResponse if first_error.is_none() => {
                    first_error = Some(ErrorFields::parse(f.body()));
                }
                BackendTag::ParameterStatus => {
                    if let Some((k, v)) = inspect::parameter_status(f.body()) {
                        set_param(&mut self.params, k, v);
                    }
                }
                BackendTag::NoticeResponse => {
                    if let Some(n) = notices.as_deref_mut() {
                        n.push(f.bytes);
                    }
                }
                BackendTag::CopyInResponse
                | BackendTag::CopyOutResponse
                | BackendTag::CopyBothResponse => {
                    return Err(ServerError::Protocol {
                        addr: self.addr.clone(),
                        detail: "internal query started COPY".into(),
                    });
                }
                _ => {}
            }
        }
    }

    /// Runs one statement of sluice's own (reset, rollback) and waits for it.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        build::query(&mut out, sql);
        self.state
            .on_frontend(crate::protocol::tags::FrontendTag::Query);
        self.exchange(&out, None).await.map(|_| ())
    }

    /// Runs one simple query of sluice's own and returns its rows (at most
    /// 10,000) as text columns.
    pub async fn query_rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::new();
        build::query(&mut out, sql);
        self.state
            .on_frontend(crate::protocol::tags::FrontendTag::Query);
        self.exchange_rows(&out, None, 10_000).await
    }

    /// Runs one parameterized query of sluice's own and returns its first row
    /// as text (None for SQL NULL), or None when it returns no row.
    pub async fn query_row(
        &mut self,
        sql: &str,
        params: &[&str],
    ) -> Result<Option<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::new();
        build::parse_unnamed(&mut out, sql);
        build::bind_unnamed_text(&mut out, params);
        build::execute_unnamed(&mut out);
        build::sync(&mut out);
        self.state
            .on_frontend(crate::protocol::tags::FrontendTag::Sync);
        self.exchange(&out, None).await
    }

    /// Applies session settings (startup parameters) with set_config, in one
    /// round trip and without quoting: values travel as bind parameters.
    pub async fn apply_settings(
        &mut self,
        settings: &[(String, String)],
        notices: &mut Vec<Bytes>,
    ) -> Result<(), ServerError> {
        if settings.is_empty() {
            return Ok(());
        }
        let mut out = BytesMut::new();
        build::parse_unnamed(&mut out, "SELECT pg_catalog.set_config($1, $2, false)");
        for (k, v) in settings {
            build::bind_unnamed_text(&mut out, &[k, v]);
            build::execute_unnamed(&mut out);
        }
        build::sync(&mut out);
        self.state
            .on_frontend(crate::protocol::tags::FrontendTag::Sync);
        self.exchange(&out, Some(notices)).await.map(|_| ())
    }
}

/// A `Params` map from pairs, for tests.
#[cfg(test)]
pub fn params_of(kv: &[(&str, &str)]) -> Params {
    Params::new(
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_param_copies_a_shared_map_only_on_a_change() {
        let server = params_of(&[("TimeZone", "UTC")]);
        let mut client = server.clone();

        set_param(&mut client, "TimeZone".into(), "UTC".into());
        assert!(
            std::sync::Arc::ptr_eq(&client, &server),
            "an unchanged value keeps sharing"
        );

        set_param(&mut client, "TimeZone".into(), "Asia/Tokyo".into());
        assert!(!std::sync::Arc::ptr_eq(&client, &server));
        assert_eq!(client["TimeZone"], "Asia/Tokyo");
        assert_eq!(server["TimeZone"], "UTC", "the other holders keep theirs");
    }

    #[test]
    fn a_match_lasts_until_either_map_changes() {
        let mut replica = params_of(&[("TimeZone", "UTC"), ("in_hot_standby", "on")]);
        let mut client = params_of(&[("TimeZone", "UTC"), ("in_hot_standby", "off")]);
        let mut m = InLine::default();
        assert!(!m.holds(&replica, &client));
        m.note(&replica, &client);
        assert!(m.holds(&replica, &client));
        assert!(
            !m.holds(&replica, &params_of(&[("TimeZone", "UTC")])),
            "an equal map is not the same map"
        );

        set_param(&mut client, "TimeZone".into(), "Asia/Tokyo".into());
        assert!(!m.holds(&replica, &client), "the client changed");
        m.note(&replica, &client);
        set_param(&mut replica, "TimeZone".into(), "Asia/Tokyo".into());
        assert!(!m.holds(&replica, &client), "the server changed");
    }
}
