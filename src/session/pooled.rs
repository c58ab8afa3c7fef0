//! Transaction and statement pooling: the client holds a server only while
//! a transaction or an unfinished request is in flight. Before each
//! checkout the server is brought in line with the client's settings; the
//! server goes back, without a reset, as soon as it is idle and unpinned.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};

use bytes::BytesMut;

use super::cancel::CancelKey;
use super::listening::ClientListen;
use super::login::Entry;
use super::multiplex::Multiplex;
use super::relay::{Pipe, RelayEnd, Timers, Waited};
use super::routing::Outstanding;
use super::statements::{Answer, Statements};
use super::vars::{SessionVars, custom_names, learn_sql, learned, sync_sql};
use super::{Ctx, finish};
use crate::clients::ClientState;
use crate::config::PoolMode;
use crate::error::{Error, ServerError};
use crate::pool::Checkout;
use crate::protocol::build;
use crate::protocol::tags::TxnStatus;
use crate::route::{Decision, Target};
use crate::server::ServerConn;

/// Client-facing backend pids for transaction pooling, where a client has
/// no one server. Kept apart from real pids' usual range.
static NEXT_PID: AtomicI32 = AtomicI32::new(0x4000_0000);

fn next_pid() -> i32 {
    NEXT_PID.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff
}

/// A transaction-pooled client between its requests: what the idle wait
/// keeps (its timers come from the config per transaction). What a request
/// in flight needs more lives in the boxed future of `transaction`, so idle
/// clients (the many) stay small.
struct Pooled<'a> {
    mux: Multiplex,
    key: CancelKey<'a>,
}

/// The client's view of its session: settings, statements, routing,
/// LISTEN and the result cache, as its pool and config give them.
fn multiplex(vars: SessionVars, mode: PoolMode, pipe: &Pipe, pid: i32, ctx: &Ctx<'_>) -> Multiplex {
    let statement_mode = mode == PoolMode::Statement;
    let g = &ctx.config.general;
    let mut mux = Multiplex::new(vars, g.reject_session_state, statement_mode);
    mux.stats = Some(ctx.shared.stats.clone());
    mux.watch.trust_functions = g.trust_functions;
    let cap = g.max_prepared_statements;
    mux.statements = (cap > 0).then(|| {
        Box::new(Statements {
            cap,
            known: Some(ctx.pool.manager().known.clone()),
            ..Default::default()
        })
    });
    mux.routing = ctx.routing().map(Box::new);
    if let Some(entry) = pipe.client_entry.clone() {
        let m = ctx.pool.manager();
        let hub =
            ctx.shared
                .listens
                .hub(&m.database, &m.user, &m.target, g.max_notification_backlog);
        mux.listen = Some(Box::new(ClientListen::new(hub, entry, pid)));
    }
    if let Some(c) = ctx.shared.caches.get(&ctx.database)
        && let Some(r) = mux.routing.as_deref_mut()
    {
        let user = &ctx.pool.manager().user;
        r.cache = Some(super::caching::ClientCache::new(c, user));
    }
    mux
}

