//! Transaction and statement pooling on the real primary: many clients over
//! a few servers, without leaking one client's session state to another.

use std::collections::HashSet;

use crate::harness::wire::{message, query};
use crate::harness::{
    AppSetting, Cluster, DB, SCRAM_USER, Sluice, Wire, config_for, pooled, wait_until,
};

fn first_value(msgs: &[tokio_postgres::SimpleQueryMessage]) -> String {
    crate::harness::sql::first_value(msgs).expect("a row")
}

async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    first_value(
        &c.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_share_two_servers() {
    let cluster = Cluster::shared();
    cluster
        .primary
        .psql(DB, "CREATE TABLE IF NOT EXISTS txn_mux (client int, n int)");
    let s = pooled("transaction", 2, "").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = s.app().await;
        tasks.push(tokio::spawn(async move {
            let mut pids = HashSet::new();
            for n in 0..10 {
                let r = c
                    .simple_query(&format!(
                        "BEGIN; INSERT INTO txn_mux VALUES ({i}, {n}); SELECT pg_backend_pid(); COMMIT"
                    ))
                    .await
                    .unwrap();
                pids.insert(first_value(&r));
            }
            pids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert!(all.len() <= 2, "20 clients used {} servers", all.len());
    // Another client's reads may go to the replica: ask the primary.
    let c = s.app().await;
    assert_eq!(
        one(&c, "/* sluice:primary */ SELECT count(*) FROM txn_mux").await,
        "200"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_clients_keep_their_own_settings_on_one_server() {
    let cluster = Cluster::shared();
    cluster.primary.psql(
        DB,
        "CREATE SCHEMA IF NOT EXISTS sa; CREATE SCHEMA IF NOT EXISTS sb",
    );
    let s = pooled("transaction", 1, "").await;
    let a = s.app().await;
    let b = s.app().await;
    a.batch_execute(
        "SET TimeZone = 'Asia/Tokyo'; SET search_path TO sa, public; SET statement_timeout = '7s'",
    )
    .await
    .unwrap();
    b.batch_execute("SET TimeZone = 'America/New_York'")
        .await
        .unwrap();
    b.batch_execute("SET search_path TO sb").await.unwrap();
    for _ in 0..5 {
        let q = "SELECT current_setting('TimeZone') || '|' || current_setting('search_path') || '|' || current_setting('statement_timeout') || '|' || pg_backend_pid()";
        let ra = one(&a, q).await;
        let rb = one(&b, q).await;
        let pa: Vec<&str> = ra.split('|').collect();
        let pb: Vec<&str> = rb.split('|').collect();
        assert_eq!(&pa[..3], ["Asia/Tokyo", "sa, public", "7s"]);
        assert_eq!(&pb[..3], ["America/New_York", "sb", "0"]);
        assert_eq!(pa[3], pb[3], "both ran on the one server");
    }
    // RESET, RESET ALL and SET LOCAL behave as on a direct connection.
    a.batch_execute("RESET statement_timeout").await.unwrap();
    assert_eq!(
        one(&a, "SELECT current_setting('statement_timeout')").await,
        "0"
    );
    assert_eq!(
        one(&a, "SELECT current_setting('search_path')").await,
        "sa, public"
    );
    a.batch_execute("BEGIN; SET LOCAL search_path TO sb; COMMIT")
        .await
        .unwrap();
    assert_eq!(
        one(&a, "SELECT current_setting('search_path')").await,
        "sa, public"
    );
    a.batch_execute("BEGIN; SET search_path TO sb; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(one(&b, "SELECT current_setting('search_path')").await, "sb");
    assert_eq!(
        one(&a, "SELECT current_setting('search_path')").await,
        "sa, public"
    );
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(one(&b, "SELECT 1").await, "1");
    assert_eq!(
        one(&a, "SELECT current_setting('search_path')").await,
        "\"$user\", public"
    );
    assert_ne!(
        one(&a, "SELECT current_setting('TimeZone')").await,
        "Asia/Tokyo"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_settings_follow_the_client_across_servers() {
    let s = pooled("transaction", 1, "").await;
    let url = format!(
        "{} options='-c statement_timeout=4321' application_name=follow-me",
        s.url(SCRAM_USER.0, SCRAM_USER.1, DB)
    );
    let (a, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let b = s.app().await;
    b.batch_execute("SET statement_timeout = 99").await.unwrap();
    assert_eq!(
        one(&b, "SELECT current_setting('statement_timeout')").await,
        "99ms"
    );
    assert_eq!(
        one(&a, "SELECT current_setting('statement_timeout') || ' ' || current_setting('application_name')").await,
        "4321ms follow-me"
    );
    assert_eq!(
        one(&b, "SELECT current_setting('application_name')").await,
        ""
    );
}

/// A login with the same startup settings as an earlier one is answered
/// from what that one led to, without a server (as PgBouncer does): it goes
/// through while the only server is busy, with the same greeting, and its
/// settings reach the server it gets later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_login_needs_no_server() {
    let s = pooled("transaction", 1, "query_wait_timeout = \"5s\"").await;
    let settings = [
        ("application_name", "welcome-test"),
        ("options", "-c statement_timeout=1234"),
        ("DateStyle", "iso"),
    ];
    let login = || Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, DB, &settings);
    let greeting = |msgs: &[crate::harness::wire::Msg]| -> Vec<Vec<u8>> {
        msgs.iter()
            .filter(|m| m.tag == b'S')
            .map(|m| m.body.clone())
            .collect()
    };
    let (first, first_msgs) = login().await;
    drop(first);

    let busy = s.app().await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let (mut again, again_msgs) = tokio::time::timeout(std::time::Duration::from_secs(3), login())
        .await
        .expect("the login needs no server");
    assert_eq!(greeting(&again_msgs), greeting(&first_msgs));
    let date_style = again_msgs
        .iter()
        .filter(|m| m.tag == b'S')
        .find(|m| m.body.starts_with(b"DateStyle\0"))
        .map(|m| m.body.clone());
    assert_eq!(
        date_style.as_deref(),
        Some(&b"DateStyle\0ISO, MDY\0"[..]),
        "the value PostgreSQL reported, not the client's spelling"
    );

    busy.batch_execute("COMMIT").await.unwrap();
    again
        .send(&query(
            "SELECT current_setting('statement_timeout') || ' ' || current_setting('application_name')",
        ))
        .await;
    let reply = again.recv_until(b'Z').await;
    let row = reply.iter().find(|m| m.tag == b'D').expect("a row");
    assert!(
        row.body.ends_with(b"1234ms welcome-test"),
        "{:?}",
        String::from_utf8_lossy(&row.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_features_pin_until_released() {
    let s = pooled("transaction", 1, "query_wait_timeout = \"500ms\"").await;
    let a = s.app().await;
    // (LISTEN does not pin: the pool's LISTEN connection listens, tests/it/listen.rs.)
    for (pin, unpin) in [
        (
            "SELECT pg_advisory_lock(42)",
            "SELECT pg_advisory_unlock_all()",
        ),
        (
            "CREATE TEMP TABLE pinned_tmp (x int)",
            "DROP TABLE pinned_tmp",
        ),
        ("PREPARE pinned_q AS SELECT 1", "DEALLOCATE pinned_q"),
    ] {
        a.batch_execute(pin).await.unwrap();
        let stats = s.shared.as_ref().map(|sh| sh.stats.clone()).unwrap();
        assert_eq!(
            stats.pinned_clients(),
            1,
            "{pin} is counted as a pinned client"
        );
        // The only server is pinned to `a`: nobody else gets one (a login
        // like an earlier one needs none, so the first query waits instead).
        // Not a read, which may go to a replica.
        let e = s
            .first_query(SCRAM_USER.0, SCRAM_USER.1, DB, "DO $$BEGIN END$$")
            .await
            .expect_err("the only server is pinned");
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(msg.contains("query_wait_timeout"), "{pin}: {msg}");
        a.batch_execute(unpin).await.unwrap();
        assert_eq!(stats.pinned_clients(), 0, "{unpin} unpins");
        let c = s.app().await;
        assert_eq!(one(&c, "SELECT 1").await, "1", "after {unpin}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_can_be_an_error_instead() {
    let s = pooled("transaction", 2, "on_session_state = \"error\"").await;
    let c = s.app().await;
    let e = c
        .batch_execute("CREATE TEMP TABLE nope (x int)")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("ErrorResponse");
    assert_eq!(db.code().code(), "0A000");
    assert!(db.message().contains("temporary"), "{}", db.message());
    // (LISTEN needs no pin, so it is not refused: tests/it/listen.rs.)
    let e = c.execute("PREPARE p2 AS SELECT 1", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("0A000"));
    assert_eq!(one(&c, "SELECT 2").await, "2", "the client carries on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_transaction_never_reaches_the_next_client() {
    let cluster = Cluster::shared();
    cluster
        .primary
        .psql(DB, "CREATE TABLE IF NOT EXISTS txn_abandon (id int)");
    let s = pooled("transaction", 1, "").await;
    let (mut w, _) = Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
    w.send(&query("BEGIN; SET search_path TO pg_catalog; SET statement_timeout = 1234; CREATE TEMP TABLE abandoned_tmp (x int); INSERT INTO public.txn_abandon VALUES (1)")).await;
    let r = w.recv_until(b'Z').await;
    assert_eq!(r.last().map(|m| m.body.clone()), Some(b"T".to_vec()));
    drop(w);
    let c = s.app().await;
    let row = one(
        &c,
        "/* sluice:primary */ SELECT (SELECT count(*) FROM public.txn_abandon) || '|' || current_setting('search_path') || '|' || \
         current_setting('statement_timeout') || '|' || (to_regclass('pg_temp.abandoned_tmp') IS NULL)",
    )
    .await;
    assert_eq!(row, "0|\"$user\", public|0|true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_copy_and_batch_leave_clean_servers() {
    let cluster = Cluster::shared();
    cluster
        .primary
        .psql(DB, "CREATE TABLE IF NOT EXISTS txn_copy (x int)");
    let s = pooled("transaction", 1, "").await;
    // Mid-COPY.
    let (mut w, _) = Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
    w.send(&query("COPY txn_copy FROM STDIN")).await;
    assert_eq!(w.recv().await.map(|m| m.tag), Some(b'G'));
    w.send(&message(b'd', b"1\n2\n")).await;
    drop(w);
    // Mid-batch: Parse/Bind/Execute without Sync.
    let (mut w, _) = Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
    w.send(
        &[
            message(b'P', b"\0INSERT INTO txn_copy VALUES (9)\0\0\0"),
            message(b'B', b"\0\0\0\0\0\0\0\0"),
            message(b'E', b"\0\0\0\0\0"),
            message(b'H', b""),
        ]
        .concat(),
    )
    .await;
    assert_eq!(w.recv().await.map(|m| m.tag), Some(b'1'));
    drop(w);
    let c = s.app().await;
    wait_until(10, "abandoned work to be settled", || async {
        c.simple_query("SELECT 1").await.is_ok()
    })
    .await;
    // Read on the primary itself: through sluice this read may go to the
    // replica, which need not have replayed the CREATE TABLE above yet.
    assert_eq!(
        cluster.primary.psql(DB, "SELECT count(*) FROM txn_copy"),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_current_server_only() {
    let s = pooled("transaction", 2, "").await;
    let c = s.app().await;
    let token = c.cancel_token();
    // Cancelling an idle client (no server) does nothing to anyone.
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let other = s.app().await;
    let busy = tokio::spawn(async move { other.batch_execute("SELECT pg_sleep(1)").await });
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    busy.await
        .unwrap()
        .expect("another client's query is untouched");
    let q = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(30)").await });
    let watcher = s.app().await;
    wait_until(10, "pg_sleep(30) to run", || {
        let w = &watcher;
        async move {
            one(w, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'").await == "1"
        }
    })
    .await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = q.await.unwrap().unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57014"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_refuses_transaction_blocks() {
    let s = pooled("statement", 2, "").await;
    let c = s.app().await;
    assert_eq!(one(&c, "SELECT 1; SELECT 2").await, "1");
    let e = c.batch_execute("BEGIN").await;
    let e = match e {
        Err(e) => e,
        Ok(()) => c.batch_execute("SELECT 1").await.unwrap_err(),
    };
    assert!(
        e.to_string().contains("statement pooling") || e.is_closed(),
        "{e}"
    );
    let d = s.app().await;
    assert_eq!(one(&d, "SELECT 3").await, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_give_clear_errors() {
    let s = pooled(
        "transaction",
        2,
        "idle_transaction_timeout = \"300ms\"\nquery_timeout = \"500ms\"\nclient_idle_timeout = \"400ms\"",
    )
    .await;
    let expect_close = |code: &'static str| {
        let port = s.port;
        async move {
            let (mut w, _) = Wire::login(port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
            (w.recv().await, code, port)
        }
    };
    // client_idle_timeout: an idle client is closed.
    let (m, code, port) = expect_close("57P05").await;
    let m = m.expect("an error before close");
    assert_eq!(m.field(b'C').as_deref(), Some(code));
    // idle_transaction_timeout.
    let (mut w, _) = Wire::login(port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
    w.send(&query("BEGIN")).await;
    w.recv_until(b'Z').await;
    let m = w.recv().await.expect("an error before close");
    assert_eq!(m.field(b'C').as_deref(), Some("25P03"));
    // query_timeout.
    let (mut w, _) = Wire::login(port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
    w.send(&query("SELECT pg_sleep(5)")).await;
    let started = std::time::Instant::now();
    let msgs = w.recv_until(b'E').await;
    assert_eq!(
        msgs.last().and_then(|m| m.field(b'C')).as_deref(),
        Some("57014")
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    // The pool still serves.
    let c = s.app().await;
    assert_eq!(one(&c, "SELECT 4").await, "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_corners_in_transaction_mode() {
    let s = pooled("transaction", 2, "").await;
    let (mut w, _) = Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
    // Empty query, multi-statement with a NOTICE.
    w.send(&query("")).await;
    let r = w.recv_until(b'Z').await;
    assert_eq!(r.iter().map(|m| m.tag).collect::<Vec<_>>(), b"IZ");
    w.send(&query(
        "SELECT 1; DO $$ BEGIN RAISE NOTICE 'n1'; END $$; SELECT 2",
    ))
    .await;
    let r = w.recv_until(b'Z').await;
    assert!(r.iter().any(|m| m.tag == b'N'));
    assert_eq!(r.iter().filter(|m| m.tag == b'D').count(), 2);
    // Flush without Sync, then Sync.
    let parse = message(b'P', b"\0SELECT 5\0\0\0");
    let bind = message(b'B', b"\0\0\0\0\0\0\0\0");
    let exec = message(b'E', b"\0\0\0\0\0");
    w.send(
        &[
            parse.clone(),
            bind.clone(),
            exec.clone(),
            message(b'H', b""),
        ]
        .concat(),
    )
    .await;
    let r = w.recv_until(b'C').await;
    assert_eq!(r.iter().map(|m| m.tag).collect::<Vec<_>>(), b"12DC");
    w.send(&message(b'S', b"")).await;
    assert_eq!(w.recv().await.map(|m| m.tag), Some(b'Z'));
    // An error inside a pipelined batch: the server skips to Sync; the next batch works.
    let bad = message(b'P', b"\0SELEC 1\0\0\0");
    let batch = [
        bad,
        bind.clone(),
        exec.clone(),
        message(b'S', b""),
        parse,
        bind,
        exec,
        message(b'S', b""),
    ]
    .concat();
    w.send(&batch).await;
    let r = w.recv_until(b'Z').await;
    assert_eq!(r.iter().map(|m| m.tag).collect::<Vec<_>>(), b"EZ");
    let r = w.recv_until(b'Z').await;
    assert_eq!(r.iter().map(|m| m.tag).collect::<Vec<_>>(), b"12DCZ");
    // COPY out and in.
    w.send(&query("COPY (SELECT generate_series(1,3)) TO STDOUT"))
        .await;
    let r = w.recv_until(b'Z').await;
    assert_eq!(r.iter().filter(|m| m.tag == b'd').count(), 3);
    w.send(&query(
        "CREATE TEMP TABLE cin (x int) ON COMMIT DROP; COPY cin FROM STDIN",
    ))
    .await;
    let r = w.recv_until(b'G').await;
    assert_eq!(r.last().map(|m| m.tag), Some(b'G'));
    w.send(&[message(b'd', b"7\n"), message(b'c', b"")].concat())
        .await;
    let r = w.recv_until(b'Z').await;
    assert!(
        r.iter()
            .any(|m| m.tag == b'C' && m.body.starts_with(b"COPY 1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_64_clients_over_8_servers() {
    let cluster = Cluster::shared();
    let s = crate::tools::pgbench_db(
        "benchtxn",
        "pool_mode = \"transaction\"\nmax_client_conn = 200",
        8,
    )
    .await;
    for mode in ["simple", "extended"] {
        crate::tools::pgbench_clean(
            &s,
            "benchtxn",
            &["-M", mode, "-c", "64", "-j", "2", "-t", "20"],
            1280,
        )
        .await;
    }
    // A server sluice closed may linger in pg_stat_activity while its
    // backend exits; a ninth kept open would stay.
    crate::harness::wait_until(
        10,
        "at most 8 server connections for a pool of 8",
        || async {
            let n = cluster.primary.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'benchtxn'",
            );
            n.parse::<i64>().unwrap() <= 8
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_mode_can_be_set_per_user_and_per_database() {
    let toml = config_for(Cluster::shared(), "query_wait_timeout = \"500ms\"", "")
        .app_setting("pool_size = 1")
        .replace(
            &format!("[users.{}]", crate::harness::MD5_USER.0),
            &format!(
                "[users.{}]\npool_mode = \"transaction\"",
                crate::harness::MD5_USER.0
            ),
        );
    let s = Sluice::start(&toml).await;
    let md5 = crate::harness::MD5_USER;
    // The md5 user pools per transaction: two clients share the one server.
    let a = s.connect(md5.0, md5.1, DB).await.unwrap();
    let b = s.connect(md5.0, md5.1, DB).await.unwrap();
    assert_eq!(one(&a, "SELECT 1").await, "1");
    assert_eq!(one(&b, "SELECT 2").await, "2");
    // The scram user stays in session mode: its one server is held.
    let c = s.app().await;
    let e = s
        .connect(SCRAM_USER.0, SCRAM_USER.1, DB)
        .await
        .expect_err("session pool is busy");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("08P01"));
    drop(c);

    let toml = config_for(Cluster::shared(), "", "").app_setting("pool_mode = \"statement\"");
    let s = Sluice::start(&toml).await;
    let c = s.app().await;
    assert!(c.batch_execute("BEGIN").await.is_err() || c.batch_execute("SELECT 1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_open_transactions_finish() {
    let cluster = Cluster::shared();
    cluster
        .primary
        .psql(DB, "CREATE TABLE IF NOT EXISTS drained (x int)");
    let mut s = pooled("transaction", 2, "shutdown_timeout = \"20s\"").await;
    let a = s.app().await;
    let idle = s.app().await;
    a.batch_execute("BEGIN; INSERT INTO drained VALUES (1)")
        .await
        .unwrap();
    let serving = s.shutdown();
    // No new clients (the listener closes once the stop is seen)...
    let port = s.port;
    wait_until(10, "the listener to close", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
    let refused = tokio_postgres::connect(
        &s.url(SCRAM_USER.0, SCRAM_USER.1, DB),
        tokio_postgres::NoTls,
    )
    .await;
    assert!(refused.is_err(), "the listener is closed");
    // ...the open transaction finishes...
    a.batch_execute("INSERT INTO drained VALUES (2); COMMIT")
        .await
        .unwrap();
    // ...then its client, like the idle one, is told and closed.
    let e = a.batch_execute("SELECT 1").await.unwrap_err();
    assert!(
        e.is_closed() || e.as_db_error().is_some_and(|d| d.code().code() == "57P01"),
        "{e}"
    );
    assert!(idle.batch_execute("SELECT 1").await.is_err());
    tokio::time::timeout(std::time::Duration::from_secs(10), serving)
        .await
        .expect("drained")
        .unwrap();
    assert_eq!(
        cluster.primary.psql(DB, "SELECT count(*) FROM drained"),
        "2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_in_session_mode_ends_sessions_at_their_boundary() {
    let mut s = pooled("session", 2, "shutdown_timeout = \"20s\"").await;
    let busy = s.app().await;
    let idle = s.app().await;
    busy.batch_execute("BEGIN").await.unwrap();
    let serving = s.shutdown();
    // The idle session (it holds a server between transactions) is closed...
    wait_until(10, "the idle session to be closed", || {
        let idle = &idle;
        async move { idle.batch_execute("SELECT 1").await.is_err() }
    })
    .await;
    // ...the one inside a transaction may finish it, then is closed too.
    busy.batch_execute("SELECT 1; COMMIT").await.unwrap();
    assert!(busy.batch_execute("SELECT 1").await.is_err());
    tokio::time::timeout(std::time::Duration::from_secs(10), serving)
        .await
        .expect("drained")
        .unwrap();
}
