//! Fault injection against real servers: PostgreSQL restarted or
//! unreachable, a replica promoted, a stalled network, clients vanishing in
//! every phase. Each case checks what the client sees and that the pool is
//! healthy afterwards, with no dirty server reused and no committed write lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::harness::wire::{message, query};
use crate::harness::{AppSetting, Cluster, DB, SCRAM_USER, Sluice, Wire, config_for, wait_until};

use crate::harness::sql::value;

/// Servers of the app pool checked out right now.
fn in_use(s: &Sluice) -> usize {
    s.shared.as_ref().expect("shared").pools.in_use(Some(DB))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_cost_only_the_requests_in_flight() {
    let cluster = Cluster::start();
    cluster.primary.psql(DB, "CREATE TABLE kept (id int)");
    // The test clusters run with synchronous_commit off, which lets a crash
    // lose acknowledged commits by design; this test needs them durable.
    cluster
        .primary
        .psql("postgres", "ALTER SYSTEM SET synchronous_commit = on");
    cluster.primary.psql("postgres", "SELECT pg_reload_conf()");
    let toml = config_for(
        &cluster,
        "pool_mode = \"transaction\"\nserver_connect_timeout = \"5s\"",
        "",
    )
    .app_setting("pool_size = 4\nroute = \"primary\"");
    let s = Sluice::start(&toml).await;
    let c = s.app().await;
    let mut committed = 0;
    for (round, mode) in ["fast", "immediate"].iter().enumerate() {
        for i in 0..20 {
            c.simple_query(&format!("INSERT INTO kept VALUES ({round}{i:02})"))
                .await
                .unwrap();
            committed += 1;
        }
        cluster.primary.restart(mode);
        // The pooled servers died with PostgreSQL; the same client carries
        // on (at most the first request after the restart may fail).
        let mut failures = 0;
        for i in 0..20 {
            match c
                .simple_query(&format!("INSERT INTO kept VALUES ({round}{:02})", 50 + i))
                .await
            {
                Ok(_) => committed += 1,
                Err(e) => {
                    failures += 1;
                    assert!(e.as_db_error().is_some() || !c.is_closed(), "{e}");
                }
            }
        }
        assert!(failures <= 1, "{failures} failures after a {mode} restart");
        wait_until(10, "servers back in the pool", || async { in_use(&s) == 0 }).await;
    }
    let n: i64 = value(&c, "SELECT count(*) FROM kept")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        n, committed,
        "every acknowledged insert survived both restarts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_primary_fails_fast_and_recovers_without_a_restart() {
    let cluster = Cluster::start();
    let toml = config_for(
        &cluster,
        "pool_mode = \"transaction\"\nserver_connect_timeout = \"2s\"",
        "",
    )
    .app_setting("pool_size = 2\nroute = \"primary\"");
    let s = Sluice::start(&toml).await;
    let c = s.app().await;
    value(&c, "SELECT 1").await.unwrap();
    cluster.primary.stop();
    let down_since = Instant::now();
    let mut errors = 0;
    while down_since.elapsed() < Duration::from_secs(10) {
        let started = Instant::now();
        let r = c.simple_query("SELECT 1").await;
        if r.is_err() {
            errors += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a request waited {:?} with server_connect_timeout = 2s",
            started.elapsed()
        );
        if c.is_closed() {
            break;
        }
    }
    assert!(errors > 0, "requests failed while the primary was down");
    cluster.primary.start_again();
    wait_until(30, "a new client to be served again", || async {
        match s.connect(SCRAM_USER.0, SCRAM_USER.1, DB).await {
            Ok(c) => value(&c, "SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_leaves_rotation() {
    let cluster = Cluster::start();
    let toml = config_for(&cluster, "pool_mode = \"transaction\"", "").app_setting("pool_size = 2");
    let s = Sluice::start(&toml).await;
    let c = s.app().await;
    let replica = cluster.replica.port.to_string();
    let primary = cluster.primary.port.to_string();
    wait_until(20, "reads on the replica", || async {
        value(&c, "SELECT inet_server_port()")
            .await
            .is_ok_and(|p| p == replica)
    })
    .await;
    cluster.replica.promote();
    // It accepts writes now: it is not what the config says, so no reads go there.
    wait_until(20, "reads back on the primary", || async {
        value(&c, "SELECT inet_server_port()")
            .await
            .is_ok_and(|p| p == primary)
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            value(&c, "SELECT inet_server_port()").await.unwrap(),
            primary
        );
    }
}

/// A TCP proxy to `target` that stops forwarding while `stalled` is set.
async fn stalling_proxy(target: u16, stalled: Arc<AtomicBool>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let stalled = stalled.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let a = pump(cr, sw, stalled.clone());
                let b = pump(sr, cw, stalled);
                let _ = tokio::join!(a, b);
            });
        }
    });
    port
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_times_out_and_is_discarded() {
    let cluster = Cluster::shared();
    let stalled = Arc::new(AtomicBool::new(false));
    let proxy = stalling_proxy(cluster.primary.port, stalled.clone()).await;
    let toml = config_for(
        cluster,
        "pool_mode = \"transaction\"\nquery_timeout = \"1s\"",
        "",
    )
    .replace(
        &format!("primary = \"127.0.0.1:{}\"\nreplicas", cluster.primary.port),
        &format!("primary = \"127.0.0.1:{proxy}\"\nreplicas"),
    )
    .app_setting("pool_size = 1\nroute = \"primary\"");
    let s = Sluice::start(&toml).await;
    let c = s.app().await;
    let pid = value(&c, "SELECT pg_backend_pid()").await.unwrap();
    stalled.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.as_db_error().is_some_and(|d| d.code().code() == "57014") || c.is_closed(),
        "{e}"
    );
    stalled.store(false, Ordering::Relaxed);
    let c = s.app().await;
    let new_pid = value(&c, "SELECT pg_backend_pid()").await.unwrap();
    assert_ne!(new_pid, pid, "the stalled server was discarded");
}

