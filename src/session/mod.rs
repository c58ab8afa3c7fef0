//! One client connection, from its first byte to its last: startup,
//! authentication, the first server checkout, then the pool mode's loop
//! (`session_mode` here, `pooled` for transaction and statement pooling).

pub mod cancel;
mod cleanup;
mod database_ddl;
mod expect;
mod multiplex;
mod outq;
mod pins;
mod pooled;
pub mod prepared;
pub mod relay;
pub mod routing;
mod spare;
pub mod startup;
pub mod statements;
pub mod vars;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::app::Shared;
use crate::auth;
use crate::config::{Config, PoolMode};
use crate::error::{Error, ServerError};
use crate::net::{Conn, PgStream};
use crate::pool::{Checkout, PoolKey, ServerPool};
use crate::protocol::build::{self, Severity};
use crate::protocol::sqlstate;
use crate::protocol::startup::StartupParams;
use crate::protocol::tags::TxnStatus;
use crate::signal::Signal;
use relay::{Pipe, RelayEnd, Timers};
use startup::Opening;
use vars::{SessionVars, Setting};

/// Serves one accepted TCP connection to completion.
///
/// A plain function around the task's future: what only the startup needs
/// (the socket, its addresses, the peer's name for the span) is used up
/// here or moved into a boxed future, because a task's future is as large
/// as its largest state, and the idle wait of a logged-in client is the
/// state that thousands of clients keep.
pub fn run(tcp: TcpStream, shared: Arc<Shared>) -> impl std::future::Future<Output = ()> {
    let peer_addr = tcp.peer_addr().ok();
    let local_addr = tcp.local_addr().ok();
    let _ = tcp.set_nodelay(true);
    // The address is formatted only when the span is enabled (info level).
    let span = match peer_addr {
        Some(peer) => tracing::info_span!("client", %peer),
        None => tracing::info_span!("client", peer = ""),
    };
    let registered = shared.registry.register(peer_addr, local_addr);
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
        let result = registered.entry.signals.unless(Signal::Kill, serving).await;
        let result = result.unwrap_or_else(|| {
            Err(Error::refuse(
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command (KILL)",
            ))
        });
        Box::pin(end(&mut pipe, result)).await;
    }
    .instrument(span)
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
async fn end(pipe: &mut Pipe, result: Result<(), Error>) {
    if let Err(e) = result {
        refuse(pipe, e).await;
    }
    pipe.client.close().await;
}

/// Tells the client why its session ends, when that is the client's business.
async fn refuse(pipe: &mut Pipe, e: Error) {
    match e.client_message() {
        Some((code, msg)) => {
            tracing::info!(%code, error = %msg, "client refused");
            let mut out = BytesMut::new();
            build::error(&mut out, Severity::Fatal, &code, &msg);
            pipe.send_client(out.freeze());
            pipe.flush_client().await;
            pipe.client.linger_close().await;
        }
        None => tracing::debug!(error = %e, "client connection ended"),
    }
}

