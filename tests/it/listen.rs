//! LISTEN/NOTIFY in transaction pooling: listeners share one LISTEN
//! connection of the pool instead of pinning a server each, and get
//! exactly the notifications a direct connection gets.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::harness::wire::{Wire, query};
use crate::harness::{Cluster, DB, SCRAM_USER, Sluice, pooled, wait_until};

/// Listen tests count the LISTEN connections on the shared primary: one
/// at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A client through sluice whose notifications come on the receiver.
async fn listener(s: &Sluice) -> (Client, mpsc::UnboundedReceiver<(String, String)>) {
    let (client, mut conn) = tokio_postgres::connect(&s.url(SCRAM_USER.0, SCRAM_USER.1, DB), NoTls)
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    (client, rx)
}

/// The next notification, within 10 s.
async fn next(rx: &mut mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification within 10s")
        .expect("the connection is open")
}

fn pair(c: &str, p: &str) -> (String, String) {
    (c.to_string(), p.to_string())
}

/// Servers of the primary that serve `app` for sluice: pooled and listener.
fn servers_named(name: &str) -> usize {
    Cluster::shared()
        .primary
        .psql(
            DB,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}'"),
        )
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_share_one_connection_and_get_every_notification() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = pooled(
        "transaction",
        2,
        &format!(
            "default_application_name = \"lst pool\"\nstats_users = [\"{}\"]",
            SCRAM_USER.0
        ),
    )
    .await;
    let mut listeners = Vec::new();
    for _ in 0..20 {
        let (c, rx) = listener(&s).await;
        c.simple_query("LISTEN lst_jobs").await.unwrap();
        listeners.push((c, rx));
    }
    // Twenty listeners: the pool's two servers and one listener connection.
    assert_eq!(servers_named("sluice listener"), 1);
    assert!(servers_named("lst pool") <= 2);
    let sender = s.app().await;
    sender
        .simple_query("NOTIFY lst_jobs, 'through sluice'")
        .await
        .unwrap();
    sender
        .query("SELECT pg_notify('lst_jobs', $1)", &[&"extended"])
        .await
        .unwrap();
    Cluster::shared()
        .primary
        .psql(DB, "NOTIFY lst_jobs, 'direct'");
    for (_, rx) in &mut listeners {
        assert_eq!(next(rx).await, pair("lst_jobs", "through sluice"));
        assert_eq!(next(rx).await, pair("lst_jobs", "extended"));
        assert_eq!(next(rx).await, pair("lst_jobs", "direct"));
    }
    // Each got each once: the fence comes next, nothing before it.
    sender
        .simple_query("NOTIFY lst_jobs, 'fence'")
        .await
        .unwrap();
    for (_, rx) in &mut listeners {
        assert_eq!(next(rx).await, pair("lst_jobs", "fence"));
    }
    // Listening pins nothing: the listeners' queries share the two servers.
    for (c, _) in &listeners {
        c.simple_query("SELECT 1").await.unwrap();
    }
    assert!(servers_named("lst pool") <= 2);
    let shared = s.shared.as_ref().unwrap();
    assert_eq!(shared.stats.pinned_clients(), 0);
    let (console, conn) =
        tokio_postgres::connect(&s.url(SCRAM_USER.0, SCRAM_USER.1, "pgbouncer"), NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let lists = console.simple_query("SHOW LISTS").await.unwrap();
    let row = |name: &str| {
        lists.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some(name) => {
                r.get(1).map(str::to_string)
            }
            _ => None,
        })
    };
    assert_eq!(row("listening_clients").as_deref(), Some("20"));
    assert_eq!(row("listen_channels").as_deref(), Some("1"));
    let metrics = sluice::metrics::render(shared).unwrap();
    assert!(
        metrics.contains(&format!(
            "sluice_listen_clients{{database=\"{DB}\",user=\"{}\"}} 20",
            SCRAM_USER.0
        )),
        "{metrics}"
    );
    // Nobody listens any more: the LISTEN connection closes.
    drop(listeners);
    wait_until(10, "the LISTEN connection to close", || async {
        servers_named("sluice listener") == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_follows_the_transaction_and_unlisten_stops_delivery() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = pooled("transaction", 2, "").await;
    let (c, mut rx) = listener(&s).await;
    c.simple_query("LISTEN lst_fence").await.unwrap();
    // A LISTEN rolled back listens to nothing; one committed does.
    c.batch_execute("BEGIN; LISTEN lst_rolled_back; ROLLBACK")
        .await
        .unwrap();
    c.batch_execute("BEGIN; LISTEN lst_committed")
        .await
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    let other = s.app().await;
    other
        .batch_execute(
            "NOTIFY lst_rolled_back, 'no'; NOTIFY lst_committed, 'yes'; NOTIFY lst_fence, '1'",
        )
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, pair("lst_committed", "yes"));
    assert_eq!(next(&mut rx).await, pair("lst_fence", "1"));
    // pg_listening_channels() answers the client's own set.
    let rows = c
        .query("SELECT pg_listening_channels() ORDER BY 1", &[])
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, ["lst_committed", "lst_fence"]);
    // A self-notification comes too, between transactions.
    c.simple_query("NOTIFY lst_committed, 'self'")
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, pair("lst_committed", "self"));
    c.simple_query("UNLISTEN lst_committed").await.unwrap();
    other
        .batch_execute("NOTIFY lst_committed, 'after'; NOTIFY lst_fence, '2'")
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, pair("lst_fence", "2"));
    c.simple_query("UNLISTEN *").await.unwrap();
    assert!(
        c.query("SELECT pg_listening_channels()", &[])
            .await
            .unwrap()
            .is_empty()
    );
    // DISCARD ALL ends them too.
    c.simple_query("LISTEN lst_discarded").await.unwrap();
    c.simple_query("DISCARD ALL").await.unwrap();
    c.simple_query("LISTEN lst_fence").await.unwrap();
    other
        .batch_execute("NOTIFY lst_discarded, 'no'; NOTIFY lst_fence, '3'")
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, pair("lst_fence", "3"));
}

