//! A client another sluice process handed over (`crate::takeover`): its
//! session carries on here from where it rested, with no login: the old
//! process authenticated it, and it sees nothing but its next replies.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::login::Entry;
use super::relay::Pipe;
use super::vars::{SessionVars, Setting};
use super::{Ctx, end, killed_or};
use crate::app::Shared;
use crate::config::PoolMode;
use crate::error::Error;
use crate::net::{Conn, PgStream};
use crate::pool::PoolKey;
use crate::protocol::sqlstate;
use crate::signal::Signal;
use crate::takeover::moved::Moved;

/// What a resumed session keeps of its old one besides its settings.
#[derive(Debug)]
pub(crate) struct Resumed {
    pub pid: i32,
    pub secret: i32,
    pub statements: Vec<crate::takeover::moved::Statement>,
    pub unnamed: Option<Vec<u8>>,
}

/// Serves a handed-over client to completion, as `super::run` does.
pub fn resume(
    tcp: TcpStream,
    mut moved: Moved,
    shared: Arc<Shared>,
) -> impl std::future::Future<Output = ()> {
    let (_, span, registered) = super::arrived(&tcp, &shared);
    async move {
        let max = shared.config().general.max_packet_size;
        let mut pipe = Pipe::new(Conn::new(PgStream::Plain(tcp)), max);
        pipe.client
            .rbuf
            .extend_from_slice(&std::mem::take(&mut moved.buffered));
        pipe.client_entry = Some(registered.entry.clone());
        let config = shared.config();
        let serving = async {
            let (ctx, entry) = enter(&shared, &config, moved, &registered.entry)?;
            super::pooled::run(&mut pipe, *entry, &ctx).await
        };
        let result = killed_or(registered.entry.signals.unless(Signal::Kill, serving).await);
        Box::pin(end(&mut pipe, result)).await;
    }
    .instrument(span)
}

/// The logged-in client the handed-over state describes, in this
/// process's config (refused if its database or user is gone, or its pool
/// mode is now session pooling).
fn enter<'a>(
    shared: &'a Shared,
    config: &'a crate::config::Config,
    moved: Moved,
    client: &'a crate::clients::ClientEntry,
) -> Result<(Box<Ctx<'a>>, Box<Entry>), Error> {
    let gone = || {
        Error::refuse(
            sqlstate::ADMIN_SHUTDOWN,
            "sluice restarted without this client's database or user",
        )
    };
    let db = config.databases.get(&moved.database).ok_or_else(gone)?;
    let user = Some(config.users.get(&moved.user).ok_or_else(gone)?);
    let mode = config.pool_mode(db, user);
    if mode == PoolMode::Session {
        return Err(gone());
    }
    // Admitted by the old process already: no cap refuses it now.
    let slot = shared
        .clients
        .clone()
        .try_acquire_owned()
        .map_err(|_| gone())?;
    let place = |key: String| shared.client_counts.admit(&key, 0).ok_or_else(gone);
    let places = (
        [
            place(format!("user:{}", moved.user))?,
            place(format!("db:{}", moved.database))?,
        ],
        shared
            .client_counts
            .admit(&format!("pool:{}/{}", moved.database, moved.user), 0),
    );
    let key = PoolKey::primary(&moved.database, &moved.user);
    let pool = shared.pools.get_or_create(config, &key, db, user);
    let (database, user_name) = super::login::logged_in(&pool, client, moved.application_name);
    let vars = SessionVars {
        reported: Arc::new(moved.reported.into_iter().collect()),
        extra: moved
            .extra
            .into_iter()
            .map(|(k, sql, v)| {
                (
                    k,
                    if sql {
                        Setting::Sql(v)
                    } else {
                        Setting::Text(v)
                    },
                )
            })
            .collect(),
    };
    tracing::debug!(user = %user_name, database = %database, "client taken over from the old process");
    let ctx = Box::new(Ctx {
        shared,
        config,
        pool,
        db,
        database,
        user_name,
        looked_up: None,
        role: crate::route::Target::Primary,
        client,
        replica_pools: Default::default(),
        _places: places,
        _slot: slot,
    });
    let entry = Box::new(Entry {
        mode,
        checkout: None,
        greeting: BytesMut::new(),
        vars,
        resumed: Some(Box::new(Resumed {
            pid: moved.pid,
            secret: moved.secret,
            statements: moved.statements,
            unnamed: moved.unnamed,
        })),
    });
    Ok((ctx, entry))
}
