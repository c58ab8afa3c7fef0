//! Logging a client in, once per client and boxed by the caller (its state
//! is not part of what an idle client keeps): the client caps
//! (admission), authentication, the startup parameters, and the first
//! server, which also gives the greeting (ParameterStatus, notices).

use std::collections::BTreeMap;

use bytes::BytesMut;

use super::relay::Pipe;
use super::vars::{SessionVars, Setting};
use super::{Arrival, Ctx};
use super::{cleanup, pooled, startup};
use crate::app::Shared;
use crate::auth;
use crate::config::{Config, PoolMode};
use crate::error::{Error, ServerError};
use crate::net::Conn;
use crate::pool::{Checkout, PoolKey, ServerPool};
use crate::protocol::build;
use crate::protocol::sqlstate;
use crate::protocol::startup::StartupParams;

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

/// What logging in leads to: the admin console, or a pooled session (its
/// context, and how its pooling starts). Both boxed: `serve` keeps this
/// value while a console session runs, and must stay small.
pub(super) enum Started<'a> {
    /// With the client's place under max_client_conn.
    Console(crate::admin::Role, ClientSlot),
    Pooled(Box<Ctx<'a>>, Box<Entry>),
}

/// How a logged-in client's pooling starts.
pub(crate) struct Entry {
    pub(super) mode: PoolMode,
    /// None when transaction pooling answered the login without a server.
    pub(super) checkout: Option<Checkout>,
    /// What the client is told before its first ReadyForQuery.
    pub(super) greeting: BytesMut,
    /// The settings the client starts with.
    pub(super) vars: SessionVars,
    /// A client another process handed over: no greeting, its own key
    /// and statements.
    pub(super) resumed: Option<Box<super::resume::Resumed>>,
}

/// A client's place under max_client_conn.
pub(super) type ClientSlot = tokio::sync::OwnedSemaphorePermit;

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

fn too_many_clients() -> Error {
    Error::refuse(
        sqlstate::TOO_MANY_CONNECTIONS,
        "no more connections allowed (max_client_conn)",
    )
}

/// A place under max_client_conn. When there is none, a login to the
/// console may still be an operator's, decided once it is authenticated
/// (`operator_slot`); any other is refused at once.
fn client_slot(shared: &Shared, params: &StartupParams) -> Result<Option<ClientSlot>, Error> {
    match shared.clients.clone().try_acquire_owned() {
        Ok(slot) => Ok(Some(slot)),
        Err(_) => {
            let database = params.get("database").or_else(|| params.get("user"));
            match database.filter(|d| crate::admin::DATABASES.contains(d)) {
                Some(_) => Ok(None),
                None => Err(too_many_clients()),
            }
        }
    }
}

/// One of the admin_reserved_connections places, for an authenticated
/// admin or stats user when max_client_conn is reached.
fn operator_slot(shared: &Shared) -> Result<ClientSlot, Error> {
    shared.operator_clients.clone().try_acquire_owned().map_err(|_| {
        Error::refuse(
            sqlstate::TOO_MANY_CONNECTIONS,
            "no more connections allowed (max_client_conn, and admin_reserved_connections for operators)",
        )
    })
}

/// A client's places in the per-user, per-database and per-pool client
/// counts, freed when it leaves.
pub(super) type Places = (
    [crate::admission::Admitted; 2],
    Option<crate::admission::Admitted>,
);

/// Authentication, client caps, and the first server.
pub(super) async fn start<'a>(
    pipe: &mut Pipe,
    shared: &'a Shared,
    config: &'a Config,
    arrival: Box<Arrival>,
    client: &'a crate::clients::ClientEntry,
) -> Result<Started<'a>, Error> {
    let Arrival {
        params,
        deadline,
        peer_ip,
    } = *arrival;
    let slot = client_slot(shared, &params)?;
    let (login, [user_place, db_place]) =
        admit(pipe, shared, config, &params, deadline, peer_ip).await?;
    let application_name = params
        .get("application_name")
        .unwrap_or_default()
        .to_string();
    if crate::admin::DATABASES.contains(&login.database.as_str())
        && let Some(role) = crate::admin::role(config, &login.user)
    {
        let slot = match slot {
            Some(s) => s,
            None => operator_slot(shared)?,
        };
        console_login(&mut pipe.client, client, &login, application_name).await?;
        return Ok(Started::Console(role, slot));
    }
    let slot = slot.ok_or_else(too_many_clients)?;
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
    let (database, user_name) = logged_in(&pool, client, application_name);
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
        resumed: None,
    });
    Ok(Started::Pooled(ctx, entry))
}

/// The client is logged in to `pool`: SHOW CLIENTS shows who it is. The
/// names as the pool holds them (shared by its clients).
pub(super) fn logged_in(
    pool: &ServerPool,
    client: &crate::clients::ClientEntry,
    application_name: String,
) -> (std::sync::Arc<str>, std::sync::Arc<str>) {
    let m = pool.manager();
    let (database, user) = (m.database.clone(), m.user.clone());
    client.logged_in(crate::clients::Identity {
        user: user.clone(),
        database: database.clone(),
        application_name,
    });
    (database, user)
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

fn login_timeout() -> Error {
    Error::refuse(
        sqlstate::PROTOCOL_VIOLATION,
        "client_login_timeout: authentication took too long",
    )
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
    let throttled = peer_ip.filter(|ip| {
        g.auth_failure_limit > 0 && !g.auth_throttle_exempt.iter().any(|c| c.contains(*ip))
    });
    let attempt = match throttled {
        None => None,
        Some(ip) => {
            let throttle = &shared.auth_throttle;
            let (limit, window) = (g.auth_failure_limit, g.auth_failure_window);
            match throttle.admit(ip, limit, window, deadline).await {
                Ok(Some(attempt)) => Some(attempt),
                Ok(None) => {
                    // Slow the guesser down, and never let it reach PostgreSQL.
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    return Err(Error::refuse(
                        sqlstate::INVALID_AUTHORIZATION,
                        format!("too many failed login attempts from {ip}; try again later"),
                    ));
                }
                Err(_) => return Err(login_timeout()),
            }
        }
    };
    let login = tokio::time::timeout_at(
        deadline,
        authenticate(&mut pipe.client, shared, config, params, peer_ip),
    )
    .await
    .map_err(|_| login_timeout())?;
    let login = match login {
        Err(e) => {
            if let (Some(attempt), Error::Refuse { code, .. }) = (attempt, &e)
                && code == sqlstate::INVALID_PASSWORD
            {
                attempt.failed(g.auth_failure_window);
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
