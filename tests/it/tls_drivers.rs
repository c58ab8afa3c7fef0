//! Real drivers over TLS: no reply is lost on its way through sluice's TLS
//! on either side, under concurrency, in both pool modes; cancel requests
//! sent over TLS (libpq 17) end cleanly.

use crate::harness::certs::certs;
use crate::harness::drivers::driver;
use crate::harness::{Cluster, DB, SCRAM_USER, Sluice};

fn client_tls(mode: &str) -> String {
    let c = certs();
    format!(
        "pool_mode = \"{mode}\"\nclient_tls_mode = \"require\"\nclient_tls_cert = \"{}\"\nclient_tls_key = \"{}\"",
        c.cert.display(),
        c.key.display()
    )
}

fn dsn(s: &Sluice, sslmode: &str) -> String {
    format!(
        "{} sslmode={sslmode}",
        s.url(SCRAM_USER.0, SCRAM_USER.1, DB)
    )
}

/// tests/clients/tls_reply_lost.py (shared/repro's script): 8 threads,
/// each connecting, writing, reading row by row and copying out, over a
/// pool of 4; it fails when no thread makes progress for 12 s.
async fn no_reply_lost(general: &str, sslmode: &str, prefix: &str) {
    let toml = crate::harness::config_for(Cluster::shared(), general, "")
        .replace("replicas = [", "pool_size = 4\nreplicas = [");
    let s = Sluice::start(&toml).await;
    let args = [dsn(&s, sslmode), "40".into(), "8".into(), prefix.into()];
    driver("python", "python3", "tls_reply_lost.py", &args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_is_lost_to_tls_clients_in_transaction_pooling() {
    no_reply_lost(&client_tls("transaction"), "require", "tls_txn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_is_lost_to_tls_clients_in_session_pooling() {
    no_reply_lost(&client_tls("session"), "require", "tls_sess").await;
}

#[tokio::test]
async fn no_reply_is_lost_to_tls_clients_on_the_current_thread_runtime() {
    no_reply_lost(&client_tls("transaction"), "require", "tls_ct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_is_lost_over_server_tls() {
    let general = "pool_mode = \"transaction\"\nserver_tls_mode = \"require\"";
    no_reply_lost(general, "disable", "tls_srv").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_cancels_over_tls_without_a_tls_error() {
    let s = Sluice::with(Cluster::shared(), &client_tls("transaction")).await;
    driver(
        "python",
        "python3",
        "psycopg_tls_cancel.py",
        &[dsn(&s, "require")],
    )
    .await;
}