/// Serves a client in transaction or statement pooling. Plain setup first,
/// then a future that holds only the `Pooled` state and the loop.
pub(crate) fn run<'a>(
    pipe: &'a mut Pipe,
    entry: Entry,
    ctx: &'a Ctx<'a>,
) -> impl std::future::Future<Output = Result<(), Error>> + 'a {
    let Entry {
        mode,
        checkout: first,
        mut greeting,
        vars,
        resumed,
    } = entry;
    let key = match &resumed {
        Some(r) => ctx.shared.cancels.register_exact(r.pid, r.secret),
        None => ctx.shared.cancels.register(next_pid()),
    };
    let mut mux = multiplex(vars, mode, pipe, key.pid, ctx);
    match resumed {
        // Handed over: the client had its greeting from the old process.
        Some(r) => super::handover::restore(&mut mux, *r, ctx),
        None => {
            build::backend_key_data(&mut greeting, key.pid, key.secret);
            build::ready_for_query(&mut greeting, TxnStatus::Idle);
            pipe.send_client(greeting.freeze());
        }
    }
    let mut s = Pooled { mux, key };
    // Boxed, like each transaction below: a login's first server.
    let mut first = first.map(Box::new);
    // The loop is this block itself (not an async fn it calls), so that
    // nothing it is given is kept twice in the idle client's task.
    // Nothing but `s`, the references and `read_more` lives across the wait.
    async move {
        let mut read_more = false;
        loop {
            let given = if let Some(c) = first.take() {
                Some(*c)
            } else {
                let wait = {
                    let idle = ctx.config.general.client_idle_timeout;
                    let idle = (!idle.is_zero()).then_some(idle);
                    pipe.wait_client(idle, std::mem::take(&mut read_more))
                };
                match wait.await {
                    Waited::Request => {
                        // Preparing a statement some server already parsed needs
                        // no server: a client blocked on that must not wait for one.
                        let max = ctx.config.general.max_packet_size;
                        match s.mux.answer_without_server(pipe.client_buffer(), max) {
                            Answer::Reply(reply) => {
                                tracing::trace!("answered without a server");
                                pipe.send_client(reply.freeze());
                                continue;
                            }
                            Answer::NeedMore => {
                                read_more = true;
                                continue;
                            }
                            Answer::NeedServer => {
                                match s.mux.answer_from_cache(pipe.client_buffer()) {
                                    Some(reply) => {
                                        pipe.send_client(reply);
                                        continue;
                                    }
                                    None => None,
                                }
                            }
                        }
                    }
                    Waited::Terminated | Waited::Gone => return Ok(()),
                    Waited::IdleTimeout => {
                        return Err(Error::refuse(
                            "57P05",
                            "client_idle_timeout: the connection was idle too long",
                        ));
                    }
                    Waited::Malformed(e) => return Err(Error::Frame(e)),
                    Waited::Listen(closed) => {
                        let (code, message) = closed.fatal();
                        return Err(Error::refuse(code, message));
                    }
                    Waited::Shutdown => {
                        // A new process takes over: clients at rest move.
                        if ctx.shared.takeover.active()
                            && Box::pin(super::handover::give(
                                pipe,
                                &s.mux,
                                s.key.pid,
                                s.key.secret,
                                ctx,
                            ))
                            .await
                        {
                            return Err(Error::Moved);
                        }
                        return Err(Error::refuse(
                            crate::protocol::sqlstate::ADMIN_SHUTDOWN,
                            "sluice is shutting down",
                        ));
                    }
                }
            };
            // One allocation per transaction, for everything it needs.
            if let Some(end) = Box::pin(s.transaction(pipe, given, ctx)).await {
                return end;
            }
        }
    }
}

