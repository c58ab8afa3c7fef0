//! Issue #24: what an attack and fault run found. Each test failed before
//! its fix.

use crate::harness::wire::{Msg, message, query};
use crate::harness::{AppSetting, Cluster, DB, SCRAM_USER, Sluice, Wire, config_for};

async fn logged_in(s: &Sluice) -> Wire {
    let (w, msgs) = Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
    assert_eq!(msgs.last().map(|m| m.tag), Some(b'Z'), "{msgs:?}");
    w
}

/// The first column of the first DataRow among `msgs`, as text.
fn first_value(msgs: &[Msg]) -> String {
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    let len = i32::from_be_bytes(row.body[2..6].try_into().unwrap()) as usize;
    String::from_utf8_lossy(&row.body[6..6 + len]).into_owned()
}

async fn backend_pid(w: &mut Wire) -> String {
    w.send(&query("SELECT pg_backend_pid()")).await;
    first_value(&w.recv_until(b'Z').await)
}

/// The ErrorResponse that ends a session, and then the close.
async fn expect_fatal(w: &mut Wire, sqlstate: &str, words: &str) {
    let m = w.recv().await.expect("an ErrorResponse before close");
    assert_eq!(m.tag, b'E', "{m:?}");
    assert_eq!(m.field(b'V').as_deref(), Some("FATAL"), "{m:?}");
    assert_eq!(m.field(b'C').as_deref(), Some(sqlstate), "{m:?}");
    let said = m.field(b'M').unwrap_or_default();
    assert!(said.contains(words), "{said:?} lacks {words:?}");
    assert!(w.recv().await.is_none(), "closed after the error");
}

/// A message type the protocol does not have is refused by sluice with
/// PostgreSQL's own FATAL, and never reaches the server: the one server of
/// the pool (same backend pid) serves on. Before, it went to PostgreSQL,
/// whose FATAL cost a backend per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_cost_the_client_and_not_a_server() {
    for mode in ["transaction", "session"] {
        let general = format!("pool_mode = \"{mode}\"");
        let toml = config_for(Cluster::shared(), &general, "").app_setting("pool_size = 1");
        let s = Sluice::start(&toml).await;
        let pid = backend_pid(&mut logged_in(&s).await).await;

        // An unknown type as the first message, and a zero type byte.
        for tag in [b'z', 0u8] {
            let mut w = logged_in(&s).await;
            w.send(&message(tag, b"hello")).await;
            expect_fatal(
                &mut w,
                "08P01",
                &format!("invalid frontend message type {tag}"),
            )
            .await;
        }
        // Behind a query in the same write: the query is answered first.
        let mut w = logged_in(&s).await;
        let mut bytes = query("SELECT 41 + 1");
        bytes.extend_from_slice(&message(b'z', b""));
        w.send(&bytes).await;
        assert_eq!(first_value(&w.recv_until(b'Z').await), "42");
        expect_fatal(&mut w, "08P01", "invalid frontend message type 122").await;
        // A password message is login-only; inside a transaction block, the
        // transaction is rolled back and the server kept.
        let mut w = logged_in(&s).await;
        w.send(&query("BEGIN")).await;
        w.recv_until(b'Z').await;
        w.send(&message(b'p', b"secret\0")).await;
        expect_fatal(&mut w, "08P01", "invalid frontend message type 112").await;

        let mut w = logged_in(&s).await;
        assert_eq!(
            backend_pid(&mut w).await,
            pid,
            "{mode}: the server was reused"
        );
        drop(w);

        // After half a batch (Parse, no Sync) only the client could end
        // it: refused at once, and sluice goes on serving.
        let mut w = logged_in(&s).await;
        let mut bytes = message(b'P', b"\0SELECT 1\0\0\0");
        bytes.extend_from_slice(&message(b'z', b""));
        w.send(&bytes).await;
        expect_fatal(&mut w, "08P01", "invalid frontend message type 122").await;
        let mut w = logged_in(&s).await;
        w.send(&query("SELECT 7")).await;
        assert_eq!(first_value(&w.recv_until(b'Z').await), "7");
    }
}