/// LISTEN pins nothing, so `on_session_state = "error"` does not refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_is_not_refused_where_pinning_is() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = pooled("transaction", 2, "on_session_state = \"error\"").await;
    let (c, mut rx) = listener(&s).await;
    c.simple_query("LISTEN lst_strict").await.unwrap();
    s.app()
        .await
        .simple_query("NOTIFY lst_strict, 'ok'")
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, pair("lst_strict", "ok"));
}

/// The pid at the start of a BackendKeyData or NotificationResponse body.
fn pid_of(m: &crate::harness::wire::Msg) -> i32 {
    i32::from_be_bytes(m.body[..4].try_into().unwrap())
}

/// A Wire login through sluice, and the pid sluice gave it.
async fn wire_client(s: &Sluice) -> (Wire, i32) {
    let (w, greeting) = Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
    let key = greeting
        .iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData");
    (w, pid_of(key))
}

/// The pid of the next notification `w` gets.
async fn next_notification_pid(w: &mut Wire) -> i32 {
    loop {
        let m = w.recv().await.expect("open");
        if m.tag == b'A' {
            return pid_of(&m);
        }
    }
}

/// The pid of a notification a client sent itself is the pid sluice gave
/// it (BackendKeyData), as drivers' tests check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_notification_carries_the_clients_own_pid() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = pooled("transaction", 2, "").await;
    let (mut w, pid) = wire_client(&s).await;
    w.send(&query("LISTEN lst_self")).await;
    w.recv_until(b'Z').await;
    w.send(&query("NOTIFY lst_self, 'me'")).await;
    assert_eq!(next_notification_pid(&mut w).await, pid);
    // From another client: that client's pid.
    let (mut other, other_pid) = wire_client(&s).await;
    other.send(&query("NOTIFY lst_self, 'you'")).await;
    other.recv_until(b'Z').await;
    assert_eq!(next_notification_pid(&mut w).await, other_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listener_connection_ends_listening_sessions_and_delivery_resumes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = pooled("transaction", 2, "").await;
    let (c, _rx) = listener(&s).await;
    c.simple_query("LISTEN lst_lost").await.unwrap();
    Cluster::shared().primary.psql(
        DB,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sluice listener'",
    );
    // The client is told as after a server restart (57P01).
    wait_until(10, "the listening session to end", || async {
        c.is_closed() || c.simple_query("SELECT 1").await.is_err()
    })
    .await;
    // A new session listens again and gets what is sent from now.
    let (c, mut rx) = listener(&s).await;
    c.simple_query("LISTEN lst_lost").await.unwrap();
    s.app()
        .await
        .simple_query("NOTIFY lst_lost, 'again'")
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, pair("lst_lost", "again"));
}

/// Fifty listeners of a real driver, a pool of two servers.
async fn driver_listeners(kind: &'static str, program: &str, script: &str, channel: &str) {
    let s = pooled("transaction", 2, "default_application_name = \"drv pool\"").await;
    let url = format!(
        "postgresql://{}:{}@127.0.0.1:{}/{DB}",
        SCRAM_USER.0, SCRAM_USER.1, s.port
    );
    let direct = format!(
        "postgresql://postgres@127.0.0.1:{}/{DB}",
        Cluster::shared().primary.port
    );
    crate::harness::drivers::driver(kind, program, script, &[url, direct, channel.to_string()])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_listeners_get_every_notification_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    driver_listeners("python", "python3", "psycopg_listen.py", "drv_psycopg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_listeners_get_every_notification_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    driver_listeners("python", "python3", "asyncpg_listen.py", "drv_asyncpg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_listeners_get_every_notification_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    driver_listeners("node", "node", "node_listen.js", "drv_node").await;
}

/// A listener that never reads its socket is cut off once its backlog
/// passes max_notification_backlog; sluice does not buffer without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_never_reads_is_disconnected_with_a_clear_error() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = pooled("transaction", 2, "max_notification_backlog = \"64kB\"").await;
    let (mut w, _) = Wire::connect_small(s.port)
        .await
        .login_as(SCRAM_USER.0, SCRAM_USER.1, DB, &[])
        .await;
    w.send(&query("LISTEN lst_flood")).await;
    w.recv_until(b'Z').await;
    // Far more than the socket buffers and sluice's queue towards the
    // client hold: 2,000 notifications of 4 kB.
    let sender = s.app().await;
    let payload = "x".repeat(4000);
    for b in 0..20 {
        // (Distinct payloads: PostgreSQL sends a transaction's duplicates once.)
        let batch: Vec<String> = (0..100)
            .map(|i| format!("NOTIFY lst_flood, '{b} {i} {payload}'"))
            .collect();
        sender.batch_execute(&batch.join(";")).await.unwrap();
    }
    wait_until(20, "the dropped notifications to be counted", || async {
        s.shared
            .as_ref()
            .unwrap()
            .listens
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    })
    .await;
    // Now it reads: what was queued, then the reason, then the end.
    let mut error = None;
    while let Some(m) = w.recv().await {
        if m.tag == b'E' {
            error = Some((m.field(b'S'), m.field(b'C')));
        }
    }
    assert_eq!(
        error,
        Some((Some("FATAL".to_string()), Some("53400".to_string())))
    );
}
