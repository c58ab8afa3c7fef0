//! One client connection, from its first byte to its last: startup,
//! authentication, the first server checkout, then the pool mode's loop
//! (`session_mode` here, `pooled` for transaction and statement pooling).

pub mod caching;
pub mod cancel;
mod cleanup;
mod database_ddl;
mod expect;
mod handover;
mod listening;
mod login;
mod multiplex;
mod outq;
pub mod peer_cancel;
mod pins;
mod pooled;
pub mod prepared;
pub mod relay;
mod resume;
pub mod routing;
mod spare;
pub mod startup;
pub mod statements;
pub mod vars;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::app::Shared;
use crate::config::{Config, PoolMode};
use crate::error::Error;
use crate::net::{Conn, PgStream};
use crate::pool::{Checkout, PoolKey, ServerPool};
use crate::protocol::build::{self, Severity};
use crate::protocol::sqlstate;
use crate::protocol::startup::StartupParams;
use crate::protocol::tags::TxnStatus;
use crate::signal::Signal;
use login::{ClientSlot, Entry, Places, Started, start};
use relay::{Pipe, RelayEnd, Timers};
pub use resume::resume;
use startup::Opening;

/// Serves one accepted TCP connection to completion.
///
/// A plain function around the task's future: what only the startup needs
/// (the socket, its addresses, the peer's name for the span) is used up
/// here or moved into a boxed future, because a task's future is as large
/// as its largest state, and the idle wait of a logged-in client is the
/// state that thousands of clients keep.
pub fn run(tcp: TcpStream, shared: Arc<Shared>) -> impl std::future::Future<Output = ()> {
    let (peer_addr, span, registered) = arrived(&tcp, &shared);
    let deadline = login_deadline(&shared.config());
    let peer_ip = peer_addr.map(|a| a.ip());
    let opening = Box::pin(open(tcp, shared.clone(), deadline, peer_ip));
    async move {
        let Some((mut pipe, arrival)) = opening.await else {
            return;
        };
        // `registered.entry` is named at each use, not bound to a local:
        // a local would take a slot in every idle client's task.
        pipe.client_entry = Some(registered.entry.clone());
        registered.entry.tls.store(
            pipe.client.stream.is_tls(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let serving = serve(&mut pipe, &shared, arrival, &registered.entry);
        // Dropping `serve` discards any server it holds.
        let result = killed_or(registered.entry.signals.unless(Signal::Kill, serving).await);
        Box::pin(end(&mut pipe, result)).await;
    }
    .instrument(span)
}

/// A client's socket, accepted or handed over: its peer's address, the
/// span its logs go in, and its entry in the registry (SHOW CLIENTS).
fn arrived(
    tcp: &TcpStream,
    shared: &Shared,
) -> (
    Option<std::net::SocketAddr>,
    tracing::Span,
    crate::clients::Registered,
) {
    let peer_addr = tcp.peer_addr().ok();
    let local_addr = tcp.local_addr().ok();
    let _ = tcp.set_nodelay(true);
    // The address is formatted only when the span is enabled (info level).
    let span = match peer_addr {
        Some(peer) => tracing::info_span!("client", %peer),
        None => tracing::info_span!("client", peer = ""),
    };
    let registered = shared.registry.register(peer_addr, local_addr);
    (peer_addr, span, registered)
}

/// A client past its startup packet, about to log in (kept boxed).
struct Arrival {
    params: StartupParams,
    /// client_login_timeout's end.
    deadline: tokio::time::Instant,
    peer_ip: Option<std::net::IpAddr>,
}

/// The startup phase (TLS, startup packet, or a cancel request), within
/// client_login_timeout. None when the connection ends here: the client is
/// gone, was refused, or sent a cancel request.
async fn open(
    tcp: TcpStream,
    shared: Arc<Shared>,
    deadline: tokio::time::Instant,
    peer_ip: Option<std::net::IpAddr>,
) -> Option<(Pipe, Box<Arrival>)> {
    let opening = startup::open(Conn::new(PgStream::Plain(tcp)), &shared);
    let Ok((conn, opening)) = tokio::time::timeout_at(deadline, opening).await else {
        tracing::info!("client_login_timeout: closing a client that did not finish its startup");
        return None;
    };
    let Some(conn) = conn else {
        if let Err(e) = opening {
            tracing::info!(error = %e, "TLS handshake failed");
        }
        return None;
    };
    let mut pipe = Pipe::new(conn, shared.config().general.max_packet_size);
    match opening {
        Ok(Opening::Startup(params)) => Some((
            pipe,
            Box::new(Arrival {
                params,
                deadline,
                peer_ip,
            }),
        )),
        Ok(Opening::Cancelled) => {
            pipe.client.close().await;
            None
        }
        Err(e) => {
            refuse(&mut pipe, e).await;
            pipe.client.close().await;
            None
        }
    }
}

/// The session is over: tells the client why, when that is its business,
/// and closes the connection (boxed by the caller: it takes no room in an
/// idle client's task).
pub(super) async fn end(pipe: &mut Pipe, result: Result<(), Error>) {
    // Handed over: the socket is the new process's now, not to close.
    if matches!(result, Err(Error::Moved)) {
        return;
    }
    if let Err(e) = result {
        refuse(pipe, e).await;
    }
    pipe.client.close().await;
}

/// A session's result, None meaning the admin console's KILL ended it.
pub(super) fn killed_or(result: Option<Result<(), Error>>) -> Result<(), Error> {
    result.unwrap_or_else(|| {
        Err(Error::refuse(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command (KILL)",
        ))
    })
}

/// Tells the client why its session ends, when that is the client's business.
async fn refuse(pipe: &mut Pipe, e: Error) {
    let owed = match &e {
        Error::Frame(crate::protocol::frame::FrameError::TooLarge { len, .. }) => *len,
        _ => 0,
    };
    match e.client_message() {
        Some((code, msg)) => {
            tracing::info!(%code, error = %msg, "client refused");
            let mut out = BytesMut::new();
            build::error(&mut out, Severity::Fatal, &code, &msg);
            pipe.send_client(out.freeze());
            pipe.flush_client().await;
            pipe.client.linger_close(owed).await;
        }
        None => tracing::debug!(error = %e, "client connection ended"),
    }
}

/// What the pool-mode loops need besides the pipe: the logged-in client,
/// kept boxed (one allocation per client, read per transaction).
pub(crate) struct Ctx<'a> {
    pub shared: &'a Shared,
    pub config: &'a Config,
    pub pool: ServerPool,
    pub database: Arc<str>,
    pub db: &'a crate::config::Database,
    pub user_name: Arc<str>,
    /// A user found with auth_query rather than in [users].
    looked_up: Option<Box<crate::config::User>>,
    /// The role of the client's first server (session pooling keeps it).
    pub role: crate::route::Target,
    /// This client's entry in the registry (SHOW CLIENTS).
    pub client: &'a crate::clients::ClientEntry,
    /// Replica pools this client used, by replica index, so a routed
    /// checkout does not look its pool up in the shared map each time.
    pub replica_pools: std::sync::Mutex<Vec<Option<ServerPool>>>,
    /// Places in the client caps, freed when the session ends.
    _places: Places,
    /// The client's place under max_client_conn. Held here, not in
    /// `serve`'s state, which every idle client keeps inline.
    _slot: ClientSlot,
}

impl Ctx<'_> {
    /// The user's settings: from [users], else from auth_query.
    fn user(&self) -> Option<&crate::config::User> {
        self.config
            .users
            .get(&*self.user_name)
            .or(self.looked_up.as_deref())
    }

    /// The pool of `role` for this client's database and user.
    /// A pool a reload closed (its servers changed) is replaced by the
    /// current config's, so connected clients carry on.
    pub fn pool_for(&self, role: crate::route::Target) -> ServerPool {
        let replica = match role {
            crate::route::Target::Primary if !self.pool.is_closed() => {
                return self.pool.clone();
            }
            crate::route::Target::Primary => None,
            crate::route::Target::Replica(i) => Some(i),
        };
        let mut cache = self
            .replica_pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = replica
            && let Some(Some(p)) = cache.get(i)
            && !p.is_closed()
        {
            return p.clone();
        }
        let pool = self.lookup_pool(role);
        if let Some(i) = replica {
            if cache.len() <= i {
                cache.resize(i + 1, None);
            }
            cache[i] = Some(pool.clone());
        }
        pool
    }

    /// `pool_for` without the client's cache.
    fn lookup_pool(&self, role: crate::route::Target) -> ServerPool {
        let key = PoolKey {
            role,
            ..PoolKey::primary(&self.database, &self.user_name)
        };
        let config = self.shared.config();
        match config.databases.get(&*self.database) {
            Some(db) => self
                .shared
                .pools
                .get_or_create(&config, &key, db, self.user()),
            // The database is gone: the closed pool refuses the client.
            None => self.pool.clone(),
        }
    }

    /// Where cancel requests for a server of `role` go.
    pub fn addr_of(&self, role: crate::route::Target) -> &crate::config::HostPort {
        match role {
            crate::route::Target::Replica(i) => self.db.replicas.get(i).unwrap_or(&self.db.primary),
            crate::route::Target::Primary => &self.db.primary,
        }
    }

    /// Routing state for a new transaction-pooled client, when its
    /// database has replicas and routes.
    pub fn routing(&self) -> Option<routing::ClientRouting> {
        if self.db.route == crate::config::DbRoute::Primary {
            return None;
        }
        let topo = self.shared.routes.topology(&self.database)?;
        let classifier = self.shared.routes.classifier()?;
        Some(routing::ClientRouting::new(topo, classifier))
    }
}

