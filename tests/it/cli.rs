//! The real binary: --version, check-config, and serving until SIGTERM.

use std::process::{Command, Stdio};

use crate::harness::{Cluster, DB, SCRAM_USER, config_for, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    // The cluster reaper removes this directory when the test process exits.
    let dir = std::env::temp_dir().join(format!("sluice-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sluice "));
}

#[test]
fn check_config_accepts_the_example_and_lists_every_problem() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/pooler.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = temp_file(
        "bad.toml",
        "[general]\nquery_wait_timeout = \"soon\"\nmax_packet_size = \"huge\"\n[databases.app]\nprimary = \"nowhere\"\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "general.query_wait_timeout",
        "general.max_packet_size",
        "databases.app.primary",
    ] {
        assert!(err.contains(key), "{key} not reported:\n{err}");
    }
    let unknown = temp_file("unknown.toml", "[general]\nlisten_adress = \"x\"\n");
    let out = Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(&unknown)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_adress"), "{err}");
    assert!(err.contains("did you mean `listen_addr`?"), "{err}");
}

type SharedLog = std::sync::Arc<std::sync::Mutex<String>>;

/// Collects a child's stderr as it is written.
fn collect_log(stderr: std::process::ChildStderr) -> (SharedLog, std::thread::JoinHandle<()>) {
    let log = SharedLog::default();
    let sink = log.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    (log, reader)
}

/// The default, one runtime thread (tokio's current-thread scheduler): a
/// cancel request must be served while that one thread also relays the
/// query it cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_clients_and_exits_cleanly_on_sigterm() {
    serve_until_sigterm("").await;
}

/// The same on a thread per CPU (the multi-thread scheduler).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_on_a_thread_per_cpu_serves_clients_and_exits_cleanly() {
    serve_until_sigterm("worker_threads = 0").await;
}

async fn serve_until_sigterm(general: &str) {
    let port = crate::harness::cluster::free_port();
    let toml = config_for(Cluster::shared(), general, "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = temp_file(&format!("serve-{port}.toml"), &toml);
    let pidfile = path.with_extension("pid");
    let mut child = Command::new(BIN)
        .args(["--config"])
        .arg(&path)
        .arg("--pidfile")
        .arg(&pidfile)
        .args(["--log-format", "json", "--log-level", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (log, reader) = collect_log(child.stderr.take().unwrap());
    let logged = |what: &'static str| {
        let log = log.clone();
        move || {
            let log = log.clone();
            async move { log.lock().unwrap().contains(what) }
        }
    };
    let url = format!(
        "host=127.0.0.1 port={port} user={} password={} dbname={DB}",
        SCRAM_USER.0, SCRAM_USER.1
    );
    wait_until(20, "the binary to accept clients", || async {
        tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .is_ok()
    })
    .await;
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        c.query_one("SELECT 5", &[]).await.unwrap().get::<_, i32>(0),
        5
    );
    cancel_a_running_query(&url, &c, port).await;
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        child.id().to_string(),
        "--pidfile holds the process id"
    );

    // SIGHUP with a broken file keeps the running config; a good one applies.
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };
    std::fs::write(&path, "[general]\nnot_a_key = 1\n").unwrap();
    assert!(hup().success());
    wait_until(
        10,
        "the bad reload to be reported",
        logged("keeping the running config"),
    )
    .await;
    std::fs::write(
        &path,
        toml.replace("[general]", "[general]\ndefault_pool_size = 7"),
    )
    .unwrap();
    assert!(hup().success());
    wait_until(
        10,
        "the reload to be applied",
        logged("configuration reloaded"),
    )
    .await;
    assert_eq!(
        c.query_one("SELECT 6", &[]).await.unwrap().get::<_, i32>(0),
        6
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(!pidfile.exists(), "the pidfile goes at exit");
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(
        log.contains("\"level\":\"INFO\""),
        "json logs expected:\n{log}"
    );
    assert!(
        !log.contains(SCRAM_USER.1),
        "the password must never be logged"
    );
}

/// Cancels a running query through the binary; `watcher` sees it run.
async fn cancel_a_running_query(url: &str, watcher: &tokio_postgres::Client, port: u16) {
    let (sleeper, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let token = sleeper.cancel_token();
    // Its own text: other tests sleep on the same cluster.
    let sleep = format!("SELECT pg_sleep(30) /* cli {port} */");
    let text = sleep.clone();
    let q = tokio::spawn(async move { sleeper.batch_execute(&text).await });
    wait_until(10, "pg_sleep to start", || {
        let (c, sleep) = (watcher, &sleep);
        async move {
            c.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                &[sleep],
            )
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == 1)
        }
    })
    .await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = q.await.unwrap().unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57014"));
}

#[test]
fn a_bad_log_level_or_a_taken_address_says_what_is_wrong_without_colour() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/pooler.toml");
    let out = Command::new(BIN)
        .args(["--config", example, "--log-level", "verbose"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown --log-level \"verbose\""), "{err}");
    // A filter is still a level.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let toml = std::fs::read_to_string(example)
        .unwrap()
        .replace("127.0.0.1:6432", &format!("127.0.0.1:{port}"));
    let path = temp_file(&format!("taken-{port}.toml"), &toml);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["--log-level", "sluice=debug,warn"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("listen_addr 127.0.0.1:{port}")) && err.contains("in use"),
        "the address is named: {err}"
    );
    assert!(
        !err.contains('\x1b'),
        "no colour codes when stderr is not a terminal: {err:?}"
    );
}
