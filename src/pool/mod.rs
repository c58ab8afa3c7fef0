//! Pools of server connections, one per (database, user), on deadpool.
//!
//! A `Checkout` is the only way to hold a server. Dropping it without
//! `release` discards the connection: a server in an unknown state is never
//! handed to another client.

mod manager;

use std::collections::HashMap;
use std::sync::Mutex;

use deadpool::managed::{Object, Pool, PoolError, TimeoutType, Timeouts};

use crate::config::{Config, Database, User};
use crate::error::Error;
use crate::protocol::sqlstate;
use crate::server::{ServerConn, ServerPassword, ServerTarget};
pub use manager::ServerManager;

pub type ServerPool = Pool<ServerManager>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
}

/// Every pool of one sluice instance; no globals.
#[derive(Default)]
pub struct PoolSet {
    pools: Mutex<HashMap<PoolKey, ServerPool>>,
}

fn server_password(user: Option<&User>) -> ServerPassword {
    use crate::auth::secret::Secret;
    let Some(u) = user else {
        return ServerPassword::None;
    };
    if let Some(p) = &u.server_password {
        return ServerPassword::Plain(p.clone());
    }
    match &u.secret {
        Secret::Plain { password, .. } => ServerPassword::Plain(password.clone()),
        Secret::Md5(h) if u.server_user.is_none() => ServerPassword::Md5Hash(h.clone()),
        _ => ServerPassword::None,
    }
}

impl PoolSet {
    /// The pool for (database, user), created on first use.
    pub fn get_or_create(
        &self,
        config: &Config,
        key: &PoolKey,
        db: &Database,
        user: Option<&User>,
    ) -> ServerPool {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pools.get(key) {
            return p.clone();
        }
        let target = ServerTarget {
            addr: db.primary.clone(),
            dbname: db.dbname.clone(),
            user: user
                .and_then(|u| u.server_user.clone())
                .unwrap_or_else(|| key.user.clone()),
            password: server_password(user),
            connect_timeout: config.general.server_connect_timeout,
        };
        let manager = ServerManager {
            target,
            lifetime: config.general.server_lifetime,
        };
        let g = &config.general;
        let pool = Pool::builder(manager)
            .max_size(config.pool_size(db))
            .wait_timeout(Some(g.query_wait_timeout))
            .create_timeout(Some(g.server_connect_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build();
        // build() fails only when no runtime is set, and one always is.
        let pool = pool.expect("deadpool runtime is set");
        pools.insert(key.clone(), pool.clone());
        pool
    }

    pub fn all(&self) -> Vec<(PoolKey, ServerPool)> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.iter().map(|(k, p)| (k.clone(), p.clone())).collect()
    }

    /// Opens connections until every pool holds its min_pool_size.
    pub async fn top_up(&self, config: &Config) {
        for (key, pool) in self.all() {
            let Some(db) = config.databases.get(&key.database) else {
                continue;
            };
            let min = config.min_pool_size(db);
            let missing = min.saturating_sub(pool.status().size);
            let mut held = Vec::new();
            for _ in 0..missing {
                let t = Timeouts {
                    wait: Some(std::time::Duration::ZERO),
                    ..pool.timeouts()
                };
                match pool.timeout_get(&t).await {
                    Ok(c) => held.push(c),
                    Err(_) => break,
                }
            }
        }
    }
}

/// A server connection checked out of its pool.
pub struct Checkout {
    obj: Option<Object<ServerManager>>,
}

impl Checkout {
    pub async fn get(pool: &ServerPool, database: &str) -> Result<Self, Error> {
        match pool.get().await {
            Ok(obj) => Ok(Self { obj: Some(obj) }),
            Err(PoolError::Timeout(TimeoutType::Wait)) => Err(Error::refuse(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "query_wait_timeout: no server connection for database \"{database}\" became free in time (pool size {})",
                    pool.status().max_size
                ),
            )),
            Err(PoolError::Timeout(_)) => Err(Error::refuse(
                sqlstate::UNABLE_TO_CONNECT,
                format!("timed out connecting to the server for database \"{database}\""),
            )),
            Err(PoolError::Backend(e)) => {
                let (code, msg) = e.client_message();
                Err(Error::refuse(
                    code,
                    format!("{msg} (database \"{database}\")"),
                ))
            }
            Err(e) => Err(Error::refuse(
                sqlstate::CONNECTION_FAILURE,
                format!("pool for database \"{database}\": {e}"),
            )),
        }
    }

    pub fn server(&mut self) -> &mut ServerConn {
        // `obj` is None only after release/discard, which consume self.
        self.obj.as_mut().expect("checkout holds a server")
    }

    /// Returns a clean server to its pool. The caller has reset it.
    pub fn release(mut self) {
        self.obj.take();
    }

    /// Closes the server connection instead of returning it.
    pub fn discard(mut self) {
        if let Some(o) = self.obj.take() {
            drop(Object::take(o));
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(o) = self.obj.take() {
            tracing::debug!("server checkout dropped without release: discarding");
            drop(Object::take(o));
        }
    }
}
