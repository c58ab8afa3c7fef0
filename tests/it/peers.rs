//! Several sluice instances behind one load balancer: a CancelRequest that
//! lands on the wrong instance reaches the query anyway, through the peer
//! its key names (or every address of `peers_dns`), and never loops.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice::session::peer_cancel::{MAX_FORWARDS_PER_SECOND, peer_of, with_peer};

use crate::cancel::raw_cancel;
use crate::harness::cluster::free_port;
use crate::harness::run::Process;
use crate::harness::wire::query;
use crate::harness::{Cluster, SCRAM_USER, Sluice, Wire, config_for, wait_until};

/// An instance with `peer_id` on `port`, its [general] `more`, and `peers`
/// as (id, port) pairs.
async fn instance(peer_id: u16, port: u16, more: &str, peers: &[(u16, u16)]) -> Sluice {
    let peers: String = peers
        .iter()
        .map(|(id, p)| format!("{id} = \"127.0.0.1:{p}\"\n"))
        .collect();
    let toml = config_for(
        Cluster::shared(),
        &format!("pool_mode = \"transaction\"\npeer_id = {peer_id}\n{more}"),
        &format!("[peers]\n{peers}"),
    );
    Sluice::start_on(&toml, port).await
}

/// A client of sluice on `port` that has started `SELECT pg_sleep(30)`:
/// its connection and its cancel key.
async fn sleeping_client(port: u16) -> (Wire, i32, i32) {
    let (mut w, msgs) = Wire::login(port, SCRAM_USER.0, SCRAM_USER.1, "app", &[]).await;
    let (pid, secret) = key_of(&msgs);
    w.send(&query("SELECT pg_sleep(30)")).await;
    let watcher = direct_app(port).await;
    wait_until(10, "pg_sleep to start", || async {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
                &[],
            )
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) >= 1)
    })
    .await;
    (w, pid, secret)
}

fn key_of(login: &[crate::harness::wire::Msg]) -> (i32, i32) {
    let key = &login.iter().find(|m| m.tag == b'K').expect("key").body;
    let pid = i32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let secret = i32::from_be_bytes([key[4], key[5], key[6], key[7]]);
    (pid, secret)
}

async fn direct_app(port: u16) -> tokio_postgres::Client {
    let url = format!(
        "host=127.0.0.1 port={port} user={} password={} dbname=app",
        SCRAM_USER.0, SCRAM_USER.1
    );
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("through sluice");
    tokio::spawn(conn);
    c
}

