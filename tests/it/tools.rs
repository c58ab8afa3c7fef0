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
    let cluster = Cluster::shared();
    cluster
        .primary
        .psql("postgres", "CREATE DATABASE bench OWNER sluice_scram");
    let toml = crate::harness::config_for(
        cluster,
        "",
        "[databases.bench]\nprimary = \"127.0.0.1:PORT\"\n",
    )
    .replace("PORT", &cluster.primary.port.to_string());
    let s = Sluice::start(&toml).await;
    run_tool("pgbench", &s, &["-i", "-q", "-s", "1", "bench"]).await;
    for mode in ["simple", "extended", "prepared"] {
        let out = run_tool(
            "pgbench",
            &s,
            &["-M", mode, "-c", "4", "-j", "2", "-t", "100", "bench"],
        )
        .await;
        assert!(
            out.contains("number of transactions actually processed: 400/400"),
            "{mode}:\n{out}"
        );
        assert!(
            out.contains("number of failed transactions: 0 "),
            "{mode}:\n{out}"
        );
    }
}
