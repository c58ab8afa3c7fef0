//! One client connection, from its first byte to its last: startup,
//! authentication, server checkout, the relay, and handing the server back
//! clean (or discarding it).

pub mod cancel;
mod cleanup;
mod outq;
pub mod relay;
pub mod startup;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::app::Shared;
use crate::auth;
use crate::config::Config;
use crate::error::Error;
use crate::net::{Conn, PgStream};
use crate::pool::{Checkout, PoolKey};
use crate::protocol::build::{self, Severity};
use crate::protocol::sqlstate;
use crate::protocol::startup::StartupParams;
use crate::protocol::tags::TxnStatus;
use cancel::CancelTarget;
use relay::{Relay, RelayEnd};
use startup::Opening;

/// Serves one accepted TCP connection to completion.
pub async fn run(tcp: TcpStream, shared: Arc<Shared>) {
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = tcp.set_nodelay(true);
    let span = tracing::info_span!("client", %peer);
    async move {
        let mut conn = Conn::new(PgStream::Plain(tcp));
        if let Err(e) = serve(&mut conn, &shared).await {
            match e.client_message() {
                Some((code, msg)) => {
                    tracing::info!(%code, error = %msg, "client refused");
                    let mut out = BytesMut::new();
                    build::error(&mut out, Severity::Fatal, &code, &msg);
                    let _ = relay::write_with_timeout(&mut conn.stream, &out).await;
                }
                None => tracing::debug!(error = %e, "client connection ended"),
            }
        }
    }
    .instrument(span)
    .await
}

/// Who the client is, once authenticated.
struct Login {
    user: String,
    database: String,
    settings: Vec<(String, String)>,
}

async fn serve(conn: &mut Conn, shared: &Shared) -> Result<(), Error> {
    let params = match startup::read_opening(conn, shared).await? {
        Opening::Startup(p) => p,
        Opening::Cancelled => return Ok(()),
    };
    let _slot = shared.clients.clone().try_acquire_owned().map_err(|_| {
        Error::refuse(
            sqlstate::TOO_MANY_CONNECTIONS,
            "no more connections allowed (max_client_conn)",
        )
    })?;
    let config = shared.config();
    let login = authenticate(conn, &config, &params).await?;
    let key = PoolKey {
        database: login.database.clone(),
        user: login.user.clone(),
    };
    let db = &config.databases[&login.database];
    let pool = shared
        .pools
        .get_or_create(&config, &key, db, config.users.get(&login.user));
    let mut checkout = Checkout::get(&pool, &login.database).await?;

    let mut greeting = BytesMut::new();
    let mut notices = Vec::new();
    if let Err(e) = checkout
        .server()
        .apply_settings(&login.settings, &mut notices)
        .await
    {
        cleanup::check_in(checkout, &config.general.server_reset_query).await;
        return Err(Error::Server(e));
    }
    // NOTICEs the settings caused reach the client, as at a direct login.
    for n in &notices {
        greeting.extend_from_slice(n);
    }
    greet(&mut greeting, checkout.server());
    let server = checkout.server();
    let target = CancelTarget {
        addr: db.primary.clone(),
        pid: server.key.0,
        secret: server.key.1,
    };
    let secret = shared.cancels.register(server.pid(), target);
    build::backend_key_data(&mut greeting, server.pid(), secret);
    build::ready_for_query(&mut greeting, TxnStatus::Idle);
    tracing::info!(user = %login.user, database = %login.database, server_pid = server.pid(), "client logged in");

    let mut relay = Relay::new(conn, checkout.server(), config.general.max_packet_size);
    relay.send_client(greeting.freeze());
    let end = relay.run().await;
    shared.cancels.unregister(checkout.server().pid(), secret);
    finish(conn, checkout, end, &config).await
}

/// Checks the startup parameters and the client's credentials, then sends
/// AuthenticationOk.
async fn authenticate(
    conn: &mut Conn,
    config: &Config,
    params: &StartupParams,
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
    let mut out = BytesMut::new();
    let unsupported = startup::unsupported_options(params);
    if params.minor > 0 || !unsupported.is_empty() {
        build::negotiate_protocol_version(&mut out, 0, &unsupported);
        conn.write_all(&out).await?;
        out.clear();
    }
    auth::client::authenticate(
        conn,
        &user,
        config.users.get(&user),
        config.general.auth_type,
    )
    .await?;
    if !config.databases.contains_key(&database) {
        return Err(Error::refuse(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        ));
    }
    build::authentication(&mut out, 0, &[]);
    conn.write_all(&out).await?;
    Ok(Login {
        user,
        database,
        settings,
    })
}

/// ParameterStatus for every parameter, with the server's values.
fn greet(out: &mut BytesMut, server: &crate::server::ServerConn) {
    for (k, v) in &server.params {
        build::parameter_status(out, k, v);
    }
}

async fn finish(
    conn: &mut Conn,
    checkout: Checkout,
    end: RelayEnd,
    config: &Config,
) -> Result<(), Error> {
    match end {
        RelayEnd::Terminated | RelayEnd::ClientGone => {
            cleanup::check_in(checkout, &config.general.server_reset_query).await;
            Ok(())
        }
        RelayEnd::ClientProtocol(e) => {
            cleanup::check_in(checkout, &config.general.server_reset_query).await;
            Err(Error::Frame(e))
        }
        RelayEnd::ServerGone { error, told } => {
            tracing::warn!(error = %error, "server connection lost");
            checkout.discard();
            if told {
                let _ = conn;
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
