//! The admin console: the virtual database `sluice` (or `pgbouncer`, so
//! existing scripts work), simple queries only, PgBouncer's column names.
//! `admin_users` may run everything; `stats_users` only SHOW.

use bytes::BytesMut;

use crate::app::Shared;
use crate::config::Config;
use crate::error::Error;
use crate::net::Conn;
use crate::protocol::build::{self, Severity};
use crate::protocol::inspect::take_cstr;
use crate::protocol::sqlstate;
use crate::protocol::tags::{FrontendTag, TxnStatus};

pub const DATABASES: &[&str] = &["sluice", "pgbouncer"];

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Stats,
}

pub fn role(config: &Config, user: &str) -> Option<Role> {
    let g = &config.general;
    if g.admin_users.iter().any(|u| u == user) {
        Some(Role::Admin)
    } else if g.stats_users.iter().any(|u| u == user) {
        Some(Role::Stats)
    } else {
        None
    }
}

/// A result set: column names and text rows.
struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Option<String>>>,
}

fn table(out: &mut BytesMut, t: &Table) {
    build::row_description(out, &t.columns);
    for r in &t.rows {
        let vals: Vec<Option<&str>> = r.iter().map(|v| v.as_deref()).collect();
        build::data_row(out, &vals);
    }
    build::command_complete(out, "SHOW");
}

