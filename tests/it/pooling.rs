//! Session pooling: servers are reused, reset between clients, and bounded.

use crate::harness::{AppSetting, Cluster, DB, SCRAM_USER, Sluice, config_for, wait_until};

fn pool_of(n: usize, general: &str) -> String {
    config_for(Cluster::shared(), general, "").app_setting(&format!("pool_size = {n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_reused_and_reset_between_clients() {
    let s = Sluice::start(&pool_of(1, "")).await;
    let a = s.app().await;
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'; PREPARE p AS SELECT 1")
        .await
        .unwrap();
    let pid_a: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(a);
    let b = s.app().await;
    let row = b
        .query_one("SELECT pg_backend_pid(), current_setting('TimeZone'), (SELECT count(*) FROM pg_prepared_statements WHERE name = 'p')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), pid_a);
    assert_ne!(row.get::<_, String>(1), "Asia/Tokyo");
    assert_eq!(row.get::<_, i64>(2), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_bounds_server_connections() {
    let s = Sluice::start(&pool_of(2, "query_wait_timeout = \"10s\"")).await;
    let named = |app: &'static str| {
        let url = format!(
            "{} application_name={app}",
            s.url(SCRAM_USER.0, SCRAM_USER.1, DB)
        );
        async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c
        }
    };
    let a = named("pool-bound").await;
    let b = named("pool-bound").await;
    // A third client waits for a server, and gets one when a client leaves.
    let port = s.port;
    let third = tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user={} password={} dbname={DB} application_name=pool-bound", SCRAM_USER.0, SCRAM_USER.1),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(conn);
        c.query_one("SELECT 1", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    let count = || async {
        a.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pool-bound'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    assert_eq!(count().await, 2);
    assert!(
        !third.is_finished(),
        "the third client must wait for a server"
    );
    drop(b);
    assert_eq!(third.await.unwrap().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_keeps_servers_open() {
    let toml = config_for(Cluster::shared(), "min_pool_size = 3", "").app_setting("pool_size = 5");
    let s = Sluice::start(&toml).await;
    let c = s.connect(SCRAM_USER.0, SCRAM_USER.1, DB).await.unwrap();
    wait_until(15, "min_pool_size servers to open", || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = 'app' AND backend_type = 'client backend'",
                &[&SCRAM_USER.0],
            )
            .await
            .unwrap()
            .get(0);
        n >= 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_that_removes_a_database_closes_its_idle_servers() {
    let cluster = Cluster::shared();
    let toml = config_for(cluster, "pool_mode = \"transaction\"", "");
    let s = Sluice::start(&toml).await;
    let url = format!(
        "{} application_name=soon-gone",
        s.url(SCRAM_USER.0, SCRAM_USER.1, DB)
    );
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.simple_query("SELECT 1").await.unwrap();
    let count = || {
        cluster.primary.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'soon-gone'",
        )
    };
    assert_eq!(count(), "1", "the idle server stays in the pool");
    let without_app = toml.replace(&format!("[databases.{DB}]"), "[databases.renamed]");
    s.shared
        .as_ref()
        .unwrap()
        .reload(sluice::config::Config::parse(&without_app).unwrap());
    wait_until(10, "the removed database's servers to close", || async {
        count() == "0"
    })
    .await;
    let e = s
        .connect(SCRAM_USER.0, SCRAM_USER.1, DB)
        .await
        .err()
        .expect("database removed");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("3D000"));
}
