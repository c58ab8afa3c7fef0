//! Pool limits and server upkeep: server_idle_timeout, reserve pools,
//! max_db_connections and max_user_connections.

use crate::harness::{
    AppSetting, Cluster, DB, MD5_USER, SCRAM_USER, Sluice, config_for, wait_until,
};

async fn backends(c: &tokio_postgres::Client, app: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
        &[&app],
    )
    .await
    .unwrap()
    .get(0)
}

/// A client whose transactions leave `app` as the server's application_name.
async fn named(s: &Sluice, user: (&str, &str), app: &str) -> tokio_postgres::Client {
    let url = format!("{} application_name={app}", s.url(user.0, user.1, DB));
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_servers_close_after_server_idle_timeout() {
    let s = Sluice::with(
        Cluster::shared(),
        "pool_mode = \"transaction\"\nserver_idle_timeout = \"1s\"",
    )
    .await;
    let c = named(&s, SCRAM_USER, "idle-reaped").await;
    c.simple_query("SELECT 1").await.unwrap();
    let watcher = Sluice::with(Cluster::shared(), "").await;
    let w = watcher.app().await;
    assert_eq!(
        backends(&w, "idle-reaped").await,
        1,
        "the released server stays open at first"
    );
    wait_until(15, "the idle server to be closed", || async {
        backends(&w, "idle-reaped").await == 0
    })
    .await;
    // The client still works: a new server is opened for it.
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_pool_opens_when_clients_wait() {
    let toml = config_for(
        Cluster::shared(),
        "pool_mode = \"transaction\"\nreserve_pool_size = 1\nreserve_pool_timeout = \"200ms\"\nquery_wait_timeout = \"5s\"",
        "",
    )
    .app_setting("pool_size = 1");
    let s = Sluice::start(&toml).await;
    let a = named(&s, SCRAM_USER, "reserve-a").await;
    let b = named(&s, SCRAM_USER, "reserve-b").await;
    a.batch_execute("BEGIN").await.unwrap();
    // b waits past reserve_pool_timeout and then gets a reserve server.
    let r = b
        .simple_query("SELECT 7")
        .await
        .expect("served from the reserve pool");
    assert_eq!(r.len(), 3);
    a.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_caps_every_pool_of_a_database() {
    let cluster = Cluster::shared();
    cluster
        .primary
        .psql("postgres", "CREATE DATABASE capped OWNER sluice_scram");
    let extra = format!(
        "[databases.capped]\nprimary = \"127.0.0.1:{}\"\npool_size = 5\nmax_db_connections = 2\n",
        cluster.primary.port
    );
    let s = Sluice::start(&config_for(
        cluster,
        "pool_mode = \"transaction\"\nquery_wait_timeout = \"700ms\"\nserver_idle_timeout = \"0\"",
        &extra,
    ))
    .await;
    let connect = |u: (&'static str, &'static str)| {
        let url = s.url(u.0, u.1, "capped");
        async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok::<_, tokio_postgres::Error>(c)
        }
    };
    let a = connect(SCRAM_USER).await.unwrap();
    let b = connect(MD5_USER).await.unwrap();
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // Both servers the database may have are busy: a third client waits,
    // then fails (at login, or at its first query when its login needed no
    // server).
    let e = s
        .first_query(SCRAM_USER.0, SCRAM_USER.1, "capped", "SELECT 1")
        .await
        .expect_err("max_db_connections reached");
    let db = e.as_db_error().expect("ErrorResponse");
    assert_eq!(db.code().code(), "53300");
    assert!(
        db.message().contains("max_db_connections"),
        "{}",
        db.message()
    );
    let n = cluster.primary.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'capped'",
    );
    assert_eq!(n, "2");
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_user_connections_caps_a_user_across_databases() {
    let s = Sluice::with(
        Cluster::shared(),
        "pool_mode = \"transaction\"\nquery_wait_timeout = \"700ms\"\nmax_user_connections = 1",
    )
    .await;
    let a = s.connect(MD5_USER.0, MD5_USER.1, DB).await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let e = s
        .first_query(MD5_USER.0, MD5_USER.1, DB, "SELECT 1")
        .await
        .expect_err("max_user_connections reached");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("53300"));
    a.batch_execute("COMMIT").await.unwrap();
    let b = s.connect(MD5_USER.0, MD5_USER.1, DB).await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_replaced_after_server_lifetime() {
    let s = Sluice::with(
        Cluster::shared(),
        "pool_mode = \"transaction\"\nserver_lifetime = \"1s\"",
    )
    .await;
    let c = named(&s, SCRAM_USER, "short-lived").await;
    // simple_query: named statements do not follow a client across servers yet.
    let pid = || async {
        match &c.simple_query("SELECT pg_backend_pid()").await.unwrap()[1] {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap_or_default().to_string(),
            other => panic!("expected a row, got {other:?}"),
        }
    };
    let first = pid().await;
    wait_until(15, "the old server to be replaced", || async {
        pid().await != first
    })
    .await;
}