/// libpq writes all of a query before it reads a reply. Sluice refuses an
/// oversized one from its header and reads the rest before closing, so
/// psql prints sluice's 08P01 instead of "server closed the connection
/// unexpectedly" with no SQLSTATE (the end-of-file reached libpq while it
/// was still writing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_reads_why_its_oversized_query_was_refused() {
    let s = Sluice::with(Cluster::shared(), "max_packet_size = \"64kB\"").await;
    let dir = tempdir();
    let file = dir.join("big.sql");
    let mut sql = String::from("SELECT length('");
    sql.push_str(&"x".repeat(40 << 20));
    sql.push_str("');\n");
    std::fs::write(&file, sql).unwrap();
    let mut psql = std::process::Command::new(crate::harness::cluster::pg_bin("psql"));
    psql.arg(s.url(SCRAM_USER.0, SCRAM_USER.1, DB))
        .args(["-X", "-v", "VERBOSITY=verbose", "-f"])
        .arg(&file);
    let out = tokio::task::spawn_blocking(move || psql.output())
        .await
        .unwrap()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("FATAL:  08P01: invalid message: message length"),
        "{said}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-hardening-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A wrong-password login from `source`: its SQLSTATE.
async fn guess_from(source: &'static str, port: u16, password: &'static str) -> String {
    let (_, msgs) = Wire::connect_from(source, port)
        .await
        .login_as(SCRAM_USER.0, password, DB, &[])
        .await;
    let last = msgs.last().expect("an answer");
    match last.tag {
        b'Z' => "ok".into(),
        _ => last.field(b'C').unwrap_or_default(),
    }
}

/// Attempts count against the limit when they begin: of 250 wrong
/// passwords sent at once with a limit of 20, exactly 20 are checked
/// (28P01) and the rest refused (28000). Before, the check came before the
/// count and 25 got through. Good logins at once from one address wait
/// for room and all get in; an exempt address is never throttled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_throttle_counts_attempts_in_progress() {
    // md5 keeps 290 logins cheap for the test's own debug-built client.
    let general = "auth_type = \"md5\"\nauth_failure_limit = 20\nauth_failure_window = \"60s\"\nmax_client_conn = 1000\n\
                   auth_throttle_exempt = [\"127.0.0.5\", \"127.0.6.0/24\"]";
    let s = Sluice::with(Cluster::shared(), general).await;
    let guesses: Vec<_> = (0..250)
        .map(|_| tokio::spawn(guess_from("127.0.0.3", s.port, "guess")))
        .collect();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for g in guesses {
        *outcomes.entry(g.await.unwrap()).or_default() += 1;
    }
    assert_eq!(
        outcomes,
        [("28000".to_string(), 230), ("28P01".to_string(), 20)].into(),
        "checked and refused"
    );

    // 40 good logins at once from one address, past a limit of 20: all in.
    let logins: Vec<_> = (0..40)
        .map(|_| tokio::spawn(guess_from("127.0.0.4", s.port, SCRAM_USER.1)))
        .collect();
    for l in logins {
        assert_eq!(l.await.unwrap(), "ok");
    }

    // Exempt addresses, alone and in a range: 30 failures, then still in.
    for source in ["127.0.0.5", "127.0.6.9"] {
        for _ in 0..30 {
            assert_eq!(guess_from(source, s.port, "guess").await, "28P01");
        }
        assert_eq!(guess_from(source, s.port, SCRAM_USER.1).await, "ok");
    }
}

