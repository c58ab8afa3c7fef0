//! Statements a replica refuses although they read like reads (a function
//! whose body writes, nextval inside a function, functions only a primary
//! runs): sluice runs them on the primary, the client sees only the
//! primary's answer, and their next run goes to the primary directly.
//! Where each ran is proven from the servers themselves: the replica logs
//! every statement it refused (log_min_error_statement), and the rows the
//! functions insert on the primary count every run.

use crate::harness::sql::{first_value, value};
use crate::harness::{Cluster, DB, SCRAM_USER, Sluice, pooled, wait_until};

/// Functions and tables, named with `p`, created on the primary; returns
/// once the replica has them.
async fn create_functions(s: &Sluice, p: &str) {
    let c = s.app().await;
    c.batch_execute(&format!(
        "CREATE TABLE {p}_log (v int);
         CREATE SEQUENCE {p}_seq;
         CREATE FUNCTION {p}_insert(v int) RETURNS int LANGUAGE sql
             AS 'INSERT INTO {p}_log VALUES (v) RETURNING v';
         CREATE FUNCTION {p}_next() RETURNS bigint LANGUAGE sql
             AS 'SELECT nextval(''{p}_seq'')';
         CREATE FUNCTION {p}_rows(v int) RETURNS SETOF int LANGUAGE plpgsql
             AS $$ BEGIN INSERT INTO {p}_log VALUES (v); RETURN QUERY SELECT generate_series(1, 3); END $$;
         CREATE SCHEMA {p}s;
         CREATE FUNCTION {p}s.insert_one(v int) RETURNS int LANGUAGE sql
             AS 'INSERT INTO {p}_log VALUES (v) RETURNING v';
         CREATE FUNCTION {p}_where() RETURNS bool VOLATILE LANGUAGE sql
             AS 'SELECT pg_is_in_recovery()';
         CREATE FUNCTION {p}_count() RETURNS bigint STABLE LANGUAGE sql
             AS 'SELECT count(*) FROM {p}_log';"
    ))
    .await
    .unwrap();
    let replica = &Cluster::shared().replica;
    wait_until(20, "the functions to reach the replica", || async {
        replica.psql(
            DB,
            &format!("SELECT count(*) FROM pg_proc WHERE proname = '{p}_count'"),
        ) == "1"
    })
    .await;
}

/// Waits until `c`'s plain reads run on the replica: it is in rotation,
/// and has replayed the client's last write (read-your-writes).
async fn reads_on_replica(c: &tokio_postgres::Client) {
    wait_until(20, "reads to reach the replica", || async {
        value(c, "SELECT pg_is_in_recovery()").await.unwrap() == "t"
    })
    .await;
}

/// How many times the replica refused a statement with exactly `text`.
fn refused_on_replica(text: &str) -> usize {
    let needle = format!("STATEMENT:  {text}");
    Cluster::shared()
        .replica
        .log()
        .lines()
        .filter(|l| l.ends_with(&needle))
        .count()
}

/// Rows the functions inserted with `v`, read on the primary.
fn rows_with(p: &str, v: i32) -> String {
    Cluster::shared()
        .primary
        .psql(DB, &format!("SELECT count(*) FROM {p}_log WHERE v = {v}"))
}

fn topology(s: &Sluice) -> std::sync::Arc<sluice::route::Topology> {
    let shared = s.shared.as_ref().expect("shared");
    shared.routes.topology(DB).expect("app has replicas")
}

fn retries(s: &Sluice, reason: &str) -> u64 {
    topology(s)
        .route_retries()
        .iter()
        .filter(|(r, _)| *r == reason)
        .map(|(_, n)| n)
        .sum()
}

fn learned_decisions(s: &Sluice) -> u64 {
    topology(s)
        .decisions()
        .iter()
        .filter(|(d, r, _)| *d == "primary" && *r == "learned")
        .map(|(_, _, n)| n)
        .sum()
}