/// When a client connecting now must be logged in by (client_login_timeout).
fn login_deadline(config: &Config) -> tokio::time::Instant {
    let t = config.general.client_login_timeout;
    let t = if t.is_zero() {
        std::time::Duration::from_secs(86_400 * 365)
    } else {
        t
    };
    tokio::time::Instant::now() + t
}

async fn serve(
    pipe: &mut Pipe,
    shared: &Shared,
    arrival: Box<Arrival>,
    client: &crate::clients::ClientEntry,
) -> Result<(), Error> {
    let config = shared.config();
    // Logging in runs once per client and is boxed, so that its state is not
    // part of what every idle client keeps (see `run`).
    let (ctx, entry) = match Box::pin(start(pipe, shared, &config, arrival, client)).await? {
        Started::Console(role, _slot) => {
            return Box::pin(crate::admin::run(&mut pipe.client, shared, role)).await;
        }
        Started::Pooled(ctx, entry) => (ctx, *entry),
    };
    match entry.mode {
        PoolMode::Session => Box::pin(session_mode(pipe, entry, &ctx)).await,
        PoolMode::Transaction | PoolMode::Statement => pooled::run(pipe, entry, &ctx).await,
    }
}

/// Session pooling: the client keeps its server until it leaves.
async fn session_mode(pipe: &mut Pipe, entry: Entry, ctx: &Ctx<'_>) -> Result<(), Error> {
    let Entry {
        checkout,
        mut greeting,
        ..
    } = entry;
    let Some(mut checkout) = checkout else {
        return Err(Error::refuse(
            sqlstate::INTERNAL_ERROR,
            "session pooling without a server",
        ));
    };
    let server = checkout.server();
    let pid = server.pid();
    let key = ctx.shared.cancels.register(pid);
    key.slot
        .arm(ctx.addr_of(ctx.role), server.key.0, server.key.1);
    ctx.client.set_state(crate::clients::ClientState::Active);
    ctx.client.hold(pid, &ctx.addr_of(ctx.role).to_string());
    build::backend_key_data(&mut greeting, pid, key.secret);
    build::ready_for_query(&mut greeting, TxnStatus::Idle);
    pipe.send_client(greeting.freeze());
    let end = loop {
        let end = pipe
            .relay(
                checkout.server(),
                None,
                Timers::from_config(&ctx.config.general),
            )
            .await;
        match end {
            RelayEnd::ClearDatabase(db) => {
                database_ddl::close_idle(ctx.shared, &ctx.database, &ctx.db.primary, &db);
            }
            end => break end,
        }
    };
    drop(key);
    finish(checkout, end, ctx.config).await
}

