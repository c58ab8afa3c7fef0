//! The console's control commands: PAUSE, RESUME, KILL, RECONNECT, SET,
//! RELOAD, SHUTDOWN. Only `admin_users` reach these.

use std::time::Duration;

use crate::app::Shared;
use crate::config::units::parse_duration;
use crate::config::{Balance, Config, Consistency};

/// Keys `SET key = value` changes (the others need a RELOAD of the file).
pub const SETTABLE: &[&str] = &[
    "default_pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "reserve_pool_timeout",
    "max_client_conn",
    "query_wait_timeout",
    "query_wait_notify",
    "query_timeout",
    "client_idle_timeout",
    "idle_transaction_timeout",
    "server_connect_timeout",
    "server_idle_timeout",
    "server_lifetime",
    "server_reset_query",
    "consistency",
    "load_balance",
    "replica_ban_time",
];

/// A failed command: SQLSTATE and message.
pub type Failure = (&'static str, String);

fn known_db(shared: &Shared, db: Option<&str>) -> Result<(), Failure> {
    match db {
        Some(d) if !shared.config().databases.contains_key(d) => {
            Err(("3D000", format!("no such database: {d}")))
        }
        _ => Ok(()),
    }
}

/// PAUSE [db]: new requests wait; returns once no server of `db` is in use.
pub async fn pause(shared: &Shared, db: Option<&str>) -> Result<(), Failure> {
    known_db(shared, db)?;
    let config = shared.config();
    let names: Vec<&str> = match db {
        Some(d) => vec![d],
        None => config.databases.keys().map(String::as_str).collect(),
    };
    for n in &names {
        shared.pools.pauses.pause(n);
    }
    while shared.pools.in_use(db) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub fn resume(shared: &Shared, db: Option<&str>) -> Result<(), Failure> {
    known_db(shared, db)?;
    shared.pools.pauses.resume(db);
    Ok(())
}

/// KILL db: its clients are disconnected now and its servers closed.
pub fn kill(shared: &Shared, db: &str) -> Result<usize, Failure> {
    known_db(shared, Some(db))?;
    let n = shared.registry.kill_database(db);
    shared.pools.reconnect(Some(db));
    Ok(n)
}

pub fn reconnect(shared: &Shared, db: Option<&str>) -> Result<(), Failure> {
    known_db(shared, db)?;
    shared.pools.reconnect(db);
    Ok(())
}

fn number(key: &str, v: &str) -> Result<usize, Failure> {
    v.parse()
        .map_err(|_| ("22023", format!("{key}: \"{v}\" is not a number")))
}

fn duration(key: &str, v: &str) -> Result<Duration, Failure> {
    parse_duration(v).map_err(|e| ("22023", format!("{key}: {e}")))
}

/// Applies `SET key = value` to a copy of `c`.
pub fn set_value(c: &mut Config, key: &str, v: &str) -> Result<(), Failure> {
    let g = &mut c.general;
    match key {
        "default_pool_size" => g.default_pool_size = number(key, v)?.max(1),
        "min_pool_size" => g.min_pool_size = number(key, v)?,
        "reserve_pool_size" => g.reserve_pool_size = number(key, v)?,
        "max_client_conn" => g.max_client_conn = number(key, v)?.max(1),
        "reserve_pool_timeout" => g.reserve_pool_timeout = duration(key, v)?,
        "query_wait_timeout" => g.query_wait_timeout = duration(key, v)?,
        "query_wait_notify" => g.query_wait_notify = duration(key, v)?,
        "query_timeout" => g.query_timeout = duration(key, v)?,
        "client_idle_timeout" => g.client_idle_timeout = duration(key, v)?,
        "idle_transaction_timeout" => g.idle_transaction_timeout = duration(key, v)?,
        "server_connect_timeout" => g.server_connect_timeout = duration(key, v)?,
        "server_idle_timeout" => g.server_idle_timeout = duration(key, v)?,
        "server_lifetime" => g.server_lifetime = duration(key, v)?,
        "replica_ban_time" => g.routing.replica_ban_time = duration(key, v)?,
        "server_reset_query" => {
            if v.contains(';') {
                return Err((
                    "22023",
                    "server_reset_query: must be a single statement".into(),
                ));
            }
            g.server_reset_query = v.to_string();
        }
        "consistency" => {
            g.routing.consistency = match v {
                "session" => Consistency::Session,
                "eventual" => Consistency::Eventual,
                _ => {
                    return Err((
                        "22023",
                        format!("consistency: \"{v}\" (session or eventual)"),
                    ));
                }
            }
        }
        "load_balance" => {
            g.routing.load_balance = match v {
                "round_robin" => Balance::RoundRobin,
                "least_outstanding" => Balance::LeastOutstanding,
                _ => {
                    return Err((
                        "22023",
                        format!("load_balance: \"{v}\" (round_robin or least_outstanding)"),
                    ));
                }
            }
        }
        _ => {
            return Err((
                "55P02",
                format!("{key} cannot be changed with SET (change the file and RELOAD)"),
            ));
        }
    }
    Ok(())
}

/// SET key = value: the running config changes, as after a RELOAD.
pub fn set(shared: &Shared, key: &str, value: &str) -> Result<(), Failure> {
    let mut c = (*shared.config()).clone();
    set_value(&mut c, key, value)?;
    shared.reload(c);
    Ok(())
}

pub async fn reload(shared: &Shared) -> Result<(), Failure> {
    let path = shared
        .config_path
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let Some(path) = path else {
        return Err(("F0000", "no configuration file to reload".into()));
    };
    // Off the runtime's threads: loading derives a SCRAM key per plaintext
    // password (~0.7 ms each), which would stall every session of a
    // one-thread runtime.
    match tokio::task::spawn_blocking(move || Config::load(&path)).await {
        Ok(Ok(c)) => {
            shared.reload(c);
            Ok(())
        }
        Ok(Err(e)) => Err(("F0000", format!("reload failed: {e}"))),
        Err(e) => Err(("XX000", format!("reload failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse("[databases.app]\nprimary = \"127.0.0.1:5432\"\n").expect("config")
    }

    #[test]
    fn set_changes_settable_keys_and_refuses_others() {
        let mut c = config();
        set_value(&mut c, "default_pool_size", "7").unwrap();
        set_value(&mut c, "query_wait_timeout", "3s").unwrap();
        set_value(&mut c, "consistency", "eventual").unwrap();
        assert_eq!(c.general.default_pool_size, 7);
        assert_eq!(c.general.query_wait_timeout, Duration::from_secs(3));
        assert_eq!(c.general.routing.consistency, Consistency::Eventual);
        assert_eq!(
            set_value(&mut c, "listen_addr", "x").unwrap_err().0,
            "55P02"
        );
        assert_eq!(
            set_value(&mut c, "default_pool_size", "many")
                .unwrap_err()
                .0,
            "22023"
        );
        for k in SETTABLE {
            let v = match *k {
                "consistency" => "session",
                "load_balance" => "round_robin",
                "server_reset_query" => "DISCARD ALL",
                k if k.contains("size") || k == "max_client_conn" => "3",
                _ => "5s",
            };
            assert!(set_value(&mut c, k, v).is_ok(), "{k}");
        }
    }
}