impl Pooled<'_> {
    /// The session ends holding `checkout`: what its LISTENs left on an
    /// idle server is undone first (server_reset_query may be empty), then
    /// the server goes back or is closed as `finish` says.
    async fn end(
        &mut self,
        mut checkout: Checkout,
        end: RelayEnd,
        ctx: &Ctx<'_>,
    ) -> Result<(), Error> {
        if let Some(l) = self.mux.listen.as_deref_mut()
            && l.owes_cleanup()
            && checkout.server().state.is_idle()
        {
            // (A server that fails it is closed by finish's own check.)
            l.cleanup(checkout.server()).await;
        }
        finish(checkout, end, ctx.config).await
    }

    /// What the request buffered asks of LISTEN (`ClientListen::scan`):
    /// read in place, since most requests neither LISTEN nor ask for the
    /// channels, and then nothing is awaited.
    async fn listens_ahead(&mut self, pipe: &mut Pipe, ctx: &Ctx<'_>) -> bool {
        let Some(l) = self.mux.listen.as_deref_mut() else {
            return false;
        };
        let statements = self.mux.statements.as_deref().map(|s| &s.client);
        let (channels, lists) = l.scan(pipe.client_buffer(), statements);
        if channels.is_empty() {
            return lists;
        }
        // The hub listens before the request goes out, so nothing committed
        // after the client's LISTEN is missed.
        Box::pin(l.before_request((channels, lists), ctx.config)).await
    }

    /// One transaction (or request): checks out a server (unless `given`
    /// one), relays until the server can go back, and gives it back. Some
    /// when the session ends.
    async fn transaction(
        &mut self,
        pipe: &mut Pipe,
        given: Option<Checkout>,
        ctx: &Ctx<'_>,
    ) -> Option<Result<(), Error>> {
        // A LISTEN: the hub listens before the request goes out, so nothing
        // committed after the client's LISTEN is missed.
        let lists = self.listens_ahead(pipe, ctx).await;
        let (mut checkout, role) = match given {
            Some(c) => (c, Target::Primary),
            None => {
                tracing::trace!(first = ?pipe.client_buffer().first().map(|b| *b as char), "waiting for a server");
                let decision = self.mux.route_decision(pipe.client_buffer());
                ctx.client.set_state(ClientState::Waiting);
                match checkout_routed(ctx, &self.mux, pipe, decision).await {
                    Ok(c) => c,
                    Err(e) => return Some(Err(e)),
                }
            }
        };
        if lists && let Some(l) = self.mux.listen.as_deref_mut() {
            Box::pin(l.show_channels(checkout.server())).await;
        }
        let server = checkout.server();
        let key = server.key;
        self.key.slot.arm(ctx.addr_of(role), key.0, key.1);
        tracing::trace!(server_pid = server.key.0, ?role, "server held");
        ctx.client.set_state(ClientState::Active);
        ctx.client.hold(server.key.0, &server.addr);
        let mux = &mut self.mux;
        start_recording(mux, pipe, role);
        let _outstanding = mux.routing.as_mut().and_then(|r| {
            r.checked_out(role);
            Outstanding::new(&r.topo, role)
        });
        // From the config each time: cheaper than keeping them per client.
        let timers = Timers {
            client_idle_timeout: None,
            ..Timers::from_config(&ctx.config.general)
        };
        // Held until the server goes back, after the statement it is for.
        let mut _clearing = None;
        let end = loop {
            match pipe.relay(checkout.server(), Some(&mut *mux), timers).await {
                RelayEnd::ClearDatabase(db) => {
                    let (own, primary) = (&ctx.database, &ctx.db.primary);
                    _clearing = Some(super::database_ddl::clear(ctx.shared, own, primary, &db));
                }
                end => break end,
            }
        };
        tracing::trace!(?end, "server given up");
        self.key.slot.disarm();
        finish_recording(&mut self.mux, pipe, matches!(end, RelayEnd::Release));
        match end {
            RelayEnd::Release => {
                // Rare, so boxed: the usual transaction's future stays small.
                let known = &ctx.pool.manager().known;
                let learnt = !self.mux.watch.needs_check()
                    || Box::pin(check_settings(checkout.server(), &mut self.mux, known))
                        .await
                        .inspect_err(|e| tracing::warn!(error = %e, "could not read a server's session settings: discarding it"))
                        .is_ok();
                let learnt = learnt && !self.mux.watch.overflow;
                self.mux.watch.reset();
                // What LISTEN left on the server, and the marker naming the
                // sender of what the transaction notified.
                let learnt = learnt
                    && match self.mux.listen.as_deref_mut() {
                        Some(l) if l.owes_cleanup() => Box::pin(l.cleanup(checkout.server())).await,
                        _ => true,
                    };
                if let Some(r) = self.mux.routing.as_mut() {
                    r.released();
                }
                if learnt {
                    checkout.release();
                } else {
                    checkout.discard();
                }
                ctx.client.set_state(ClientState::Idle);
                ctx.client.hold(0, "");
                None
            }
            RelayEnd::ReplicaSilent { retry } => {
                cancel_silent(&mut checkout, ctx, role, retry);
                if !retry {
                    let end = RelayEnd::ReplicaSilent { retry };
                    return Some(Box::pin(finish(checkout, end, ctx.config)).await);
                }
                checkout.discard();
                if let Some(r) = self.mux.routing.as_mut() {
                    r.released();
                }
                ctx.client.set_state(ClientState::Idle);
                ctx.client.hold(0, "");
                None
            }
            // Boxed: the end of a session takes no room in each transaction.
            other => Some(Box::pin(self.end(checkout, other, ctx)).await),
        }
    }
}

/// A cached read that missed: its reply is recorded from the moment a
/// server is held, as of the position that server has.
fn start_recording(mux: &mut Multiplex, pipe: &mut Pipe, role: Target) {
    if let Some(r) = mux.routing.as_deref_mut()
        && let Some(c) = r.cache.as_mut()
        && let Some(max) = c.recording()
    {
        c.checked_out(role, Some(&r.topo));
        pipe.start_recording(max);
    }
}

/// Stores what was recorded if the server went back cleanly.
fn finish_recording(mux: &mut Multiplex, pipe: &mut Pipe, released: bool) {
    let recording = pipe.take_recording();
    if let Some(c) = mux.routing.as_deref_mut().and_then(|r| r.cache.as_mut()) {
        c.finish(recording, released);
    }
}

/// A replica that stopped answering mid-request: its query is cancelled
/// there, in the background, before the connection is given up.
fn cancel_silent(checkout: &mut Checkout, ctx: &Ctx<'_>, role: Target, retry: bool) {
    let server = checkout.server();
    let target = crate::session::cancel::CancelTarget {
        addr: ctx.addr_of(role).clone(),
        pid: server.key.0,
        secret: server.key.1,
    };
    tracing::warn!(database = %ctx.database, replica = %target.addr, retry, "replica stopped answering with a request in flight: cancelled there and given up");
    let timeout = ctx.config.general.server_connect_timeout;
    tokio::spawn(async move { crate::session::cancel::send(&target, timeout).await });
}

