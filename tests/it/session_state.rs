//! Transaction pooling keeps every client's session state its own, however
//! the state was changed: every SET spelling, set_config in a query, a
//! function that sets a GUC inside; temporary objects of every kind pin.

use crate::harness::sql::value;
use crate::harness::{Cluster, DB, Sluice, pooled};

/// `setup` on one client, then 30 rounds in which that client sees `want`
/// from `probe` and fresh clients (over the same 2 servers) never do.
async fn stays_with_its_client(s: &Sluice, setup: &str, probe: &str, want: &str) {
    let a = s.app().await;
    a.batch_execute(setup)
        .await
        .unwrap_or_else(|e| panic!("{setup}: {e}"));
    let (mut kept, mut leaked) = (0, 0);
    for _ in 0..30 {
        let other = s.app().await;
        if value(&other, probe).await.unwrap() == want {
            leaked += 1;
        }
        if value(&a, probe).await.unwrap() == want {
            kept += 1;
        }
    }
    assert_eq!(
        (kept, leaked),
        (30, 0),
        "{setup}: the client kept its value {kept} of 30 times, other clients saw it {leaked} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_set_spelling_stays_with_its_client() {
    let s = pooled("transaction", 2, "").await;
    let path = "SELECT current_setting('search_path')";
    for (setup, probe, want) in [
        ("SET SCHEMA 'it23_s1'", path, "it23_s1"),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SELECT current_setting('default_transaction_isolation')",
            "serializable",
        ),
        (
            "SET XML OPTION DOCUMENT",
            "SELECT current_setting('xmloption')",
            "document",
        ),
        (
            "SET SESSION statement_timeout TO 4321",
            "SELECT current_setting('statement_timeout')",
            "4321ms",
        ),
        (
            "SET TIME ZONE 'Asia/Tokyo'",
            "SELECT current_setting('TimeZone')",
            "Asia/Tokyo",
        ),
        (
            "SET work_mem = '3MB'; RESET work_mem; SET SCHEMA 'it23_s2'",
            path,
            "it23_s2",
        ),
        (
            "SELECT set_config('search_path', 'it23_s3', false)",
            path,
            "it23_s3",
        ),
        (
            "SELECT pg_catalog.set_config('it23.user_id', '42', false)",
            "SELECT current_setting('it23.user_id', true)",
            "42",
        ),
        (
            "DO $$ BEGIN PERFORM set_config('search_path', 'it23_s4', false); END $$",
            path,
            "it23_s4",
        ),
    ] {
        stays_with_its_client(&s, setup, probe, want).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_sets_a_setting_does_not_leak_it() {
    let cluster = Cluster::shared();
    cluster.primary.psql(
        DB,
        "CREATE OR REPLACE FUNCTION it23_set_path() RETURNS int LANGUAGE plpgsql AS $$
         BEGIN PERFORM set_config('search_path', 'it23_fn', false); RETURN 1; END $$",
    );
    let s = pooled("transaction", 2, "").await;
    // On the primary: the replica may not have replayed the function yet.
    stays_with_its_client(
        &s,
        "/* sluice:primary */ SELECT it23_set_path()",
        "SELECT current_setting('search_path')",
        "it23_fn",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_types_domains_and_sequences_pin_their_client() {
    let s = pooled("transaction", 2, "").await;
    let a = s.app().await;
    a.batch_execute(
        "CREATE TYPE pg_temp.it23_mood AS ENUM ('sad', 'ok'); \
         CREATE DOMAIN pg_temp.it23_pos AS int CHECK (VALUE > 0); \
         CREATE SEQUENCE pg_temp.it23_seq",
    )
    .await
    .unwrap();
    for _ in 0..20 {
        let other = s.app().await;
        // On the primary, where the types were made: a replica has none.
        let seen = value(&other, "/* sluice:primary */ SELECT count(*) FROM pg_type WHERE typname IN ('it23_mood', 'it23_pos') AND pg_type_is_visible(oid)")
            .await
            .unwrap();
        assert_eq!(seen, "0", "another client sees the temporary types");
        assert_eq!(
            value(&a, "/* sluice:primary */ SELECT 'ok'::it23_mood::text || (5::it23_pos)::text || (nextval('it23_seq') > 0)::text")
                .await
                .unwrap(),
            "ok5true"
        );
    }
}

/// A statement some server already parsed is answered without a server;
/// when the client then executes it, a temporary table it creates still
/// pins the client (tokio-postgres prepares every statement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_create_temp_table_still_pins() {
    let s = pooled("transaction", 2, "").await;
    let create = "CREATE TEMPORARY TABLE it23_foo (id int)";
    // The first client makes the statement known, then leaves.
    let first = s.app().await;
    first.execute(create, &[]).await.unwrap();
    drop(first);
    let a = s.app().await;
    a.execute(create, &[]).await.unwrap();
    let probe = "/* sluice:primary */ SELECT count(*) FROM pg_class WHERE relname = 'it23_foo' AND pg_table_is_visible(oid)";
    for _ in 0..20 {
        let other = s.app().await;
        assert_eq!(
            value(&other, probe).await.unwrap(),
            "0",
            "another client sees it23_foo"
        );
        assert_eq!(value(&a, probe).await.unwrap(), "1");
    }
}

/// tokio-postgres's COPY sends Bind, Execute and Sync before the
/// CopyInResponse; PostgreSQL ignores that Sync, so one ReadyForQuery
/// answers two Syncs. Text and binary, in and out, pinned (a temporary
/// table) and not: every client still held by the test while the next
/// one runs, so a server left held after COPY would starve the pool of 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_copy_in_and_out_through_transaction_pooling() {
    let s = pooled("transaction", 2, "").await;
    let c = s.app().await;
    c.batch_execute("CREATE TABLE IF NOT EXISTS it23_copy_plain (id int, name text)")
        .await
        .unwrap();
    let mut held = Vec::new();
    for (pinned, binary) in [
        (true, false),
        (true, true),
        (false, false),
        (false, true),
        (false, false),
        (false, true),
    ] {
        let c = s.app().await;
        let table = if pinned {
            c.batch_execute("CREATE TEMPORARY TABLE it23_copy (id int, name text)")
                .await
                .unwrap();
            "it23_copy"
        } else {
            "it23_copy_plain"
        };
        let run = copy_round_trip(&c, table, binary);
        tokio::time::timeout(std::time::Duration::from_secs(20), run)
            .await
            .unwrap_or_else(|_| panic!("COPY hung (pinned: {pinned}, binary: {binary})"));
        if pinned {
            c.batch_execute("DROP TABLE it23_copy").await.unwrap();
        }
        held.push(c);
    }
}

/// Copies two rows into `table` (emptied first) and reads them back.
async fn copy_round_trip(c: &tokio_postgres::Client, table: &str, binary: bool) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
    use tokio_postgres::types::Type;
    c.batch_execute(&format!("DELETE FROM {table}"))
        .await
        .unwrap();
    let types = [Type::INT4, Type::TEXT];
    if binary {
        let sink = c
            .copy_in(&format!("COPY {table} (id, name) FROM STDIN BINARY"))
            .await
            .unwrap();
        let w = BinaryCopyInWriter::new(sink, &types);
        futures_util::pin_mut!(w);
        w.as_mut().write(&[&1i32, &"jim"]).await.unwrap();
        w.as_mut().write(&[&2i32, &"joe"]).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 2);
        let out = c
            .copy_out(&format!("COPY {table} TO STDOUT BINARY"))
            .await
            .unwrap();
        let rows = BinaryCopyOutStream::new(out, &types);
        futures_util::pin_mut!(rows);
        let mut got = Vec::new();
        while let Some(r) = rows.next().await {
            let r = r.unwrap();
            got.push((r.get::<i32>(0), r.get::<String>(1)));
        }
        got.sort();
        assert_eq!(got, vec![(1, "jim".to_string()), (2, "joe".to_string())]);
    } else {
        let sink = c
            .copy_in(&format!("COPY {table} (id, name) FROM STDIN"))
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"1\tjim\n2\tjoe\n"))
            .await
            .unwrap();
        assert_eq!(sink.finish().await.unwrap(), 2);
        let out = c
            .copy_out(&format!(
                "COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT"
            ))
            .await
            .unwrap();
        futures_util::pin_mut!(out);
        let mut got = Vec::new();
        while let Some(chunk) = out.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, b"1\tjim\n2\tjoe\n");
    }
}
