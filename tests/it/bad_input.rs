//! Bad input gets a PostgreSQL error with the right SQLSTATE, or a clean
//! close; never a crash, a hang or a dirty server handed on.

use tokio::io::AsyncWriteExt;

use crate::harness::wire::{message, query, startup_packet};
use crate::harness::{AppSetting, Cluster, DB, SCRAM_USER, Sluice, Wire, config_for};

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_clients_is_53300() {
    let s = Sluice::with(Cluster::shared(), "max_client_conn = 2").await;
    let _a = s.app().await;
    let _b = s.app().await;
    let e = s
        .connect(SCRAM_USER.0, SCRAM_USER.1, DB)
        .await
        .err()
        .expect("third client refused");
    assert_eq!(code(&e), Some("53300"));
    drop(_a);
    crate::harness::wait_until(10, "a slot to free up", || async {
        s.connect(SCRAM_USER.0, SCRAM_USER.1, DB).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_past_query_wait_timeout_is_an_error() {
    let toml = config_for(Cluster::shared(), "query_wait_timeout = \"300ms\"", "")
        .app_setting("pool_size = 1");
    let s = Sluice::start(&toml).await;
    let holder = s.app().await;
    let e = s
        .connect(SCRAM_USER.0, SCRAM_USER.1, DB)
        .await
        .err()
        .expect("no server free");
    let db = e.as_db_error().expect("ErrorResponse");
    assert_eq!(db.code().code(), "08P01");
    assert!(
        db.message().contains("query_wait_timeout"),
        "{}",
        db.message()
    );
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_names_the_database() {
    let dead_port = crate::harness::cluster::free_port();
    let toml = format!(
        "[general]\nserver_connect_timeout = \"2s\"\n[databases.gone]\nprimary = \"127.0.0.1:{dead_port}\"\n\
         [users.{u}]\npassword = \"{p}\"\n",
        u = SCRAM_USER.0,
        p = SCRAM_USER.1
    );
    let s = Sluice::start(&toml).await;
    let started = std::time::Instant::now();
    let e = s
        .connect(SCRAM_USER.0, SCRAM_USER.1, "gone")
        .await
        .err()
        .expect("server is down");
    let db = e.as_db_error().expect("ErrorResponse");
    assert_eq!(db.code().code(), "08001");
    assert!(db.message().contains("\"gone\""), "{}", db.message());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

async fn logged_in(s: &Sluice) -> Wire {
    let (w, msgs) = Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
    assert_eq!(msgs.last().map(|m| m.tag), Some(b'Z'));
    w
}

async fn expect_fatal(w: &mut Wire, sqlstate: &str) {
    let m = w.recv().await.expect("an ErrorResponse before close");
    assert_eq!(m.tag, b'E', "{m:?}");
    assert_eq!(m.field(b'C').as_deref(), Some(sqlstate), "{m:?}");
    assert!(
        w.recv().await.is_none(),
        "connection closed after the error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_08p01() {
    let s = Sluice::with(Cluster::shared(), "max_packet_size = \"64kB\"").await;
    // Length below 4.
    let mut w = logged_in(&s).await;
    w.send(b"Q\0\0\0\x02").await;
    expect_fatal(&mut w, "08P01").await;
    // Longer than max_packet_size: refused from the header, body never sent.
    let mut w = logged_in(&s).await;
    w.send(b"Q\0\x10\0\0").await;
    expect_fatal(&mut w, "08P01").await;
    // Negative length.
    let mut w = logged_in(&s).await;
    w.send(b"Q\xff\xff\xff\xf0").await;
    expect_fatal(&mut w, "08P01").await;
    // Startup packet too long, too short, and with a broken layout.
    for pkt in [vec![0, 1, 0, 0, 0, 3, 0, 0], vec![0, 0, 0, 4], {
        let mut p = startup_packet(&[("user", "x")]);
        p.pop();
        let n = p.len() as u32;
        p[..4].copy_from_slice(&n.to_be_bytes());
        p
    }] {
        let mut w = Wire::connect(s.port).await;
        w.send(&pkt).await;
        expect_fatal(&mut w, "08P01").await;
    }
    // Garbage instead of a password message.
    let mut w = Wire::connect(s.port).await;
    w.send(&startup_packet(&[("user", SCRAM_USER.0), ("database", DB)]))
        .await;
    assert_eq!(w.recv().await.map(|m| m.tag), Some(b'R'));
    w.send(&message(b'Q', b"SELECT 1\0")).await;
    expect_fatal(&mut w, "08P01").await;
    // A truncated message followed by a vanished client leaves sluice serving.
    let mut w = logged_in(&s).await;
    w.send(b"Q\0\0\0\x20SELECT").await;
    w.stream.shutdown().await.unwrap();
    drop(w);
    let c = s.app().await;
    assert_eq!(
        c.query_one("SELECT 3", &[]).await.unwrap().get::<_, i32>(0),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_and_missing_user() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let mut w = Wire::connect(s.port).await;
    let mut p = startup_packet(&[("user", "x")]);
    p[4..8].copy_from_slice(&(2u32 << 16).to_be_bytes());
    w.send(&p).await;
    expect_fatal(&mut w, "0A000").await;
    let mut w = Wire::connect(s.port).await;
    w.send(&startup_packet(&[("database", DB)])).await;
    expect_fatal(&mut w, "28000").await;
    // SSLRequest is answered 'N' and the login continues in plaintext.
    let mut w = Wire::connect(s.port).await;
    w.send(&[0, 0, 0, 8, 4, 210, 22, 47]).await;
    let mut n = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut w.stream, &mut n)
        .await
        .unwrap();
    assert_eq!(&n, b"N");
    w.send(&startup_packet(&[("user", SCRAM_USER.0), ("database", DB)]))
        .await;
    let msgs = w.authenticate(SCRAM_USER.0, SCRAM_USER.1).await;
    assert_eq!(msgs.last().map(|m| m.tag), Some(b'Z'));
    w.send(&query("SELECT 1")).await;
    assert!(w.recv_until(b'Z').await.iter().any(|m| m.tag == b'D'));
}

/// With a pool of one, the next client gets the same server: prove it is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_transaction_leaves_a_clean_server() {
    let cluster = Cluster::shared();
    cluster
        .primary
        .psql(DB, "CREATE TABLE IF NOT EXISTS vanish (id int)");
    let toml = config_for(cluster, "", "").app_setting("pool_size = 1");
    let s = Sluice::start(&toml).await;

    let mut w = logged_in(&s).await;
    w.send(&query("SET statement_timeout = 4321; CREATE TEMP TABLE tmp_left (x int); BEGIN; INSERT INTO vanish VALUES (1); SELECT pg_backend_pid()")).await;
    let reply = w.recv_until(b'Z').await;
    assert_eq!(
        reply.last().map(|m| m.body.clone()),
        Some(b"T".to_vec()),
        "inside a transaction"
    );
    let row = reply.iter().find(|m| m.tag == b'D').expect("pid row");
    let first_pid = String::from_utf8_lossy(&row.body[6..]).to_string();
    drop(w); // no Terminate: the socket just closes

    let c = s.app().await;
    let row = c
        .query_one(
            "SELECT pg_backend_pid()::text, current_setting('statement_timeout'), \
             (SELECT count(*) FROM vanish), to_regclass('pg_temp.tmp_left') IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        first_pid,
        "the pooled server was reused"
    );
    assert_eq!(row.get::<_, String>(1), "0", "SET was reset");
    assert_eq!(
        row.get::<_, i64>(2),
        0,
        "the open transaction was rolled back"
    );
    assert!(row.get::<_, bool>(3), "temp table was discarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_query_discards_the_server() {
    let toml = config_for(Cluster::shared(), "", "").app_setting("pool_size = 1");
    let s = Sluice::start(&toml).await;
    let mut w = logged_in(&s).await;
    w.send(&query("SELECT pg_backend_pid()")).await;
    let reply = w.recv_until(b'Z').await;
    let row = reply.iter().find(|m| m.tag == b'D').expect("pid row");
    let first_pid = String::from_utf8_lossy(&row.body[6..]).to_string();
    w.send(&query("SELECT pg_sleep(5)")).await;
    drop(w);
    let c = s.app().await;
    let pid: String = c
        .query_one("SELECT pg_backend_pid()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(
        pid, first_pid,
        "a server busy with an abandoned query must not be reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_query_reaches_the_client_and_is_not_reused() {
    let cluster = Cluster::shared();
    let s = Sluice::with(cluster, "").await;
    let c = s.app().await;
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let q = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(30)").await });
    let admin = s.app().await;
    crate::harness::wait_until(10, "the query to run", || {
        let a = &admin;
        async move {
            a.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                &[&pid],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
        }
    })
    .await;
    admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let e = q.await.unwrap().unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("57P01"),
        "{e}"
    );
    let c = s.app().await;
    let new_pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(new_pid, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_minor_protocol_is_negotiated_down_to_3_0() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let mut w = Wire::connect(s.port).await;
    let mut p = startup_packet(&[
        ("user", SCRAM_USER.0),
        ("database", DB),
        ("_pq_.extension", "on"),
    ]);
    p[4..8].copy_from_slice(&((3u32 << 16) | 2).to_be_bytes());
    w.send(&p).await;
    let v = w.recv().await.expect("NegotiateProtocolVersion");
    assert_eq!(v.tag, b'v');
    assert_eq!(&v.body[..8], &[0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(&v.body[8..], b"_pq_.extension\0");
    let msgs = w.authenticate(SCRAM_USER.0, SCRAM_USER.1).await;
    assert_eq!(msgs.last().map(|m| m.tag), Some(b'Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_logins_are_dropped_and_real_clients_still_get_in() {
    let s = Sluice::with(Cluster::shared(), "client_login_timeout = \"300ms\"").await;
    // Connects and says nothing (slowloris).
    let mut silent = Wire::connect(s.port).await;
    // Starts, then never answers the password request.
    let mut stalled = Wire::connect(s.port).await;
    stalled
        .send(&startup_packet(&[("user", SCRAM_USER.0), ("database", DB)]))
        .await;
    assert_eq!(stalled.recv().await.map(|m| m.tag), Some(b'R'));
    let started = std::time::Instant::now();
    assert!(silent.recv().await.is_none(), "a silent client is closed");
    let m = stalled.recv().await.expect("an error before close");
    assert_eq!(m.field(b'C').as_deref(), Some("08P01"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let c = s.app().await;
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_writing_an_oversized_message_reads_the_error() {
    let s = Sluice::with(Cluster::shared(), "max_packet_size = \"64kB\"").await;
    let mut w = logged_in(&s).await;
    // A Query declaring 8 MB, and then all of it: far more than the socket
    // buffers hold, so sluice has refused it long before the last byte.
    // Had sluice closed with that input unread, the kernel's reset would
    // fail this write and could discard the ErrorResponse.
    let len = 8 << 20;
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&(len as i32).to_be_bytes());
    msg.resize(1 + len, b'x');
    w.send(&msg).await;
    expect_fatal(&mut w, "08P01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_client_inputs_each_get_a_defined_outcome() {
    use crate::harness::wire::startup_packet;
    let s = Sluice::with(Cluster::shared(), "max_packet_size = \"64kB\"").await;
    // A length just under 2^31: refused from the header, nothing reserved.
    let mut w = logged_in(&s).await;
    w.send(b"Q\x7f\xff\xff\xff").await;
    expect_fatal(&mut w, "08P01").await;
    // An unknown message type: PostgreSQL's own verdict, then a close.
    let mut w = logged_in(&s).await;
    w.send(&message(b'z', b"hello")).await;
    let m = w.recv().await.expect("an error");
    assert_eq!(
        (m.tag, m.field(b'C').as_deref()),
        (b'E', Some("08P01")),
        "{m:?}"
    );
    // A Query whose string has no NUL: an error, never a crash.
    let mut w = logged_in(&s).await;
    w.send(&message(b'Q', b"SELECT 1")).await;
    let m = w.recv().await.expect("an error");
    assert_eq!(m.tag, b'E', "{m:?}");
    // A startup packet with 10,000 parameters is over PostgreSQL's 10,000-byte limit.
    let many: Vec<(String, String)> = (0..10_000).map(|i| (format!("p{i}"), "v".into())).collect();
    let params: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut w = Wire::connect(s.port).await;
    w.send(&startup_packet(&params)).await;
    expect_fatal(&mut w, "08P01").await;
    // A SCRAM client-first message with a 1 MB nonce.
    let mut w = Wire::connect(s.port).await;
    w.send(&startup_packet(&[("user", SCRAM_USER.0), ("database", DB)]))
        .await;
    assert_eq!(w.recv().await.map(|m| m.tag), Some(b'R'));
    let first = format!("n,,n=,r={}", "x".repeat(1 << 20));
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first.as_bytes());
    w.send(&message(b'p', &body)).await;
    let m = w.recv().await.expect("an error before close");
    assert_eq!(m.tag, b'E', "{m:?}");
    // A SCRAM client-final message that is not one.
    let mut w = Wire::connect(s.port).await;
    w.send(&startup_packet(&[("user", SCRAM_USER.0), ("database", DB)]))
        .await;
    assert_eq!(w.recv().await.map(|m| m.tag), Some(b'R'));
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    let first = b"n,,n=,r=abc";
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first);
    w.send(&message(b'p', &body)).await;
    assert_eq!(w.recv().await.map(|m| m.tag), Some(b'R'));
    w.send(&message(b'p', b"\xff\xfe garbage")).await;
    let m = w.recv().await.expect("an error before close");
    assert_eq!(
        (m.tag, m.field(b'C').as_deref()),
        (b'E', Some("28P01")),
        "{m:?}"
    );
    // Through all of it, sluice serves everyone else.
    let c = s.app().await;
    assert_eq!(
        c.query_one("SELECT 5", &[]).await.unwrap().get::<_, i32>(0),
        5
    );
}

/// A hostile "PostgreSQL" on a free port: logs sluice in, then answers
/// every query with `reply`.
async fn fake_server(reply: Vec<u8>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                // Startup (or SSLRequest, answered N).
                let Ok(n) = sock.read(&mut buf).await else {
                    return;
                };
                if n == 8 && buf[4..8] == [0x04, 0xd2, 0x16, 0x2f] {
                    let _ = sock.write_all(b"N").await;
                    let _ = sock.read(&mut buf).await;
                }
                let mut hello = message(b'R', &0i32.to_be_bytes());
                hello.extend(message(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
                hello.extend(message(b'S', b"server_version\x0015.0\0"));
                hello.extend(message(b'Z', b"I"));
                let _ = sock.write_all(&hello).await;
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    if sock.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_server_replies_cost_only_their_client() {
    // An ErrorResponse without a SQLSTATE, then ReadyForQuery.
    let mut no_code = message(b'E', b"SERROR\0Mno code here\0\0");
    no_code.extend(message(b'Z', b"I"));
    // A message claiming to be almost 2 GB long.
    let huge = b"D\x7f\xff\xff\xf0".to_vec();
    for (reply, name) in [(no_code, "no_code"), (huge, "huge")] {
        let port = fake_server(reply).await;
        let db = format!("[databases.{name}]\nprimary = \"127.0.0.1:{port}\"\n");
        let toml = config_for(Cluster::shared(), "server_tls_mode = \"disable\"", &db);
        let s = Sluice::start(&toml).await;
        let (mut w, _) = Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, name, &[]).await;
        w.send(&query("SELECT 1")).await;
        let m = w.recv().await.expect("an error");
        assert_eq!(m.tag, b'E', "{name}: {m:?}");
        // sluice still serves the real database.
        let c = s.app().await;
        assert_eq!(
            c.query_one("SELECT 6", &[]).await.unwrap().get::<_, i32>(0),
            6,
            "{name}"
        );
    }
}

/// A client that quits before its login finished (node-postgres's
/// `connect(); end()` sends Terminate first) is closed without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_during_startup_or_authentication_closes_cleanly() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let terminate = b"X\0\0\0\x04";
    // Before the startup packet, and right after it (sluice is asking
    // for a password).
    let startup = crate::harness::wire::startup_packet(&[("user", SCRAM_USER.0), ("database", DB)]);
    for first in [&[][..], &startup[..]] {
        let mut w = Wire::connect(s.port).await;
        w.send(&[first, &terminate[..]].concat()).await;
        let mut got = Vec::new();
        while let Some(m) = w.recv().await {
            got.push(m.tag);
        }
        assert!(
            !got.contains(&b'E'),
            "an error before the clean close: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_connect_then_end_a_hundred_times() {
    let s = Sluice::with(Cluster::shared(), "pool_mode = \"transaction\"").await;
    let url = format!(
        "postgresql://{}:{}@127.0.0.1:{}/{DB}",
        SCRAM_USER.0, SCRAM_USER.1, s.port
    );
    crate::harness::drivers::driver("node", "node", "node_connect_end.js", &[url]).await;
}