/// The retries and learnt decisions of one mode's run, in sluice's
/// counters, /metrics and SHOW ROUTING.
async fn counted(s: &Sluice, mode: &str) {
    assert_eq!(retries(s, "read_only"), 6, "{mode}");
    assert_eq!(retries(s, "recovery"), 2, "{mode}");
    assert_eq!(learned_decisions(s), 8, "{mode}: the second runs");
    // Counted where a DBA looks.
    let metrics = sluice::metrics::render(s.shared.as_ref().unwrap()).unwrap();
    assert!(
        metrics.contains(&format!(
            "sluice_route_retries_total{{database=\"{DB}\",reason=\"read_only\"}} 6"
        )),
        "{metrics}"
    );
    let (console, conn) = tokio_postgres::connect(
        &s.url(SCRAM_USER.0, SCRAM_USER.1, "pgbouncer"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let rows: Vec<Vec<String>> = console
        .simple_query("SHOW ROUTING")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..4).map(|i| r.get(i).unwrap_or("").to_string()).collect())
            }
            _ => None,
        })
        .collect();
    for want in [
        ["retried", "read_only", "6"],
        ["retried", "recovery", "2"],
        ["primary", "learned", "8"],
    ] {
        assert!(
            rows.iter().any(|r| r[0] == DB && r[1..] == want),
            "{mode}: SHOW ROUTING has {want:?}: {rows:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_a_replica_refuses_run_on_the_primary_and_are_learnt() {
    let p = "rr_moved";
    for (m, mode) in ["transaction", "statement"].into_iter().enumerate() {
        let s = pooled(mode, 4, &format!("stats_users = [\"{}\"]", SCRAM_USER.0)).await;
        if m == 0 {
            create_functions(&s, p).await;
        }
        let c = s.app().await;
        let v = |base: i32| base + i32::try_from(m).unwrap();
        // Simple protocol: each statement text with this mode's marker.
        // Each: its text, with this mode's marker, and the rows it returns
        // (its first value, when it is a known one).
        let simple = [
            (
                format!("SELECT {p}_insert({}) /* {mode} */", v(10)),
                1,
                Some(v(10)),
            ),
            (format!("SELECT {p}_next() /* {mode} */"), 1, None),
            (
                format!("SELECT * FROM {p}_rows({}) /* {mode} */", v(30)),
                3,
                Some(1),
            ),
            (
                format!("SELECT {p}s.insert_one({}) /* {mode} */", v(40)),
                1,
                Some(v(40)),
            ),
            (format!("SELECT pg_current_wal_lsn() /* {mode} */"), 1, None),
        ];
        for (sql, rows, first) in &simple {
            for run in 0..2 {
                reads_on_replica(&c).await;
                let r = c
                    .simple_query(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{mode}, run {run}: {sql}: {e}"));
                let got = r
                    .iter()
                    .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                    .count();
                assert_eq!(got, *rows, "{sql}");
                if let Some(f) = first {
                    assert_eq!(first_value(&r), Some(f.to_string()), "{sql}");
                }
            }
            assert_eq!(
                refused_on_replica(sql),
                1,
                "{mode}: {sql} was tried on the replica once, then went to the primary"
            );
        }
        // Extended protocol: prepared, with parameters.
        let extended = [
            format!("SELECT {p}_insert($1) /* {mode} ext */"),
            format!("SELECT {p}_next() + $1 /* {mode} ext */"),
            format!("SELECT pg_current_wal_lsn()::text || $1::int /* {mode} ext */"),
        ];
        reads_on_replica(&c).await;
        let insert = c.prepare(&extended[0]).await.unwrap();
        let next = c.prepare(&extended[1]).await.unwrap();
        let lsn = c.prepare(&extended[2]).await.unwrap();
        for _ in 0..2 {
            reads_on_replica(&c).await;
            let row = c.query_one(&insert, &[&v(20)]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), v(20));
            reads_on_replica(&c).await;
            let row = c.query_one(&next, &[&1i64]).await.unwrap();
            assert!(row.get::<_, i64>(0) > 1);
            reads_on_replica(&c).await;
            let row = c.query_one(&lsn, &[&7i32]).await.unwrap();
            assert!(row.get::<_, String>(0).contains('/'));
        }
        for sql in &extended {
            assert_eq!(refused_on_replica(sql), 1, "{mode}: {sql}");
        }
        // Each run ran once, on the primary: no run was lost or doubled.
        for base in [10, 20, 30, 40] {
            assert_eq!(rows_with(p, v(base)), "2", "{mode}: rows with {}", v(base));
        }
        counted(&s, mode).await;
        // The session goes on as on a direct connection.
        assert_eq!(value(&c, "SELECT 1").await.unwrap(), "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_cannot_move_reach_the_client_as_from_postgres() {
    let p = "rr_kept";
    let s = pooled("transaction", 4, "").await;
    create_functions(&s, p).await;
    let c = s.app().await;
    reads_on_replica(&c).await;
    let code = |e: tokio_postgres::Error| e.as_db_error().map(|d| d.code().code().to_string());

    // A read-only transaction the client began: PostgreSQL's own error.
    c.simple_query("BEGIN READ ONLY").await.unwrap();
    let e = c
        .simple_query(&format!("SELECT {p}_insert(50)"))
        .await
        .unwrap_err();
    let message = e.as_db_error().unwrap().message().to_string();
    assert_eq!(code(e).as_deref(), Some("25006"));
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(message, "cannot execute INSERT in a read-only transaction");
    assert_eq!(rows_with(p, 50), "0");

    // A read-write transaction runs on the primary from its start.
    c.simple_query("BEGIN").await.unwrap();
    let r = c
        .simple_query(&format!("SELECT pg_is_in_recovery(), {p}_insert(51)"))
        .await
        .unwrap();
    assert_eq!(first_value(&r).as_deref(), Some("f"));
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(rows_with(p, 51), "1");

    // Rows went out before the refusal: never run again, the client gets
    // the error; the statement is learnt, and its next run succeeds.
    let sent_rows = format!(
        "SELECT x, CASE WHEN x = 3 THEN {p}_insert(52) ELSE x END FROM generate_series(1, 5) x"
    );
    reads_on_replica(&c).await;
    let e = c.simple_query(&sent_rows).await.unwrap_err();
    assert_eq!(code(e).as_deref(), Some("25006"));
    assert_eq!(rows_with(p, 52), "0", "not replayed on the primary");
    let r = c.simple_query(&sent_rows).await.unwrap();
    assert_eq!(
        r.iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count(),
        5
    );
    assert_eq!(rows_with(p, 52), "1");

    // A multi-statement Query whose second statement is refused: the first
    // one's result went out, so the client gets the error.
    let two = format!("SELECT 1; SELECT {p}_insert(53)");
    reads_on_replica(&c).await;
    let e = c.simple_query(&two).await.unwrap_err();
    assert_eq!(code(e).as_deref(), Some("25006"));
    assert_eq!(rows_with(p, 53), "0");
    c.simple_query(&two).await.unwrap();
    assert_eq!(rows_with(p, 53), "1");
    assert_eq!(retries(&s, "read_only"), 0, "nothing here was moved");

    // Functions that only read stay on the replica, volatile or not.
    reads_on_replica(&c).await;
    assert_eq!(
        value(&c, &format!("SELECT {p}_where()")).await.unwrap(),
        "t"
    );
    let r = c
        .simple_query(&format!("SELECT pg_is_in_recovery(), {p}_count()"))
        .await
        .unwrap();
    assert_eq!(first_value(&r).as_deref(), Some("t"));
}

/// libpq's batches (Parse, Bind, Describe, Execute, Sync at once), unnamed
/// and prepared server-side, through psycopg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_calls_functions_that_write_as_on_a_direct_connection() {
    let p = "rr_psycopg";
    let s = pooled("transaction", 4, "").await;
    create_functions(&s, p).await;
    let url = format!(
        "postgresql://{}:{}@127.0.0.1:{}/{DB}",
        SCRAM_USER.0, SCRAM_USER.1, s.port
    );
    crate::harness::drivers::driver(
        "python",
        "python3",
        "psycopg_route_retry.py",
        &[url, p.to_string()],
    )
    .await;
    // The three texts were refused once each; the prepared runs of the
    // same texts, on a second connection, went to the primary directly.
    assert_eq!(retries(&s, "read_only"), 2);
    assert_eq!(retries(&s, "recovery"), 1);
    assert_eq!(refused_on_replica(&format!("SELECT {p}_insert($1)")), 1);
}

/// The types of the messages up to the next ReadyForQuery.
async fn tags_until_ready(w: &mut crate::harness::wire::Wire) -> String {
    w.recv_until(b'Z')
        .await
        .iter()
        .map(|m| m.tag as char)
        .collect()
}

/// asyncpg's way to prepare (Parse, Describe, Flush) leaves a batch open
/// on the replica; a write that follows in that batch runs on the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_a_flushed_prepare_runs_on_the_primary() {
    use crate::harness::wire::{Wire, message};
    let s = pooled("transaction", 4, "").await;
    let c = s.app().await;
    c.batch_execute("CREATE TABLE IF NOT EXISTS rr_flushed (v int)")
        .await
        .unwrap();
    reads_on_replica(&c).await;
    let parse = |name: &str, sql: &str| message(b'P', format!("{name}\0{sql}\0\0\0").as_bytes());
    let bind = |stmt: &str| message(b'B', format!("\0{stmt}\0\0\0\0\0\0\0").as_bytes());
    let execute = message(b'E', b"\0\0\0\0\0");
    let sync = message(b'S', b"");
    let on_replica = || {
        topology(&s)
            .decisions()
            .iter()
            .filter(|(d, _, _)| *d == "replica")
            .map(|(_, _, n)| n)
            .sum::<u64>()
    };
    let (mut w, _) = Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
    let before = on_replica();
    w.send(
        &[
            parse("r1", "SELECT pg_is_in_recovery()"),
            message(b'D', b"Sr1\0"),
            message(b'H', b""),
        ]
        .concat(),
    )
    .await;
    let mut got = String::new();
    while got.len() < 3 {
        got.push(w.recv().await.expect("replies to the Flush").tag as char);
    }
    assert_eq!(got, "1tT");
    assert_eq!(on_replica(), before + 1, "the prepare went to the replica");
    w.send(
        &[
            parse("", "INSERT INTO rr_flushed VALUES (7)"),
            bind(""),
            execute.clone(),
            sync.clone(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        tags_until_ready(&mut w).await,
        "12CZ",
        "the write ran, and the session goes on"
    );
    // The statement prepared on the replica runs where routing says.
    w.send(&[bind("r1"), execute, sync].concat()).await;
    assert_eq!(tags_until_ready(&mut w).await, "2DCZ");
    assert_eq!(
        Cluster::shared()
            .primary
            .psql(DB, "SELECT count(*) FROM rr_flushed WHERE v = 7"),
        "1"
    );
}
