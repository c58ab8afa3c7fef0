//! auth_query: users that are not in [users] are looked up in PostgreSQL
//! (pg_shadow by default) over a connection made as `auth_user`, and cached
//! for auth_query_ttl. Their stored secret (SCRAM verifier or md5 hash)
//! authenticates the client, and SCRAM pass-through logs sluice in as them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::secret::Secret;
use crate::config::{Config, User};
use crate::error::Error;
use crate::server::{ServerConn, ServerTarget};

/// (database, user name).
type Key = (String, String);

/// Looked-up users per (database, user), with when they were fetched.
#[derive(Debug, Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<Key, (Option<User>, Instant)>>,
}

impl AuthCache {
    fn get(&self, key: &Key, ttl: std::time::Duration) -> Option<Option<User>> {
        let m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        m.get(key)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(u, _)| u.clone())
    }

    fn put(&self, key: Key, user: Option<User>) {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.clear();
        }
        m.insert(key, (user, Instant::now()));
    }
}

/// The user `name` as PostgreSQL knows it in `database`, or None.
pub async fn lookup(
    cache: &AuthCache,
    config: &Config,
    database: &str,
    name: &str,
) -> Result<Option<User>, Error> {
    let g = &config.general;
    let (Some(auth_user), Some(db)) = (&g.auth_user, config.databases.get(database)) else {
        return Ok(None);
    };
    let key = (database.to_string(), name.to_string());
    if let Some(hit) = cache.get(&key, g.auth_query_ttl) {
        return Ok(hit);
    }
    let au = config.users.get(auth_user);
    let target = ServerTarget {
        addr: db.primary.clone(),
        dbname: db.dbname.clone(),
        user: au
            .and_then(|u| u.server_user.clone())
            .unwrap_or_else(|| auth_user.clone()),
        password: crate::pool::server_password(au),
        connect_timeout: g.server_connect_timeout,
        tls: g.server_tls.clone(),
        application_name: "sluice auth_query".into(),
        replication: false,
    };
    let mut conn = ServerConn::connect(&target).await?;
    let row = conn.query_row(&g.auth_query, &[name]).await?;
    let secret = row.and_then(|r| r.get(1).cloned().flatten());
    let user = secret
        .and_then(|s| Secret::parse(name, &s).ok())
        .map(|secret| User {
            secret,
            server_user: None,
            server_password: None,
            pool_mode: None,
            max_user_connections: None,
        });
    tracing::debug!(user = name, found = user.is_some(), "auth_query lookup");
    cache.put(key, user.clone());
    Ok(user)
}
