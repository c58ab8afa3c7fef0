//! The console's SHOW commands, with PgBouncer 1.18's column names and
//! order; sluice's own columns come last.

use std::collections::BTreeMap;

use super::{Table, some};
use crate::app::Shared;
use crate::clients::{ClientEntry, ClientState, timestamp, unix_micros};
use crate::config::Config;
use crate::pool::stats::Totals;

fn pool_mode_of(config: &Config, database: &str, user: &str) -> String {
    config
        .databases
        .get(database)
        .map(|db| config.pool_mode(db, config.users.get(user)))
        .map(|m| m.as_str().to_string())
        .unwrap_or_default()
}

/// Clients of (database, user) by state: (active, waiting).
fn client_counts(shared: &Shared) -> BTreeMap<(String, String), (usize, usize)> {
    let mut m: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for c in shared.registry.all() {
        let id = c.identity();
        let e = m
            .entry((id.database.to_string(), id.user.to_string()))
            .or_default();
        match c.state() {
            ClientState::Waiting => e.1 += 1,
            ClientState::Login => {}
            _ => e.0 += 1,
        }
    }
    m
}

pub fn pools(shared: &Shared) -> Table {
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
        "listening_clients",
    ];
    let counts = client_counts(shared);
    // Listening clients by pool (their hub is the primary's).
    let listening: BTreeMap<(String, String), usize> = shared
        .listens
        .all()
        .iter()
        .map(|h| ((h.database.clone(), h.user.clone()), h.counts().0))
        .collect();
    let mut rows = Vec::new();
    for (key, pool) in shared.pools.all() {
        let st = pool.status();
        let in_use = st.size.saturating_sub(st.available);
        let maxwait = pool.manager().stats.maxwait();
        // Clients are counted on their database's primary row.
        let (active, waiting) = match key.role {
            crate::route::Target::Primary => counts
                .get(&(key.database.clone(), key.user.clone()))
                .copied()
                .unwrap_or_default(),
            crate::route::Target::Replica(_) => (0, 0),
        };
        rows.push(vec![
            some(&key.database),
            some(&key.user),
            some(active),
            some(waiting),
            some(0),
            some(0),
            some(in_use),
            some(0),
            some(0),
            some(st.available),
            some(0),
            some(0),
            some(0),
            some(maxwait.as_secs()),
            some(maxwait.subsec_micros()),
            some(pool_mode_of(&config, &key.database, &key.user)),
            some(role_of(shared, &key)),
            some(shared.stats.pinned_clients()),
            some(match key.role {
                crate::route::Target::Primary => listening
                    .get(&(key.database.clone(), key.user.clone()))
                    .copied()
                    .unwrap_or(0),
                crate::route::Target::Replica(_) => 0,
            }),
        ]);
    }
    Table { columns, rows }
}

/// A pool's server role: primary, replica, or a replica found promoted.
fn role_of(shared: &Shared, key: &crate::pool::PoolKey) -> &'static str {
    match key.role {
        crate::route::Target::Replica(i)
            if shared
                .routes
                .topology(&key.database)
                .is_some_and(|t| t.replicas.len() > i && t.promoted(i)) =>
        {
            "promoted"
        }
        _ => key.role_name(),
    }
}