/// Who the client is, once authenticated.
struct Login {
    user: String,
    database: String,
    settings: Vec<(String, String)>,
    /// From a SCRAM login against a stored verifier (pass-through).
    client_key: Option<Vec<u8>>,
    /// A user found with auth_query rather than in [users].
    looked_up: Option<crate::config::User>,
    /// What authentication still owes the client (SCRAM's final message),
    /// to go out with AuthenticationOk.
    owed: BytesMut,
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

/// What logging in leads to: the admin console, or a pooled session (its
/// context, and how its pooling starts). Both boxed: `serve` keeps this
/// value while a console session runs, and must stay small.
enum Started<'a> {
    /// With the client's place under max_client_conn.
    Console(crate::admin::Role, ClientSlot),
    Pooled(Box<Ctx<'a>>, Box<Entry>),
}

/// How a logged-in client's pooling starts.
pub(crate) struct Entry {
    mode: PoolMode,
    /// None when transaction pooling answered the login without a server.
    checkout: Option<Checkout>,
    /// What the client is told before its first ReadyForQuery.
    greeting: BytesMut,
    /// The settings the client starts with.
    vars: SessionVars,
}

/// A client's place under max_client_conn.
type ClientSlot = tokio::sync::OwnedSemaphorePermit;

/// A console login: the client is told what authentication still owed it
/// (the console sends the rest) and listed as active.
async fn console_login(
    conn: &mut Conn,
    client: &crate::clients::ClientEntry,
    login: &Login,
    application_name: String,
) -> Result<(), Error> {
    if !login.owed.is_empty() {
        conn.write_all(&login.owed).await?;
    }
    client.logged_in(crate::clients::Identity {
        user: login.user.as_str().into(),
        database: login.database.as_str().into(),
        application_name,
    });
    client.set_state(crate::clients::ClientState::Active);
    Ok(())
}

fn client_slot(shared: &Shared) -> Result<ClientSlot, Error> {
    shared.clients.clone().try_acquire_owned().map_err(|_| {
        Error::refuse(
            sqlstate::TOO_MANY_CONNECTIONS,
            "no more connections allowed (max_client_conn)",
        )
    })
}

/// A client's places in the per-user, per-database and per-pool client
/// counts, freed when it leaves.
type Places = (
    [crate::admission::Admitted; 2],
    Option<crate::admission::Admitted>,
);

/// Authentication, client caps, and the first server.
async fn start<'a>(
    pipe: &mut Pipe,
    shared: &'a Shared,
    config: &'a Config,
    arrival: Box<Arrival>,
    client: &'a crate::clients::ClientEntry,
) -> Result<Started<'a>, Error> {
    let slot = client_slot(shared)?;
    let Arrival {
        params,
        deadline,
        peer_ip,
    } = *arrival;
    let (login, [user_place, db_place]) =
        admit(pipe, shared, config, &params, deadline, peer_ip).await?;
    let application_name = params
        .params
        .iter()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if crate::admin::DATABASES.contains(&login.database.as_str())
        && let Some(role) = crate::admin::role(config, &login.user)
    {
        console_login(&mut pipe.client, client, &login, application_name).await?;
        return Ok(Started::Console(role, slot));
    }
    let Login {
        user: user_name,
        database,
        settings,
        client_key,
        looked_up,
        owed,
    } = login;
    let pool_place = shared
        .client_counts
        .admit(&format!("pool:{database}/{user_name}"), 0);
    let key = PoolKey::primary(&database, &user_name);
    let db = &config.databases[&database];
    let user = config.users.get(&user_name).or(looked_up.as_ref());
    let mode = config.pool_mode(db, user);
    let pool = shared.pools.get_or_create(config, &key, db, user);
    // The names as the pool holds them: shared by its clients.
    let (database, user_name) = {
        let m = pool.manager();
        (m.database.clone(), m.user.clone())
    };
    client.logged_in(crate::clients::Identity {
        user: user_name.clone(),
        database: database.clone(),
        application_name,
    });
    if let (Some(k), crate::server::ServerPassword::PassThrough(pt)) =
        (client_key, &pool.manager().target.password)
    {
        pt.learn(k);
    }
    // Transaction pooling answers a login like an earlier one from what that
    // one led to; otherwise the client's first server tells.
    let pooled = mode != PoolMode::Session;
    let welcome = pooled.then(|| pool.manager().logins.welcome(&settings));
    let (checkout, role, notices, vars) = match welcome.flatten() {
        Some(vars) => (None, crate::route::Target::Primary, BytesMut::new(), vars),
        None => {
            let user = (&*user_name, user);
            let first = first_server(shared, config, &database, &pool, mode, user, &settings);
            let (mut checkout, role, greeting, extra) = first.await?;
            let server = checkout.server();
            let vars = SessionVars {
                reported: server.params.clone(),
                extra,
            };
            // A login that drew NOTICEs is not answered from memory.
            if pooled && greeting.is_empty() {
                let logins = &pool.manager().logins;
                logins.learn(settings, &server.initial_params, &vars);
            }
            (Some(checkout), role, greeting, vars)
        }
    };
    let greeting = greeting(owed, &notices, &vars);
    tracing::info!(user = %user_name, database = %database, ?mode, "client logged in");
    let ctx = Box::new(Ctx {
        shared,
        config,
        pool,
        db,
        database,
        user_name,
        looked_up: looked_up.map(Box::new),
        role,
        client,
        replica_pools: Default::default(),
        _places: ([user_place, db_place], pool_place),
        _slot: slot,
    });
    let entry = Box::new(Entry {
        mode,
        checkout,
        greeting,
        vars,
    });
    Ok(Started::Pooled(ctx, entry))
}

/// What a pooled client is told after its credentials: what authentication
/// still owed it, AuthenticationOk, the NOTICEs its settings drew, and the
/// server's ParameterStatus. Sent with BackendKeyData and ReadyForQuery, in
/// one write.
fn greeting(owed: BytesMut, notices: &[u8], vars: &SessionVars) -> BytesMut {
    let mut out = owed;
    out.reserve(512 + notices.len());
    build::authentication(&mut out, 0, &[]);
    out.extend_from_slice(notices);
    for (k, v) in vars.reported.iter() {
        build::parameter_status(&mut out, k, v);
    }
    out
}

