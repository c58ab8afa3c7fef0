//! psql and pgbench through sluice, in session mode.

use std::process::Command;

use crate::harness::cluster::pg_bin;
use crate::harness::{Cluster, DB, SCRAM_USER, Sluice};

/// Runs psql or pgbench against sluice as the SCRAM test user; returns its output.
pub async fn run_tool(name: &str, s: &Sluice, args: &[&str]) -> String {
    let mut cmd = Command::new(pg_bin(name));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &s.port.to_string(),
        "-U",
        SCRAM_USER.0,
    ])
    .args(args)
    .env("PGPASSWORD", SCRAM_USER.1);
    let (stdout, stderr) = crate::harness::run::run_ok(cmd).await;
    stdout + &stderr
}

/// A new database `name`, initialised with `pgbench -i` through a sluice
/// whose [general] has `general` and whose pool for `name` holds `pool` servers.
pub async fn pgbench_db(name: &str, general: &str, pool: usize) -> Sluice {
    let cluster = Cluster::shared();
    cluster.primary.psql(
        "postgres",
        &format!("CREATE DATABASE {name} OWNER {}", SCRAM_USER.0),
    );
    let db = format!(
        "[databases.{name}]\nprimary = \"127.0.0.1:{}\"\npool_size = {pool}\n",
        cluster.primary.port
    );
    let s = Sluice::start(&crate::harness::config_for(cluster, general, &db)).await;
    run_tool("pgbench", &s, &["-i", "-q", "-s", "1", name]).await;
    s
}

/// Runs pgbench on `name` with `args`; asserts all `total` transactions ran and none failed.
pub async fn pgbench_clean(s: &Sluice, name: &str, args: &[&str], total: usize) -> String {
    let mut all = args.to_vec();
    all.push(name);
    let out = run_tool("pgbench", s, &all).await;
    let processed = format!("number of transactions actually processed: {total}/{total}");
    assert!(out.contains(&processed), "{args:?}:\n{out}");
    assert!(
        out.contains("number of failed transactions: 0 "),
        "{args:?}:\n{out}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_queries_through_sluice() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let out = run_tool(
        "psql",
        &s,
        &[
            "-X",
            "-A",
            "-t",
            "-d",
            DB,
            "-c",
            "SELECT 40 + 2",
            "-c",
            "SHOW client_encoding",
        ],
    )
    .await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["42", "UTF8"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_every_query_mode_has_no_failed_transactions() {
    let s = pgbench_db("bench", "", 20).await;
    for mode in ["simple", "extended", "prepared"] {
        pgbench_clean(
            &s,
            "bench",
            &["-M", mode, "-c", "4", "-j", "2", "-t", "100"],
            400,
        )
        .await;
    }
}
