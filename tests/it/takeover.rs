//! A new sluice process takes over a running one (`--takeover`): pgbench's
//! connections carry on across three takeovers with no failed transaction
//! and no reconnect, and 1,000 idle clients keep their TCP connections.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::cluster::free_port;
use crate::harness::run::Process;
use crate::harness::wire::{message, query};
use crate::harness::{Cluster, SCRAM_USER, Wire, config_for, wait_until};

/// A config file for sluice binaries on `port` in transaction pooling,
/// with a takeover socket, for database `db` too.
fn config(port: u16, db: &str, pool: usize) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sluice-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join(format!("takeover-{port}.sock"));
    let cluster = Cluster::shared();
    let toml = config_for(
        cluster,
        &format!(
            "pool_mode = \"transaction\"\ntakeover_socket = \"{}\"\nshutdown_timeout = \"30s\"",
            socket.display()
        ),
        &format!(
            "[databases.{db}]\nprimary = \"127.0.0.1:{}\"\npool_size = {pool}\n",
            cluster.primary.port
        ),
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = dir.join(format!("takeover-{port}.toml"));
    std::fs::write(&path, toml).unwrap();
    (path, socket)
}

fn sluice(config: &PathBuf, takeover: bool) -> Process {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("--config")
        .arg(config)
        .args(["--log-level", "warn"]);
    if takeover {
        cmd.arg("--takeover");
    }
    Process(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sluice binary"),
    )
}

/// Until the process ends (the old one, once its clients moved); its status.
async fn exited(p: &mut Process, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = p.0.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < within, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a new process that takes over from `old`, and waits for the old
/// one to exit cleanly.
async fn take_over(old: &mut Process, config: &PathBuf, socket: &std::path::Path) -> Process {
    let new = sluice(config, true);
    let start = Instant::now();
    let status = exited(old, Duration::from_secs(40)).await;
    assert!(status.success(), "the old process exits 0: {status:?}");
    eprintln!("takeover: old process gone after {:?}", start.elapsed());
    wait_until(10, "the new process's takeover socket", || async {
        std::os::unix::net::UnixStream::connect(socket).is_ok()
    })
    .await;
    new
}

async fn accepting(port: u16) {
    wait_until(20, "sluice to accept clients", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_across_three_takeovers_without_a_failure_or_a_reconnect() {
    let db = "bench_takeover";
    let cluster = Cluster::shared();
    cluster.primary.psql(
        "postgres",
        &format!("CREATE DATABASE {db} OWNER {}", SCRAM_USER.0),
    );
    let port = free_port();
    let (path, socket) = config(port, db, 8);
    let mut current = sluice(&path, false);
    accepting(port).await;
    crate::tools::run_tool_at("pgbench", port, &["-i", "-q", "-s", "4", db]).await;
    let mut bench = crate::tools::tool_command(
        "pgbench",
        port,
        &["-n", "-M", "simple", "-c", "32", "-j", "2", "-T", "12", db],
    );
    bench.env("PGSSLMODE", "disable");
    let run = tokio::spawn(crate::harness::run::run_ok(bench));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        current = take_over(&mut current, &path, &socket).await;
    }
    let (out, err) = run.await.unwrap();
    let out = out + &err;
    assert!(out.contains("number of clients: 32"), "{out}");
    assert!(out.contains("number of failed transactions: 0 "), "{out}");
    assert!(
        !out.contains("aborted") && !out.contains("lost") && !out.contains("ERROR"),
        "no client lost its connection: {out}"
    );
    drop(current);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_clients_keep_their_connections_across_a_takeover() {
    let port = free_port();
    let (path, socket) = config(port, "takeover_idle", 4);
    let mut old = sluice(&path, false);
    accepting(port).await;
    let mut clients = Vec::new();
    for i in 0..1000 {
        let (mut w, _) = Wire::login(port, SCRAM_USER.0, SCRAM_USER.1, "app", &[]).await;
        // Some with a setting and a prepared statement of their own.
        if i % 10 == 0 {
            w.send(&query(&format!("SET application_name = 'c{i}'")))
                .await;
            w.recv_until(b'Z').await;
            let mut parse = message(b'P', b"s1\0SELECT $1::int + 1\0\0\0");
            parse.extend(message(b'S', b""));
            w.send(&parse).await;
            let reply = w.recv_until(b'Z').await;
            assert!(reply.iter().any(|m| m.tag == b'1'), "{reply:?}");
        }
        clients.push(w);
    }
    let _new = take_over(&mut old, &path, &socket).await;
    let mut answered = 0;
    for (i, w) in clients.iter_mut().enumerate() {
        w.send(&query("SELECT current_setting('application_name'), 1"))
            .await;
        let reply = tokio::time::timeout(Duration::from_secs(10), w.recv_until(b'Z'))
            .await
            .unwrap_or_else(|_| panic!("client {i} answered"));
        let row = reply.iter().find(|m| m.tag == b'D').expect("a row");
        if i % 10 == 0 {
            let name = format!("c{i}");
            assert!(
                row.body.windows(name.len()).any(|w| w == name.as_bytes()),
                "client {i} kept its setting"
            );
            // Its statement, prepared before the takeover, runs after it.
            let mut run = message(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x0241\0\0");
            run.extend(message(b'E', b"\0\0\0\0\0"));
            run.extend(message(b'S', b""));
            w.send(&run).await;
            let reply = w.recv_until(b'Z').await;
            let row = reply.iter().find(|m| m.tag == b'D').expect("a row");
            assert!(row.body.ends_with(b"42"), "client {i}: {reply:?}");
        }
        answered += 1;
    }
    assert_eq!(answered, 1000);
}
