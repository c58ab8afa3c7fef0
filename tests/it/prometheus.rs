//! The deploy/ files against real tools: promtool checks and unit-tests the
//! alert rules, and a real Prometheus server scrapes sluice.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::harness::cluster::free_port;
use crate::harness::{Cluster, Sluice, config_for, wait_until};
use crate::metrics::http_get;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian's prometheus package; scripts/prereqs.sh installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = deploy("prometheus");
    let out = promtool(&["check", "rules", "sluice-alerts.yml"], &dir);
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    promtool(&["test", "rules", "sluice-alerts.test.yml"], &dir);
}

/// Every `sluice_*` metric name the dashboard and the alert rules use.
fn names_used() -> Vec<String> {
    let mut text = std::fs::read_to_string(deploy("grafana/sluice-dashboard.json")).unwrap();
    text += &std::fs::read_to_string(deploy("prometheus/sluice-alerts.yml")).unwrap();
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("sluice_"))
        .map(|w| w.trim_end_matches("_bucket").to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `http_get`, or None while nothing listens on `port`.
async fn try_get(port: u16, path: &str) -> Option<(u16, String)> {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    Some(http_get(port, path).await)
}

/// Stops and removes the Prometheus server when the test ends.
struct Prometheus(Child, PathBuf);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_every_metric_the_dashboard_uses() {
    let metrics_port = free_port();
    // A result cache too, for the cache panels and alerts.
    let cluster = Cluster::shared();
    cluster.primary.psql(
        crate::harness::DB,
        "CREATE TABLE IF NOT EXISTS prom_t (id int PRIMARY KEY); \
         DROP PUBLICATION IF EXISTS prom_pub; CREATE PUBLICATION prom_pub FOR TABLE prom_t",
    );
    let toml = config_for(
        cluster,
        &format!(
            "pool_mode = \"transaction\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n\
             monitor_user = \"postgres\"\ncache_publication = \"prom_pub\""
        ),
        &format!(
            "[users.postgres]\npassword = \"unused\"\n[[databases.{}.cache]]\n",
            crate::harness::DB
        ),
    );
    let s = Sluice::start(&toml).await;
    let shared = s.shared.clone().unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", metrics_port))
        .await
        .unwrap();
    tokio::spawn(sluice::metrics_http::serve(listener, shared));
    let app = s.app().await;
    app.simple_query("SELECT 1").await.unwrap();
    assert!(app.simple_query("SELEC 1").await.is_err());

    // sluice exports every name the dashboard and the rules query.
    wait_until(
        20,
        "replica and cache metrics (the monitor's first samples, the stream up)",
        || async move {
            let body = http_get(metrics_port, "/metrics").await.1;
            body.contains("sluice_replica_in_rotation{")
                && body.contains("sluice_cache_stream_up{database=\"app\"} 1")
                && body.contains("sluice_cache_lag_seconds{")
        },
    )
    .await;
    let (_, body) = http_get(metrics_port, "/metrics").await;
    for name in names_used() {
        // max_replica_lag is a duration here, so only its seconds gauge exists.
        let name = name.replace("lag_bound_bytes", "lag_bound_seconds");
        assert!(
            body.contains(&format!("\n{name}")),
            "{name} is not exported:\n{body}"
        );
    }

    let dir = std::env::temp_dir().join(format!("sluice-prom-{metrics_port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [\"127.0.0.1:{metrics_port}\"]\n"
        ),
    )
    .unwrap();
    let web = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian's prometheus package)");
    let _prometheus = Prometheus(child, dir);
    wait_until(60, "Prometheus to have scraped sluice", || async move {
        let Some((status, body)) = try_get(
            web,
            "/api/v1/query?query=sluice_queries_total%7Bdatabase%3D%22app%22%7D",
        )
        .await
        else {
            return false;
        };
        status == 200
            && body.contains("\"status\":\"success\"")
            && body.contains("sluice_queries_total")
    })
    .await;
    let (_, up) = http_get(web, "/api/v1/query?query=up%7Bjob%3D%22sluice%22%7D").await;
    assert!(up.contains("\"value\":[") && up.contains(",\"1\"]"), "{up}");
}
