//! DROP DATABASE and its kin through sluice while its pools hold idle
//! servers to that database: sluice closes them first, so the statement
//! succeeds as it would on a direct connection.

use crate::harness::{Cluster, DB, SCRAM_USER, Sluice, config_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_and_template_a_database_that_sluice_holds_servers_to() {
    let cluster = Cluster::shared();
    let create = format!("CREATE DATABASE it23_drop OWNER {}", SCRAM_USER.0);
    for sql in [
        "DROP DATABASE IF EXISTS it23_drop",
        "DROP DATABASE IF EXISTS it23_copy",
        &create,
    ] {
        cluster.primary.psql(DB, sql);
    }
    let extra = format!(
        "[databases.it23_drop]\nprimary = \"127.0.0.1:{}\"\n",
        cluster.primary.port
    );
    for mode in ["transaction", "session"] {
        let toml = config_for(cluster, &format!("pool_mode = \"{mode}\""), &extra);
        let s = Sluice::start(&toml).await;
        let dba = s.app().await;
        for ddl in [
            "CREATE DATABASE it23_copy TEMPLATE it23_drop",
            "DROP DATABASE it23_copy",
            "DROP DATABASE it23_drop",
        ] {
            // Idle servers to it23_drop in sluice's pool: a client used
            // them and left.
            for _ in 0..3 {
                let c = s.connect(SCRAM_USER.0, SCRAM_USER.1, "it23_drop").await;
                if let Ok(c) = c {
                    c.simple_query("SELECT 1").await.unwrap();
                }
            }
            dba.batch_execute(ddl)
                .await
                .unwrap_or_else(|e| panic!("{mode}: {ddl}: {e:?}"));
        }
        let cleared = s.shared.as_ref().unwrap().stats.database_clears_total();
        assert_eq!(cleared, 3, "{mode}: one clear per statement");
        cluster.primary.psql(DB, &create);
    }
    cluster
        .primary
        .psql(DB, "DROP DATABASE IF EXISTS it23_drop");
}