pub fn databases(shared: &Shared) -> Table {
    let config = shared.config();
    let columns = vec![
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "min_pool_size",
        "reserve_pool",
        "pool_mode",
        "max_connections",
        "current_connections",
        "paused",
        "disabled",
        "replicas",
        "route",
    ];
    let rows = config
        .databases
        .iter()
        .map(|(name, db)| {
            let current: usize = shared
                .pools
                .of(Some(name))
                .iter()
                .map(|(_, p)| p.status().size)
                .sum();
            // A promoted replica is named as such: it takes no reads.
            let topo = shared.routes.topology(name);
            let replicas: Vec<String> = db
                .replicas
                .iter()
                .enumerate()
                .map(|(i, r)| match &topo {
                    Some(t) if t.replicas.len() > i && t.promoted(i) => format!("{r} (promoted)"),
                    _ => r.to_string(),
                })
                .collect();
            vec![
                some(name),
                some(&db.primary.host),
                some(db.primary.port),
                some(&db.dbname),
                None,
                some(config.pool_size(db)),
                some(config.min_pool_size(db)),
                some(config.general.reserve_pool_size),
                db.pool_mode.map(|m| m.as_str().to_string()),
                some(config.max_db_connections(db)),
                some(current),
                some(i32::from(shared.pools.pauses.is_paused(name))),
                some(0),
                some(replicas.join(",")),
                some(format!("{:?}", db.route).to_ascii_lowercase()),
            ]
        })
        .collect();
    Table { columns, rows }
}

/// sluice's own: for each database with replicas, how many requests went
/// where and why, and how many a replica refused that the primary ran
/// (destination "retried").
pub fn routing(shared: &Shared) -> Table {
    let columns = vec!["database", "destination", "reason", "requests"];
    let mut topologies = shared.routes.all();
    topologies.sort_by(|a, b| a.database.cmp(&b.database));
    let mut rows = Vec::new();
    for t in topologies {
        let retried = t
            .route_retries()
            .into_iter()
            .map(|(r, n)| ("retried", r, n));
        for (dest, reason, n) in t.decisions().into_iter().chain(retried) {
            rows.push(vec![some(&t.database), some(dest), some(reason), some(n)]);
        }
    }
    Table { columns, rows }
}

/// The result cache of each database with cache rules.
pub fn cache(shared: &Shared) -> Table {
    let columns = vec![
        "database",
        "streaming",
        "entries",
        "bytes",
        "hits",
        "misses",
        "hit_ratio",
        "stored",
        "not_stored",
        "invalidations",
        "resets",
        "stream_losses",
        "lag_ms",
        "applied_lsn",
        "problem",
    ];
    let mut rows = Vec::new();
    for c in shared.caches.all() {
        let r = c.report();
        let n = &c.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let (hits, misses) = (get(&n.hits), get(&n.misses));
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        let topo = shared.routes.topology(&c.database);
        let lag = c.lag(topo.as_deref()).map(|d| d.as_millis());
        let trouble = c.trouble.lock().unwrap_or_else(|p| p.into_inner()).clone();
        rows.push(vec![
            some(&c.database),
            some(r.streaming),
            some(r.entries),
            some(r.bytes),
            some(hits),
            some(misses),
            some(format!("{ratio:.3}")),
            some(get(&n.stored)),
            some(get(&n.not_stored)),
            some(get(&n.invalidated)),
            some(get(&n.resets)),
            some(get(&n.stream_losses)),
            lag.map(|l| l.to_string()),
            some(format!(
                "{:X}/{:X}",
                r.applied >> 32,
                r.applied & 0xffff_ffff
            )),
            trouble,
        ]);
    }
    Table { columns, rows }
}

pub fn users(config: &Config) -> Table {
    let rows = config
        .users
        .iter()
        .map(|(name, u)| vec![some(name), u.pool_mode.map(|m| m.as_str().to_string())])
        .collect();
    Table {
        columns: vec!["name", "pool_mode"],
        rows,
    }
}

