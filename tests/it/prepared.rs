//! Prepared statements in transaction pooling: they follow each client
//! across servers, and the client sees exactly what a direct connection
//! would send.

use crate::harness::drivers::driver;
use crate::harness::wire::{Msg, message, query};
use crate::harness::{Cluster, DB, SCRAM_USER, Sluice, Wire};

async fn pooled(pool: usize, general: &str) -> Sluice {
    crate::harness::pooled("transaction", pool, general).await
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = format!("{name}\0{sql}\0").into_bytes();
    b.extend_from_slice(&[0, 0]);
    message(b'P', &b)
}

fn bind(stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = format!("\0{stmt}\0").into_bytes();
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&[0, 0]);
    message(b'B', &b)
}

fn describe_stmt(name: &str) -> Vec<u8> {
    message(b'D', format!("S{name}\0").as_bytes())
}

fn close_stmt(name: &str) -> Vec<u8> {
    message(b'C', format!("S{name}\0").as_bytes())
}

fn execute() -> Vec<u8> {
    message(b'E', b"\0\0\0\0\0")
}

fn sync() -> Vec<u8> {
    message(b'S', b"")
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

fn datarow_text(m: &Msg) -> String {
    // DataRow: int16 count, then int32 length + bytes for the first column.
    String::from_utf8_lossy(&m.body[6..]).to_string()
}

async fn login(s: &Sluice) -> Wire {
    Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, DB, &[])
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_replies_with_twenty_clients_over_two_servers() {
    let s = pooled(2, "").await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(login(&s).await);
    }
    // One server is busy while statements are prepared, so they exist on
    // the other only.
    let holder = s.app().await;
    holder.batch_execute("BEGIN").await.unwrap();
    // Every client prepares "s1" and describes it in one batch...
    for (i, w) in clients.iter_mut().enumerate() {
        let sql = format!("SELECT $1::int + {}", i % 3);
        w.send(&[parse("s1", &sql), describe_stmt("s1"), sync()].concat())
            .await;
        assert_eq!(tags(&w.recv_until(b'Z').await), "1tTZ", "client {i}");
    }
    holder.batch_execute("COMMIT").await.unwrap();
    // ...and executes it in later batches, concurrently, on whichever
    // server each lands on.
    let mut tasks = Vec::new();
    for (i, mut w) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for round in 0..5 {
                w.send(&[bind("s1", &["40"]), execute(), sync()].concat())
                    .await;
                let r = w.recv_until(b'Z').await;
                assert_eq!(tags(&r), "2DCZ", "client {i} round {round}: {r:?}");
                assert_eq!(datarow_text(&r[1]), (40 + i % 3).to_string());
            }
            w
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // A Parse that another client's statement already covers is answered
    // with ParseComplete all the same; Close and re-Parse with new text works.
    let w = &mut clients[0];
    w.send(
        &[
            close_stmt("s1"),
            parse("s1", "SELECT $1::int * 10"),
            bind("s1", &["4"]),
            execute(),
            sync(),
        ]
        .concat(),
    )
    .await;
    let r = w.recv_until(b'Z').await;
    assert_eq!(tags(&r), "312DCZ");
    assert_eq!(datarow_text(&r[3]), "40");
    let stats = s.shared.as_ref().unwrap().stats.clone();
    assert!(
        stats.reprepares_total() > 0,
        "statements were prepared again on other servers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_match_postgres() {
    let s = pooled(2, "").await;
    let mut w = login(&s).await;
    // Bind to a statement never prepared: 26000, as PostgreSQL says.
    w.send(&[bind("nope", &[]), execute(), sync()].concat())
        .await;
    let r = w.recv_until(b'Z').await;
    assert_eq!(tags(&r), "EZ");
    assert_eq!(r[0].field(b'C').as_deref(), Some("26000"));
    // A Parse that fails is not kept: the name can be used again.
    w.send(&[parse("bad", "SELEC 1"), sync()].concat()).await;
    let r = w.recv_until(b'Z').await;
    assert_eq!(r[0].field(b'C').as_deref(), Some("42601"));
    w.send(
        &[
            parse("bad", "SELECT 1"),
            bind("bad", &[]),
            execute(),
            sync(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(tags(&w.recv_until(b'Z').await), "12DCZ");
    // Preparing a name twice: 42P05, and the batch is skipped to Sync.
    w.send(
        &[
            parse("bad", "SELECT 2"),
            bind("bad", &[]),
            execute(),
            sync(),
        ]
        .concat(),
    )
    .await;
    let r = w.recv_until(b'Z').await;
    assert_eq!(tags(&r), "EZ");
    assert_eq!(r[0].field(b'C').as_deref(), Some("42P05"));
    // An error mid-batch voids a Parse sluice would have answered itself.
    let mut other = login(&s).await;
    other.send(&[parse("x", "SELECT 3"), sync()].concat()).await;
    other.recv_until(b'Z').await;
    w.send(&[bind("nope", &[]), parse("y", "SELECT 3"), sync()].concat())
        .await;
    assert_eq!(tags(&w.recv_until(b'Z').await), "EZ");
    w.send(&[bind("y", &[]), execute(), sync()].concat()).await;
    let r = w.recv_until(b'Z').await;
    assert_eq!(
        r[0].field(b'C').as_deref(),
        Some("26000"),
        "y was never prepared: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_act_on_the_clients_own_view() {
    let s = pooled(1, "").await;
    let mut a = login(&s).await;
    let mut b = login(&s).await;
    for w in [&mut a, &mut b] {
        w.send(&[parse("q", "SELECT 5"), sync()].concat()).await;
        assert_eq!(tags(&w.recv_until(b'Z').await), "1Z");
    }
    a.send(&query("DEALLOCATE q")).await;
    assert_eq!(tags(&a.recv_until(b'Z').await), "CZ");
    a.send(&[bind("q", &[]), execute(), sync()].concat()).await;
    assert_eq!(
        a.recv_until(b'Z').await[0].field(b'C').as_deref(),
        Some("26000")
    );
    // b shares the server and still has its statement.
    b.send(&[bind("q", &[]), execute(), sync()].concat()).await;
    assert_eq!(tags(&b.recv_until(b'Z').await), "2DCZ");
    a.send(&query("DISCARD ALL")).await;
    assert_eq!(tags(&a.recv_until(b'Z').await), "CZ");
    b.send(&[bind("q", &[]), execute(), sync()].concat()).await;
    assert_eq!(
        tags(&b.recv_until(b'Z').await),
        "2DCZ",
        "b's statement is prepared again after a's DISCARD ALL"
    );
    b.send(&query("DEALLOCATE ALL")).await;
    b.recv_until(b'Z').await;
    b.send(&[bind("q", &[]), execute(), sync()].concat()).await;
    assert_eq!(
        b.recv_until(b'Z').await[0].field(b'C').as_deref(),
        Some("26000")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_bound_evicts_statements_on_the_server() {
    let s = pooled(1, "max_prepared_statements = 3").await;
    let mut w = login(&s).await;
    for i in 0..6 {
        w.send(&[parse(&format!("p{i}"), &format!("SELECT {i}")), sync()].concat())
            .await;
        assert_eq!(tags(&w.recv_until(b'Z').await), "1Z");
    }
    w.send(&query(
        "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'sluice_%'",
    ))
    .await;
    let r = w.recv_until(b'Z').await;
    let row = r.iter().find(|m| m.tag == b'D').unwrap();
    assert_eq!(datarow_text(row), "3");
    // Evicted statements come back when used.
    w.send(&[bind("p0", &[]), execute(), sync()].concat()).await;
    let r = w.recv_until(b'Z').await;
    assert_eq!(tags(&r), "2DCZ");
    assert_eq!(datarow_text(&r[1]), "0");
    let shared = s.shared.as_ref().unwrap();
    assert!(shared.stats.evictions_total() >= 3);
    // Once the client's transaction is over, its server is back in the pool.
    drop(w);
    crate::harness::wait_until(10, "the server to be idle in its pool", || async {
        shared
            .pools
            .prepared_per_server()
            .iter()
            .any(|(_, counts)| counts.contains(&3))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepares_across_transactions() {
    let s = pooled(2, "").await;
    let mut tasks = Vec::new();
    for n in 0..8 {
        let c = s.app().await;
        tasks.push(tokio::spawn(async move {
            let stmt = c.prepare("SELECT $1::int + $2::int").await.unwrap();
            for i in 0..30i32 {
                let v: i32 = c.query_one(&stmt, &[&i, &n]).await.unwrap().get(0);
                assert_eq!(v, i + n);
                let t: String = c
                    .query_one("SELECT $1::text", &[&format!("x{i}")])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(t, format!("x{i}"));
                let u: i64 = c
                    .query_typed(
                        "SELECT $1::int8 * 2",
                        &[(&(i as i64), tokio_postgres::types::Type::INT8)],
                    )
                    .await
                    .unwrap()[0]
                    .get(0);
                assert_eq!(u, 2 * i as i64);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_passes_names_through() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let mut w = login(&s).await;
    w.send(&[parse("mine", "SELECT 1"), sync()].concat()).await;
    w.recv_until(b'Z').await;
    w.send(&query("SELECT name FROM pg_prepared_statements"))
        .await;
    let r = w.recv_until(b'Z').await;
    let row = r.iter().find(|m| m.tag == b'D').unwrap();
    assert_eq!(datarow_text(row), "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_64_clients_over_8_servers() {
    let s = crate::tools::pgbench_db(
        "benchprep",
        "pool_mode = \"transaction\"\nmax_client_conn = 200",
        8,
    )
    .await;
    for script in [&["-M", "prepared"][..], &["-M", "prepared", "-S"][..]] {
        let mut args = script.to_vec();
        args.extend_from_slice(&["-c", "64", "-j", "2", "-t", "20"]);
        crate::tools::pgbench_clean(&s, "benchprep", &args, 1280).await;
    }
}

fn url(s: &Sluice) -> String {
    format!(
        "postgresql://{}:{}@127.0.0.1:{}/{DB}",
        SCRAM_USER.0, SCRAM_USER.1, s.port
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_with_prepare_threshold_zero() {
    let s = pooled(2, "").await;
    driver("python", "python3", "psycopg_check.py", &[url(&s)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_statement_cache() {
    let s = pooled(2, "").await;
    driver("python", "python3", "asyncpg_check.py", &[url(&s)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_named_queries() {
    let s = pooled(2, "").await;
    driver("node", "node", "node_pg_check.js", &[url(&s)]).await;
}

/// A pool of one server, and a client that prepared `sql` as "warm" on it,
/// so that sluice knows the statement.
async fn one_server_knowing(sql: &str) -> (Sluice, Wire) {
    let s = pooled(1, "").await;
    let mut w = login(&s).await;
    w.send(&[parse("warm", sql), sync()].concat()).await;
    w.recv_until(b'Z').await;
    (s, w)
}

/// Parses sluice answers itself still obey backpressure: a client that
/// never reads its replies is stopped, not buffered without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_replies_is_not_buffered() {
    use tokio::io::AsyncWriteExt;
    // One server: the stalled client must not hold it, even when its
    // batches arrive split across reads.
    let (s, mut w) = one_server_knowing("SELECT 11").await;
    let (mut other, _) = Wire::connect_small(s.port)
        .await
        .login_as(SCRAM_USER.0, SCRAM_USER.1, DB, &[])
        .await;
    let mut chunk = Vec::new();
    for i in 0..2000 {
        chunk.extend_from_slice(
            &[
                parse(&format!("k{i}"), "SELECT 11"),
                close_stmt(&format!("k{i}")),
                sync(),
            ]
            .concat(),
        );
    }
    // Without backpressure sluice would keep answering (and buffering) for as
    // long as the client writes; with it, the client's writes stall.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut stalled = false;
    while tokio::time::Instant::now() < deadline {
        let write = other.stream.write_all(&chunk);
        if tokio::time::timeout(std::time::Duration::from_secs(1), write)
            .await
            .is_err()
        {
            stalled = true;
            break;
        }
    }
    assert!(
        stalled,
        "sluice kept reading a client that never reads its replies"
    );
    // Others are unaffected.
    w.send(&[bind("warm", &[]), execute(), sync()].concat())
        .await;
    assert_eq!(tags(&w.recv_until(b'Z').await), "2DCZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_parse_split_across_reads_needs_no_server() {
    let (s, _w) = one_server_knowing("SELECT 12").await;
    // The only server is held by another client's transaction.
    let holder = s.app().await;
    holder.batch_execute("BEGIN").await.unwrap();
    let mut other = login(&s).await;
    let batch = [parse("again", "SELECT 12"), sync()].concat();
    // Byte by byte, with pauses so that sluice sees the batch in pieces
    // (the test checks the answer, not the timing).
    for b in &batch {
        other.send(std::slice::from_ref(b)).await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let reply = tokio::time::timeout(std::time::Duration::from_secs(10), other.recv_until(b'Z'))
        .await
        .expect("answered while the only server is busy");
    assert_eq!(tags(&reply), "1Z");
    holder.batch_execute("COMMIT").await.unwrap();
}
