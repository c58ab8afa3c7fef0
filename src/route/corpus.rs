//! The routing corpus: statements with the route each must get. R: a
//! replica may run it; P: primary; N: neutral (runs where the client is);
//! B: opens a read-only transaction (replica); E: ends a transaction.

use super::classify::{Class, Hint, PrimaryFunctions, Reason, Route, TxnEffect, classify};

const CORPUS: &[(&str, &str)] = &[
    // Plain reads.
    ("SELECT 1", "R"),
    ("select 1", "R"),
    ("SeLeCt now()", "R"),
    ("SELECT * FROM pgbench_accounts WHERE aid = $1", "R"),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 42;", "R"),
    ("  \n\tSELECT 1", "R"),
    ("-- comment\nSELECT 1", "R"),
    ("/* block */ SELECT 1", "R"),
    ("/* nested /* comment */ still */ SELECT 1", "R"),
    ("SELECT 'nextval(1)'", "R"),
    ("SELECT \"for\" FROM t", "R"),
    ("SELECT 'for update'", "R"),
    ("SELECT $$ FOR UPDATE $$", "R"),
    (
        "SELECT a, b FROM t JOIN u USING (id) WHERE a IN (1, 2, 3) ORDER BY b LIMIT 10",
        "R",
    ),
    ("SELECT count(*) FROM t GROUP BY x HAVING count(*) > 1", "R"),
    ("SELECT * FROM t WHERE x IN (SELECT y FROM u)", "R"),
    ("SELECT * FROM (SELECT * FROM t) s", "R"),
    (
        "SELECT row_number() OVER (PARTITION BY a ORDER BY b) FROM t",
        "R",
    ),
    ("SELECT substring('abc' FROM 1 FOR 2)", "R"),
    ("SELECT x::int[] FROM t", "R"),
    ("SELECT j->>'k' FROM t WHERE j @> '{}'::jsonb", "R"),
    ("SELECT * FROM t WHERE name ILIKE 'a%'", "R"),
    ("SELECT DISTINCT ON (a) a, b FROM t", "R"),
    ("SELECT * FROM generate_series(1, 10)", "R"),
    ("SELECT pg_is_in_recovery()", "R"),
    ("SELECT current_setting('search_path')", "R"),
    ("SELECT pg_catalog.version()", "R"),
    ("SELECT my_schema.my_read_func(1)", "R"),
    ("SELECT 1 UNION SELECT 2", "R"),
    ("SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3", "R"),
    ("(SELECT 1)", "R"),
    ("VALUES (1), (2)", "R"),
    ("values (1, 'a')", "R"),
    ("TABLE t", "R"),
    ("table public.t", "R"),
    ("WITH x AS (SELECT 1) SELECT * FROM x", "R"),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
        "R",
    ),
    (
        "WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b",
        "R",
    ),
    ("SHOW search_path", "R"),
    ("SHOW ALL", "R"),
    ("show transaction_isolation", "R"),
    ("EXPLAIN SELECT 1", "R"),
    ("EXPLAIN ANALYZE SELECT 1", "R"),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t", "R"),
    ("EXPLAIN INSERT INTO t VALUES (1)", "R"),
    ("EXPLAIN (ANALYZE false) UPDATE t SET a = 1", "R"),
    ("COPY t TO STDOUT", "R"),
    ("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", "R"),
    ("SELECT 1; SELECT 2", "R"),
    ("SELECT 1; SET x = 1", "R"),
    // Writes and DDL.
    ("INSERT INTO t VALUES (1)", "P"),
    ("insert into t (a) select a from u", "P"),
    (
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        "P",
    ),
    ("DELETE FROM t WHERE id = 1", "P"),
    (
        "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN UPDATE SET a = u.a",
        "P",
    ),
    ("INSERT INTO t VALUES (1) ON CONFLICT (id) DO NOTHING", "P"),
    ("INSERT INTO t VALUES (1) RETURNING *", "P"),
    (
        "UPDATE t SET a = 1 FROM u WHERE t.id = u.id RETURNING t.*",
        "P",
    ),
    ("DELETE FROM t USING u WHERE t.id = u.id", "P"),
    ("TRUNCATE t", "P"),
    ("CREATE TABLE t (id int)", "P"),
    ("CREATE TEMP TABLE tt (id int) ON COMMIT DROP", "P"),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", "P"),
    ("ALTER TABLE t ADD COLUMN b int", "P"),
    ("DROP TABLE t", "P"),
    (
        "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
        "P",
    ),
    ("DO $$ BEGIN PERFORM 1; END $$", "P"),
    ("DO LANGUAGE plpgsql $$ BEGIN NULL; END $$", "P"),
    ("CALL my_proc(1)", "P"),
    ("VACUUM ANALYZE t", "P"),
    ("VACUUM t", "P"),
    ("ANALYZE t", "P"),
    ("CHECKPOINT", "P"),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", "P"),
    ("GRANT SELECT ON t TO bob", "P"),
    ("COMMENT ON TABLE t IS 'x'", "P"),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "P"),
    ("ALTER SYSTEM SET work_mem = '64MB'", "P"),
    ("COPY t FROM STDIN", "P"),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", "P"),
    ("LISTEN chan", "P"),
    ("UNLISTEN *", "P"),
    ("NOTIFY chan, 'x'", "P"),
    ("PREPARE q AS SELECT 1", "P"),
    ("EXECUTE q", "P"),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "P"),
    ("DECLARE c CURSOR FOR SELECT * FROM t", "P"),
    ("CLUSTER t", "P"),
    ("REINDEX TABLE t", "P"),
    ("SECURITY LABEL ON TABLE t IS 'x'", "P"),
    ("PREPARE TRANSACTION 'tx1'", "P"),
    ("COMMIT PREPARED 'tx1'", "P"),
    ("ROLLBACK PREPARED 'tx1'", "P"),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", "P"),
    ("EXPLAIN (ANALYZE) DELETE FROM t", "P"),
    ("EXPLAIN (ANALYZE true, VERBOSE) UPDATE t SET a = 2", "P"),
    // Locking reads.
    ("SELECT * FROM t FOR UPDATE", "P"),
    ("SELECT * FROM t WHERE id = 1 FOR SHARE NOWAIT", "P"),
    ("SELECT * FROM t FOR NO KEY UPDATE", "P"),
    ("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", "P"),
    ("SELECT * FROM t FOR KEY SHARE", "P"),
    ("select * from t for update of t", "P"),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", "P"),
    (
        "SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)",
        "P",
    ),
    (
        "WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x",
        "P",
    ),
    // Writable CTEs, at any depth.
    (
        "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
        "P",
    ),
    (
        "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
        "P",
    ),
    (
        "WITH x AS (DELETE FROM t RETURNING *) SELECT count(*) FROM x",
        "P",
    ),
    (
        "WITH a AS (SELECT 1), b AS (DELETE FROM t RETURNING *) SELECT * FROM a",
        "P",
    ),
    (
        "SELECT * FROM (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) s",
        "P",
    ),
    (
        "WITH outer_cte AS (WITH inner_cte AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM inner_cte) SELECT * FROM outer_cte",
        "P",
    ),
    (
        "with x as (insert into t values (1) returning *) select * from x",
        "P",
    ),
    // SELECT INTO.
    ("SELECT * INTO new_t FROM t", "P"),
    ("SELECT a INTO TEMP tmp FROM t", "P"),
    // Functions that write, lock or use sequences.
    ("SELECT nextval('s')", "P"),
    ("SELECT NEXTVAL('s')", "P"),
    ("SELECT pg_catalog.nextval('s')", "P"),
    ("SELECT \"nextval\"('s')", "P"),
    ("SELECT nextval ('s')", "P"),
    ("SELECT setval('s', 10)", "P"),
    ("SELECT currval('s')", "P"),
    ("SELECT lastval()", "P"),
    ("SELECT pg_advisory_lock(1)", "P"),
    ("SELECT pg_advisory_xact_lock(1)", "P"),
    ("SELECT pg_try_advisory_lock(1)", "P"),
    ("SELECT pg_advisory_unlock_all()", "P"),
    ("SELECT set_config('a.b', '1', false)", "P"),
    ("SELECT txid_current()", "P"),
    ("SELECT pg_current_xact_id()", "P"),
    ("SELECT pg_notify('c', 'x')", "P"),
    ("SELECT lo_create(0)", "P"),
    ("SELECT lo_unlink(123)", "P"),
    ("SELECT dblink_exec('conn', 'DELETE FROM t')", "P"),
    ("SELECT * FROM t WHERE id = nextval('s')", "P"),
    ("SELECT * FROM nextval('s')", "P"),
    ("SELECT (SELECT nextval('s'))", "P"),
    ("WITH x AS (SELECT nextval('s')) SELECT * FROM x", "P"),
    ("VALUES (nextval('s'))", "P"),
    ("SELECT my_writer(1)", "P"),
    ("SELECT app.audit_log('x')", "P"),
    // Transactions.
    ("BEGIN", "P"),
    ("begin", "P"),
    ("BEGIN WORK", "P"),
    ("START TRANSACTION", "P"),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", "P"),
    ("BEGIN READ WRITE", "P"),
    ("START TRANSACTION READ WRITE", "P"),
    ("BEGIN READ ONLY", "B"),
    ("begin read only", "B"),
    ("START TRANSACTION READ ONLY", "B"),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", "B"),
    (
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
        "B",
    ),
    ("BEGIN; SET TRANSACTION READ ONLY", "B"),
    (
        "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY; SELECT 1",
        "B",
    ),
    ("BEGIN READ ONLY; SELECT 1; COMMIT", "R"),
    ("BEGIN; INSERT INTO t VALUES (1); COMMIT", "P"),
    ("BEGIN READ ONLY; INSERT INTO t VALUES (1)", "P"),
    ("COMMIT", "E"),
    ("END", "E"),
    ("ROLLBACK", "E"),
    ("ABORT", "E"),
    ("COMMIT AND CHAIN", "N"),
    ("ROLLBACK TO SAVEPOINT s", "N"),
    ("SAVEPOINT s", "N"),
    ("RELEASE SAVEPOINT s", "N"),
    ("SET TRANSACTION READ ONLY", "N"),
    // Settings and session commands.
    ("SET search_path TO app, public", "N"),
    ("SET LOCAL statement_timeout = '1s'", "N"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "N"),
    ("RESET ALL", "N"),
    ("RESET work_mem", "N"),
    ("DISCARD ALL", "N"),
    ("DEALLOCATE ALL", "N"),
    ("FETCH 10 FROM c", "N"),
    ("CLOSE c", "N"),
    ("", "N"),
    ("-- only a comment", "N"),
    (";", "N"),
    ("SET sluice.route TO replica", "N"),
    // Multi-statement strings with a write anywhere.
    ("SELECT 1; INSERT INTO t VALUES (1)", "P"),
    ("INSERT INTO t VALUES (1); SELECT 1", "P"),
    ("SELECT 1; SELECT nextval('s')", "P"),
    ("SELECT 'a;b'; DELETE FROM t", "P"),
    // Unparseable: to the primary.
    ("SELEC 1 FROM", "P"),
    ("WITH x AS (SELECT 1 SELECT * FROM x", "P"),
];

