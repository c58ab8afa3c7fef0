//! deploy/kubernetes/ on a machine without Kubernetes, following the
//! README's Kubernetes section as far as one can: every manifest the
//! kustomization lists validates against the Kubernetes API's schemas
//! (kubernetes-validate, strict), the pooler.toml in the Secret is a valid
//! config, and sluice run on it (with this machine's addresses) answers the
//! Deployment's probes as they expect: ready, then not ready while it
//! drains for shutdown, alive throughout, within the grace period.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::cluster::free_port;
use crate::harness::run::Process;
use crate::harness::{Cluster, SCRAM_USER, wait_until};
use crate::metrics::http_get;

fn manifest(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/").to_string() + name;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `resources:` of kustomization.yaml.
fn resources() -> Vec<String> {
    manifest("kustomization.yaml")
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- ").map(str::to_string))
        .collect()
}

/// The pooler.toml the Secret carries (its `stringData` block).
fn secret_config() -> String {
    manifest("secret.yaml")
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("pooler.toml: |"))
        .skip(1)
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The number after `key: ` in a manifest.
fn number(text: &str, key: &str) -> u64 {
    let line = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{key}: "))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no {key}"));
    line.trim_matches('"').parse().expect("a number")
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    crate::harness::drivers::ensure("python");
    let listed = resources();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, on_disk, "the kustomization lists every manifest");
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.30.0"])
        .args(&listed)
        .current_dir(dir)
        .output()
        .expect("python3 -m kubernetes_validate");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        listed.len(),
        "{text}"
    );
    // A manifest with a typo fails: the check can fail.
    let bad = std::env::temp_dir().join(format!("sluice-bad-{}.yaml", std::process::id()));
    std::fs::write(
        &bad,
        manifest("pdb.yaml").replace("maxUnavailable", "maxUnavialable"),
    )
    .unwrap();
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.30.0"])
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success());
}

/// The drain fits in the grace period, after the preStop pause.
fn drain_fits_the_grace_period(deployment: &str, config: &str) {
    let grace = number(deployment, "terminationGracePeriodSeconds");
    let shutdown: u64 = config
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_timeout = \""))
        .and_then(|v| v.strip_suffix("s\""))
        .expect("shutdown_timeout in seconds")
        .parse()
        .unwrap();
    assert!(deployment.contains("command: [\"/bin/sleep\", \"5\"]"));
    assert!(
        shutdown + 5 < grace,
        "{shutdown} s + 5 s of preStop within {grace} s"
    );
}

/// The Secret's config with this machine's addresses for the cluster's,
/// written to a file.
fn local_config(config: &str, port: u16, metrics: u16) -> std::path::PathBuf {
    let cluster = Cluster::shared();
    let config = config
        .replace("0.0.0.0:6432", &format!("127.0.0.1:{port}"))
        .replace("0.0.0.0:9127", &format!("127.0.0.1:{metrics}"))
        .replace("sluice-peers:6432", &format!("localhost:{port}"))
        .replace(
            "postgres-primary:5432",
            &format!("127.0.0.1:{}", cluster.primary.port),
        )
        .replace(
            "postgres-replica:5432",
            &format!("127.0.0.1:{}", cluster.replica.port),
        )
        .replace(
            "[users.app]\npassword = \"change-me\"",
            &format!("[users.{}]\npassword = \"{}\"", SCRAM_USER.0, SCRAM_USER.1),
        );
    assert!(
        config.contains(&format!("[users.{}]", SCRAM_USER.0)),
        "{config}"
    );
    let dir = std::env::temp_dir().join(format!("sluice-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("k8s-{port}.toml"));
    std::fs::write(&path, &config).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_config_runs_and_answers_the_probes_as_the_deployment_expects() {
    let deployment = manifest("deployment.yaml");
    assert!(
        deployment.contains("readinessProbe:\n            httpGet:\n              path: /health")
    );
    assert!(deployment.contains("livenessProbe:\n            httpGet:\n              path: /live"));
    let config = secret_config();
    drain_fits_the_grace_period(&deployment, &config);
    let (port, metrics) = (free_port(), free_port());
    let path = local_config(&config, port, metrics);
    let bin = env!("CARGO_BIN_EXE_sluice");
    let check = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut sluice = Process(
        Command::new(bin)
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(20, "ready", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", metrics))
            .await
            .is_ok()
            && http_get(metrics, "/health").await.0 == 200
    })
    .await;
    assert_eq!(http_get(metrics, "/live").await.0, 200);
    // A client in a transaction: SIGTERM drains, the pod is not ready but
    // alive until the transaction ends, then the process exits.
    let url = format!(
        "host=127.0.0.1 port={port} user={} password={} dbname=app",
        SCRAM_USER.0, SCRAM_USER.1
    );
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let pid = sluice.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_until(10, "not ready while draining", || async {
        http_get(metrics, "/health").await.0 == 503
    })
    .await;
    assert_eq!(
        http_get(metrics, "/live").await.0,
        200,
        "alive while draining"
    );
    c.batch_execute("COMMIT").await.unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = sluice.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "exits once drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