/// The client's query ended with 57014 (canceled) soon after.
async fn was_cancelled(w: &mut Wire, started: Instant) {
    let reply = tokio::time::timeout(Duration::from_secs(20), w.recv_until(b'Z'))
        .await
        .expect("the query ends");
    let err = reply.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(err.field(b'C').as_deref(), Some("57014"), "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

fn counter(s: &Sluice, pick: fn(&sluice::session::peer_cancel::Forwarding) -> u64) -> u64 {
    pick(&s.shared.as_ref().expect("shared").cancels.forwarding)
}

fn forwarded(s: &Sluice) -> u64 {
    counter(s, |f| f.forwarded.load(Ordering::Relaxed))
}

fn from_peers(s: &Sluice) -> u64 {
    counter(s, |f| f.from_peers.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_the_other_instance_reaches_the_query() {
    let (pa, pb) = (free_port(), free_port());
    let peers = [(1, pa), (2, pb)];
    let a = instance(1, pa, "", &peers).await;
    let b = instance(2, pb, "", &peers).await;
    let (mut w, pid, secret) = sleeping_client(a.port).await;
    assert_eq!(peer_of(secret), 1, "A's keys name A");
    let started = Instant::now();
    raw_cancel(b.port, pid, secret).await;
    was_cancelled(&mut w, started).await;
    assert_eq!((forwarded(&b), from_peers(&a)), (1, 1));
    assert_eq!(forwarded(&a), 0);

    // A key of no known peer, and 1,000 random keys: dropped, no error,
    // and at most the budget passed on.
    raw_cancel(b.port, 1, with_peer(5, 77)).await;
    assert_eq!(forwarded(&b), 1);
    let mut naming_a = 0;
    for _ in 0..1000 {
        let (pid, secret): (i32, i32) = (rand::random(), rand::random());
        naming_a += u64::from(peer_of(secret) == 1);
        raw_cancel(b.port, pid, secret).await;
    }
    assert!(forwarded(&b) - 1 <= naming_a, "only keys naming A go to A");
    let c = b.app().await;
    assert_eq!(
        crate::harness::sql::value(&c, "SELECT 1").await.unwrap(),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_dns_asks_every_address_once_and_nothing_loops() {
    let (pa, pb) = (free_port(), free_port());
    // A knows B as peer 3, and B knows A as peer 3: a misconfiguration
    // that would loop if a passed-on cancel were passed on again.
    let a = instance(1, pa, "", &[(3, pb)]).await;
    let b = instance(
        2,
        pb,
        &format!("peers_dns = \"localhost:{pa}\""),
        &[(3, pa)],
    )
    .await;
    raw_cancel(a.port, 1, with_peer(5, 3)).await;
    wait_until(10, "B to get A's forward", || async { from_peers(&b) == 1 }).await;
    assert_eq!(forwarded(&a), 1);
    assert_eq!(
        forwarded(&b),
        0,
        "a forwarded cancel is never forwarded again"
    );

    // DNS: a key B does not know and whose peer it has no address for goes
    // to every address the name resolves to (here: A), where it cancels.
    let (mut w, pid, secret) = sleeping_client(a.port).await;
    let started = Instant::now();
    raw_cancel(b.port, pid, secret).await;
    was_cancelled(&mut w, started).await;
    assert_eq!(forwarded(&b), 1);

    // Random keys: at most the budget a second reaches A, each once.
    let started = Instant::now();
    for _ in 0..1000 {
        let secret = with_peer(rand::random(), 9);
        raw_cancel(b.port, rand::random(), secret).await;
    }
    let seconds = started.elapsed().as_secs() + 1;
    let sent = forwarded(&b) - 1;
    assert!(
        sent <= u64::from(MAX_FORWARDS_PER_SECOND) * seconds,
        "{sent} forwards in {seconds} s"
    );
    wait_until(10, "A to get each forward", || async {
        from_peers(&a) == sent + 1
    })
    .await;
    assert_eq!(forwarded(&a), 1, "A passed nothing on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_port_with_so_reuseport_cancel_each_others_queries() {
    let (port, l1, l2) = (free_port(), free_port(), free_port());
    let peers = format!("[peers]\n1 = \"127.0.0.1:{l1}\"\n2 = \"127.0.0.1:{l2}\"\n");
    let dir = std::env::temp_dir().join(format!("sluice-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _processes: Vec<Process> = [(1, l1), (2, l2)]
        .iter()
        .map(|(id, l)| {
            let toml = config_for(
                Cluster::shared(),
                &format!(
                    "pool_mode = \"transaction\"\npeer_id = {id}\nso_reuseport = true\n\
                     peer_listen_addr = \"127.0.0.1:{l}\""
                ),
                &peers,
            )
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
            let path = dir.join(format!("reuseport-{port}-{id}.toml"));
            std::fs::write(&path, toml).unwrap();
            Process(
                std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
                    .arg("--config")
                    .arg(&path)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("sluice binary"),
            )
        })
        .collect();
    // Both processes take logins on the one port.
    let mut seen = std::collections::BTreeSet::new();
    let start = Instant::now();
    while seen.len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "logins on both processes: saw {seen:?}"
        );
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let (_w, msgs) = Wire::login(port, SCRAM_USER.0, SCRAM_USER.1, "app", &[]).await;
        seen.insert(peer_of(key_of(&msgs).1));
    }
    assert_eq!(seen, [1, 2].into());
    // A query on either, cancelled through the other's own address.
    let (mut w, pid, secret) = sleeping_client(port).await;
    let other = if peer_of(secret) == 1 { l2 } else { l1 };
    let started = Instant::now();
    raw_cancel(other, pid, secret).await;
    was_cancelled(&mut w, started).await;
}
