//! Transaction and statement pooling: the client holds a server only while
//! a transaction or an unfinished request is in flight. Before each
//! checkout the server is brought in line with the client's settings; the
//! server goes back, without a reset, as soon as it is idle and unpinned.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};

use bytes::BytesMut;

use super::multiplex::Multiplex;
use super::relay::{Pipe, RelayEnd, Timers, Waited};
use super::routing::Outstanding;
use super::statements::{Answer, Statements};
use super::vars::{SessionVars, sync_sql};
use super::{Ctx, finish};
use crate::clients::ClientState;
use crate::error::{Error, ServerError};
use crate::pool::Checkout;
use crate::protocol::build;
use crate::protocol::tags::TxnStatus;
use crate::route::{Decision, Target};

/// Client-facing backend pids for transaction pooling, where a client has
/// no one server. Kept apart from real pids' usual range.
static NEXT_PID: AtomicI32 = AtomicI32::new(0x4000_0000);

fn next_pid() -> i32 {
    NEXT_PID.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff
}

pub(crate) async fn run(
    pipe: &mut Pipe,
    first: Option<Checkout>,
    mut greeting: BytesMut,
    vars: SessionVars,
    statement_mode: bool,
    ctx: &Ctx<'_>,
) -> Result<(), Error> {
    let g = &ctx.config.general;
    let mut mux = Multiplex::new(vars, g.reject_session_state, statement_mode);
    mux.stats = Some(ctx.shared.stats.clone());
    let cap = g.max_prepared_statements;
    let known = ctx.pool.manager().known.clone();
    mux.statements = (cap > 0).then(|| Statements {
        cap,
        known: Some(known),
        ..Default::default()
    });
    let pid = next_pid();
    let (secret, slot) = ctx.shared.cancels.register(pid, None);
    build::backend_key_data(&mut greeting, pid, secret);
    build::ready_for_query(&mut greeting, TxnStatus::Idle);
    pipe.send_client(greeting.freeze());

    let timers = Timers {
        client_idle_timeout: None,
        ..Timers::from_config(g)
    };
    let client_idle = (!g.client_idle_timeout.is_zero()).then_some(g.client_idle_timeout);
    mux.routing = ctx.routing();
    let mut held = first.map(|c| (c, Target::Primary));
    let mut read_more = false;
    let result = loop {
        let (mut checkout, role) = match held.take() {
            Some(c) => c,
            None => match pipe
                .wait_client(client_idle, std::mem::take(&mut read_more))
                .await
            {
                Waited::Request => {
                    // Preparing a statement some server already parsed needs no
                    // server: a client blocked on that must not wait for one.
                    match mux.answer_without_server(pipe.client_buffer(), g.max_packet_size) {
                        Answer::Reply(reply) => {
                            tracing::trace!("answered without a server");
                            pipe.send_client(reply.freeze());
                            continue;
                        }
                        Answer::NeedMore => {
                            read_more = true;
                            continue;
                        }
                        Answer::NeedServer => {}
                    }
                    tracing::trace!(first = ?pipe.client_buffer().first().map(|b| *b as char), "waiting for a server");
                    let decision = mux.route_decision(pipe.client_buffer());
                    ctx.client.set_state(ClientState::Waiting);
                    // Boxed (here and the relay below): only a client with a
                    // request in flight needs their state, so idle ones stay small.
                    match Box::pin(checkout_routed(ctx, &mux, pipe, decision)).await {
                        Ok(c) => c,
                        Err(e) => break Err(e),
                    }
                }
                Waited::Terminated | Waited::Gone => break Ok(()),
                Waited::IdleTimeout => {
                    break Err(Error::refuse(
                        "57P05",
                        "client_idle_timeout: the connection was idle too long",
                    ));
                }
                Waited::Malformed(e) => break Err(Error::Frame(e)),
                Waited::Shutdown => {
                    break Err(Error::refuse(
                        crate::protocol::sqlstate::ADMIN_SHUTDOWN,
                        "sluice is shutting down",
                    ));
                }
            },
        };
        let server = checkout.server();
        slot.arm(ctx.addr_of(role), server.key.0, server.key.1);
        tracing::trace!(server_pid = server.key.0, ?role, "server held");
        ctx.client.set_state(ClientState::Active);
        ctx.client.hold(server.key.0, &server.addr);
        let _outstanding = mux.routing.as_mut().and_then(|r| {
            r.checked_out(role);
            Outstanding::new(&r.topo, role)
        });
        let end = Box::pin(pipe.relay(checkout.server(), Some(&mut mux), timers)).await;
        tracing::trace!(?end, "server given up");
        slot.disarm();
        match end {
            RelayEnd::Release => {
                if let Some(r) = mux.routing.as_mut() {
                    r.released();
                }
                checkout.release();
                ctx.client.set_state(ClientState::Idle);
                ctx.client.hold(0, "");
            }
            other => break Box::pin(finish(checkout, other, ctx.config)).await,
        }
    };
    ctx.shared.cancels.unregister(pid, secret);
    result
}

