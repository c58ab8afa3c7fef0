//! Prepared statements through transaction pooling survive schema
//! changes made directly on PostgreSQL or through sluice: real drivers,
//! old clients and new ones, over a pool of several servers.

use crate::harness::drivers::driver;
use crate::harness::{AppSetting, Cluster, DB, SCRAM_USER, Sluice, config_for};

/// Transaction pooling over `servers` primary servers. Reads stay on the
/// primary: the tests change the schema directly there, and a replica
/// may not have replayed the change yet.
async fn primary_pool(servers: usize) -> Sluice {
    let toml = config_for(Cluster::shared(), "pool_mode = \"transaction\"", "")
        .app_setting(&format!("pool_size = {servers}\nroute = \"primary\""));
    Sluice::start(&toml).await
}

fn urls(s: &Sluice) -> [String; 2] {
    let (u, p) = SCRAM_USER;
    [
        format!("postgresql://{u}:{p}@127.0.0.1:{}/{DB}", s.port),
        format!(
            "postgresql://{u}:{p}@127.0.0.1:{}/{DB}",
            Cluster::shared().primary.port
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_statements_survive_schema_changes() {
    let s = primary_pool(3).await;
    driver("python", "python3", "psycopg_schema_change.py", &urls(&s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_statement_cache_survives_schema_changes() {
    let s = primary_pool(3).await;
    driver("python", "python3", "asyncpg_schema_change.py", &urls(&s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_named_queries_survive_schema_changes() {
    let s = primary_pool(3).await;
    driver("node", "node", "node_schema_change.js", &urls(&s)).await;
}

/// tokio-postgres prepares (Parse, Describe) and then only binds and
/// executes, trusting the row shape it was told: a client that prepared
/// before the change gets PostgreSQL's error, as it would directly, and
/// prepares again; a new client never sees one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_old_and_new_clients_after_a_schema_change() {
    let cluster = Cluster::shared();
    cluster.primary.psql(DB, "DROP TABLE IF EXISTS sct_t");
    cluster.primary.psql(
        DB,
        "CREATE TABLE sct_t (id int, v text); INSERT INTO sct_t VALUES (1, 'a')",
    );
    let s = primary_pool(3).await;
    let sql = "SELECT * FROM sct_t WHERE id = $1";
    let mut old = Vec::new();
    for _ in 0..4 {
        let c = s.app().await;
        let st = c.prepare(sql).await.unwrap();
        assert_eq!(c.query_one(&st, &[&1i32]).await.unwrap().len(), 2);
        old.push((c, st));
    }
    cluster
        .primary
        .psql(DB, "ALTER TABLE sct_t ADD COLUMN z int");
    for _ in 0..6 {
        let c = s.app().await;
        let row = c
            .query_one(sql, &[&1i32])
            .await
            .expect("a new client's query");
        assert_eq!(row.len(), 3);
    }
    for (c, st) in &old {
        match c.query_one(st, &[&1i32]).await {
            Ok(row) => panic!(
                "an old statement returned {} columns without an error",
                row.len()
            ),
            Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}"),
        }
        let again = c.prepare(sql).await.unwrap();
        assert_eq!(c.query_one(&again, &[&1i32]).await.unwrap().len(), 3);
    }
}

/// asyncpg's custom codecs (tuple and text formats) on statements whose
/// tables and types are dropped and made again, and its isolation-level
/// transactions, with other clients on the same two servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_codecs_and_isolation_levels() {
    let s = primary_pool(2).await;
    let [url, _] = urls(&s);
    driver("python", "python3", "asyncpg_codecs.py", &[url]).await;
}
