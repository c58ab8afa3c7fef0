//! Everything a client does passes through sluice as on a direct connection.

use crate::harness::{Cluster, Sluice};
use futures_util::{SinkExt, StreamExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let c = s.app().await;
    let rows = c
        .simple_query("SELECT 1 AS one; SELECT 'two'")
        .await
        .unwrap();
    let vals: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(vals, ["1", "two"]);
    let stmt = c.prepare("SELECT $1::int + 1").await.unwrap();
    let r: i32 = c.query_one(&stmt, &[&41i32]).await.unwrap().get(0);
    assert_eq!(r, 42);
    let r: String = c
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(r, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_carries_server_values() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let (_w, msgs) = crate::harness::Wire::login(
        s.port,
        crate::harness::SCRAM_USER.0,
        crate::harness::SCRAM_USER.1,
        "app",
        &[
            ("client_encoding", "utf-8"),
            ("application_name", "ps-test"),
        ],
    )
    .await;
    let params: Vec<(String, String)> = msgs
        .iter()
        .filter(|m| m.tag == b'S')
        .map(|m| {
            let mut parts = m
                .body
                .split(|&b| b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned());
            (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            )
        })
        .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("client_encoding").as_deref(), Some("UTF8"));
    assert_eq!(get("application_name").as_deref(), Some("ps-test"));
    assert!(get("server_version").is_some_and(|v| v.starts_with("15")));
    let key = msgs.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    assert_eq!(key.body.len(), 8);
    assert_eq!(
        msgs.last().map(|m| (m.tag, m.body.clone())),
        Some((b'Z', b"I".to_vec()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_settings_are_applied() {
    let cluster = Cluster::shared();
    let s = Sluice::with(cluster, "").await;
    let url = format!(
        "{} options='-c statement_timeout=1234 -c search_path=foo,public' application_name=settings-test",
        s.url(
            crate::harness::SCRAM_USER.0,
            crate::harness::SCRAM_USER.1,
            "app"
        )
    );
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = c
        .query_one("SELECT current_setting('statement_timeout'), current_setting('search_path'), current_setting('application_name')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "1234ms");
    assert_eq!(
        row.get::<_, String>(1),
        "foo,public",
        "as a direct connection reports it"
    );
    assert_eq!(row.get::<_, String>(2), "settings-test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startup_setting_is_a_fatal_error_like_postgres() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let url = format!(
        "{} options='-c no_such_setting=1'",
        s.url(
            crate::harness::SCRAM_USER.0,
            crate::harness::SCRAM_USER.1,
            "app"
        )
    );
    let err = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .err()
        .expect("must fail");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42704");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let c = s.app().await;
    c.batch_execute("CREATE TEMP TABLE cp (id int, t text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY cp FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\trow {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 5000);
    let stream = c.copy_out("COPY cp TO STDOUT").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(out).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_pass_through_intact() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let c = s.app().await;
    // 20 MB in one DataRow, larger than any buffer sluice keeps.
    let row = c
        .query_one(
            "SELECT repeat('x', 20000000) AS big, md5(repeat('x', 20000000))",
            &[],
        )
        .await
        .unwrap();
    let big: &str = row.get(0);
    assert_eq!(big.len(), 20_000_000);
    let sent = "y".repeat(5_000_000);
    let r: i32 = c
        .query_one("SELECT length($1::text)", &[&sent])
        .await
        .unwrap()
        .get(0);
    assert_eq!(r, 5_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_and_notifications_reach_the_client() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let (client, mut conn) = tokio_postgres::connect(
        &s.url(
            crate::harness::SCRAM_USER.0,
            crate::harness::SCRAM_USER.1,
            "app",
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            let _ = tx.send(m);
        }
    });
    client
        .batch_execute(
            "LISTEN chan; DO $$ BEGIN RAISE NOTICE 'hello notice'; END $$; NOTIFY chan, 'payload'",
        )
        .await
        .unwrap();
    let mut got_notice = false;
    let mut got_notify = false;
    while !(got_notice && got_notify) {
        match tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("messages")
        {
            Some(tokio_postgres::AsyncMessage::Notice(n)) => {
                got_notice |= n.message() == "hello notice"
            }
            Some(tokio_postgres::AsyncMessage::Notification(n)) => {
                assert_eq!((n.channel(), n.payload()), ("chan", "payload"));
                let pid: i32 = client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(
                    n.process_id(),
                    pid,
                    "notification pid names the real server backend"
                );
                got_notify = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_mid_transaction_and_recovery() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let c = s.app().await;
    c.batch_execute("BEGIN").await.unwrap();
    let e = c.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "22012");
    let e = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    let r: i32 = c.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(r, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_caused_by_startup_settings_reach_the_client() {
    let s = Sluice::with(Cluster::shared(), "").await;
    // With client_min_messages = debug5 the server reports its own work as
    // notices; a direct login would show them too.
    let (mut w, msgs) = crate::harness::Wire::login(
        s.port,
        crate::harness::SCRAM_USER.0,
        crate::harness::SCRAM_USER.1,
        "app",
        &[
            ("options", "-c client_min_messages=debug5"),
            ("application_name", "noisy"),
        ],
    )
    .await;
    let notices: Vec<_> = msgs.iter().filter(|m| m.tag == b'N').collect();
    assert!(
        !notices.is_empty(),
        "no NOTICE reached the client: {msgs:?}"
    );
    assert!(
        notices
            .iter()
            .all(|n| n.field(b'V').is_some_and(|v| v.starts_with("DEBUG")))
    );
    w.send(&crate::harness::wire::query("SELECT 1")).await;
    assert!(w.recv_until(b'Z').await.iter().any(|m| m.tag == b'D'));
}