/// After a transaction that may have changed session settings in ways the
/// text did not show: reads them (`learn_settings`), unless all it did was
/// call functions the pool knows cannot change one. A function not known
/// yet is looked up in pg_proc (one query, once per pool and name).
async fn check_settings(
    server: &mut ServerConn,
    mux: &mut Multiplex,
    known: &crate::session::statements::KnownStatements,
) -> Result<(), ServerError> {
    if !mux.watch.needs_settings() {
        let names = mux.watch.function_names();
        let new: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| known.function_may_set(n).is_none())
            .collect();
        if !new.is_empty() {
            let rows = server.query_rows(&function_lookup_sql(&new)).await?;
            for name in new {
                let may_set = rows.iter().any(|r| match r.as_slice() {
                    [Some(n), Some(lang), Some(body)] if n == name => {
                        crate::sql::functions::body_may_change_settings(lang, body)
                    }
                    _ => false,
                });
                known.learn_function(name.to_string(), may_set);
            }
        }
        if names
            .iter()
            .all(|n| known.function_may_set(n) == Some(false))
        {
            return Ok(());
        }
    }
    learn_settings(server, mux).await
}

/// The language and body of every function with one of `names`.
fn function_lookup_sql(names: &[&str]) -> String {
    let list: Vec<String> = names.iter().map(|n| super::vars::literal(n)).collect();
    format!(
        "SELECT p.proname::text, l.lanname::text, p.prosrc FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_language l ON l.oid = p.prolang WHERE p.proname IN ({})",
        list.join(", ")
    )
}

/// After a transaction that may have changed session settings in ways the
/// text did not show (`SettingsWatch`): reads the server's session-level
/// settings, makes them the client's (they follow it to other servers)
/// and records them as the server's (the next client's checkout resets
/// what differs from its own), so no setting crosses clients.
async fn learn_settings(server: &mut ServerConn, mux: &mut Multiplex) -> Result<(), ServerError> {
    let sql = learn_sql(
        custom_names(&mux.vars.extra, &server.extra, mux.watch.custom_names()).into_iter(),
    );
    let rows = server
        .query_rows(&sql)
        .await?
        .into_iter()
        .filter_map(|r| match <[_; 2]>::try_from(r) {
            Ok([Some(n), Some(v)]) => Some((n, v)),
            _ => None,
        })
        .collect();
    let extra = learned(rows, &mux.vars.reported, &mux.vars.extra);
    tracing::debug!(
        settings = extra.len(),
        "session settings read back from the server"
    );
    server.extra = extra.clone();
    mux.vars.extra = extra;
    Ok(())
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
    let target = match decision {
        Some(d) => {
            if let Some(t) = topo {
                t.count(d);
            }
            d.target
        }
        None => Target::Primary,
    };
    let pool = ctx.pool_for(target);
    // A replica that stops answering while the client waits for one of its
    // servers (a new connection to a stopped host hangs until
    // server_connect_timeout) gives way to the primary as soon as the
    // monitor finds it silent.
    let silence = async {
        match (target, topo) {
            (Target::Replica(i), Some(t)) => t.silence(i).await,
            _ => std::future::pending().await,
        }
    };
    // One await here: every await point takes room in this future, which
    // each transaction allocates.
    let got = tokio::select! {
        biased;
        got = checkout_notifying(ctx, mux, pipe, &pool) => got,
        () = silence => Err(Error::refuse(
            crate::protocol::sqlstate::CONNECTION_FAILURE,
            "the replica stopped answering",
        )),
    };
    let e = match got {
        Ok(c) => return Ok((c, target)),
        Err(e) => e,
    };
    let Target::Replica(i) = target else {
        return Err(e);
    };
    let saturated = pool.status().size >= pool.status().max_size;
    tracing::warn!(database = %ctx.database, replica = %ctx.addr_of(target), error = %e, saturated, "replica checkout failed: using the primary");
    drop(e); // not kept across the await below: it would take room in this future
    if let Some(t) = topo {
        if !saturated {
            t.ban(i);
        }
        t.count(Decision {
            target: Target::Primary,
            reason: "replica_failed",
        });
    }
    // Rare, so boxed: it takes no room in the usual checkout's future.
    let primary = ctx.pool_for(Target::Primary);
    let c = Box::pin(checkout_notifying(ctx, mux, pipe, &primary)).await?;
    Ok((c, Target::Primary))
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
    if notify.is_zero() {
        return checkout_synced(ctx, mux, pool).await;
    }
    // Boxed: its timer and NOTICE take no room in the usual checkout.
    Box::pin(async {
        // One pinned checkout for both paths.
        let get = checkout_synced(ctx, mux, pool);
        tokio::pin!(get);
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
        get.await
    })
    .await
}

/// Checks out a server and applies the client's settings where they differ.
async fn checkout_synced(
    ctx: &Ctx<'_>,
    mux: &Multiplex,
    pool: &crate::pool::ServerPool,
) -> Result<Checkout, Error> {
    let mut checkout = Checkout::get(pool, &ctx.database).await?;
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
