//! The background monitor: one task per server of a database with
//! replicas, each on its own connection. The primary's task samples its
//! WAL insert position; each replica's task reads its replay position and
//! whether it is still in recovery. A failed poll takes a replica out of
//! rotation for replica_ban_time. Tasks end when their topology is dropped.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use super::replicas::{Sample, Topology, parse_lsn};
use crate::config::{Config, HostPort};
use crate::server::{ServerConn, ServerTarget};

/// The insert position, not the write position: with synchronous_commit
/// off a commit can be acknowledged before it is written, but never before
/// it is inserted.
const PRIMARY_SQL: &str = "SELECT pg_catalog.pg_current_wal_insert_lsn()::text";
const REPLICA_SQL: &str =
    "SELECT pg_catalog.pg_is_in_recovery()::text, pg_catalog.pg_last_wal_replay_lsn()::text";

/// After a write, a replica still behind the primary's newest sample is
/// polled again this soon, up to MAX_CHASE times, so a client that wrote
/// reads from the replica again within milliseconds of it replaying.
const CHASE_EVERY: Duration = Duration::from_millis(1);
const MAX_CHASE: u32 = 20;

/// The user the routing monitor logs in as: monitor_user, or else the
/// first user with a password sluice can log in with.
pub fn monitor_user(config: &Config) -> Option<&str> {
    if let Some(u) = &config.general.routing.monitor_user {
        return Some(u);
    }
    config
        .users
        .iter()
        .find(|(_, u)| {
            matches!(
                crate::pool::server_password(Some(u)),
                crate::server::ServerPassword::Plain(_) | crate::server::ServerPassword::Md5Hash(_)
            )
        })
        .map(|(n, _)| n.as_str())
}

/// How the monitor logs in to `addr`, from monitor_user's [users] entry.
pub fn target(config: &Config, addr: &HostPort, dbname: &str) -> Option<ServerTarget> {
    let name = monitor_user(config)?;
    let user = config.users.get(name);
    Some(ServerTarget {
        addr: addr.clone(),
        dbname: dbname.to_string(),
        user: user
            .and_then(|u| u.server_user.clone())
            .unwrap_or_else(|| name.to_string()),
        password: crate::pool::server_password(user),
        connect_timeout: config.general.server_connect_timeout,
        tls: config.general.server_tls.clone(),
        application_name: "sluice monitor".into(),
        replication: false,
    })
}

/// Starts the monitor tasks of `topo`.
pub fn spawn(topo: &Arc<Topology>, config: &Config) {
    let s = &topo.settings;
    let Some(primary) = target(config, &s.primary, &s.dbname) else {
        tracing::warn!(database = %topo.database, "no monitor_user with a password: replicas stay out of rotation");
        return;
    };
    tokio::spawn(watch(Arc::downgrade(topo), primary, None));
    for (i, addr) in s.replicas.iter().enumerate() {
        if let Some(t) = target(config, addr, &s.dbname) {
            tokio::spawn(watch(Arc::downgrade(topo), t, Some(i)));
        }
    }
}

/// Polls one server (`replica` None: the primary) until `topo` is gone.
async fn watch(topo: Weak<Topology>, target: ServerTarget, replica: Option<usize>) {
    let (every, answer_within) = match topo.upgrade() {
        Some(t) => (t.settings.poll_interval, t.settings.read_timeout),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut conn: Option<ServerConn> = None;
    let mut failing = false;
    let mut chase = 0;
    let mut last = Instant::now();
    loop {
        let Some(t) = topo.upgrade() else {
            return;
        };
        if chase > 0 {
            // A replica behind the newest primary sample: look again soon.
            tokio::time::sleep(CHASE_EVERY).await;
        } else {
            let kick = match replica {
                None => &t.kick_primary,
                Some(_) => &t.kick_replicas,
            };
            tokio::select! {
                _ = tick.tick() => {}
                _ = kick.notified() => {
                    // Kicked by writes: at most one poll per CHASE_EVERY.
                    tokio::time::sleep_until((last + CHASE_EVERY).into()).await;
                }
            }
        }
        drop(t);
        let Some(topo) = topo.upgrade() else {
            return;
        };
        let at = Instant::now();
        last = at;
        let sql = if replica.is_some() {
            REPLICA_SQL
        } else {
            PRIMARY_SQL
        };
        // A connected server that stays silent past replica_read_timeout
        // (stopped, partitioned) is out within about that long.
        let limit = match conn {
            Some(_) => answer_within,
            None => target.connect_timeout + answer_within,
        };
        let row = tokio::time::timeout(limit, poll(&mut conn, &target, sql)).await;
        let row = match row {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {limit:?}")),
        };
        let ok = match (row, replica) {
            (Ok(r), None) => match r.first().and_then(|v| parse_lsn(v)) {
                Some(lsn) => {
                    topo.record_primary(Sample { at, lsn });
                    topo.kick_replicas.notify_waiters();
                    true
                }
                None => false,
            },
            (Ok(r), Some(i)) => {
                let in_recovery = r.first().is_some_and(|v| v == "true");
                let replay = r.get(1).and_then(|v| parse_lsn(v));
                match replay {
                    Some(lsn) => {
                        topo.record_replica(i, lsn, in_recovery, Instant::now());
                        let behind = topo.latest().is_some_and(|s| s.lsn > lsn);
                        chase = if behind && chase < MAX_CHASE {
                            chase + 1
                        } else {
                            0
                        };
                    }
                    None => topo.replica_failed(i),
                }
                replay.is_some()
            }
            (Err(e), r) => {
                conn = None;
                if !failing {
                    tracing::warn!(database = %topo.database, server = %target.addr, error = %e, "monitor poll failed");
                }
                if let Some(i) = r {
                    topo.replica_failed(i);
                }
                false
            }
        };
        if ok && failing {
            tracing::info!(database = %topo.database, server = %target.addr, "monitor poll succeeds again");
        }
        failing = !ok;
    }
}

/// One poll: connects if needed, runs `sql`, returns its first row as text.
async fn poll(
    conn: &mut Option<ServerConn>,
    target: &ServerTarget,
    sql: &str,
) -> Result<Vec<String>, String> {
    if conn.is_none() {
        *conn = Some(
            ServerConn::connect(target)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let Some(c) = conn.as_mut() else {
        return Err("not connected".into());
    };
    match c.query_row(sql, &[]).await {
        Ok(Some(row)) => Ok(row.into_iter().map(Option::unwrap_or_default).collect()),
        Ok(None) => Err("no row".into()),
        Err(e) => Err(e.to_string()),
    }
}
