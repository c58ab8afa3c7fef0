//! Read/write routing against a real primary and streaming replica: where
//! each statement ran is read from `pg_is_in_recovery()` in its own result
//! ("t" on the replica, "f" on the primary).

use std::sync::Arc;

use crate::harness::{AppSetting, Cluster, DB, Sluice, config_for, pooled, wait_until};

use crate::harness::sql::first_value as first;

/// Runs `sql` (simple protocol) and returns its first value.
async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    let r = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    first(&r).unwrap_or_else(|| panic!("{sql}: no row"))
}

/// Where a plain read from a client that never wrote runs.
async fn read_runs_on(c: &tokio_postgres::Client) -> String {
    one(c, "SELECT pg_is_in_recovery()").await
}

/// Waits until the monitor has put the replica in rotation.
async fn replica_in_rotation(s: &Sluice) {
    let c = s.app().await;
    wait_until(20, "reads to reach the replica", || {
        let c = &c;
        async move { read_runs_on(c).await == "t" }
    })
    .await;
}

fn decisions(s: &Sluice, reason: &str) -> u64 {
    let shared = s.shared.as_ref().expect("shared");
    shared
        .routes
        .topology(DB)
        .expect("app has replicas")
        .decisions()
        .iter()
        .filter(|(_, r, _)| *r == reason)
        .map(|(_, _, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_statement_runs_where_its_class_says() {
    let s = pooled("transaction", 4, "").await;
    replica_in_rotation(&s).await;
    let w = s.app().await;
    w.batch_execute("CREATE TABLE IF NOT EXISTS route_mix (id serial PRIMARY KEY, v int)")
        .await
        .unwrap();
    let cases: &[(&str, &str)] = &[
        ("SELECT pg_is_in_recovery()", "t"),
        ("select PG_IS_IN_RECOVERY() -- trailing comment", "t"),
        ("/* sluice:primary */ SELECT pg_is_in_recovery()", "f"),
        ("/* sluice:replica */ SELECT pg_is_in_recovery()", "t"),
        ("SELECT pg_is_in_recovery() FROM route_mix FOR UPDATE", "?"),
        (
            "SELECT pg_is_in_recovery() WHERE nextval('route_mix_id_seq') > 0",
            "f",
        ),
        (
            "WITH x AS (INSERT INTO route_mix (v) VALUES (1) RETURNING v) SELECT pg_is_in_recovery() FROM x",
            "f",
        ),
        ("BEGIN READ ONLY; SELECT pg_is_in_recovery(); COMMIT", "t"),
        ("BEGIN; SELECT pg_is_in_recovery(); COMMIT", "f"),
        (
            "INSERT INTO route_mix (v) VALUES (2) RETURNING pg_is_in_recovery()",
            "f",
        ),
    ];
    for (sql, want) in cases {
        // A fresh client each time: one that wrote reads from the primary for a moment.
        let r = s.app().await;
        let got = r
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        if *want != "?" {
            assert_eq!(first(&got).as_deref(), Some(*want), "{sql}");
        }
    }
    // Explicit read-only transactions over several messages stay on the replica.
    let ro = s.app().await;
    ro.batch_execute("BEGIN READ ONLY").await.unwrap();
    assert_eq!(one(&ro, "SELECT pg_is_in_recovery()").await, "t");
    assert_eq!(one(&ro, "SELECT pg_is_in_recovery()").await, "t");
    ro.batch_execute("COMMIT").await.unwrap();
    // A transaction not begun read-only runs wholly on the primary.
    let rw = s.app().await;
    rw.batch_execute("BEGIN").await.unwrap();
    assert_eq!(one(&rw, "SELECT pg_is_in_recovery()").await, "f");
    rw.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_route_by_their_text() {
    let s = pooled("transaction", 4, "").await;
    replica_in_rotation(&s).await;
    let c = s.app().await;
    let read = c.prepare("SELECT pg_is_in_recovery()").await.unwrap();
    for _ in 0..5 {
        let row = c.query_one(&read, &[]).await.unwrap();
        assert!(row.get::<_, bool>(0), "a prepared read runs on the replica");
    }
    let write = c
        .prepare("SELECT pg_is_in_recovery(), pg_advisory_unlock_all() IS NULL")
        .await
        .unwrap();
    let row = c.query_one(&write, &[]).await.unwrap();
    assert!(
        !row.get::<_, bool>(0),
        "a statement calling pg_advisory_* runs on the primary"
    );
    // The extended protocol with parameters, the way drivers send it.
    let row = c
        .query_one("SELECT pg_is_in_recovery(), $1::int + 1", &[&41i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(1), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_route_setting_and_hints_override() {
    let s = pooled("transaction", 4, "").await;
    replica_in_rotation(&s).await;
    let c = s.app().await;
    c.batch_execute("SET sluice.route TO primary")
        .await
        .unwrap();
    assert_eq!(read_runs_on(&c).await, "f");
    assert_eq!(one(&c, "SHOW sluice.route").await, "primary");
    assert_eq!(
        one(&c, "/* sluice:replica */ SELECT pg_is_in_recovery()").await,
        "t"
    );
    c.batch_execute("RESET sluice.route").await.unwrap();
    assert_eq!(read_runs_on(&c).await, "t");
    // A replica hint never sends a write to a replica.
    let r = c
        .simple_query("/* sluice:replica */ CREATE TEMP TABLE IF NOT EXISTS hint_w (a int)")
        .await;
    assert!(
        r.is_ok(),
        "a write with a replica hint ran on the primary: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_workload_never_sends_a_write_to_the_replica() {
    let s = pooled("transaction", 4, "").await;
    replica_in_rotation(&s).await;
    let setup = s.app().await;
    setup
        .batch_execute("CREATE TABLE IF NOT EXISTS route_load (id int, client int)")
        .await
        .unwrap();
    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for client in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let c = s.app().await;
            let (mut on_replica, mut on_primary) = (0, 0);
            let writer = client % 2 == 0;
            for i in 0..60 {
                let sql = match i % 5 {
                    0 if writer => format!("INSERT INTO route_load VALUES ({i}, {client}) RETURNING pg_is_in_recovery()"),
                    1 if writer => format!("UPDATE route_load SET id = id WHERE client = {client} AND id = {i} RETURNING pg_is_in_recovery()"),
                    _ => "SELECT pg_is_in_recovery()".to_string(),
                };
                // Any 25006 (read-only transaction) fails the test here.
                let r = c.simple_query(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                match first(&r).as_deref() {
                    Some("t") => on_replica += 1,
                    Some("f") => on_primary += 1,
                    _ => {}
                }
            }
            (on_replica, on_primary)
        }));
    }
    let (mut rep, mut pri) = (0, 0);
    for t in tasks {
        let (r, p) = t.await.unwrap();
        rep += r;
        pri += p;
    }
    let c = s.app().await;
    let n = one(&c, "/* sluice:primary */ SELECT count(*) FROM route_load").await;
    assert!(n.parse::<u64>().unwrap() >= 48, "every insert landed: {n}");
    assert!(
        rep > 0,
        "some reads ran on the replica ({rep} replica, {pri} primary)"
    );
    assert!(decisions(&s, "read") > 0);
}

/// A cluster whose replica applies WAL 500 ms late.
fn delayed_cluster() -> Cluster {
    Cluster::start_with_replica_conf("recovery_min_apply_delay = '500ms'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_read_their_own_writes_from_a_lagging_replica() {
    let cluster = delayed_cluster();
    cluster
        .primary
        .psql(DB, "CREATE TABLE ryw (id int PRIMARY KEY)");
    let toml = config_for(&cluster, "pool_mode = \"transaction\"", "").app_setting("pool_size = 4");
    let s = Sluice::start(&toml).await;
    replica_in_rotation(&s).await;
    let writer = s.app().await;
    for i in 0..500 {
        writer
            .execute("INSERT INTO ryw VALUES ($1)", &[&i])
            .await
            .unwrap();
        let rows = writer
            .query("SELECT id FROM ryw WHERE id = $1", &[&i])
            .await
            .unwrap();
        assert_eq!(
            rows.len(),
            1,
            "iteration {i}: the writer did not see its own row"
        );
    }
    assert!(decisions(&s, "read_your_writes") > 0);
    // A client that never wrote still reads from the replica.
    let reader = s.app().await;
    assert_eq!(read_runs_on(&reader).await, "t");
    // The writer returns to the replica once it has caught up.
    wait_until(10, "the writer's reads to return to the replica", || {
        let w = &writer;
        async move { read_runs_on(w).await == "t" }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_sends_reads_to_the_primary_until_it_returns() {
    let cluster = Cluster::start();
    let toml = config_for(
        &cluster,
        "pool_mode = \"transaction\"\nreplica_ban_time = \"300ms\"\nserver_connect_timeout = \"2s\"",
        "",
    )
    .app_setting("pool_size = 4");
    let s = Sluice::start(&toml).await;
    replica_in_rotation(&s).await;
    let c = s.app().await;
    cluster.replica.stop();
    // Every read succeeds; they move to the primary.
    wait_until(20, "reads to move to the primary", || {
        let c = &c;
        async move { read_runs_on(c).await == "f" }
    })
    .await;
    for _ in 0..20 {
        assert_eq!(read_runs_on(&c).await, "f");
    }
    cluster.replica.start_again();
    wait_until(30, "reads to return to the replica", || {
        let c = &c;
        async move { read_runs_on(c).await == "t" }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_can_send_whole_sessions_to_a_replica() {
    let toml = config_for(Cluster::shared(), "pool_mode = \"session\"", "")
        .app_setting("route = \"replica\"");
    let s = Sluice::start(&toml).await;
    // Each new session picks its server once; wait for the monitor.
    wait_until(20, "a session on the replica", || {
        let s = &s;
        async move { read_runs_on(&s.app().await).await == "t" }
    })
    .await;
    let c = s.app().await;
    assert_eq!(one(&c, "SELECT pg_is_in_recovery()").await, "t");
    let pid = one(&c, "SELECT pg_backend_pid()").await;
    assert_eq!(
        one(&c, "SELECT pg_backend_pid()").await,
        pid,
        "one server per session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_past_max_replica_lag_is_out_until_it_catches_up() {
    let cluster = delayed_cluster();
    cluster.primary.psql(DB, "CREATE TABLE lagging (id int)");
    let toml = config_for(
        &cluster,
        "pool_mode = \"transaction\"\nmax_replica_lag = \"200ms\"",
        "",
    )
    .app_setting("pool_size = 4");
    let s = Sluice::start(&toml).await;
    replica_in_rotation(&s).await;
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (w, flag) = (s.app().await, writing.clone());
        tokio::spawn(async move {
            while flag.load(std::sync::atomic::Ordering::Relaxed) {
                w.batch_execute("INSERT INTO lagging VALUES (1)")
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let reader = s.app().await;
    wait_until(20, "a lagging replica to leave rotation", || {
        let c = &reader;
        async move { read_runs_on(c).await == "f" }
    })
    .await;
    assert!(
        decisions(&s, "no_replica") > 0,
        "reads without a replica are counted"
    );
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    wait_until(20, "the replica to return once caught up", || {
        let c = &reader;
        async move { read_runs_on(c).await == "t" }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_connections_are_named_in_pg_stat_activity() {
    let s = pooled(
        "transaction",
        2,
        "default_application_name = \"sluice pool\"",
    )
    .await;
    replica_in_rotation(&s).await;
    let cluster = Cluster::shared();
    let count = |who: &crate::harness::cluster::PgInstance, name: &str| {
        who.psql(
            DB,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}'"),
        )
    };
    // The routing monitor on both servers (other tests' monitors too).
    for server in [&cluster.primary, &cluster.replica] {
        assert_ne!(count(server, "sluice monitor"), "0");
    }
    // A client that sends no name sees the default, and its server has it.
    let c = s.app().await;
    let mine = "/* sluice:primary */ SELECT current_setting('application_name'), pg_backend_pid()";
    let r = c.simple_query(mine).await.unwrap();
    assert_eq!(first(&r).as_deref(), Some("sluice pool"));
    // A client's own name wins, on its server and for the next client.
    let (named, conn) = tokio_postgres::connect(
        &format!(
            "{} application_name=worker7",
            s.url(
                crate::harness::SCRAM_USER.0,
                crate::harness::SCRAM_USER.1,
                DB
            )
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let r = named.simple_query(mine).await.unwrap();
    assert_eq!(first(&r).as_deref(), Some("worker7"));
    let r = c.simple_query(mine).await.unwrap();
    assert_eq!(first(&r).as_deref(), Some("sluice pool"));
}

/// asyncpg prepares a statement (Parse, Describe) on the replica and then
/// sends a write on the same connection: the write runs on the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_prepared_reads_and_writes_interleave() {
    let s = pooled("transaction", 4, "").await;
    replica_in_rotation(&s).await;
    let url = format!(
        "postgresql://{}:{}@127.0.0.1:{}/{DB}",
        crate::harness::SCRAM_USER.0,
        crate::harness::SCRAM_USER.1,
        s.port
    );
    crate::harness::drivers::driver("python", "python3", "asyncpg_routing.py", &[url]).await;
}
