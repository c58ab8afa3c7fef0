//! The admin console: the virtual database `sluice` (or `pgbouncer`, so
//! existing scripts work), simple queries only, PgBouncer's column names.
//! `admin_users` may run everything; `stats_users` only SHOW.

mod control;
mod show;

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

/// The command's words: lowercased keywords, and arguments (database
/// names, values) as written, without quotes.
fn words(sql: &str) -> (Vec<String>, Vec<String>) {
    let raw: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .replace('=', " = ")
        .split_whitespace()
        .map(|w| w.trim_matches('\'').trim_matches('"').to_string())
        .collect();
    let lower = raw.iter().map(|w| w.to_ascii_lowercase()).collect();
    (lower, raw)
}

fn fail(out: &mut BytesMut, (code, msg): control::Failure) {
    build::error(out, Severity::Error, code, &msg);
}

fn done(out: &mut BytesMut, r: Result<(), control::Failure>, tag: &str) {
    match r {
        Ok(()) => build::command_complete(out, tag),
        Err(f) => fail(out, f),
    }
}

/// Runs one console command; the reply goes to `out`.
async fn command(shared: &Shared, role: Role, sql: &str, out: &mut BytesMut) {
    let (w, raw) = words(sql);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let arg = raw.get(1).map(String::as_str);
    if let ["show", what] = w.as_slice() {
        let config = shared.config();
        let t = match *what {
            "version" => Table {
                columns: vec!["version"],
                rows: vec![vec![some(format!("sluice {}", env!("CARGO_PKG_VERSION")))]],
            },
            "pools" => show::pools(shared),
            "databases" => show::databases(shared),
            "config" => show::config(&config),
            "users" => show::users(&config),
            "stats" => show::stats(shared),
            "clients" => show::clients(shared),
            "servers" => show::servers(shared),
            "lists" => show::lists(shared),
            "routing" => show::routing(shared),
            "cache" => show::cache(shared),
            _ => {
                let msg = format!("unknown SHOW: {what}");
                return fail(out, (sqlstate::SYNTAX_ERROR, msg));
            }
        };
        return table(out, &t);
    }
    let known = matches!(
        w.first().copied(),
        Some("pause" | "resume" | "kill" | "reconnect" | "set" | "reload" | "shutdown")
    );
    if known && role != Role::Admin {
        let msg = "admin access needed (admin_users)".to_string();
        return fail(out, (sqlstate::INSUFFICIENT_PRIVILEGE, msg));
    }
    match w.as_slice() {
        ["pause"] | ["pause", _] => done(out, control::pause(shared, arg).await, "PAUSE"),
        ["resume"] | ["resume", _] => done(out, control::resume(shared, arg), "RESUME"),
        ["reconnect"] | ["reconnect", _] => done(out, control::reconnect(shared, arg), "RECONNECT"),
        ["kill", _] => done(out, control::kill(shared, &raw[1]).map(|_| ()), "KILL"),
        ["set", key, "=" | "to", ..] if raw.len() >= 4 => {
            let value = raw[3..].join(" ");
            done(out, control::set(shared, key, &value), "SET")
        }
        ["reload"] => done(out, control::reload(shared).await, "RELOAD"),
        ["shutdown"] => {
            shared.shutdown_request.notify_one();
            build::command_complete(out, "SHUTDOWN");
        }
        _ => {
            let msg = format!("unknown admin command: {}", sql.trim());
            fail(out, (sqlstate::SYNTAX_ERROR, msg));
        }
    }
}

/// Serves a logged-in console user until it leaves.
pub async fn run(conn: &mut Conn, shared: &Shared, role: Role) -> Result<(), Error> {
    let mut out = BytesMut::new();
    build::authentication(&mut out, 0, &[]);
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
                    command(shared, role, &sql, &mut out).await;
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
