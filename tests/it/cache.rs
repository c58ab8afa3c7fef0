//! The result cache against real PostgreSQL: hits byte for byte what
//! PostgreSQL sent, never an old answer once a write (from anywhere) was
//! applied from the WAL, a writer always reads its write, sessions with
//! other settings never share results, and faults turn the cache off
//! rather than stale.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice::cache::live::DbCache;

use crate::harness::sql::value;
use crate::harness::wire::{Msg, Wire, message, query};
use crate::harness::{Cluster, DB, SCRAM_USER, Sluice, config_for, wait_until};

/// The event trigger the README tells DBAs to create: DDL made outside
/// sluice reaches the cache's stream as a logical decoding message.
pub const DDL_TRIGGER: &str = "CREATE OR REPLACE FUNCTION sluice_cache_ddl() RETURNS event_trigger \
     LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_logical_emit_message(true, 'sluice_cache', tg_tag); END $$; \
     DROP EVENT TRIGGER IF EXISTS sluice_cache_ddl; \
     CREATE EVENT TRIGGER sluice_cache_ddl ON ddl_command_end EXECUTE FUNCTION sluice_cache_ddl()";

/// Creates `ddl`'s tables on `cluster`'s primary and a publication `p`
/// of `tables` (a FOR ALL TABLES one would make UPDATE and DELETE fail
/// on other tests' tables without a primary key).
fn publish(cluster: &Cluster, p: &str, ddl: &str, tables: &str) {
    cluster.primary.psql(DB, ddl);
    cluster
        .primary
        .psql(DB, &format!("CREATE PUBLICATION {p} FOR TABLE {tables}"));
}

/// sluice in transaction pooling with the cache on for `app`, its rules
/// `rules` (TOML after `[[databases.app.cache]]`), once its stream runs.
async fn cached(cluster: &Cluster, p: &str, rules: &str, general: &str) -> Sluice {
    let toml = config_for(
        cluster,
        &format!(
            "pool_mode = \"transaction\"\nmonitor_user = \"postgres\"\ncache_publication = \"{p}\"\n{general}"
        ),
        &format!("[users.postgres]\npassword = \"unused\"\n[[databases.{DB}.cache]]\n{rules}\n"),
    );
    let s = Sluice::start(&toml).await;
    wait_until(30, "the cache's stream to run", || async {
        let shared = s.shared.as_ref().expect("shared");
        shared.caches.get(DB).is_some_and(|c| c.streaming())
    })
    .await;
    s
}

fn cache(s: &Sluice) -> Arc<DbCache> {
    s.shared
        .as_ref()
        .expect("shared")
        .caches
        .get(DB)
        .expect("app has a cache")
}

fn hits(s: &Sluice) -> u64 {
    cache(s).counters.hits.load(Ordering::Relaxed)
}

fn stored(s: &Sluice) -> u64 {
    cache(s).counters.stored.load(Ordering::Relaxed)
}

/// Messages as bytes, as they came on the wire.
fn wire_bytes(msgs: &[Msg]) -> Vec<u8> {
    msgs.iter().flat_map(|m| message(m.tag, &m.body)).collect()
}

async fn exchange(w: &mut Wire, request: &[u8]) -> Vec<u8> {
    w.send(request).await;
    wire_bytes(&w.recv_until(b'Z').await)
}

fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = format!("{name}\0{sql}\0").into_bytes();
    b.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    message(b'P', &b)
}

/// Bind of `statement` to the unnamed portal: one int4 parameter in
/// binary, results in `result_format` (0 text, 1 binary).
fn bind_int(statement: &str, v: i32, result_format: u16) -> Vec<u8> {
    let mut b = format!("\0{statement}\0").into_bytes();
    b.extend_from_slice(&[0, 1, 0, 1, 0, 1]);
    b.extend_from_slice(&4i32.to_be_bytes());
    b.extend_from_slice(&v.to_be_bytes());
    b.extend_from_slice(&[0, 1]);
    b.extend_from_slice(&result_format.to_be_bytes());
    message(b'B', &b)
}

