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
            expect_fatal(&mut w, "08P01", &format!("invalid frontend message type {tag}")).await;
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
        assert_eq!(backend_pid(&mut w).await, pid, "{mode}: the server was reused");
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