/// The client's first server, with the client's startup settings applied
/// (and, in transaction pooling, the last client's undone): the checkout,
/// its role, the NOTICEs the settings drew, and the settings PostgreSQL does
/// not report.
async fn first_server(
    shared: &Shared,
    config: &Config,
    database: &str,
    pool: &ServerPool,
    mode: PoolMode,
    user: (&str, Option<&crate::config::User>),
    settings: &[(String, String)],
) -> Result<
    (
        Checkout,
        crate::route::Target,
        BytesMut,
        BTreeMap<String, Setting>,
    ),
    Error,
> {
    let (mut checkout, role) = first_checkout(shared, config, database, pool, mode, user).await?;
    let mut greeting = BytesMut::new();
    if mode != PoolMode::Session
        && let Err(e) = pooled::neutralize(&mut checkout).await
    {
        checkout.discard();
        return Err(Error::Server(e));
    }
    let extra = match apply_startup(&mut checkout, settings, &mut greeting).await {
        Ok(extra) => extra,
        Err(e) => {
            cleanup::check_in(checkout, &config.general.server_reset_query).await;
            return Err(Error::Server(e));
        }
    };
    Ok((checkout, role, greeting, extra))
}

/// The client's first server: the primary, or in session pooling of a
/// database with `route = "replica"`, a replica in rotation (the primary
/// when none is, or when it cannot be reached).
async fn first_checkout(
    shared: &Shared,
    config: &Config,
    database: &str,
    pool: &ServerPool,
    mode: PoolMode,
    (user_name, user): (&str, Option<&crate::config::User>),
) -> Result<(Checkout, crate::route::Target), Error> {
    use crate::route::{Class, Hint, Need, Route, SessionRoute, Target, TxnEffect};
    let db = &config.databases[database];
    let topo = (mode == PoolMode::Session && db.route == crate::config::DbRoute::Replica)
        .then(|| shared.routes.topology(database))
        .flatten();
    if let Some(topo) = topo {
        let read = Class {
            route: Route::Read,
            txn: TxnEffect::None,
            hint: Hint::None,
        };
        let s = &topo.settings;
        let d = crate::route::decide::decide(
            &read,
            SessionRoute::Auto,
            s.consistency,
            Need::None,
            &topo.views(),
            s.balance,
            topo.next_round_robin(),
        );
        topo.count(d);
        if let Target::Replica(i) = d.target {
            let key = PoolKey {
                role: d.target,
                ..PoolKey::primary(database, user_name)
            };
            let rpool = shared.pools.get_or_create(config, &key, db, user);
            match Checkout::get(&rpool, database).await {
                Ok(c) => return Ok((c, d.target)),
                Err(e) => {
                    tracing::warn!(database, error = %e, "replica checkout failed: using the primary");
                    topo.ban(i);
                }
            }
        }
    }
    Ok((
        Checkout::get(pool, database).await?,
        crate::route::Target::Primary,
    ))
}

/// Throttling, authentication (within client_login_timeout) and client
/// caps. The returned places free themselves when the session ends.
async fn admit(
    pipe: &mut Pipe,
    shared: &Shared,
    config: &Config,
    params: &StartupParams,
    deadline: tokio::time::Instant,
    peer_ip: Option<std::net::IpAddr>,
) -> Result<(Login, [crate::admission::Admitted; 2]), Error> {
    let g = &config.general;
    if let Some(ip) = peer_ip
        && shared
            .auth_throttle
            .blocked(ip, g.auth_failure_limit, g.auth_failure_window)
    {
        // Slow the guesser down, and never let it reach PostgreSQL.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        return Err(Error::refuse(
            sqlstate::INVALID_AUTHORIZATION,
            format!("too many failed login attempts from {ip}; try again later"),
        ));
    }
    let login = tokio::time::timeout_at(
        deadline,
        authenticate(&mut pipe.client, shared, config, params, peer_ip),
    )
    .await
    .map_err(|_| {
        Error::refuse(
            sqlstate::PROTOCOL_VIOLATION,
            "client_login_timeout: authentication took too long",
        )
    })?;
    let login = match login {
        Err(e) => {
            if let (Some(ip), Error::Refuse { code, .. }) = (peer_ip, &e)
                && code == sqlstate::INVALID_PASSWORD
            {
                shared.auth_throttle.failed(ip, g.auth_failure_window);
            }
            return Err(e);
        }
        Ok(l) => l,
    };
    if !shared
        .connect_rate
        .allow(&login.user, g.max_user_connect_rate)
    {
        return Err(Error::refuse(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "too many new connections for user \"{}\" (max_user_connect_rate = {}/s)",
                login.user, g.max_user_connect_rate
            ),
        ));
    }
    let too_many = |what: &str, name: &str| {
        Error::refuse(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "too many client connections for {what} \"{name}\" (max_{what}_client_connections)"
            ),
        )
    };
    let user_place = shared
        .client_counts
        .admit(
            &format!("user:{}", login.user),
            g.max_user_client_connections,
        )
        .ok_or_else(|| too_many("user", &login.user))?;
    let db_place = shared
        .client_counts
        .admit(
            &format!("db:{}", login.database),
            g.max_db_client_connections,
        )
        .ok_or_else(|| too_many("db", &login.database))?;
    Ok((login, [user_place, db_place]))
}

