//! /metrics and /health over HTTP, read while a pool is saturated.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{AppSetting, Cluster, SCRAM_USER, Sluice, config_for, wait_until};

pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_saturated_pool() {
    let toml = config_for(
        Cluster::shared(),
        "pool_mode = \"transaction\"\nquery_wait_timeout = \"20s\"",
        "",
    )
    .app_setting("pool_size = 1\nroute = \"primary\"");
    let s = Sluice::start(&toml).await;
    let shared = s.shared.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(sluice::metrics_http::serve(listener, shared));

    let holder = s.app().await;
    let waiter = s.app().await;
    holder.batch_execute("BEGIN").await.unwrap();
    let waiting = tokio::spawn(async move { waiter.simple_query("SELECT 1").await.map(|_| ()) });
    let labels = format!(
        "database=\"app\",role=\"primary\",user=\"{}\"",
        SCRAM_USER.0
    );
    wait_until(10, "a waiting client in the metrics", || {
        let labels = labels.clone();
        async move {
            http_get(port, "/metrics")
                .await
                .1
                .contains(&format!("sluice_clients_waiting{{{labels}}} 1"))
        }
    })
    .await;
    let (status, body) = http_get(port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("sluice_pool_saturation{{{labels}}} 2")),
        "{body}"
    );
    assert!(
        body.contains(&format!("sluice_pool_size{{{labels}}} 1")),
        "{body}"
    );
    assert!(
        body.contains("# TYPE sluice_prepared_reprepares_total counter"),
        "{body}"
    );
    assert!(
        body.contains(&format!("sluice_pool_maxwait_seconds{{{labels}}}")),
        "{body}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    waiting.await.unwrap().unwrap();
    assert!(holder.simple_query("SELEC 1").await.is_err());
    let (_, body) = http_get(port, "/metrics").await;
    let value = |name: &str| -> f64 {
        let line = format!("{name}{{{labels}}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
            .parse()
            .unwrap()
    };
    // The waiter's wait is in the histogram, and above its smallest bucket.
    assert!(value("sluice_client_wait_seconds_count") >= 2.0, "{body}");
    assert!(value("sluice_client_wait_seconds_sum") > 0.0, "{body}");
    assert!(value("sluice_queries_total") >= 3.0, "{body}");
    assert!(value("sluice_transactions_total") >= 2.0, "{body}");
    assert!(value("sluice_received_bytes_total") > 0.0, "{body}");
    assert!(value("sluice_sent_bytes_total") > 0.0, "{body}");
    assert!(
        value("sluice_query_duration_seconds_count") >= 3.0,
        "{body}"
    );
    assert!(
        body.contains("sluice_transaction_duration_seconds_bucket{"),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "sluice_server_errors_total{{class=\"42\",database=\"app\",role=\"primary\",user=\"{}\"}} 1",
            SCRAM_USER.0
        )),
        "{body}"
    );

    assert_eq!(http_get(port, "/health").await.0, 200);
    assert_eq!(http_get(port, "/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_are_told_once() {
    use crate::harness::wire::query;
    let toml = config_for(
        Cluster::shared(),
        "pool_mode = \"transaction\"\nquery_wait_timeout = \"20s\"\nquery_wait_notify = \"200ms\"",
        "",
    )
    .app_setting("pool_size = 1\nroute = \"primary\"");
    let s = Sluice::start(&toml).await;
    let holder = s.app().await;
    let (mut w, _) =
        crate::harness::Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, "app", &[]).await;
    holder.batch_execute("BEGIN").await.unwrap();
    w.send(&query("SELECT 1")).await;
    let notice = w.recv().await.expect("a notice while waiting");
    assert_eq!(notice.tag, b'N');
    assert!(notice.field(b'M').unwrap_or_default().contains("saturated"));
    holder.batch_execute("COMMIT").await.unwrap();
    let rest = w.recv_until(b'Z').await;
    assert!(rest.iter().all(|m| m.tag != b'N'), "told once: {rest:?}");
    assert!(rest.iter().any(|m| m.tag == b'D'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbench_run_over_a_small_pool_shows_waits_in_the_metrics() {
    let s = crate::tools::pgbench_db("bench_metrics", "pool_mode = \"transaction\"", 1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(sluice::metrics_http::serve(
        listener,
        s.shared.clone().unwrap(),
    ));
    let labels = format!(
        "database=\"bench_metrics\",role=\"primary\",user=\"{}\"",
        SCRAM_USER.0
    );
    let run = {
        let port = s.port;
        tokio::spawn(async move {
            let args = ["-c", "8", "-j", "2", "-T", "4", "-n", "bench_metrics"];
            crate::tools::run_tool_at("pgbench", port, &args).await
        })
    };
    // While pgbench runs, clients queue for the one server.
    wait_until(20, "waiting clients during pgbench", || {
        let labels = labels.clone();
        async move {
            let body = http_get(port, "/metrics").await.1;
            body.lines()
                .filter_map(|l| l.strip_prefix(&format!("sluice_clients_waiting{{{labels}}} ")))
                .any(|v| v.parse::<u64>().unwrap_or(0) > 0)
        }
    })
    .await;
    let out = run.await.unwrap();
    assert!(out.contains("number of failed transactions: 0 "), "{out}");
    let body = http_get(port, "/metrics").await.1;
    let count: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("sluice_client_wait_seconds_count{{{labels}}} ")))
        .expect("wait histogram")
        .parse()
        .unwrap();
    assert!(count > 100.0, "every checkout's wait is observed: {count}");
    // Some waits took longer than the smallest bucket (0.1 ms).
    let fast: f64 = body
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "sluice_client_wait_seconds_bucket{{{},le=\"0.0001\"}} ",
                labels
            ))
        })
        .expect("smallest bucket")
        .parse()
        .unwrap();
    assert!(
        fast < count,
        "some clients waited: {fast} of {count} under 0.1 ms"
    );
}
