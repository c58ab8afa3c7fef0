//! Prometheus text for one sluice instance, built at scrape time from the
//! pools and the stats counters (no process-wide registry).

use prometheus::{
    Encoder, GaugeVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::app::Shared;

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

/// Renders the current metrics in the Prometheus text format.
pub fn render(shared: &Shared) -> prometheus::Result<String> {
    let r = Registry::new();
    let labels = &["database", "user", "role"];
    let size = gauge_vec(
        &r,
        "sluice_pool_size",
        "Maximum server connections of the pool",
        labels,
    )?;
    let servers = gauge_vec(
        &r,
        "sluice_servers",
        "Server connections by state",
        &["database", "user", "role", "state"],
    )?;
    let waiting = gauge_vec(
        &r,
        "sluice_clients_waiting",
        "Clients waiting for a server connection",
        labels,
    )?;
    let saturation = GaugeVec::new(
        Opts::new(
            "sluice_pool_saturation",
            "Servers in use plus clients waiting, over pool size",
        ),
        labels,
    )?;
    r.register(Box::new(saturation.clone()))?;
    // Several replicas of one database share the "replica" role: summed.
    let mut per_role: std::collections::BTreeMap<(String, String, &str), [usize; 4]> =
        std::collections::BTreeMap::new();
    let traffic = Traffic::new(&r)?;
    for (key, pool) in shared.pools.all() {
        let st = pool.status();
        let e = per_role
            .entry((key.database.clone(), key.user.clone(), key.role_name()))
            .or_default();
        e[0] += st.max_size;
        e[1] += st.size.saturating_sub(st.available);
        e[2] += st.available;
        e[3] += st.waiting;
        traffic.add(
            &[&key.database, &key.user, key.role_name()],
            &pool.manager().stats,
        );
    }
    let h = &shared.pools.histograms;
    for v in [&h.wait, &h.query, &h.xact] {
        r.register(Box::new(v.clone()))?;
    }
    for ((db, user, role), [max, in_use, idle, wait]) in per_role {
        let l = [db.as_str(), user.as_str(), role];
        size.with_label_values(&l).set(max as i64);
        servers
            .with_label_values(&[l[0], l[1], l[2], "active"])
            .set(in_use as i64);
        servers
            .with_label_values(&[l[0], l[1], l[2], "idle"])
            .set(idle as i64);
        waiting.with_label_values(&l).set(wait as i64);
        let ratio = (in_use + wait) as f64 / max.max(1) as f64;
        saturation.with_label_values(&l).set(ratio);
    }
    routing(&r, shared)?;
    clients_by_state(&r, shared)?;
    let pinned = IntGauge::new(
        "sluice_pinned_clients",
        "Transaction-pooled clients pinned to their server",
    )?;
    pinned.set(shared.stats.pinned_clients());
    r.register(Box::new(pinned))?;
    counters(&r, shared)?;
    let clients = IntGauge::new("sluice_clients", "Connected clients")?;
    let max = shared.config().general.max_client_conn;
    clients.set(max.saturating_sub(shared.clients.available_permits()) as i64);
    r.register(Box::new(clients))?;
    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The instance-wide counters of `Stats`.
fn counters(r: &Registry, shared: &Shared) -> prometheus::Result<()> {
    let counters = [
        (
            "sluice_pins_total",
            "Times a client became pinned",
            shared.stats.pins_total(),
        ),
        (
            "sluice_prepared_reprepares_total",
            "Statements prepared on a server on a client's behalf",
            shared.stats.reprepares_total(),
        ),
        (
            "sluice_prepared_evictions_total",
            "Statements closed to stay within max_prepared_statements",
            shared.stats.evictions_total(),
        ),
        (
            "sluice_database_clears_total",
            "Statements needing a database free of sessions (DROP DATABASE, ...) before which sluice closed its idle servers to it",
            shared.stats.database_clears_total(),
        ),
        (
            "sluice_notifications_delivered_total",
            "Notifications queued for listening clients (one per client)",
            shared
                .listens
                .delivered
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            "sluice_notifications_dropped_total",
            "Notifications a listening client did not get: its backlog passed max_notification_backlog, and it was disconnected",
            shared
                .listens
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        let c = IntCounter::new(name, help)?;
        c.inc_by(value);
        r.register(Box::new(c))?;
    }
    listening(r, shared)?;
    cancelling(r, shared)?;
    caching(r, shared)
}

/// Cancel requests by what became of them, and those peers passed here.
fn cancelling(r: &Registry, shared: &Shared) -> prometheus::Result<()> {
    let f = &shared.cancels.forwarding;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let results = counter_vec(
        r,
        "sluice_cancel_requests_total",
        "Cancel requests received: sent to the query's server (cancelled), passed to peers (forwarded), dropped (ignored: no query, unknown key), or over the forwarding budget (rate_limited)",
        &["result"],
    )?;
    for (result, n) in [
        ("cancelled", &f.cancelled),
        ("forwarded", &f.forwarded),
        ("ignored", &f.ignored),
        ("rate_limited", &f.rate_limited),
    ] {
        results.with_label_values(&[result]).inc_by(get(n));
    }
    let from_peers = IntCounter::new(
        "sluice_cancel_requests_from_peers_total",
        "Cancel requests other sluice instances passed to this one",
    )?;
    from_peers.inc_by(get(&f.from_peers));
    r.register(Box::new(from_peers))
}

/// The result caches: hits and misses, what was stored and dropped, and
/// whether (and how far behind) each invalidation stream runs.
fn caching(r: &Registry, shared: &Shared) -> prometheus::Result<()> {
    let counter = |name: &str, help: &str| -> prometheus::Result<prometheus::IntCounterVec> {
        let c = prometheus::IntCounterVec::new(Opts::new(name, help), &["database"])?;
        r.register(Box::new(c.clone()))?;
        Ok(c)
    };
    let hits = counter(
        "sluice_cache_hits_total",
        "Reads answered from the result cache",
    )?;
    let misses = counter(
        "sluice_cache_misses_total",
        "Cacheable reads that went to a server",
    )?;
    let stored = counter("sluice_cache_stored_total", "Results stored in the cache")?;
    let not_stored = counter(
        "sluice_cache_not_stored_total",
        "Cacheable results not stored: too large, not a clean reply, or a change may have passed them",
    )?;
    let invalidated = counter(
        "sluice_cache_invalidations_total",
        "Cached results dropped because a table they read changed",
    )?;
    let resets = counter(
        "sluice_cache_resets_total",
        "Times the whole cache was emptied (schema change, stream lost)",
    )?;
    let losses = counter(
        "sluice_cache_stream_losses_total",
        "Times the invalidation stream was lost or could not start (caching off meanwhile)",
    )?;
    let entries = gauge_vec(
        r,
        "sluice_cache_entries",
        "Results in the cache",
        &["database"],
    )?;
    let bytes = gauge_vec(
        r,
        "sluice_cache_bytes",
        "Bytes the cache holds",
        &["database"],
    )?;
    let up = gauge_vec(
        r,
        "sluice_cache_stream_up",
        "1 when the invalidation stream runs and the cache answers",
        &["database"],
    )?;
    let lag = GaugeVec::new(
        Opts::new(
            "sluice_cache_lag_seconds",
            "How long ago the primary was where the cache's invalidations are applied up to",
        ),
        &["database"],
    )?;
    r.register(Box::new(lag.clone()))?;
    let lag_bound = GaugeVec::new(
        Opts::new(
            "sluice_cache_lag_bound_seconds",
            "max_cache_lag: past it, clients that have not written are not answered from the cache",
        ),
        &["database"],
    )?;
    r.register(Box::new(lag_bound.clone()))?;
    for c in shared.caches.all() {
        let l = [c.database.as_str()];
        let n = &c.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        hits.with_label_values(&l).inc_by(get(&n.hits));
        misses.with_label_values(&l).inc_by(get(&n.misses));
        stored.with_label_values(&l).inc_by(get(&n.stored));
        not_stored.with_label_values(&l).inc_by(get(&n.not_stored));
        invalidated
            .with_label_values(&l)
            .inc_by(get(&n.invalidated));
        resets.with_label_values(&l).inc_by(get(&n.resets));
        losses.with_label_values(&l).inc_by(get(&n.stream_losses));
        let rep = c.report();
        entries
            .with_label_values(&l)
            .set(i64::try_from(rep.entries).unwrap_or(i64::MAX));
        bytes
            .with_label_values(&l)
            .set(i64::try_from(rep.bytes).unwrap_or(i64::MAX));
        up.with_label_values(&l).set(i64::from(rep.streaming));
        lag_bound
            .with_label_values(&l)
            .set(c.settings.max_lag.as_secs_f64());
        let topo = shared.routes.topology(&c.database);
        if let Some(d) = c.lag(topo.as_deref()) {
            lag.with_label_values(&l).set(d.as_secs_f64());
        }
    }
    Ok(())
}

/// Listening clients and channels, per pool with a LISTEN hub.
fn listening(r: &Registry, shared: &Shared) -> prometheus::Result<()> {
    let labels = &["database", "user"];
    let clients = gauge_vec(
        r,
        "sluice_listen_clients",
        "Clients listening through the pool's LISTEN connection",
        labels,
    )?;
    let channels = gauge_vec(
        r,
        "sluice_listen_channels",
        "Channels the pool's LISTEN connection listens to for clients",
        labels,
    )?;
    for h in shared.listens.all() {
        let (c, n) = h.counts();
        let l = [h.database.as_str(), h.user.as_str()];
        clients
            .with_label_values(&l)
            .set(i64::try_from(c).unwrap_or(i64::MAX));
        channels
            .with_label_values(&l)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    Ok(())
}

/// Requests a replica refused that ran on the primary, per database and reason.
fn route_retries(r: &Registry, shared: &Shared) -> prometheus::Result<()> {
    let retries = prometheus::IntCounterVec::new(
        Opts::new(
            "sluice_route_retries_total",
            "Requests a replica refused as only a primary runs them, run on the primary, by reason",
        ),
        &["database", "reason"],
    )?;
    r.register(Box::new(retries.clone()))?;
    for t in shared.routes.all() {
        for (reason, n) in t.route_retries() {
            retries
                .with_label_values(&[t.database.as_str(), reason])
                .inc_by(n);
        }
    }
    Ok(())
}

/// Routing decisions and replica state, per database with replicas.
fn routing(r: &Registry, shared: &Shared) -> prometheus::Result<()> {
    let decisions = prometheus::IntCounterVec::new(
        Opts::new(
            "sluice_route_decisions_total",
            "Transaction-pooled requests routed, by destination and reason",
        ),
        &["database", "destination", "reason"],
    )?;
    r.register(Box::new(decisions.clone()))?;
    route_retries(r, shared)?;
    let replica_labels = &["database", "replica"];
    let lag = GaugeVec::new(
        Opts::new(
            "sluice_replica_lag_seconds",
            "How long ago the primary was at the replica's replay position",
        ),
        replica_labels,
    )?;
    r.register(Box::new(lag.clone()))?;
    let lag_bytes = gauge_vec(
        r,
        "sluice_replica_lag_bytes",
        "WAL bytes the replica has yet to replay",
        replica_labels,
    )?;
    let up = gauge_vec(
        r,
        "sluice_replica_in_rotation",
        "1 when the replica takes reads: healthy, caught up, not banned",
        replica_labels,
    )?;
    let bans = prometheus::IntCounterVec::new(
        Opts::new(
            "sluice_replica_bans_total",
            "Times a replica was taken out of rotation after a failure",
        ),
        replica_labels,
    )?;
    r.register(Box::new(bans.clone()))?;
    let promoted = gauge_vec(
        r,
        "sluice_replica_promoted",
        "1 when the replica is out of recovery (promoted): no reads go to it",
        replica_labels,
    )?;
    let retries = prometheus::IntCounterVec::new(
        Opts::new(
            "sluice_replica_read_retries_total",
            "Reads abandoned on a replica that stopped answering and run on the primary",
        ),
        replica_labels,
    )?;
    r.register(Box::new(retries.clone()))?;
    let bound_s = GaugeVec::new(
        Opts::new(
            "sluice_replica_lag_bound_seconds",
            "max_replica_lag, when it is a duration",
        ),
        replica_labels,
    )?;
    r.register(Box::new(bound_s.clone()))?;
    let bound_b = gauge_vec(
        r,
        "sluice_replica_lag_bound_bytes",
        "max_replica_lag, when it is a size",
        replica_labels,
    )?;
    for t in shared.routes.all() {
        for (dest, reason, n) in t.decisions() {
            decisions
                .with_label_values(&[t.database.as_str(), dest, reason])
                .inc_by(n);
        }
        for (i, rep) in t.replicas.iter().enumerate() {
            let addr = rep.addr.to_string();
            let l = [t.database.as_str(), addr.as_str()];
            let (ms, bytes, usable) = t.report(i);
            lag.with_label_values(&l).set(ms as f64 / 1000.0);
            lag_bytes.with_label_values(&l).set(bytes as i64);
            up.with_label_values(&l).set(i64::from(usable));
            bans.with_label_values(&l)
                .inc_by(rep.bans.load(std::sync::atomic::Ordering::Relaxed));
            promoted.with_label_values(&l).set(i64::from(t.promoted(i)));
            retries
                .with_label_values(&l)
                .inc_by(rep.read_retries.load(std::sync::atomic::Ordering::Relaxed));
            match t.settings.max_lag {
                crate::config::LagBound::Time(d) => {
                    bound_s.with_label_values(&l).set(d.as_secs_f64());
                }
                crate::config::LagBound::Bytes(b) => {
                    bound_b
                        .with_label_values(&l)
                        .set(i64::try_from(b).unwrap_or(i64::MAX));
                }
            }
        }
    }
    Ok(())
}

/// Per-pool traffic counters and maxwait.
struct Traffic {
    queries: prometheus::IntCounterVec,
    xacts: prometheus::IntCounterVec,
    received: prometheus::IntCounterVec,
    sent: prometheus::IntCounterVec,
    errors: prometheus::IntCounterVec,
    maxwait: GaugeVec,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<prometheus::IntCounterVec> {
    let c = prometheus::IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Traffic {
    fn new(r: &Registry) -> prometheus::Result<Self> {
        let l = &["database", "user", "role"];
        let maxwait = GaugeVec::new(
            Opts::new(
                "sluice_pool_maxwait_seconds",
                "How long the oldest client still waiting for a server has waited",
            ),
            l,
        )?;
        r.register(Box::new(maxwait.clone()))?;
        Ok(Self {
            queries: counter_vec(
                r,
                "sluice_queries_total",
                "Requests completed (ReadyForQuery)",
                l,
            )?,
            xacts: counter_vec(r, "sluice_transactions_total", "Transactions completed", l)?,
            received: counter_vec(
                r,
                "sluice_received_bytes_total",
                "Bytes received from clients and sent on to servers",
                l,
            )?,
            sent: counter_vec(
                r,
                "sluice_sent_bytes_total",
                "Bytes received from servers and sent on to clients",
                l,
            )?,
            errors: counter_vec(
                r,
                "sluice_server_errors_total",
                "ErrorResponses from servers, by SQLSTATE class",
                &["database", "user", "role", "class"],
            )?,
            maxwait,
        })
    }

    /// Adds one pool's numbers (replicas of a role add up).
    fn add(&self, l: &[&str; 3], s: &crate::pool::stats::PoolStats) {
        let t = s.totals();
        self.queries.with_label_values(l).inc_by(t.query_count);
        self.xacts.with_label_values(l).inc_by(t.xact_count);
        self.received.with_label_values(l).inc_by(t.received);
        self.sent.with_label_values(l).inc_by(t.sent);
        for (class, n) in s.errors() {
            self.errors
                .with_label_values(&[l[0], l[1], l[2], class.as_str()])
                .inc_by(n);
        }
        let g = self.maxwait.with_label_values(l);
        g.set(g.get().max(s.maxwait().as_secs_f64()));
    }
}

/// Connected clients per database, user and state (from the registry).
fn clients_by_state(r: &Registry, shared: &Shared) -> prometheus::Result<()> {
    let g = gauge_vec(
        r,
        "sluice_clients_by_state",
        "Connected clients by state: active (holds a server), waiting, idle, login",
        &["database", "user", "state"],
    )?;
    for c in shared.registry.all() {
        let id = c.identity();
        g.with_label_values(&[&*id.database, &*id.user, c.state().name()])
            .inc();
    }
    Ok(())
}
