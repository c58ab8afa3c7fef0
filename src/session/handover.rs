//! A transaction-pooled client at rest, moved between sluice processes
//! (`crate::takeover`): `give` packs what the session keeps and hands the
//! socket over; `restore` unpacks it in the new process.

use std::os::fd::AsFd;

use super::Ctx;
use super::multiplex::Multiplex;
use super::prepared::StmtDef;
use super::relay::Pipe;
use super::resume::Resumed;
use super::vars::Setting;
use crate::net::PgStream;
use crate::takeover::moved::{Moved, Statement};

/// Hands the client over, when it can move: a plain TCP client (TLS state
/// cannot move), not listening, a user of the config (not auth_query's),
/// with its statements known to sluice. False: it stays (and is closed as
/// for a shutdown).
pub(super) async fn give(
    pipe: &mut Pipe,
    mux: &Multiplex,
    pid: i32,
    secret: i32,
    ctx: &Ctx<'_>,
) -> bool {
    let movable = ctx.looked_up.is_none()
        && mux.listen.as_deref().is_none_or(|l| !l.is_listening())
        && mux.statements.is_some()
        && matches!(pipe.client.stream, PgStream::Plain(_));
    if !movable {
        return false;
    }
    // Replies still queued reach the client from here first; one that does
    // not read them stays (the new process would never send them).
    if !pipe.flush_client().await {
        return false;
    }
    let PgStream::Plain(tcp) = &pipe.client.stream else {
        return false;
    };
    let Ok(socket) = tcp.as_fd().try_clone_to_owned() else {
        return false;
    };
    let moved = state(pipe, mux, pid, secret, ctx);
    ctx.shared.takeover.client(socket, &moved)
}

fn state(pipe: &Pipe, mux: &Multiplex, pid: i32, secret: i32, ctx: &Ctx<'_>) -> Moved {
    let vars = &mux.vars;
    let client = mux.statements.as_deref().map(|s| &s.client);
    Moved {
        database: ctx.database.to_string(),
        user: ctx.user_name.to_string(),
        application_name: vars
            .reported
            .get("application_name")
            .cloned()
            .unwrap_or_default(),
        pid,
        secret,
        reported: vars
            .reported
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        extra: vars
            .extra
            .iter()
            .map(|(k, s)| match s {
                Setting::Sql(v) => (k.clone(), true, v.clone()),
                Setting::Text(v) => (k.clone(), false, v.clone()),
            })
            .collect(),
        statements: client
            .into_iter()
            .flat_map(|c| c.named.iter())
            .map(|(name, def)| Statement {
                name: name.clone(),
                global: def.global.clone(),
                rest: def.rest.to_vec(),
                shape: def.shape.get().copied(),
            })
            .collect(),
        unnamed: client
            .and_then(|c| c.unnamed.as_ref())
            .map(|d| d.rest.to_vec()),
        buffered: pipe.client.rbuf.to_vec(),
    }
}

/// The handed-over session's statements and routing, in this process: its
/// reads go to the primary until a replica has replayed what the primary
/// has now (it may have written just before it moved).
pub(super) fn restore(mux: &mut Multiplex, r: Resumed, ctx: &Ctx<'_>) {
    if let Some(st) = mux.statements.as_deref_mut() {
        let generation = ctx.pool.manager().known.generation();
        for s in r.statements {
            let def = StmtDef::moved(&s.global, &s.rest, generation, s.shape);
            st.client.named.insert(s.name, def);
        }
        st.client.unnamed = r.unnamed.map(|rest| StmtDef::unnamed(&rest));
    }
    if let Some(routing) = mux.routing.as_deref_mut() {
        routing.need = crate::route::Need::Pending(std::time::Instant::now());
        routing.topo.kick_primary.notify_one();
    }
}