fn code(c: &Class) -> &'static str {
    match (c.route, c.txn) {
        (Route::Read, TxnEffect::OpensReadOnly) => "B",
        (Route::Read, _) => "R",
        (Route::Primary(_), _) => "P",
        (Route::Neutral, TxnEffect::Ends) => "E",
        (Route::Neutral, _) => "N",
    }
}

#[test]
fn every_corpus_statement_gets_its_route() {
    let extra = PrimaryFunctions::primary(&["my_writer", "audit_log"]);
    let wrong: Vec<String> = CORPUS
        .iter()
        .filter_map(|(sql, want)| {
            let got = code(&classify(sql, &extra));
            (got != *want).then(|| format!("{sql:?}: expected {want}, got {got}"))
        })
        .collect();
    assert!(
        CORPUS.len() >= 150,
        "corpus has {} statements",
        CORPUS.len()
    );
    assert!(
        wrong.is_empty(),
        "{} misrouted:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn hints_are_read_from_leading_comments_only() {
    let none = PrimaryFunctions::default();
    let h = |s: &str| classify(s, &none).hint;
    assert_eq!(h("/* sluice:primary */ SELECT 1"), Hint::Primary);
    assert_eq!(h("  /* SLUICE:REPLICA */ SELECT 1"), Hint::Replica);
    assert_eq!(
        h("/* app=web */ /* sluice:replica */ SELECT 1"),
        Hint::Replica
    );
    assert_eq!(h("SELECT 1 /* sluice:replica */"), Hint::None);
    assert_eq!(h("SELECT '/* sluice:primary */'"), Hint::None);
    // A replica hint never makes a write a read.
    let c = classify("/* sluice:replica */ DELETE FROM t", &none);
    assert!(matches!(c.route, Route::Primary(_)));
}

#[test]
fn reasons_name_the_rule() {
    let none = PrimaryFunctions::default();
    let r = |s: &str| classify(s, &none).route;
    assert_eq!(
        r("SELECT * FROM t FOR UPDATE"),
        Route::Primary(Reason::LockingRead)
    );
    assert_eq!(
        r("WITH x AS (DELETE FROM t RETURNING 1) SELECT 1"),
        Route::Primary(Reason::WritableCte)
    );
    assert_eq!(r("SELECT 1 INTO t"), Route::Primary(Reason::SelectInto));
    assert_eq!(
        r("SELECT nextval('s')"),
        Route::Primary(Reason::WriteFunction)
    );
    assert_eq!(r("BEGIN"), Route::Primary(Reason::Transaction));
    assert_eq!(r("SELEC 1"), Route::Primary(Reason::Unparsed));
    let big = format!("WITH x AS (SELECT 1) SELECT {}1", "1 + ".repeat(5000));
    assert_eq!(r(&big), Route::Primary(Reason::TooLarge));
    let big_plain = format!("SELECT {}1", "1 + ".repeat(5000));
    assert_eq!(
        r(&big_plain),
        Route::Read,
        "a long plain SELECT needs no parse"
    );
}

#[test]
fn replica_safe_functions_override_the_built_in_list() {
    let mut f = PrimaryFunctions::primary(&["audit_write"]);
    assert_eq!(
        classify("SELECT lo_reader(1)", &f).route,
        Route::Primary(Reason::WriteFunction),
        "the lo_ prefix is on the built-in list"
    );
    f.replica_safe = vec!["lo_reader".into(), "audit_write".into()];
    assert_eq!(classify("SELECT lo_reader(1)", &f).route, Route::Read);
    assert_eq!(classify("SELECT audit_write(1)", &f).route, Route::Read);
    assert_eq!(
        classify("SELECT lo_reader(1), nextval('s')", &f).route,
        Route::Primary(Reason::WriteFunction),
        "other calls still count"
    );
}

/// The one-pass plain-SELECT check says Read only where the rules do, on
/// every corpus statement and on variants of each (case, a locking clause,
/// a write function, a quoted name, a trailing clause cut off).
#[test]
fn the_plain_select_shortcut_agrees_with_the_rules() {
    use super::classify::{by_rules, plain_select};
    let extra = PrimaryFunctions::primary(&["audit_write"]);
    let mut checked = 0;
    for (sql, _) in CORPUS {
        for stmt in crate::sql::lex::statements(sql) {
            let cut = &stmt[..stmt.floor_char_boundary(stmt.len() / 2)];
            for v in [
                stmt.to_string(),
                stmt.to_uppercase(),
                stmt.to_lowercase(),
                format!("{stmt} FOR UPDATE"),
                format!("{stmt} WHERE nextval ('s') > 0"),
                format!("{stmt} AND \"audit_write\"(1)"),
                format!("SELECT 1 FROM ({stmt}) s"),
                cut.to_string(),
            ] {
                if plain_select(&v, &extra).is_some() {
                    checked += 1;
                    assert_eq!(by_rules(&v, &extra).route, Route::Read, "{v}");
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} statements took the shortcut");
}