pub fn config(config: &Config) -> Table {
    let g = &config.general;
    let d = |v: std::time::Duration| format!("{v:?}");
    let r = &g.routing;
    let pairs: Vec<(&str, String)> = vec![
        ("listen_addr", g.listen_addr.to_string()),
        ("pool_mode", g.pool_mode.as_str().to_string()),
        ("default_pool_size", g.default_pool_size.to_string()),
        ("min_pool_size", g.min_pool_size.to_string()),
        ("reserve_pool_size", g.reserve_pool_size.to_string()),
        ("reserve_pool_timeout", d(g.reserve_pool_timeout)),
        ("max_client_conn", g.max_client_conn.to_string()),
        (
            "admin_reserved_connections",
            g.admin_reserved_connections.to_string(),
        ),
        ("query_wait_timeout", d(g.query_wait_timeout)),
        ("query_wait_notify", d(g.query_wait_notify)),
        ("query_timeout", d(g.query_timeout)),
        ("client_idle_timeout", d(g.client_idle_timeout)),
        ("idle_transaction_timeout", d(g.idle_transaction_timeout)),
        ("server_connect_timeout", d(g.server_connect_timeout)),
        ("server_idle_timeout", d(g.server_idle_timeout)),
        ("server_lifetime", d(g.server_lifetime)),
        ("server_reset_query", g.server_reset_query.clone()),
        ("max_packet_size", g.max_packet_size.to_string()),
        (
            "max_prepared_statements",
            g.max_prepared_statements.to_string(),
        ),
        (
            "consistency",
            format!("{:?}", r.consistency).to_ascii_lowercase(),
        ),
        ("load_balance", format!("{:?}", r.load_balance)),
        ("max_replica_lag", format!("{:?}", r.max_replica_lag)),
        ("replica_ban_time", d(r.replica_ban_time)),
        ("lsn_poll_interval", d(r.lsn_poll_interval)),
    ];
    let changeable = super::control::SETTABLE;
    let rows = pairs
        .into_iter()
        .map(|(k, v)| {
            let can = if changeable.contains(&k) { "yes" } else { "no" };
            vec![some(k), some(v), some(can)]
        })
        .collect();
    Table {
        columns: vec!["key", "value", "changeable"],
        rows,
    }
}

/// Totals and last-period averages per database, as SHOW STATS.
pub fn stats(shared: &Shared) -> Table {
    let columns = vec![
        "database",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "avg_xact_count",
        "avg_query_count",
        "avg_recv",
        "avg_sent",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
    ];
    let mut per_db: BTreeMap<String, (Totals, Totals, f64)> = BTreeMap::new();
    for (key, pool) in shared.pools.all() {
        let s = &pool.manager().stats;
        let (last, took) = s.last_period();
        let e = per_db.entry(key.database.clone()).or_default();
        add(&mut e.0, s.totals());
        add(&mut e.1, last);
        e.2 = e.2.max(took.as_secs_f64());
    }
    let rows = per_db
        .into_iter()
        .map(|(db, (t, p, secs))| {
            let rate = |n: u64| {
                if secs > 0.0 {
                    (n as f64 / secs) as u64
                } else {
                    0
                }
            };
            let avg = |us: u64, n: u64| us.checked_div(n).unwrap_or(0);
            vec![
                some(db),
                some(t.xact_count),
                some(t.query_count),
                some(t.received),
                some(t.sent),
                some(t.xact_us),
                some(t.query_us),
                some(t.wait_us),
                some(rate(p.xact_count)),
                some(rate(p.query_count)),
                some(rate(p.received)),
                some(rate(p.sent)),
                some(avg(p.xact_us, p.xact_count)),
                some(avg(p.query_us, p.query_count)),
                some(avg(p.wait_us, p.waits)),
            ]
        })
        .collect();
    Table { columns, rows }
}

fn add(a: &mut Totals, b: Totals) {
    a.xact_count += b.xact_count;
    a.query_count += b.query_count;
    a.received += b.received;
    a.sent += b.sent;
    a.xact_us += b.xact_us;
    a.query_us += b.query_us;
    a.wait_us += b.wait_us;
    a.waits += b.waits;
}

const CONN_COLUMNS: [&str; 18] = [
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
];

