//! CancelRequest: reaches the right server, and nothing else.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::harness::{Cluster, Sluice, Wire};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_clients_running_query() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let c = s.app().await;
    let token = c.cancel_token();
    let started = Instant::now();
    let q = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(30)").await });
    // The query is running once the server shows it.
    let watcher = s.app().await;
    crate::harness::wait_until(10, "pg_sleep to start", || {
        let w = &watcher;
        async move {
            w.query_one("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'", &[])
                .await
                .map(|r| r.get::<_, i64>(0) == 1)
                .unwrap_or(false)
        }
    })
    .await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = q.await.unwrap().unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57014"));
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Sends a CancelRequest for (pid, secret) to sluice on `port`.
pub async fn raw_cancel(port: u16, pid: i32, secret: i32) {
    let mut w = Wire::connect(port).await;
    let mut b = 16u32.to_be_bytes().to_vec();
    b.extend_from_slice(&80_877_102u32.to_be_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&secret.to_be_bytes());
    w.send(&b).await;
    assert!(
        w.recv().await.is_none(),
        "a cancel connection gets no reply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_early_cancel_keys_harm_nobody() {
    let s = Sluice::with(Cluster::shared(), "").await;
    // A cancel before anyone logged in, and one half-sent then dropped.
    raw_cancel(s.port, 1, 2).await;
    let mut half = Wire::connect(s.port).await;
    half.send(&16u32.to_be_bytes()).await;
    half.stream.shutdown().await.unwrap();

    let (mut w, msgs) = Wire::login(
        s.port,
        crate::harness::SCRAM_USER.0,
        crate::harness::SCRAM_USER.1,
        "app",
        &[],
    )
    .await;
    let key = msgs
        .iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData")
        .body
        .clone();
    let pid = i32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let secret = i32::from_be_bytes([key[4], key[5], key[6], key[7]]);
    w.send(&crate::harness::wire::query("SELECT pg_sleep(1)"))
        .await;
    raw_cancel(s.port, pid, secret.wrapping_add(1)).await;
    raw_cancel(s.port, pid.wrapping_add(1), secret).await;
    let reply = w.recv_until(b'Z').await;
    assert!(
        reply.iter().all(|m| m.tag != b'E'),
        "query was cancelled by a wrong key: {reply:?}"
    );
    // The right key after the client left does nothing either.
    drop(w);
    raw_cancel(s.port, pid, secret).await;
    let c = s.app().await;
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}