/// One client that logs in, starts something, and vanishes without a word.
async fn vanish(port: u16, how: usize) {
    if how == 0 {
        let mut w = Wire::connect(port).await;
        // During authentication.
        w.send(&crate::harness::wire::startup_packet(&[
            ("user", SCRAM_USER.0),
            ("database", DB),
        ]))
        .await;
        let _ = w.recv().await;
        return;
    }
    let (mut w, _) = Wire::login(port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
    match how {
        1 => {
            w.send(&query("BEGIN; INSERT INTO vanished VALUES (1)"))
                .await;
            w.recv_until(b'Z').await;
        }
        2 => {
            w.send(&query("COPY vanished FROM STDIN")).await;
            let _ = w.recv().await; // CopyInResponse
            w.send(&message(b'd', b"7\n")).await;
        }
        _ => {
            // An extended batch without its Sync.
            let mut parse = b"\0INSERT INTO vanished VALUES (2)\0\0\0".to_vec();
            w.send(&message(b'P', &parse)).await;
            parse.clear();
            w.send(&message(b'B', b"\0\0\0\0\0\0\0\0")).await;
            w.send(&message(b'E', b"\0\0\0\0\0")).await;
            w.send(&message(b'H', b"")).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_vanishing_clients_leave_the_pool_as_it_was() {
    let cluster = Cluster::shared();
    cluster
        .primary
        .psql(DB, "CREATE TABLE IF NOT EXISTS vanished (id int)");
    let toml = config_for(
        cluster,
        "pool_mode = \"transaction\"\nauth_type = \"trust\"",
        "",
    )
    .app_setting("pool_size = 4\nroute = \"primary\"");
    let s = Sluice::start(&toml).await;
    let port = s.port;
    let fds_before = open_fds();
    let mut tasks = Vec::new();
    for t in 0..4 {
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                vanish(port, (t + i) % 4).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_until(30, "every server back in the pool", || async {
        in_use(&s) == 0
    })
    .await;
    let shared = s.shared.as_ref().unwrap();
    wait_until(30, "every client gone", || async {
        shared.registry.all().is_empty()
    })
    .await;
    let sizes: Vec<usize> = shared
        .pools
        .of(Some(DB))
        .iter()
        .map(|(_, p)| p.status().size)
        .collect();
    assert!(sizes.iter().all(|n| *n <= 4), "{sizes:?}");
    // Nothing was left open on the servers, and nothing abandoned committed.
    let c = s.app().await;
    let open = value(
        &c,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND state LIKE 'idle in transaction%'",
    )
    .await
    .unwrap();
    assert_eq!(open, "0");
    assert_eq!(
        value(&c, "SELECT count(*) FROM vanished").await.unwrap(),
        "0"
    );
    drop(c);
    // Descriptors: back to where they were, give or take the pool's servers.
    wait_until(30, "descriptors back to baseline", || async {
        open_fds() <= fds_before + 4 + 2
    })
    .await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_transaction_loses_only_that_transaction() {
    let cluster = Cluster::shared();
    cluster
        .primary
        .psql(DB, "CREATE TABLE IF NOT EXISTS killed_txn (id int)");
    let toml = config_for(cluster, "pool_mode = \"transaction\"", "")
        .app_setting("pool_size = 2\nroute = \"primary\"");
    let s = Sluice::start(&toml).await;
    let c = s.app().await;
    c.simple_query("INSERT INTO killed_txn VALUES (1)")
        .await
        .unwrap();
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("INSERT INTO killed_txn VALUES (2)")
        .await
        .unwrap();
    let pid = value(&c, "SELECT pg_backend_pid()").await.unwrap();
    let admin = s.app().await;
    value(&admin, &format!("SELECT pg_terminate_backend({pid})"))
        .await
        .unwrap();
    // The client learns its transaction is gone (57P01 or a closed connection).
    let e = c
        .simple_query("INSERT INTO killed_txn VALUES (3)")
        .await
        .unwrap_err();
    assert!(
        e.as_db_error().is_some_and(|d| d.code().code() == "57P01") || c.is_closed(),
        "{e}"
    );
    wait_until(10, "the pool to be idle", || async { in_use(&s) == 0 }).await;
    let fresh = s.app().await;
    assert_eq!(
        value(
            &fresh,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM killed_txn"
        )
        .await
        .unwrap(),
        "1",
        "the committed row stays, the killed transaction's rows are gone"
    );
}

/// The open-files limit of this process (both ends of every test
/// connection live here).
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_clients_share_twenty_servers_without_errors() {
    // 5,000 clients need 10,000 descriptors in this process; fewer when the
    // limit is lower (the count is printed).
    let clients = 5000.min(open_files_limit().saturating_sub(1000) / 2);
    let toml = config_for(
        Cluster::shared(),
        "pool_mode = \"transaction\"\nauth_type = \"trust\"\nmax_client_conn = 6000",
        "",
    )
    .app_setting("pool_size = 20\nroute = \"primary\"");
    let s = Sluice::start(&toml).await;
    let before = rss_kib();
    let port = s.port;
    let connected = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let connected = connected.clone();
        tasks.push(tokio::spawn(async move {
            let (mut w, _) = Wire::login(port, SCRAM_USER.0, "", DB, &[]).await;
            connected.wait().await;
            for _ in 0..3 {
                w.send(&query("SELECT 1")).await;
                let reply = w.recv_until(b'Z').await;
                if let Some(e) = reply.iter().find(|m| m.tag == b'E') {
                    return Err(e.field(b'M').unwrap_or_default());
                }
            }
            Ok(w)
        }));
    }
    connected.wait().await;
    let with_clients = rss_kib();
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap().expect("no errors"));
    }
    let shared = s.shared.as_ref().unwrap();
    let servers: usize = shared
        .pools
        .of(Some(DB))
        .iter()
        .map(|(_, p)| p.status().size)
        .sum();
    assert!(servers <= 20, "{servers} servers for a pool of 20");
    assert_eq!(shared.registry.all().len(), clients);
    eprintln!(
        "{clients} clients over 20 servers: test process RSS {before} KiB before, {with_clients} KiB with every client connected (both ends of each connection live in this process)"
    );
    drop(held);
}