fn client_row(c: &ClientEntry) -> Vec<Option<String>> {
    let id = c.identity();
    let waited = c.waited_us();
    let pid = c.server_pid();
    vec![
        some("C"),
        some(id.user),
        some(id.database),
        some(c.state().name()),
        c.addr.map(|a| a.ip().to_string()),
        c.addr.map(|a| a.port().to_string()),
        c.local.map(|a| a.ip().to_string()),
        c.local.map(|a| a.port().to_string()),
        some(timestamp(unix_micros(c.connect_time))),
        some(timestamp(c.request_time())),
        some(waited / 1_000_000),
        some(waited % 1_000_000),
        some(0),
        some(format!("{:#x}", c.id)),
        (pid != 0).then(|| format!("S{pid}")),
        some(0),
        some(if c.tls.load(std::sync::atomic::Ordering::Relaxed) {
            "TLS"
        } else {
            ""
        }),
        some(id.application_name),
    ]
}

pub fn clients(shared: &Shared) -> Table {
    Table {
        columns: CONN_COLUMNS.to_vec(),
        rows: shared
            .registry
            .all()
            .iter()
            .map(|c| client_row(c))
            .collect(),
    }
}

/// Servers: those held by clients (active), then the idle ones in pools.
pub fn servers(shared: &Shared) -> Table {
    let mut rows = Vec::new();
    for c in shared.registry.all() {
        let pid = c.server_pid();
        if pid == 0 || c.state() != ClientState::Active {
            continue;
        }
        let id = c.identity();
        let addr = c
            .server_addr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (host, port) = addr.rsplit_once(':').unwrap_or((&addr, ""));
        rows.push(vec![
            some("S"),
            some(id.user),
            some(id.database),
            some("active"),
            some(host),
            some(port),
            None,
            None,
            None,
            some(timestamp(c.request_time())),
            some(0),
            some(0),
            some(0),
            some(format!("S{pid}")),
            some(format!("{:#x}", c.id)),
            some(pid),
            some(""),
            some(""),
        ]);
    }
    for (key, pool) in shared.pools.all() {
        pool.retain(|s, _| {
            let (host, port) = s.addr.rsplit_once(':').unwrap_or((&s.addr, ""));
            let since = std::time::SystemTime::now() - s.created.elapsed();
            let idle = std::time::SystemTime::now() - s.idle_since.elapsed();
            rows.push(vec![
                some("S"),
                some(&key.user),
                some(&key.database),
                some("idle"),
                some(host),
                some(port),
                None,
                None,
                some(timestamp(unix_micros(since))),
                some(timestamp(unix_micros(idle))),
                some(0),
                some(0),
                some(0),
                some(format!("S{}", s.pid())),
                None,
                some(s.pid()),
                some(""),
                some(""),
            ]);
            true
        });
    }
    Table {
        columns: CONN_COLUMNS.to_vec(),
        rows,
    }
}

pub fn lists(shared: &Shared) -> Table {
    let config = shared.config();
    let clients = shared.registry.all();
    let login = clients
        .iter()
        .filter(|c| c.state() == ClientState::Login)
        .count();
    let (mut used, mut free) = (0, 0);
    for (_, p) in shared.pools.all() {
        let s = p.status();
        used += s.size.saturating_sub(s.available);
        free += s.available;
    }
    let (listening, channels) = shared
        .listens
        .all()
        .iter()
        .map(|h| h.counts())
        .fold((0, 0), |(a, b), (c, n)| (a + c, b + n));
    let items: [(&str, usize); 14] = [
        ("databases", config.databases.len()),
        ("users", config.users.len()),
        ("pools", shared.pools.all().len()),
        ("free_clients", 0),
        ("used_clients", clients.len() - login),
        ("login_clients", login),
        ("free_servers", free),
        ("used_servers", used),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
        // sluice's own: LISTEN through the pools' LISTEN connections.
        ("listening_clients", listening),
        ("listen_channels", channels),
    ];
    Table {
        columns: vec!["list", "items"],
        rows: items.iter().map(|(k, v)| vec![some(k), some(v)]).collect(),
    }
}