/// At max_client_conn, admin_users and stats_users still reach the console
/// through admin_reserved_connections places, so an operator can see why
/// the pooler is full. Everyone else still gets 53300.
/// Before, the operator was refused like everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_reach_the_console_when_the_pooler_is_full() {
    use crate::harness::{MD5_USER, PLAIN_USER};
    let general = format!(
        "max_client_conn = 1\nadmin_reserved_connections = 2\n\
         admin_users = [\"{}\"]\nstats_users = [\"{}\"]",
        SCRAM_USER.0, MD5_USER.0
    );
    let s = Sluice::start(&config_for(Cluster::shared(), &general, "")).await;
    let connect = |user: (&'static str, &'static str), db: &'static str| {
        let url = s.url(user.0, user.1, db);
        async move { tokio_postgres::connect(&url, tokio_postgres::NoTls).await }
    };
    let code = |r: Result<_, tokio_postgres::Error>| {
        r.err()
            .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()))
    };
    let (app, conn) = connect(PLAIN_USER, DB).await.expect("the one place");
    tokio::spawn(conn);
    assert_eq!(
        code(connect(SCRAM_USER, DB).await).as_deref(),
        Some("53300")
    );
    // The console is not for other users, full or not.
    assert_eq!(
        code(connect(PLAIN_USER, "pgbouncer").await).as_deref(),
        Some("3D000"),
    );

    let (admin, conn) = connect(SCRAM_USER, "pgbouncer")
        .await
        .expect("admin gets in");
    tokio::spawn(conn);
    let pools = admin.simple_query("SHOW POOLS").await.expect("SHOW POOLS");
    assert!(pools.len() > 1, "{}", pools.len());
    let (_stats, conn) = connect(MD5_USER, "pgbouncer")
        .await
        .expect("stats user gets in");
    tokio::spawn(conn);
    assert_eq!(
        code(connect(SCRAM_USER, "pgbouncer").await).as_deref(),
        Some("53300"),
        "both reserved places are taken"
    );
    drop(app);
}