fn some(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn show_pools(shared: &Shared) -> Table {
    let config = shared.config();
    let columns = vec![
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active",
        "sv_active_cancel",
        "sv_being_canceled",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        "role",
        "pinned_clients",
    ];
    let mut rows = Vec::new();
    for (key, pool) in shared.pools.all() {
        let st = pool.status();
        let mode = config
            .databases
            .get(&key.database)
            .map(|db| config.pool_mode(db, config.users.get(&key.user)));
        let mode = mode.map(|m| m.as_str().to_string()).unwrap_or_default();
        let in_use = st.size.saturating_sub(st.available);
        rows.push(vec![
            some(&key.database),
            some(&key.user),
            some(
                shared
                    .client_counts
                    .count(&format!("pool:{}/{}", key.database, key.user)),
            ),
            some(st.waiting),
            some(0),
            some(0),
            some(in_use),
            some(0),
            some(0),
            some(st.available),
            some(0),
            some(0),
            some(0),
            some(0),
            some(0),
            some(mode),
            some(key.role_name()),
            some(shared.stats.pinned_clients()),
        ]);
    }
    Table { columns, rows }
}

fn show_databases(config: &Config) -> Table {
    let columns = vec![
        "name",
        "host",
        "port",
        "database",
        "pool_size",
        "min_pool_size",
        "pool_mode",
        "replicas",
    ];
    let rows = config
        .databases
        .iter()
        .map(|(name, db)| {
            vec![
                some(name),
                some(&db.primary.host),
                some(db.primary.port),
                some(&db.dbname),
                some(config.pool_size(db)),
                some(config.min_pool_size(db)),
                db.pool_mode.map(|m| m.as_str().to_string()),
                some(
                    db.replicas
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ]
        })
        .collect();
    Table { columns, rows }
}

fn show_config(config: &Config) -> Table {
    let g = &config.general;
    let pairs: Vec<(&str, String)> = vec![
        ("listen_addr", g.listen_addr.to_string()),
        ("pool_mode", g.pool_mode.as_str().to_string()),
        ("default_pool_size", g.default_pool_size.to_string()),
        ("min_pool_size", g.min_pool_size.to_string()),
        ("max_client_conn", g.max_client_conn.to_string()),
        ("query_wait_timeout", format!("{:?}", g.query_wait_timeout)),
        (
            "server_connect_timeout",
            format!("{:?}", g.server_connect_timeout),
        ),
        (
            "server_idle_timeout",
            format!("{:?}", g.server_idle_timeout),
        ),
        ("server_lifetime", format!("{:?}", g.server_lifetime)),
        ("server_reset_query", g.server_reset_query.clone()),
        ("max_packet_size", g.max_packet_size.to_string()),
        (
            "max_prepared_statements",
            g.max_prepared_statements.to_string(),
        ),
    ];
    let rows = pairs
        .into_iter()
        .map(|(k, v)| vec![some(k), some(v), some("yes")])
        .collect();
    Table {
        columns: vec!["key", "value", "changeable"],
        rows,
    }
}

/// Runs one console command; the reply goes to `out`.
fn command(shared: &Shared, role: Role, sql: &str, out: &mut BytesMut) {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let config = shared.config();
    let admin_only = |out: &mut BytesMut| {
        build::error(
            out,
            Severity::Error,
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "admin access needed (admin_users)",
        )
    };
    match words.as_slice() {
        ["show", "version"] => {
            let t = Table {
                columns: vec!["version"],
                rows: vec![vec![some(format!("sluice {}", env!("CARGO_PKG_VERSION")))]],
            };
            table(out, &t);
        }
        ["show", "pools"] => table(out, &show_pools(shared)),
        ["show", "databases"] => table(out, &show_databases(&config)),
        ["show", "config"] => table(out, &show_config(&config)),
        ["show", "users"] => {
            let rows = config.users.keys().map(|u| vec![some(u), None]).collect();
            table(
                out,
                &Table {
                    columns: vec!["name", "pool_mode"],
                    rows,
                },
            );
        }
        ["reload"] | ["shutdown"] if role != Role::Admin => admin_only(out),
        ["reload"] => {
            let path = shared
                .config_path
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match path.map(|p| Config::load(&p)) {
                Some(Ok(c)) => {
                    shared.reload(c);
                    build::command_complete(out, "RELOAD");
                }
                Some(Err(e)) => build::error(
                    out,
                    Severity::Error,
                    "F0000",
                    &format!("reload failed: {e}"),
                ),
                None => build::error(
                    out,
                    Severity::Error,
                    "F0000",
                    "no configuration file to reload",
                ),
            }
        }
        ["shutdown"] => {
            shared.shutdown_request.notify_one();
            build::command_complete(out, "SHUTDOWN");
        }
        _ => build::error(
            out,
            Severity::Error,
            sqlstate::SYNTAX_ERROR,
            &format!("unknown admin command: {}", sql.trim()),
        ),
    }
}

/// Serves a logged-in console user until it leaves.
pub async fn run(conn: &mut Conn, shared: &Shared, role: Role) -> Result<(), Error> {
    let mut out = BytesMut::new();
    for (k, v) in [
        ("server_version", "15.0 (sluice)"),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        build::parameter_status(&mut out, k, v);
    }
    build::backend_key_data(&mut out, 0, 0);
    build::ready_for_query(&mut out, TxnStatus::Idle);
    conn.write_all(&out).await?;
    let mut stop = shared.draining.subscribe();
    loop {
        let f = tokio::select! {
            f = conn.read_frame(64 * 1024) => f?,
            _ = stop.wait_for(|draining| *draining) => {
                return Err(Error::refuse(sqlstate::ADMIN_SHUTDOWN, "sluice is shutting down"));
            }
        };
        out.clear();
        match FrontendTag::from_byte(f.tag) {
            FrontendTag::Terminate => return Ok(()),
            FrontendTag::Query => {
                let sql = take_cstr(f.body())
                    .map(|(q, _)| String::from_utf8_lossy(q).into_owned())
                    .unwrap_or_default();
                if sql.trim().is_empty() {
                    out.extend_from_slice(b"I\0\0\0\x04"); // EmptyQueryResponse
                } else {
                    command(shared, role, &sql, &mut out);
                }
            }
            _ => build::error(
                &mut out,
                Severity::Error,
                sqlstate::FEATURE_NOT_SUPPORTED,
                "the admin console takes simple queries only",
            ),
        }
        build::ready_for_query(&mut out, TxnStatus::Idle);
        conn.write_all(&out).await?;
    }
}