/// Ends a client's hold on a server that the relay gave up, and says what
/// the client is told. `Release` never reaches here.
pub(crate) async fn finish(
    checkout: Checkout,
    end: RelayEnd,
    config: &Config,
) -> Result<(), Error> {
    let reset = &config.general.server_reset_query;
    match end {
        // (Release and ClearDatabase are handled by the callers.)
        RelayEnd::Release
        | RelayEnd::ClearDatabase(_)
        | RelayEnd::Terminated
        | RelayEnd::ClientGone => {
            cleanup::check_in(checkout, reset).await;
            Ok(())
        }
        RelayEnd::Listen(closed) => {
            cleanup::check_in(checkout, reset).await;
            let (code, message) = closed.fatal();
            Err(Error::refuse(code, message))
        }
        RelayEnd::ClientProtocol(e) => {
            cleanup::check_in(checkout, reset).await;
            Err(Error::Frame(e))
        }
        RelayEnd::Timeout { code, message } => {
            cleanup::check_in(checkout, reset).await;
            Err(Error::refuse(code, message))
        }
        RelayEnd::Shutdown => {
            cleanup::check_in(checkout, reset).await;
            Err(Error::refuse(
                sqlstate::ADMIN_SHUTDOWN,
                "sluice is shutting down",
            ))
        }
        // (A retry is the caller's: here the request is lost.)
        RelayEnd::ReplicaSilent { .. } => {
            checkout.discard();
            Err(Error::refuse(
                sqlstate::CONNECTION_FAILURE,
                "the replica stopped answering in the middle of a request that cannot run again on the primary",
            ))
        }
        RelayEnd::CannotReroute => {
            checkout.discard();
            Err(Error::refuse(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "a statement that must run on the primary came in the middle of an extended-protocol batch begun on a replica; send Sync before it",
            ))
        }
        RelayEnd::TxnBlockInStatementMode => {
            cleanup::check_in(checkout, reset).await;
            Err(Error::refuse(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "transaction blocks are not allowed in statement pooling mode",
            ))
        }
        RelayEnd::ServerGone { error, told } => {
            tracing::warn!(error = %error, "server connection lost");
            checkout.discard();
            if told {
                Ok(())
            } else {
                Err(Error::refuse(
                    sqlstate::CONNECTION_FAILURE,
                    format!("server closed the connection unexpectedly ({error})"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each client is a tokio task: a 32-byte header, the future with the
    /// task tracker's 8 bytes and 24 of scheduler, id and stage beside it,
    /// and a 48-byte trailer, in a cell aligned to 128 bytes (nightly's
    /// `-Zprint-type-sizes` shows the layout). A future of at most 656 bytes
    /// makes a cell of 768 (a jemalloc size class); 8 more make it 896, and
    /// every idle client pays the difference (README, Performance).
    /// Everything an idle client keeps inline is in that future.
    const MAX_CLIENT_FUTURE: usize = 656;

    #[tokio::test]
    async fn an_idle_clients_task_stays_in_its_allocation_class() {
        let config =
            Config::parse("[databases.app]\nprimary = \"127.0.0.1:5432\"\n").expect("config");
        let shared = Arc::new(Shared::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let _peer = TcpStream::connect(listener.local_addr().expect("addr")).await;
        let (tcp, _) = listener.accept().await.expect("accept");
        let task = run(tcp, shared);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= MAX_CLIENT_FUTURE,
            "a client's future is {size} bytes, over {MAX_CLIENT_FUTURE}: its task moves \
             to a larger allocation class, and every idle client pays for it"
        );
    }
}