/// Brings a server back to how it was at its own login, so a new client's
/// greeting reports defaults rather than the last client's settings.
pub(crate) async fn neutralize(checkout: &mut Checkout) -> Result<(), ServerError> {
    let server = checkout.server();
    let fresh = SessionVars {
        reported: server.initial_params.clone(),
        extra: BTreeMap::new(),
    };
    if let Some(sql) = sync_sql(&fresh, &server.params, &server.extra) {
        server.simple_query(&sql).await?;
        server.extra.clear();
    }
    Ok(())
}

/// Checks out a server where `decision` says. A replica that cannot be
/// reached is banned and the primary serves instead: the client sees no error.
async fn checkout_routed(
    ctx: &Ctx<'_>,
    mux: &Multiplex,
    pipe: &mut Pipe,
    decision: Option<Decision>,
) -> Result<(Checkout, Target), Error> {
    let topo = mux.routing.as_ref().map(|r| &r.topo);
    let Some(d) = decision else {
        return Ok((
            checkout_notifying(ctx, mux, pipe, &ctx.pool_for(Target::Primary)).await?,
            Target::Primary,
        ));
    };
    if let Some(t) = topo {
        t.count(d);
    }
    let Target::Replica(i) = d.target else {
        return Ok((
            checkout_notifying(ctx, mux, pipe, &ctx.pool_for(Target::Primary)).await?,
            Target::Primary,
        ));
    };
    let pool = ctx.pool_for(d.target);
    match checkout_notifying(ctx, mux, pipe, &pool).await {
        Ok(c) => Ok((c, d.target)),
        Err(e) => {
            let saturated = pool.status().size >= pool.status().max_size;
            tracing::warn!(database = ctx.database, replica = %ctx.addr_of(d.target), error = %e, saturated, "replica checkout failed: using the primary");
            if let Some(t) = topo {
                if !saturated {
                    t.ban(i);
                }
                t.count(Decision {
                    target: Target::Primary,
                    reason: "replica_failed",
                });
            }
            Ok((
                checkout_notifying(ctx, mux, pipe, &ctx.pool_for(Target::Primary)).await?,
                Target::Primary,
            ))
        }
    }
}

/// `checkout_synced`, telling the client once with a NOTICE when it has
/// waited query_wait_notify for a server.
async fn checkout_notifying(
    ctx: &Ctx<'_>,
    mux: &Multiplex,
    pipe: &mut Pipe,
    pool: &crate::pool::ServerPool,
) -> Result<Checkout, Error> {
    let notify = ctx.config.general.query_wait_notify;
    // One pinned checkout for both paths (two would each take room in this
    // future's state, which every checkout moves to the heap).
    let get = checkout_synced(ctx, mux, pool);
    tokio::pin!(get);
    if !notify.is_zero() {
        // Biased: a checkout that is ready at once never arms the timer.
        tokio::select! {
            biased;
            c = &mut get => return c,
            _ = tokio::time::sleep(notify) => {}
        }
        let mut out = BytesMut::new();
        let msg = format!(
            "pool for database \"{}\" is saturated: waiting for a free server connection (query_wait_notify)",
            ctx.database
        );
        build::error_or_notice(&mut out, build::Severity::Notice, "01000", &msg);
        pipe.send_client(out.freeze());
        pipe.flush_client().await;
    }
    get.await
}

/// Checks out a server and applies the client's settings where they differ.
async fn checkout_synced(
    ctx: &Ctx<'_>,
    mux: &Multiplex,
    pool: &crate::pool::ServerPool,
) -> Result<Checkout, Error> {
    let mut checkout = Checkout::get(pool, ctx.database).await?;
    let server = checkout.server();
    if server.in_line.holds(&server.params, &mux.vars.reported) && server.extra == mux.vars.extra {
        return Ok(checkout);
    }
    if let Some(sql) = sync_sql(&mux.vars, &server.params, &server.extra) {
        // Boxed so the usual checkout's future stays small (it is moved).
        if let Err(e) = Box::pin(server.simple_query(&sql)).await {
            tracing::warn!(error = %e, "could not apply the client's settings on a server");
            checkout.discard();
            return Err(match e {
                ServerError::Refused { fields, .. } => Error::refuse(
                    fields.code_or_internal().to_string(),
                    format!(
                        "could not restore session settings: {}",
                        fields.message_or_default()
                    ),
                ),
                other => Error::Server(other),
            });
        }
        server.extra = mux.vars.extra.clone();
    }
    server.in_line.note(&server.params, &mux.vars.reported);
    Ok(checkout)
}