/// The value of the metric line starting with `name{labels}`, if any.
fn metric(shared: &sluice::app::Shared, line_start: &str) -> Option<f64> {
    let text = sluice::metrics::render(shared).unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A replica that stops answering (SIGSTOP; a partition looks the same):
/// reads already sent to it run on the primary once the monitor finds it
/// silent (replica_read_timeout, 1 s), and the client sees only the
/// primary's answer. A read inside a transaction cannot move: it ends
/// with 08006 instead of hanging. Before, reads hung as long as the
/// replica was frozen (10 s in the attack run) and the monitor took 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_a_frozen_replica_run_on_the_primary() {
    use crate::harness::sql::value;
    let cluster = Cluster::start();
    let toml = config_for(&cluster, "pool_mode = \"transaction\"", "").app_setting("pool_size = 2");
    let s = Sluice::start(&toml).await;
    let shared = s.shared.clone().unwrap();
    let (replica, primary) = (
        cluster.replica.port.to_string(),
        cluster.primary.port.to_string(),
    );
    let c = s.app().await;
    let in_tx = s.app().await;
    // The transaction holds one replica server; the reads after it leave
    // another idle, which the first read after the freeze is sent to.
    crate::harness::wait_until(20, "a transaction on the replica", || async {
        in_tx.batch_execute("BEGIN READ ONLY").await.unwrap();
        let on = value(&in_tx, "SELECT inet_server_port()").await.unwrap();
        if on != replica {
            in_tx.batch_execute("COMMIT").await.unwrap();
        }
        on == replica
    })
    .await;
    crate::harness::wait_until(20, "reads on the replica", || async {
        value(&c, "SELECT inet_server_port()")
            .await
            .is_ok_and(|p| p == replica)
    })
    .await;

    let frozen = cluster.replica.freeze();
    // Simple protocol: sent to the replica (the monitor heard from it
    // milliseconds ago), answered by the primary.
    assert_eq!(
        value(&c, "SELECT inet_server_port()").await.unwrap(),
        primary
    );
    // The transaction's next read has nowhere to go.
    let e = in_tx
        .simple_query("SELECT 1")
        .await
        .err()
        .expect("the transaction's read fails");
    assert_eq!(code(&e), Some("08006"), "{e}");
    // Extended protocol, with a parameter: the primary while it is frozen.
    let row = c
        .query_one("SELECT inet_server_port()::text, $1::int", &[&7i32])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        (primary.clone(), 7)
    );
    let labels = format!("{{database=\"{DB}\",replica=\"127.0.0.1:{replica}\"}}");
    assert_eq!(
        metric(
            &shared,
            &format!("sluice_replica_read_retries_total{labels}")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&shared, &format!("sluice_replica_in_rotation{labels}")),
        Some(0.0)
    );
    drop(frozen);
    crate::harness::wait_until(20, "reads on the replica again", || async {
        value(&c, "SELECT inet_server_port()")
            .await
            .is_ok_and(|p| p == replica)
    })
    .await;
}

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// A promoted replica is reported as such (sluice_replica_promoted, the
/// role "promoted" in SHOW POOLS, "(promoted)" in SHOW DATABASES), its
/// pooled servers are closed, and no growing lag is reported for it.
/// Before, its lag grew and its servers stayed, labelled replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_is_reported_and_its_servers_closed() {
    use crate::harness::sql::value;
    let cluster = Cluster::start();
    let general = format!(
        "pool_mode = \"transaction\"\nadmin_users = [\"{}\"]",
        SCRAM_USER.0
    );
    let toml = config_for(&cluster, &general, "").app_setting("pool_size = 2");
    let s = Sluice::start(&toml).await;
    let shared = s.shared.clone().unwrap();
    let replica = cluster.replica.port.to_string();
    let c = s.app().await;
    crate::harness::wait_until(20, "reads on the replica", || async {
        value(&c, "SELECT inet_server_port()")
            .await
            .is_ok_and(|p| p == replica)
    })
    .await;
    let labels = format!("{{database=\"{DB}\",replica=\"127.0.0.1:{replica}\"}}");
    assert_eq!(
        metric(&shared, &format!("sluice_replica_promoted{labels}")),
        Some(0.0)
    );
    let replica_servers = || {
        shared
            .pools
            .of(Some(DB))
            .iter()
            .filter(|(k, _)| k.role != sluice::route::Target::Primary)
            .map(|(_, p)| p.status().size)
            .sum::<usize>()
    };
    assert!(replica_servers() > 0);

    cluster.replica.promote();
    crate::harness::wait_until(20, "the promotion reported", || async {
        metric(&shared, &format!("sluice_replica_promoted{labels}")) == Some(1.0)
    })
    .await;
    crate::harness::wait_until(10, "its servers closed", || async {
        replica_servers() == 0
    })
    .await;
    // Writes on the primary that it will never replay: no lag for it.
    cluster.primary.psql(DB, "CREATE TABLE promoted_gone (x int); INSERT INTO promoted_gone SELECT generate_series(1, 1000)");
    assert_eq!(
        value(&c, "SELECT inet_server_port()").await.unwrap(),
        cluster.primary.port.to_string()
    );
    assert_eq!(
        metric(&shared, &format!("sluice_replica_lag_bytes{labels}")),
        Some(0.0)
    );
    let console = s.url(SCRAM_USER.0, SCRAM_USER.1, "pgbouncer");
    let (admin, conn) = tokio_postgres::connect(&console, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = admin.simple_query("SHOW POOLS").await.unwrap();
    let roles: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("role").map(String::from),
            _ => None,
        })
        .collect();
    assert!(roles.iter().any(|r| r == "promoted"), "{roles:?}");
    let rows = admin.simple_query("SHOW DATABASES").await.unwrap();
    let listed = rows.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => {
            r.get("replicas").is_some_and(|v| v.contains("(promoted)"))
        }
        _ => false,
    });
    assert!(listed, "SHOW DATABASES names it promoted");
}
