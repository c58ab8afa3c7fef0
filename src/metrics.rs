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
    for (key, pool) in shared.pools.all() {
        let st = pool.status();
        let in_use = st.size.saturating_sub(st.available);
        let l = [key.database.as_str(), key.user.as_str(), "primary"];
        size.with_label_values(&l).set(st.max_size as i64);
        servers
            .with_label_values(&[l[0], l[1], l[2], "active"])
            .set(in_use as i64);
        servers
            .with_label_values(&[l[0], l[1], l[2], "idle"])
            .set(st.available as i64);
        waiting.with_label_values(&l).set(st.waiting as i64);
        let ratio = (in_use + st.waiting) as f64 / st.max_size.max(1) as f64;
        saturation.with_label_values(&l).set(ratio);
    }
    let pinned = IntGauge::new(
        "sluice_pinned_clients",
        "Transaction-pooled clients pinned to their server",
    )?;
    pinned.set(shared.stats.pinned_clients());
    r.register(Box::new(pinned))?;
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
    ];
    for (name, help, value) in counters {
        let c = IntCounter::new(name, help)?;
        c.inc_by(value);
        r.register(Box::new(c))?;
    }
    let clients = IntGauge::new("sluice_clients", "Connected clients")?;
    let max = shared.config().general.max_client_conn;
    clients.set(max.saturating_sub(shared.clients.available_permits()) as i64);
    r.register(Box::new(clients))?;
    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
