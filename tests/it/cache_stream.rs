//! The result cache's source of invalidations against a real primary: a
//! logical replication stream (temporary slot, pgoutput) that names the
//! tables each committed transaction changed, whoever made the change.

use sluice::cache::stream::{ChangeStream, Event};
use sluice::cache::wal::{Change, Rows};

use crate::harness::{Cluster, DB, config_for};

/// Each table changed as `schema.name[column=value ...]`, or `[all]`.
fn tables(c: &[Change]) -> Vec<String> {
    c.iter()
        .flat_map(|c| match c {
            Change::Tables { tables, .. } => tables
                .iter()
                .map(|((s, n), rows)| {
                    let rows = match rows {
                        Rows::All => "all".to_string(),
                        Rows::Keys { columns, values } => values
                            .iter()
                            .map(|(i, v)| {
                                format!("{}={}", columns[*i].0, String::from_utf8_lossy(v))
                            })
                            .collect::<Vec<_>>()
                            .join(" "),
                    };
                    format!("{s}.{n}[{rows}]")
                })
                .collect::<Vec<_>>(),
            Change::Schema { .. } => vec!["(schema)".to_string()],
        })
        .collect()
}

async fn next(s: &mut ChangeStream) -> Vec<Change> {
    let changes = async {
        loop {
            if let Event::Changes(c) = s.next().await.expect("the stream is open") {
                return c;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), changes)
        .await
        .expect("changes within 20s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_name_their_tables_from_any_client() {
    let cluster = Cluster::shared();
    cluster.primary.psql(
        DB,
        "CREATE TABLE cs_orders (id int PRIMARY KEY, note text); \
         CREATE TABLE cs_other (x int PRIMARY KEY); \
         CREATE PUBLICATION cs_pub FOR TABLE cs_orders, cs_other",
    );
    let toml = config_for(
        cluster,
        "monitor_user = \"postgres\"",
        "[users.postgres]\npassword = \"unused\"\n",
    );
    let config = sluice::config::Config::parse(&toml).unwrap();
    let db = &config.databases[DB];
    let target = sluice::route::monitor::target(&config, &db.primary, &db.dbname).unwrap();
    let mut s = ChangeStream::start(&target, "cs_slot", "cs_pub")
        .await
        .unwrap();
    // Changes made directly on PostgreSQL, not through sluice.
    cluster
        .primary
        .psql(DB, "INSERT INTO cs_orders VALUES (1, 'a')");
    let first = next(&mut s).await;
    assert_eq!(tables(&first), ["public.cs_orders[id=1]"]);
    let after_insert = s.applied;
    assert!(after_insert > 0);
    cluster.primary.psql(
        DB,
        "UPDATE cs_orders SET note = 'b'; INSERT INTO cs_other VALUES (1), (2); \
         DELETE FROM cs_other WHERE x = 1; UPDATE cs_other SET x = 5 WHERE x = 2",
    );
    // The rows' identity before and after: an UPDATE that changes the key
    // names both values.
    assert_eq!(
        tables(&next(&mut s).await),
        ["public.cs_orders[id=1]", "public.cs_other[x=1 x=2 x=5]"]
    );
    assert!(s.applied > after_insert, "the commit position moves on");
    // A rolled-back transaction sends nothing: the TRUNCATE comes next.
    cluster.primary.psql(
        DB,
        "DO $$ BEGIN INSERT INTO cs_orders VALUES (9, 'x'); RAISE EXCEPTION 'no'; \
         EXCEPTION WHEN OTHERS THEN NULL; END $$",
    );
    cluster.primary.psql(DB, "TRUNCATE cs_other");
    assert_eq!(tables(&next(&mut s).await), ["public.cs_other[all]"]);
    // A definition change: nothing cached can be trusted.
    cluster.primary.psql(
        DB,
        "ALTER TABLE cs_orders ADD COLUMN z int; INSERT INTO cs_orders VALUES (2, 'c', 3)",
    );
    assert_eq!(tables(&next(&mut s).await), ["(schema)"]);
    // DDL announced by the event trigger's message, no row changed.
    cluster.primary.psql(
        DB,
        "SELECT pg_logical_emit_message(true, 'sluice_cache', 'ddl')",
    );
    assert_eq!(tables(&next(&mut s).await), ["(schema)"]);
    // A ping: the server says at once how far it has sent.
    let before = s.applied;
    cluster.primary.psql(
        DB,
        "CREATE TABLE cs_unpublished (x int); INSERT INTO cs_unpublished VALUES (1)",
    );
    let caught = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            s.acknowledge(true).await.unwrap();
            let one = std::time::Duration::from_millis(200);
            if let Ok(Ok(Event::CaughtUp(lsn))) = tokio::time::timeout(one, s.next()).await
                && lsn > before
            {
                return lsn;
            }
        }
    })
    .await
    .expect("a keepalive answers the ping");
    assert!(caught > before);
}