/// The authentication method for this client: auth_hba_file's first
/// matching line when there is one, else auth_type.
fn auth_method(
    config: &Config,
    tls: bool,
    database: &str,
    user: &str,
    ip: Option<std::net::IpAddr>,
) -> Result<crate::config::AuthType, Error> {
    use crate::auth::hba::HbaMethod;
    use crate::config::AuthType;
    let Some(hba) = &config.general.hba else {
        return Ok(config.general.auth_type);
    };
    let host = ip.map(|i| i.to_string()).unwrap_or_default();
    let ssl = if tls { "on" } else { "off" };
    match hba.method(tls, database, user, ip) {
        Some(HbaMethod::ScramSha256) => Ok(AuthType::ScramSha256),
        Some(HbaMethod::Md5) => Ok(AuthType::Md5),
        Some(HbaMethod::Trust) => Ok(AuthType::Trust),
        Some(HbaMethod::Cert) => Ok(AuthType::Cert),
        Some(HbaMethod::Reject) => Err(Error::refuse(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "auth_hba_file rejects connection for host \"{host}\", user \"{user}\", database \"{database}\", SSL {ssl}"
            ),
        )),
        None => Err(Error::refuse(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "no auth_hba_file entry for host \"{host}\", user \"{user}\", database \"{database}\", SSL {ssl}"
            ),
        )),
    }
}

/// Checks the startup parameters and the client's credentials. The caller
/// sends AuthenticationOk, as the first message of the greeting.
async fn authenticate(
    conn: &mut Conn,
    shared: &Shared,
    config: &Config,
    params: &StartupParams,
    peer_ip: Option<std::net::IpAddr>,
) -> Result<Login, Error> {
    let user = params
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Error::refuse(
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            )
        })?
        .to_string();
    let database = params
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_string();
    let settings = startup::session_settings(params)?;
    let unsupported = startup::unsupported_options(params);
    if params.minor > 0 || !unsupported.is_empty() {
        let mut out = BytesMut::new();
        build::negotiate_protocol_version(&mut out, 0, &unsupported);
        conn.write_all(&out).await?;
    }
    let auth_type = auth_method(config, conn.stream.is_tls(), &database, &user, peer_ip)?;
    let looked_up = match config.users.contains_key(&user) {
        true => None,
        false => auth::query::lookup(&shared.auth_cache, config, &database, &user).await?,
    };
    let user_cfg = config.users.get(&user).or(looked_up.as_ref());
    let mut owed = BytesMut::new();
    let client_key =
        auth::client::authenticate(conn, &user, user_cfg, auth_type, &mut owed).await?;
    let console = crate::admin::DATABASES.contains(&database.as_str())
        && crate::admin::role(config, &user).is_some();
    if !console && !config.databases.contains_key(&database) {
        return Err(Error::refuse(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        ));
    }
    // AuthenticationOk goes out with the rest of the greeting, in one write.
    Ok(Login {
        user,
        database,
        settings,
        client_key,
        looked_up,
        owed,
    })
}

/// Applies the client's startup settings on its first server. NOTICEs they
/// cause go to the greeting, as at a direct login. Returns the settings
/// PostgreSQL does not report, which transaction pooling must carry along.
async fn apply_startup(
    checkout: &mut Checkout,
    settings: &[(String, String)],
    greeting: &mut BytesMut,
) -> Result<BTreeMap<String, Setting>, ServerError> {
    let server = checkout.server();
    let mut notices = Vec::new();
    server.apply_settings(settings, &mut notices).await?;
    for n in &notices {
        greeting.extend_from_slice(n);
    }
    let extra: BTreeMap<String, Setting> = settings
        .iter()
        .filter(|(k, _)| !server.params.keys().any(|p| p.eq_ignore_ascii_case(k)))
        .map(|(k, v)| (k.to_ascii_lowercase(), Setting::Text(v.clone())))
        .collect();
    server.extra.extend(extra.clone());
    Ok(extra)
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