fn run_unnamed_portal() -> Vec<u8> {
    let mut v = message(b'D', b"P\0");
    v.extend(message(b'E', b"\0\0\0\0\0"));
    v.extend(message(b'S', b""));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_byte_for_byte_what_postgresql_sent() {
    let cluster = Cluster::shared();
    publish(
        cluster,
        "pub_cb",
        "CREATE TABLE cb_items (id int PRIMARY KEY, name text, price numeric, note text, data bytea);
         INSERT INTO cb_items SELECT i, 'item ' || i, i * 1.5, CASE WHEN i % 3 = 0 THEN NULL ELSE 'n' END,
             decode(md5(i::text), 'hex') FROM generate_series(1, 50) i;
         INSERT INTO cb_items VALUES (1000, 'big', 0, repeat('x', 300000), NULL);",
        "cb_items",
    );
    let s = cached(cluster, "pub_cb", "tables = [\"cb_items\"]\n", "").await;
    let (mut direct, _) = Wire::login(cluster.primary.port, "postgres", "", DB, &[]).await;
    let (mut through, _) = Wire::login(s.port, SCRAM_USER.0, SCRAM_USER.1, DB, &[]).await;
    let stmt = "SELECT id, name, price, note, data FROM cb_items WHERE id > $1 ORDER BY id";
    let batch = |name: &str, fmt: u16| {
        let mut v = parse(name, stmt, &[23]);
        v.extend(bind_int(name, 10, fmt));
        v.extend(run_unnamed_portal());
        v
    };
    let shapes: Vec<(&str, Vec<u8>)> = vec![
        (
            "rows and NULLs",
            query("SELECT id, name, price, note, data FROM cb_items WHERE id <= 50 ORDER BY id"),
        ),
        ("no rows", query("SELECT * FROM cb_items WHERE id = -1")),
        (
            "a large row",
            query("SELECT note FROM cb_items WHERE id = 1000"),
        ),
        ("extended, text", batch("", 0)),
        ("extended, binary", batch("", 1)),
    ];
    for (what, request) in shapes {
        let expected = exchange(&mut direct, &request).await;
        let before = hits(&s);
        let first = exchange(&mut through, &request).await;
        assert_eq!(
            first, expected,
            "{what}: through sluice, as PostgreSQL sent it"
        );
        // Once stored, the same request is answered by sluice itself.
        until_hit(&s, &mut through, &request, &expected, what, before).await;
    }
    // A named statement prepared once, then bound alone (tokio-postgres
    // and asyncpg do this): the hit is BindComplete, rows, CommandComplete.
    let mut prepare = parse("s1", stmt, &[23]);
    prepare.extend(message(b'S', b""));
    exchange(&mut direct, &prepare).await;
    exchange(&mut through, &prepare).await;
    let mut bound = bind_int("s1", 20, 1);
    bound.extend(message(b'E', b"\0\0\0\0\0"));
    bound.extend(message(b'S', b""));
    let expected = exchange(&mut direct, &bound).await;
    let before = hits(&s);
    until_hit(&s, &mut through, &bound, &expected, "bound", before).await;
}

/// Sends `request` until the cache answers it (more than `before` hits),
/// each reply checked against `expected`.
async fn until_hit(
    s: &Sluice,
    w: &mut Wire,
    request: &[u8],
    expected: &[u8],
    what: &str,
    before: u64,
) {
    let start = Instant::now();
    while hits(s) == before {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: never answered from the cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let again = exchange(w, request).await;
        assert_eq!(again, expected, "{what}: a hit or not, the same bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepared_statements_are_answered_from_the_cache() {
    let cluster = Cluster::shared();
    publish(
        cluster,
        "pub_ct",
        "CREATE TABLE ct_kv (k int PRIMARY KEY, v text); INSERT INTO ct_kv SELECT i, 'v' || i FROM generate_series(1, 10) i",
        "ct_kv",
    );
    let s = cached(cluster, "pub_ct", "", "").await;
    let c = s.app().await;
    let stmt = c.prepare("SELECT v FROM ct_kv WHERE k = $1").await.unwrap();
    let before = hits(&s);
    for round in 0..20 {
        for k in 1..=10 {
            let row = c.query_one(&stmt, &[&k]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), format!("v{k}"), "round {round}");
        }
    }
    assert!(
        hits(&s) - before >= 100,
        "most of 200 reads are hits: {}",
        hits(&s) - before
    );
    // A different parameter is a different key; an unknown one too.
    assert!(c.query_opt(&stmt, &[&99i32]).await.unwrap().is_none());
}

/// A connection straight to the primary, not through sluice.
async fn direct(cluster: &Cluster) -> tokio_postgres::Client {
    let url = format!(
        "host=127.0.0.1 port={} user=postgres dbname={DB}",
        cluster.primary.port
    );
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

/// The primary's WAL position now, and when the replica has replayed it.
async fn replica_has_replayed(cluster: &Cluster) {
    let lsn = cluster
        .primary
        .psql(DB, "SELECT pg_current_wal_insert_lsn()");
    wait_until(20, "the replica to replay the write", || async {
        cluster.replica.psql(
            DB,
            &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
        ) == "t"
    })
    .await;
}

/// sluice's stream has applied everything the primary has written.
async fn stream_has_applied(cluster: &Cluster, s: &Sluice) {
    let lsn = cluster
        .primary
        .psql(DB, "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn");
    let lsn: u64 = lsn.parse().expect("an lsn");
    wait_until(20, "sluice's stream to apply the write", || async {
        cache(s).position().0 >= lsn
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_anywhere_is_never_followed_by_a_cached_old_answer() {
    let cluster = Cluster::shared();
    publish(
        cluster,
        "pub_cf",
        "CREATE TABLE cf_kv (k int PRIMARY KEY, v int); INSERT INTO cf_kv VALUES (1, 0);
         CREATE TABLE cf_log (x int PRIMARY KEY);
         CREATE FUNCTION cf_bump(n int) RETURNS int LANGUAGE sql AS 'UPDATE cf_kv SET v = n WHERE k = 1 RETURNING v';",
        "cf_kv, cf_log",
    );
    let s = cached(cluster, "pub_cf", "tables = [\"cf_kv\"]\n", "").await;
    let reader = s.app().await;
    let read = "SELECT v FROM cf_kv WHERE k = 1";
    // Straight to PostgreSQL, as a migration or cron job writes, with
    // commits flushed at once (the test cluster's default is off).
    let direct = direct(cluster).await;
    direct
        .batch_execute("SET synchronous_commit = on")
        .await
        .unwrap();
    let mut delays = Vec::new();
    for i in 1..=40 {
        // Cached first.
        let before = hits(&s);
        wait_until(20, "the read to be cached", || async {
            value(&reader, read).await.unwrap();
            hits(&s) > before
        })
        .await;
        let invalidated = cache(&s).counters.invalidated.load(Ordering::Relaxed);
        // A write straight to PostgreSQL, as a migration or cron job does.
        let write = match i % 4 {
            0 => format!("UPDATE cf_kv SET v = {i} WHERE k = 1"),
            1 => format!("DELETE FROM cf_kv; INSERT INTO cf_kv VALUES (1, {i})"),
            2 => format!("BEGIN; TRUNCATE cf_kv; INSERT INTO cf_kv VALUES (1, {i}); COMMIT"),
            _ => format!(
                "INSERT INTO cf_kv VALUES (1, {i}) ON CONFLICT (k) DO UPDATE SET v = excluded.v"
            ),
        };
        direct.batch_execute(&write).await.unwrap();
        let written = Instant::now();
        while cache(&s).counters.invalidated.load(Ordering::Relaxed) == invalidated {
            assert!(
                written.elapsed() < Duration::from_secs(20),
                "the entry is dropped"
            );
            // Not a sleep: tokio's timer ticks in milliseconds.
            tokio::task::yield_now().await;
        }
        delays.push(written.elapsed());
        stream_has_applied(cluster, &s).await;
        replica_has_replayed(cluster).await;
        assert_eq!(
            value(&reader, read).await.unwrap(),
            i.to_string(),
            "write {i}: {write}"
        );
    }
    delays.sort();
    eprintln!(
        "invalidation delay (write on the primary to entry dropped): p50 {:?}, p99 {:?}, max {:?}",
        delays[delays.len() / 2],
        delays[delays.len() * 99 / 100],
        delays[delays.len() - 1]
    );
    // A write that rolls back changes nothing: the cached answer stands.
    cluster
        .primary
        .psql(DB, "BEGIN; UPDATE cf_kv SET v = -1; ROLLBACK");
    assert_eq!(value(&reader, read).await.unwrap(), "40");
    // A write in a function a SELECT calls (through sluice, or not).
    value(&reader, "SELECT cf_bump(77)").await.unwrap();
    stream_has_applied(cluster, &s).await;
    replica_has_replayed(cluster).await;
    assert_eq!(value(&reader, read).await.unwrap(), "77");
}

/// A read until it is answered from the cache, returning its rows' first
/// column (a hit, checked by the hit counter).
async fn cached_rows(s: &Sluice, c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let start = Instant::now();
    loop {
        let before = hits(s);
        let got: Vec<String> = c
            .simple_query(sql)
            .await
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        if hits(s) > before {
            return got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{sql}: never answered from the cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_by_key_outlives_writes_to_other_rows_and_never_its_own() {
    let cluster = Cluster::shared();
    publish(
        cluster,
        "pub_rk",
        "CREATE TABLE rk_kv (id int PRIMARY KEY, v int); \
         INSERT INTO rk_kv SELECT i, i * 10 FROM generate_series(1, 10) i",
        "rk_kv",
    );
    let s = cached(cluster, "pub_rk", "tables = [\"rk_kv\"]\n", "").await;
    let c = s.app().await;
    let direct = direct(cluster).await;
    direct
        .batch_execute("SET synchronous_commit = on")
        .await
        .unwrap();
    let settled = async || {
        stream_has_applied(cluster, &s).await;
        replica_has_replayed(cluster).await;
    };
    // A first change shows the stream rk_kv's identity (id, int4).
    direct
        .batch_execute("UPDATE rk_kv SET v = 100 WHERE id = 10")
        .await
        .unwrap();
    settled().await;
    let by_id = |id: i32| format!("SELECT v FROM rk_kv WHERE id = {id}");
    assert_eq!(cached_rows(&s, &c, &by_id(1)).await, ["10"]);
    assert_eq!(cached_rows(&s, &c, &by_id(20)).await, Vec::<String>::new());
    assert_eq!(cached_rows(&s, &c, &by_id(4)).await, ["40"]);
    let all = "SELECT count(*) FROM rk_kv";
    assert_eq!(cached_rows(&s, &c, all).await, ["10"]);
    // tokio-postgres binds its int4 parameter in binary.
    let stmt = c
        .prepare("SELECT v FROM rk_kv WHERE id = $1")
        .await
        .unwrap();
    let prepared = async |id: i32| {
        c.query_opt(&stmt, &[&id])
            .await
            .unwrap()
            .map(|r| r.get::<_, i32>(0))
    };
    let before = hits(&s);
    wait_until(20, "the prepared read to be cached", || async {
        prepared(2).await == Some(20) && hits(&s) > before
    })
    .await;

    // Another row changes: reads of rows 1, 2, 4 and 20 stay cached; the
    // read of every row does not.
    direct
        .batch_execute("UPDATE rk_kv SET v = 33 WHERE id = 3")
        .await
        .unwrap();
    settled().await;
    let invalidated = cache(&s).counters.invalidated.load(Ordering::Relaxed);
    let before = hits(&s);
    assert_eq!(value(&c, &by_id(1)).await.unwrap(), "10");
    assert_eq!(prepared(2).await, Some(20));
    assert_eq!(hits(&s) - before, 2, "both still answered from the cache");
    assert_eq!(value(&c, all).await.unwrap(), "10");
    assert_eq!(hits(&s) - before, 2, "the count went to a server");
    assert_eq!(
        cache(&s).counters.invalidated.load(Ordering::Relaxed),
        invalidated
    );

    // Its own row: the new value, whoever wrote it.
    direct
        .batch_execute("UPDATE rk_kv SET v = 11 WHERE id = 1")
        .await
        .unwrap();
    settled().await;
    assert_eq!(value(&c, &by_id(1)).await.unwrap(), "11");
    // A key that moves: both the old and the new key's reads are dropped.
    direct
        .batch_execute("UPDATE rk_kv SET id = 20 WHERE id = 4")
        .await
        .unwrap();
    settled().await;
    assert_eq!(value(&c, &by_id(20)).await.unwrap(), "40");
    assert!(
        c.simple_query(&by_id(4)).await.unwrap().len() == 2,
        "no row: only RowDescription and CommandComplete"
    );
    // DELETE, INSERT, and a write through sluice itself.
    direct
        .batch_execute("DELETE FROM rk_kv WHERE id = 2")
        .await
        .unwrap();
    settled().await;
    assert_eq!(prepared(2).await, None);
    c.batch_execute("INSERT INTO rk_kv VALUES (2, 22)")
        .await
        .unwrap();
    assert_eq!(prepared(2).await, Some(22), "the writer reads its write");
    // TRUNCATE drops every row's read.
    assert_eq!(cached_rows(&s, &c, &by_id(1)).await, ["11"]);
    direct.batch_execute("TRUNCATE rk_kv").await.unwrap();
    settled().await;
    assert!(c.query_opt(&stmt, &[&1i32]).await.unwrap().is_none());
    assert_eq!(c.simple_query(&by_id(1)).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_reads_its_write_at_once_with_a_slow_replica() {
    let cluster = Cluster::start_with_replica_conf("recovery_min_apply_delay = '500ms'");
    publish(
        &cluster,
        "pub_cw",
        "CREATE TABLE cw_kv (k int PRIMARY KEY, v int); INSERT INTO cw_kv VALUES (1, 0);",
        "cw_kv",
    );
    replica_has_replayed(&cluster).await;
    let s = cached(
        &cluster,
        "pub_cw",
        "tables = [\"cw_kv\"]\n",
        "max_replica_lag = \"10s\"",
    )
    .await;
    let writer = s.app().await;
    let other = s.app().await;
    let read = "SELECT v FROM cw_kv WHERE k = 1";
    for i in 1..=500 {
        // Someone else keeps the entry cached between the writes.
        value(&other, read).await.unwrap();
        writer
            .simple_query(&format!("UPDATE cw_kv SET v = {i} WHERE k = 1"))
            .await
            .unwrap();
        assert_eq!(
            value(&writer, read).await.unwrap(),
            i.to_string(),
            "iteration {i}"
        );
    }
    assert!(stored(&s) > 0, "the cache took part");
    assert!(hits(&s) > 0, "the cache took part: {} hits", hits(&s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_with_other_settings_never_share_results() {
    let cluster = Cluster::shared();
    publish(
        cluster,
        "pub_ck",
        "CREATE SCHEMA ck_a; CREATE SCHEMA ck_b;
         CREATE TABLE ck_a.ck_t (id int PRIMARY KEY, v text); INSERT INTO ck_a.ck_t VALUES (1, 'a');
         CREATE TABLE ck_b.ck_t (id int PRIMARY KEY, v text); INSERT INTO ck_b.ck_t VALUES (1, 'b');
         CREATE TABLE ck_ts (id int PRIMARY KEY, at timestamptz); INSERT INTO ck_ts VALUES (1, '2026-01-01 12:00:00+00');
         CREATE ROLE ck_nobody NOLOGIN;",
        "ck_a.ck_t, ck_b.ck_t, ck_ts",
    );
    let s = cached(cluster, "pub_ck", "", "").await;
    let a = s.app().await;
    let b = s.app().await;
    a.batch_execute("SET search_path = ck_a").await.unwrap();
    b.batch_execute("SET search_path = ck_b").await.unwrap();
    a.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    b.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    let ts = "SELECT at::text FROM public.ck_ts WHERE id = 1";
    for _ in 0..20 {
        assert_eq!(
            value(&a, "SELECT v FROM ck_t WHERE id = 1").await.unwrap(),
            "a"
        );
        assert_eq!(
            value(&b, "SELECT v FROM ck_t WHERE id = 1").await.unwrap(),
            "b"
        );
        assert_eq!(value(&a, ts).await.unwrap(), "2026-01-01 12:00:00+00");
        assert_eq!(value(&b, ts).await.unwrap(), "2026-01-01 21:00:00+09");
    }
    assert!(hits(&s) > 0, "the reads were cached");
    // A role that may not read the table gets PostgreSQL's refusal, not
    // rows someone else read.
    let c = s.app().await;
    c.batch_execute("SET ROLE ck_nobody").await.unwrap();
    let e = c.simple_query(ts).await.expect_err("no privilege");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_never_cached() {
    let cluster = Cluster::shared();
    publish(
        cluster,
        "pub_cn",
        "CREATE TABLE cn_t (id int PRIMARY KEY, v text); INSERT INTO cn_t VALUES (1, 'x');
         CREATE TABLE cn_unpublished (id int PRIMARY KEY); CREATE VIEW cn_view AS SELECT * FROM cn_t;
         INSERT INTO cn_t SELECT i, repeat('y', 5000) FROM generate_series(2, 400) i;
         CREATE TABLE cn_parent (id int PRIMARY KEY); CREATE TABLE cn_child () INHERITS (cn_parent);",
        "cn_t, cn_parent, cn_child",
    );
    let s = cached(cluster, "pub_cn", "max_entry_size = \"64kB\"\n", "").await;
    let c = s.app().await;
    for sql in [
        "SELECT now(), v FROM cn_t WHERE id = 1",
        "SELECT random() FROM cn_t",
        "SELECT v FROM cn_t WHERE id = 1 FOR UPDATE",
        "SELECT * FROM cn_unpublished",
        "SELECT * FROM cn_view",
        // Its children's changes come under their names.
        "SELECT * FROM cn_parent",
        "SELECT * FROM pg_class LIMIT 1",
        "/* sluice:nocache */ SELECT v FROM cn_t WHERE id = 1",
        "SELECT current_user, v FROM cn_t",
    ] {
        for _ in 0..3 {
            c.simple_query(sql).await.unwrap();
        }
        assert_eq!(hits(&s), 0, "{sql}");
    }
    // Larger than max_entry_size: passed through whole, not stored.
    for _ in 0..3 {
        let rows = c
            .simple_query("SELECT v FROM cn_t ORDER BY id")
            .await
            .unwrap();
        let rows = rows
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        assert_eq!(rows, 400);
    }
    assert_eq!(hits(&s), 0);
    assert_eq!(stored(&s), 0);
    // A temporary table of the same name: the client is pinned, and reads
    // its own table, never the cache.
    c.simple_query("SELECT v FROM cn_t WHERE id = 1")
        .await
        .unwrap();
    wait_until(10, "a hit", || async {
        c.simple_query("SELECT v FROM cn_t WHERE id = 1")
            .await
            .unwrap();
        hits(&s) > 0
    })
    .await;
    c.batch_execute("CREATE TEMP TABLE cn_t (id int, v text); INSERT INTO cn_t VALUES (1, 'mine')")
        .await
        .unwrap();
    assert_eq!(
        value(&c, "SELECT v FROM cn_t WHERE id = 1").await.unwrap(),
        "mine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_empties_the_cache_whoever_runs_it() {
    let cluster = Cluster::shared();
    cluster.primary.psql(DB, DDL_TRIGGER);
    publish(
        cluster,
        "pub_cd",
        "CREATE TABLE cd_t (id int PRIMARY KEY, v text); INSERT INTO cd_t VALUES (1, 'x');",
        "cd_t",
    );
    let s = cached(cluster, "pub_cd", "", "").await;
    let c = s.app().await;
    let read = async |c: &tokio_postgres::Client| {
        let rows = c
            .simple_query("SELECT * FROM cd_t WHERE id = 1")
            .await
            .unwrap();
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.len()),
                _ => None,
            })
            .unwrap_or_default()
    };
    let before = hits(&s);
    wait_until(20, "a hit", || async {
        read(&c).await == 2 && hits(&s) > before
    })
    .await;
    // Straight to PostgreSQL, no row changed: the event trigger's message.
    cluster
        .primary
        .psql(DB, "ALTER TABLE cd_t ADD COLUMN w int");
    stream_has_applied(cluster, &s).await;
    replica_has_replayed(cluster).await;
    assert_eq!(read(&c).await, 3, "the new column is seen");
    wait_until(20, "caching again", || async {
        let before = hits(&s);
        read(&c).await == 3 && hits(&s) > before
    })
    .await;
    // Through sluice: emptied at its commit.
    c.batch_execute("ALTER TABLE cd_t ADD COLUMN z int")
        .await
        .unwrap();
    replica_has_replayed(cluster).await;
    assert_eq!(read(&c).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_turn_the_cache_off_never_stale() {
    let cluster = Cluster::start();
    publish(
        &cluster,
        "pub_cx",
        "CREATE TABLE cx_kv (k int PRIMARY KEY, v int); INSERT INTO cx_kv VALUES (1, 0);",
        "cx_kv",
    );
    let s = cached(&cluster, "pub_cx", "", "").await;
    let c = s.app().await;
    let read = "SELECT v FROM cx_kv WHERE k = 1";
    let cached_now = async |want: &str| {
        wait_until(30, "the read to be cached", || async {
            let before = hits(&s);
            value(&c, read).await.unwrap_or_default() == want && hits(&s) > before
        })
        .await;
    };
    cached_now("0").await;
    // The replication connection killed, and a write while it is down.
    let killed = cluster.primary.psql(
        DB,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'sluice cache'",
    );
    assert_eq!(killed, "1");
    cluster.primary.psql(DB, "UPDATE cx_kv SET v = 1");
    replica_has_replayed(&cluster).await;
    assert_eq!(
        value(&c, read).await.unwrap(),
        "1",
        "no stale answer after the loss"
    );
    wait_until(30, "the stream back", || async { cache(&s).streaming() }).await;
    cached_now("1").await;
    // The primary restarted: everything cached goes, then comes back.
    cluster.primary.restart("fast");
    cluster.primary.psql(DB, "UPDATE cx_kv SET v = 2");
    replica_has_replayed(&cluster).await;
    wait_until(30, "reads to work again", || async {
        value(&c, read).await.is_ok_and(|v| v == "2")
    })
    .await;
    wait_until(30, "the stream back", || async { cache(&s).streaming() }).await;
    cached_now("2").await;
    // No publication: one clear reason, reads still work.
    cluster.primary.psql(DB, "DROP PUBLICATION pub_cx");
    cluster.primary.psql(
        DB,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sluice cache'",
    );
    cluster.primary.psql(DB, "UPDATE cx_kv SET v = 3");
    replica_has_replayed(&cluster).await;
    wait_until(30, "the cache to say why it is off", || async {
        let c = cache(&s);
        let t = c.trouble.lock().unwrap().clone();
        !c.streaming() && t.is_some_and(|t| t.contains("pub_cx"))
    })
    .await;
    assert_eq!(value(&c, read).await.unwrap(), "3");
    let body = sluice::metrics::render(s.shared.as_ref().unwrap()).unwrap();
    assert!(
        body.contains("sluice_cache_stream_up{database=\"app\"} 0"),
        "{body}"
    );
}
